"""Grounding on a tiny BLIP that has *learned* the synthetic benchmark (the trainer's learning-test model).

The finding words' maps must point inside the true lesion masks clearly more often than a uniform map
(the mask's area fraction) and a centre-bias map do; a random model must not (the score measures the
model, not the benchmark).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

if "_train_fixtures" not in sys.modules:  # conftest registers it as a plugin; imported for direct runs
    from _train_fixtures import trained_tiny_blip  # noqa: F401

pytestmark = pytest.mark.slow

#: Test images scored (of the 144 in the split; about 3/4 have a finding).
LIMIT = 72


def _grounding(model_dir: Any, data_dir: Any, method: str) -> dict[str, Any]:
    from medblip.explain.benchmark import evaluate_grounding
    from medblip.explain.explainer import ExplainSettings
    from medblip.models import create_model

    adapter = create_model(str(model_dir))
    return evaluate_grounding(adapter, data_dir, split="test", limit=LIMIT, seed=0,
                              settings=ExplainSettings(method=method))


@pytest.mark.parametrize("method", ["attention", "gradcam"])
def test_trained_model_points_at_the_lesion(trained_tiny_blip: Any, method: str) -> None:
    result = _grounding(trained_tiny_blip.model_dir, trained_tiny_blip.data_dir, method)
    s = result["summary"]
    sc = s["scores"]
    assert s["n"] >= 30, s  # enough findings scored for the comparison to mean something
    model, uniform, centre = sc["model"], sc["uniform"], sc["centre"]
    # Pointing game: clearly above both baselines (not within noise of them).
    assert model["hit"] >= uniform["hit"] + 0.25, sc
    assert model["hit"] >= centre["hit"] + 0.25, sc
    # The map's energy concentrates on the lesion beyond the lesion's share of the image.
    assert model["energy"] >= 1.5 * uniform["energy"], sc


def test_untrained_model_is_not_grounded(trained_tiny_blip: Any) -> None:
    """Same architecture and tokenizer, random weights: no better than the uniform baseline."""
    init = trained_tiny_blip.run_dir.parent / "init"
    result = _grounding(init, trained_tiny_blip.data_dir, "attention")
    sc = result["summary"]["scores"]
    assert sc["model"]["hit"] <= sc["uniform"]["hit"] + 0.15, sc
