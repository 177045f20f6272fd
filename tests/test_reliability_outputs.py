"""Issue 18, item 1: no command deletes files it did not write, nor writes where it was not asked.

Every ``--out`` refuses a non-empty folder that is not an earlier output of the same command (the
``.medblip-output.json`` marker), unless ``--overwrite``; even then, and on reruns, files the command
did not write survive. ``data validate`` and ``score`` without ``--out`` write nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medblip.cli  # noqa: F401  registers the commands
from medblip.cli.app import app
from medblip.outputs import MARKER, OutputError, prepare_output_dir, read_marker

runner = CliRunner()


def _precious(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    note = folder / "precious.txt"
    note.write_text("keep me")
    return note


@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_init_tiny_refuses_a_foreign_folder_and_keeps_its_files_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "u"
    note = _precious(out)
    res = runner.invoke(app, ["model", "init-tiny", "--family", "blip", "--out", str(out)])
    assert isinstance(res.exception, OutputError)
    assert "not an earlier output of `medblip model init-tiny`" in str(res.exception)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]

    res = runner.invoke(app, ["model", "init-tiny", "--family", "blip", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert note.read_text() == "keep me" and (out / "model.safetensors").is_file()
    # the next run recognises its own files and again leaves the user's alone
    res = runner.invoke(app, ["model", "init-tiny", "--family", "blip", "--out", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert note.read_text() == "keep me"


def test_rerun_replaces_only_its_own_files(tmp_path: Path) -> None:
    from medblip.models import init_tiny

    out = init_tiny("blip", tmp_path / "m", seed=0)
    marker = read_marker(out)
    assert marker is not None and marker["command"] == "model init-tiny" and "model.safetensors" in marker["entries"]
    stale = out / "added-later.txt"
    stale.write_text("mine")
    first = (out / "model.safetensors").read_bytes()
    init_tiny("blip", out, seed=1)
    assert stale.read_text() == "mine"
    assert (out / "model.safetensors").read_bytes() != first  # the model itself was replaced


def test_synth_refuses_a_foreign_folder_and_overwrite_keeps_its_files(tmp_path: Path) -> None:
    out = tmp_path / "s"
    note = _precious(out)
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "3", "--size", "40", "--workers", "1"])
    assert isinstance(res.exception, OutputError) and note.read_text() == "keep me"
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--n", "3", "--size", "40", "--workers", "1",
                              "--overwrite"])
    assert res.exit_code == 0, res.output
    assert note.read_text() == "keep me" and (out / "synth.json").is_file()


def test_other_commands_refuse_foreign_folders(tmp_path: Path, small_synth_dir: Path, tiny_blip_dir: Path) -> None:
    import yaml

    from _train_fixtures import experiment

    out = tmp_path / "busy"
    note = _precious(out)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(experiment(tiny_blip_dir, small_synth_dir, tmp_path / "r").model_dump(mode="json")))
    cases = {
        "ablation": ["ablation", str(config), "--out", str(out), "--no-progress"],
        "data cache": ["data", "cache", str(small_synth_dir), "--out", str(out), "--size", "16"],
        "evaluate": ["evaluate", "--model", str(tiny_blip_dir), "--data", str(small_synth_dir), "--out", str(out),
                     "--no-progress"],
        "report": ["report", str(small_synth_dir), "--out", str(out)],
        "explain": ["explain", "--model", str(tiny_blip_dir), "--data", str(small_synth_dir), "--out", str(out)],
        "demo": ["demo", "--quick", "--out", str(out), "--no-progress"],
        "score": ["score", str(tmp_path / "p.jsonl"), "--out", str(out)],
    }
    (tmp_path / "p.jsonl").write_text('{"id": "a", "reference": "x", "prediction": "x"}\n')
    for command, argv in cases.items():
        res = runner.invoke(app, argv)
        assert isinstance(res.exception, OutputError), (command, res.output)
        assert f"`medblip {command}`" in str(res.exception)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"] and note.read_text() == "keep me"


def test_train_refuses_a_foreign_folder_and_evaluate_refuses_a_run_folder(
        tmp_path: Path, small_synth_dir: Path, tiny_blip_dir: Path) -> None:
    from _train_fixtures import experiment
    from medblip.evaluation.predict import evaluate
    from medblip.training.trainer import train

    out = tmp_path / "run"
    _precious(out)
    cfg = experiment(tiny_blip_dir, small_synth_dir, out, max_steps=1)
    with pytest.raises(OutputError, match="not an earlier output of `medblip train`"):
        train(cfg, progress=False)
    # a run folder is not an evaluate folder: evaluate's run.json would replace the run's
    prepare_output_dir(tmp_path / "r2", "train")
    (tmp_path / "r2" / "run.json").write_text("{}")
    with pytest.raises(OutputError, match="holds the output of `medblip train`, not `medblip evaluate`"):
        evaluate(tiny_blip_dir, small_synth_dir, tmp_path / "r2")
    assert (tmp_path / "r2" / "run.json").read_text() == "{}"


def test_every_out_command_offers_overwrite() -> None:
    for argv in (["model", "init-tiny"], ["data", "synth"], ["data", "cache"], ["evaluate"], ["train"], ["report"],
                 ["demo"], ["explain"], ["score"], ["compare"], ["ablation"]):
        res = runner.invoke(app, [*argv, "--help"])
        assert res.exit_code == 0 and "--overwrite" in res.output, argv


def test_validate_and_score_write_nothing_without_out(in_tmp: Path, small_synth_dir: Path) -> None:
    before = sorted(p.name for p in in_tmp.iterdir())
    res = runner.invoke(app, ["data", "validate", str(small_synth_dir), "--sample", "2"])
    assert res.exit_code == 0, res.output
    assert "Dataset validation" in res.output
    (in_tmp / "p.jsonl").write_text('{"id": "a", "reference": "CT of the chest.", "prediction": "CT chest."}\n')
    res = runner.invoke(app, ["score", "p.jsonl", "--no-java", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "| CIDEr |" in res.stdout
    assert sorted(p.name for p in in_tmp.iterdir()) == sorted([*before, "p.jsonl"])


def test_validate_out_names_a_file(tmp_path: Path, small_synth_dir: Path) -> None:
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["data", "validate", str(small_synth_dir), "--sample", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["records"] == 60 and out.with_suffix(".md").is_file()
    res = runner.invoke(app, ["data", "validate", str(small_synth_dir), "--out", str(tmp_path)])
    assert isinstance(res.exception, OutputError) and "names a folder" in str(res.exception)


def test_marker_names_the_command(tmp_path: Path) -> None:
    out = prepare_output_dir(tmp_path / "o", "evaluate")
    assert json.loads((out / MARKER).read_text())["command"] == "evaluate"
    (out / "predictions.jsonl").write_text("")
    assert prepare_output_dir(out, "evaluate") == out  # its own earlier output
    with pytest.raises(OutputError, match="holds the output of `medblip evaluate`"):
        prepare_output_dir(out, "report")
