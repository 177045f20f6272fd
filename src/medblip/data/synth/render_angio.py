"""Digital subtraction angiography of the head (AP view, bilateral carotid injection).

Subtracted background is mid-grey; iodinated contrast in the vessels is dark, darker for wider vessels.
"""

from __future__ import annotations

import math

import numpy as np

from medblip.data.synth.canvas import Frame, Layer, blur, ellipse, smooth_noise, to_full
from medblip.data.synth.rendered import Rendered, lesion_radius
from medblip.data.synth.scene import Scene


def _branch(layer: Layer, rng: np.random.Generator, x: float, y: float, ang: float, length: float,
            width: float, depth: int) -> None:
    """A vessel segment that wanders a little and splits into two thinner children."""
    pts = [(x, y)]
    steps = 4
    for _ in range(steps):
        ang += rng.uniform(-0.25, 0.25)
        x, y = x + length / steps * math.cos(ang), y + length / steps * math.sin(ang)
        pts.append((x, y))
    layer.line(pts, min(0.55, 0.28 + 12.0 * width), width)
    if depth > 0 and width > 0.004:
        for sign in (-1, 1):
            _branch(layer, rng, x, y, ang + sign * rng.uniform(0.25, 0.65), length * rng.uniform(0.6, 0.8),
                    width * 0.72, depth - 1)


def render_angiography(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    n = frame.n
    vessels = Layer(frame)
    sites: dict[tuple[int, str], tuple[float, float, float]] = {}
    for s in (-1, 1):
        # Internal carotid artery with its siphon, ending at the carotid terminus.
        wig, phase = rng.uniform(0.025, 0.05), rng.uniform(-0.5, 0.5)
        ica = [(s * (0.21 + wig * math.sin(9.0 * (0.75 - y) + phase) * min(1.0, 1.6 * (0.8 - y))), y)
               for y in np.linspace(1.1, 0.06, 24)]
        vessels.line(ica, 0.5, 0.03)
        tx, ty = ica[-1]
        sites[(s, "internal carotid artery")] = (tx, ty, math.atan2(-1.0, 0.0))
        # Middle cerebral artery: lateral trunk, then the bifurcation and its cortical branches.
        mx, my = s * rng.uniform(0.46, 0.52), ty - rng.uniform(0.02, 0.08)
        vessels.line([(tx, ty), ((tx + mx) / 2, ty + 0.02), (mx, my)], 0.45, 0.022)
        sites[(s, "middle cerebral artery")] = (mx, my, math.atan2(0.0, s))
        for a in (-0.5, -1.0, -1.4):
            ang = (a if s > 0 else math.pi - a) + rng.uniform(-0.15, 0.15)
            _branch(vessels, rng, mx, my, ang, rng.uniform(0.2, 0.28), 0.016, 4)
        # Anterior cerebral artery: medially to the midline, then up along the falx.
        ax = s * 0.05
        vessels.line([(tx, ty), (ax, ty - 0.12), (ax * 1.1, -0.45), (ax * 1.6, -0.75)], 0.4, 0.016)
        for y0 in (-0.3, -0.55):
            _branch(vessels, rng, ax, y0, -math.pi / 2 + s * rng.uniform(0.3, 0.7), 0.2, 0.011, 3)
    dark = blur(vessels.array(), 0.6)
    # Capillary phase blush over both hemispheres.
    blush = to_full(frame, ellipse(frame, 0.0, -0.25, 0.75, 0.7, soft_px=8)) * (0.03 + 0.015 * smooth_noise(rng, n, 8))
    dark = np.maximum(dark, blush)

    lesion = None
    if scene.has_finding:
        s = int(scene.side_sign)
        x, y, ang = sites[(s, (scene.location or "").split(" ", 1)[1])]
        r = lesion_radius(scene)
        # Saccular aneurysm: a round pouch on the vessel wall, pointing away from the parent artery.
        out = ang + rng.uniform(-0.6, 0.6)
        cx, cy = x + math.cos(out) * r * 0.8, y + math.sin(out) * r * 0.8
        shape = ellipse(frame, cx, cy, r, r * rng.uniform(0.8, 1.0), rot=rng.uniform(0, 3))
        lesion = to_full(frame, shape)
        dark = np.maximum(dark, 0.55 * lesion)

    background = 0.62 + 0.03 * smooth_noise(rng, n, 4)
    # Misregistration ghost of the skull outline, typical of subtraction.
    ring = to_full(frame, ellipse(frame, 0.0, -0.1, 0.86, 0.95)) - to_full(frame, ellipse(frame, 0.0, -0.1, 0.84, 0.93))
    img = background + 0.04 * ring - dark
    img += rng.uniform(0.01, 0.025) * rng.standard_normal((n, n)).astype(np.float32)
    return Rendered(blur(img, 0.4), lesion)
