"""The trainer's frozen-encoder feature cache (train.cache_features): decoder_only runs trained from cached
encoder features give the losses and weights of the plain runs, resume exactly, and say what they did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

# fixtures tiny_blip_dir, small_synth_dir: tests/_train_fixtures.py (conftest plugin)
from _train_fixtures import experiment
from _train_fixtures import train_one_thread as run
from medblip.errors import ConfigError
from medblip.training import checkpoint as ckpt
from medblip.training.config import ExperimentConfig, validate_config

# 48 training images, batch 4, 2 batches per step: 6 optimizer steps per epoch, 12 in all. The batch
# order is fixed (length_buckets off): by default (auto) a cached run batches by length and an uncached
# one does not, and these tests compare the two on the same batches.
QUICK = {"epochs": 2, "batch_size": 4, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 1, "log_every": 1,
         "val_subset": 6, "val_generate": False, "deterministic": True, "seed": 0, "length_buckets": "off"}


def config(model: Path, data: Path, out: Path, strategy: str = "decoder_only", **train: Any) -> ExperimentConfig:
    raw = experiment(model, data, out, **{**QUICK, **train}).model_dump()
    return validate_config({**raw, "strategy": {"name": strategy}})


def rows(run_dir: Path, split: str = "train") -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("split") == split]


def weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))


def assert_same_run(got: Path, ref: Path, *, exact: bool = False) -> None:
    a, b = rows(got), rows(ref)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), (x, y)
    va, vb = rows(got, "validation"), rows(ref, "validation")
    assert [r["step"] for r in va] == [r["step"] for r in vb]
    for x, y in zip(va, vb, strict=True):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-5)
    wa, wb = weights(got), weights(ref)
    assert wa.keys() == wb.keys()
    for key in wa:
        if exact:
            assert torch.equal(wa[key], wb[key]), key
        else:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


def cache_record(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    info = json.loads((run_dir / "run.json").read_text())
    cost = json.loads((run_dir / "cost.json").read_text())
    return info["feature_cache"], cost["feature_cache"]


@pytest.fixture(scope="module")
def blip_runs(tmp_path_factory: pytest.TempPathFactory, tiny_blip_dir: Path, small_synth_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("feature-cache-blip")
    out = {}
    for mode in ("off", "on"):
        result = run(config(tiny_blip_dir, small_synth_dir, root / mode, cache_features=mode))
        assert result.status == "completed" and result.global_step == 12
        out[mode] = root / mode
    return out


def test_cached_blip_run_matches_uncached(blip_runs: dict[str, Path], tiny_blip_dir: Path) -> None:
    assert_same_run(blip_runs["on"], blip_runs["off"])
    # the decoder trained, the encoder did not move
    before, after = load_file(str(tiny_blip_dir / "model.safetensors")), weights(blip_runs["on"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_model."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("text_decoder."))


def test_run_records_the_cache(blip_runs: dict[str, Path]) -> None:
    info, cost = cache_record(blip_runs["on"])
    assert info == cost
    assert info["used"] is True and info["mode"] == "on" and info["records"] == 48 and info["computed"] == 48
    assert info["build_seconds"] > 0 and info["build_seconds_total"] == info["build_seconds"]
    assert info["memory_bytes"] > 0 and info["estimated_bytes"] == info["memory_bytes"]
    off, _ = cache_record(blip_runs["off"])
    assert off["used"] is False and "off" in off["reason"]
    state = ckpt.load_trainer_state(blip_runs["on"] / "checkpoints" / "last")
    assert state["feature_cache_seconds"] == pytest.approx(info["build_seconds"], abs=1e-3)
    # building the cache is part of what training cost (the first epoch's train time)
    epochs = json.loads((blip_runs["on"] / "cost.json").read_text())["epochs"]
    assert epochs[0]["train_seconds"] >= info["build_seconds"] and epochs[0]["images"] == 48


def test_cached_resume_matches_uninterrupted(blip_runs: dict[str, Path], tiny_blip_dir: Path, small_synth_dir: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config(tiny_blip_dir, small_synth_dir, out, cache_features="on")
    first = run(cfg, should_stop=lambda step: step == 3)
    assert first.status == "interrupted" and first.global_step == 3
    second = run(cfg, resume=True)
    assert second.status == "completed" and second.global_step == 12
    assert_same_run(out, blip_runs["on"], exact=True)
    info = json.loads((out / "run.json").read_text())
    assert info["feature_cache"]["used"] and info["resumes"][-1]["feature_cache"]["used"]
    assert second.cost.feature_cache["build_seconds_total"] > second.cost.feature_cache["build_seconds"]


def test_disk_cache_is_reused(blip_runs: dict[str, Path], tiny_blip_dir: Path, small_synth_dir: Path,
                              tmp_path: Path) -> None:
    features = tmp_path / "features"
    first = run(config(tiny_blip_dir, small_synth_dir, tmp_path / "a", feature_cache_dir=str(features)))
    assert first.cost.feature_cache["used"] and first.cost.feature_cache["computed"] == 48
    assert [p.name for p in features.iterdir()] == [first.cost.feature_cache["key"]]
    second = run(config(tiny_blip_dir, small_synth_dir, tmp_path / "b", feature_cache_dir=str(features)))
    assert second.cost.feature_cache["computed"] == 0  # read back, not encoded again
    assert_same_run(tmp_path / "a", blip_runs["on"])
    assert_same_run(tmp_path / "b", blip_runs["on"])


def test_cached_vit_gpt2_run_matches_uncached(small_synth_dir: Path, tmp_path: Path) -> None:
    from medblip.models import init_tiny

    model = init_tiny("vit-gpt2", tmp_path / "tiny-vit-gpt2", image_size=64, seed=0)
    for mode in ("off", "auto"):
        result = run(config(model, small_synth_dir, tmp_path / mode, cache_features=mode, epochs=2))
        assert result.status == "completed" and result.cost.feature_cache["used"] == (mode == "auto")
    assert_same_run(tmp_path / "auto", tmp_path / "off")


def test_on_with_a_trained_encoder_is_a_config_error(tiny_blip_dir: Path, small_synth_dir: Path,
                                                     tmp_path: Path) -> None:
    cfg = config(tiny_blip_dir, small_synth_dir, tmp_path / "run", strategy="full", cache_features="on")
    with pytest.raises(ConfigError, match=r"train\.cache_features: on is impossible with strategy full") as err:
        run(cfg)
    assert "decoder_only" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_cache_features_config_values(tmp_path: Path) -> None:
    raw = {"model": {"name_or_path": "m"}, "data": {"path": str(tmp_path)}, "output": {"dir": str(tmp_path)}}
    assert validate_config(raw).train.cache_features == "auto"
    # YAML 1.1 reads a bare on / off as a boolean
    for value, expected in ((True, "on"), (False, "off"), ("off", "off")):
        assert validate_config({**raw, "train": {"cache_features": value}}).train.cache_features == expected
    with pytest.raises(ConfigError, match="train.cache_features"):
        validate_config({**raw, "train": {"cache_features": "sometimes"}})


def test_collate_ids_and_text_only_batches(tiny_blip_dir: Path, small_synth_dir: Path) -> None:
    from medblip.data import load_dataset
    from medblip.models import create_model
    from medblip.training.data import AdapterCollate, CaptionDataset

    adapter = create_model(str(tiny_blip_dir))
    records = load_dataset(small_synth_dir, splits=["train"]).split("train")[:3]
    collate = AdapterCollate(adapter)
    full = collate([CaptionDataset(records, 64, with_ids=True)[i] for i in range(3)])
    text = collate([CaptionDataset(records, 64, with_ids=True, load_images=False)[i] for i in range(3)])
    assert full["ids"] == text["ids"] == [r.id for r in records]
    assert "pixel_values" in full and "pixel_values" not in text
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(full[key], text[key])
    assert "ids" not in collate([CaptionDataset(records, 64)[0]])


@pytest.mark.slow
def test_two_process_ddp_cached_matches_one_process(blip_runs: dict[str, Path], tiny_blip_dir: Path,
                                                    small_synth_dir: Path, tmp_path: Path) -> None:
    """2 CPU processes (gloo), each encoding half of the images: == 1 process x batch 4 x grad_accum 2."""
    import os
    import subprocess

    out = tmp_path / "ddp"
    path = tmp_path / "ddp.yaml"
    path.write_text(config(tiny_blip_dir, small_synth_dir, out, cache_features="on", grad_accum=1).to_yaml(),
                    encoding="utf-8")
    launcher = tmp_path / "launch.py"
    launcher.write_text("import medblip.cli.train_cmd\nfrom medblip.cli import main\nmain()\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29900 + os.getpid() % 90), str(launcher), "train", str(path),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info, _ = cache_record(out)
    assert info["used"] and info["records"] == 48
    a, b = rows(out), rows(blip_runs["on"])
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (x, y)
    wa, wb = weights(out), weights(blip_runs["on"])
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


def test_cached_runs_batch_by_length_by_default(blip_runs: dict[str, Path], tiny_blip_dir: Path,
                                                small_synth_dir: Path, tmp_path: Path) -> None:
    """train.length_buckets: auto buckets exactly when the decoder trains on cached features, and says so."""
    out = tmp_path / "auto"
    result = run(config(tiny_blip_dir, small_synth_dir, out, length_buckets="auto"))
    assert result.status == "completed" and result.global_step == 12
    info = json.loads((out / "run.json").read_text())
    assert info["feature_cache"]["used"]
    assert info["length_buckets"] == {"used": True, "setting": "auto",
                                      "why": "decoder trains on cached encoder features: padding dominates its step"}
    plain = json.loads((blip_runs["on"] / "run.json").read_text())["length_buckets"]
    assert plain == {"used": False, "setting": "off", "why": "train.length_buckets: off"}
    # other batches, so other losses: the order really changed
    assert [r["loss"] for r in rows(out)] != [r["loss"] for r in rows(blip_runs["on"])]
    uncached = tmp_path / "uncached"
    run(config(tiny_blip_dir, small_synth_dir, uncached, length_buckets="auto", cache_features="off", epochs=1))
    assert json.loads((uncached / "run.json").read_text())["length_buckets"]["used"] is False


def test_length_buckets_reads_yaml_booleans(tiny_blip_dir: Path, small_synth_dir: Path, tmp_path: Path) -> None:
    # configs written before auto existed say true / false (and YAML 1.1 reads a bare on / off so)
    assert config(tiny_blip_dir, small_synth_dir, tmp_path, length_buckets=True).train.length_buckets == "on"
    assert config(tiny_blip_dir, small_synth_dir, tmp_path, length_buckets=False).train.length_buckets == "off"
    with pytest.raises(ConfigError, match="length_buckets"):
        config(tiny_blip_dir, small_synth_dir, tmp_path, length_buckets="sometimes")
