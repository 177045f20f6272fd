"""Grounding on a tiny BLIP that has *learned* the synthetic benchmark (``grounded_tiny_blip``: the
GROUNDING recipe of tests/_train_fixtures.py, trained from random weights on the full demo's benchmark).

The finding words' maps must point inside the true lesion masks clearly more often than a uniform map
(the mask's area fraction) and a centre-bias map do; a random model must not (the score measures the
model, not the benchmark).
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow  # grounded_tiny_blip: tests/_train_fixtures.py, registered in conftest


def _grounding(model_dir: Any, data_dir: Any, method: str) -> dict[str, Any]:
    from medblip.explain.benchmark import evaluate_grounding
    from medblip.explain.explainer import ExplainSettings
    from medblip.models import create_model

    adapter = create_model(str(model_dir))
    return evaluate_grounding(adapter, data_dir, split="test", settings=ExplainSettings(method=method))


#: What the GROUNDING recipe reliably achieves (model and training seeds 0, 1, 2; 2026-11-27, the 2-core
#: CPU machine, 2 threads, transformers 5.24, the trainer's defaults: SDPA and fused AdamW on CPU; the
#: benchmark's data seed 0, 115 findings on the test split). Attention maps of the finding words:
#:
#:   seed  hit (strict)  hit within one patch  energy in the lesion   Grad-CAM energy
#:   0     0.052         0.104                 0.0172                 0.0203
#:   1     0.052         0.113                 0.0224                 0.0183
#:   2     0.035         0.078                 0.0272                 0.0206
#:   uniform map 0.014 / 0.0385 / 0.0140;  centre-bias map 0.000 / 0.0348 / 0.0227
#:
#: The demo's fine-tuned stand-in (``trained_tiny_blip``) grounds less and not reliably: fine-tuning seeds
#: 0-2 of the same stand-in gave hit within one patch 0.061 / 0.087 / 0.104 but lesion energy 0.0151 /
#: 0.0133 / 0.0145 (uniform 0.0140) and Grad-CAM energy 0.0121 / 0.0161 / 0.0151; with ``train.sdpa: off``
#: hit within one patch fell to 0.035 on seed 0. It is not asserted here; issue 21's pointing-game target
#: (0.15) is not met by either model (README, "What the demo does").
#:
#: Saliency (``--method saliency``, |gradient| at the input's pixels) puts 0.0247 / 0.0218 / 0.0267 of its
#: mass in the lesion (1.56x the uniform map's at the lowest seed); the same architecture with random
#: weights and a live vision tower (``vision_init_std=0.02``; seeds 0 / 1 / 2) 0.0175 / 0.0175 / 0.0173
#: (1.25x at most). Its pointing game does not separate them (trained 0.009-0.026, random 0.035-0.052),
#: so it is not asserted.
TOLERANT_HIT_FACTOR = 1.6  # lowest seed: 2.03x the better baseline
ENERGY_FACTOR = 1.15  # lowest seed: 1.23x the uniform map's
GRADCAM_ENERGY_FACTOR = 1.15  # lowest seed: 1.31x
SALIENCY_ENERGY_FACTOR = 1.4  # trained: 1.56x at the lowest seed; random weights: 1.25x at the highest


def test_trained_model_points_at_the_lesion(grounded_tiny_blip: Any) -> None:
    """Cross-attention of the finding words: within one patch of the lesion clearly more often than a
    uniform or centre-bias map, and more of the map's mass inside the lesion than a uniform map has
    (margins below the lowest of three training seeds, see the table above)."""
    result = _grounding(grounded_tiny_blip.model_dir, grounded_tiny_blip.data_dir, "attention")
    s = result["summary"]
    sc = s["scores"]
    assert s["n"] >= 80, s  # the test split's images with a finding named in the reference
    baseline = max(sc["uniform"]["hit_tol"], sc["centre"]["hit_tol"])
    assert sc["model"]["hit_tol"] >= TOLERANT_HIT_FACTOR * baseline, sc
    assert sc["model"]["energy"] >= ENERGY_FACTOR * sc["uniform"]["energy"], sc


def test_gradcam_maps_of_the_trained_model_beat_the_uniform_map(grounded_tiny_blip: Any) -> None:
    """Grad-CAM of the finding words puts more of its mass in the lesion than a uniform map does."""
    result = _grounding(grounded_tiny_blip.model_dir, grounded_tiny_blip.data_dir, "gradcam")
    sc = result["summary"]["scores"]
    assert sc["model"]["energy"] >= GRADCAM_ENERGY_FACTOR * sc["uniform"]["energy"], sc


def test_untrained_model_is_not_grounded(grounded_tiny_blip: Any, tmp_path: Any) -> None:
    """Same architecture (the GROUNDING recipe's), random weights: nothing beyond the baselines."""
    from _train_fixtures import GROUNDING, train_captions
    from medblip.models import init_tiny

    init = init_tiny("blip", tmp_path / "init", captions=train_captions(grounded_tiny_blip.data_dir),
                     **GROUNDING["blip"])
    result = _grounding(init, grounded_tiny_blip.data_dir, "attention")
    assert result["p_value"]["vs_uniform"] > 0.05, (result["hits"], result["summary"]["scores"])
    sc = result["summary"]["scores"]
    # what the trained model is asked for above is not what an untrained one gets
    assert sc["model"]["hit_tol"] < TOLERANT_HIT_FACTOR * max(sc["uniform"]["hit_tol"], sc["centre"]["hit_tol"]), sc


def test_saliency_of_the_trained_model_beats_random_weights(grounded_tiny_blip: Any, tmp_path: Any) -> None:
    """The model randomisation test (Adebayo et al. 2018): the trained model's saliency of the finding
    words puts clearly more of its mass in the lesion than a uniform map, and the same architecture with
    random weights (a live vision tower, whose gradients reach the pixels) does not reach that bar."""
    from _train_fixtures import GROUNDING, train_captions
    from medblip.models import init_tiny

    trained = _grounding(grounded_tiny_blip.model_dir, grounded_tiny_blip.data_dir, "saliency")["summary"]["scores"]
    assert trained["model"]["energy"] >= SALIENCY_ENERGY_FACTOR * trained["uniform"]["energy"], trained
    init = init_tiny("blip", tmp_path / "init", captions=train_captions(grounded_tiny_blip.data_dir),
                     **GROUNDING["blip"], vision_init_std=0.02)
    random = _grounding(init, grounded_tiny_blip.data_dir, "saliency")["summary"]["scores"]
    assert random["model"]["energy"] < SALIENCY_ENERGY_FACTOR * random["uniform"]["energy"], random
