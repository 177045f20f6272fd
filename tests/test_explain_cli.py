"""``medblip explain``: --help, one image, a dataset split with a progress bar, --evaluate, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import medblip.cli.explain_cmd  # noqa: F401  (registers the command even before cli/__init__ imports it)
from medblip.cli.app import app
from medblip.errors import MedblipError
from medblip.models import init_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny("blip", tmp_path_factory.mktemp("cli-blip") / "m", image_size=32, patch_size=8,
                     captions=["CT of the chest showing a left lung nodule."])


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.data.synth import generate

    out = tmp_path_factory.mktemp("cli-synth") / "synth"
    generate(out, n=24, seed=3, size=48)
    return out


def _run(*args: str) -> object:
    return runner.invoke(app, ["explain", *args], catch_exceptions=False)


def test_help_lists_the_options() -> None:
    res = _run("--help")
    assert res.exit_code == 0
    for opt in ("--model", "--image", "--caption", "--method", "--layers", "--heads", "--aggregate", "--words",
                "--data", "--split", "--limit", "--evaluate", "--out"):
        assert opt in res.output


def _scan(folder: Path) -> Path:
    """A dark 120 x 80 image with one bright disc, as scan.png in ``folder``."""
    img = Image.new("RGB", (120, 80), (20, 20, 20))
    ImageDraw.Draw(img).ellipse((10, 10, 40, 40), fill=(240, 240, 240))
    img.save(folder / "scan.png")
    return folder / "scan.png"


def test_one_image_with_caption_and_words(tiny_blip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run("--model", str(tiny_blip), "--image", str(_scan(tmp_path)), "--caption",
               "CT of the chest showing a left lung nodule.", "--method", "gradcam", "--layers", "-1",
               "--words", "nodule,left", "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    folder = out / "scan"
    doc = json.loads((folder / "explanation.json").read_text())
    assert doc["panels"] == ["nodule", "left"] and doc["settings"]["method"] == "gradcam"
    assert np.load(folder / "token_maps.npy").shape[1:] == (4, 4)
    with Image.open(folder / doc["files"]["overlays"][0]) as im:
        assert im.size == (120, 80)
    assert (folder / "grid.png").is_file() and (out / "summary.md").is_file()
    assert json.loads((out / "summary.json").read_text())["images"][0]["caption"].startswith("CT of")


def test_saliency_maps_of_one_image(tiny_blip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run("--model", str(tiny_blip), "--image", str(_scan(tmp_path)), "--caption",
               "CT of the chest showing a left lung nodule.", "--method", "saliency", "--words", "nodule",
               "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "scan" / "explanation.json").read_text())
    assert doc["settings"]["method"] == "saliency" and doc["panels"] == ["nodule"]
    maps = np.load(out / "scan" / "word_maps.npy")
    assert maps.shape[1:] == tuple(doc["grid"]) and maps.shape[1] > 4  # input pixels, not the 4 x 4 patches
    with pytest.raises(MedblipError, match="layers select cross-attention"):  # before the model is loaded
        _run("--model", str(tiny_blip), "--image", str(_scan(tmp_path)), "--method", "saliency",
             "--layers", "-1", "--out", str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_evaluate_with_the_random_weights_baseline(tiny_blip: Path, synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ground"
    res = _run("--evaluate", "--random-baseline", "--model", str(tiny_blip), "--data", str(synth_dir),
               "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    result = json.loads((out / "grounding.json").read_text())
    assert set(result["summary"]["scores"]) == {"model", "uniform", "centre", "random"}
    assert all(set(row["random"]) == {"hit", "hit_tol", "energy"} for row in result["rows"])
    assert 0.0 <= result["p_value"]["vs_random_weights"] <= 1.0
    assert "random-weights model" in (out / "grounding.md").read_text()
    with pytest.raises(MedblipError, match="--random-baseline applies to --evaluate only"):
        _run("--random-baseline", "--model", str(tiny_blip), "--data", str(synth_dir), "--out", str(tmp_path / "x"))


def test_dataset_split_generated_captions(tiny_blip: Path, synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "many"
    res = _run("--model", str(tiny_blip), "--data", str(synth_dir), "--split", "test", "--limit", "2",
               "--max-new-tokens", "5", "--out", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 2
    for row in summary["images"]:
        assert row["caption_source"] == "generated"
        assert (out / row["folder"] / "grid.png").is_file()


def test_evaluate_writes_json_and_markdown(tiny_blip: Path, synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ground"
    res = _run("--evaluate", "--model", str(tiny_blip), "--data", str(synth_dir), "--split", "test",
               "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    result = json.loads((out / "grounding.json").read_text())
    s = result["summary"]
    assert s["n"] >= 1 and set(s["scores"]) == {"model", "uniform", "centre"}
    assert all(0.0 <= s["scores"][k]["hit"] <= 1.0 for k in s["scores"])
    assert result["caption_source"] == "reference"
    assert "pointing game" in (out / "grounding.md").read_text() and "pointing game" in res.output


@pytest.mark.parametrize(("args", "msg"), [
    (["--image", "missing.png"], "does not exist"),
    (["--image", "IMG", "--method", "occlusion"], "unknown method"),
    (["--image", "IMG", "--method", "saliency", "--heads", "0"], "heads select cross-attention"),
    (["--image", "IMG", "--layers", "a,b"], "comma-separated integers"),
    (["--evaluate"], "--evaluate needs --data"),
    ([], "exactly one of --image"),
    (["--image", "IMG", "--caption", "a nodule", "--words", "mass"], "not in the caption"),
])
def test_user_mistakes_are_one_line_errors(tiny_blip: Path, tmp_path: Path, args: list[str], msg: str) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    args = [str(tmp_path / "img.png") if a == "IMG" else a for a in args]
    res = runner.invoke(app, ["explain", "--model", str(tiny_blip), *args, "--out", str(tmp_path / "o")])
    # medblip.cli.main prints a MedblipError as one line and exits 2
    assert isinstance(res.exception, MedblipError), res.output
    assert msg in str(res.exception) and "\n" not in str(res.exception)
