"""Issue 18, items 6, 8 and 9: what a data check did not check is said, and a bad row or file is a
counted drop with its place, never a silently wrong number or a lost report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file
from typer.testing import CliRunner

import medblip.cli  # noqa: F401  registers the commands
from medblip.cli.app import app
from medblip.evaluation import read_predictions, score_predictions

runner = CliRunner()


def _manifest(root: Path, write_image, n_good: int, bad: dict[str, bytes | Path]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_good):
        write_image(root / f"g{i}.png", size=(24, 16), seed=i)
        rows.append(f"g{i}.png,CT of the chest number {i}.,train")
    for name, content in bad.items():
        if isinstance(content, Path):
            shutil.copyfile(content, root / name)
        else:
            (root / name).write_bytes(content)
        rows.append(f"{name},MRI of the brain.,train")
    (root / "manifest.csv").write_text("image,caption,split\n" + "\n".join(rows) + "\n")
    return root


def test_validate_says_only_a_sample_was_decoded_and_decode_all_finds_the_bad_image(tmp_path, write_image):
    root = _manifest(tmp_path / "m", write_image, 6, {"cut.jpg": b"\xff\xd8\xff\xe0 not really a jpeg"})
    res = runner.invoke(app, ["data", "validate", str(root), "--sample", "0"])
    assert res.exit_code == 0, res.output
    assert "Only a sample of 0 of 7 images was decoded" in res.output
    assert "run with --decode-all to check every image" in res.output

    out = tmp_path / "v.json"
    res = runner.invoke(app, ["data", "validate", str(root), "--decode-all", "--workers", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "All 7 images were decoded; 1 could not be decoded and are counted as dropped" in res.output
    data = json.loads(out.read_text())
    assert data["records"] == 7 and data["usable_records"] == 6
    assert data["images"]["checked"] == "all" and data["images"]["unreadable"] == ["cut"]
    assert "| dropped | unreadable image | 1 |" in out.with_suffix(".md").read_text()


def test_validate_counts_an_invalid_dicom_as_a_drop_and_still_writes_its_report(tmp_path, write_image):
    root = _manifest(tmp_path / "m", write_image, 3, {"bad.dcm": Path(get_testdata_file("badVR.dcm"))})
    out = tmp_path / "report.json"
    res = runner.invoke(app, ["data", "validate", str(root), "--decode-all", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["usable_records"] == 3 and data["images"]["errors"] == 1
    assert "bad.dcm: invalid DICOM value NumberOfFrames='1A'" in data["images"]["error_examples"][0]


def test_validate_with_only_unreadable_images_exits_2(tmp_path, write_image, medblip_cli, capsys):
    root = _manifest(tmp_path / "m", write_image, 0, {"a.jpg": b"garbage", "b.png": b"more garbage"})
    assert medblip_cli("data", "validate", str(root), "--decode-all") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medblip: error:")]
    assert len(errors) == 1 and "no usable records" in errors[0] and "a.jpg" in errors[0]


def test_score_drops_rows_with_an_empty_reference_naming_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "a", "reference": "CT of the chest.", "prediction": "CT of the chest."},
            {"id": "b", "reference": "", "prediction": "MRI of the brain."},
            {"id": "c", "reference": ["  ", "MRI of the brain."], "prediction": "MRI of the brain."},
            {"id": "d", "reference": ["", " "], "prediction": "X-ray."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = score_predictions(read_predictions(path), bootstrap=0, java=False)
    assert result["n_images"] == 2
    assert result["dropped"] == {"empty reference": {"count": 2, "examples": [f"{path}:2", f"{path}:4"]}}
    assert any(f"{path}:2" in w for w in result["warnings"])

    res = runner.invoke(app, ["score", str(path), "--no-java", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert f"2 row(s) with an empty reference dropped, not scored (e.g. {path}:2, {path}:4)" in res.output
