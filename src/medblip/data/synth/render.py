"""Render one study: scene -> 8-bit image, 8-bit lesion mask and bounding box."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from medblip.data.synth.canvas import Frame
from medblip.data.synth.render_angio import render_angiography
from medblip.data.synth.render_ct import render_ct
from medblip.data.synth.render_mri import render_mri
from medblip.data.synth.render_pet import render_pet
from medblip.data.synth.render_us import render_ultrasound
from medblip.data.synth.render_xray import render_xray
from medblip.data.synth.rendered import Rendered
from medblip.data.synth.scene import Scene

RENDERERS: dict[str, Callable[[Scene, Frame, np.random.Generator], Rendered]] = {
    "ct": render_ct,
    "mri": render_mri,
    "xray": render_xray,
    "ultrasound": render_ultrasound,
    "angiography": render_angiography,
    "pet": render_pet,
}


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """Return (image uint8 HxW, mask uint8 HxW with 0/255, bbox [x0, y0, x1, y1] or None).

    The bbox is in pixels of the saved image with exclusive upper bounds (PIL crop convention), so
    ``mask[y0:y1, x0:x1]`` holds every mask pixel.
    """
    # Position jitter: small zoom, rotation and shift, as between real patients and scanners.
    frame = Frame(size, zoom=float(rng.uniform(0.92, 1.05)), angle=math.radians(rng.uniform(-4.0, 4.0)),
                  shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))))
    out = RENDERERS[scene.modality](scene, frame, rng)
    # Per-image display variation: brightness, contrast and gamma.
    img = np.clip(out.image, 0.0, 1.0) ** rng.uniform(0.85, 1.2)
    img = (img - 0.5) * rng.uniform(0.88, 1.12) + 0.5 + rng.uniform(-0.05, 0.05)
    if out.outside is not None:
        img[out.outside] = 0.0
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)

    mask = np.zeros((size, size), dtype=np.uint8)
    bbox = None
    if scene.has_finding:
        if out.lesion is None or out.lesion.max() <= 0.0:
            raise RuntimeError(f"renderer drew no lesion for {scene}")  # a generator bug, not user input
        inside = out.lesion >= 0.5
        if not inside.any():  # a lesion thinner than a pixel at tiny sizes: keep its densest pixel
            inside = out.lesion >= out.lesion.max()
        mask[inside] = 255
        ys, xs = np.nonzero(inside)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return image, mask, bbox
