"""Explain one image: caption it (or take a caption), compute token and word maps, save them.

:func:`explain_image` returns an :class:`Explanation` holding the raw aggregated maps on the model's
patch grid; :func:`save_explanation` writes the grid figure, per-word overlays on the original image,
the raw maps (``.npy``) and a JSON description.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medblip import results
from medblip.explain.attention import METHODS, check_selection, trace
from medblip.explain.maps import (
    AGGREGATES,
    group_words,
    is_flat,
    map_ranges,
    merge_maps,
    normalize,
    select_words,
)
from medblip.explain.render import Box, grid_figure, input_box, overlay, save_png, to_original
from medblip.io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

    from medblip.models.base import CaptionModel


@dataclass
class ExplainSettings:
    """What to explain and how (recorded in every JSON output)."""

    method: str = "attention"
    layers: list[int] | None = None  # None: all layers (attention) / the last layer (Grad-CAM); saliency: none
    heads: list[int] | None = None  # None: all heads; saliency: none
    aggregate: str = "mean"
    max_new_tokens: int = 40  # for generated captions (greedy)
    min_new_tokens: int = 0

    def check(self) -> ExplainSettings:
        from medblip.errors import MedblipError

        if self.method not in METHODS:
            raise MedblipError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.aggregate not in AGGREGATES:
            raise MedblipError(f"unknown aggregate {self.aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        check_selection(self.method, self.layers, self.heads, self.aggregate)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "layers": self.layers, "heads": self.heads, "aggregate": self.aggregate,
                "normalisation": "min-max per map to [0, 1] (overlays and scores; .npy maps are raw)",
                "upsampling": "bilinear onto the region of the original image the model input covers"}


@dataclass
class Explanation:
    """Maps for one image and caption. ``token_maps``/``word_maps``: raw (T|W, rows, cols)."""

    caption: str
    caption_source: str  # "given" | "generated" | "reference"
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float]
    token_maps: np.ndarray
    words: list[str]
    word_groups: list[list[int]]
    grid: tuple[int, int]
    image_size: tuple[int, int]  # (width, height) of the original image
    box: Box
    settings: ExplainSettings
    family: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def word_maps(self) -> np.ndarray:
        return merge_maps(self.token_maps, self.word_groups)

    def heatmaps(self, level: str = "word", indices: Sequence[int] | None = None) -> np.ndarray:
        """Maps at the original image resolution, each min-max normalised to [0, 1]."""
        maps = self.word_maps if level == "word" else self.token_maps
        if indices is not None:
            maps = maps[list(indices)]
        return normalize(to_original(maps, self.image_size, self.box))

    def as_dict(self) -> dict[str, Any]:
        return {
            "caption": self.caption,
            "caption_source": self.caption_source,
            "family": self.family,
            "model": self.model,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "token_logprobs": [round(x, 6) for x in self.logprobs],
            "words": self.words,
            "word_tokens": self.word_groups,
            "grid": list(self.grid),
            "image_size": list(self.image_size),
            "input_box": [round(v, 3) for v in self.box],
            "settings": self.settings.as_dict(),
            "extra": self.extra,
        }


def generate_caption(adapter: CaptionModel, image: Image.Image, max_new_tokens: int = 40,
                     min_new_tokens: int = 0) -> str:
    """The model's greedy caption (one beam, no sampling)."""
    return adapter.generate([image], num_beams=1, do_sample=False, max_new_tokens=max_new_tokens,
                            min_new_tokens=min_new_tokens)[0]


def explain_image(adapter: CaptionModel, image: Image.Image, caption: str | None = None,
                  settings: ExplainSettings | None = None, caption_source: str | None = None) -> Explanation:
    """Explain ``caption`` (default: the model's greedy caption) for ``image``."""
    from medblip.errors import MedblipError

    settings = (settings or ExplainSettings()).check()
    image = image.convert("RGB")
    source = caption_source or ("given" if caption else "generated")
    if caption is None:
        caption = generate_caption(adapter, image, settings.max_new_tokens, settings.min_new_tokens)
        if not caption.strip():
            raise MedblipError("the model generated an empty caption; pass --caption to explain a given one")
    tr, maps = trace(adapter, image, caption, method=settings.method, layers=settings.layers,
                     heads=settings.heads, aggregate_how=settings.aggregate)
    groups = group_words(tr.tokens)
    return Explanation(
        caption=caption, caption_source=source, tokens=tr.tokens, token_ids=tr.token_ids,
        logprobs=tr.logprobs, token_maps=maps.astype(np.float32), words=groups.words,
        word_groups=groups.groups, grid=tr.grid, image_size=image.size,
        box=input_box(adapter.processor, image.size), settings=settings, family=adapter.family,
        model=adapter.name_or_path, extra=tr.extra,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^\w-]+", "_", text, flags=re.UNICODE).strip("_")[:40] or "token"


def save_explanation(expl: Explanation, image: Image.Image, out_dir: str | Path, *,
                     words: Sequence[str] | None = None, level: str = "word", cmap: str = "jet",
                     alpha: float = 0.5, overlays: bool = True, title: str | None = None) -> dict[str, Any]:
    """Write ``grid.png``, ``overlays/NN_word.png``, ``token_maps.npy``, ``word_maps.npy`` and
    ``explanation.json`` (:class:`medblip.results.Explanation`) into ``out_dir``; returns the JSON
    written (with the file names).

    ``words`` restricts the figure and overlays to those caption words (an unknown word is an error);
    ``level="token"`` draws one panel per sub-word token instead of per word.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_all = expl.words if level == "word" else expl.tokens
    if words:
        if level == "word":
            chosen = select_words(expl.words, words)
        else:
            wanted = set(select_words(expl.words, words))
            chosen = [t for w in sorted(wanted) for t in expl.word_groups[w]]
    else:
        chosen = list(range(len(labels_all)))
    heats = expl.heatmaps(level, chosen)
    labels = [labels_all[i] for i in chosen]
    # the raw range of each map, on the patch grid: the figure prints it and leaves flat maps unstretched
    ranges = map_ranges((expl.word_maps if level == "word" else expl.token_maps)[chosen])
    files: dict[str, Any] = {"grid": "grid.png", "token_maps": "token_maps.npy", "word_maps": "word_maps.npy"}
    grid_figure(image, list(heats), labels, expl.caption, out_dir / "grid.png", cmap=cmap, alpha=alpha,
                title=title or f"{expl.family} · {expl.settings.method}", ranges=ranges)
    if overlays:
        names = []
        for k, (i, heat) in enumerate(zip(chosen, heats, strict=True)):
            name = f"overlays/{k:02d}_{_slug(labels_all[i])}.png"
            save_png(overlay(image, heat, cmap=cmap, alpha=alpha, flat=is_flat(*ranges[k])), out_dir / name)
            names.append(name)
        files["overlays"] = names
    _save_npy(out_dir / "token_maps.npy", expl.token_maps)
    _save_npy(out_dir / "word_maps.npy", expl.word_maps)
    doc = {**expl.as_dict(), "level": level, "panels": labels, "files": files, "cmap": cmap,
           "panel_ranges": [[round(lo, 9), round(hi, 9)] for lo, hi in ranges],
           "flat_panels": [is_flat(lo, hi) for lo, hi in ranges]}
    results.Explanation.model_validate(doc).write(out_dir)
    return doc


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    atomic_write_bytes(path, buf.getvalue())
