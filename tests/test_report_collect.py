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
from medblip.evaluation import extract_concepts, score_predictions, write_metrics
from medblip.reports import build_report, collect, discover
from medblip.reports.collect import (
    Clinical,
    _Reader,
    best_per_metric,
    lower_is_better,
    metric_groups,
    parse_ablation,
)
from medblip.results import (
    SCHEMA_VERSION,
    Ablation,
    ExplainedImage,
    ExplainSummary,
    Explanation,
    ExplanationFiles,
    Metric,
    ResultError,
    Scores,
    StrategyRow,
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


# -- the typed reading ------------------------------------------------------------------------------------
def _scored(folder: Path, rows: list[dict[str, Any]] = ROWS) -> dict[str, Any]:
    """An evaluation's files as evaluate writes them: predictions, metrics.json and per_image.jsonl."""
    _jsonl(folder / "predictions.jsonl", rows)
    result = score_predictions(rows, bootstrap=20, java=False, meteor=False, image_rows=True)
    write_metrics(result, folder)
    return result


def test_results_are_read_by_their_type(tmp_path: Path) -> None:
    result = _scored(tmp_path / "ev")
    scores = Scores.read(tmp_path / "ev")
    assert scores.schema_version == SCHEMA_VERSION and scores.n_images == 3
    assert scores.metrics["CIDEr"].value == result["metrics"]["CIDEr"]["value"]
    assert scores.metrics["BLEU-4"].group == "caption" and scores.metrics["modality_accuracy"].group == "clinical"
    assert Metric.model_validate({"value": None}).value is None  # a metric that could not be computed
    # a field spelt another way is an error naming the file and the key, not a guess
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    doc["metrics"]["CIDEr"] = {"score": 1.0, "ci": [0.9, 1.1]}
    _json(tmp_path / "bad" / "metrics.json", doc)
    with pytest.raises(ResultError, match=r"bad/metrics\.json: not a Scores result \(metrics\.CIDEr\.value: "):
        Scores.read(tmp_path / "bad")
    # a file of another schema version (or none) says which and what to do
    _json(tmp_path / "old" / "metrics.json", {**doc, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ResultError, match=r"schema version 2 .*run the command that wrote it again"):
        Scores.read(tmp_path / "old")


def test_a_result_that_does_not_fit_is_a_note(tmp_path: Path) -> None:
    """A flat metrics.json (the report once guessed at such files) leaves the folder's table out with a
    note; its predictions still give the examples."""
    _jsonl(tmp_path / "ev" / "predictions.jsonl", ROWS)
    _json(tmp_path / "ev" / "metrics.json", {"BLEU-4": 0.2, "n_images": 3, "clinical": {"finding_f1": {"value": 0.4}}})
    rep = collect([tmp_path], examples=2)
    assert rep.comparisons == [] and len(rep.examples) == 2
    assert any("metrics.json: result schema version None" in n for n in rep.notes)


def test_best_per_metric_and_direction() -> None:
    systems = [{"name": "a", "metrics": {"CIDEr": {"value": 1.0}, "BLEU-4": {"value": 0.3}, "val_loss": {"value": 2.0}}},
               {"name": "b", "metrics": {"CIDEr": {"value": 1.0}, "BLEU-4": {"value": 0.3}, "val_loss": {"value": 1.0}}},
               {"name": "d", "metrics": {"CIDEr": {"value": 0.5}, "BLEU-4": {"value": 0.3}}},
               {"name": "c", "metrics": {"CIDEr": {"value": None}}}]
    best = best_per_metric(systems, ["CIDEr", "BLEU-4", "val_loss"])
    # ties win together; a column where every row ties has no best
    assert best == {"CIDEr": ["a", "b"], "BLEU-4": [], "val_loss": ["b"]}


def test_best_only_among_comparable_rows() -> None:
    """A collapsed system and a system scored on other images never take the bold (issue 21.3)."""
    def system(name: str, value: float, image_set: str, collapsed: bool = False) -> dict[str, Any]:
        return {"name": name, "metrics": {"laterality_agreement": {"value": value}}, "image_set": image_set,
                "diagnostics": {"collapsed": collapsed}}

    systems = [system("collapsed", 0.53, "test-197", collapsed=True), system("full", 0.41, "test-197"),
               system("lora", 0.30, "test-197"), system("small-run", 0.90, "test-24")]
    assert best_per_metric(systems, ["laterality_agreement"]) == {"laterality_agreement": ["full"]}
    # a second system on the 24 images makes that set comparable within itself
    systems.append(system("small-run-2", 0.20, "test-24"))
    assert best_per_metric(systems, ["laterality_agreement"]) == {"laterality_agreement": ["full", "small-run"]}
    assert lower_is_better("val_loss") and lower_is_better("repeated_ngram_rate") and not lower_is_better("BLEU-4")
    groups = metric_groups(["BLEU-4", "finding_f1", "CIDEr", "BERTScore-F1"])
    assert [(g["name"], g["metrics"]) for g in groups] == [
        ("caption", ["BLEU-4", "CIDEr"]), ("clinical", ["finding_f1"]), ("embedding", ["BERTScore-F1"])]


# -- clinical terms ------------------------------------------------------------------------------------
def test_clinical_terms_agree_and_disagree() -> None:
    c = Clinical()
    ref = "Chest X-ray showing a left pleural effusion without pneumothorax."
    pred = "CT of the chest showing a right pleural effusion."
    segs = c.segments(pred, extract_concepts(pred), extract_concepts(ref))
    marked = {g["text"].lower(): g["cls"] for g in segs if g["cls"]}
    assert marked["ct"] == "disagree" and marked["right"] == "disagree"
    assert marked["chest"] == "agree" and marked["pleural effusion"] == "agree"
    assert "".join(g["text"] for g in segs) == "CT of the chest showing a right pleural effusion."
    chips = c.chips(extract_concepts("CT of the chest."), extract_concepts(ref))
    assert {x["cls"] for x in chips} >= {"disagree", "missed"}
    assert c.errors(extract_concepts("MRI of the left knee"), extract_concepts("MR image of the right knee")) == {
        "modality": False, "side": True}
    # a finding negated in both captions agrees; one the reference negates disagrees
    text = "No pneumothorax. Large pneumothorax on the left."
    segs = c.segments(text, extract_concepts(text), extract_concepts(ref))
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
    ExplainSummary(model="m", family="blip", settings={}, level="word", images=[ExplainedImage(
        name="x", folder="x", caption="a", caption_source="given", words=["a"], panels=["a"])]).write(tmp_path / "ex")
    Explanation(caption="a", caption_source="given", family="blip", model="m", tokens=["a"], token_ids=[1],
                token_logprobs=[0.0], words=["a"], word_tokens=[[0]], grid=[2, 2], image_size=[8, 8],
                input_box=[0, 0, 8, 8], settings={"method": "attention"}, level="word", panels=["a"],
                files=ExplanationFiles(grid="grid.png", token_maps="t.npy", word_maps="w.npy",
                                       overlays=["overlays/00_a.png"])).write(tmp_path / "ex" / "x")
    _json(tmp_path / "gr" / "grounding.json", {"summary": {}})
    rep = collect([tmp_path])
    out = build_report(rep, tmp_path / "report")
    text = " ".join(rep.notes)
    for needle in ("comparison.json", "ablation.json", "overlay listed", "grounding.json", "malformed line"):
        assert needle in text
    assert rep.training and rep.training[0]["train_loss"] == [[5.0, 2.0]]
    assert out["html"].is_file() and out["markdown"].is_file()


def test_ablation_is_read_as_written(tmp_path: Path) -> None:
    r = _Reader()
    cider = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "group": "caption"}
    Ablation(strategies=[
        StrategyRow(strategy="full", metrics={"CIDEr": cider}, trainable_params=100, time_per_epoch=10,
                    total_time=30, peak_memory_bytes=2e6, relative_time=1.0),
        StrategyRow(strategy="lora", metrics={"CIDEr": {**cider, "value": 0.4}}, trainable_params=5, total_time=15,
                    relative_time=0.5)]).write(tmp_path / "a")
    ab = parse_ablation(r, tmp_path / "a", "a")
    assert ab is not None and [x["strategy"] for x in ab["rows"]] == ["full", "lora"]
    full, lora = ab["rows"]
    assert {k: full["metrics"]["CIDEr"][k] for k in ("value", "ci_low", "ci_high", "p_value")} == {
        "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "p_value": None}
    assert full["cost"]["peak_memory"] == 2e6 and full["cost"]["time_per_epoch"] == 10
    assert lora["cost"] == {"trainable_params": 5, "total_time": 15.0, "relative_time": 0.5}
    assert ab["best"]["CIDEr"] == ["full"] and ab["headline"] == "CIDEr"
    # other spellings of a field (what the report once accepted) are refused, naming the field
    doc = json.loads((tmp_path / "a" / "ablation.json").read_text())
    doc["strategies"][0]["seconds_per_epoch"] = doc["strategies"][0].pop("time_per_epoch")
    _json(tmp_path / "b" / "ablation.json", doc)
    assert parse_ablation(r, tmp_path / "b", "b") is None
    assert any("strategies.0.seconds_per_epoch" in n for n in r.notes)
    # an ablation.csv is a table for people, not a result: it marks no ablation folder
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ablation.csv").write_text("strategy,metric,value\nfull,CIDEr,0.5\n", encoding="utf-8")
    assert not [f for f in discover([tmp_path / "c"]) if f.kind == "ablation"]


def test_embedded_image_bytes_become_a_thumbnail(tmp_path: Path) -> None:
    from medblip.reports.build import THUMBNAIL_PX, _Assets

    buf = io.BytesIO()
    Image.new("RGB", (640, 320), (200, 30, 30)).save(buf, format="JPEG")
    notes: list[str] = []
    rel = _Assets(tmp_path, notes).thumbnail({"src": None, "_bytes": buf.getvalue()}, "x/../y")
    assert rel is not None and rel.startswith("assets/img/") and ".." not in rel
    with Image.open(tmp_path / rel.removeprefix("assets/")) as im:
        assert max(im.size) == THUMBNAIL_PX and im.format == "JPEG"  # downscaled: the page embeds it
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
    """metrics.json / per_image.jsonl from score_predictions/write_metrics and comparison.* from write_comparison."""
    from medblip.experiments.compare import write_comparison
    from medblip.results import ComparedSystem, Comparison, Excluded, Significance

    other = [{**r, "prediction": r["reference"]} for r in ROWS]
    results = []
    for name, rows in (("base", ROWS), ("tuned", other)):
        folder = tmp_path / "cmp" / "systems" / name
        _scored(folder, rows)
        scores = Scores.read(folder)
        for v in scores.metrics.values():
            v.p_value = 0.004 if name == "tuned" else None
        results.append(ComparedSystem(name=name, kind="model", source=f"/m/{name}", n_predictions=3,
                                      metrics=scores.metrics, seconds_per_image=0.1, diagnostics=scores.degeneration,
                                      warnings=scores.warnings, folder=str(folder)))
    comp = Comparison(out=str(tmp_path / "cmp"), reference="base", split="test", n_images=3,
                      metrics=list(results[0].metrics), systems=results, excluded=Excluded(),
                      significance=Significance(method="bootstrap", samples=20, alpha=0.05, bootstrap=20))
    write_comparison(comp, tmp_path / "cmp")
    _scored(tmp_path / "ev")

    rep = collect([tmp_path], examples=3)
    c = rep.comparisons[0]
    assert {"BLEU-4", "CIDEr", "modality_accuracy"} <= set(c["metrics"]) and c["has_ci"] and c["has_p"]
    assert c["systems"][1]["metrics"]["BLEU-4"]["mark"] == "**" and c["plot"] is not None
    assert "collapsed" in c["diagnostics"]
    ev = rep.comparisons[1]
    assert [g["name"] for g in ev["groups"]] == ["caption", "clinical"]
    assert ev["systems"][0]["metrics"]["CIDEr"]["ci_low"] is not None
    assert {s["name"] for s in rep.systems} == {"base", "tuned", "ev"}
    # the per-image scores are the evaluation's, not computed again
    assert not any("not scored yet" in n for n in rep.notes)
    assert rep.failures["score"] == "CIDEr"
    out = build_report(rep, tmp_path / "report")
    assert (tmp_path / "report" / "assets" / "comparison_0.png").is_file() and out["html"].is_file()
