"""The README's "Caption your own images" section, run as written in a folder that has what it names:
``runs/my-blip`` (a tiny BLIP), ``scans/`` (an image and a 5-slice CT series), ``more/``, ``archive/``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _readme import code_blocks, commands
from test_caption_cli import spicy_blip  # noqa: F401  (fixture)
from test_data_inputs import write_series

SECTION = "Caption your own images"
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def workspace(spicy_blip, tmp_path, monkeypatch):  # noqa: F811
    shutil.copytree(spicy_blip, tmp_path / "runs" / "my-blip")
    rng = np.random.default_rng(1)
    for rel in ("scans/chest.png", "more/a/b.png", "more/c.png", "archive/x/1.png", "archive/2.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(tmp_path / rel)
    write_series(tmp_path / "scans" / "ct", 5)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_example_runs_as_written(workspace):
    import medblip

    (block,) = code_blocks(SECTION, "python")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    m = medblip.load("runs/my-blip")
    assert printed[0] == str(m.caption(["scans/chest.png", "scans/ct/IM0001.dcm"], num_beams=3))
    assert printed[1] == str(m.caption(["scans/chest.png"], max_new_tokens=20))
    expl = m.explain("scans/chest.png")
    assert printed[2] == f"{expl.caption} {expl.words} {expl.heatmaps().shape}"
    assert expl.heatmaps().shape == (len(expl.words), 36, 44)


def test_cli_examples_run_as_written(workspace, medblip_cli, capsys):
    lines = commands(code_blocks(SECTION, "bash")[0])
    assert len(lines) == 3 and all(argv[0] == "medblip" for argv in lines)
    for argv in lines:
        assert medblip_cli(*argv[1:]) == 0, argv
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in printed] == ["scans/chest.png", "scans/ct/IM0003.dcm"]
    with (workspace / "captions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == ["scans/chest.png", "scans/ct/IM0003.dcm", "more/a/b.png", "more/c.png"]
    assert json.loads((workspace / "captions.run.json").read_text())["config"]["generation"]["num_beams"] == 3
    slices = [json.loads(x) for x in (workspace / "slices.jsonl").read_text().splitlines()]
    assert [r["instance_number"] for r in slices] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_archive_example_runs_as_written(workspace):
    """On a machine without GPUs accelerate runs it as one process; tests/test_caption_distributed.py
    runs the same command under 2 CPU processes."""
    (argv,) = commands(code_blocks(SECTION, "bash")[1])
    assert argv[:2] == ["accelerate", "launch"]
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (workspace / "archive.csv").open(newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == ["archive/2.png", "archive/x/1.png"]
