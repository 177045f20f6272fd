"""Experiment configs: schema, errors that name the key and the file, --set overrides, shipped files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medblip.configfile import apply_overrides
from medblip.errors import ConfigError
from medblip.training.config import ExperimentConfig, check_paths, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
STUDY_CONFIGS = ("blip_full", "blip_decoder_only", "blip_encoder_only", "blip_lora", "vit_gpt2",
                 "blip2_zero_shot", "instructblip_zero_shot", "blip_zero_shot")
# Runs `medblip train` whether or not cli/__init__.py imports train_cmd yet.
CLI = "import medblip.cli.train_cmd; from medblip.cli import main; main()"


def _write(tmp_path: Path, raw: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _minimal(tmp_path: Path) -> dict:
    return {"model": {"name_or_path": "Salesforce/blip-image-captioning-base", "family": "blip"},
            "data": {"path": str(tmp_path)}, "output": {"dir": str(tmp_path / "run")}}


@pytest.mark.parametrize("name", [*STUDY_CONFIGS, *(f"synth_{n}" for n in STUDY_CONFIGS)])
def test_shipped_config_validates(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    assert path.is_file(), f"configs/{name}.yaml is missing"
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    # The resolved form round-trips through YAML and validates again (it is what a run saves).
    assert validate_config(yaml.safe_load(cfg.to_yaml())) == cfg


def test_study_configs_follow_common_practice() -> None:
    full = load_config(CONFIGS / "blip_full.yaml")
    assert full.train.lr == 5e-5 and full.train.weight_decay == 0.05 and full.train.epochs == 5
    assert full.train.effective_batch_size == 32
    assert full.data.image_size == 384
    assert full.generation.num_beams == 3 and full.generation.max_new_tokens == 64
    # The ablation configs change the strategy and nothing that matters for the comparison.
    for name, strategy in (("blip_decoder_only", "decoder_only"), ("blip_encoder_only", "encoder_only")):
        other = load_config(CONFIGS / f"{name}.yaml")
        assert other.strategy.name == strategy
        assert other.train == full.train and other.data == full.data and other.generation == full.generation
    assert load_config(CONFIGS / "blip_lora.yaml").strategy.name == "lora"
    for name in ("blip_zero_shot", "blip2_zero_shot", "instructblip_zero_shot"):
        assert load_config(CONFIGS / f"{name}.yaml").strategy.name == "none"


def test_learn_config_is_the_learning_recipe() -> None:
    """configs/synth_blip_learn.yaml is the CLI form of the learning recipe (tests/_train_fixtures.py),
    which the learning tests train: the same training values, data size and model input."""
    from _train_fixtures import LEARN

    cfg = load_config(CONFIGS / "synth_blip_learn.yaml")
    assert {k: getattr(cfg.train, k) for k in LEARN["train"]} == LEARN["train"]
    assert cfg.data.image_size == LEARN["blip"]["image_size"] == LEARN["synth"]["size"]
    assert cfg.strategy.name == "full"
    header = (CONFIGS / "synth_blip_learn.yaml").read_text(encoding="utf-8")
    synth, blip = LEARN["synth"], LEARN["blip"]
    assert f"--n {synth['n']} --size {synth['size']} --seed {synth['seed']}" in header
    assert "--splits " + ",".join(str(f) for f in synth["splits"]) in header
    for flag, key in (("--patch-size", "patch_size"), ("--hidden-size", "hidden_size"), ("--layers", "num_layers"),
                      ("--heads", "num_heads"), ("--vision-init-std", "vision_init_std"),
                      ("--position-init-std", "position_init_std")):
        assert f"{flag} {blip[key]}" in header, flag


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    raw = _minimal(tmp_path)
    raw["train"] = {"lrr": 1e-4}
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: train.lrr: unknown key"


def test_ill_typed_value(tmp_path: Path) -> None:
    raw = _minimal(tmp_path)
    raw["train"] = {"batch_size": "many"}
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.batch_size: .*integer.*'many'"):
        load_config(_write(tmp_path, raw))
    raw["train"] = {"mixed_precision": "fp8"}
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: .*'no', 'bf16' or 'fp16'"):
        load_config(_write(tmp_path, raw))


def test_missing_section_and_bad_yaml(tmp_path: Path) -> None:
    raw = _minimal(tmp_path)
    del raw["data"]
    with pytest.raises(ConfigError, match=r"exp\.yaml: data: required key is missing"):
        load_config(_write(tmp_path, raw))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_family(tmp_path: Path) -> None:
    raw = _minimal(tmp_path)
    raw["model"]["family"] = "blip3"
    with pytest.raises(ConfigError, match=r"model\.family: unknown family 'blip3' \(known: .*blip2.*\)"):
        load_config(_write(tmp_path, raw))
    raw["model"]["family"] = "vit_gpt2"  # an alias is accepted and spelled the registry's way
    assert load_config(_write(tmp_path, raw)).model.family == "vit-gpt2"


def test_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal(tmp_path))
    cfg = load_config(path, ["train.lr=1e-4", "train.early_stopping.patience=3", "strategy.lora.target_modules=[query, key]",
                             "generation.num_beams=1", "data.captions.lowercase=true"], out=tmp_path / "elsewhere")
    assert cfg.train.lr == 1e-4 and cfg.train.early_stopping.patience == 3
    assert cfg.strategy.lora.target_modules == ["query", "key"]
    assert cfg.generation.num_beams == 1 and cfg.data.captions.lowercase is True
    assert cfg.output.dir == str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lrr=1"])
    assert str(err.value) == "--set train.lrr: unknown key"
    with pytest.raises(ConfigError, match=r"--set train\.lr: .*number.*'fast'"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match=r"--set train\.lr\.x: train\.lr is not a section"):
        apply_overrides({"train": {"lr": 1.0}}, ["train.lr.x=2"])


def test_generation_section_mirrors_generation_settings(tmp_path: Path) -> None:
    from dataclasses import fields

    from medblip.models.base import GenerationSettings

    raw = _minimal(tmp_path)
    raw["generation"] = {"num_beams": 5, "no_repeat_ngram_size": 3, "prompt": "a picture of"}
    cfg = load_config(_write(tmp_path, raw))
    settings = cfg.generation_settings()
    assert isinstance(settings, GenerationSettings)
    assert (settings.num_beams, settings.no_repeat_ngram_size, settings.prompt) == (5, 3, "a picture of")
    assert set(cfg.generation.model_dump()) == {f.name for f in fields(GenerationSettings)}
    raw["generation"] = {"beams": 5}
    with pytest.raises(ConfigError, match="generation.beams: unknown key"):
        load_config(_write(tmp_path, raw))


def test_check_paths(tmp_path: Path) -> None:
    raw = _minimal(tmp_path)
    raw["data"]["path"] = str(tmp_path / "no-such-data")
    cfg = validate_config(raw, "exp.yaml")
    with pytest.raises(ConfigError, match=r"exp\.yaml: data\.path: .*no-such-data does not exist"):
        check_paths(cfg, "exp.yaml")
    raw = _minimal(tmp_path)
    raw["model"]["name_or_path"] = str(tmp_path / "no-model")
    with pytest.raises(ConfigError, match=r"model\.name_or_path: .*no-model does not exist"):
        check_paths(validate_config(raw), "exp.yaml")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", CLI, "train", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize("problem", ["unknown_key", "missing_data", "unknown_family"])
def test_cli_bad_config_is_one_line(tmp_path: Path, problem: str) -> None:
    raw = _minimal(tmp_path)
    expected = {"unknown_key": "train.lrr: unknown key",
                "missing_data": "data.path:",
                "unknown_family": "unknown family 'blop'"}[problem]
    if problem == "unknown_key":
        raw["train"] = {"lrr": 0.1}
    elif problem == "missing_data":
        raw["data"]["path"] = str(tmp_path / "absent")
    else:
        raw["model"]["family"] = "blop"
    path = _write(tmp_path, raw)
    proc = _cli(str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"medblip: error: {path}") and expected in lines[0]
    if problem == "missing_data":
        assert "does not exist" in lines[0]
