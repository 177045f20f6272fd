"""``medblip evaluate`` end to end: a tiny random BLIP over a small synthetic benchmark."""

from __future__ import annotations

import json
import logging

import pytest

import medblip.cli.evaluate_cmd  # noqa: F401  (registers evaluate/compare on the app)
from medblip.evaluation.predict import evaluate
from medblip.evaluation.predictions import read_predictions_file

FAST = {"num_beams": 1, "max_new_tokens": 6}
# METEOR starts a Java process per scoring (10-40 s); the evaluation core tests cover it
SCORE = {"meteor": False}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from medblip.data import synth
    from medblip.models import init_tiny

    root = tmp_path_factory.mktemp("eval")
    # 12 images at 64 px, 9 of them in the test split
    data = synth.generate(root / "synth", n=12, seed=0, size=64, splits=(0.25, 0.0, 0.75)).out
    model = init_tiny("blip", root / "tiny-blip", image_size=64, seed=0)
    return {"data": data, "model": model, "root": root}


def _test_ids(bench) -> list[str]:
    from medblip.data import load_dataset

    ds = load_dataset(bench["data"], splits=["test"])
    return [r.id for r in ds.records]


@pytest.mark.slow
def test_cli_evaluate_writes_every_file_and_resumes(bench, tmp_path, medblip_cli, capsys):
    out = tmp_path / "run"
    argv = ["evaluate", "--model", str(bench["model"]), "--data", str(bench["data"]),
            "--split", "test", "--batch-size", "4", "--num-beams", "1", "--max-new-tokens", "6",
            "--repetition-penalty", "1.1", "--bootstrap", "20", "--no-meteor", "--out", str(out), "--no-progress"]
    assert medblip_cli(*argv) == 0
    printed = capsys.readouterr()
    for name in ("predictions.jsonl", "metrics.json", "metrics.md", "run.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    ids = _test_ids(bench)
    assert [r["id"] for r in rows] == ids and len(ids) > 0
    for r in rows:
        assert set(r) >= {"id", "reference", "prediction", "model", "generation", "gen_seconds", "family"}
        assert r["family"] == "blip" and r["model"] == str(bench["model"].resolve())
        assert r["generation"]["num_beams"] == 1 and r["generation"]["repetition_penalty"] == 1.1
        assert isinstance(r["prediction"], str) and r["gen_seconds"] >= 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["generation_time"]["seconds_per_image"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["split"] == "test" and run["versions"]["torch"] and run["generated"] == len(ids)
    md = (out / "metrics.md").read_text()
    assert md.strip() and md.strip().splitlines()[0] in printed.out  # the table is printed

    # a rerun generates nothing: every id is already there
    assert medblip_cli(*argv) == 0
    printed = capsys.readouterr()
    assert "resuming" in printed.err and f"0 captioned now, {len(ids)} resumed" in printed.err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == len(ids)


@pytest.mark.slow
def test_resume_after_crash_drops_torn_line_and_generates_only_the_rest(bench, tmp_path, caplog):
    from medblip.models import create_model

    out = tmp_path / "run"
    first = evaluate(bench["model"], bench["data"], out, generation=FAST, bootstrap=0, score_options=SCORE, progress=False,
                     batch_size=5)
    n = len(first.predictions.rows)
    assert first.predictions.generated == n and first.predictions.skipped == 0
    path = out / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    keep = n // 2
    # a crash while writing line keep+1: a prefix of it on disk, no newline
    path.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])

    # count real generate calls on a real adapter (no mock: the wrapper calls through)
    model = create_model(bench["model"])
    calls: list[int] = []
    real = model.generate

    def counting(images, settings=None, **kw):
        calls.append(len(images))
        return real(images, settings, **kw)

    model.generate = counting  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="medblip.evaluation.predict"):
        # captioner="generate": the calls counted are the adapter's own generate (the first run took
        # the fast captioner, so the comparison below also checks that both give the same captions)
        second = evaluate(model, bench["data"], out, generation=FAST, bootstrap=0, score_options=SCORE,
                          progress=False, batch_size=5, captioner="generate")
    assert sum(calls) == n - keep == second.predictions.generated
    assert second.predictions.skipped == keep
    assert "half-written last line" in caplog.text and "resuming" in caplog.text
    assert any("half-written" in note for note in second.notes)
    pf = read_predictions_file(path)
    assert pf.notes == [] and [r["id"] for r in pf.rows] == [r["id"] for r in first.predictions.rows]
    # same model + settings + greedy: the regenerated captions equal the first run's
    assert [r["prediction"] for r in pf.rows] == [r["prediction"] for r in first.predictions.rows]


@pytest.mark.slow
def test_changed_settings_refuse_to_mix(bench, tmp_path):
    from medblip.errors import MedblipError

    out = tmp_path / "run"
    evaluate(bench["model"], bench["data"], out, generation=FAST, bootstrap=0, score_options=SCORE, progress=False, limit=2)
    with pytest.raises(MedblipError, match="different generation settings.*max_new_tokens"):
        evaluate(bench["model"], bench["data"], out, generation={**FAST, "max_new_tokens": 7},
                 bootstrap=0, score_options=SCORE, progress=False, limit=2)
    res = evaluate(bench["model"], bench["data"], out, generation={**FAST, "max_new_tokens": 7},
                   bootstrap=0, score_options=SCORE, progress=False, limit=2, overwrite=True)
    assert res.predictions.generated == 2


def test_bad_split_and_scoring_option_fail_before_any_work(tmp_path):
    from medblip.errors import DataError, MedblipError

    with pytest.raises(DataError, match="unknown split 'nonsense'"):
        evaluate("no/model", tmp_path, tmp_path / "x", split="nonsense", progress=False)
    with pytest.raises(MedblipError, match="unknown scoring option 'meteorr'"):
        evaluate("no/model", tmp_path, tmp_path / "x", score_options={"meteorr": False})
    assert not (tmp_path / "x" / "predictions.jsonl").exists()


@pytest.mark.slow
def test_split_without_records_names_the_splits_found(bench, tmp_path):
    from medblip.errors import DataError

    with pytest.raises(DataError, match=r"no usable records in split 'validation' \(splits with records: "
                                        r"train 3, test 9\)"):
        evaluate(bench["model"], bench["data"], tmp_path / "x", split="valid", progress=False)
