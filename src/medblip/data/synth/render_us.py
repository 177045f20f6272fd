"""B-mode ultrasound: transverse thyroid (linear probe) and transverse pelvis (convex probe).

Echogenicity map x speckle x depth attenuation, log-compressed, black outside the sector.
"""

from __future__ import annotations

import math

import numpy as np

from medblip.data.synth.canvas import (
    Frame,
    Shape,
    blur,
    ellipse,
    paint,
    random_wobble,
    smooth_noise,
    smoothstep,
    to_full,
)
from medblip.data.synth.rendered import Rendered, lesion_radius, lesion_wobble
from medblip.data.synth.scene import Scene

# Probe geometry in image coordinates: apex y, inner/outer radius, half opening angle (radians).
PROBES = {"neck": (-4.2, 3.3, 5.1, 0.21), "pelvis": (-1.45, 0.55, 2.35, 0.45)}


def _enhance_below(gain: np.ndarray, frame: Frame, x: float, y: float, r: float, factor: float) -> None:
    """Posterior acoustic enhancement (factor > 1) or shadowing (< 1) beneath a structure."""
    band = smoothstep(r, r * 0.6, np.abs(frame.X - x)) * smoothstep(y, y + r * 0.5, frame.Y)
    gain *= 1.0 + (factor - 1.0) * band


def _neck(scene: Scene, frame: Frame, echo: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> Shape | None:
    paint(echo, ellipse(frame, 0.0, 0.45, 1.3, 0.45), 0.4)  # deep soft tissue
    for s in (-1, 1):
        paint(echo, ellipse(frame, s * 0.75, -0.58, 0.28, 0.1, rot=s * 0.2), 0.3)  # sternocleidomastoid
        paint(echo, ellipse(frame, s * 0.35, -0.65, 0.3, 0.07), 0.28)  # strap muscles
    lobes = {}
    for s in (-1, 1):
        lobe = (s * rng.uniform(0.4, 0.46), -0.2 + rng.uniform(-0.04, 0.04), rng.uniform(0.3, 0.35), rng.uniform(0.27, 0.32))
        paint(echo, ellipse(frame, *lobe, wobble=random_wobble(rng, 0.04)), 0.72)
        lobes[s] = lobe
        paint(echo, ellipse(frame, s * 0.84, -0.15, 0.14, 0.14), 0.02)  # common carotid artery
        _enhance_below(gain, frame, s * 0.84, -0.15, 0.14, 1.4)
        paint(echo, ellipse(frame, s * 0.98, -0.4, 0.13, 0.06), 0.03)  # internal jugular vein
        paint(echo, ellipse(frame, s * 0.3, 0.38, 0.2, 0.1), 0.22)  # longus colli
    paint(echo, ellipse(frame, 0.0, -0.5, 0.26, 0.07), 0.72)  # isthmus
    paint(echo, ellipse(frame, 0.26, 0.15, 0.08, 0.08), 0.3)  # oesophagus (patient's left)
    # Trachea: bright anterior wall, reverberations, and a shadow behind the air column.
    trachea = ellipse(frame, 0.0, -0.13, 0.2, 0.2)
    paint(echo, trachea, 0.05)
    rim = ellipse(frame, 0.0, -0.13, 0.2, 0.2)
    if rim is not None:
        win, a = rim
        paint(echo, (win, a * (1 - a) * 4 * (frame.Y[win] < -0.13)), 1.0)
        reverb = 0.5 + 0.5 * np.cos((frame.Y[win] + 0.13) * 60.0)
        paint(echo, (win, a * (frame.Y[win] > -0.2) * reverb * 0.4), 0.6)
    _enhance_below(gain, frame, 0.0, -0.1, 0.19, 0.15)
    paint(echo, ellipse(frame, 0.0, 0.85, 0.5, 0.15), 0.95)  # vertebral body surface
    _enhance_below(gain, frame, 0.0, 0.85, 0.45, 0.2)

    if not scene.has_finding:
        return None
    cx, cy, rx, ry = lobes[int(scene.side_sign)]
    r = lesion_radius(scene)
    lx, ly = cx + rng.uniform(-0.4, 0.4) * max(0.0, rx - r), cy + rng.uniform(-0.3, 0.3) * max(0.0, ry - r)
    shape, cyst = _lesion(scene, frame, echo, gain, rng, lx, ly, r, min_aspect=0.75)
    if not cyst:
        paint(echo, ellipse(frame, lx, ly, r * 1.12, r * 1.05), 0.12)  # hypoechoic halo
        paint(echo, shape, 0.3 if scene.appearance == "hypoechoic" else 0.62)
    return shape


def _lesion(scene: Scene, frame: Frame, echo: np.ndarray, gain: np.ndarray, rng: np.random.Generator,
            lx: float, ly: float, r: float, *, min_aspect: float) -> tuple[Shape | None, bool]:
    """The lesion's outline at (lx, ly); a cyst is painted (anechoic, with enhancement behind it) here,
    a solid lesion by the caller. Returns the outline and whether it was a cyst."""
    shape = ellipse(frame, lx, ly, r, r * rng.uniform(min_aspect, 1.0), rot=rng.uniform(0, 3),
                    wobble=lesion_wobble(rng, scene.appearance))
    if scene.finding != "cyst":
        return shape, False
    paint(echo, shape, 0.02)
    _enhance_below(gain, frame, lx, ly, r, 1.6)
    return shape, True


def _pelvis(scene: Scene, frame: Frame, echo: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> Shape | None:
    paint(echo, ellipse(frame, 0.0, 0.6, 1.5, 0.6), 0.45)
    for y, v in ((-0.86, 0.75), (-0.8, 0.3), (-0.74, 0.6)):  # abdominal wall layers
        paint(echo, ellipse(frame, 0.0, y, 1.6, 0.03), v)
    bx, by = rng.uniform(0.42, 0.55), rng.uniform(0.28, 0.36)
    paint(echo, ellipse(frame, 0.0, -0.3, bx, by, wobble=random_wobble(rng, 0.05)), 0.02)  # bladder
    _enhance_below(gain, frame, 0.0, -0.3, bx * 0.8, 1.5)
    paint(echo, ellipse(frame, 0.0, 0.32, 0.3, 0.2, rot=rng.uniform(-0.2, 0.2)), 0.55)  # uterus
    paint(echo, ellipse(frame, 0.0, 0.32, 0.18, 0.025), 0.9)  # endometrium
    ovaries = {}
    for s in (-1, 1):
        ov = (s * rng.uniform(0.45, 0.55), rng.uniform(0.25, 0.35), 0.16, 0.11)
        paint(echo, ellipse(frame, *ov, rot=s * 0.3), 0.42)
        for _ in range(int(rng.integers(2, 6))):  # follicles
            paint(echo, ellipse(frame, ov[0] + rng.uniform(-0.09, 0.09), ov[1] + rng.uniform(-0.05, 0.05),
                                0.025, 0.025), 0.03)
        ovaries[s] = ov
        paint(echo, ellipse(frame, s * 0.8, 0.65, 0.12, 0.05), 0.05)  # iliac vessels
    for _ in range(4):  # bowel gas: bright echoes with dirty shadows
        x = rng.uniform(-0.8, 0.8)
        paint(echo, ellipse(frame, x, 0.72, 0.1, 0.03), 0.95)
        _enhance_below(gain, frame, x, 0.74, 0.09, 0.3)

    if not scene.has_finding:
        return None
    ox, oy = ovaries[int(scene.side_sign)][:2]
    r = lesion_radius(scene)
    lx, ly = ox, oy + rng.uniform(-0.05, 0.05)
    shape, cyst = _lesion(scene, frame, echo, gain, rng, lx, ly, r, min_aspect=0.8)
    if not cyst:
        paint(echo, shape, 0.62 + 0.15 * smooth_noise(rng, frame.n, 30))
        if scene.appearance == "complex":  # cystic spaces and septations
            for _ in range(3):
                paint(echo, ellipse(frame, lx + rng.uniform(-0.5, 0.5) * r, ly + rng.uniform(-0.5, 0.5) * r,
                                    r * 0.3, r * 0.25), 0.04)
    return shape


def render_ultrasound(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    n = frame.n
    echo = np.full((n, n), 0.45, dtype=np.float32)
    gain = np.ones((n, n), dtype=np.float32)
    draw = _neck if scene.region == "neck" else _pelvis
    shape = draw(scene, frame, echo, gain, rng)
    echo *= 1.0 + 0.15 * smooth_noise(rng, n, 16)
    np.clip(echo, 0.0, None, out=echo)  # texture noise must not create negative echoes

    apex, r0, r1, half = PROBES[scene.region]
    dx, dy = frame.IX, frame.IY - apex
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dx, dy)
    depth = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)
    edge = 2.0 / n
    sector = smoothstep(0, edge, r - r0) * smoothstep(0, edge, r1 - r) * smoothstep(0, edge * 1.5, half - np.abs(theta))

    # Speckle: magnitude of blurred complex noise, grains stretched laterally.
    grain = (max(0.35, n / 900), max(0.6, n / 400))
    re = blur(rng.standard_normal((n, n)).astype(np.float32), grain)
    im = blur(rng.standard_normal((n, n)).astype(np.float32), grain)
    speckle = np.sqrt(re * re + im * im)
    speckle = (speckle / (speckle.mean() + 1e-6)) ** 0.75
    tgc = np.exp(-rng.uniform(0.9, 1.6) * depth) * (1.0 + rng.uniform(0.3, 0.8) * depth)
    near_field = 1.0 + 0.8 * smoothstep(0.05, 0.0, depth)
    signal = echo * gain * speckle * tgc * near_field * rng.uniform(0.9, 1.2)
    img = (signal / 1.5) ** 0.7  # display compression (milder than log: keeps tissue contrast)
    img = blur(img, 0.5) * sector
    # Depth scale: dots every centimetre along the right edge of the sector.
    fov = scene.fov_mm
    for cm in range(1, int(fov / 10) + 1):
        rr = r0 + (r1 - r0) * cm * 10.0 / fov
        if rr >= r1:
            break
        tx, ty = (rr * math.sin(half * 0.96)), apex + rr * math.cos(half * 0.96)
        near = (frame.IX - tx) ** 2 + (frame.IY - ty) ** 2 < (1.3 / n) ** 2 + (0.012 if cm % 5 == 0 else 0.005) ** 2
        img[near] = 0.95
    lesion = to_full(frame, shape) if shape is not None else None
    if lesion is not None:
        lesion = lesion * (sector > 0.5)
    return Rendered(img, lesion, outside=sector <= 0.0)
