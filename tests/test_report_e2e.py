"""``medblip report`` end to end: realistic run folders -> HTML/Markdown/JSON, checked by parsing the
HTML and by opening it in headless Chromium (screenshot, console errors, every image loads).

The fixture folders hold what the producers write, through the same result types
(:mod:`medblip.results`; metric values are made up): evaluate/compare: predictions.jsonl, metrics.json,
per_image.jsonl (computed by the evaluation's own function), comparison.json; train: metrics.jsonl,
cost.json, result.json, config.resolved.yaml; explain: summary.json, explanation.json, overlays;
grounding.json; ablation.json; the dataset summary of ``medblip data validate``.
"""

from __future__ import annotations

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
        scores = Scores(n_images=8, metrics=_metrics(rng, level), degeneration=_degeneration(collapsed), **what)
        scores.write(folder)
        _write_jsonl(folder / "per_image.jsonl", image_scores(IDS, [[r] for r in REFS], SYSTEMS[name]))
        return scores

    # compare folder: two model systems and one predictions-file system
    comp = demo / "compare"
    api_file = root / "api_predictions.jsonl"
    _write_jsonl(api_file, [{"id": i, "prediction": p} for i, p in zip(IDS, SYSTEMS["api"], strict=True)])
    systems = []
    for name, level, kind in (("zero-shot", 0.15, "model"), ("finetuned", 0.6, "model"), ("api", 0.55, "predictions")):
        folder = comp / "systems" / name
        if kind == "model":
            _write_jsonl(folder / "predictions.jsonl", rows(name, f"/models/{name}"))
        scores = scored(folder, name, level, collapsed=name == "zero-shot")
        for m, v in scores.metrics.items():
            v.p_value = None if name == "zero-shot" else (0.0004 if name == "finetuned" else 0.03 if m != "CIDEr" else 0.4)
        systems.append(ComparedSystem(
            name=name, kind=kind, source=str(api_file) if kind == "predictions" else f"/models/{name}",
            family="blip" if kind == "model" else None, generation=gen if kind == "model" else None,
            n_predictions=8, seconds_per_image=0.08, metrics=scores.metrics, diagnostics=scores.degeneration,
            warnings=["many generic captions"] if name == "zero-shot" else [], folder=str(folder)))
    Comparison(out=str(comp), reference="zero-shot", split="test", data=str(data), n_images=8, metrics=METRICS,
               significance=Significance(method="bootstrap", samples=1000, alpha=0.05, bootstrap=1000),
               excluded=Excluded(), systems=systems).write(comp)
    _draw(comp / "comparison.png", 5, size=160)

    # a standalone evaluate folder (references in the rows, images through its data)
    ev = demo / "evaluate-finetuned"
    _write_jsonl(ev / "predictions.jsonl", rows("finetuned", "/models/finetuned"))
    scored(ev, "finetuned", 0.6, model="/models/finetuned", data=str(data), split="test", format="auto",
           generation_time=GenerationTime(seconds_per_image=0.08, images_timed=8))

    # training runs
    for strategy, trainable in (("full", 1_250_000), ("decoder_only", 610_000)):
        run = demo / "train" / strategy
        mrows: list[dict[str, Any]] = [{"step": 0, "kind": "strategy", "strategy": strategy,
                                        "trainable_params": trainable, "frozen_params": 1_250_000 - trainable}]
        step = 0
        for epoch in range(3):
            for _ in range(4):
                step += 5
                mrows.append({"step": step, "epoch": epoch, "split": "train",
                              "loss": 4.0 * np.exp(-step / 30) + 0.5 + 0.1 * rng.random(), "lr": 1e-4})
            mrows.append({"step": step, "epoch": epoch, "kind": "epoch_cost", "epoch_cost": None,
                          "train_seconds": 12.5, "eval_seconds": 2.0, "images": 160, "images_per_second": 12.8})
            mrows.append({"step": step, "epoch": epoch, "split": "validation", "val_loss": 3.0 - 0.6 * epoch,
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
            panels=panels, files=ExplanationFiles(grid="grid.png", token_maps="token_maps.npy",
                                                  word_maps="word_maps.npy", overlays=overlays)).write(ex / i)
        images.append({"name": i, "folder": i, "caption": REFS[k], "caption_source": "reference",
                       "words": words, "panels": panels})
    ExplainSummary.model_validate({"model": "/models/finetuned", "family": "blip", "settings": {"method": "attention"},
                                   "level": "word", "images": images}).write(ex)

    def summary(n: int, hits: tuple[float, float, float]) -> dict[str, Any]:
        return {"n": n, "tolerance_px": 0.05, "scores": {
            src: {"hit": h, "hit_tol": min(1.0, 1.4 * h), "energy": h / 2}
            for src, h in zip(("model", "uniform", "centre"), hits, strict=True)}}

    Grounding.model_validate({
        "model": "/models/finetuned", "family": "blip", "data": str(data), "split": "test",
        "caption_source": "reference", "settings": {"method": "attention"}, "tolerance": "0.05 of the longer image side",
        "summary": {**summary(6, (0.5, 0.04, 0.17)), "skipped": {"no finding": 2}}, "hits": 3,
        "p_value": {"vs_uniform": 0.001, "vs_centre": 0.05},
        "by_finding": {f: summary(3, (h, 0.04, 0.2)) for f, h in (("nodule", 0.67), ("effusion", 0.33))},
        "rows": []}).write(ex)

    # ablation table
    ab_rows = []
    for strategy, trainable, secs, level in (("full", 1_250_000, 37.5, 0.6), ("decoder_only", 610_000, 24.0, 0.55),
                                             ("encoder_only", 640_000, 26.0, 0.3), ("lora", 40_000, 20.0, 0.5)):
        ab_rows.append(StrategyRow(strategy=strategy, metrics=_metrics(rng, level), trainable_params=trainable,
                                   time_per_epoch=secs / 3, total_time=secs, images_per_second=480 / secs,
                                   peak_memory_bytes=800_000_000 * trainable / 1_250_000 + 200_000_000,
                                   relative_time=secs / 37.5))
    Ablation(config="configs/ablation.yaml", seed=0, strategies=ab_rows).write(demo / "ablation")
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
    # self-contained: no external resources, every image is a file beside the report
    assert not page.scripts_src and not page.stylesheets
    assert not [r for r in page.refs if r.startswith(("http:", "https:", "//"))]
    assert len(page.imgs) >= 10
    for src in page.imgs:
        assert not src.startswith(("/", "data:", "http")), src
        assert (out / src).is_file(), src
        with Image.open(out / src) as im:
            im.verify()
    # the comparison: best per column in bold, significance marks, CIs
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "best" in page.classes and "sig" in page.classes and "ci" in page.classes
    assert "***" in html  # finetuned vs zero-shot, p = 0.0004
    # examples: thumbnails (from the dataset and from a row's "image" field), agreeing/disagreeing terms
    assert page.classes.count("card") >= 4
    assert "t-agree" in page.classes and "t-disagree" in page.classes
    assert "example_ROCOv2_2023_test_000008" in html or any("000008" in s for s in page.imgs)
    # attention overlays for the chosen words only
    overlay_alts = [s for s in page.imgs if "/attention" in s]
    assert overlay_alts and all(any(w in s.lower() for w in ("left", "nodule", "consolidation")) for s in overlay_alts)
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
    assert {s["name"] for s in rep["systems"]} == {"zero-shot", "finetuned", "api", "evaluate-finetuned"}
    assert len(rep["examples"]) == 4 and all(e["image"] and e["image"]["asset"] for e in rep["examples"])
    ab = rep["ablations"][0]
    assert [r["strategy"] for r in ab["rows"]] == ["full", "decoder_only", "encoder_only", "lora"]
    assert {c["key"] for c in ab["cost_columns"]} == {"trainable_params", "time_per_epoch", "total_time",
                                                      "images_per_second", "peak_memory", "relative_time"}
    assert ab["cost_plot"]["asset"] and (out / ab["cost_plot"]["asset"]).is_file()
    assert len(rep["training"]) == 2 and rep["training_plot"]
    full = next(t for t in rep["training"] if t["strategy"] == "full")
    assert full["trainable_params"] == 1_250_000 and full["status"] == "completed"
    assert full["cost"]["time_per_epoch"] == 12.5 and len(full["train_loss"]) == 12 and len(full["val"]) == 3
    fin = next(f for f in rep["failures"]["systems"] if f["system"] == "finetuned")
    assert fin["wrong_side_count"] == 2 and fin["wrong_modality_count"] == 1
    assert {x["id"] for x in fin["wrong_side"]} == {IDS[1], IDS[5]}
    assert rep["failures"]["score"] == "CIDEr"
    assert rep["grounding"][0]["table"][0]["hit"] == 0.5
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
    assert all((out / s).is_file() for s in page.imgs)
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
