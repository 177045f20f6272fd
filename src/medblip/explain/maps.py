"""Turning per-layer cross-attention tensors into one map per token, and token maps into word maps.

Conventions used throughout :mod:`medblip.explain`:

* A *token map* is a 2-D array on the model's patch grid (rows x cols), e.g. 24 x 24 for BLIP at
  384 px with 16 px patches. The image CLS / prefix positions are never part of it.
* **Aggregation** over the selected layers and heads: ``mean`` averages both; ``max`` takes the
  element-wise maximum over both; ``last`` keeps only the last selected layer and averages its heads.
* **Normalisation** is min-max per map to [0, 1]: ``(m - min) / (max - min)``. Attention rows are
  probability distributions whose absolute scale depends on the number of patches, so only their
  shape is comparable across tokens, layers and models. A constant map carries no spatial
  information and becomes all zeros (not NaN).
* **Upsampling** to image resolution is bilinear (``align_corners=False``), the same interpolation
  the processors use to resize the image, so a patch's value lands on the pixels it was computed from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medblip.errors import MedblipError

AGGREGATES = ("mean", "max", "last")


def select_indices(n: int, wanted: Sequence[int] | None, what: str) -> list[int]:
    """Resolve ``wanted`` (None = all, negative = from the end) against ``n`` items, with checks."""
    if wanted is None or len(wanted) == 0:
        return list(range(n))
    out = []
    for i in wanted:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise MedblipError(f"{what} {i} out of range: the model has {n} {what}s (0..{n - 1})")
        out.append(j)
    return out


def aggregate(attentions: Sequence[np.ndarray], layers: Sequence[int] | None = None,
              heads: Sequence[int] | None = None, how: str = "mean") -> np.ndarray:
    """Reduce per-layer attention ``(heads, T, P)`` arrays to one ``(T, P)`` array.

    ``layers`` and ``heads`` select (None = all; negative indices count from the end) before
    ``how`` (mean | max | last, see the module notes) reduces them.
    """
    if how not in AGGREGATES:
        raise MedblipError(f"unknown aggregate {how!r}; choose one of {', '.join(AGGREGATES)}")
    if len(attentions) == 0:
        raise MedblipError("the model returned no cross-attention layers")
    layer_ids = select_indices(len(attentions), layers, "layer")
    head_ids = select_indices(attentions[layer_ids[0]].shape[0], heads, "head")
    stack = np.stack([np.asarray(attentions[i], dtype=np.float64)[head_ids] for i in layer_ids])
    if how == "last":
        return stack[-1].mean(axis=0)
    if how == "max":
        return stack.max(axis=(0, 1))
    return stack.mean(axis=(0, 1))


def to_grid(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(T, P)`` over patches -> ``(T, rows, cols)``; patches are in row-major order in every ViT."""
    rows, cols = grid
    maps = np.asarray(maps)
    if maps.shape[-1] != rows * cols:
        raise MedblipError(f"cannot reshape {maps.shape[-1]} patch positions to a {rows}x{cols} grid")
    return maps.reshape(*maps.shape[:-1], rows, cols)


def normalize(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each 2-D map (the last two axes) to [0, 1]; constant maps become zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out.astype(np.float32)


#: a map whose values span less than this fraction of its largest magnitude is *flat*: min-max
#: normalisation would stretch noise (attention that is uniform to 1%) to the full colour scale
FLAT_TOLERANCE = 0.1


def map_ranges(maps: np.ndarray) -> list[tuple[float, float]]:
    """(min, max) of each raw 2-D map (the last two axes)."""
    maps = np.asarray(maps, dtype=np.float64)
    flat = maps.reshape(-1, *maps.shape[-2:])
    return [(float(m.min()), float(m.max())) for m in flat]


def is_flat(low: float, high: float, tolerance: float = FLAT_TOLERANCE) -> bool:
    """Whether a map with values in [low, high] is near-flat (see :data:`FLAT_TOLERANCE`)."""
    scale = max(abs(low), abs(high))
    return scale == 0.0 or (high - low) <= tolerance * scale


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(..., rows, cols)`` maps to ``size = (height, width)``."""
    import torch
    import torch.nn.functional as F

    maps = np.asarray(maps, dtype=np.float32)
    lead = maps.shape[:-2]
    # a copy: torch warns on read-only arrays (e.g. np.asarray of a PIL image), and maps are small
    t = torch.tensor(maps.reshape(-1, 1, *maps.shape[-2:]))
    out = F.interpolate(t, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return out.reshape(*lead, int(size[0]), int(size[1])).numpy()


# -- sub-word tokens -> words --------------------------------------------------------------------

#: word-start / continuation markers of the tokenizers the supported families use
WORDPIECE, BYTELEVEL, SENTENCEPIECE, PLAIN = "wordpiece", "bytelevel", "sentencepiece", "plain"
_PUNCT = re.compile(r"^[^\w\s]+$", re.UNICODE)
_EDGE_PUNCT = ".,;:!?()[]{}\"'"


def detect_scheme(tokens: Sequence[str]) -> str:
    """Guess the sub-word convention from the token strings themselves."""
    if any(t.startswith("##") and len(t) > 2 for t in tokens):
        return WORDPIECE
    if any(t.startswith("Ġ") for t in tokens):
        return BYTELEVEL
    if any(t.startswith("▁") for t in tokens):
        return SENTENCEPIECE
    return PLAIN


def _clean(token: str) -> str:
    for marker in ("##", "Ġ", "▁"):
        if token.startswith(marker):
            return token[len(marker):]
    return token


@dataclass
class WordGroups:
    """Words of a caption and, for each, the indices of the tokens it was merged from."""

    words: list[str]
    groups: list[list[int]]


def group_words(tokens: Sequence[str], scheme: str | None = None) -> WordGroups:
    """Merge sub-word tokens into words.

    WordPiece marks continuations (``##ing``); GPT-2 byte-level BPE (``Ġword``) and sentencepiece
    (``▁word``) mark word starts. A token made only of punctuation is always a word of its own, and
    so is the token after it, so "nodule." gives "nodule" and "." whatever the tokenizer (BERT
    already splits punctuation; BPE does not) and ``--words nodule`` matches in every family.
    """
    scheme = scheme or detect_scheme(tokens)
    words: list[str] = []
    groups: list[list[int]] = []
    prev_punct = True
    for i, tok in enumerate(tokens):
        text = _clean(tok)
        punct = bool(_PUNCT.match(text)) if text else False
        if scheme == WORDPIECE:
            starts = not tok.startswith("##")
        elif scheme in (BYTELEVEL, SENTENCEPIECE):
            starts = tok.startswith("Ġ") or tok.startswith("▁")
        else:
            starts = True
        if not text:  # a bare "▁" / "Ġ" (space token) opens the next word but has no text
            if groups:
                prev_punct = True
            continue
        if starts or punct or prev_punct or not groups:
            words.append(text)
            groups.append([i])
        else:
            words[-1] += text
            groups[-1].append(i)
        prev_punct = punct
    return WordGroups(words=words, groups=groups)


def merge_maps(maps: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Average the token maps of each word: ``(T, ...)`` -> ``(W, ...)``."""
    maps = np.asarray(maps)
    if not groups:
        return np.zeros((0, *maps.shape[1:]), dtype=maps.dtype)
    return np.stack([maps[list(g)].mean(axis=0) for g in groups]).astype(maps.dtype)


def word_key(word: str) -> str:
    """Matching form of a word: lower case, surrounding punctuation removed.

    A sub-word vocabulary may hold "nodule." as one piece (no token boundary to split at), so words
    are compared without their punctuation.
    """
    key = word.strip().lower().strip(_EDGE_PUNCT)
    return key or word.strip().lower()


def select_words(words: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Indices of the caption words named in ``wanted`` (see :func:`word_key`); unknown words are an error."""
    keys = [word_key(w) for w in words]
    out: list[int] = []
    for w in wanted:
        key = word_key(w)
        if not key:
            continue
        hits = [i for i, x in enumerate(keys) if x == key]
        if not hits:
            raise MedblipError(f"word {w!r} is not in the caption: {' '.join(words)!r}")
        out.extend(i for i in hits if i not in out)
    return out
