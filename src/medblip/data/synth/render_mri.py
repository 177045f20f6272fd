"""Axial brain MRI (T1, T2, FLAIR, contrast-enhanced T1) with Rician noise and a coil bias field."""

from __future__ import annotations

import math

import numpy as np

from medblip.data.synth.canvas import Frame, blur, ellipse, paint, random_wobble, smooth_noise, to_full
from medblip.data.synth.rendered import Rendered, brain_lesion_centre, lesion_radius, lesion_wobble
from medblip.data.synth.scene import Scene

# Signal per tissue and sequence: scalp fat, cortical bone, marrow, CSF, grey, white, lesion, oedema.
SIGNAL: dict[str, dict[str, float]] = {
    "T1-weighted": dict(fat=0.9, bone=0.04, marrow=0.7, csf=0.1, gm=0.42, wm=0.6, mass=0.3, oedema=0.35),
    "T2-weighted": dict(fat=0.62, bone=0.04, marrow=0.5, csf=0.95, gm=0.55, wm=0.38, mass=0.85, oedema=0.75),
    "FLAIR": dict(fat=0.6, bone=0.04, marrow=0.5, csf=0.08, gm=0.5, wm=0.38, mass=0.9, oedema=0.8),
    "contrast-enhanced T1-weighted": dict(fat=0.9, bone=0.04, marrow=0.7, csf=0.1, gm=0.42, wm=0.6,
                                          mass=0.92, oedema=0.35),
}


def render_mri(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    sig = SIGNAL[scene.technique]
    img = np.zeros((frame.n, frame.n), dtype=np.float32)
    hx, hy = rng.uniform(0.66, 0.74), rng.uniform(0.8, 0.88)
    wob = random_wobble(rng, 0.015)
    paint(img, ellipse(frame, 0.0, 0.0, hx + 0.06, hy + 0.06, wobble=wob), sig["fat"] * 0.8)  # scalp
    paint(img, ellipse(frame, 0.0, 0.0, hx + 0.02, hy + 0.02, wobble=wob), sig["bone"])  # outer table
    paint(img, ellipse(frame, 0.0, 0.0, hx, hy, wobble=wob), sig["marrow"])  # diploe
    paint(img, ellipse(frame, 0.0, 0.0, hx - 0.025, hy - 0.025, wobble=wob), sig["bone"])  # inner table
    t = 0.045
    paint(img, ellipse(frame, 0.0, 0.0, hx - t, hy - t, wobble=wob), sig["csf"])
    brain = ellipse(frame, 0.0, 0.0, hx - t - 0.012, hy - t - 0.012, wobble=wob)
    paint(img, brain, sig["gm"])
    # White matter with gyral fingers: a ragged inner outline.
    gyri = [(k, float(rng.uniform(0.015, 0.03)), float(rng.uniform(0, 2 * math.pi))) for k in (11, 17, 23, 29)]
    white = ellipse(frame, 0.0, 0.02, hx - t - 0.1, hy - t - 0.11, wobble=gyri)
    paint(img, white, sig["wm"])
    cortex = to_full(frame, brain) * (1.0 - to_full(frame, white))
    sulci = (np.abs(smooth_noise(rng, frame.n, 30)) < 0.13).astype(np.float32)
    img += cortex * sulci * (sig["csf"] - img)
    paint(img, ellipse(frame, 0.0, -0.55, 0.012, 0.25), sig["csf"])  # interhemispheric fissure
    paint(img, ellipse(frame, 0.0, 0.6, 0.012, 0.2), sig["csf"])
    for s in (-1, 1):
        paint(img, ellipse(frame, s * 0.065, -0.14, 0.05, 0.17, rot=-s * 0.25), sig["csf"])  # frontal horns
        paint(img, ellipse(frame, s * 0.11, 0.27, 0.04, 0.1, rot=s * 0.4), sig["csf"])  # occipital horns
        paint(img, ellipse(frame, s * 0.18, 0.03, 0.07, 0.08), sig["gm"])  # thalami
        paint(img, ellipse(frame, s * 0.2, -0.12, 0.04, 0.09, rot=s * 0.3), sig["gm"])  # caudate/putamen
    paint(img, ellipse(frame, 0.0, 0.05, 0.008, 0.06), sig["csf"])
    # Flow voids of the middle cerebral arteries in the Sylvian fissures.
    for s in (-1, 1):
        paint(img, ellipse(frame, s * 0.42, -0.02, 0.03, 0.012, rot=0.2), sig["csf"])

    lesion = None
    if scene.has_finding:
        r = lesion_radius(scene)
        lx, ly = brain_lesion_centre(scene, rng, hx - t, hy - t)
        if scene.finding == "cyst":
            shape = ellipse(frame, lx, ly, r, r * rng.uniform(0.8, 1.0), rot=rng.uniform(0, 3))
            paint(img, shape, sig["csf"] if scene.technique != "FLAIR" else 0.12)
        else:
            paint(img, ellipse(frame, lx, ly, r * 1.8, r * 1.6, wobble=random_wobble(rng, 0.12)), sig["oedema"])
            shape = ellipse(frame, lx, ly, r, r * rng.uniform(0.8, 1.0), wobble=lesion_wobble(rng, scene.appearance))
            texture = 0.05 * smooth_noise(rng, frame.n, 30)
            paint(img, shape, sig["mass"] + texture)
            if scene.technique == "contrast-enhanced T1-weighted":  # ring enhancement, necrotic core
                paint(img, ellipse(frame, lx, ly, r * 0.6, r * 0.55), 0.25)
        lesion = to_full(frame, shape)

    bias = 1.0 + 0.12 * smooth_noise(rng, frame.n, 3)
    img = blur(img, rng.uniform(0.5, 0.9)) * bias
    sigma = rng.uniform(0.015, 0.035)
    real = img + sigma * rng.standard_normal(img.shape).astype(np.float32)
    imag = sigma * rng.standard_normal(img.shape).astype(np.float32)
    return Rendered(np.sqrt(real * real + imag * imag) * rng.uniform(0.95, 1.1), lesion)
