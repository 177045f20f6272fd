"""Write the shapes corpus to disk: a manifest (``manifest.jsonl``) that ``load_dataset`` reads.

Layout::

    OUT/manifest.jsonl   one object per picture: id, split, image, caption and the scene's facts
                         (background, shape, levels, textures; per mark: kind, tone, faint, size, side,
                         vertical, bbox and its grey level in the mask)
    OUT/images/<ID>.png  8-bit greyscale pictures
    OUT/masks/<ID>.png   the marks' mask (first mark 255, second 127, 0 elsewhere)
    OUT/shapes.json      generator version, n, seed, size, splits, counts

Every picture depends only on (seed, index), as in the radiology benchmark: the same arguments give
byte-identical files and the first k pictures are the same for any n >= k.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medblip.data.shapes import vocab
from medblip.data.shapes.captions import write_caption
from medblip.data.shapes.scene import render, sample_scene
from medblip.data.synth.generate import SPLITS, split_counts
from medblip.errors import DataError, MedblipError
from medblip.io import atomic_replace_dir, atomic_write_json, dumps, read_json_object

SHAPES_VERSION = "1.0"
META = "shapes.json"
MANIFEST = "manifest.jsonl"
_STREAM_SCENE, _STREAM_PIXELS, _STREAM_CAPTION = 0, 1, 2


@dataclass
class ShapesSummary:
    out: Path
    n: int
    seed: int
    size: int
    splits: dict[str, int]


def picture_id(index: int) -> str:
    return f"SHAPE_{index + 1:06d}"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, "L").save(buf, "PNG")
    return buf.getvalue()


def render_picture(seed: int, index: int, size: int, simple_rate: float = vocab.SIMPLE_RATE
                   ) -> tuple[dict[str, Any], bytes, bytes]:
    """One picture: (manifest row without split/paths, image PNG bytes, mask PNG bytes)."""
    scene = sample_scene(np.random.default_rng([seed, index, _STREAM_SCENE]), simple_rate)
    image, mask, boxes = render(scene, size, np.random.default_rng([seed, index, _STREAM_PIXELS]))
    caption = write_caption(scene, np.random.default_rng([seed, index, _STREAM_CAPTION]), size)
    row = {"id": picture_id(index), "caption": caption, "background": scene.background,
           "background_texture": scene.background_texture, "shape": scene.shape, "shape_level": scene.shape_level,
           "shape_texture": scene.shape_texture, "simple": scene.simple,
           "marks": [{"kind": m.kind, "tone": m.tone, "faint": m.faint, "size": m.size_word(), "side": m.side,
                      "vertical": m.vertical, "bbox": box, "mask_value": 255 // k}
                     for k, (m, box) in enumerate(zip(scene.marks, boxes, strict=True), 1)]}
    return row, _png(image), _png(mask)


def read_meta(out: str | Path) -> dict[str, Any] | None:
    """``shapes.json`` of a corpus folder, or None when there is none (or it is unreadable)."""
    return read_json_object(Path(out) / META)


def generate_shapes(out: str | Path, n: int, seed: int = 0, size: int = 64,
                    splits: Sequence[float] = (0.95, 0.05, 0.0), simple_rate: float = vocab.SIMPLE_RATE
                    ) -> ShapesSummary:
    """Render ``n`` pictures into ``out`` (an existing corpus there is replaced atomically)."""
    if not isinstance(n, int) or not 1 <= n <= 1_000_000:
        raise MedblipError(f"shapes corpus: n must be an integer between 1 and 1000000, got {n!r}")
    if not isinstance(size, int) or not 32 <= size <= 1024:
        raise MedblipError(f"shapes corpus: size must be between 32 and 1024 pixels, got {size!r}")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6 or splits[0] <= 0:
        raise MedblipError(f"shapes corpus: splits must be three fractions summing to 1, got {tuple(splits)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_meta(out) is None)):
        raise DataError(f"{out}: exists and holds no shapes corpus ({META}); choose a new or empty folder")
    counts = split_counts(n, splits)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        rows: list[dict[str, Any]] = []
        index = 0
        for (split, _), count in zip(SPLITS, counts, strict=True):
            for _ in range(count):
                row, image, mask = render_picture(seed, index, size, simple_rate)
                image_rel, mask_rel = f"images/{row['id']}.png", f"masks/{row['id']}.png"
                (tmp / image_rel).write_bytes(image)
                (tmp / mask_rel).write_bytes(mask)
                rows.append({"id": row["id"], "split": split, "image": image_rel, "mask": mask_rel,
                             **{k: v for k, v in row.items() if k != "id"}})
                index += 1
        (tmp / MANIFEST).write_text("".join(dumps(r, indent=None) + "\n" for r in rows), encoding="utf-8")
        split_sizes = {split: c for (split, _), c in zip(SPLITS, counts, strict=True)}
        atomic_write_json(tmp / META, {
            "generator": "medblip.data.shapes", "version": SHAPES_VERSION, "n": n, "seed": seed, "size": size,
            "simple_rate": simple_rate, "splits": split_sizes, "side_convention": "viewer's: left is the image's left",
            "counts": {"shape": dict(Counter(r["shape"] for r in rows)),
                       "marks": dict(Counter(len(r["marks"]) for r in rows)),
                       "kind": dict(Counter(m["kind"] for r in rows for m in r["marks"])),
                       "side": dict(Counter(m["side"] for r in rows for m in r["marks"]))}})
        atomic_replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShapesSummary(out, n, seed, size, split_sizes)
