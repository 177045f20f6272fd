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

#: ``medblip demo --seed S`` (2026-11-27, 2-core CPU machine, transformers 5.24, torch 2.13, the stand-ins with
#: sine-cosine positions pretrained at lr 1e-3), each run's shape.json; the benchmark is the same (data seed 0,
#: 144 test images):
#:
#:   seed  CIDEr: zero-shot  fine-tuned (full)  decoder_only   fine-tuned/zero-shot  decoder_only/full
#:   0           0.016         0.987              0.868          60.3                  0.879
#:   1           0.021         1.012              0.992          47.1                  0.980
#:   2           0.021         0.916              1.030          44.4                  1.125
#:
#: (decoder_only's training time over full's: 0.42, 0.37, 0.37 - timed by the demo, not by a test.) Not
#: asserted, because the demo does not achieve them (README, "What the demo does"): the pointing game,
#: 0.052 / 0.043 / 0.061 against the uniform map's 0.014 (and the same architecture with random weights'
#: 0.043 / 0.026 / 0.035, grounding.json), and the side of one-sided lesions, named for
#: 0.57 / 0.50 / 0.47 of them against the majority side's 0.53.
#:
#: The stand-in before fine-tuning (``lay_grounding`` on 231 held-out shapes pictures with one mark, shapes
#: seed 7), by pretraining seed - the stand-ins of ``medblip demo --seed S``:
#:
#:   seed  side of the mark named  pointing game of the mark's noun  uniform map
#:   0     0.848                   0.416                             0.021
#:   1     0.883                   0.316                             0.021
#:   2     0.831                   0.394                             0.021
#:
#: (The stand-ins before sine-cosine positions and lr 1e-3: side 0.541 / 0.558 / 0.550, i.e. never learnt,
#: pointing 0.316 / 0.364 / 0.372.)
LAY_SIDE = 0.7  # lowest seed 0.831; a stand-in that never learnt the side names it for about half
LAY_POINTING = 0.2  # lowest seed 0.316, against the uniform map's 0.021
WIDE_MARGIN = 10.0  # fine-tuned CIDEr over the zero-shot stand-in's (lowest seed: 44.4x)
DECODER_ONLY_SHARE = 0.8  # decoder_only's CIDEr over full's (lowest seed: 0.879x; the study's threshold)


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


def lay_grounding(model_dir: Path, corpus: Path) -> dict[str, float]:
    """On held-out shapes pictures with one mark: how often the greedy caption names the mark's side
    (and not the other), and how often the attention map of the mark's noun (its reference caption
    teacher-forced) has its maximum inside the mark, next to the uniform map's expected rate."""
    import numpy as np
    from PIL import Image

    from medblip.data import load_dataset, load_image
    from medblip.explain.benchmark import phrase_word_indices
    from medblip.explain.explainer import explain_image
    from medblip.explain.grounding import baseline_scores, score_map
    from medblip.explain.maps import normalize, word_key
    from medblip.explain.render import to_original
    from medblip.models import create_model

    adapter = create_model(model_dir)
    records = [r for r in load_dataset(corpus, splits=["validation"]).records if len(r.meta["marks"]) == 1]
    sides, hits, uniform = [], [], []
    for k in range(0, len(records), 32):
        chunk = records[k:k + 32]
        images = [load_image(r.image) for r in chunk]
        for record, image, caption in zip(chunk, images, adapter.generate(images, num_beams=1, max_new_tokens=40),
                                          strict=True):
            mark = record.meta["marks"][0]
            words = {word_key(w) for w in caption.replace(".", " ").replace(",", " ").split()}
            sides.append(mark["side"] in words and ({"left": "right", "right": "left"}[mark["side"]] not in words))
            expl = explain_image(adapter, image, record.caption, caption_source="reference")
            names = {mark["kind"], "dot"} if mark["kind"] == "spot" else {mark["kind"]}
            idx = phrase_word_indices(expl.words, [[name] for name in names])[:1]
            with Image.open(corpus / record.meta["mask"]) as im:
                mask = np.asarray(im.convert("L")) == mark["mask_value"]
            if idx and mask.any():
                heat = normalize(to_original(expl.word_maps[idx].mean(axis=0), expl.image_size, expl.box))
                hits.append(score_map(heat, mask)["hit"])
                uniform.append(baseline_scores(mask)["uniform"]["hit"])
    return {"n": len(records), "side": float(np.mean(sides)), "pointing": float(np.mean(hits)),
            "uniform": float(np.mean(uniform))}


@pytest.fixture(scope="module")
def held_out_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.data.shapes import generate_shapes

    out = tmp_path_factory.mktemp("held-out-shapes") / "shapes"
    generate_shapes(out, 400, seed=7, splits=(0.01, 0.99, 0.0))  # a seed no pretraining stage uses
    return out


@pytest.mark.slow
def test_stand_in_names_and_points_at_a_mark(demo_standin: Any, held_out_shapes: Path) -> None:
    """Before it meets radiology, the stand-in looks at pictures: on held-out shapes pictures with one
    mark it names the mark's side and its attention for the mark's noun points at the mark (issue 21,
    item 1). The comment above LAY_SIDE has the measured values; the margins are below the lowest seed."""
    got = lay_grounding(demo_standin.model_dir, held_out_shapes)
    assert got["n"] >= 150, got
    assert got["side"] >= LAY_SIDE, got
    assert got["pointing"] >= LAY_POINTING and got["pointing"] >= 5 * got["uniform"], got
