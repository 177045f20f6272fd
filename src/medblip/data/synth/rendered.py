"""What a renderer returns, and helpers they share for placing and sizing lesions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medblip.data.synth.scene import Scene


@dataclass
class Rendered:
    image: np.ndarray  # float32, display intensities roughly in [0, 1]
    lesion: np.ndarray | None  # float32 alpha of the finding (>= 0.5 is the mask), None if normal
    outside: np.ndarray | None = None  # bool: pixels that are black by construction (US sector)


def lesion_radius(scene: Scene) -> float:
    """Half the nominal lesion diameter in anatomical units (the FOV spans 2 units)."""
    assert scene.size_mm is not None
    return scene.size_mm / scene.fov_mm


def windowed(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT display window: HU -> [0, 1]."""
    return np.clip((hu - (level - width / 2.0)) / width, 0.0, 1.0)


def lesion_wobble(rng: np.random.Generator, appearance: str | None) -> list[tuple[int, float, float]]:
    """Outline irregularity matching the caption's adjective."""
    if appearance in {"spiculated"}:
        ks, strength = (5, 7, 11, 13), 0.15
    elif appearance in {"lobulated", "ill-defined", "heterogeneous", "complex"}:
        ks, strength = (2, 3, 4, 5), 0.14
    elif appearance in {"simple", "well-defined", "anechoic", "round", "well-circumscribed"}:
        ks, strength = (2, 3), 0.03
    else:
        ks, strength = (2, 3, 4), 0.07
    return [(k, float(rng.uniform(0.5, 1.0) * strength), float(rng.uniform(0, 2 * np.pi))) for k in ks]


# Lobe -> (x range, y range) of a brain lesion's centre, in anatomical units on the lesion's side.
_BRAIN_LOBES = {"frontal": ((0.15, 0.38), (-0.62, -0.35)), "parietal": ((0.3, 0.48), (-0.15, 0.2)),
                "temporal": ((0.45, 0.55), (-0.05, 0.18)), "occipital": ((0.12, 0.32), (0.48, 0.62))}


def brain_lesion_centre(scene: Scene, rng: np.random.Generator, inner_x: float, inner_y: float) -> tuple[float, float]:
    """Centre of an axial brain lesion in the lobe its location names, on its side, pulled inwards
    so that a lesion of its size stays inside the skull's inner half-axes ``inner_x``/``inner_y``."""
    r = lesion_radius(scene)
    loc = scene.location or ""
    (x0, x1), (y0, y1) = next(v for k, v in _BRAIN_LOBES.items() if k in loc)
    lx, ly = scene.side_sign * rng.uniform(x0, x1), rng.uniform(y0, y1)
    rho = math.hypot(lx / inner_x, ly / inner_y)
    room = 1.0 - r / min(inner_x, inner_y) - 0.05
    if rho > room > 0:
        lx, ly = lx * room / rho, ly * room / rho
    return lx, ly
