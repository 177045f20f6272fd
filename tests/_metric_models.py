"""Tiny randomly initialised models of the classes the model-based metrics load (BERTScore's BERT,
RoBERTa and DeBERTa; CLIPScore's CLIP), with tokenizers built offline, saved with ``save_pretrained``
so that they load through the same ``from_pretrained`` path as the hub checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medblip.models.tiny import radiology_corpus
from medblip.models.vocab import bpe_vocab, wordpiece_vocab

CORPUS = radiology_corpus(300, seed=3)
_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "max_position_embeddings": 128}


def _seed(seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)


def tiny_text_model(kind: str, out: Path) -> Path:
    """A tiny ``bert``, ``roberta`` or ``deberta`` encoder with its tokenizer, in ``out``."""
    import transformers as tf

    _seed()
    if kind == "bert":
        vocab = wordpiece_vocab(CORPUS, 400, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok = tf.BertTokenizer(vocab=vocab, model_max_length=128)
        model = tf.BertModel(tf.BertConfig(vocab_size=len(tok), **_SIZES))
    elif kind == "roberta":
        vocab, merges = bpe_vocab(CORPUS, 400, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tok = tf.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=120)
        model = tf.RobertaModel(tf.RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **_SIZES))
    elif kind == "deberta":
        vocab, merges = bpe_vocab(CORPUS, 400, ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])
        tok = tf.DebertaTokenizer(vocab=vocab, merges=merges, model_max_length=128)
        model = tf.DebertaModel(tf.DebertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **_SIZES))
    else:
        raise ValueError(kind)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _clip_bpe(corpus: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE vocabulary in CLIP's style: word-final pieces end in ``</w>``."""
    from tokenizers import pre_tokenizers

    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab, merges = bpe_vocab(corpus, 500, specials, pre_tokenizer=pre_tokenizers.Whitespace(),
                              alphabet=[chr(c) for c in range(33, 127)], end_of_word_suffix="</w>")
    # the trainer's ids follow hash-set order (they change with PYTHONHASHSEED); its tokens and merges do not
    tokens = specials + sorted(t for t in vocab if t not in specials)
    return {t: i for i, t in enumerate(tokens)}, merges


def tiny_clip(out: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny ``CLIPModel`` with a CLIP tokenizer and the PIL image processor, in ``out``."""
    import transformers as tf

    _seed(seed)
    vocab, merges = _clip_bpe([f"a photo depicts {c.lower()}" for c in CORPUS])
    tok = tf.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    config = tf.CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=16)
    tf.CLIPModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    tf.CLIPImageProcessorPil(size={"shortest_edge": image_size},
                             crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def noise_images(folder: Path, n: int, size: int = 48) -> list[Path]:
    """``n`` distinct PNG files (seeded noise with a bright square at a different place in each)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        x = (i * 7) % (size - 12)
        pixels[x:x + 12, x:x + 12] = 230
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
