"""Tokenizer vocabularies learned offline from a caption corpus, for tiny models and twins.

* :func:`wordpiece_vocab`: BERT-style uncased WordPiece (BLIP, the Q-Former);
* :func:`bpe_vocab`: byte-level BPE (GPT-2, OPT; LLaMA with a Metaspace pre-tokenizer);
* :func:`unigram_vocab`: T5-style SentencePiece Unigram pieces with scores.

All are deterministic given the corpus.
"""

from __future__ import annotations

import json
from typing import Any

_ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:-()/%'")


def wordpiece_vocab(corpus: list[str], vocab_size: int, specials: list[str]) -> dict[str, int]:
    """A BERT-style uncased WordPiece vocabulary for ``corpus``: specials, characters, whole words.

    Words are split exactly as BERT does (the ``tokenizers`` BERT normaliser and pre-tokenizer) and
    kept by frequency; every character also exists as a ``##`` continuation piece, so unseen words
    still tokenize. Built by counting rather than with ``WordPieceTrainer``, whose id order varies
    from run to run (hash-set order) and would make ``seed`` meaningless.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    chars = sorted(set(_ALPHABET) | {c for w in counts for c in w})
    vocab: dict[str, int] = {}
    for tok in [*specials, *chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(tok, len(vocab))
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    return vocab


def bpe_vocab(corpus: list[str], vocab_size: int, specials: list[str], *, pre_tokenizer: Any = None,
              alphabet: list[str] | None = None,
              end_of_word_suffix: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE vocabulary (token -> id) and its merges trained on ``corpus`` (``tokenizers``' BpeTrainer).

    Default: GPT-2 style byte-level (``ByteLevel`` pre-tokenizer and alphabet). ``end_of_word_suffix``:
    CLIP's style, word-final pieces end in it (``</w>``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    suffix = {"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}
    tok = Tokenizer(models.BPE(**suffix))
    tok.pre_tokenizer = pre_tokenizer if pre_tokenizer is not None else pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if alphabet is None else alphabet,
                                  show_progress=False, **suffix)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    return dict(model["vocab"]), merges


def unigram_vocab(corpus: list[str], vocab_size: int, specials: list[str]) -> list[tuple[str, float]]:
    """A T5-style (SentencePiece Unigram, ``▁`` word boundary) vocabulary with log-probability scores.

    Built without sentencepiece: whole words (``▁word``) by frequency plus every character as a piece,
    scored by log frequency so Viterbi prefers whole words and falls back to characters.
    """
    import math
    import re
    from collections import Counter

    counts: Counter[str] = Counter()
    for text in corpus:
        # cased like T5's vocabulary; punctuation stays a separate piece ("nodule." = "▁nodule" ".")
        for word in text.split():
            for run in re.finditer(r"\w+", word):
                counts[("\u2581" if run.start() == 0 else "") + run.group(0)] += 1
    chars = sorted(set(_ALPHABET) | {c.upper() for c in _ALPHABET} | {c for w in counts for c in w[1:]})
    total = sum(counts.values()) + len(chars)
    vocab: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    seen = set(specials)
    for piece in ["\u2581", *chars]:
        if piece not in seen:
            vocab.append((piece, math.log(1 / total) - 2.0))
            seen.add(piece)
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in seen:
            vocab.append((word, math.log(n / total)))
            seen.add(word)
    return vocab
