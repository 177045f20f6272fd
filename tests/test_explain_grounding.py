"""Grounding on a tiny BLIP that has *learned* the synthetic benchmark (the full demo's pretrained stand-in,
fine-tuned with the demo's recipe).

The finding words' maps must point inside the true lesion masks clearly more often than a uniform map
(the mask's area fraction) and a centre-bias map do; a random model must not (the score measures the
model, not the benchmark).
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow  # trained_tiny_blip: tests/_train_fixtures.py, registered in conftest


def _grounding(model_dir: Any, data_dir: Any, method: str) -> dict[str, Any]:
    from medblip.explain.benchmark import evaluate_grounding
    from medblip.explain.explainer import ExplainSettings
    from medblip.models import create_model

    adapter = create_model(str(model_dir))
    return evaluate_grounding(adapter, data_dir, split="test", settings=ExplainSettings(method=method))


#: What the demo's recipe reliably achieves: its pretrained BLIP stand-in fine-tuned (``medblip demo --seed
#: 0|1|2``, 2026-11-27, 2-core CPU machine, transformers 5.24; seeds change the stand-in's initialisation
#: and the fine-tuning's data order; the benchmark's data seed 0, 115 findings on the test split).
#: Attention maps of the finding words:
#:
#:   seed  hit (strict)  hit within one patch  energy in the lesion
#:   0     0.043         0.087                 0.0181
#:   1     0.052         0.113                 0.0230
#:   2     0.026         0.052                 0.0176
#:   uniform map 0.014 / 0.0385 / 0.0140;  centre-bias map 0.000 / 0.0348 / 0.0227
#:   the same architecture untrained (seeds 0-2, before the stand-ins): hit within one patch 0.009-0.026
#:
#: Grad-CAM energy: 0.0171, 0.0319, 0.0180 (uniform 0.0140). The strict pointing game (3 to 6 hits of
#: 115 against 1.6 expected) stays far below the 0.15 issue 21 asks for and is not asserted here (README,
#: "What the demo does"). The fixture trains with two threads, the demo with one: same recipe and seed,
#: not bit-identical weights.
TOLERANT_HIT_FACTOR = 1.2  # lowest seed: 1.37x the better baseline
ENERGY_FACTOR = 1.15  # lowest seed: 1.26x the uniform map's
GRADCAM_ENERGY_FACTOR = 1.1  # lowest seed: 1.22x


def test_trained_model_points_at_the_lesion(trained_tiny_blip: Any) -> None:
    """Cross-attention of the finding words: within one patch of the lesion clearly more often than a
    uniform or centre-bias map, and more of the map's mass inside the lesion than a uniform map has
    (margins below the lowest of three training seeds, see the table above)."""
    result = _grounding(trained_tiny_blip.model_dir, trained_tiny_blip.data_dir, "attention")
    s = result["summary"]
    sc = s["scores"]
    assert s["n"] >= 80, s  # the test split's images with a finding named in the reference
    baseline = max(sc["uniform"]["hit_tol"], sc["centre"]["hit_tol"])
    assert sc["model"]["hit_tol"] >= TOLERANT_HIT_FACTOR * baseline, sc
    assert sc["model"]["energy"] >= ENERGY_FACTOR * sc["uniform"]["energy"], sc


def test_gradcam_maps_of_the_trained_model_beat_the_uniform_map(trained_tiny_blip: Any) -> None:
    """Grad-CAM of the finding words puts more of its mass in the lesion than a uniform map does."""
    result = _grounding(trained_tiny_blip.model_dir, trained_tiny_blip.data_dir, "gradcam")
    sc = result["summary"]["scores"]
    assert sc["model"]["energy"] >= GRADCAM_ENERGY_FACTOR * sc["uniform"]["energy"], sc


def test_untrained_model_is_not_grounded(trained_tiny_blip: Any, tmp_path: Any) -> None:
    """Same architecture (the stand-in's), random weights: nothing beyond the baselines."""
    from _train_fixtures import train_captions
    from medblip.experiments.demo import load_recipe as load_demo_recipe
    from medblip.experiments.pretrain import load_recipe
    from medblip.models import init_tiny

    recipe = load_recipe("blip", load_demo_recipe("full").pretrain)
    init = init_tiny("blip", tmp_path / "init", captions=train_captions(trained_tiny_blip.data_dir), **recipe.model)
    result = _grounding(init, trained_tiny_blip.data_dir, "attention")
    assert result["p_value"]["vs_uniform"] > 0.05, (result["hits"], result["summary"]["scores"])
    sc = result["summary"]["scores"]
    # what the trained model is asked for above is not what an untrained one gets
    assert sc["model"]["hit_tol"] < TOLERANT_HIT_FACTOR * max(sc["uniform"]["hit_tol"], sc["centre"]["hit_tol"]), sc
