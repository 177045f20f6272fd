"""``medblip demo``: the quick pipeline end to end (and its rerun), plus the errors raised up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medblip.cli.experiment_cmd  # noqa: F401  (registers the commands before cli/__init__ imports it)
from medblip.cli.app import app
from medblip.errors import ConfigError, MedblipError
from medblip.experiments.demo import DemoOptions, load_recipe, run_demo, shipped_config

runner = CliRunner()


@pytest.mark.slow
def test_quick_demo_end_to_end_and_rerun(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for k in range(1, 10):
        assert f"[{k}/9]" in res.output
    # where the report is, and the headline table
    assert f"report: {out / 'report' / 'report.html'}" in res.output
    assert "Comparison on test" in res.output
    for name in ("blip-zero-shot", "blip-fine-tuned", "vit-gpt2-fine-tuned", "CIDEr"):
        assert name in res.output
    assert "Ablation" in res.output and all(s in res.output for s in ("decoder_only", "encoder_only", "lora"))
    assert (out / "headline.txt").read_text().startswith("Comparison on test")
    # the study's shape, measured from the run's outputs (issue 21): every criterion measured
    shape = json.loads((out / "shape.json").read_text())
    assert [c["name"] for c in shape["criteria"]] == ["fine_tuned_vs_zero_shot", "decoder_only_cider",
                                                      "decoder_only_time", "pointing", "pointing_vs_uniform",
                                                      "side_over_majority"]
    assert all(c["value"] is not None for c in shape["criteria"]), shape
    assert "The study's shape, measured on this run" in res.output and (out / "shape.md").is_file()

    html = (out / "report" / "report.html").read_text()
    assert "<html" in html.lower()
    for f in ("data/synth/synth.json", "dataset/data_summary.json", "models/tiny-blip/config.json",
              "models/tiny-vit-gpt2/config.json", "compare/comparison.json", "compare/comparison.md",
              "compare/comparison.png", "ablation/ablation.json", "ablation/ablation.csv", "ablation/ablation.md",
              "ablation/ablation_cost.png", "ablation/ablation_params.png", "runs/vit-gpt2/result.json",
              "explain/summary.json", "grounding/grounding.json", "report/report.md"):
        assert (out / f).is_file(), f
    comp = json.loads((out / "compare" / "comparison.json").read_text())
    assert [s["name"] for s in comp["systems"]] == ["blip-zero-shot", "blip-fine-tuned", "vit-gpt2-fine-tuned"]
    abl = json.loads((out / "ablation" / "ablation.json").read_text())
    assert [r["strategy"] for r in abl["strategies"]] == ["full", "decoder_only", "encoder_only", "lora"]
    # the comparison's fine-tuned BLIP is the ablation's full run, captioned once
    assert comp["systems"][1]["source"] == str((out / "ablation" / "full" / "checkpoints" / "best").resolve())
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["comparisons"] and report["ablations"] and report["datasets"]
    assert report["explanations"] and report["grounding"] and report["training"]
    grounding = json.loads((out / "grounding" / "grounding.json").read_text())
    assert "random" in grounding["summary"]["scores"] and "vs_random_weights" in grounding["p_value"]
    state = json.loads((out / "demo.json").read_text())
    assert state["fingerprint"]["quick"] is True and state["seed"] == 0
    assert "git_commit" in state and state["versions"]["torch"]
    assert state["resolved_configs"]["blip"]["train"]["seed"] == 0
    assert set(state["stages"]) == {"data", "validate", "models", "ablation", "vit-gpt2", "compare", "explain",
                                    "grounding", "report"}

    # rerun = resume: every stage finds its outputs
    res2 = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert res2.exit_code == 0, res2.output
    assert "not trained again" in res2.output and "training in" not in res2.output
    stages = json.loads((out / "demo.json").read_text())["stages"]
    for name in ("data", "validate", "models", "vit-gpt2", "compare", "explain", "grounding"):
        assert stages[name]["status"].startswith("skipped"), (name, stages[name])

    # the same folder with other settings is refused, not mixed
    with pytest.raises(MedblipError, match="holds a demo run with other settings"):
        run_demo(DemoOptions(out=out, quick=False))


def test_refuses_a_foreign_folder_and_missing_data(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(MedblipError, match="not empty and is not an earlier output of `medblip demo`"):
        run_demo(DemoOptions(out=tmp_path / "mine", quick=True))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(MedblipError, match="--data .*no such file"):
        run_demo(DemoOptions(out=tmp_path / "o", quick=True, data=tmp_path / "nowhere"))
    assert not (tmp_path / "o").exists()


def test_demo_help_and_real_study_configs() -> None:
    res = runner.invoke(app, ["demo", "--help"])
    assert res.exit_code == 0
    for opt in ("--out", "--quick", "--model", "--data", "--device"):
        assert opt in res.output
    from medblip.training.config import load_config

    # the real study's hyper-parameters come from the shipped configs, which validate
    cfg = load_config(shipped_config("ablation_roco.yaml"))
    assert cfg.model.family == "blip" and cfg.train.early_stopping.patience is None
    assert load_config(shipped_config("vit_gpt2.yaml")).model.family == "vit-gpt2"
    with pytest.raises(ConfigError, match="not found"):
        shipped_config("nope.yaml")


def test_shipped_synth_ablation_config_is_the_demo_recipe() -> None:
    from medblip.training.config import load_config

    cfg = load_config(shipped_config("ablation_synth.yaml"))
    full = load_recipe("full")
    for key, value in full.train.items():
        assert getattr(cfg.train, key) == value, key
    assert cfg.generation.max_new_tokens == full.generation["max_new_tokens"]
    from medblip.experiments.pretrain import load_recipe as load_pretrain_recipe

    assert cfg.data.image_size == load_pretrain_recipe("blip", full.pretrain).image_size
