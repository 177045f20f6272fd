"""Grounding scores: does the map for the words naming a finding point at the lesion?

Metrics, all computed at the original image (= mask) resolution on maps produced by
:func:`medblip.explain.render.to_original` and min-max normalised:

* **pointing game** (Zhang et al., 2016): a hit when the map's maximum lies inside the lesion mask.
  ``strict`` uses the mask as drawn; ``tolerance`` accepts a maximum within ``tolerance_px`` pixels
  of the mask (the original paper used 15 px). A constant map points nowhere and counts as a miss.
* **energy fraction** ("energy-based pointing game", Wang et al., 2020): the share of the map's
  total mass inside the mask.

Baselines computed on the same masks:

* **uniform** map: it has no maximum, so its pointing score is the *expected* hit rate of a pointer
  placed uniformly at random, i.e. the (dilated) mask's area fraction; its energy fraction is the
  mask's area fraction.
* **centre bias**: an isotropic-in-relative-units Gaussian centred on the image with sigma a quarter
  of each side; its maximum is the centre pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from medblip.results import GroundingSummary, MapScores

CENTRE_SIGMA = 0.25  # of the image width / height


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:  # an RGB(A) mask image
        mask = mask[..., 0]
    return mask > (0.5 if mask.dtype.kind == "f" else 127 if mask.max() > 1 else 0)


def _near_mask(mask: np.ndarray, point: tuple[int, int], tolerance_px: float) -> bool:
    y, x = point
    if mask[y, x]:
        return True
    if tolerance_px <= 0:
        return False
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return False
    return bool(np.min((ys - y) ** 2 + (xs - x) ** 2) <= tolerance_px**2)


def dilate(mask: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Pixels within ``tolerance_px`` (Euclidean) of the mask."""
    mask = _as_mask(mask)
    if tolerance_px <= 0 or not mask.any():
        return mask
    import torch
    import torch.nn.functional as F

    r = int(np.ceil(tolerance_px))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = torch.from_numpy(((yy**2 + xx**2) <= tolerance_px**2).astype(np.float32))[None, None]
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.conv2d(t, kernel, padding=r)[0, 0] > 0).numpy()


def pointing_hit(heat: np.ndarray, mask: np.ndarray, tolerance_px: float = 0.0) -> bool:
    """True when the maximum of ``heat`` lies in the mask (within ``tolerance_px``)."""
    heat = np.asarray(heat, dtype=np.float64)
    mask = _as_mask(mask)
    if heat.shape != mask.shape:
        raise ValueError(f"map {heat.shape} and mask {mask.shape} differ in size")
    if not np.isfinite(heat).all() or heat.max() <= heat.min():
        return False
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return _near_mask(mask, (int(y), int(x)), tolerance_px)


def energy_fraction(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map's mass inside the mask; 0 for an all-zero map."""
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0, None)
    mask = _as_mask(mask)
    total = heat.sum()
    return float(heat[mask].sum() / total) if total > 0 else 0.0


def centre_map(shape: tuple[int, int], sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """Gaussian centre-bias map of ``shape = (height, width)``, peak 1 at the image centre."""
    h, w = shape
    ys = (np.arange(h) + 0.5 - h / 2) / (sigma * h)
    xs = (np.arange(w) + 0.5 - w / 2) / (sigma * w)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


def baseline_scores(mask: np.ndarray, tolerance_px: float = 0.0) -> dict[str, dict[str, float]]:
    """Pointing (strict and tolerant) and energy of the uniform and centre-bias maps for one mask."""
    mask = _as_mask(mask)
    area = float(mask.mean())
    centre = centre_map(mask.shape)
    cy, cx = (mask.shape[0] - 1) // 2, (mask.shape[1] - 1) // 2
    return {
        "uniform": {"hit": area, "hit_tol": float(dilate(mask, tolerance_px).mean()), "energy": area},
        "centre": {"hit": float(mask[cy, cx]), "hit_tol": float(_near_mask(mask, (cy, cx), tolerance_px)),
                   "energy": energy_fraction(centre, mask)},
    }


def score_map(heat: np.ndarray, mask: np.ndarray, tolerance_px: float = 0.0) -> dict[str, float]:
    return {"hit": float(pointing_hit(heat, mask)), "hit_tol": float(pointing_hit(heat, mask, tolerance_px)),
            "energy": energy_fraction(heat, mask)}


def summarise(rows: Iterable[dict[str, Any]], tolerance_px: float,
              skipped: dict[str, int] | None = None) -> GroundingSummary:
    """Average per-finding rows shaped ``{"model": {...}, "uniform": {...}, "centre": {...}}`` (and
    ``"random"``, the random-weights model's, when every row has it)."""
    rows = list(rows)
    sources = ["model", "uniform", "centre"] + (["random"] if rows and all("random" in r for r in rows) else [])
    scores = {source: MapScores(**{metric: float(np.mean([r[source][metric] for r in rows])) if rows else float("nan")
                                   for metric in ("hit", "hit_tol", "energy")})
              for source in sources}
    return GroundingSummary(n=len(rows), tolerance_px=tolerance_px, scores=scores, skipped=dict(skipped or {}))
