"""Axial CT slices (chest, abdomen, head), drawn in Hounsfield units and then display-windowed."""

from __future__ import annotations

import math

import numpy as np

from medblip.data.synth.canvas import Frame, Shape, blur, ellipse, paint, random_wobble, smooth_noise, to_full
from medblip.data.synth.rendered import Rendered, brain_lesion_centre, lesion_radius, lesion_wobble, windowed
from medblip.data.synth.scene import Scene

AIR, FAT, FLUID, MUSCLE, BONE = -1000.0, -100.0, 8.0, 50.0, 700.0


def _clip(shape: Shape | None, region: np.ndarray) -> Shape | None:
    """Restrict a shape to a full-size alpha (organs stay inside the body cavity)."""
    if shape is None:
        return None
    win, alpha = shape
    return win, alpha * region[win]


def _spine(frame: Frame, hu: np.ndarray, y: float, contrast: bool) -> None:
    paint(hu, ellipse(frame, 0.0, y, 0.105, 0.095), BONE + 200)
    paint(hu, ellipse(frame, 0.0, y, 0.085, 0.077), 260.0)  # trabecular bone inside the cortex
    paint(hu, ellipse(frame, 0.0, y + 0.135, 0.04, 0.035), 20.0)  # spinal canal
    for s in (-1, 1):
        paint(hu, ellipse(frame, s * 0.05, y + 0.15, 0.06, 0.018, rot=s * 0.9), BONE)  # laminae
        paint(hu, ellipse(frame, s * 0.13, y + 0.2, 0.08, 0.06), MUSCLE + 5)  # paraspinal muscles
    paint(hu, ellipse(frame, 0.0, y + 0.2, 0.02, 0.055), BONE)  # spinous process


def _body(frame: Frame, hu: np.ndarray, rng: np.random.Generator) -> tuple[float, float, np.ndarray]:
    bx, by = rng.uniform(0.8, 0.9), rng.uniform(0.56, 0.63)
    paint(hu, ellipse(frame, 0.0, 0.02, bx, by, wobble=random_wobble(rng, 0.03)), FAT)
    fat = rng.uniform(0.04, 0.1)
    wall = ellipse(frame, 0.0, 0.03, bx - fat, by - fat * 0.8, wobble=random_wobble(rng, 0.02))
    paint(hu, wall, MUSCLE)
    # CT table: two thin curved plates under the patient.
    for dy, v in ((0.08, 150.0), (0.13, 60.0)):
        table = ellipse(frame, 0.0, 0.02 + by + dy - 2.0, 1.6, 2.0)
        if table is not None:
            win, a = table
            rim = np.clip(a * (1.0 - a) * 4.0, 0, 1) * (np.abs(frame.X[win]) < 0.8)
            paint(hu, (win, rim.astype(np.float32)), v)
    return bx - fat, by - fat * 0.8, to_full(frame, wall)


def _chest(scene: Scene, frame: Frame, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    contrast = scene.technique == "contrast-enhanced"
    wx, wy, _ = _body(frame, hu, rng)
    # Ribs (cross-sections along the inner chest wall) and scapulae.
    for t in np.linspace(-math.pi * 0.92, math.pi * 0.92, 14):
        if abs(abs(t) - math.pi / 2) < 0.25:
            continue
        x, y = (wx - 0.03) * math.cos(t), 0.03 + (wy - 0.03) * math.sin(t)
        paint(hu, ellipse(frame, x, y, 0.032, 0.016, rot=t + math.pi / 2), BONE)
    for s in (-1, 1):
        paint(hu, ellipse(frame, s * 0.46, 0.38, 0.16, 0.022, rot=-s * 0.5), BONE - 150)
    lungs = []
    for s in (-1, 1):
        # The heart pushes the patient's left lung (image right) laterally.
        cx, cy = s * (0.37 + (0.03 if s > 0 else 0.0)), rng.uniform(-0.05, 0.02)
        rx, ry = rng.uniform(0.26, 0.3), rng.uniform(0.37, 0.42)
        wob = random_wobble(rng, 0.04)
        lung = ellipse(frame, cx, cy, rx, ry, wobble=wob)
        paint(hu, lung, -860.0 + 20.0 * smooth_noise(rng, frame.n, 12))
        lungs.append((s, cx, cy, rx, ry, wob, to_full(frame, lung)))
        for _ in range(14):  # pulmonary vessels, larger towards the hilum
            u, v = rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9)
            if u * u + v * v > 0.8:
                continue
            r = 0.005 + 0.01 * (1 - abs(u * s + 1) / 2) * rng.uniform(0.5, 1.0)
            paint(hu, ellipse(frame, cx + u * rx, cy + v * ry, r, r * rng.uniform(0.7, 1.4)), -150.0)
    # Mediastinum: heart, aorta, sternum, spine.
    paint(hu, ellipse(frame, 0.02, -0.05, 0.14, 0.3), MUSCLE - 10)
    heart = ellipse(frame, 0.09, 0.08, 0.27, 0.2, rot=-0.45)
    paint(hu, heart, MUSCLE - 5)
    if contrast:
        paint(hu, ellipse(frame, 0.1, 0.08, 0.19, 0.13, rot=-0.45), 170.0)
    paint(hu, ellipse(frame, -0.05, -0.16, 0.07, 0.07), 180.0 if contrast else 45.0)  # ascending aorta
    paint(hu, ellipse(frame, 0.1, 0.3, 0.055, 0.055), 180.0 if contrast else 45.0)  # descending aorta
    paint(hu, ellipse(frame, 0.0, -wy + 0.06, 0.07, 0.028), BONE - 200)  # sternum
    _spine(frame, hu, 0.37, contrast)

    if not scene.has_finding:
        return None
    s, cx, cy, rx, ry, wob, lung_full = next(item for item in lungs if item[0] == scene.side_sign)
    if scene.finding == "effusion":
        depth = scene.size_mm / (scene.fov_mm / 2.0)
        # Dependent crescent: lung pixels not covered by the same lung shifted forwards by `depth`.
        shifted = to_full(frame, ellipse(frame, cx, cy - depth, rx, ry, wobble=wob))
        crescent = np.clip(lung_full - shifted, 0.0, 1.0) * (cy < frame.Y)
        hu += crescent * (15.0 - hu)
        return crescent
    r = lesion_radius(scene)
    upper = "upper" in (scene.location or "")
    # Keep the lesion lateral to the heart and away from the mediastinum.
    lx = cx + s * rng.uniform(0.0, max(0.0, rx - r) * 0.55)
    ly = cy + (-1 if upper else 1) * rng.uniform(0.15, 0.5) * max(0.05, ry - r)
    lesion = ellipse(frame, lx, ly, r, r * rng.uniform(0.85, 1.1), rot=rng.uniform(0, 3),
                     wobble=lesion_wobble(rng, scene.appearance))
    paint(hu, lesion, 40.0 + 10.0 * smooth_noise(rng, frame.n, 20))
    return to_full(frame, lesion)


def _abdomen(scene: Scene, frame: Frame, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    wx, wy, _ = _body(frame, hu, rng)
    cavity = ellipse(frame, 0.0, 0.03, wx - 0.05, wy - 0.05, wobble=random_wobble(rng, 0.02))
    paint(hu, cavity, FAT + 10)
    cav = to_full(frame, cavity)
    for s in (-1, 1):
        paint(hu, ellipse(frame, s * 0.14, -wy + 0.07, 0.12, 0.035), MUSCLE)  # rectus abdominis
    # Bowel loops first; solid organs are painted over them.
    for _ in range(int(rng.integers(7, 13))):
        x, y, r = rng.uniform(-0.15, 0.55), rng.uniform(-0.45, 0.15), rng.uniform(0.035, 0.07)
        content = float(rng.choice([-900.0, 15.0, 250.0], p=[0.45, 0.4, 0.15]))
        paint(hu, _clip(ellipse(frame, x, y, r, r * rng.uniform(0.7, 1.0)), cav), MUSCLE + 10)
        paint(hu, _clip(ellipse(frame, x, y, r * 0.8, r * 0.7), cav), content)
    texture = smooth_noise(rng, frame.n, 24)
    liver = (-0.36, -0.04, 0.37, 0.4)
    paint(hu, _clip(ellipse(frame, *liver, wobble=random_wobble(rng, 0.05)), cav), 105.0 + 6.0 * texture)
    paint(hu, _clip(ellipse(frame, 0.0, -0.27, 0.26, 0.13, rot=0.15), cav), 105.0 + 6.0 * texture)
    for _ in range(4):  # hepatic/portal veins
        paint(hu, ellipse(frame, rng.uniform(-0.5, -0.15), rng.uniform(-0.2, 0.15), 0.02, 0.02), 150.0)
    paint(hu, _clip(ellipse(frame, 0.52, 0.12, 0.12, 0.2, rot=0.45), cav), 115.0)  # spleen
    stomach = ellipse(frame, 0.3, -0.2, 0.17, 0.12, rot=0.3)
    paint(hu, stomach, 25.0)
    if stomach is not None:
        win, a = stomach
        paint(hu, (win, a * (frame.Y[win] < -0.25)), AIR)  # air-fluid level
    paint(hu, ellipse(frame, 0.06, 0.02, 0.22, 0.05, rot=0.2), 95.0)  # pancreas
    kidneys = {}
    for s in (-1, 1):
        kx, ky = s * 0.33, 0.26
        kidney = (kx, ky, 0.1, 0.14, s * 0.45)
        paint(hu, ellipse(frame, *kidney), 190.0)  # cortex (corticomedullary phase)
        paint(hu, ellipse(frame, kx - s * 0.015, ky, 0.05, 0.085, rot=s * 0.45), 120.0)  # medulla
        paint(hu, ellipse(frame, kx - s * 0.06, ky, 0.035, 0.045), FAT)  # sinus fat at the hilum
        paint(hu, ellipse(frame, s * 0.14, 0.35, 0.06, 0.075), MUSCLE)  # psoas
        kidneys[s] = kidney
    paint(hu, ellipse(frame, 0.03, 0.2, 0.045, 0.045), 200.0)  # aorta
    paint(hu, ellipse(frame, -0.09, 0.18, 0.055, 0.035), 150.0)  # IVC
    _spine(frame, hu, 0.34, True)

    if not scene.has_finding:
        return None
    r = lesion_radius(scene)
    loc = scene.location or ""
    if "liver" in loc:
        lx, ly = liver[0] + rng.uniform(-0.12, 0.06), liver[1] + rng.uniform(-0.15, 0.12)
    else:
        kx, ky = kidneys[int(scene.side_sign)][:2]
        ang = rng.uniform(-1.2, 1.2)  # lateral half of the kidney: exophytic lesions bulge outwards
        lx, ly = kx + scene.side_sign * 0.07 * math.cos(ang), ky + 0.09 * math.sin(ang)
    lesion = ellipse(frame, lx, ly, r, r * rng.uniform(0.85, 1.0), rot=rng.uniform(0, 3),
                     wobble=lesion_wobble(rng, scene.appearance))
    if scene.finding == "cyst":
        value: float | np.ndarray = 5.0
    elif scene.appearance == "heterogeneous":
        value = 55.0 + 25.0 * smooth_noise(rng, frame.n, 40)
    else:
        value = 45.0
    paint(hu, lesion, value)
    return to_full(frame, lesion)


def _head(scene: Scene, frame: Frame, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    hx, hy = rng.uniform(0.66, 0.74), rng.uniform(0.8, 0.88)
    wob = random_wobble(rng, 0.015)
    paint(hu, ellipse(frame, 0.0, 0.0, hx + 0.04, hy + 0.04, wobble=wob), 30.0)  # scalp
    paint(hu, ellipse(frame, 0.0, 0.0, hx, hy, wobble=wob), 1100.0)  # skull
    t = rng.uniform(0.045, 0.06)
    brain_shape = ellipse(frame, 0.0, 0.0, hx - t, hy - t, wobble=wob)
    paint(hu, brain_shape, 10.0)  # CSF layer under the skull
    brain = ellipse(frame, 0.0, 0.0, hx - t - 0.015, hy - t - 0.015, wobble=wob)
    paint(hu, brain, 37.0)  # grey matter
    white = ellipse(frame, 0.0, 0.02, hx - t - 0.13, hy - t - 0.14,
                    wobble=[(k, 0.02, float(rng.uniform(0, 6))) for k in (9, 14, 19)])
    paint(hu, white, 29.0)
    # Sulci: thin CSF clefts through the cortical ribbon only.
    cortex = to_full(frame, brain) * (1.0 - to_full(frame, white))
    hu -= 24.0 * cortex * (np.abs(smooth_noise(rng, frame.n, 28)) < 0.12)
    for s in (-1, 1):  # lateral ventricles (frontal and occipital horns)
        paint(hu, ellipse(frame, s * 0.065, -0.14, 0.05, 0.17, rot=-s * 0.25), 6.0)
        paint(hu, ellipse(frame, s * 0.11, 0.27, 0.04, 0.1, rot=s * 0.4), 6.0)
        paint(hu, ellipse(frame, s * 0.17, 0.03, 0.07, 0.08), 35.0)  # thalami/basal ganglia
    paint(hu, ellipse(frame, 0.0, 0.05, 0.008, 0.06), 6.0)  # third ventricle
    for y0, y1 in ((-hy + t, -0.32), (0.38, hy - t)):  # falx
        paint(hu, ellipse(frame, 0.0, (y0 + y1) / 2, 0.006, abs(y1 - y0) / 2), 70.0)

    if not scene.has_finding:
        return None
    s = scene.side_sign
    loc = scene.location or ""
    if scene.finding == "fracture":
        a = rng.uniform(-0.3, 0.3) if "parietal" in loc else rng.uniform(-1.15, -0.85)
        px, py = s * hx * math.cos(a), hy * math.sin(a)
        tang = math.atan2(hy * math.cos(a), -s * hx * math.sin(a))
        half = scene.size_mm / scene.fov_mm
        zone = ellipse(frame, px, py, half, 0.06, rot=tang)
        # The broken segment: erase the skull there and redraw it pushed inwards (depressed) or
        # tilted (displaced), leaving visible gaps at both ends.
        nx, ny = -math.cos(a) * s * 0.5, -math.sin(a) * 0.5
        push = 0.035 if scene.appearance == "depressed" else 0.02
        paint(hu, ellipse(frame, px, py, half * 0.9, t * 0.9, rot=tang), 10.0)
        paint(hu, ellipse(frame, px + nx * push * 2, py + ny * push * 2, half * 0.75, t * 0.45,
                          rot=tang + (0.0 if scene.appearance == "depressed" else 0.25)), 1100.0)
        paint(hu, ellipse(frame, px - nx * 0.1, py - ny * 0.1, half * 1.4, 0.075, rot=tang), 60.0)  # haematoma
        return to_full(frame, zone)
    r = lesion_radius(scene)
    lx, ly = brain_lesion_centre(scene, rng, hx - t, hy - t)
    if scene.finding == "cyst":
        lesion = ellipse(frame, lx, ly, r, r * rng.uniform(0.8, 1.0), rot=rng.uniform(0, 3))
        paint(hu, lesion, 7.0)
    else:
        paint(hu, ellipse(frame, lx, ly, r * 1.7, r * 1.5, wobble=random_wobble(rng, 0.1)), 20.0)  # oedema
        lesion = ellipse(frame, lx, ly, r, r * rng.uniform(0.8, 1.0), wobble=lesion_wobble(rng, scene.appearance))
        paint(hu, lesion, 72.0 if scene.appearance == "hyperdense" else 12.0)
    return to_full(frame, lesion)


def render_ct(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    hu = np.full((frame.n, frame.n), AIR, dtype=np.float32)
    draw = {"chest": _chest, "abdomen": _abdomen, "head": _head}[scene.region]
    lesion = draw(scene, frame, hu, rng)
    # Correlated quantum noise (std in HU after the 0.7 px blur, which leaves ~0.42 of it).
    noise_hu = rng.uniform(1.5, 3.0) if scene.region == "head" else rng.uniform(8.0, 16.0)
    grain = blur(rng.standard_normal(hu.shape).astype(np.float32), 0.7) / 0.42
    hu = blur(hu, rng.uniform(0.4, 0.8)) + noise_hu * grain
    if scene.region == "head":
        level, width = 40.0, 80.0
    elif scene.region == "chest" and rng.random() < 0.5:
        level, width = -600.0, 1500.0  # lung window
    else:
        level, width = 40.0, 400.0
    level += rng.uniform(-0.05, 0.05) * width
    return Rendered(windowed(hu, level, width), lesion)
