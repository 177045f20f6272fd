"""The study's shape on the demo's models (issue 21): the pretrained tiny stand-in fine-tuned on the
synthetic benchmark, as ``medblip demo`` does it (``demo_standin`` and ``trained_tiny_blip`` in
tests/_train_fixtures.py), and the shape criteria computed from a run's outputs
(:mod:`medblip.experiments.shape`).

The margins are below the lowest of three seeds of ``medblip demo --seed 0|1|2`` (see MEASURED).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medblip.experiments.shape import Criterion, shape_lines, side_rates

#: ``medblip demo --seed S`` (2026-11-27, 2-core CPU machine, transformers 5.24, torch 2.13, the trainer with
#: ``train.length_buckets: auto``), each run's shape.json; the benchmark is the same (data seed 0, 144 test images):
#:
#:   seed  CIDEr: zero-shot  fine-tuned (full)  decoder_only   fine-tuned/zero-shot  decoder_only/full
#:   0           0.025         1.037              1.115          42.1                  1.075
#:   1           0.032         1.039              0.996          32.5                  0.958
#:   2           0.020         1.013              0.956          49.8                  0.944
#:
#: (decoder_only's training time over full's: 0.34, 0.38, 0.43 - timed by the demo, not by a test.) Not
#: asserted, because the demo does not achieve them (README, "What the demo does"): the pointing game,
#: 0.000 / 0.026 / 0.026 against the uniform map's 0.014, and the side of one-sided lesions, named for
#: 0.53 / 0.46 / 0.45 of them against the majority side's 0.53.
WIDE_MARGIN = 10.0  # fine-tuned CIDEr over the zero-shot stand-in's (lowest seed: 32.5x)
DECODER_ONLY_SHARE = 0.8  # decoder_only's CIDEr over full's (lowest seed: 0.944x; the study's threshold)


def _cider(model_dir: Path, data_dir: Path) -> float:
    """Greedy test-split CIDEr of a checkpoint, scored as the demo scores it (no METEOR)."""
    from medblip.data import load_dataset, load_image
    from medblip.evaluation import score_predictions
    from medblip.experiments.demo import load_recipe
    from medblip.models import create_model

    recipe = load_recipe("full")
    adapter = create_model(model_dir)
    records = load_dataset(data_dir, splits=["test"]).records
    rows = []
    for k in range(0, len(records), 32):
        chunk = records[k:k + 32]
        captions = adapter.generate([load_image(r.image) for r in chunk], **recipe.generation)
        rows += [{"id": r.id, "reference": r.caption, "prediction": c} for r, c in zip(chunk, captions, strict=True)]
    scores = score_predictions(rows, bootstrap=0, metrics="coco", **recipe.scoring)
    return float(scores["metrics"]["CIDEr"]["value"])


@pytest.fixture(scope="module")
def full_cider(trained_tiny_blip: Any) -> float:
    return _cider(trained_tiny_blip.model_dir, trained_tiny_blip.data_dir)


@pytest.mark.slow
def test_fine_tuned_stand_in_beats_the_zero_shot_stand_in_widely(demo_standin: Any, full_cider: float) -> None:
    """The stand-in writes lay captions of shapes ('a dark oval with a small bright spot on its left
    side'), so zero-shot it scores near nothing on radiology captions; fine-tuned, it scores >= 10x that."""
    zero_shot = _cider(demo_standin.model_dir, demo_standin.data_dir)
    assert full_cider >= WIDE_MARGIN * max(zero_shot, 0.01), (full_cider, zero_shot)


@pytest.mark.slow
def test_decoder_only_reaches_most_of_full(demo_standin: Any, full_cider: float, tmp_path: Path) -> None:
    """Freezing the stand-in's *pretrained* vision encoder costs little: decoder_only, on the same
    budget, reaches >= 0.8x full's CIDEr (the study's finding; with a random encoder it reached 0.17x)."""
    from _train_fixtures import train_recipe
    from medblip.experiments.demo import load_recipe

    run = train_recipe(tmp_path, load_recipe("full").model_dump(), model=demo_standin.model_dir,
                       data=demo_standin.data_dir, strategy="decoder_only")
    decoder_only = _cider(run.model_dir, run.data_dir)
    assert decoder_only >= DECODER_ONLY_SHARE * full_cider, (decoder_only, full_cider)


def test_side_rates_count_only_one_sided_lesions() -> None:
    facts = {"a": {"side": "left"}, "b": {"side": "left"}, "c": {"side": "right"}, "d": {"side": None},
             "e": {"side": "bilateral"}}
    captions = {"a": "CT of the chest: nodule in the left lung.", "b": "CT: nodule in the right lung.",
                "c": "CT: nodule in the right lung.", "d": "CT: normal.", "e": "CT: left and right effusions."}
    side, majority, n = side_rates(captions, facts)
    assert n == 3 and majority == pytest.approx(2 / 3) and side == pytest.approx(2 / 3)
    assert side_rates({"d": "CT: normal."}, facts) == (None, None, 0)


def test_criteria_hold_or_not_and_print_as_a_table() -> None:
    at_least = Criterion("c", "CIDEr ratio", 0.9, 0.8)
    at_most = Criterion("t", "time ratio", 0.7, 0.6, at_least=False)
    missing = Criterion("p", "pointing", None, 0.15)
    assert (at_least.holds, at_most.holds, missing.holds) == (True, False, None)
    lines = shape_lines([at_least, at_most, missing])
    assert lines[2] == "| CIDEr ratio | 0.900 | >= 0.8 | yes |"
    assert lines[3] == "| time ratio | 0.700 | <= 0.6 | **no** |"
    assert lines[4] == "| pointing | not measured | >= 0.15 | - |"
    assert at_most.as_dict()["holds"] is False
