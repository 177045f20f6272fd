"""``medblip ablation``: every strategy trained and evaluated on one budget, the tables, resume, errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import medblip.cli.experiment_cmd  # noqa: F401  (registers the commands before cli/__init__ imports it)
from medblip.cli.app import app
from medblip.errors import ConfigError
from medblip.experiments.ablation import (
    ablation_csv,
    ablation_markdown,
    add_relative_time,
    parse_strategies,
    run_ablation,
)
from medblip.training.config import validate_config

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()
STRATEGIES = ["full", "decoder_only", "encoder_only", "lora"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from medblip.data.synth import generate
    from medblip.models import init_tiny

    root = tmp_path_factory.mktemp("ablation")
    data = root / "synth"
    generate(data, 40, seed=1, size=32, workers=1)  # 32 train / 4 validation / 4 test
    blip = init_tiny("blip", root / "tiny-blip", image_size=32, patch_size=8, seed=0)
    vit = init_tiny("vit-gpt2", root / "tiny-vit-gpt2", image_size=32, patch_size=8, seed=0)
    return {"root": root, "data": data, "blip": blip, "vit": vit}


def write_config(path: Path, model: Path, data: Path, out: Path, **train: Any) -> Path:
    raw = {
        "name": "abl",
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "image_size": 32, "cache_images": True},
        "strategy": {"name": "full", "lora": {"r": 4, "alpha": 8}},
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "lr": 1e-3, "seed": 3, "val_subset": 4,
                  "val_generate": False, "log_every": 1, **train},
        "generation": {"num_beams": 1, "max_new_tokens": 8, "min_new_tokens": 2},
        "output": {"dir": str(out)},
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["ablation", *args], catch_exceptions=False)


# -- end to end -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ablation_end_to_end_then_resume(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "abl"
    cfg = write_config(tmp_path / "abl.yaml", inputs["blip"], inputs["data"], tmp_path / "unused")
    res = invoke(str(cfg), "--out", str(out), "--no-meteor", "--bootstrap", "50", "--no-progress")
    assert res.exit_code == 0, res.output
    for s in STRATEGIES:
        assert f"train {s}" in res.output and f"evaluate {s}" in res.output
    assert f"ablation: {out / 'ablation.md'}" in res.output

    doc = json.loads((out / "ablation.json").read_text())
    rows = {r["strategy"]: r for r in doc["strategies"]}
    assert list(rows) == STRATEGIES
    metrics = doc["metrics"]
    assert {"BLEU-4", "CIDEr", "ROUGE-L", "modality_accuracy"} <= set(metrics)
    for s, r in rows.items():
        assert set(r["metrics"]) == set(metrics), s
        for v in r["metrics"].values():
            assert v["ci_low"] <= v["value"] <= v["ci_high"]
        for key in ("time_per_epoch", "total_time", "images_per_second", "peak_memory_bytes", "trainable_params",
                    "relative_time"):
            assert r[key] > 0, (s, key)
        assert r["steps"] == 2 and r["status"] == "completed" and r["n_images"] == 4
        assert Path(r["run_dir"]) == out / s and (out / s / "eval-test" / "predictions.jsonl").is_file()
    assert rows["full"]["relative_time"] == 1.0
    full = rows["full"]["trainable_params"]
    assert full == rows["full"]["total_params"]
    assert all(rows[s]["trainable_params"] < full for s in ("decoder_only", "encoder_only", "lora"))
    assert rows["decoder_only"]["trainable_params"] + rows["encoder_only"]["trainable_params"] == full
    # identical budget and evaluation for every strategy
    assert doc["budget"]["max_steps"] == 2 and doc["budget"]["seed"] == 3 and doc["n_images"] == 4
    gens = {json.dumps(json.loads((out / s / "eval-test" / "metrics.json").read_text())["generation"],
                       sort_keys=True) for s in STRATEGIES}
    assert len(gens) == 1
    for s in STRATEGIES:
        resolved = yaml.safe_load((out / s / "config.resolved.yaml").read_text())
        assert resolved["strategy"]["name"] == s and resolved["train"]["lr"] == 1e-3

    # CSV: one row per strategy, every metric with its CI columns
    with (out / "ablation.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["strategy"] for r in table] == STRATEGIES
    for m in metrics:
        assert all(r[m] != "" and r[f"{m}_ci_low"] != "" and r[f"{m}_ci_high"] != "" for r in table)
    assert float(table[0]["relative_time"]) == 1.0
    assert all(float(r["total_time"]) > 0 and float(r["time_per_epoch"]) > 0 for r in table)
    md = (out / "ablation.md").read_text()
    assert all(f"| {s} |" in md for s in STRATEGIES) and all(f"| {m} |" in md for m in metrics)
    assert "1.00x" in md
    for png in ("ablation_cost.png", "ablation_params.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["seed"] == 3 and run_info["strategies"] == STRATEGIES and "versions" in run_info

    # the report reads it
    from medblip.reports import collect

    rep = collect([out])
    assert [x["strategy"] for x in rep.ablations[0]["rows"]] == STRATEGIES
    assert rep.ablations[0]["rows"][0]["cost"]["relative_time"] == 1.0

    # rerun: nothing is trained or captioned again, same table
    before = {s: (out / s / "checkpoints" / "best" / "model.safetensors").stat().st_mtime_ns for s in STRATEGIES}
    res2 = invoke(str(cfg), "--out", str(out), "--no-meteor", "--bootstrap", "50", "--no-progress")
    assert res2.exit_code == 0, res2.output
    assert res2.output.count("not trained again") == 4 and res2.output.count("evaluation found") == 4
    assert before == {s: (out / s / "checkpoints" / "best" / "model.safetensors").stat().st_mtime_ns
                      for s in STRATEGIES}
    doc2 = json.loads((out / "ablation.json").read_text())
    assert [r["metrics"] for r in doc2["strategies"]] == [r["metrics"] for r in doc["strategies"]]

    # a changed config is not mixed into the finished runs
    with pytest.raises(ConfigError, match="different config.*train.lr"):
        invoke(str(cfg), "--out", str(out), "--set", "train.lr=0.01", "--no-meteor", "--no-progress")


@pytest.mark.slow
def test_interrupted_strategy_resumes(inputs: dict[str, Path], tmp_path: Path) -> None:
    from medblip.experiments.ablation import strategy_config
    from medblip.training.trainer import train

    out = tmp_path / "abl"
    cfg = validate_config(yaml.safe_load(write_config(tmp_path / "c.yaml", inputs["blip"], inputs["data"], out,
                                                      max_steps=3, save_every_steps=1).read_text()))
    first = train(strategy_config(cfg, "full", out), progress=False, should_stop=lambda step: step >= 1)
    assert first.status == "interrupted" and first.global_step == 1
    lines: list[str] = []
    result = run_ablation(cfg, out, ["full"], bootstrap=20, score_options={"java": False}, progress=False,
                          log=lines.append)
    assert any("full: resuming" in line for line in lines), lines
    row = result.row("full")
    assert row["status"] == "completed" and row["steps"] == 3 and row["relative_time"] == 1.0
    assert json.loads((out / "full" / "result.json").read_text())["global_step"] == 3


# -- errors: one line, before any training ---------------------------------------------------------------
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from medblip.cli import main

    monkeypatch.setattr(sys, "argv", ["medblip", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code), capsys.readouterr().err


@pytest.mark.parametrize("problem, expected", [
    ({"train": {"lrr": 1}}, "train.lrr: unknown key"),
    ({"train": {"epochs": -1}}, "train.epochs"),
    ({"model": None}, "model"),
])
def test_bad_config_is_one_line_error(inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str], problem: dict[str, Any],
                                      expected: str) -> None:
    cfg = write_config(tmp_path / "bad.yaml", inputs["blip"], inputs["data"], tmp_path / "out")
    raw = yaml.safe_load(cfg.read_text())
    for key, value in problem.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    cfg.write_text(yaml.safe_dump(raw))
    code, err = run_main(monkeypatch, capsys, "ablation", str(cfg))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("medblip: error: ") and expected in err, err
    assert str(cfg) in err
    assert not (tmp_path / "out").exists()


def test_other_errors_are_one_line(inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, "ablation", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.count("\n") == 1 and "config file not found" in err

    cfg = write_config(tmp_path / "c.yaml", inputs["blip"], inputs["data"], out)
    code, err = run_main(monkeypatch, capsys, "ablation", str(cfg), "--strategies", "full,partial")
    assert code == 2 and err.count("\n") == 1 and "unknown strategy 'partial'" in err

    vit = write_config(tmp_path / "v.yaml", inputs["vit"], inputs["data"], out)
    code, err = run_main(monkeypatch, capsys, "ablation", str(vit))  # default strategies include lora
    assert code == 2 and err.count("\n") == 1 and "vit-gpt2 family does not support strategy 'lora'" in err

    nodata = write_config(tmp_path / "n.yaml", inputs["blip"], tmp_path / "nowhere", out)
    code, err = run_main(monkeypatch, capsys, "ablation", str(nodata))
    assert code == 2 and err.count("\n") == 1 and "data.path" in err and "does not exist" in err
    assert not out.exists()


# -- the table from rows ------------------------------------------------------------------------------------
def test_parse_strategies() -> None:
    assert parse_strategies(None) == STRATEGIES
    assert parse_strategies(" full , lora ") == ["full", "lora"]
    assert parse_strategies(["qformer_only"]) == ["qformer_only"]
    for bad, msg in (("", "at least one"), ("full,full", "twice"), ("none", "unknown strategy")):
        with pytest.raises(ConfigError, match=msg):
            parse_strategies(bad)


def _row(strategy: str, total: float | None, cider: float) -> dict[str, Any]:
    return {"strategy": strategy, "trainable_params": 10, "trainable_fraction": 0.5, "total_time": total,
            "time_per_epoch": total, "images_per_second": 3.0, "peak_memory_bytes": 2**30,
            "peak_memory_kind": "cuda", "run_dir": f"runs/{strategy}",
            "metrics": {"CIDEr": {"value": cider, "ci_low": cider - 0.1, "ci_high": cider + 0.1}}}


def test_relative_time_and_writers() -> None:
    rows = [_row("lora", 5.0, 0.3), _row("full", 20.0, 0.5), _row("decoder_only", None, 0.4)]
    add_relative_time(rows)
    assert [r["relative_time"] for r in rows] == [0.25, 1.0, None]
    doc = {"model": "m", "data": "d", "split": "test", "n_images": 3, "budget": {"epochs": 2, "batch_size": 4,
           "grad_accum": 1, "lr": 0.1, "schedule": "cosine", "seed": 0}, "metrics": ["CIDEr"], "strategies": rows}
    table = list(csv.DictReader(ablation_csv(doc).splitlines()))
    assert [r["relative_time"] for r in table] == ["0.25", "1.0", ""]
    assert table[1]["CIDEr"] == "0.5" and table[1]["CIDEr_ci_low"] == "0.4"
    md = ablation_markdown(doc)
    assert "| lora | 10 | 50.0% | 5.0 s | 5.0 s | 0.25x | 3.0 | 1.00 GiB |" in md
    assert "| CIDEr | 0.300 [0.200, 0.400] | 0.500 [0.400, 0.600] | 0.400 [0.300, 0.500] |" in md
    assert "CUDA allocator peak" in md
    no_full = [_row("lora", 5.0, 0.3)]
    add_relative_time(no_full)
    assert no_full[0]["relative_time"] is None
