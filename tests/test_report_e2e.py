"""``medblip report`` end to end: realistic run folders -> HTML/Markdown/JSON, checked by parsing the
HTML and by opening it in headless Chromium (screenshot, console errors, every image loads).

The fixture folders hold what the producers write, through the same result types
(:mod:`medblip.results`; metric values are made up): evaluate/compare: predictions.jsonl, metrics.json,
per_image.jsonl (computed by the evaluation's own function), comparison.json; train: metrics.jsonl,
cost.json, result.json, config.resolved.yaml; explain: summary.json, explanation.json, overlays;
grounding.json; ablation.json; the dataset summary of ``medblip data validate``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import medblip.cli.report_cmd  # noqa: F401  (registers the command before cli/__init__ imports it)
from medblip.cli.app import app
from medblip.evaluation import degeneration_report
from medblip.evaluation.per_image import image_scores
from medblip.results import (
    Ablation,
    ComparedSystem,
    Comparison,
    Excluded,
    ExplainSummary,
    Explanation,
    ExplanationFiles,
    GenerationTime,
    Grounding,
    Scores,
    Significance,
    StrategyCounts,
    StrategyRow,
    TrainCost,
    TrainResult,
)

runner = CliRunner()

# The module fixture builds every kind of run folder and renders the report (several seconds).
pytestmark = pytest.mark.slow

IDS = [f"ROCOv2_2023_test_{k:06d}" for k in range(1, 9)]
REFS = [
    "Chest X-ray showing a right lower lobe consolidation.",
    "Axial CT of the chest with a left upper lobe nodule.",
    "MRI of the brain showing a right frontal mass.",
    "Ultrasound of the liver with a small cyst.",
    "Chest CT demonstrating a left pleural effusion.",
    "Abdominal CT showing a right renal cyst.",
    "X-ray of the left knee without fracture.",
    "Axial MRI of the lumbar spine with a disc herniation.",
]
SYSTEMS = {
    "zero-shot": [
        "a black and white photo of a chest", "a ct scan of a body", "a picture of a head",
        "an x-ray of the abdomen", "a ct scan of the chest", "a photo of a kidney", "an x-ray of a leg",
        "a picture of a spine",
    ],
    "finetuned": [
        "Chest X-ray showing a right lower lobe consolidation.",
        "Axial CT of the chest with a right upper lobe nodule.",  # wrong side
        "MRI of the brain showing a right frontal mass.",
        "CT of the liver with a small cyst.",  # wrong modality
        "Chest CT demonstrating a left pleural effusion and a nodule.",
        "Abdominal CT showing a left renal cyst.",  # wrong side
        "X-ray of the left knee without fracture.",
        "MRI of the spine.",
    ],
    "api": [
        "Chest radiograph with right lower lobe consolidation.", "CT chest: left upper lobe nodule.",
        "Brain MRI with a right frontal mass.", "Liver ultrasound showing a cyst.",
        "CT of the chest showing pleural effusion on the left.", "CT abdomen with a right kidney cyst.",
        "Radiograph of the left knee, no fracture.", "MRI lumbar spine with disc herniation.",
    ],
}
# score_predictions' metric names (medblip.evaluation: COCO_METRICS + CLINICAL_METRICS)
METRICS = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "modality_accuracy", "region_f1", "finding_f1",
           "laterality_agreement"]
CLINICAL = {"modality_accuracy", "region_f1", "finding_f1", "laterality_agreement"}


def _draw(path: Path, seed: int, size: int = 96) -> Path:
    """A small greyscale 'scan': body ellipse, organ shadows and one bright lesion."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (size, size), 8)
    d = ImageDraw.Draw(img)
    d.ellipse([8, 6, size - 8, size - 6], fill=int(rng.integers(70, 110)))
    d.ellipse([20, 20, size // 2 - 2, size - 22], fill=int(rng.integers(30, 50)))
    d.ellipse([size // 2 + 2, 20, size - 20, size - 22], fill=int(rng.integers(30, 50)))
    x, y = (int(v) for v in rng.integers(28, size - 28, 2))
    d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=235)
    arr = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-10, 10, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


def _overlay(path: Path, seed: int) -> Path:
    base = Image.open(_draw(path, seed)).convert("RGB")
    heat = Image.new("RGB", base.size, (255, 40, 0))
    mask = Image.new("L", base.size, 0)
    ImageDraw.Draw(mask).ellipse([30, 30, 66, 66], fill=150)
    Image.composite(heat, base, mask).save(path)
    return path


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _metrics(rng: np.random.Generator, level: float) -> dict[str, Any]:
    """The ``metrics`` block of score_predictions' result: value, CI and group per metric."""
    out: dict[str, Any] = {}
    for m in METRICS:
        scale = 10.0 if m == "CIDEr" else 1.0
        v = float(np.clip(level + rng.normal(0, 0.05), 0.01, 0.99)) * scale
        out[m] = {"value": v, "ci_low": v - 0.05 * scale, "ci_high": v + 0.05 * scale,
                  "group": "clinical" if m in CLINICAL else "caption"}
    return out


def _degeneration(collapsed: bool) -> dict[str, Any]:
    if collapsed:  # the evaluation's own check on a model that writes one caption for every image
        return degeneration_report(["a picture of a chest"] * 8, REFS).model_dump()
    return {"n_captions": 8, "distinct_caption_fraction": 0.25 if collapsed else 1.0,
            "most_common_caption": "a picture of a chest", "most_common_share": 0.5 if collapsed else 0.125,
            "distinct_1": 0.4, "distinct_2": 0.6, "repeated_ngram_rate": 0.02, "token_run_share": 0.0,
            "empty_share": 0.0, "mean_length": 6.5, "mean_reference_length": 9.1, "length_ratio": 0.71,
            "collapsed": collapsed, "warnings": []}


def build_runs(root: Path) -> dict[str, Path]:
    """A demo-like folder: data/, dataset.json, compare/, evaluate/, train/{full,decoder_only}/,
    explain/ (+ grounding.json), ablation/. Returns the main paths."""
    rng = np.random.default_rng(0)
    data = root / "data"
    lines = ["ID,Caption"] + [f'{i},"{c}"' for i, c in zip(IDS, REFS, strict=True)]
    (data / "test").mkdir(parents=True)
    (data / "test_captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for k, i in enumerate(IDS[:-1]):  # the last image comes from the rows' "image" field instead
        _draw(data / "test" / f"{i}.png", k)
    extra = _draw(root / "elsewhere" / "last.png", 99)
    demo = root / "demo"

    # dataset summary, written by the real `medblip data validate` code
    from medblip.data import load_dataset
    from medblip.data.validate import validate_dataset

    ds = load_dataset(data, require_images=False)
    _write_json(demo / "dataset.json", validate_dataset(ds, sample=4))

    gen = {"num_beams": 3, "max_new_tokens": 40, "min_new_tokens": 0, "do_sample": False}

    def rows(name: str, model: str, *, with_ref: bool = True) -> list[dict[str, Any]]:
        out = []
        for k, (i, ref, pred) in enumerate(zip(IDS, REFS, SYSTEMS[name], strict=True)):
            row = {"id": i, "split": "test", "prediction": pred, "model": model, "family": "blip",
                   "generation": gen, "gen_seconds": 0.05 + 0.01 * k}
            if with_ref:
                row["reference"] = ref
            if k == len(IDS) - 1:
                row["image"] = str(extra)
            out.append(row)
        return out

    def scored(folder: Path, name: str, level: float, collapsed: bool = False, **what: Any) -> Scores:
        """The files scoring writes: metrics.json (synthetic metric values) and per_image.jsonl."""
        scores = Scores(n_images=8, metrics=_metrics(rng, level), degeneration=_degeneration(collapsed),
                        warnings=_degeneration(collapsed)["warnings"], **what)
        scores.write(folder)
        _write_jsonl(folder / "per_image.jsonl", image_scores(IDS, [[r] for r in REFS], SYSTEMS[name]))
        return scores

    # compare folder: two model systems and one predictions-file system
    comp = demo / "compare"
    api_file = root / "api_predictions.jsonl"
    _write_jsonl(api_file, [{"id": i, "prediction": p} for i, p in zip(IDS, SYSTEMS["api"], strict=True)])
    systems = []
    # the zero-shot model is a plain model folder; the fine-tuned one a checkpoint of the training run below
    sources = {"zero-shot": root / "models" / "zero-shot", "finetuned": demo / "train" / "full" / "checkpoints" / "best",
               "api": api_file}
    (root / "models" / "zero-shot").mkdir(parents=True)
    (root / "models" / "zero-shot" / "config.json").write_text("{}")
    choice = {"settings": {"metrics": ["coco", "clinical", "bertscore", "bleurt"],
                           "metric_parts": ["coco", "clinical", "bertscore", "bleurt"], "imageclef": False},
              "model_metrics": {"BERTScore-F1": {"model": "microsoft/deberta-xlarge-mnli", "revision": "8a3c1f2e9d7b6a5f4e3d",
                                                 "num_layers": 40}},
              "unavailable": {"BLEURT": "BLEURT-20 needs TensorFlow; not available in medblip (see the README)"}}
    for name, level, kind in (("zero-shot", 0.15, "model"), ("finetuned", 0.6, "model"), ("api", 0.55, "predictions")):
        folder = comp / "systems" / name
        if kind == "model":
            _write_jsonl(folder / "predictions.jsonl", rows(name, str(sources[name])))
        scores = scored(folder, name, level, collapsed=name == "zero-shot", **choice)
        for m, v in scores.metrics.items():
            v.p_value = None if name == "zero-shot" else (0.0004 if name == "finetuned" else 0.03 if m != "CIDEr" else 0.4)
        systems.append(ComparedSystem(
            name=name, kind=kind, source=str(sources[name]),
            family="blip" if kind == "model" else None, generation=gen if kind == "model" else None,
            n_predictions=8, seconds_per_image=0.08, metrics=scores.metrics, diagnostics=scores.degeneration,
            warnings=scores.warnings, folder=str(folder)))
    # what `medblip compare` notes: the data it loaded and (on a rerun) the predictions it resumed from
    notes = [f"rocov2 at {data}: 8 records kept (test 8); 0 dropped",
             f"finetuned: {comp}/systems/finetuned/predictions.jsonl: resuming - 8 of 8 image(s) already predicted, 0 to go",
             "finetuned and api disagree on 2 image(s)' modality"]
    Comparison(out=str(comp), reference="zero-shot", split="test", data=str(data), n_images=8, metrics=METRICS,
               significance=Significance(method="bootstrap", samples=1000, alpha=0.05, bootstrap=1000),
               excluded=Excluded(), systems=systems, notes=notes).write(comp)
    _draw(comp / "comparison.png", 5, size=160)

    # a standalone evaluate folder (references in the rows, images through its data)
    ev = demo / "evaluate-finetuned"
    _write_jsonl(ev / "predictions.jsonl", rows("finetuned", "/models/finetuned"))
    scored(ev, "finetuned", 0.6, model="/models/finetuned", data=str(data), split="test", format="auto",
           generation_time=GenerationTime(seconds_per_image=0.08, images_timed=8))
    # and one scored on other images (a 4-image subset): never ranked against the 8-image rows
    small = demo / "evaluate-small"
    _write_jsonl(small / "predictions.jsonl", rows("api", "/models/small")[:4])
    Scores(n_images=4, metrics=_metrics(rng, 0.95), degeneration=_degeneration(False), data=str(data), split="test",
           model="/models/small").write(small)
    _write_jsonl(small / "per_image.jsonl", image_scores(IDS[:4], [[r] for r in REFS[:4]], SYSTEMS["api"][:4]))

    # training runs
    for strategy, trainable in (("full", 1_250_000), ("decoder_only", 610_000)):
        run = demo / "train" / strategy
        mrows: list[dict[str, Any]] = [{"step": 0, "kind": "strategy", "strategy": strategy,
                                        "trainable_params": trainable, "frozen_params": 1_250_000 - trainable}]
        mrows.append({"step": 0, "epoch": 0, "split": "validation", "val_loss": 3.4, "val_images": 16, "CIDEr": 0.05})
        step = 0
        for epoch in range(3):
            for _ in range(4):
                step += 5
                mrows.append({"time": 1_795_794_646.4 + step, "step": step, "epoch": epoch, "split": "train",
                              "loss": 4.0 * np.exp(-step / 30) + 0.5 + 0.1 * rng.random(), "lr": 1e-4})
            mrows.append({"step": step, "epoch": epoch, "kind": "epoch_cost", "epoch_cost": None,
                          "train_seconds": 12.5, "eval_seconds": 2.0, "images": 160, "images_per_second": 12.8})
            mrows.append({"time": 1_795_794_650.1 + step, "step": step, "epoch": epoch, "split": "validation",
                          "val_loss": 3.0 - 0.6 * epoch,
                          "val_images": 16, "BLEU-4": 0.05 + 0.05 * epoch, "CIDEr": 0.2 + 0.3 * epoch,
                          "examples": [{"id": IDS[0], "prediction": "x", "reference": REFS[0]}],
                          "improved": True})
        _write_jsonl(run / "metrics.jsonl", mrows)
        cost = {"wall_seconds": 45.2, "train_seconds": 37.5, "eval_seconds": 6.0, "images": 480,
                "images_per_second": 12.8, "peak_memory_bytes": 812_000_000, "peak_memory_kind": "rss",
                "num_processes": 1, "epochs": [{"epoch": e, "train_seconds": 12.5, "eval_seconds": 2.0,
                                                "images": 160, "images_per_second": 12.8} for e in range(3)]}
        _write_json(run / "cost.json", cost)
        TrainResult(run_dir=str(run), status="completed", model="/models/tiny-blip", global_step=step,
                    epochs_completed=3, best_metric=1.1, best_metric_name="val_loss", best_step=step,
                    strategy=StrategyCounts(strategy=strategy, trainable_params=trainable,
                                            frozen_params=1_250_000 - trainable, total_params=1_250_000,
                                            trainable_fraction=trainable / 1_250_000),
                    cost=TrainCost.model_validate(cost)).write(run)
        (run / "config.resolved.yaml").write_text(
            f"model:\n  name_or_path: /models/tiny-blip\nstrategy:\n  name: {strategy}\n", encoding="utf-8")
        (run / "checkpoints" / "best").mkdir(parents=True)
        (run / "checkpoints" / "best" / "config.json").write_text("{}")

    # explain folder with overlays, and the grounding score
    ex = demo / "explain"
    images = []
    for k, i in enumerate(IDS[:2]):
        words = REFS[k].rstrip(".").split()
        panels = words
        overlays = [f"overlays/{j:02d}_{w}.png" for j, w in enumerate(panels)]
        for j, rel in enumerate(overlays):
            if panels[j].lower() in ("left", "right", "nodule", "consolidation", "chest"):
                _overlay(ex / i / rel, 10 * k + j)
            else:
                _draw(ex / i / rel, 10 * k + j)
        _draw(ex / i / "grid.png", k, size=128)
        Explanation(
            caption=REFS[k], caption_source="reference", family="blip", model="/models/finetuned",
            tokens=words, token_ids=list(range(len(words))), token_logprobs=[0.0] * len(words), words=words,
            word_tokens=[[j] for j in range(len(words))], grid=[6, 6], image_size=[96, 96], input_box=[0, 0, 96, 96],
            settings={"method": "attention", "layers": None, "heads": None, "aggregate": "mean"}, level="word",
            # "left" is near-flat (uniform attention to within 1%): marked, not stretched
            panel_ranges=[[0.0154, 0.0155] if w.lower() == "left" else [0.002, 0.09] for w in panels],
            flat_panels=[w.lower() == "left" for w in panels],
            panels=panels, files=ExplanationFiles(grid="grid.png", token_maps="token_maps.npy",
                                                  word_maps="word_maps.npy", overlays=overlays)).write(ex / i)
        images.append({"name": i, "folder": i, "caption": REFS[k], "caption_source": "reference",
                       "words": words, "panels": panels})
    ExplainSummary.model_validate({"model": "/models/finetuned", "family": "blip", "settings": {"method": "attention"},
                                   "level": "word", "images": images}).write(ex)

    def summary(n: int, hits: tuple[float, float, float, float]) -> dict[str, Any]:
        return {"n": n, "tolerance_px": 0.05, "scores": {
            src: {"hit": h, "hit_tol": min(1.0, 1.4 * h), "energy": h / 2}
            for src, h in zip(("model", "uniform", "centre", "random"), hits, strict=True)}}

    Grounding.model_validate({
        "model": "/models/finetuned", "family": "blip", "data": str(data), "split": "test",
        "caption_source": "reference", "settings": {"method": "attention"}, "tolerance": "0.05 of the longer image side",
        "summary": {**summary(6, (0.5, 0.04, 0.17, 0.125)), "skipped": {"no finding": 2}}, "hits": 3,
        "p_value": {"vs_uniform": 0.001, "vs_centre": 0.05, "vs_random_weights": 0.0312},
        "by_finding": {f: summary(3, (h, 0.04, 0.2, 0.1)) for f, h in (("nodule", 0.67), ("effusion", 0.33))},
        "rows": []}).write(ex)

    # ablation table
    ab_rows = []
    for strategy, trainable, secs, level in (("full", 1_250_000, 37.5, 0.6), ("decoder_only", 610_000, 24.0, 0.55),
                                             ("encoder_only", 640_000, 26.0, 0.3), ("lora", 40_000, 20.0, 0.5)):
        metrics = _metrics(rng, level)
        if strategy == "decoder_only":  # collapsed, yet the highest laterality agreement: never bold
            metrics["laterality_agreement"]["value"] = 0.99
        ab_rows.append(StrategyRow(strategy=strategy, metrics=metrics, trainable_params=trainable,
                                   time_per_epoch=secs / 3, total_time=secs, images_per_second=480 / secs,
                                   peak_memory_bytes=800_000_000 * trainable / 1_250_000 + 200_000_000,
                                   relative_time=secs / 37.5,
                                   degeneration=_degeneration(strategy == "decoder_only")))
    Ablation(config="configs/ablation.yaml", seed=0, strategies=ab_rows,
             scoring={"metrics": ["coco", "clinical"]}).write(demo / "ablation")
    # the figures `medblip ablation` draws beside ablation.json (the report redraws the first itself)
    _draw(demo / "ablation" / Ablation.COST_PLOT, 7, size=160)
    _draw(demo / "ablation" / "ablation_params.png", 8, size=160)
    return {"root": root, "demo": demo, "data": data, "compare": comp, "explain": ex}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    paths = build_runs(root)
    out = root / "out"
    res = runner.invoke(app, ["report", str(paths["demo"]), "--out", str(out), "--title", "Demo study",
                              "--words", "left,nodule,consolidation", "--examples", "4"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output
    return {**paths, "out": out}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []
        self.alts: list[str] = []
        self.refs: list[str] = []
        self.classes: list[str] = []
        self.scripts_src: list[str] = []
        self.stylesheets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if a.get("class"):
            self.classes += (a["class"] or "").split()
        if tag == "img":
            self.imgs.append(a.get("src") or "")
            self.alts.append(a.get("alt") or "")
        if tag == "script" and a.get("src"):
            self.scripts_src.append(a["src"] or "")
        if tag == "link":
            self.stylesheets.append(a.get("href") or "")
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(a[key] or "")


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_files_and_sections(built: dict[str, Path]) -> None:
    out = built["out"]
    for name in ("report.html", "report.md", "report.json"):
        assert (out / name).is_file()
    page = _parse(out / "report.html")
    for section in ("dataset", "comparison", "ablation", "training", "examples", "attention", "failures", "notes"):
        assert section in page.ids
    # self-contained: no external resources, every image embedded in the page, a valid image
    assert not page.scripts_src and not page.stylesheets
    assert not [r for r in page.refs if r.startswith(("http:", "https:", "//"))]
    assert len(page.imgs) >= 10
    for src in page.imgs:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), src[:40]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    # ... and of a reasonable size: photos are downscaled JPEGs
    assert (out / "report.html").stat().st_size < 2_000_000
    # the comparison: best per column in bold, significance marks, CIs
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "best" in page.classes and "sig" in page.classes and "ci" in page.classes
    assert "***" in html  # finetuned vs zero-shot, p = 0.0004
    # examples: thumbnails (from the dataset and from a row's "image" field), agreeing/disagreeing terms
    assert page.classes.count("card") >= 4
    assert "t-agree" in page.classes and "t-disagree" in page.classes
    assert "image ROCOv2_2023_test_000008" in page.alts
    # attention overlays for the chosen words only
    overlay_alts = [a for a in page.alts if a.startswith("attention for")]
    assert overlay_alts and all(any(w in a.lower() for w in ("left", "nodule", "consolidation")) for a in overlay_alts)
    # failure cases: wrong side and wrong modality of the finetuned system
    assert "Wrong side" in html and "Wrong modality" in html


def test_report_json_and_markdown(built: dict[str, Path]) -> None:
    out = built["out"]
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rep["title"] == "Demo study"
    kinds = {i["kind"] for i in rep["inputs"]}
    assert {"dataset", "compare", "evaluate", "train", "explain", "grounding", "ablation"} <= kinds
    # the compare's systems/ folders are not reported as separate evaluate runs
    assert not [i for i in rep["inputs"] if "/systems/" in i["path"]]
    comp = rep["comparisons"][0]
    assert [s["name"] for s in comp["systems"]] == ["zero-shot", "finetuned", "api"]
    assert comp["best"]["BLEU-4"] and not comp["lower_is_better"]
    assert [g["name"] for g in comp["groups"]] == ["caption", "clinical"]
    assert comp["systems"][0]["diagnostics"]["collapsed"] is True
    ev = next(c for c in rep["comparisons"] if c["name"] == "evaluations")
    assert ev["groups"][1]["metrics"] == ["modality_accuracy", "region_f1", "finding_f1", "laterality_agreement"]
    assert {s["name"] for s in rep["systems"]} == {"zero-shot", "finetuned", "api", "evaluate-finetuned",
                                                   "evaluate-small"}
    assert len(rep["examples"]) == 4 and all(e["image"] and e["image"]["asset"] for e in rep["examples"])
    ab = rep["ablations"][0]
    assert [r["strategy"] for r in ab["rows"]] == ["full", "decoder_only", "encoder_only", "lora"]
    assert {c["key"] for c in ab["cost_columns"]} == {"trainable_params", "time_per_epoch", "total_time",
                                                      "images_per_second", "peak_memory", "relative_time"}
    assert ab["cost_plot"]["asset"] and (out / ab["cost_plot"]["asset"]).is_file()
    assert len(rep["training"]) == 2 and rep["training_plot"]
    full = next(t for t in rep["training"] if t["strategy"] == "full")
    assert full["trainable_params"] == 1_250_000 and full["status"] == "completed"
    assert full["cost"]["time_per_epoch"] == 12.5 and len(full["train_loss"]) == 12 and len(full["val"]) == 4
    fin = next(f for f in rep["failures"]["systems"] if f["system"] == "finetuned")
    assert fin["wrong_side_count"] == 2 and fin["wrong_modality_count"] == 1
    assert {x["id"] for x in fin["wrong_side"]} == {IDS[1], IDS[5]}
    assert rep["failures"]["score"] == "CIDEr"
    ground = rep["grounding"][0]
    assert ground["table"][0]["hit"] == 0.5
    # the random-weights model (evaluate_grounding's randomisation test): its own row, column and p-value
    assert [row["map"] for row in ground["table"]] == ["model", "random-weights model", "uniform baseline",
                                                       "centre-bias baseline"]
    assert ground["has_random"] and ground["p_vs_random"] == 0.0312
    assert [f["random"] for f in ground["by_finding"]] == [0.1, 0.1]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "random weights</th>" in html and "McNemar p-value that the model points more often: 0.031" in html
    md = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Dataset", "## Comparison", "## Ablation", "## Training", "## Failure cases"):
        assert heading in md
    assert "**" in md and "[report.html](report.html)" in md


def test_rerun_replaces_assets(built: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "again"
    for _ in range(2):
        res = runner.invoke(app, ["report", str(built["compare"]), "--out", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    assert not [p for p in out.iterdir() if p.name.startswith(".assets")]
    page = _parse(out / "report.html")
    assert page.imgs and all(s.startswith("data:image/") for s in page.imgs)
    assert list((out / "assets").rglob("*.png"))  # what report.md links
    rep = json.loads((out / "report.json").read_text())
    # only a compare folder: the other sections are left out with a note, nothing crashes
    assert rep["ablations"] == [] and rep["training"] == [] and rep["datasets"] == []
    assert any("dataset summary" in n for n in rep["notes"])


# -- the browser ---------------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def open_in_chromium(html: Path, screenshot: Path) -> tuple[str, list[str]]:
    """Load ``html`` from file:// in headless Chromium: screenshot, DOM after load, console lines."""
    exe = _chromium()
    assert exe is not None
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", "--window-size=1280,2000", f"--screenshot={screenshot}",
             "--dump-dom", html.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def _attrs_of_html_tag(dom: str) -> dict[str, str]:
    class P(HTMLParser):
        attrs: dict[str, str] = {}

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "html" and not P.attrs:
                P.attrs = {k: v or "" for k, v in attrs}

    P().feed(dom)
    return P.attrs


def _assert_png_not_blank(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    assert arr.shape[0] >= 1000 and arr.shape[1] >= 1000
    assert arr.std() > 10  # not a blank page
    assert len(np.unique(arr)) > 50


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian package "
                                                                "'chromium'; .ci/run installs it)")


@pytest.mark.slow
@needs_chromium
def test_browser_harness_catches_problems(tmp_path: Path) -> None:
    """The checks below are meaningful: a page with a script error and a broken image fails them."""
    from medblip.reports.html import _template_text

    tpl = _template_text()
    head = tpl[tpl.index("<script>"):tpl.index("</script>") + len("</script>")]
    tail = tpl[tpl.rindex("<script>"):tpl.rindex("</script>") + len("</script>")]
    page = tmp_path / "bad.html"
    page.write_text(f"<!DOCTYPE html><html><head>{head}</head><body><h1>bad</h1><img src='missing.png'>"
                    f"<script>notDefined();</script>{tail}</body></html>", encoding="utf-8")
    dom, console = open_in_chromium(page, tmp_path / "bad.png")
    attrs = _attrs_of_html_tag(dom)
    assert attrs.get("data-report-status") == "problems"
    assert attrs.get("data-images-broken") == "1"
    assert any("notDefined" in line for line in console)


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_chromium(built: dict[str, Path]) -> None:
    shot = built["out"] / "screenshot.png"
    dom, console = open_in_chromium(built["out"] / "report.html", shot)
    assert console == [], console  # the report logs nothing: any console line is an error or a warning
    attrs = _attrs_of_html_tag(dom)
    assert attrs.get("data-errors") == "0", attrs
    assert attrs.get("data-images-broken") == "0", attrs
    assert int(attrs.get("data-images", "0")) >= 10
    assert attrs.get("data-report-status") == "images-ok"
    _assert_png_not_blank(shot)


# -- issue 21.3: what the page shows is what is there ------------------------------------------------
def _report(built: dict[str, Path]) -> tuple[dict[str, Any], str, _Page]:
    out = built["out"]
    return (json.loads((out / "report.json").read_text(encoding="utf-8")),
            (out / "report.html").read_text(encoding="utf-8"), _parse(out / "report.html"))


def test_figures_and_captions_say_only_what_is_drawn(built: dict[str, Path]) -> None:
    rep, html, page = _report(built)
    # the metric-vs-cost figure once: the report draws it, the ablation's own copy is left out
    assert page.alts.count("metric versus cost") == 1
    assert Ablation.COST_PLOT not in html and "ablation_params.png" in html
    # the training curves: against the optimizer step, and the caption names exactly the panels drawn
    # (the runs log a step-0 validation and CIDEr; the trainer's Unix time stamps are no metric)
    assert rep["training_caption"] == ("Training loss, validation loss and validation CIDEr against the "
                                       "optimizer step; step 0: before training.")
    assert f"<figcaption>{rep['training_caption']}</figcaption>" in html
    with Image.open(io.BytesIO(base64.b64decode(page.imgs[page.alts.index("training curves")].split(",", 1)[1]))) as im:
        assert im.width == round(3 * 4.3 * 110)  # three panels, no "validation time"


def test_notes_are_findings_and_inputs_exist(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    rep, html, _ = _report(built)
    comp = rep["comparisons"][0]
    # the producers' progress lines are not findings: kept apart, in the collapsed log
    assert not [n for n in rep["notes"] + comp["notes"] if "resuming" in n or "records kept" in n]
    assert any("resuming - 8 of 8 image(s) already predicted" in n for n in rep["log"])
    assert "disagree on 2 image(s)" in html and "progress line(s) the producers logged" in html
    # inputs are absolute paths of folders that exist, even when given relative to the working directory
    from medblip.reports import collect

    monkeypatch.chdir(built["root"])
    relative = collect([Path("demo") / "compare"], examples=1)
    assert [Path(i["path"]) for i in relative.inputs] == [built["compare"].resolve()]
    assert all(Path(i["path"]).is_absolute() and Path(i["path"]).is_dir() for i in rep["inputs"])


def test_best_is_bold_only_among_comparable_rows(built: dict[str, Path]) -> None:
    rep, html, _ = _report(built)
    comp = rep["comparisons"][0]
    assert not [m for m, names in comp["best"].items() if "zero-shot" in names]  # collapsed
    ev = next(c for c in rep["comparisons"] if c["name"] == "evaluations")
    sets = {s["name"]: s["image_set"] for s in ev["systems"]}
    assert sets["evaluate-small"] != sets["evaluate-finetuned"]
    # the 4-image run scores highest everywhere, but on other images: never ranked against the 8-image one
    assert not [m for m, names in ev["best"].items() if names]
    assert any("different image sets" in n for n in ev["notes"])
    ab = rep["ablations"][0]
    assert "decoder_only" not in ab["best"]["laterality_agreement"] and ab["best"]["laterality_agreement"]
    # in the page: no bold cell in a row marked collapsed
    rows = [r for r in html.split("<tr>") if 'class="tag bad"' in r.split("</tr>")[0]]
    assert len(rows) >= 3 and not [r for r in rows if " best" in r.split("</tr>")[0]]


def test_collapse_warned_once_with_advice_that_fits(built: dict[str, Path]) -> None:
    from medblip.reports.collect import system_warnings

    _, html, _ = _report(built)
    assert html.count("OUTPUT COLLAPSE") == 1  # the zero-shot system, once
    assert "not trained on this domain" in html and "learning rate" not in html
    warning = degeneration_report(["a picture of a chest"] * 8).warnings[0]
    finetuned = str(built["demo"] / "train" / "full" / "checkpoints" / "best")
    assert system_warnings([warning, warning], "model", finetuned) == [
        warning.replace("(check learning rate, frozen encoder, data)",
                        "(check the learning rate, the frozen parts and the data)")]
    assert "learning rate" not in system_warnings([warning], "predictions", None)[0]


def test_chosen_metrics_are_shown(built: dict[str, Path]) -> None:
    """Issue 22.5: the metric sets chosen, the metric models with revisions, what could not be computed."""
    rep, html, _ = _report(built)
    choices = rep["comparisons"][0]["metric_choices"]
    assert choices == [{"sets": ["coco", "clinical", "bertscore", "bleurt"],
                        "parts": ["coco", "clinical", "bertscore", "bleurt"], "imageclef_preprocessing": False,
                        "models": [{"metric": "BERTScore-F1", "model": "microsoft/deberta-xlarge-mnli",
                                    "revision": "8a3c1f2e9d7b6a5f4e3d"}],
                        "unavailable": {"BLEURT": "BLEURT-20 needs TensorFlow; not available in medblip (see the README)"},
                        "systems": []}]
    for text in ('<span class="chip term">bertscore</span>', "<code>microsoft/deberta-xlarge-mnli</code>",
                 "revision 8a3c1f2e9d7b", "<b>BLEURT</b>: BLEURT-20 needs TensorFlow"):
        assert text in html
    # evaluate folders scored with the defaults show those
    ev = next(c for c in rep["comparisons"] if c["name"] == "evaluations")
    assert [c["sets"] for c in ev["metric_choices"]] == [["coco", "clinical"]]


def test_overlays_show_clinical_words_ranges_and_flat_maps(built: dict[str, Path]) -> None:
    rep, html, _ = _report(built)
    overlays = [o for item in rep["explanations"][0]["images"] for o in item["overlays"]]
    left = next(o for o in overlays if o["word"] == "left")
    assert left["flat"] is True and left["range"] == "0.0154–0.0155"
    assert '<figure class="flat">' in html and "0.002–0.09" in html
    assert 'class="colorbar"' in html and "linear-gradient(to right, rgb(0,0,128) 0%" in html  # jet, min to max
    # without --words: the caption's clinical words first, never punctuation or function words
    from medblip.reports import collect

    item = collect([built["explain"]], examples=2).explanations[0]["images"][0]
    words = [o["word"] for o in item["overlays"]]
    assert item["caption"] == REFS[0] and words[0] == "X-ray"
    assert {"Chest", "right", "lobe", "consolidation"} <= set(words) and "a" not in words


@pytest.mark.slow
@needs_chromium
def test_report_layout_at_phone_and_desktop_width(built: dict[str, Path], tmp_path: Path) -> None:
    """At 400 px nothing overflows the page: wide tables and figures scroll inside their wrapper with a
    visible scroll bar, cards wrap, images fit; the page alone (no assets/ beside it) shows every image."""
    sync_api = pytest.importorskip("playwright.sync_api")
    alone = tmp_path / "report.html"
    shutil.copyfile(built["out"] / "report.html", alone)  # self-contained: nothing else comes along
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"],
                                    ignore_default_args=["--hide-scrollbars"])
        for width in (400, 1400):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(alone.as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate("document.documentElement.getAttribute('data-report-status')") == "images-ok"
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            overflowing = page.evaluate("""(w) => Array.from(document.querySelectorAll('body *')).filter(el => {
                if (el.getBoundingClientRect().right <= w + 1) return false;
                for (let a = el.parentElement; a; a = a.parentElement)
                    if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return false;
                return true; }).map(el => el.tagName + '.' + el.className)""", width)
            assert overflowing == []
            scrollers = page.evaluate("""() => Array.from(document.querySelectorAll('.scroll, figure.plot'))
                .filter(e => e.scrollWidth > e.clientWidth).map(e => e.offsetHeight - e.clientHeight)""")
            assert all(bar > 0 for bar in scrollers)  # a visible scroll bar wherever there is more to see
            cards = page.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.getBoundingClientRect().right)")
            assert cards and max(cards) <= width
            plots = page.evaluate("Array.from(document.querySelectorAll('img.plot')).map(i => i.getBoundingClientRect().width)")
            if width == 400:
                assert len(scrollers) >= 3
                assert min(plots) >= 600  # figures keep a legible size and scroll instead of shrinking
            page.screenshot(path=str(tmp_path / f"report_{width}.png"), full_page=True)
            page.close()
        browser.close()
    _assert_png_not_blank(tmp_path / "report_1400.png")


def test_markdown_names_the_chosen_metrics(built: dict[str, Path]) -> None:
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    assert "Metrics chosen: `coco`, `clinical`, `bertscore`, `bleurt`." in md
    assert "BERTScore-F1: `microsoft/deberta-xlarge-mnli` (revision 8a3c1f2e9d7b)" in md
    assert "Not computed: BLEURT: BLEURT-20 needs TensorFlow" in md
