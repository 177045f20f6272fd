"""Map heat-maps back onto the original image and draw overlays and per-token grids (matplotlib, Agg).

The model never sees the original image: its processor resizes (and for some encoders centre-crops)
it to a square. :func:`input_box` works out which part of the original the square input covers, so a
grid map is stretched back over exactly that region at the original resolution and aspect ratio;
anything outside the region (cropped away) gets no heat.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medblip.explain.maps import is_flat, normalize, upsample
from medblip.io import atomic_write_bytes

Box = tuple[float, float, float, float]  # left, top, right, bottom in original pixels


def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def input_box(processor: Any, original_size: tuple[int, int]) -> Box:
    """The region of the original image (``original_size = (width, height)``) the model input covers.

    A plain resize to ``{height, width}`` (BLIP, BLIP-2, ViT) squashes the whole image into the input,
    so the box is the whole image. A ``shortest_edge`` resize followed by a centre crop (CLIP-style
    processors) keeps only the middle; the box is that crop, expressed in original pixels.
    """
    width, height = original_size
    ip = _image_processor(processor)
    size = getattr(ip, "size", None)
    if size is None or not getattr(ip, "do_resize", True):
        rw, rh = float(width), float(height)
    elif _get(size, "height") and _get(size, "width"):
        rw, rh = float(_get(size, "width")), float(_get(size, "height"))
    elif _get(size, "shortest_edge"):
        scale = float(_get(size, "shortest_edge")) / min(width, height)
        longest = _get(size, "longest_edge")
        if longest and max(width, height) * scale > longest:
            scale = float(longest) / max(width, height)
        rw, rh = width * scale, height * scale
    else:
        rw, rh = float(width), float(height)
    left, top, right, bottom = 0.0, 0.0, rw, rh
    crop = getattr(ip, "crop_size", None)
    if getattr(ip, "do_center_crop", False) and crop is not None:
        cw = float(_get(crop, "width") or rw)
        ch = float(_get(crop, "height") or rh)
        left, top = max(0.0, (rw - cw) / 2), max(0.0, (rh - ch) / 2)
        right, bottom = min(rw, left + cw), min(rh, top + ch)
    sx, sy = width / rw, height / rh
    return (left * sx, top * sy, right * sx, bottom * sy)


def to_original(maps: np.ndarray, original_size: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """Grid maps ``(..., rows, cols)`` -> ``(..., height, width)`` of the original image.

    The grid is upsampled bilinearly onto ``box`` (default: the whole image) and placed on a zero
    canvas of the original size. Values are not renormalised here.
    """
    width, height = original_size
    maps = np.asarray(maps, dtype=np.float32)
    if box is None:
        return upsample(maps, (height, width))
    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = max(0, left), max(0, top)
    right, bottom = min(width, max(right, left + 1)), min(height, max(bottom, top + 1))
    if (left, top, right, bottom) == (0, 0, width, height):
        return upsample(maps, (height, width))
    canvas = np.zeros((*maps.shape[:-2], height, width), dtype=np.float32)
    canvas[..., top:bottom, left:right] = upsample(maps, (bottom - top, right - left))
    return canvas


def overlay(image: Image.Image, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.5,
            flat: bool = False) -> Image.Image:
    """Blend a colour-mapped heat-map onto ``image``; the result has the image's own size.

    ``heat`` is any 2-D map; it is min-max normalised here and resized to the image when its shape
    differs (use :func:`to_original` first to respect the processor's crop). A ``flat`` map (see
    :func:`medblip.explain.maps.is_flat`) is not stretched over the colour scale: the image is
    returned in grey, without heat.
    """
    import matplotlib

    if flat:
        return image.convert("L").convert("RGB")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        heat = upsample(heat, rgb.shape[:2])
    heat = normalize(heat)
    colours = matplotlib.colormaps[cmap](heat)[..., :3].astype(np.float32)
    blended = (1.0 - alpha) * rgb + alpha * colours
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def range_text(low: float, high: float) -> str:
    """A map's raw range, to four significant digits: ``0.01512–0.01566``."""
    return f"{low:.4g}–{high:.4g}"


def range_label(low: float, high: float) -> str:
    """:func:`range_text`, with ``· flat`` when the map is near-flat: a panel label."""
    return f"{range_text(low, high)} · flat" if is_flat(low, high) else range_text(low, high)


def save_png(image: Image.Image, path: str | Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def grid_figure(image: Image.Image, heats: Sequence[np.ndarray], labels: Sequence[str], caption: str,
                path: str | Path, *, cmap: str = "jet", alpha: float = 0.5, cols: int | None = None,
                title: str | None = None, panel_px: int = 256,
                ranges: Sequence[tuple[float, float]] | None = None) -> Path:
    """One panel per map (the original image first), a colour bar and the caption underneath; PNG.

    ``heats`` are maps at the original image's resolution (see :func:`to_original`); ``ranges`` their
    raw (min, max), printed under each word: every map is stretched min-to-max over the colour bar,
    except near-flat ones, which are drawn in grey and labelled ``flat``. Panels are drawn at most
    ``panel_px`` pixels wide so a 30-token caption stays a readable figure. The layout is in inches
    (title, panel titles, colour bar, caption each get their own band), so nothing overlaps.
    """
    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = min(1.0, panel_px / max(image.size))
    small = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    panels = [(image.convert("RGB").resize(small, Image.Resampling.BILINEAR), "image")]
    ranges = list(ranges) if ranges is not None else [None] * len(heats)
    for heat, label, rng in zip(heats, labels, ranges, strict=True):
        flat = rng is not None and is_flat(*rng)
        text = f"{label}\n{range_label(*rng)}" if rng is not None else label
        panels.append((overlay(image, heat, cmap=cmap, alpha=alpha, flat=flat).resize(
            small, Image.Resampling.BILINEAR), text))
    n = len(panels)
    cols = cols or min(n, 6)
    rows = -(-n // cols)
    aspect = small[1] / small[0]
    wrapped = textwrap.fill(caption, width=max(40, 18 * cols))
    panel_w = 2.2
    title_h = 0.45 if title else 0.1
    label_h = 0.45 if any(r is not None for r in ranges) else 0.3  # one or two lines above each panel
    bar_h = 0.6
    caption_h = 0.2 + 0.2 * (wrapped.count("\n") + 1)
    row_h = panel_w * aspect + label_h
    height = title_h + rows * row_h + bar_h + caption_h
    fig = Figure(figsize=(panel_w * cols, height), dpi=100)
    FigureCanvasAgg(fig)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        top = height - title_h - r * row_h - label_h
        ax = fig.add_axes((c / cols + 0.005, (top - panel_w * aspect) / height, 1 / cols - 0.01,
                           panel_w * aspect / height))
        ax.set_axis_off()
        if k < n:
            ax.imshow(np.asarray(panels[k][0]))
            ax.set_title(panels[k][1], fontsize=8.5, pad=3)
    bar = fig.add_axes((0.25, (caption_h + 0.3) / height, 0.5, 0.12 / height))
    fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap), cax=bar, orientation="horizontal",
                 ticks=[0, 1])
    bar.set_xticklabels(["map min", "map max"], fontsize=8)
    fig.text(0.5, caption_h / 2 / height, wrapped, ha="center", va="center", fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.22 / height, title, ha="center", va="center", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
