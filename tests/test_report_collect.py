"""``medblip.reports.collect``: defensive parsing of every producer file, discovery, clinical highlighting."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

import medblip.cli.report_cmd  # noqa: F401  (registers the command)
from medblip.cli.app import app
from medblip.errors import MedblipError
from medblip.reports import build_report, collect, discover
from medblip.reports.collect import (
    Clinical,
    _Reader,
    best_per_metric,
    lower_is_better,
    metric_groups,
    metric_value,
    metrics_table,
    parse_ablation,
)

runner = CliRunner()


def _json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict[str, Any]], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "reference": "Chest X-ray showing a left pleural effusion.", "prediction": "Chest X-ray with a right pleural effusion."},
    {"id": "b", "reference": "Axial CT of the brain with a mass.", "prediction": "MRI of the brain with a mass."},
    {"id": "c", "reference": "Ultrasound of the liver.", "prediction": "Ultrasound of the liver."},
]


# -- values --------------------------------------------------------------------------------------------
def test_metric_value_spellings() -> None:
    assert metric_value(0.5) == {"value": 0.5, "ci_low": None, "ci_high": None, "p_value": None}
    assert metric_value({"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "group": "caption"})["group"] == "caption"
    assert metric_value({"score": 1.0, "ci": [0.9, 1.1], "p": 0.01}) == {
        "value": 1.0, "ci_low": 0.9, "ci_high": 1.1, "p_value": 0.01}
    assert metric_value({"mean": 2, "low": 1, "high": 3})["ci_high"] == 3.0
    assert metric_value({"value": None, "p_value": None})["value"] is None  # not computed
    for bad in (True, "0.5", {"note": "x"}, {"value": "high"}, [1, 2]):
        assert metric_value(bad) is None
    assert metric_value(float("nan"))["value"] is None


def test_metrics_table_reads_score_predictions_and_flat_files() -> None:
    result = {"n_images": 3, "metrics": {"BLEU-4": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3, "group": "caption"},
                                         "modality_accuracy": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0}},
              "degeneration": {"collapsed": False, "distinct_1": 0.5}, "warnings": []}
    assert list(metrics_table(result)) == ["BLEU-4", "modality_accuracy"]
    flat = {"BLEU-4": 0.2, "n_images": 3, "clinical": {"finding_f1": {"value": 0.4}}, "generation_time": {"x": 1}}
    assert set(metrics_table(flat)) == {"BLEU-4", "finding_f1"}
    assert metrics_table(None) == {} and metrics_table([1]) == {}


def test_best_per_metric_and_direction() -> None:
    systems = [{"name": "a", "metrics": {"CIDEr": {"value": 1.0}, "val_loss": {"value": 2.0}}},
               {"name": "b", "metrics": {"CIDEr": {"value": 1.0}, "val_loss": {"value": 1.0}}},
               {"name": "c", "metrics": {"CIDEr": {"value": None}}}]
    best = best_per_metric(systems, ["CIDEr", "val_loss"])
    assert best == {"CIDEr": ["a", "b"], "val_loss": ["b"]}
    assert lower_is_better("val_loss") and lower_is_better("repeated_ngram_rate") and not lower_is_better("BLEU-4")
    groups = metric_groups(["BLEU-4", "finding_f1", "CIDEr", "BERTScore-F1"])
    assert [(g["name"], g["metrics"]) for g in groups] == [
        ("caption", ["BLEU-4", "CIDEr"]), ("clinical", ["finding_f1"]), ("embedding", ["BERTScore-F1"])]


# -- clinical terms ------------------------------------------------------------------------------------
def test_clinical_terms_agree_and_disagree() -> None:
    c = Clinical()
    if not c.ok:
        pytest.skip("the clinical extractor is not importable")
    ref = "Chest X-ray showing a left pleural effusion without pneumothorax."
    segs = c.segments("CT of the chest showing a right pleural effusion.", ref)
    marked = {g["text"].lower(): g["cls"] for g in segs if g["cls"]}
    assert marked["ct"] == "disagree" and marked["right"] == "disagree"
    assert marked["chest"] == "agree" and marked["pleural effusion"] == "agree"
    assert "".join(g["text"] for g in segs) == "CT of the chest showing a right pleural effusion."
    chips = c.chips(c.concepts("CT of the chest."), c.concepts(ref))
    assert {x["cls"] for x in chips} >= {"disagree", "missed"}
    assert c.errors(c.concepts("MRI of the left knee"), c.concepts("MR image of the right knee")) == {
        "modality": False, "side": True}
    # a finding negated in both captions agrees; one the reference negates disagrees
    segs = c.segments("No pneumothorax. Large pneumothorax on the left.", ref)
    assert [g["cls"] for g in segs if g["text"].lower() == "pneumothorax"][0] in ("agree", "disagree")


# -- discovery and robustness ----------------------------------------------------------------------------
def test_discover_by_markers(tmp_path: Path) -> None:
    _jsonl(tmp_path / "cmp" / "systems" / "a" / "predictions.jsonl", ROWS)
    _json(tmp_path / "cmp" / "comparison.json", {"systems": []})
    _jsonl(tmp_path / "run" / "metrics.jsonl", [{"step": 1, "split": "train", "loss": 1.0}])
    _json(tmp_path / "run" / "checkpoints" / "best" / "metrics.json", {"x": 1})  # never searched
    _jsonl(tmp_path / "ev" / "predictions.jsonl", ROWS)
    _json(tmp_path / "ev" / "validate-data.json", {"splits": {"test": {"records": 3}}, "load_report": {}})
    _json(tmp_path / "out" / "report.json", {"splits": {}, "load_report": {}})
    found = {(f.kind, f.path.relative_to(tmp_path).as_posix()) for f in discover([tmp_path], exclude=[tmp_path / "out"])}
    assert found == {("compare", "cmp"), ("train", "run"), ("evaluate", "ev"), ("dataset:validate-data.json", "ev")}


def test_only_predictions_builds_every_section_with_notes(tmp_path: Path) -> None:
    _jsonl(tmp_path / "ev" / "predictions.jsonl", ROWS, tail='{"id": "d", "predic')  # torn last line
    rep = collect([tmp_path], examples=2)
    out = build_report(rep, tmp_path / "report")
    html = out["html"].read_text(encoding="utf-8")
    for sid in ("dataset", "comparison", "ablation", "training", "examples", "attention", "failures"):
        assert f'id="{sid}"' in html
    assert "no image" in html and "<img" not in html  # no image anywhere: placeholders only
    assert any("malformed" in n for n in rep.notes) and any("dataset summary" in n for n in rep.notes)
    assert len(rep.examples) == 2 and rep.failures["systems"][0]["wrong_side_count"] == 1
    assert rep.failures["systems"][0]["wrong_modality_count"] == 1
    assert json.loads(out["json"].read_text())["examples"][0]["id"] == "a"


def test_malformed_producer_files_become_notes(tmp_path: Path) -> None:
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.json").write_text("{not json", encoding="utf-8")
    _json(tmp_path / "ab" / "ablation.json", {"strategies": []})
    _jsonl(tmp_path / "run" / "metrics.jsonl", [{"step": 5, "epoch": 0, "split": "train", "loss": 2.0}], tail="garbage\n")
    (tmp_path / "run" / "cost.json").write_text("[]", encoding="utf-8")
    _json(tmp_path / "ex" / "summary.json", {"images": [{"name": "x", "folder": "x"}]})
    _json(tmp_path / "ex" / "x" / "explanation.json", {"caption": "a", "panels": ["a"], "files": {"overlays": ["overlays/00_a.png"]}})
    _json(tmp_path / "gr" / "grounding.json", {"summary": {}})
    rep = collect([tmp_path])
    out = build_report(rep, tmp_path / "report")
    text = " ".join(rep.notes)
    for needle in ("comparison.json", "ablation.json", "overlay listed", "grounding.json", "malformed line"):
        assert needle in text
    assert rep.training and rep.training[0]["train_loss"] == [[5.0, 2.0]]
    assert out["html"].is_file() and out["markdown"].is_file()


def test_ablation_formats(tmp_path: Path) -> None:
    r = _Reader()
    _json(tmp_path / "a" / "ablation.json", {
        "full": {"CIDEr": 0.5, "CIDEr_ci_low": 0.4, "CIDEr_ci_high": 0.6, "trainable_params": 100,
                 "seconds_per_epoch": 10, "train_seconds": 30, "peak_memory_mb": 2.0},
        "lora": {"CIDEr": 0.4, "trainable_params": 5, "cost": {"train_seconds": 15}}})
    ab = parse_ablation(r, tmp_path / "a", "a")
    assert ab is not None and [x["strategy"] for x in ab["rows"]] == ["full", "lora"]
    full, lora = ab["rows"]
    assert full["metrics"]["CIDEr"] == {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "p_value": None}
    assert full["cost"]["peak_memory"] == 2e6 and full["cost"]["time_per_epoch"] == 10
    assert lora["cost"]["relative_time"] == 0.5  # computed from total time against full
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ablation.csv").write_text(
        "strategy,metric,value,ci_low,ci_high,trainable_params,total_time\n"
        "full,CIDEr,0.5,0.4,0.6,100,30\nfull,BLEU-4,0.2,0.1,0.3,100,30\nlora,CIDEr,0.45,,,5,12\n", encoding="utf-8")
    ab = parse_ablation(r, tmp_path / "b", "b")
    assert ab is not None and ab["metrics"] == ["CIDEr", "BLEU-4"] and ab["best"]["CIDEr"] == ["full"]
    assert ab["rows"][1]["cost"] == {"trainable_params": 5.0, "total_time": 12.0, "relative_time": 0.4}


def test_embedded_image_bytes_become_a_thumbnail(tmp_path: Path) -> None:
    from medblip.reports.build import _Assets

    buf = io.BytesIO()
    Image.new("RGB", (640, 320), (200, 30, 30)).save(buf, format="JPEG")
    notes: list[str] = []
    rel = _Assets(tmp_path, notes).thumbnail({"src": None, "_bytes": buf.getvalue()}, "x/../y")
    assert rel is not None and rel.startswith("assets/img/") and ".." not in rel
    with Image.open(tmp_path / rel.removeprefix("assets/")) as im:
        assert max(im.size) == 320
    assert _Assets(tmp_path, notes).thumbnail({"src": str(tmp_path / "nope.png")}, "z") is None and notes


# -- the command ------------------------------------------------------------------------------------------
def test_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(MedblipError, match="no such run folder"):
        runner.invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], catch_exceptions=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedblipError, match="no run folders found"):
        runner.invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], catch_exceptions=False)
    _jsonl(tmp_path / "ev" / "predictions.jsonl", ROWS)
    with pytest.raises(MedblipError, match="one of the run folders"):
        runner.invoke(app, ["report", str(tmp_path / "ev"), "--out", str(tmp_path / "ev")], catch_exceptions=False)
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0 and "--words" in res.output and "--examples" in res.output


def test_reads_the_real_producers_files(tmp_path: Path) -> None:
    """metrics.json from score_predictions/write_metrics and comparison.* from write_comparison."""
    try:
        from medblip.evaluation import score_predictions, write_metrics
        from medblip.experiments.compare import Comparison, SystemResult, extract_metrics, write_comparison
    except ImportError as exc:  # the evaluation core is another part of the project
        pytest.skip(f"evaluation core not importable: {exc}")
    other = [{**r, "prediction": r["reference"]} for r in ROWS]
    results = []
    for name, rows in (("base", ROWS), ("tuned", other)):
        folder = tmp_path / "cmp" / "systems" / name
        _jsonl(folder / "predictions.jsonl", rows)
        metrics = score_predictions(rows, bootstrap=20, java=False, meteor=False)
        write_metrics(metrics, folder)
        table, diag, warns = extract_metrics(metrics)
        for v in table.values():
            v.p_value = 0.004 if name == "tuned" else None
        results.append(SystemResult(name=name, kind="model", source=f"/m/{name}", n_own=3, metrics=table,
                                    seconds_per_image=0.1, diagnostics=diag, warnings=warns, folder=folder))
    comp = Comparison(out=tmp_path / "cmp", reference="base", split="test", n_images=3,
                      metric_names=list(results[0].metrics), systems=results, excluded={"total": 0},
                      significance={"method": "bootstrap", "samples": 20, "alpha": 0.05})
    write_comparison(comp, tmp_path / "cmp")
    write_metrics(score_predictions(ROWS, bootstrap=20, java=False, meteor=False), tmp_path / "ev")
    _jsonl(tmp_path / "ev" / "predictions.jsonl", ROWS)

    rep = collect([tmp_path], examples=3)
    c = rep.comparisons[0]
    assert {"BLEU-4", "CIDEr", "modality_accuracy"} <= set(c["metrics"]) and c["has_ci"] and c["has_p"]
    assert c["systems"][1]["metrics"]["BLEU-4"]["mark"] == "**" and c["plot"] is not None
    assert "collapsed" in c["diagnostics"]
    ev = rep.comparisons[1]
    assert [g["name"] for g in ev["groups"]] == ["caption", "clinical"]
    assert ev["systems"][0]["metrics"]["CIDEr"]["ci_low"] is not None
    assert {s["name"] for s in rep.systems} == {"base", "tuned", "ev"}
    out = build_report(rep, tmp_path / "report")
    assert (tmp_path / "report" / "assets" / "comparison_0.png").is_file() and out["html"].is_file()
