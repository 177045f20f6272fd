"""BLEURT: tiny checkpoints in the format users download give the scores of the PyTorch BLEURT port.

``tests/data/bleurt`` holds two tiny random BLEURT checkpoints written by the ``bleurt-pytorch`` port
itself (a SentencePiece one with BLEURT-20's narrow input embeddings, a WordPiece BERT one) and what the
port computed on them (``make_tiny_bleurt.py`` regenerates both; the port needs transformers 4.x, so it
cannot run here). Whether a correct caption outscores a shuffled one needs the real BLEURT weights,
which cannot be downloaded here: that is not tested.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from medblip.evaluation import compare_systems, score_predictions
from medblip.evaluation.bleurt import encode_pair, load_bleurt, score_pairs, truncate_pair
from medblip.evaluation.tokenization import imageclef_preprocess

DATA = Path(__file__).parent / "data" / "bleurt"
EXPECTED = json.loads((DATA / "expected_scores.json").read_text(encoding="utf-8"))
CHECKPOINTS = ["tiny-bleurt-sp", "tiny-bleurt-wordpiece"]


def _checkpoint(name: str) -> str:
    if name.endswith("-sp"):
        pytest.importorskip("sentencepiece", reason="needs the imageclef extra (pip install 'medblip[imageclef]')")
    return str(DATA / name)


def _rows(refs: list, preds: list[str]) -> list[dict]:
    return [{"id": f"i{k}", "reference": r, "prediction": p} for k, (r, p) in enumerate(zip(refs, preds, strict=True))]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_scores_equal_the_port_through_score_predictions(name: str) -> None:
    model, expected = _checkpoint(name), EXPECTED[name]
    result = score_predictions(_rows(expected["references"], expected["candidates"]), bootstrap=50, java=False,
                               metrics="bleurt", models={"bleurt": model})
    assert set(result["metrics"]) == {"BLEURT"} and not result.get("unavailable")
    assert result["per_image"]["BLEURT"] == pytest.approx(expected["scores"], abs=1e-6)
    entry = result["metrics"]["BLEURT"]
    assert entry["value"] == pytest.approx(np.mean(expected["scores"]), abs=1e-6)
    assert entry["ci_low"] < entry["value"] < entry["ci_high"]
    info = result["model_metrics"]["BLEURT"]
    rembert = name.endswith("-sp")
    assert info["model"] == model and info["revision"] is None  # a local folder has no commit
    assert info["architecture"] == ("RemBertForSequenceClassification" if rembert else "BertForSequenceClassification")
    assert info["tokenizer"] == ("sentencepiece" if rembert else "wordpiece")
    assert info["max_length"] == expected["max_length"] and info["versions"]["transformers"]
    assert result["settings"]["models"] == {"bleurt": model}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_token_ids_and_float64_scores_equal_the_port(name: str) -> None:
    model, expected = _checkpoint(name), EXPECTED[name]
    bleurt = load_bleurt.__wrapped__(model, "cpu")  # a private copy: it is switched to float64 below
    for ref, cand, ids, types in zip(expected["references"], expected["candidates"], expected["input_ids"],
                                     expected["token_type_ids"], strict=True):
        assert encode_pair(bleurt, ref, cand) == (ids, types)
    assert max(len(ids) for ids in expected["input_ids"]) == expected["max_length"]  # the long pair was cut
    bleurt.model.double()
    scores = score_pairs(bleurt, expected["references"], expected["candidates"], batch_size=4)
    assert scores == pytest.approx(expected["scores_float64"], abs=1e-9)


def test_truncation_is_transformers_longest_first() -> None:
    from transformers import BertTokenizer

    model = _checkpoint("tiny-bleurt-wordpiece")
    bleurt, tok = load_bleurt(model, "cpu"), BertTokenizer.from_pretrained(model)
    ref, cand = "chest radiograph with a large left pleural effusion", "ct of the chest shows a nodule"
    for budget in (4, 9, 10, 11, 17, 25, 200):  # the longer side first, then both in turn (ties: the candidate)
        ids, types = encode_pair(dataclasses.replace(bleurt, max_length=budget), ref, cand)
        enc = tok(ref, cand, truncation="longest_first", max_length=budget)
        assert ids == enc["input_ids"] and types == enc["token_type_ids"]
    assert truncate_pair([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])
    assert truncate_pair([1, 2, 3, 4, 5], [6], 3) == ([1, 2], [6])


def test_several_references_score_the_best_and_imageclef_preprocesses() -> None:
    model = _checkpoint("tiny-bleurt-wordpiece")
    refs = [["Chest radiograph: 2 nodules.", "axial ct of the chest shows a small nodule"],
            ["T2-weighted MRI of the brain."], ["..."]]
    preds = ["CT of the chest, 1 nodule", "brain mri", "!"]  # the last: both empty once preprocessed
    result = score_predictions(_rows(refs, preds), bootstrap=0, java=False, metrics="bleurt",
                               models={"bleurt": model}, imageclef=True)
    bleurt = load_bleurt(model, "cpu")
    clean = [imageclef_preprocess(p) for p in preds]
    first = score_pairs(bleurt, [imageclef_preprocess(r) for r in refs[0]], [clean[0]] * 2)
    second = score_pairs(bleurt, [imageclef_preprocess(refs[1][0])], [clean[1]])
    assert first[0] != pytest.approx(first[1], abs=1e-3)  # the max picks one of two different scores
    # both empty: the evaluator has no rule for BLEURT (unlike BERTScore's 1), the model scores the pair
    empty = score_pairs(bleurt, [""], [""])
    assert result["per_image"]["BLEURT"] == pytest.approx([first.max(), second[0], empty[0]], abs=1e-6)  # float32


def test_paired_tests_cover_bleurt() -> None:
    model = _checkpoint("tiny-bleurt-wordpiece")
    refs = EXPECTED["tiny-bleurt-wordpiece"]["references"][:5] * 3
    good = _rows(refs, refs)
    bad = _rows(refs, ["pelvis"] * len(refs))
    out = compare_systems(bad, good, names=("bad", "good"), n_resamples=200, java=False, metrics="bleurt",
                          models={"bleurt": model})["metrics"]["BLEURT"]
    assert out["p_value"] is not None and out["difference"] == pytest.approx(out["b"] - out["a"])


def test_a_missing_or_wrong_checkpoint_is_one_line_and_the_rest_is_computed(tmp_path: Path) -> None:
    from huggingface_hub import try_to_load_from_cache

    rows = _rows(["a small nodule", "a cyst"], ["nodule", "cyst"])
    if not isinstance(try_to_load_from_cache("lucadiliello/BLEURT-20-D12", "config.json"), str):
        result = score_predictions(rows, bootstrap=0, java=False, metrics="coco,bleurt")
        line = result["unavailable"]["BLEURT"]
        assert line.startswith("BLEURT not computed: cannot load model 'lucadiliello/BLEURT-20-D12'")
        assert "huggingface-cli download lucadiliello/BLEURT-20-D12" in line and "\n" not in line
        assert "BLEU-1" in result["metrics"] and line in result["warnings"]
    # a BERT classifier is not a BLEURT checkpoint: said so, not scored with random weights
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = score_predictions(rows, bootstrap=0, java=False, metrics="coco,bleurt", models={"bleurt": str(tmp_path)})
    assert "model_type 'bert', not 'bleurt'" in result["unavailable"]["BLEURT"]
    assert "--metric-model bleurt=DIR" in result["unavailable"]["BLEURT"] and "BLEU-1" in result["metrics"]


@pytest.mark.slow
def test_the_default_model_from_the_hub_cache_offline_with_its_revision(tmp_path: Path) -> None:
    """``medblip score --metrics bleurt`` with no model named reads ``lucadiliello/BLEURT-20-D12`` from the
    Hugging Face cache (here a cache holding the tiny checkpoint under that id), offline, and records the
    snapshot's commit in metrics.json."""
    import os
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--lucadiliello--BLEURT-20-D12"
    shutil.copytree(DATA / "tiny-bleurt-wordpiece", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    expected = EXPECTED["tiny-bleurt-wordpiece"]
    pred = tmp_path / "predictions.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in _rows(expected["references"], expected["candidates"])))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "medblip", "score", str(pred), "--metrics", "bleurt", "--bootstrap",
                           "20", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    info = data["model_metrics"]["BLEURT"]
    assert info["model"] == "lucadiliello/BLEURT-20-D12" and info["revision"] == commit
    assert data["per_image"]["BLEURT"] == pytest.approx(expected["scores"], abs=1e-6)


def test_progress_counts_every_pair_and_shows_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """BLEURT takes minutes on a CPU for a few thousand captions: score_pairs reports each batch, and
    scoring with progress on shows a bar (on stderr; stdout stays the command's)."""
    model, expected = _checkpoint("tiny-bleurt-wordpiece"), EXPECTED["tiny-bleurt-wordpiece"]
    seen: list[int] = []
    scores = score_pairs(load_bleurt(model, "cpu"), expected["references"], expected["candidates"], batch_size=2,
                         progress=seen.append)
    assert sum(seen) == len(scores) == len(expected["references"]) and max(seen) <= 2
    capsys.readouterr()
    # other pairs than the tests above score, so that medblip's result cache cannot answer
    score_predictions(_rows(expected["references"], expected["candidates"][::-1]), bootstrap=0, java=False,
                      metrics="bleurt", models={"bleurt": model}, progress=True)
    captured = capsys.readouterr()
    assert "BLEURT" in captured.err and "BLEURT" not in captured.out
