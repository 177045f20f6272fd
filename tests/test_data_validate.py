"""Dataset statistics and the ``medblip data validate`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medblip.cli  # noqa: F401  registers the commands
from medblip.cli.app import app
from medblip.data import Dataset, LoadReport, Record, load_dataset
from medblip.data.validate import caption_stats, image_stats, render_markdown, validate_dataset
from medblip.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _manifest(root: Path, write_image) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_image(root / "a.png", size=(40, 20), mode="L")
    write_image(root / "b.jpg", size=(60, 30))
    (root / "broken.jpg").write_bytes(b"")
    rows = [("a.png", "one", "train"), ("b.jpg", "one two three", "train"),
            ("broken.jpg", "one two three four five", "test"), ("gone.png", "lost", "test")]
    (root / "manifest.csv").write_text("image,caption,split\n" + "".join(f"{i},{c},{s}\n" for i, c, s in rows))
    return root


def test_caption_stats_values():
    recs = [Record(str(i), None, " ".join(["w"] * n), "train", {}) for i, n in enumerate([1, 2, 3, 4, 10])]
    stats = caption_stats(recs)
    assert stats == {"count": 5, "mean": 4.0, "median": 3.0, "p95": 8.8, "min": 1, "max": 10}
    assert caption_stats([])["mean"] is None


def test_image_stats_sample_is_deterministic_and_counts_errors(tmp_path, write_image):
    ds = load_dataset(_manifest(tmp_path / "m", write_image))
    stats = image_stats(ds.records, sample=10, seed=0)
    assert (stats["with_image"], stats["sampled"], stats["decoded"], stats["errors"]) == (3, 3, 2, 1)
    assert "broken.jpg: empty file (0 bytes)" in stats["error_examples"][0]
    assert stats["width"] == {"min": 40, "median": 50.0, "max": 60}
    assert stats["modes"] == {"L": 1, "RGB": 1} and stats["formats"] == {"PNG": 1, "JPEG": 1}
    one = image_stats(ds.records, sample=1, seed=5)
    assert one == image_stats(ds.records, sample=1, seed=5) and one["sampled"] == 1


def test_validate_dataset_and_markdown(tmp_path, write_image):
    ds = load_dataset(_manifest(tmp_path / "m", write_image))
    result = validate_dataset(ds, sample=5)
    assert result["records"] == 3 and result["format"] == "manifest"
    assert result["splits"]["train"]["caption_words"]["mean"] == 2.0
    assert result["load_report"]["dropped"] == {"image missing": 1}
    json.dumps(result)  # JSON-ready
    md = render_markdown(result)
    assert "| train | 2 | 2 | 2 | 2.9 | 3 |" in md
    assert "| dropped | image missing | 1 |" in md
    assert "- decoded: 2, errors: 1" in md
    empty = validate_dataset(Dataset([], LoadReport(format="x", path="p")))
    assert "No images to sample." in render_markdown(empty)


def test_cli_validate_writes_json_and_markdown(tmp_path, write_image):
    root = _manifest(tmp_path / "m", write_image)
    out = tmp_path / "reports" / "val.json"
    result = CliRunner().invoke(app, ["data", "validate", str(root), "--out", str(out), "--sample", "4"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["records"] == 3 and data["splits"]["test"]["records"] == 1
    assert data["options"]["sample"] == 4 and data["images"]["errors"] == 1
    assert out.with_suffix(".md").read_text().startswith("# Dataset validation:")
    assert "| dropped | image missing | 1 |" in result.output
    assert f"wrote {out}" in result.output


def test_cli_validate_limit_seed_and_no_files_without_out(tmp_path, write_image):
    root = _manifest(tmp_path / "m", write_image)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["data", "validate", str(root), "--limit", "1", "--seed", "3",
                                          "--format", "manifest", "--split", "train"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert "limit: train subset to 1 of 2" in result.output and "1 usable records" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # printed, nothing written


def test_cli_validate_zero_usable_records_is_fatal(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "test_captions.csv").write_text("ID,Caption\nX1,Caption one.\nX2,Caption two.\n")
    out = tmp_path / "v.json"
    result = CliRunner().invoke(app, ["data", "validate", str(root), "-o", str(out)])
    assert isinstance(result.exception, DataError)
    assert "no usable records" in str(result.exception)
    assert "use --allow-missing-images" in str(result.exception)
    assert json.loads(out.read_text())["load_report"]["dropped"] == {"image missing": 2}  # still written
    ok = CliRunner().invoke(app, ["data", "validate", str(root), "-o", str(out), "--allow-missing-images"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["records"] == 2


@pytest.mark.shared
def test_cli_validate_real_roco_text_only(shared_dir, tmp_path):
    root = shared_dir / "roco-text"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    out = tmp_path / "roco.json"
    result = CliRunner().invoke(app, ["data", "validate", str(root), "-o", str(out), "--allow-missing-images",
                                      "--roco-subsets", "radiology,non-radiology"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["records"] == 8791 and data["load_report"]["warnings"]["image missing"] == 8791
    words = data["caption_words"]
    # The README of ../shared states: mean ~20 words, median 16, p95 ~48, max ~350.
    assert 18 <= words["mean"] <= 22 and words["median"] == 16 and 44 <= words["p95"] <= 52
    assert 300 <= words["max"] <= 400


def test_subprocess_help_and_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    helped = subprocess.run([sys.executable, "-m", "medblip", "data", "validate", "--help"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0
    assert "--allow-missing-images" in helped.stdout and "--format" in helped.stdout
    failed = subprocess.run([sys.executable, "-m", "medblip", "data", "validate", str(tmp_path / "nope")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [f"medblip: error: {tmp_path / 'nope'}: no such file or folder"]
