"""Vectorised drawing primitives shared by the per-modality renderers.

Renderers describe anatomy in *anatomical units*: the square [-1, 1]² is the nominal field of view
(x to the image's right, y downwards). A :class:`Frame` maps those units to pixels through a small
random zoom/rotation/shift, so the same anatomy lands at slightly different places in every image
while lesion masks stay exactly aligned (they are drawn through the same frame).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Window = tuple[slice, slice]


class Frame:
    """Pixel grid of an ``n`` x ``n`` image and its mapping to anatomical units."""

    def __init__(self, n: int, zoom: float = 1.0, angle: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)):
        self.n = n
        self.zoom = zoom
        self._cos, self._sin = math.cos(angle), math.sin(angle)
        self._tx, self._ty = shift
        c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
        # Image coordinates in [-1, 1] (used for things fixed to the display, e.g. the US sector).
        self.IX, self.IY = np.meshgrid(c, c)
        dx, dy = self.IX - self._tx, self.IY - self._ty
        self.X = ((self._cos * dx + self._sin * dy) / zoom).astype(np.float32)
        self.Y = ((-self._sin * dx + self._cos * dy) / zoom).astype(np.float32)

    @property
    def px_per_unit(self) -> float:
        return self.n / 2.0 * self.zoom

    def to_px(self, ax: float, ay: float) -> tuple[float, float]:
        """Anatomical point -> pixel coordinates (PIL convention: pixel centres at integers)."""
        ix = self.zoom * (self._cos * ax - self._sin * ay) + self._tx
        iy = self.zoom * (self._sin * ax + self._cos * ay) + self._ty
        return (ix + 1.0) / 2.0 * self.n - 0.5, (iy + 1.0) / 2.0 * self.n - 0.5

    def window(self, cx: float, cy: float, radius: float) -> Window | None:
        """Pixel slices covering a circle in anatomical units (None when fully off-image)."""
        px, py = self.to_px(cx, cy)
        r = radius * self.px_per_unit + 2.0
        x0, x1 = max(0, int(px - r)), min(self.n, int(px + r) + 2)
        y0, y1 = max(0, int(py - r)), min(self.n, int(py + r) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def full(self) -> Window:
        return slice(0, self.n), slice(0, self.n)


Shape = tuple[Window, np.ndarray]


def ellipse(
    frame: Frame,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    rot: float = 0.0,
    wobble: Sequence[tuple[int, float, float]] = (),
    soft_px: float = 0.8,
) -> Shape | None:
    """Anti-aliased filled ellipse; ``wobble`` = (k, amplitude, phase) radial harmonics."""
    amp = sum(abs(a) for _, a, _ in wobble)
    win = frame.window(cx, cy, max(rx, ry) * (1.0 + amp))
    if win is None:
        return None
    dx, dy = frame.X[win] - cx, frame.Y[win] - cy
    if rot:
        c, s = math.cos(rot), math.sin(rot)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    u, v = dx / rx, dy / ry
    rho = np.sqrt(u * u + v * v)
    if wobble:
        phi = np.arctan2(v, u)
        mod = np.ones_like(rho)
        for k, a, p in wobble:
            mod += a * np.cos(k * phi + p)
        rho = rho / mod
    edge = soft_px / (min(rx, ry) * frame.px_per_unit)
    return win, np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0).astype(np.float32)


def random_wobble(rng: np.random.Generator, strength: float, harmonics: Sequence[int] = (2, 3, 5)) -> list:
    return [(k, float(rng.uniform(0.3, 1.0) * strength / k**0.5), float(rng.uniform(0, 2 * math.pi)))
            for k in harmonics]


def paint(img: np.ndarray, shape: Shape | None, value: float | np.ndarray, opacity: float = 1.0) -> None:
    """Blend ``value`` into ``img`` under the shape's alpha (in place)."""
    if shape is None:
        return
    win, alpha = shape
    a = alpha * opacity
    region = img[win]
    val = value[win] if isinstance(value, np.ndarray) and value.shape == img.shape else value
    region += a * (val - region)


def add(img: np.ndarray, shape: Shape | None, delta: float | np.ndarray) -> None:
    if shape is None:
        return
    win, alpha = shape
    d = delta[win] if isinstance(delta, np.ndarray) and delta.shape == img.shape else delta
    img[win] += alpha * d


def to_full(frame: Frame, shape: Shape | None) -> np.ndarray:
    """The shape's alpha as a full-size array."""
    out = np.zeros((frame.n, frame.n), dtype=np.float32)
    if shape is not None:
        win, alpha = shape
        out[win] = alpha
    return out


def smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance noise with ~``cells`` blobs across the image (bicubic upsampling)."""
    cells = max(2, min(cells, n))
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = np.asarray(Image.fromarray(g, "F").resize((n + n * 3 // cells, n + n * 3 // cells),
                                                    Image.Resampling.BICUBIC))
    off = (n * 3 // cells) // 2
    big = big[off:off + n, off:off + n]
    return (big - big.mean()) / (big.std() + 1e-6)


def _conv1d(a: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    k = len(weights) // 2
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (k, k)
    p = np.pad(a, pad, mode="edge")
    view = (lambda i: p[i:i + n]) if axis == 0 else (lambda i: p[:, i:i + n])
    out = weights[0] * view(0)
    for i in range(1, len(weights)):
        out += weights[i] * view(i)
    return out


def blur(a: np.ndarray, sigma: float | tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur with edge padding; ``sigma`` in pixels, or (sigma_y, sigma_x)."""
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    out = a.astype(np.float32)
    for axis, s in ((0, sy), (1, sx)):
        if s < 0.3:
            continue
        k = max(1, math.ceil(2.5 * s))
        x = np.arange(-k, k + 1, dtype=np.float32)
        w = np.exp(-0.5 * (x / s) ** 2)
        out = _conv1d(out, (w / w.sum()).astype(np.float32), axis)
    return out


class Layer:
    """A float image drawn on with PIL (polylines, polygons) through a :class:`Frame`."""

    def __init__(self, frame: Frame):
        self.frame = frame
        self.image = Image.new("F", (frame.n, frame.n), 0.0)
        self._draw = ImageDraw.Draw(self.image)

    def line(self, points: Sequence[tuple[float, float]], value: float, width_units: float) -> None:
        px = [self.frame.to_px(x, y) for x, y in points]
        w = max(1, round(width_units * self.frame.px_per_unit))
        self._draw.line(px, fill=float(value), width=w, joint="curve")

    def polygon(self, points: Sequence[tuple[float, float]], value: float) -> None:
        self._draw.polygon([self.frame.to_px(x, y) for x, y in points], fill=float(value))

    def disc(self, cx: float, cy: float, r_units: float, value: float) -> None:
        px, py = self.frame.to_px(cx, cy)
        r = max(0.5, r_units * self.frame.px_per_unit)
        self._draw.ellipse([px - r, py - r, px + r, py + r], fill=float(value))

    def array(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.float32).copy()


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
