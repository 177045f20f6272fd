"""Tiny randomly initialised stand-ins for real checkpoints (``medblip model init-tiny``).

Each is a model of the family's *real* transformers classes with a tokenizer built offline with the
``tokenizers`` library, saved with ``save_pretrained``: the folder loads through exactly the same
``create_model`` / ``from_pretrained`` path as a hub checkpoint. Deterministic given ``seed``.
"""

from __future__ import annotations

import itertools
import math
import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medblip.errors import MedblipError
from medblip.models.vocab import bpe_vocab, unigram_vocab, wordpiece_vocab

INIT_TINY = "model init-tiny"  # the command named in the output folder's marker

_MODALITIES = ["CT", "MRI", "radiograph", "ultrasound", "chest x-ray", "PET", "angiography", "mammography"]
_REGIONS = ["brain", "chest", "liver", "kidney", "abdomen", "pelvis", "spine", "knee", "lung", "heart",
            "thyroid", "breast"]
_FINDINGS = ["lesion", "nodule", "effusion", "fracture", "mass", "cyst", "hemorrhage", "infarct",
             "calcification", "stenosis", "edema", "abscess", "tumor", "aneurysm", "pneumothorax"]
_SIDES = ["left", "right", "bilateral"]
_PLANES = ["axial", "coronal", "sagittal"]
_SIZES = ["small", "large", "12 mm", "3 cm", "5 mm"]
_TEMPLATES = [
    "{plane} {modality} of the {region} showing a {size} {side} {finding}",
    "{modality} {region} with {side} {finding}",
    "{modality} of the {region} showing no {finding}",
    "{plane} {modality} image demonstrating a {finding} in the {side} {region} (arrow)",
    "contrast-enhanced {modality} shows a {size} {finding} of the {side} {region}.",
    "{modality}: {side} {region} {finding}, no other abnormality",
]


def radiology_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A small deterministic corpus of radiology-style captions (tokenizer training text)."""
    rng = random.Random(seed)
    out: list[str] = []
    # every word appears at least once, whatever n is
    for modality, region, finding in itertools.zip_longest(_MODALITIES, _REGIONS, _FINDINGS):
        out.append(f"{modality or 'CT'} of the {region or 'chest'} showing a {finding or 'mass'}")
    out += [f"{p} {s} {z}" for p, s, z in itertools.zip_longest(_PLANES, _SIDES, _SIZES, fillvalue="no")]
    while len(out) < n:
        out.append(rng.choice(_TEMPLATES).format(
            plane=rng.choice(_PLANES), modality=rng.choice(_MODALITIES), region=rng.choice(_REGIONS),
            size=rng.choice(_SIZES), side=rng.choice(_SIDES), finding=rng.choice(_FINDINGS)))
    return out


def read_captions(path: str | Path) -> list[str]:
    """Captions for tokenizer training: a text file with one caption per line."""
    path = Path(path)
    if not path.is_file():
        raise MedblipError(f"captions file {path} does not exist")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise MedblipError(f"captions file {path} has no captions")
    return lines


def _corpus(captions: Iterable[str] | None, seed: int) -> list[str]:
    # The built-in corpus is always included so the vocabulary covers common radiology words even
    # when the user's captions are few; InstructBLIP's default instruction is added so that it is a
    # few whole-word tokens rather than dozens of characters.
    from medblip.models.instructblip import DEFAULT_INSTRUCTION

    return [*(c for c in (captions or []) if c and c.strip()), *radiology_corpus(seed=seed),
            *[DEFAULT_INSTRUCTION] * 3]


POSITION_INITS = ("normal", "sincos")


def sincos_positions(dim: int, grid: int) -> np.ndarray:
    """The 2-D sine-cosine position embedding of MAE (He et al., 2022): ``(grid * grid, dim)``, rows in
    raster order; the first half of the columns codes the row, the second the column, each as sines
    and cosines of geometrically spaced frequencies (``dim`` divisible by 4)."""
    if dim % 4:
        raise MedblipError(f"sine-cosine positions need a width divisible by 4, got {dim}")

    def code(width: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        angles = np.outer(pos, omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    return np.concatenate([code(dim // 2, rows.ravel()), code(dim // 2, cols.ravel())], axis=1)


@dataclass
class TinySpec:
    """Sizes of a tiny model. Defaults are the smallest that still learn something in tests."""

    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    intermediate_size: int | None = None  # default 2 x hidden
    vocab_size: int = 512
    max_text_length: int = 128
    num_query_tokens: int = 4  # BLIP-2 / InstructBLIP
    # Std of the vision tower's random weights. None keeps the transformers config's initializer_range:
    # for BLIP families 1e-10 (real checkpoints overwrite every weight), so a from-scratch ViT starts
    # with all weights ~0 and grows them; 0.02 is the original BLIP/ViT std. The demo's recipe keeps the
    # default (at its 8-epoch budget 0.02 is no better); the learning recipe, which must learn the lesion's
    # side, uses 0.02 with position_init_std=1.0 (docs/MODELS.md has the numbers).
    vision_init_std: float | None = None
    # Std of the ViT's learned position embeddings (None: as the rest of the vision tower). At 0.02 the
    # patch content drowns them and a short from-scratch run never learns *where* a lesion is; at 1.0
    # position is as loud as content, which the side-learning recipe needs (docs/MODELS.md).
    position_init_std: float | None = None
    # How the position embeddings start: "normal" (random, at position_init_std) or "sincos" (the 2-D
    # sine-cosine embedding of MAE, times position_init_std, default 1.0; CLS at 0). Random vectors say
    # *which* patch but not where it lies: a short run must learn left from right patch by patch, and
    # loud random ones (1.0) also drown the content the decoder should select by. Sine-cosine codes x and
    # y smoothly, so "left of the middle" is a few linear directions from the start: on the shapes
    # corpus's marks stage (24 s of training, seed 0) the side of a mark went from 0.72 to 0.98 and the
    # pointing game from 0.33 to 0.68 (docs/MODELS.md). Learned thereafter, as in BLIP and ViT.
    position_init: str = "normal"
    # Std of the decoder's cross-attention query and key weights (None: as the rest of the decoder, 0.02).
    # At 0.02 a from-scratch decoder attends uniformly to all patches, and learning to look at one
    # small thing is a slow escape from that symmetric start (a single white spot's side took > 350
    # steps); at 0.1 the start is already content-selective and the same task is learnt in ~100 steps.
    # The pretrained stand-ins use it (configs/demo/pretrain_tiny.yaml).
    cross_attention_init_std: float | None = None

    def vision_init(self) -> dict[str, float]:
        return {} if self.vision_init_std is None else {"initializer_range": self.vision_init_std}

    @property
    def ffn(self) -> int:
        return self.intermediate_size or 2 * self.hidden_size

    def check(self) -> None:
        if self.image_size % self.patch_size:
            raise MedblipError(f"image size {self.image_size} is not a multiple of patch size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise MedblipError(f"hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if min(self.image_size, self.patch_size, self.hidden_size, self.num_layers, self.num_heads) < 1:
            raise MedblipError("tiny model sizes must be positive")
        if self.vision_init_std is not None and not 0 < self.vision_init_std < 1:
            raise MedblipError(f"vision init std must be in (0, 1), got {self.vision_init_std}")
        if self.position_init_std is not None and not 0 < self.position_init_std <= 10:
            raise MedblipError(f"position init std must be in (0, 10], got {self.position_init_std}")
        if self.position_init not in POSITION_INITS:
            raise MedblipError(f"unknown position init {self.position_init!r}; choose {', '.join(POSITION_INITS)}")
        if self.cross_attention_init_std is not None and not 0 < self.cross_attention_init_std <= 1:
            raise MedblipError(f"cross-attention init std must be in (0, 1], got {self.cross_attention_init_std}")

    def init_positions(self, model: Any) -> None:
        """Redraw the vision tower's position embeddings: ``normal`` at ``position_init_std`` (torch's
        global RNG, seeded by :func:`init_tiny`), ``sincos`` as :func:`sincos_positions` times
        ``position_init_std`` (default 1). Text position embeddings (``...weight`` of an ``nn.Embedding``)
        are kept."""
        if self.position_init_std is None and self.position_init == "normal":
            return
        import torch

        found = [p for name, p in model.named_parameters()
                 if name.endswith(("embeddings.position_embedding", "embeddings.position_embeddings"))]
        if not found:  # pragma: no cover - every supported family has one
            raise MedblipError(f"{type(model).__name__} has no vision position embeddings to initialise")
        with torch.no_grad():
            for p in found:
                if self.position_init == "normal":
                    p.normal_(0.0, self.position_init_std)
                    continue
                # the grid from the table itself (CLS first): a twin's image and patch sizes are the
                # published ones, not this spec's
                grid = math.isqrt(p.shape[-2] - 1)
                if grid * grid + 1 != p.shape[-2]:  # pragma: no cover - every ViT here has a square grid
                    raise MedblipError(f"{p.shape[-2]} position embeddings are not CLS plus a square grid")
                table = torch.from_numpy(sincos_positions(p.shape[-1], grid)).to(p.dtype)
                p.zero_()
                p[0, 1:] = table * (1.0 if self.position_init_std is None else self.position_init_std)

    def init_cross_attention(self, model: Any) -> None:
        """Redraw the query and key weights of every cross-attention at ``cross_attention_init_std``
        (torch's global RNG, seeded by :func:`init_tiny`): BLIP / Q-Former ``crossattention...query``
        and ``...key``, GPT-2's ``crossattention.q_attn`` and the key half of ``crossattention.c_attn``."""
        if self.cross_attention_init_std is None:
            return
        import torch

        std = self.cross_attention_init_std
        found = 0
        with torch.no_grad():
            for name, module in model.named_modules():
                leaf = name.rsplit(".", 1)[-1]
                if ".crossattention." not in f".{name}" or leaf not in ("query", "key", "q_attn", "c_attn"):
                    continue
                weight = module.weight
                if leaf == "c_attn":  # GPT-2 Conv1D (in, 2 x out): keys are the first half of the outputs
                    weight = weight[:, : weight.shape[1] // 2]
                weight.normal_(0.0, std)
                found += 1
        if not found:
            raise MedblipError(f"{type(model).__name__} has no cross-attention to initialise")


def _blip(corpus: list[str], spec: TinySpec) -> tuple[Any, Any]:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    vocab = wordpiece_vocab(corpus, spec.vocab_size, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # As in the real BLIP tokenizer: [DEC] (decoder bos) and [ENC] appended after the WordPiece vocab.
    vocab["[DEC]"] = len(vocab)
    vocab["[ENC]"] = len(vocab)
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"],
                              model_max_length=spec.max_text_length)
    processor = BlipProcessor(_blip_image_processor(spec.image_size), tokenizer)
    h = spec.hidden_size
    config = BlipConfig(
        vision_config={"hidden_size": h, "intermediate_size": spec.ffn, "num_hidden_layers": spec.num_layers,
                       "num_attention_heads": spec.num_heads, "image_size": spec.image_size,
                       "patch_size": spec.patch_size, **spec.vision_init()},
        text_config={"vocab_size": len(tokenizer), "hidden_size": h, "intermediate_size": spec.ffn,
                     "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
                     "encoder_hidden_size": h, "max_position_embeddings": spec.max_text_length,
                     "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "sep_token_id": tokenizer.sep_token_id, "eos_token_id": tokenizer.sep_token_id},
        projection_dim=h,
    )
    model = BlipForConditionalGeneration(config)
    model.generation_config.max_length = spec.max_text_length
    return model, processor


def _blip_image_processor(image_size: int) -> Any:
    try:  # transformers picks the PIL backend without torchvision; naming it avoids a warning per load
        from transformers import BlipImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - other transformers versions
        from transformers import BlipImageProcessor as Proc
    return Proc(size={"height": image_size, "width": image_size})


def _vit_image_processor(image_size: int) -> Any:
    try:  # see _blip_image_processor
        from transformers import ViTImageProcessorPil as Proc
    except ImportError:  # pragma: no cover
        from transformers import ViTImageProcessor as Proc
    return Proc(size={"height": image_size, "width": image_size})


def _vit_config(spec: TinySpec) -> Any:
    from transformers import ViTConfig

    return ViTConfig(hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
                     num_attention_heads=spec.num_heads, intermediate_size=spec.ffn,
                     image_size=spec.image_size, patch_size=spec.patch_size, **spec.vision_init())


def _vit_gpt2(corpus: list[str], spec: TinySpec) -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2Tokenizer, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    from medblip.models.vit_gpt2 import VitGpt2Processor

    vocab, merges = bpe_vocab(corpus, spec.vocab_size, ["<|endoftext|>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=spec.max_text_length)
    eos = tokenizer.eos_token_id
    decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=spec.hidden_size, n_layer=spec.num_layers,
                         n_head=spec.num_heads, n_inner=spec.ffn, n_positions=spec.max_text_length,
                         add_cross_attention=True, is_decoder=True, bos_token_id=eos, eos_token_id=eos)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(_vit_config(spec), decoder)
    # nlpconnect's settings: start = pad = eos = <|endoftext|>
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id = gen.pad_token_id = gen.eos_token_id = gen.bos_token_id = eos
    return model, VitGpt2Processor(_vit_image_processor(spec.image_size), tokenizer)


def _opt_lm(corpus: list[str], spec: TinySpec) -> tuple[Any, dict[str, Any]]:
    """Tiny OPT language model config + OPT-style tokenizer (GPT-2 byte-level BPE, ``</s>`` as bos)."""
    from transformers import GPT2Tokenizer

    # OPT's special ids: <s>=0, <pad>=1, </s>=2, <unk>=3; every sequence starts with </s>
    vocab, merges = bpe_vocab(corpus, spec.vocab_size, ["<s>", "<pad>", "</s>", "<unk>"])
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                        unk_token="<unk>", add_bos_token=True, model_max_length=spec.max_text_length)
    cfg = {"model_type": "opt", "hidden_size": spec.hidden_size, "num_hidden_layers": spec.num_layers,
           "num_attention_heads": spec.num_heads, "ffn_dim": spec.ffn, "word_embed_proj_dim": spec.hidden_size,
           "max_position_embeddings": spec.max_text_length + spec.num_query_tokens + 8,
           "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return tok, cfg


def _t5_lm(corpus: list[str], spec: TinySpec) -> tuple[Any, dict[str, Any]]:
    """Tiny Flan-T5-like config + T5 tokenizer (Unigram built offline, no sentencepiece)."""
    from transformers import T5Tokenizer

    vocab = unigram_vocab(corpus, spec.vocab_size, ["<pad>", "</s>", "<unk>"])
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=spec.max_text_length)
    cfg = {"model_type": "t5", "d_model": spec.hidden_size, "d_kv": spec.hidden_size // spec.num_heads,
           "d_ff": spec.ffn, "num_layers": spec.num_layers, "num_decoder_layers": spec.num_layers,
           "num_heads": spec.num_heads, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
           "decoder_start_token_id": tok.pad_token_id, "pad_token_id": tok.pad_token_id,
           "eos_token_id": tok.eos_token_id, "relative_attention_num_buckets": 8}
    return tok, cfg


_LMS = {"opt": _opt_lm, "t5": _t5_lm}


def _add_image_token(tok: Any) -> int:
    from tokenizers import AddedToken

    # BLIP-2/InstructBLIP processors put num_query_tokens <image> placeholders before the text
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return int(tok.convert_tokens_to_ids("<image>"))


def _qformer_configs(spec: TinySpec) -> tuple[dict[str, Any], dict[str, Any]]:
    h = spec.hidden_size
    vision = {"hidden_size": h, "intermediate_size": spec.ffn, "num_hidden_layers": spec.num_layers,
              "num_attention_heads": spec.num_heads, "image_size": spec.image_size, "patch_size": spec.patch_size,
              **spec.vision_init()}
    qformer = {"hidden_size": h, "intermediate_size": spec.ffn, "num_hidden_layers": spec.num_layers,
               "num_attention_heads": spec.num_heads, "cross_attention_frequency": 1, "encoder_hidden_size": h}
    return vision, qformer


def _blip2(corpus: list[str], spec: TinySpec, language_model: str = "opt") -> tuple[Any, Any]:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    tok, text_cfg = _LMS[language_model](corpus, spec)
    image_token = _add_image_token(tok)
    text_cfg["vocab_size"] = len(tok)
    vision, qformer = _qformer_configs(spec)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text_cfg,
                         num_query_tokens=spec.num_query_tokens, image_token_index=image_token)
    model = Blip2ForConditionalGeneration(config)
    _lm_generation_ids(model, tok)
    return model, Blip2Processor(_blip_image_processor(spec.image_size), tok,
                                 num_query_tokens=spec.num_query_tokens)


def _lm_generation_ids(model: Any, tok: Any) -> None:
    gen = model.generation_config
    gen.eos_token_id = tok.eos_token_id
    gen.pad_token_id = tok.pad_token_id
    if tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    if model.config.text_config.model_type == "t5":
        gen.decoder_start_token_id = tok.pad_token_id


def _instructblip(corpus: list[str], spec: TinySpec, language_model: str = "t5") -> tuple[Any, Any]:
    from transformers import (
        BertTokenizer,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )

    tok, text_cfg = _LMS[language_model](corpus, spec)
    image_token = _add_image_token(tok)
    text_cfg["vocab_size"] = len(tok)
    # The Q-Former reads the instruction with its own BERT tokenizer (bert-base-uncased in real ones)
    qvocab = wordpiece_vocab(corpus, spec.vocab_size, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    qtok = BertTokenizer(vocab=qvocab, model_max_length=spec.max_text_length)
    vision, qformer = _qformer_configs(spec)
    qformer.update(vocab_size=len(qtok), max_position_embeddings=spec.max_text_length + spec.num_query_tokens,
                   pad_token_id=qtok.pad_token_id)
    config = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text_cfg,
                                num_query_tokens=spec.num_query_tokens, image_token_index=image_token)
    model = InstructBlipForConditionalGeneration(config)
    _lm_generation_ids(model, tok)
    return model, InstructBlipProcessor(_blip_image_processor(spec.image_size), tok, qtok,
                                        num_query_tokens=spec.num_query_tokens)


_BUILDERS = {"blip": _blip, "vit-gpt2": _vit_gpt2, "blip2": _blip2, "instructblip": _instructblip}


def init_tiny(family: str | None, out: str | Path, *, captions: Iterable[str] | str | Path | None = None,
              image_size: int = 64, seed: int = 0, vocab_size: int = 512, patch_size: int | None = None,
              hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2,
              intermediate_size: int | None = None, max_text_length: int = 128,
              num_query_tokens: int = 4, language_model: str | None = None,
              vision_init_std: float | None = None, position_init_std: float | None = None,
              position_init: str = "normal", cross_attention_init_std: float | None = None,
              like: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a tiny randomly initialised ``family`` checkpoint (model + processor) to ``out``.

    ``captions``: tokenizer training text (an iterable, or a file with one caption per line) added to
    a built-in radiology corpus. ``patch_size`` defaults to ``image_size // 8``. ``language_model``
    (BLIP-2 / InstructBLIP): ``"opt"`` (decoder-only, BLIP-2's default) or ``"t5"`` (Flan-T5 style,
    InstructBLIP's default). ``vision_init_std``: std of the vision tower's random weights (default:
    the transformers config's: 1e-10 for BLIP families, 0.02 for ViT; see :class:`TinySpec`).
    ``position_init_std``: std of the vision tower's position embeddings (default: as the rest).
    ``position_init``: ``normal`` (random) or ``sincos`` (2-D sine-cosine times ``position_init_std``,
    default 1; see :class:`TinySpec`).
    ``cross_attention_init_std``: std of the cross-attention query and key weights (default: as the
    rest of the decoder; see :class:`TinySpec`). The folder is written to a temporary sibling first and
    moved into place, so ``out`` is never half-written.

    ``like``: a folder of a real checkpoint's published config files (or a hub id whose published values
    medblip ships): a *twin* that keeps every non-dimension value of it (ids, vocabulary sizes, image size,
    normalisation, generation defaults) and takes only its widths, depths and heads from the sizes given
    here (see :mod:`medblip.models.twins`; ``family`` may then be None; image, patch, query and vocabulary
    sizes are the published ones).
    A non-empty ``out`` that is not an earlier tiny model is refused unless ``overwrite`` (then the
    model's files are added and its other files kept); see :mod:`medblip.outputs`.
    """
    import torch

    from medblip.models.registry import get_family
    from medblip.outputs import check_output_dir, ensure_writable_dir, install_output_dir

    builder: Any = None
    if like is not None:
        from medblip.models.twins import Published, build_twin

        published = Published.resolve(like)
        if family is not None and get_family(family).family != published.family:
            raise MedblipError(f"--like {like} is a {published.family} checkpoint, not {family}")
        if language_model is not None:
            raise MedblipError("--language-model does not apply to --like (the published config names it)")
        family = published.family

        def builder(corpus: list[str], spec: TinySpec) -> tuple[Any, Any]:
            return build_twin(published, corpus, spec)
    if family is None:
        raise MedblipError("init_tiny: give a family or like=FOLDER")
    family = get_family(family).family
    if builder is None and family not in _BUILDERS:
        raise MedblipError(f"no tiny model builder for family {family!r}")
    if isinstance(captions, str | Path):
        captions = read_captions(captions)
    spec = TinySpec(image_size=image_size, patch_size=patch_size or max(1, image_size // 8),
                    hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                    intermediate_size=intermediate_size, vocab_size=vocab_size,
                    max_text_length=max_text_length, num_query_tokens=num_query_tokens,
                    vision_init_std=vision_init_std, position_init_std=position_init_std,
                    position_init=position_init, cross_attention_init_std=cross_attention_init_std)
    spec.check()
    if language_model is not None:
        if family not in ("blip2", "instructblip"):
            raise MedblipError(f"--language-model applies to blip2 and instructblip, not {family}")
        if language_model not in _LMS:
            raise MedblipError(f"unknown tiny language model {language_model!r}; choose {', '.join(_LMS)}")
    out = check_output_dir(out, INIT_TINY, overwrite=overwrite, replaces=True)
    ensure_writable_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            extra = {"language_model": language_model} if language_model else {}
            model, processor = (builder or _BUILDERS[family])(_corpus(captions, seed), spec, **extra)
            spec.init_positions(model)
            spec.init_cross_attention(model)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        install_output_dir(tmp, out, INIT_TINY)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
