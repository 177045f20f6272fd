"""What one picture of the shapes corpus shows, and drawing it.

A picture is a textured background, one large shape (the subject) with its own grey level and
texture, and - in :data:`vocab.MARK_RATE` of the pictures - one small mark that contrasts with what
it sits on, left or right of the centre. The mark's presence, kind, size and side are drawn
independently of the subject, so a captioner can only name them by looking at the mark; its mask is
kept, so the corpus can also score where a model looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from medblip.data.shapes import vocab
from medblip.data.synth.canvas import Frame, blur, ellipse, random_wobble, smooth_noise, to_full

_SUPERSAMPLE = 4  # polygons are drawn at 4x and averaged down (anti-aliasing)


@dataclass(frozen=True)
class Mark:
    """One small mark: its kind, tone (against what it sits on), side and place, size in pixels at 64 px."""

    kind: str  # one of vocab.MARKS
    tone: str  # "bright" | "dark"
    faint: bool  # low contrast with what the mark sits on
    side: str  # viewer's "left" / "right"
    vertical: str | None  # "top" | "bottom" | None (middle)
    xy: tuple[float, float]  # centre in [-1, 1] image units (x right, y down)
    radius: float  # in pixels at 64 px (scaled with the image size)

    def size_word(self) -> str:
        return next(word for limit, word in vocab.MARK_SIZES if 2 * self.radius < limit)


@dataclass(frozen=True)
class ShapeScene:
    background: str  # level word
    background_texture: str
    shape: str
    shape_level: str
    shape_texture: str
    geometry: tuple[float, ...]  # subject centre x, y, half-size, aspect, rotation
    marks: tuple[Mark, ...]  # none, one or two, in the order the caption names them
    simple: bool = False  # no subject, a plain background, large clear marks, a caption of the marks only

    @property
    def has_mark(self) -> bool:
        return bool(self.marks)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _contrasting_level(rng: np.random.Generator, other: str, min_gap: float) -> str:
    options = [w for w, v in vocab.LEVELS.items() if abs(v - vocab.LEVELS[other]) >= min_gap]
    return _pick(rng, options)


def _sample_mark(rng: np.random.Generator, side: str, inside: np.ndarray, shape_level: str, background: str,
                 taken: list[tuple[float, float]], simple: bool) -> Mark:
    kind = _pick(rng, vocab.MARKS)
    # Inside the subject when possible (as a lesion sits in an organ), clearly off the midline and
    # away from the other mark.
    for _ in range(40):
        x = (1 if side == "right" else -1) * float(rng.uniform(0.18, 0.72))
        y = float(rng.uniform(-0.65, 0.65))
        px, py = min(63, int((x + 1) * 32)), min(63, int((y + 1) * 32))
        if inside[py, px] > 0.9 and all((x - a) ** 2 + (y - b) ** 2 > 0.35 ** 2 for a, b in taken):
            break
    # Each kind only as small as it can still be told apart on an 8 px patch grid (a 2 px star is a dot),
    # so naming the kind always takes a look at the mark.
    low = vocab.MARK_MIN_RADIUS[kind]
    radius = float(rng.uniform(max(low, 3.5), 9.0) if simple else rng.uniform(low, max(low + 2.0, 7.5)))
    level = vocab.LEVELS[shape_level if inside[py, px] > 0.5 and not simple else background]
    tone = "dark" if level >= 0.62 else "bright" if level <= 0.38 else _pick(rng, ("dark", "bright"))
    faint = not simple and bool(rng.random() < vocab.FAINT_RATE)
    vertical = "top" if y < -0.3 else "bottom" if y > 0.3 else None
    return Mark(kind, tone, faint, side, vertical, (x, y), radius)


def sample_scene(rng: np.random.Generator, simple_rate: float = vocab.SIMPLE_RATE) -> ShapeScene:
    # A share of easy pictures (plain textures, one or two large clear marks, a short caption): they
    # give a model trained from scratch a clear early signal of *where* to look, which the textured,
    # small and faint marks of the other pictures then refine.
    simple = bool(rng.random() < simple_rate)
    background = _pick(rng, list(vocab.LEVELS))
    background_texture = "plain" if simple else _pick(rng, vocab.TEXTURES)
    shape = _pick(rng, vocab.SHAPES)
    shape_level = _contrasting_level(rng, background, 0.4)
    shape_texture = "plain" if simple else _pick(rng, vocab.TEXTURES)
    cx, cy = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
    half = float(rng.uniform(0.55, 0.8))
    aspect = float(rng.uniform(0.6, 0.85)) if shape in ("oval", "rectangle") else 1.0
    rot = float(rng.uniform(-0.25, 0.25)) if shape not in ("circle", "donut") else 0.0
    geometry = (cx, cy, half, aspect, rot)
    u = rng.random()
    count = 0 if u >= vocab.MARK_RATE and not simple else 2 if u < vocab.TWO_MARK_RATE else 1
    inside = np.ones((64, 64), np.float32) if simple else _subject_alpha(shape, geometry, 64)
    marks: list[Mark] = []
    for _ in range(count):
        marks.append(_sample_mark(rng, _pick(rng, vocab.SIDES), inside, shape_level, background,
                                  [m.xy for m in marks], simple))
    return ShapeScene(background, background_texture, shape, shape_level, shape_texture, geometry, tuple(marks),
                      simple)


# -- drawing ---------------------------------------------------------------------------------------------------
def _polygon(n: int, points: list[tuple[float, float]]) -> np.ndarray:
    """Anti-aliased alpha of a polygon given in [-1, 1] image units."""
    big = n * _SUPERSAMPLE
    img = Image.new("F", (big, big), 0.0)
    ImageDraw.Draw(img).polygon([((x + 1) / 2 * big, (y + 1) / 2 * big) for x, y in points], fill=1.0)
    return np.asarray(img, dtype=np.float32).reshape(n, _SUPERSAMPLE, n, _SUPERSAMPLE).mean(axis=(1, 3))


def _regular(cx: float, cy: float, rx: float, ry: float, k: int, rot: float, inner: float | None = None
             ) -> list[tuple[float, float]]:
    """Vertices of a regular k-gon (or a k-pointed star with ``inner`` radius ratio)."""
    pts = []
    steps = 2 * k if inner else k
    for i in range(steps):
        a = rot - math.pi / 2 + 2 * math.pi * i / steps
        f = inner if inner and i % 2 else 1.0
        pts.append((cx + f * rx * math.cos(a), cy + f * ry * math.sin(a)))
    return pts


def _rotated_rect(cx: float, cy: float, w: float, h: float, rot: float) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]


def _subject_alpha(shape: str, geometry: tuple[float, ...], n: int, rng: np.random.Generator | None = None
                   ) -> np.ndarray:
    cx, cy, half, aspect, rot = geometry
    frame = Frame(n)
    if shape in ("oval", "circle", "donut", "blob", "half-moon"):
        rx, ry = (half * aspect, half) if shape == "oval" else (half, half)
        wobble = random_wobble(rng, 0.25) if shape == "blob" and rng is not None else ()
        alpha = to_full(frame, ellipse(frame, cx, cy, rx, ry, rot, wobble=wobble))
        if shape == "donut":
            alpha = np.clip(alpha - to_full(frame, ellipse(frame, cx, cy, 0.62 * rx, 0.62 * ry)), 0, 1)
        elif shape == "half-moon":
            alpha = np.clip(alpha - to_full(frame, ellipse(frame, cx + 0.45 * rx, cy - 0.1 * ry, rx, ry)), 0, 1)
        return alpha
    if shape in ("square", "rectangle"):
        return _polygon(n, _rotated_rect(cx, cy, half * aspect, half, rot))
    k = {"triangle": 3, "diamond": 4, "hexagon": 6}[shape]
    return _polygon(n, _regular(cx, cy + (0.15 * half if k == 3 else 0.0), half, half, k, rot))


def _mark_alpha(mark: Mark, n: int, rng: np.random.Generator) -> np.ndarray:
    x, y = mark.xy
    r = mark.radius / 32.0  # pixels at 64 px -> image units
    frame = Frame(n)
    rot = float(rng.uniform(0, math.pi))
    if mark.kind == "spot":
        return to_full(frame, ellipse(frame, x, y, r, r, soft_px=0.6))
    if mark.kind == "hoop":
        outer = to_full(frame, ellipse(frame, x, y, r, r, soft_px=0.6))
        return np.clip(outer - to_full(frame, ellipse(frame, x, y, 0.5 * r, 0.5 * r, soft_px=0.6)), 0, 1)
    if mark.kind == "square":
        return _polygon(n, _rotated_rect(x, y, 0.85 * r, 0.85 * r, rot / 4))
    if mark.kind == "bar":
        return _polygon(n, _rotated_rect(x, y, 1.3 * r, max(0.35 * r, 0.9 / n * 2), rot))
    if mark.kind == "cross":
        w = max(0.28 * r, 0.9 / n * 2)
        return np.maximum(_polygon(n, _rotated_rect(x, y, r, w, rot / 4)),
                          _polygon(n, _rotated_rect(x, y, w, r, rot / 4)))
    if mark.kind == "triangle":
        return _polygon(n, _regular(x, y, r, r, 3, rot / 4))
    return _polygon(n, _regular(x, y, 1.2 * r, 1.2 * r, 5, rot / 5, inner=0.45))  # star


def _texture(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    # Amplitudes well below a faint mark's step (0.2), so that a mark stands out of any texture.
    if kind == "plain":
        return rng.normal(0.0, 0.012, (n, n)).astype(np.float32)
    if kind == "grainy":
        return rng.normal(0.0, 0.045, (n, n)).astype(np.float32)
    if kind == "cloudy":
        return 0.06 * smooth_noise(rng, n, int(rng.integers(4, 8)))
    if kind == "striped":
        frame = Frame(n)
        theta = float(rng.choice([0.0, math.pi / 2, math.pi / 4, 3 * math.pi / 4]))
        period = float(rng.uniform(5, 9)) / n * 2
        phase = frame.IX * math.cos(theta) + frame.IY * math.sin(theta)
        return (0.05 * np.sign(np.sin(2 * math.pi * phase / period))).astype(np.float32)
    if kind == "mottled":
        # soft patches in mirrored pairs, like the paired organs a lesion sits among: the odd, unpaired
        # thing in a mottled shape is the mark, not a patch
        frame = Frame(n)
        out = rng.normal(0.0, 0.015, (n, n)).astype(np.float32)
        for _ in range(int(rng.integers(2, 5))):
            x, y = float(rng.uniform(0.15, 0.6)), float(rng.uniform(-0.6, 0.6))
            r = float(rng.uniform(2.5, 6.0)) / 32.0
            amp = float(rng.uniform(0.08, 0.2)) * float(rng.choice([-1.0, 1.0]))
            for sx in (-x, x):
                out += amp * np.exp(-((frame.IX - sx) ** 2 + (frame.IY - y) ** 2) / (2 * r * r))
        return out
    dots = (rng.random((n, n)) < 0.05).astype(np.float32)  # speckled
    return (0.12 * dots * rng.choice([-1.0, 1.0], (n, n))).astype(np.float32)


def render(scene: ShapeScene, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                              list[list[int]]]:
    """(image uint8, mark mask uint8, one bbox [x0, y0, x1, y1] (exclusive) per mark).

    The mask holds the first mark as 255 and the second as 127 (0 elsewhere), so each mark's pixels
    can be told apart."""
    img = np.full((size, size), vocab.LEVELS[scene.background], dtype=np.float32)
    img += _texture(scene.background_texture, size, rng)
    if not scene.simple:
        # edges from sharp to soft (a blurred outline, as anatomy has)
        subject = blur(_subject_alpha(scene.shape, scene.geometry, size, rng), float(rng.uniform(0.0, 1.5)) * size / 64)
        fill = vocab.LEVELS[scene.shape_level] + _texture(scene.shape_texture, size, rng)
        img += subject * (fill - img)
    masks, boxes = [], []
    for mark in scene.marks:
        alpha = _mark_alpha(mark, size, rng)
        if mark.faint:  # a step of 0.2-0.3 from the local grey level (radiology's subtle lesions)
            x, y = mark.xy
            local = float(img[min(size - 1, int((y + 1) / 2 * size)), min(size - 1, int((x + 1) / 2 * size))])
            step = float(rng.uniform(0.2, 0.3))
            value = local - step if mark.tone == "dark" else local + step
        else:
            value = float(rng.uniform(0.0, 0.08)) if mark.tone == "dark" else float(rng.uniform(0.92, 1.0))
        img += alpha * (value - img)
        inside = alpha >= 0.5
        if not inside.any():
            inside = alpha >= alpha.max()
        masks.append(inside)
        ys, xs = np.nonzero(inside)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    # mark k (1-based, caption order) as grey level 255 // k; where marks overlap the first one wins
    mask = np.zeros((size, size), dtype=np.uint8)
    for k, inside in reversed(list(enumerate(masks, 1))):
        mask[inside] = 255 // k
    img = (img - 0.5) * float(rng.uniform(0.9, 1.1)) + 0.5 + float(rng.uniform(-0.04, 0.04))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mask, boxes
