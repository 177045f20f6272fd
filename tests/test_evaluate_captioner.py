"""Issue 17 item 2: ``medblip evaluate`` captions through the fast captioner when it supports the settings,
with the same predictions as transformers' generate, and run.json says which path ran and why."""

from __future__ import annotations

import json

import pytest

from medblip.evaluation.predict import evaluate
from test_caption_cli import spicy_blip  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
SCORE = {"meteor": False, "java": False}


@pytest.fixture(scope="module")
def synth12(tmp_path_factory):
    from medblip.data import synth

    return synth.generate(tmp_path_factory.mktemp("synth12") / "d", n=14, seed=3, size=48,
                          splits=(0.1, 0.0, 0.9), workers=1).out


def _run(model, data, out, **kw):
    res = evaluate(model, data, out, bootstrap=0, score_options=SCORE, progress=False, batch_size=5, **kw)
    rows = [{k: v for k, v in r.items() if k != "gen_seconds"} for r in res.predictions.rows]
    return rows, json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("beams", [1, 3])
def test_fast_path_predictions_equal_generate(spicy_blip, synth12, tmp_path, beams):  # noqa: F811
    gen = {"num_beams": beams, "max_new_tokens": 12}
    fast, fast_info = _run(spicy_blip, synth12, tmp_path / "fast", generation=gen)
    plain, plain_info = _run(spicy_blip, synth12, tmp_path / "plain", generation=gen, captioner="generate")
    assert len(fast) == 13 and fast == plain
    assert len({r["prediction"] for r in fast}) > 3  # the captions depend on the image
    assert fast_info["captioner"] == {"path": "fast", "fallback_reason": None, "sdpa": True, "cuda_graphs": False}
    assert plain_info["captioner"]["path"] == "generate" and plain_info["config"]["captioner"] == "generate"
    # the predictions files are the same line for line, but for the timing
    lines = [[{k: v for k, v in json.loads(x).items() if k != "gen_seconds"}
              for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()] for d in ("fast", "plain")]
    assert lines[0] == lines[1]


def test_unsupported_settings_fall_back_to_generate_with_the_reason(spicy_blip, synth12, tmp_path):  # noqa: F811
    gen = {"num_beams": 2, "max_new_tokens": 10, "repetition_penalty": 1.3}
    rows, info = _run(spicy_blip, synth12, tmp_path / "rp", generation=gen, limit=4)
    assert info["captioner"] == {"path": "generate", "fallback_reason": "repetition_penalty"}
    plain, _ = _run(spicy_blip, synth12, tmp_path / "rp-plain", generation=gen, limit=4, captioner="generate")
    assert rows == plain
    # a resumed run that captions nothing says so rather than naming a path
    _, again = _run(spicy_blip, synth12, tmp_path / "rp", generation=gen, limit=4)
    assert again["captioner"]["path"] is None and again["generated"] == 0
