"""Explanations of captions: per-token cross-attention and Grad-CAM maps, overlays, grounding score.

* :mod:`~medblip.explain.maps` - aggregation over layers/heads, patch-grid reshape, bilinear
  upsampling, min-max normalisation, sub-word -> word merging.
* :mod:`~medblip.explain.attention` - the teacher-forced pass that records cross-attention (and its
  gradients for Grad-CAM) for every family.
* :mod:`~medblip.explain.render` - mapping back onto the original image, overlays, per-word grids.
* :mod:`~medblip.explain.explainer` - ``explain_image`` / ``save_explanation``.
* :mod:`~medblip.explain.grounding` and :mod:`~medblip.explain.benchmark` - pointing game and
  energy inside the lesion mask against uniform and centre-bias baselines.

Heavy libraries (torch, matplotlib) are imported inside functions.
"""

from __future__ import annotations

from medblip.explain.explainer import ExplainSettings, Explanation, explain_image, save_explanation
from medblip.explain.grounding import baseline_scores, energy_fraction, pointing_hit
from medblip.explain.maps import aggregate, group_words, merge_maps, normalize, to_grid, upsample
from medblip.explain.render import grid_figure, input_box, overlay, to_original

__all__ = [
    "ExplainSettings",
    "Explanation",
    "aggregate",
    "baseline_scores",
    "energy_fraction",
    "explain_image",
    "grid_figure",
    "group_words",
    "input_box",
    "merge_maps",
    "normalize",
    "overlay",
    "pointing_hit",
    "save_explanation",
    "to_grid",
    "to_original",
    "upsample",
]
