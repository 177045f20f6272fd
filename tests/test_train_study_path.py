"""The study path as a user runs it: selection on validation CIDEr, label smoothing, checkpoints that plain
transformers decode as medblip does, the load options of 7B-class models, quiet progress, and the commands
the configs' comments give (YAML's `no`, two CPU processes with accelerate)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from _train_fixtures import experiment, train_captions
from _train_fixtures import train_one_thread as run
from medblip.errors import ConfigError, MedblipError
from medblip.models import create_model, init_tiny
from medblip.models.base import GenerationSettings
from medblip.training.config import load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


def rows(run_dir: Path, split: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("split") == split]


@pytest.fixture(scope="module")
def word_blip(small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP whose tokenizer knows the benchmark's words (so a few steps give non-zero CIDEr)."""
    return init_tiny("blip", tmp_path_factory.mktemp("word-blip") / "m", image_size=64, seed=0,
                     captions=train_captions(small_synth_dir))


# -- 3: early stopping and the best checkpoint on validation CIDEr -------------------------------------------

@pytest.mark.slow
def test_best_checkpoint_is_selected_by_validation_cider(word_blip: Path, small_synth_dir: Path,
                                                         tmp_path: Path) -> None:
    from medblip.data import load_dataset, load_image
    from medblip.training.validation import validation_scores

    out = tmp_path / "run"
    cfg = experiment(word_blip, small_synth_dir, out, max_steps=24, batch_size=8, lr=5e-3, warmup_steps=0,
                     eval_every_steps=4, val_subset=6, log_every=4, seed=0, early_stopping={"metric": "CIDEr"})
    result = run(cfg)
    val = rows(out, "validation")
    ciders = [r["CIDEr"] for r in val]
    assert len(val) >= 5 and max(ciders) > 0 and len(set(ciders)) > 1, "CIDEr must vary for the test to mean anything"
    best = val[ciders.index(max(ciders))]
    assert (result.best_metric_name, result.best_metric, result.best_step) == ("CIDEr", max(ciders), best["step"])
    assert [r["improved"] for r in val] == [i == 0 or c > max(ciders[:i]) for i, c in enumerate(ciders)]
    # checkpoints/best is the model of that step: its validation captions score that CIDEr again
    model = create_model(result.best_checkpoint)
    records = load_dataset(small_synth_dir, splits=["validation"]).records[:6]
    preds = model.generate([load_image(r.image).resize((64, 64)) for r in records], cfg.generation_settings())
    again = validation_scores([{"id": r.id, "reference": r.caption, "prediction": p} for r, p in zip(records, preds,
                                                                                                     strict=True)])
    assert again["CIDEr"] == pytest.approx(result.best_metric, abs=1e-9)


def test_a_caption_metric_that_is_not_reported_is_a_config_error(tiny_blip_dir: Path, small_synth_dir: Path,
                                                                 tmp_path: Path) -> None:
    cfg = experiment(tiny_blip_dir, small_synth_dir, tmp_path / "r", max_steps=1, early_stopping={"metric": "CIDEr-X"})
    with pytest.raises(ConfigError, match=r"'CIDEr-X' is not reported \(available: val_loss, .*CIDEr"):
        run(cfg)


# -- 4: label smoothing --------------------------------------------------------------------------------------

def test_label_smoothing_defaults_to_the_familys_and_changes_the_loss(word_blip: Path, small_synth_dir: Path,
                                                                      tmp_path: Path) -> None:
    quick = {"max_steps": 6, "batch_size": 8, "lr": 5e-3, "warmup_steps": 0, "val_subset": 4,
             "val_generate": False, "log_every": 1, "seed": 0}
    default = run(experiment(word_blip, small_synth_dir, tmp_path / "default", **quick))
    plain = run(experiment(word_blip, small_synth_dir, tmp_path / "plain", **quick, label_smoothing=0.0))
    info = json.loads((tmp_path / "default" / "run.json").read_text())
    assert info["label_smoothing"] == 0.1, "BLIP's own training code smooths by 0.1"
    assert info["config"]["train"]["label_smoothing"] is None, "the config as given: the family's default"
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["label_smoothing"] == 0.0
    saved = json.loads((Path(default.best_checkpoint) / "config.json").read_text())
    assert saved["text_config"]["label_smoothing"] == 0.1
    smoothed, unsmoothed = rows(tmp_path / "default", "train"), rows(tmp_path / "plain", "train")
    assert smoothed[-1]["loss"] != pytest.approx(unsmoothed[-1]["loss"], rel=1e-3)
    assert default.final_metrics["val_loss"] != pytest.approx(plain.final_metrics["val_loss"], rel=1e-3)
    # the loss transformers computes is torch's label-smoothed cross-entropy of the shifted tokens
    from PIL import Image

    m = create_model(default.best_checkpoint)
    m.set_label_smoothing(0.1)
    batch = m.collate([Image.new("RGB", (64, 64), (200, 40, 40))], ["ct of the chest"])
    with torch.no_grad():
        logits = m.model(**batch).logits
        expected = torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], label_smoothing=0.1)
        assert float(m.loss(batch)) == pytest.approx(float(expected), rel=1e-5)


def test_label_smoothing_of_a_family_without_it_in_transformers(twin: Any) -> None:
    """BLIP-2 OPT's transformers loss has no smoothing: medblip's equals it at 0.0 and is torch's smoothed
    cross-entropy at 0.1."""
    from PIL import Image

    m = create_model(twin("Salesforce/blip2-opt-2.7b"))
    assert m.default_label_smoothing == 0.0
    batch = m.collate([Image.new("RGB", (32, 32), (200, 40, 40))], ["ct of the chest"])
    with torch.no_grad():
        native = m.loss(batch)
        m.set_label_smoothing(0.0)
        out = m.model(**m._forward_inputs(m._to_device(batch)))
        assert m.smoothed_loss(out.logits, batch["labels"]) == pytest.approx(float(native), rel=1e-5)
        m.set_label_smoothing(0.1)
        logits, labels = out.logits[0, :-1], batch["labels"][0, 1:]  # causal LM: position t predicts t + 1
        expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        assert float(m.loss(batch)) == pytest.approx(float(expected), rel=1e-5)


# -- 7: the load options of the large models ---------------------------------------------------------------

def test_model_load_options_in_the_config(tiny_blip_dir: Path, small_synth_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    cfg = experiment(tiny_blip_dir, small_synth_dir, tmp_path / "r", max_steps=1)
    raw = cfg.model_dump()
    raw["model"].update(max_length=12, device_map="cpu")
    opts = validate_config(raw).model.family_options()
    assert opts == {"max_length": 12, "device_map": "cpu"}
    # the device map places the weights: a device given as well (the trainer's) is not applied on top
    model = create_model(tiny_blip_dir, device="meta", **opts)
    assert model.device.type == "cpu"
    assert model._max_length() == 12
    raw["model"].update(device_map=None, load_in_8bit=True)
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(MedblipError, match=r"load_in_8bit needs bitsandbytes, .*pip install 'medblip\[quantization\]'"):
            create_model(tiny_blip_dir, **validate_config(raw).model.family_options())
    with pytest.raises(ConfigError, match="quantized weights cannot be trained with strategy full; use strategy lora"):
        run(validate_config(raw))


def test_explain_takes_dtype_and_evaluates_device_choice(tiny_blip_dir: Path, tmp_path: Path, write_image: Any,
                                                          medblip_cli: Any) -> None:
    image = write_image(tmp_path / "x.png", size=(64, 64))
    assert medblip_cli("explain", "--model", str(tiny_blip_dir), "--image", str(image), "--dtype", "bfloat16",
                       "--max-new-tokens", "3", "--out", str(tmp_path / "ex"), "--no-progress") == 0
    assert json.loads((tmp_path / "ex" / "summary.json").read_text())["images"][0]["caption"] is not None


# -- 8: checkpoints carry the run's generation settings ------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_decodes_with_plain_transformers_as_medblip_does(word_blip: Path, small_synth_dir: Path,
                                                                   tmp_path: Path, twin: Any) -> None:
    from PIL import Image
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        BlipForConditionalGeneration,
        GenerationConfig,
        VisionEncoderDecoderModel,
        pipeline,
    )

    import medblip

    images = [Image.new("RGB", (64, 64), (30 * i, 90, 160)) for i in range(2)]
    # a run whose captions are longer than transformers' default length (20): the pipeline must not cut them
    raw = experiment(word_blip, small_synth_dir, tmp_path / "run", max_steps=1, val_subset=2,
                     val_generate=False).model_dump()
    result = run(validate_config({**raw, "generation": {"num_beams": 1, "max_new_tokens": 30, "min_new_tokens": 30}}))
    ckpt = Path(result.best_checkpoint)
    saved = json.loads((ckpt / "generation_config.json").read_text())
    assert (saved["num_beams"], saved["max_new_tokens"], saved["min_new_tokens"]) == (1, 30, 30)
    ours = create_model(ckpt).generate(images, GenerationSettings(num_beams=1, max_new_tokens=30, min_new_tokens=30))
    assert all(len(c.split()) > 15 for c in ours)
    pipe = pipeline("image-text-to-text", model=str(ckpt))
    assert [pipe(images=im, text="")[0]["generated_text"].strip() for im in images] == ours
    plain = BlipForConditionalGeneration.from_pretrained(ckpt)
    proc = AutoProcessor.from_pretrained(ckpt)
    out = plain.generate(**proc(images=images, return_tensors="pt"), generation_config=GenerationConfig.from_pretrained(ckpt))
    assert [t.strip() for t in proc.batch_decode(out, skip_special_tokens=True)] == ours
    # greedy settings need no argument at all: BLIP's text config carries the length limits
    out = plain.generate(**proc(images=images, return_tensors="pt"))
    assert [t.strip() for t in proc.batch_decode(out, skip_special_tokens=True)] == ours
    assert medblip.load(ckpt).caption(images) == ours, "medblip.load decodes with the checkpoint's settings"
    # beam search too, on a family whose generate reads generation_config.json itself
    vit = create_model(twin("nlpconnect/vit-gpt2-image-captioning"))
    beams = GenerationSettings(num_beams=3, max_new_tokens=8, min_new_tokens=8)
    vit.save(tmp_path / "vit", generation=beams)
    assert vit.model.generation_config.num_beams != 3, "saving leaves the live model's settings alone"
    plain_vit = VisionEncoderDecoderModel.from_pretrained(tmp_path / "vit")
    ids = plain_vit.generate(pixel_values=vit.pixel_values(images))
    assert vit.decode(ids) == vit.generate(images, beams)
    # BLIP-2 generates through its inner language model, as BLIP does: the length limits need no argument
    blip2 = create_model(twin("Salesforce/blip2-opt-2.7b"))
    greedy = GenerationSettings(num_beams=1, max_new_tokens=7, min_new_tokens=7)
    blip2.save(tmp_path / "blip2", generation=greedy)
    plain_blip2 = AutoModelForImageTextToText.from_pretrained(tmp_path / "blip2")
    proc2 = AutoProcessor.from_pretrained(tmp_path / "blip2")
    out = plain_blip2.generate(**proc2(images=images, text=[""] * len(images), return_tensors="pt"))
    ours2 = blip2.generate(images, greedy)
    assert [t.strip() for t in proc2.batch_decode(out, skip_special_tokens=True)] == ours2
    assert medblip.load(tmp_path / "blip2").caption(images) == ours2


# -- 9: --no-progress silences transformers' bars, and a library caller gets its setting back ----------------

@pytest.mark.slow
def test_no_progress_silences_library_bars_and_restores_them(tiny_blip_dir: Path, small_synth_dir: Path,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "medblip", "evaluate", "--model", str(tiny_blip_dir), "--data",
                           str(small_synth_dir), "--limit", "2", "--num-beams", "1", "--max-new-tokens", "3",
                           "--bootstrap", "0", "--no-java", "--out", str(tmp_path / "ev"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr
    from transformers.utils import logging as tf_logging

    from medblip.progress import library_progress

    assert tf_logging.is_progress_bar_enabled()
    with library_progress(False):
        assert not tf_logging.is_progress_bar_enabled()
    assert tf_logging.is_progress_bar_enabled()
    run(experiment(tiny_blip_dir, small_synth_dir, tmp_path / "r", max_steps=1, val_subset=2, val_generate=False))
    assert tf_logging.is_progress_bar_enabled(), "train() restores the caller's setting"


# -- 10: what users type, and the commands the config comments give ---------------------------------------

def test_yaml_no_and_off_are_the_strings_users_typed(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {path: d}\noutput: {dir: o}\n"
                    "train: {mixed_precision: no, cache_features: off, deterministic: yes}\n", encoding="utf-8")
    cfg = load_config(path, ["train.mixed_precision=no", "train.val_generate=off", "train.sdpa=on"])
    assert (cfg.train.mixed_precision, cfg.train.cache_features, cfg.train.deterministic) == ("no", "off", True)
    assert (cfg.train.val_generate, cfg.train.sdpa) == (False, "on")
    shipped = load_config(REPO / "configs" / "blip_full.yaml", ["train.mixed_precision=no"])
    assert shipped.train.mixed_precision == "no"


def test_accelerate_cpu_flag_that_starts_one_process_is_refused(medblip_cli: Any, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # what `accelerate launch --cpu --num_processes 2` hands the one process it starts
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert medblip_cli("train", str(REPO / "configs" / "synth_blip_full.yaml")) == 2
    assert "accelerate launch --multi_gpu --num_processes N -m medblip train CONFIG" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="the accelerate CLI is not installed")
def test_accelerate_launch_command_of_ddp_yaml_trains_in_two_processes(tmp_path: Path) -> None:
    """configs/accelerate/ddp.yaml's CPU command, as written (the config's inputs made smaller by --set)."""
    text = (REPO / "configs" / "accelerate" / "ddp.yaml").read_text()
    line = next(ln.strip("# ").strip() for ln in text.splitlines() if "synth_blip_full.yaml" in ln)
    assert line == "accelerate launch --multi_gpu --num_processes 2 -m medblip train configs/synth_blip_full.yaml"
    from medblip.data.synth import generate

    generate(tmp_path / "demo" / "synth-1440", 24, seed=0, size=64, splits=(0.5, 0.25, 0.25), workers=1)
    init_tiny("blip", tmp_path / "demo" / "models" / "tiny-blip-128", image_size=64, seed=0)
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [accelerate, *line.split()[1:], "--set", "train.max_steps=2", "--set", "train.batch_size=4",
            "--set", "train.val_subset=4", "--set", "train.save_every_steps=null", "--no-progress"]
    argv[argv.index("--num_processes"):argv.index("--num_processes")] = ["--main_process_port",
                                                                          str(29600 + os.getpid() % 300)]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "demo" / "runs" / "synth-blip-full"
    assert json.loads((run_dir / "cost.json").read_text())["num_processes"] == 2
    assert json.loads((run_dir / "run.json").read_text())["distributed"]["num_processes"] == 2
