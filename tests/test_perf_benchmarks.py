"""Smoke runs of benchmarks/*.py on CPU with tiny shapes and minimal steps: JSON fields, no timings asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--json", str(out), "--threads", "1",
                           *args], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def _check_variant(r: dict, rate: str) -> None:
    assert r[rate] > 0 and r["seconds"] > 0 and r["peak_memory_bytes"] > 0 and r["memory_kind"] == "rss"


@pytest.mark.slow
def test_train_throughput_smoke(tmp_path):
    res = _run("train_throughput.py", tmp_path / "t.json", "--device", "cpu", "--shapes", "tiny", "--strategy",
               "decoder_only", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--clock", "cpu")
    assert res["benchmark"] == "train_throughput" and res["strategy"] == "decoder_only"
    assert set(res["results"]) == {"naive", "medblip", "trainer"} and res["ratio"] > 0 and res["ratio_trainer"] > 0
    for r in res["results"].values():
        _check_variant(r, "images_per_second")
    trainer = res["results"]["trainer"]  # medblip.training.train on the same images, from the image cache
    assert trainer["steps"] == 3 and trainer["options"]["image_cache"] and trainer["feature_cache"]["used"]
    assert trainer["images_per_second_after_cache_build"] >= trainer["amortized_images_per_second_3_epochs"] > 0
    # the default (auto) batches by length when the decoder trains on cached features
    assert trainer["options"]["length_buckets"] == "auto" and trainer["options"]["length_buckets_used"]
    assert res["clock"] == "cpu" and res["ratio_trainer_amortized_3_epochs"] > 0
    med = res["results"]["medblip"]
    assert med["options"]["feature_cache"] and med["feature_cache"]["images"] == res["pool_images"]
    assert "amortized_images_per_second_10_epochs" in med
    assert {"torch", "transformers", "cpu", "date"} <= set(res["environment"])


@pytest.mark.slow
def test_caption_throughput_smoke(tmp_path):
    res = _run("caption_throughput.py", tmp_path / "c.json", "--device", "cpu", "--shapes", "tiny", "--batch-size",
               "4", "--batches", "1", "--warmup", "0", "--beams", "3", "--max-new-tokens", "6")
    assert set(res["results"]) == {"naive", "medblip", "evaluate"} and res["ratio"] > 0 and res["ratio_evaluate"] > 0
    for r in res["results"].values():
        _check_variant(r, "captions_per_second")
    assert res["identical_captions"] == 1.0  # fp32 on CPU: the same captions
    # evaluate's predict() captions through the fast captioner, with generate's captions
    assert res["identical_captions_evaluate"] == 1.0 and res["results"]["evaluate"]["captioner"]["path"] == "fast"
    assert res["generation"] == {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 6}


@pytest.mark.slow
def test_loader_throughput_smoke(tmp_path):
    res = _run("loader_throughput.py", tmp_path / "l.json", "--images", "24", "--source-size", "96", "--batch-size",
               "4", "--workers", "0", "--train-steps", "2")
    assert set(res["loaders"]) == {"decode", "cached_uint8", "cached_pil"}
    for r in res["loaders"].values():
        assert r["images_per_second"] > 0 and r["ratio_to_consumption"] > 0
    assert res["consumption"]["images_per_second"] > 0 and res["records"] == 24
    assert res["cache_build"]["summary"]["train"]["status"] == "built"


@pytest.mark.slow
def test_serve_load_smoke(tmp_path):
    for module in ("fastapi", "gradio", "uvicorn", "httpx"):
        pytest.importorskip(module)
    res = _run("serve_load.py", tmp_path / "s.json", "--requests", "16", "--clients", "4", "--sequential", "4",
               "--images", "4", "--max-new-tokens", "6", "--max-batch", "4", "--max-queue", "4", "--burst", "24")
    seq, conc, over = res["sequential"], res["concurrent"], res["overload"]
    assert seq["ok"] == 4 and seq["requests_per_second"] > 0
    assert (conc["ok"], conc["failed"], conc["lost"]) == (16, 0, 0)
    assert 0 < conc["latency"]["p50"] <= conc["latency"]["p95"] and conc["requests_per_second"] > 0
    assert conc["batching"]["requests"] == 16 and 1 <= conc["batching"]["forward_passes"] <= 16
    assert conc["identical_to_alone"] == 1.0  # batched captions are the ones each image gets alone
    assert over["other"] == 0 and over["ok"] + over["rejected_503"] == 24
    assert over["rejected_503"] > 0 and over["rejected_with_retry_after"] == over["rejected_503"]
    assert res["ratio"] > 0 and {"torch", "cpu", "date"} <= set(res["environment"])


@pytest.mark.slow
def test_demo_budget_smoke(tmp_path):
    """The demo's recipe at one tiny budget: steps, side and pointing come back as the demo computes them."""
    from medblip.models import init_tiny

    model = init_tiny("blip", tmp_path / "tiny", seed=0)
    res = _run("demo_budget.py", tmp_path / "b.json", "--model", str(model), "--n", "120", "--epochs", "1",
               "--lr", "1e-3", "--keep", str(tmp_path / "kept"))
    assert (tmp_path / "kept" / "epochs1" / "config.json").is_file()  # the fine-tuned model, for grounding_ceiling
    assert res["benchmark"] == "demo_budget" and res["data"] == {"n": 120, "size": 64, "seed": 0}
    [row] = res["budgets"]
    assert row["epochs"] == 1 and row["steps"] >= 1 and row["train_seconds"] > 0 and row["lr"] == 1e-3
    assert row["one_sided_lesions"] > 0 and 0 <= row["side"] <= 1 and 0.5 <= row["side_majority"] <= 1
    assert row["findings_scored"] > 0 and 0 <= row["pointing"] <= 1 and 0 < row["pointing_uniform"] < 0.5
    assert row["pointing_tolerant"] >= row["pointing"]


@pytest.mark.slow
def test_grounding_ceiling_smoke(tmp_path):
    """Every map, and the model's maps with random weights, is scored on the same findings; the patch grid's
    ideal map points better than a random pointer."""
    from medblip.models import init_tiny
    from medblip.models.tiny import TinySpec

    model = init_tiny("blip", tmp_path / "tiny", seed=0)
    res = _run("grounding_ceiling.py", tmp_path / "g.json", "--model", str(model), "--n", "240",
               "--demo", str(tmp_path / "no-demo"))  # not the checkout's demo_output, if there is one
    assert res["benchmark"] == "grounding_ceiling" and res["data"] == {"n": 240, "size": 64, "seed": 0}
    assert res["normal_images"] > 0
    assert res["findings_scored"] > 0 and res["findings_skipped_few_normals"] >= 0
    maps = res["maps"]
    model_maps = {"feature_anomaly", "attention", "attention_rollout", "gradcam", "saliency"}
    assert set(maps) == {"uniform", "ideal", "pixel_anomaly", "pixel_asymmetry", *model_maps, *{f"random_{m}" for m in model_maps}}
    for row in maps.values():
        assert 0 <= row["pointing"] <= row["pointing_tolerant"] <= 1 and 0 <= row["energy"] <= 1
    assert maps["ideal"]["pointing"] > maps["uniform"]["pointing"]
    spec = TinySpec()
    assert res["grid"] == [spec.image_size // spec.patch_size] * 2
    assert [(h["layer"], h["head"]) for h in res["heads"]] == [
        (layer, head) for layer in range(spec.num_layers) for head in range(spec.num_heads)]


def _bench_module(name: str):
    """A benchmarks/ script imported as a module (its folder on sys.path while it imports bench_utils)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_mirror_asymmetry_cancels_symmetry_and_marks_a_one_sided_spot_and_its_mirror():
    asymmetry = _bench_module("grounding_ceiling")._asymmetry
    grid, patch = 4, 2
    image = np.zeros((3, grid * patch, grid * patch))
    image[:, :, :3] = 0.5
    image[:, :, -3:] = 0.5  # a left-right symmetric "anatomy"
    patches = image.reshape(3, grid, patch, grid, patch).transpose(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    assert np.allclose(asymmetry(patches, grid, patch), 0)
    image[:, 2:4, 4:6] = 1.0  # a spot in the patch at row 1, column 2
    patches = image.reshape(3, grid, patch, grid, patch).transpose(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    got = asymmetry(patches, grid, patch)
    assert got[1, 2] > 0 and got[1, 1] == got[1, 2]  # the spot's patch and its mirror, and no other
    assert np.count_nonzero(got) == 2


def test_side_probe_reads_a_linear_side_and_not_noise():
    """The probe recovers a side that the features hold linearly, and stays near chance on noise."""
    probe = _bench_module("side_probe").probe
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(np.float64)
    noise = rng.normal(size=(400, 30))
    informative = noise.copy()
    informative[:, 3] += 2.0 * (2 * y - 1)
    train, test = np.arange(400) < 300, np.arange(400) >= 300
    assert probe(informative, y, train, test)["accuracy"] >= 0.9
    assert probe(noise, y, train, test)["accuracy"] <= 0.7


@pytest.mark.slow
def test_side_probe_smoke(tmp_path):
    """Pixels, each model's features and halves, its captions, and the random-weights copy: one row each."""
    from medblip.data.synth import generate
    from medblip.models import init_tiny

    data = tmp_path / "data"
    generate(data, 240, seed=0, size=64)
    model = init_tiny("blip", tmp_path / "tiny", seed=0)
    res = _run("side_probe.py", tmp_path / "p.json", "--model", str(model), "--data", str(data))
    assert res["benchmark"] == "side_probe" and res["one_sided_lesions"]["test"] >= 10
    assert [(r["model"], r["features"]) for r in res["rows"]] == [
        ("none", "pixels"), *[(m, f) for m in (str(model), "random weights")
                              for f in ("features", "halves", "its greedy captions (not a probe)")]]
    for r in res["rows"]:
        assert r["accuracy"] is None or 0 <= r["accuracy"] <= 1
        assert "penalty" not in r or r["penalty"] in (1e-3, 1e-2, 1e-1, 1.0)


def test_attention_rollout_traces_outputs_back_to_inputs():
    """grounding_ceiling's rollout (Abnar & Zuidema 2020): where each token attends to itself alone, every
    output is its own input; where every token attends to token 2, each layer gives an output half its own
    token (the residual) and half token 2's; rows stay distributions."""
    import torch

    rollout = _bench_module("grounding_ceiling").rollout
    own = torch.eye(4).expand(1, 2, 4, 4)
    assert torch.allclose(rollout([own, own])[0], torch.eye(4))
    to_two = torch.zeros(1, 2, 4, 4)
    to_two[..., 2] = 1.0
    one_layer = 0.5 * torch.eye(4)
    one_layer[:, 2] += 0.5
    assert torch.allclose(rollout([to_two])[0], one_layer)
    two_layers = rollout([to_two, to_two])[0]
    assert torch.allclose(two_layers, 0.5 * one_layer + 0.5 * torch.eye(4)[2].expand(4, 4))  # row 2 of one_layer is e_2
    assert torch.allclose(two_layers.sum(dim=-1), torch.ones(4))
