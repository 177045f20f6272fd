"""score_predictions / compare_systems / paired_test, the file readers and writers, and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medblip.cli  # noqa: F401  (the app and its command modules)
import medblip.cli.score_cmd  # noqa: F401  (registers score and concepts)
from medblip.cli.app import app
from medblip.errors import ConfigError, DataError
from medblip.evaluation import (
    compare_systems,
    metrics_markdown,
    paired_test,
    parse_rows,
    read_predictions,
    score_predictions,
    write_metrics,
)
from medblip.evaluation import tokenization as tokenization_module
from medblip.evaluation.caption_metrics import pycocoevalcap_scores
from medblip.evaluation.metric_sets import ScoringConfig, parse_model_options, select_metrics
from medblip.evaluation.tokenization import java_available, ptb_tokenize

CAPTIONS = [
    "Axial CT of the chest shows a spiculated nodule in the right upper lobe.",
    "T2-weighted MRI of the brain: cyst in the left temporal lobe.",
    "Chest radiograph with a large left pleural effusion.",
    "Ultrasound of the thyroid shows a hypoechoic nodule in the right lobe.",
    "CT angiography of the head: aneurysm of the left middle cerebral artery.",
    "Pelvic radiograph: displaced fracture of the right femoral neck.",
    "Contrast-enhanced CT of the abdomen shows a cyst in the left kidney.",
    "Brain MRI (FLAIR): no acute intracranial abnormality.",
]
WEAK = ["ct scan", "mri of the head", "x-ray", "ultrasound image", "angiography", "x-ray of the pelvis",
        "ct of the abdomen", "mri"]


def _rows(preds: list[str]) -> list[dict[str, str]]:
    return [{"id": f"img{i}", "reference": ref, "prediction": p} for i, (ref, p) in enumerate(zip(CAPTIONS, preds, strict=True))]


def test_score_predictions_identical_predictions_score_the_maximum() -> None:
    result = score_predictions(_rows(CAPTIONS), bootstrap=100, java=False)
    m = result["metrics"]
    assert result["n_images"] == len(CAPTIONS)
    assert m["BLEU-4"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert m["ROUGE-L"]["value"] == pytest.approx(1.0)
    for name in ("modality_accuracy", "region_f1", "finding_f1", "laterality_agreement"):
        assert m[name]["value"] == 1.0, name
        assert m[name]["group"] == "clinical"
    assert m["modality_accuracy"]["support"] == len(CAPTIONS)
    assert "METEOR" not in m  # no Java requested
    assert result["settings"]["tokenizer"].startswith("simple")
    json.dumps(result)


def test_score_predictions_intervals_degeneration_and_seed() -> None:
    result = score_predictions(_rows(WEAK), bootstrap=200, seed=3, java=False)
    for name, entry in result["metrics"].items():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    assert result["metrics"]["BLEU-4"]["value"] < 0.2
    assert result["degeneration"]["collapsed"] is False
    assert result == score_predictions(_rows(WEAK), bootstrap=200, seed=3, java=False)
    collapsed = score_predictions(_rows(["ct scan of the chest"] * len(CAPTIONS)), bootstrap=0, java=False)
    assert collapsed["degeneration"]["collapsed"]
    assert any("COLLAPSE" in w for w in collapsed["warnings"])
    assert collapsed["metrics"]["CIDEr"]["ci_low"] is None  # bootstrap=0: no interval


def test_without_java_a_clear_warning_and_the_other_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenization_module, "java_available", lambda: False)
    monkeypatch.setattr(tokenization_module, "_warned_no_java", False)
    with pytest.warns(tokenization_module.MetricWarning, match="Java not found"):
        result = score_predictions(_rows(WEAK), bootstrap=10)
    assert any("Java not found" in w for w in result["warnings"])
    assert "METEOR" not in result["metrics"] and "CIDEr" in result["metrics"]
    assert "not PTB" in result["settings"]["tokenizer"]
    with pytest.raises(ConfigError, match="Java is required"):
        score_predictions(_rows(WEAK), bootstrap=0, java=True)


@pytest.mark.skipif(not java_available(), reason="no Java runtime: the PTB tokenizer needs one")
def test_with_java_numbers_equal_pycocoevalcap_on_ptb_tokens() -> None:
    result = score_predictions(_rows(WEAK), bootstrap=0, java=True, meteor=False)
    assert result["settings"]["tokenizer"] == "ptb"
    tok = ptb_tokenize({**{("r", i): [c] for i, c in enumerate(CAPTIONS)}, **{("p", i): [p] for i, p in enumerate(WEAK)}})
    expected = pycocoevalcap_scores([tok[("r", i)] for i in range(8)], [tok[("p", i)][0] for i in range(8)])
    for name, value in expected.items():
        assert result["metrics"][name]["value"] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_imageclef_preprocessing_option() -> None:
    rows = [{"id": "a", "reference": "Mass of 5 cm.", "prediction": "mass of 7 cm"}]
    plain = score_predictions(rows, bootstrap=0, java=False)
    clef = score_predictions(rows, bootstrap=0, java=False, imageclef=True)
    assert clef["metrics"]["BLEU-4"]["value"] == pytest.approx(1.0, abs=1e-6)  # both numbers become 'number'
    assert plain["metrics"]["BLEU-4"]["value"] < 0.5
    assert clef["settings"]["imageclef"] is True


def test_spice_is_reported_not_fatal() -> None:
    result = score_predictions(_rows(WEAK), bootstrap=0, java="auto", meteor=False, spice=True)
    assert "SPICE" not in result["metrics"]
    assert any(w.startswith("SPICE skipped") for w in result["warnings"])


def test_a_missing_metric_package_is_reported_and_the_rest_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bert_score", None)  # makes 'import bert_score' fail
    result = score_predictions(_rows(WEAK), bootstrap=0, java=False, metrics="coco,bertscore,bleurt")
    assert "BLEU-4" in result["metrics"] and "BERTScore-F1" not in result["metrics"]
    assert "medblip[imageclef]" in result["unavailable"]["BERTScore-F1"]
    assert result["unavailable"]["BLEURT"].startswith("BLEURT not computed")  # its model is not here
    assert "finding_f1" not in result["metrics"]  # clinical was not asked for
    assert [w for w in result["warnings"] if "BERTScore" in w] == [result["unavailable"]["BERTScore-F1"]]
    assert "| BERTScore-F1 | not available" in metrics_markdown(result)


def test_row_validation_errors() -> None:
    with pytest.raises(DataError, match="row 1: missing field 'prediction'"):
        parse_rows([{"id": 1, "reference": "x"}])
    with pytest.raises(DataError, match="'reference' must be a string or a non-empty list"):
        parse_rows([{"id": 1, "reference": [], "prediction": "x"}])
    with pytest.raises(DataError, match="duplicate id '1'"):
        parse_rows([{"id": 1, "reference": "x", "prediction": "y"}, {"id": "1", "reference": "x", "prediction": "y"}])
    with pytest.raises(DataError, match="no predictions"):
        parse_rows([])


def test_read_predictions_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "reference": "x", "prediction": "y"}\n\n{"id": "b", "reference": "x"\n')
    with pytest.raises(DataError, match=r"p.jsonl:3: invalid JSON"):
        read_predictions(path)
    path.write_text('{"id": "a", "reference": "x", "prediction": "y"}\n{"id": "b", "reference": "x"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: missing field 'prediction'"):
        read_predictions(path)


def test_compare_systems_small_p_for_better_large_for_identical() -> None:
    good, weak = _rows(CAPTIONS), _rows(WEAK)
    better = compare_systems(weak, good, names=("weak", "good"), method="both", n_resamples=300, java=False)
    assert better["systems"] == ["weak", "good"]
    for name in ("BLEU-4", "ROUGE-L", "CIDEr", "finding_f1"):
        entry = better["metrics"][name]
        assert entry["difference"] > 0, name
        assert entry["p_bootstrap"] < 0.05 and entry["p_randomization"] < 0.05, name
    same = paired_test(weak, list(reversed(weak)), method="randomization", n=200, java=False)
    for name, entry in same.items():
        assert entry["difference"] == pytest.approx(0.0, abs=1e-12), name
        assert entry["p_value"] == 1.0, name
    unknown = paired_test(weak, weak, test_metrics=["BLEU-4", "nope"], n=20, java=False)
    assert unknown["nope"]["p_value"] is None and unknown["BLEU-4"]["p_value"] == 1.0


def test_compare_systems_needs_the_same_images_and_references() -> None:
    with pytest.raises(DataError, match="same images"):
        compare_systems(_rows(WEAK), _rows(WEAK)[:-1], java=False, n_resamples=10)
    changed = _rows(WEAK)
    changed[0] = {**changed[0], "reference": "something else"}
    with pytest.raises(DataError, match="different references"):
        compare_systems(_rows(WEAK), changed, java=False, n_resamples=10)
    with pytest.raises(ConfigError, match="unknown paired test"):
        compare_systems(_rows(WEAK), _rows(WEAK), method="t-test", java=False)


def test_write_metrics_json_and_markdown(tmp_path: Path) -> None:
    result = score_predictions(_rows(WEAK), bootstrap=50, java=False)
    paths = write_metrics(result, tmp_path / "out", title="Weak system")
    assert json.loads(paths["json"].read_text())["metrics"]["CIDEr"]["value"] == result["metrics"]["CIDEr"]["value"]
    md = paths["markdown"].read_text()
    assert md.startswith("# Weak system")
    assert "| BLEU-4 |" in md and "| modality_accuracy |" in md and "Degeneration diagnostics" in md
    assert md == metrics_markdown(result, title="Weak system")


# -- choosing metrics --------------------------------------------------------------------------------------
def test_metric_sets_expand_and_bad_names_fail_with_the_known_ones() -> None:
    assert select_metrics(None).parts == ("coco", "clinical")
    clef = select_metrics("imageclef,clinical")
    assert clef.parts == ("coco", "rouge1", "bertscore", "bleurt", "clipscore", "refclipscore", "clinical")
    assert clef.imageclef_preprocessing and clef.needs_images
    assert clef.model_for("bertscore") == "microsoft/deberta-xlarge-mnli"
    assert clef.model_for("clipscore") == "openai/clip-vit-base-patch32"
    assert not select_metrics("coco,bertscore").imageclef_preprocessing
    with pytest.raises(ConfigError, match=r"--metrics: unknown metric or set 'bertscor' \(known: coco, clinical"):
        select_metrics("coco,bertscor")
    assert parse_model_options(["bertscore=/m/deberta", "CLIP=x/y"]) == {"bertscore": "/m/deberta", "clip": "x/y"}
    with pytest.raises(ConfigError, match="unknown model key 'bleu'"):
        parse_model_options(["bleu=/m"])
    with pytest.raises(ConfigError, match="expected KEY=MODEL"):
        parse_model_options(["/m/deberta"])
    assert ScoringConfig(metrics="imageclef").metrics == ["imageclef"]
    with pytest.raises(ValueError, match="unknown metric or set 'bleu'"):
        ScoringConfig(metrics=["bleu"])


def test_the_default_set_is_unchanged() -> None:
    result = score_predictions(_rows(WEAK), bootstrap=0, java=False)
    assert set(result["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "modality_accuracy",
                                      "region_f1", "finding_f1", "laterality_agreement"}
    assert "unavailable" not in result and "per_image" not in result and "model_metrics" not in result


# -- CLI ------------------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_score_writes_files_and_prints_the_table(tmp_path: Path) -> None:
    pred = tmp_path / "predictions.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in _rows(WEAK)))
    out = tmp_path / "scored"
    res = runner.invoke(app, ["score", str(pred), "--out", str(out), "--bootstrap", "30", "--no-java"])
    assert res.exit_code == 0, res.output
    assert "| CIDEr |" in res.stdout
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_images"] == len(WEAK) and data["source"] == str(pred)
    assert (out / "metrics.md").read_text().startswith("# predictions.jsonl")


def test_cli_score_bad_input_names_file_and_line(tmp_path: Path) -> None:
    pred = tmp_path / "predictions.jsonl"
    pred.write_text('{"id": "a", "reference": "x", "prediction": "y"}\n{"id": "b", "prediction": "y"}\n')
    res = runner.invoke(app, ["score", str(pred), "--no-java"])
    assert res.exit_code != 0
    assert isinstance(res.exception, DataError)
    assert f"{pred}:2: missing field 'reference'" in str(res.exception)
    assert runner.invoke(app, ["score", "--help"]).exit_code == 0


def test_cli_concepts_from_stdin_and_file(tmp_path: Path) -> None:
    text = "CT chest: no effusion.\n\nPossible left femur fracture on X-ray\n"
    res = runner.invoke(app, ["concepts"], input=text)
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 3  # one object per input line, empty lines included
    assert lines[0]["modality"] == "CT" and lines[0]["findings"] == [{"finding": "effusion", "status": "negated"}]
    assert lines[1]["modality"] is None
    assert lines[2]["laterality"] == "left" and lines[2]["findings"][0]["status"] == "uncertain"
    path = tmp_path / "captions.txt"
    path.write_text(text)
    res = runner.invoke(app, ["concepts", str(path), "--mentions"])
    assert res.exit_code == 0
    assert json.loads(res.stdout.splitlines()[0])["mentions"][0]["trigger"] == "no"
    missing = runner.invoke(app, ["concepts", str(tmp_path / "nope.txt")])
    assert isinstance(missing.exception, DataError)
