"""Issue 18, items 3, 4 and 5: a resume continues the same run or is refused with what differs, and
only one process writes a run folder at a time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _train_fixtures import experiment, train_one_thread
from medblip.errors import ConfigError, MedblipError
from medblip.evaluation.predict import evaluate
from medblip.locks import LOCK_FILE, FolderLocked, output_lock

REPO = Path(__file__).resolve().parents[1]
SCORING = {"java": False, "meteor": False}


def _evaluate(model: Path, data: Path, out: Path, **kw):
    return evaluate(model, data, out, split="test", limit=3, batch_size=3, bootstrap=0, progress=False,
                    generation={"max_new_tokens": 3}, score_options=SCORING, **kw)


# -- item 3: evaluate resumes only the same model on the same images -----------------------------------------
def test_evaluate_refuses_to_resume_with_a_changed_model(tmp_path: Path, tiny_blip_dir: Path,
                                                         small_synth_dir: Path) -> None:
    from medblip.models import init_tiny

    model = tmp_path / "model"
    shutil.copytree(tiny_blip_dir, model)
    out = tmp_path / "ev"
    assert _evaluate(model, small_synth_dir, out).predictions.generated == 3
    assert _evaluate(model, small_synth_dir, out).predictions.skipped == 3  # same everything: resumed
    init_tiny("blip", model, image_size=64, seed=7)  # another model saved at the same path
    with pytest.raises(MedblipError, match=r"model that has changed since .*model\.safetensors.*--overwrite"):
        _evaluate(model, small_synth_dir, out)
    before = (out / "predictions.jsonl").read_text()
    assert _evaluate(model, small_synth_dir, out, overwrite=True).predictions.generated == 3
    assert (out / "predictions.jsonl").read_text() != before


def test_evaluate_refuses_to_mix_two_datasets_with_the_same_ids(tmp_path: Path, tiny_blip_dir: Path,
                                                                small_synth_dir: Path) -> None:
    from medblip.data.synth import generate

    other = tmp_path / "other"
    generate(other, 60, seed=9, size=64, workers=1)  # the same SYNTH_... ids, other images
    out = tmp_path / "ev"
    _evaluate(tiny_blip_dir, small_synth_dir, out)
    with pytest.raises(MedblipError, match=r"was captioned from another image .*mix two data sets"):
        _evaluate(tiny_blip_dir, other, out)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(str(small_synth_dir) in r["image"]["path"] for r in rows)  # nothing of the other set was added


# -- item 4: train --resume with other settings ------------------------------------------------------------
@pytest.fixture
def short_run(tmp_path: Path, tiny_blip_dir: Path, small_synth_dir: Path) -> tuple[Path, Path]:
    """A 2-step run (resumable checkpoint) on a private copy of the data."""
    data = tmp_path / "data"
    shutil.copytree(small_synth_dir, data)
    run = tmp_path / "run"
    result = train_one_thread(experiment(tiny_blip_dir, data, run, max_steps=2, save_every_steps=1, lr=0.01,
                                         val_generate=False))
    assert result.status == "completed"
    return data, run


def test_resume_with_changed_settings_is_refused_listing_them(short_run, tiny_blip_dir: Path) -> None:
    data, run = short_run
    changed = experiment(tiny_blip_dir, data, run, max_steps=2, save_every_steps=1, lr=0.02, seed=7,
                         val_generate=False)
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.01 -> 0\.02; train\.seed: 42 -> 7; train\.lr, train\.seed "
                                          r"cannot change on resume"):
        train_one_thread(changed, resume=True)
    with pytest.raises(ConfigError, match="train.seed cannot change"):
        train_one_thread(changed, resume=True, resume_with_changes=True)
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert config["train"]["lr"] == 0.01  # the run's record is untouched


def test_harmless_changes_need_resume_with_changes_and_are_recorded(short_run, tiny_blip_dir: Path) -> None:
    data, run = short_run
    longer = experiment(tiny_blip_dir, data, run, max_steps=3, save_every_steps=1, lr=0.01, val_generate=False)
    with pytest.raises(ConfigError, match=r"train\.max_steps: 2 -> 3; .*pass --resume-with-changes"):
        train_one_thread(longer, resume=True)
    result = train_one_thread(longer, resume=True, resume_with_changes=True)
    assert result.status == "completed" and result.global_step == 3
    changes = json.loads((run / "run.json").read_text())["resume_changes"]
    assert changes[-1]["changes"] == ["train.max_steps: 2 -> 3"]


def test_resume_after_the_data_changed_is_refused(short_run, tiny_blip_dir: Path) -> None:
    data, run = short_run
    captions = data / "train_captions.csv"
    captions.write_text(captions.read_text().replace("CT", "MRI", 1))
    same = experiment(tiny_blip_dir, data, run, max_steps=2, save_every_steps=1, lr=0.01, val_generate=False)
    with pytest.raises(ConfigError, match=r"data: files changed since the run started \(train_captions\.csv\)"):
        train_one_thread(same, resume=True)


def test_resume_refusal_through_the_cli_is_one_line(short_run, tiny_blip_dir: Path, tmp_path: Path,
                                                    medblip_cli, capsys) -> None:
    data, run = short_run
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(experiment(tiny_blip_dir, data, run, max_steps=2, save_every_steps=1, lr=0.01,
                                             val_generate=False).model_dump(mode="json")))
    assert medblip_cli("train", str(cfg), "--resume", "--set", "train.lr=0.05", "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medblip: error: {cfg}: --resume: the run in {run} was started with other settings or files: "
                   "train.lr: 0.01 -> 0.05; train.lr cannot change on resume: resume with the run's own settings, "
                   "or start a new run with --out"]


# -- item 5: one writer per run folder ------------------------------------------------------------------------
def test_a_locked_run_folder_is_refused(tmp_path: Path, tiny_blip_dir: Path, small_synth_dir: Path) -> None:
    run = tmp_path / "run"
    cfg = experiment(tiny_blip_dir, small_synth_dir, run, max_steps=1, val_generate=False)
    with output_lock(run, "train"):
        with pytest.raises(FolderLocked, match=rf"in use by `medblip train` \(pid {os.getpid()} on "):
            train_one_thread(cfg)
        assert not (run / "metrics.jsonl").exists()
    assert not (run / LOCK_FILE).exists()  # released


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path, tiny_blip_dir: Path,
                                                        small_synth_dir: Path, capfd) -> None:
    run = tmp_path / "run"
    holder = ("import os, sys; from medblip.locks import output_lock; "
              "lock = output_lock(sys.argv[1], 'train'); lock.__enter__(); os.kill(os.getpid(), 9)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", holder, str(run)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    dead_pid = json.loads((run / LOCK_FILE).read_text())["pid"]
    result = train_one_thread(experiment(tiny_blip_dir, small_synth_dir, run, max_steps=1, val_generate=False))
    assert result.status == "completed"
    assert f"taking over a stale lock of `medblip train` (pid {dead_pid}" in capfd.readouterr().err
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_trainings_into_one_folder_at_once(tmp_path: Path, tiny_blip_dir: Path, small_synth_dir: Path) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(experiment(tiny_blip_dir, small_synth_dir, run, max_steps=500,
                                             val_generate=False).model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "medblip", "train", str(cfg), "--no-progress"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / LOCK_FILE).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"medblip: error: {run}: in use by `medblip train` (pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGTERM)  # stops after the current step with a checkpoint
        first.communicate(timeout=300)
    assert first.returncode in (0, 143)
    assert not (run / LOCK_FILE).exists()
