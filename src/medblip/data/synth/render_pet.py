"""FDG PET maximum-intensity projection (coronal), displayed inverted: uptake is dark on white."""

from __future__ import annotations

import numpy as np

from medblip.data.synth.canvas import Frame, blur, ellipse, paint, smooth_noise, to_full
from medblip.data.synth.rendered import Rendered, lesion_radius, lesion_wobble
from medblip.data.synth.scene import Scene


def render_pet(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    n = frame.n
    up = np.zeros((n, n), dtype=np.float32)
    tissue = 0.1 + 0.02 * smooth_noise(rng, n, 10)
    for shape in (
        ellipse(frame, 0.0, -0.8, 0.16, 0.19, soft_px=2),  # head
        ellipse(frame, 0.0, -0.56, 0.075, 0.09, soft_px=2),  # neck
        ellipse(frame, 0.0, 0.2, rng.uniform(0.38, 0.44), 0.64, soft_px=2),  # trunk
        ellipse(frame, -0.56, 0.12, 0.065, 0.62, rot=-0.08, soft_px=2),  # arms
        ellipse(frame, 0.56, 0.12, 0.065, 0.62, rot=0.08, soft_px=2),
        ellipse(frame, -0.17, 0.95, 0.13, 0.22, soft_px=2),  # thighs
        ellipse(frame, 0.17, 0.95, 0.13, 0.22, soft_px=2),
    ):
        paint(up, shape, tissue)
    lungs = {}
    for s in (-1, 1):
        lung = (s * 0.17, -0.15, 0.13, 0.22)
        paint(up, ellipse(frame, *lung, soft_px=2), 0.04)
        lungs[s] = lung
        paint(up, ellipse(frame, s * 0.13, 0.3, 0.045, 0.08, rot=s * 0.2), rng.uniform(0.45, 0.7))  # kidneys
        paint(up, ellipse(frame, s * 0.045, -0.6, 0.02, 0.02), 0.4)  # tonsils
    paint(up, ellipse(frame, 0.0, -0.8, 0.13, 0.15, soft_px=2), 0.9)  # brain cortex
    paint(up, ellipse(frame, 0.0, -0.8, 0.07, 0.09, soft_px=2), 0.6)
    paint(up, ellipse(frame, -0.16, 0.1, 0.2, 0.13, rot=0.2, soft_px=2), 0.3)  # liver
    paint(up, ellipse(frame, 0.2, 0.08, 0.06, 0.09, soft_px=2), 0.25)  # spleen
    paint(up, ellipse(frame, 0.06, -0.06, 0.09, 0.08, soft_px=2), rng.uniform(0.15, 0.8))  # myocardium
    paint(up, ellipse(frame, 0.0, 0.1, 0.015, 0.55, soft_px=2), 0.16)  # vertebral marrow
    bowel = to_full(frame, ellipse(frame, 0.0, 0.5, 0.28, 0.16, soft_px=4))
    up += bowel * 0.2 * np.clip(smooth_noise(rng, n, 14), 0.0, None)
    paint(up, ellipse(frame, 0.0, 0.74, 0.08, 0.06, soft_px=2), rng.uniform(0.9, 1.3))  # bladder

    lesion = None
    if scene.has_finding:
        cx, cy, rx, ry = lungs[int(scene.side_sign)]
        r = lesion_radius(scene)
        upper = "upper" in (scene.location or "")
        lx = cx + scene.side_sign * rng.uniform(-0.3, 0.4) * max(0.0, rx - r)
        ly = cy + (-1 if upper else 1) * rng.uniform(0.2, 0.6) * max(0.0, ry - r)
        shape = ellipse(frame, lx, ly, r, r * rng.uniform(0.85, 1.0), wobble=lesion_wobble(rng, scene.appearance))
        paint(up, shape, rng.uniform(1.0, 1.6))
        lesion = to_full(frame, shape)

    # Scanner resolution (~6 mm FWHM) and count noise that grows with uptake.
    up = blur(up, max(0.5, 0.012 * frame.px_per_unit))
    up += np.sqrt(np.clip(up, 0, None)) * rng.uniform(0.04, 0.08) * rng.standard_normal((n, n)).astype(np.float32)
    up = blur(up, 0.5)
    suv_max = rng.uniform(0.8, 1.0)
    return Rendered(1.0 - np.clip(up / suv_max, 0.0, 1.0), lesion)
