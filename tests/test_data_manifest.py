"""Generic CSV/TSV/JSONL manifests, and the real MedPix manifest in ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medblip.data import load_dataset, load_image
from medblip.errors import DataError


def test_jsonl_manifest(tmp_path, write_image):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b.jpg")
    absolute = write_image(tmp_path / "elsewhere" / "c.jpg")
    rows = [
        {"image": "imgs/a.png", "caption": "CT head.", "split": "train", "modality": "CT", "case": 7},
        {"image": "imgs/b.jpg", "caption": "MRI knee.", "split": "valid", "id": "knee-1"},
        {"image": str(absolute), "caption": "X-ray.", "split": "test"},
        {"image": "imgs/missing.png", "caption": "Lost."},
        {"image": "https://example.org/x.png", "caption": "Remote."},
        {"image": "imgs/a.png", "caption": "  "},
        {"image": "imgs/a.png", "caption": "Odd split.", "split": "holdout"},
        {"img": "imgs/a.png", "text": "wrong keys"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")
    lines.insert(4, "[1, 2]")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(("\n".join(lines) + "\n\n").encode() + b'{"image": "imgs/a.png", "caption": "\xff"}\n')

    ds = load_dataset(tmp_path)
    rep = ds.report
    assert rep.format == "manifest" and rep.kept == {"train": 1, "validation": 1, "test": 1}
    a = ds.split("train")[0]
    assert a.id == "imgs/a" and a.image == tmp_path / "imgs" / "a.png"
    assert a.meta["modality"] == "CT" and a.meta["case"] == 7 and a.meta["source"].endswith("manifest.jsonl:1")
    assert ds.split("validation")[0].id == "knee-1"
    assert ds.split("test")[0].image == absolute
    assert dict(rep.dropped) == {"invalid JSON": 2, "image missing": 2, "empty caption": 1,
                                 "unknown split": 1, "missing image/caption field": 1, "invalid UTF-8": 1}
    assert "manifest.jsonl:4: Expecting property name" in rep.examples["invalid JSON"][0]
    assert "manifest.jsonl:5: expected an object, got list" in rep.examples["invalid JSON"][1]
    assert "imgs/missing: no file imgs/missing.png" in rep.examples["image missing"][0]
    assert "remote image 'https://example.org/x.png' is not fetched" in rep.examples["image missing"][1]
    assert "'holdout'" in rep.examples["unknown split"][0]
    assert "manifest.jsonl:12" in rep.examples["invalid UTF-8"][0]
    assert rep.warnings["blank line"] == 1


def test_csv_and_tsv_manifests(tmp_path, write_image):
    write_image(tmp_path / "x.jpg")
    (tmp_path / "data.csv").write_text('Image,Caption,Split,site\nx.jpg,"Axial CT, contrast.",test,A\n'
                                       "x.jpg,short row\n")
    ds = load_dataset(tmp_path / "data.csv")
    rec = ds.records[0]
    assert (rec.id, rec.caption, rec.split, rec.meta["site"]) == ("x", "Axial CT, contrast.", "test", "A")
    assert ds.report.dropped == {"malformed line": 1}
    assert "data.csv:3: expected 4 columns, got 2" in ds.report.examples["malformed line"][0]
    (tmp_path / "data.tsv").write_text("image\tcaption\nx.jpg\tTab separated.\n")
    assert load_dataset(tmp_path / "data.tsv").records[0].caption == "Tab separated."
    (tmp_path / "bad.csv").write_text("path,text\nx.jpg,hello\n")
    with pytest.raises(DataError, match=r"bad\.csv:1: expected a header with columns image and caption"):
        load_dataset(tmp_path / "bad.csv")


def test_jsonl_with_no_usable_keys_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "text": "x"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl: no row has both 'image' and 'caption' \(first row has "
                                         r"path, text\)"):
        load_dataset(tmp_path / "m.jsonl")


@pytest.mark.shared
def test_real_medpix_manifest_loads_all_images(shared_dir: Path):
    root = shared_dir / "medpix-dev"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    ds = load_dataset(root / "manifest.jsonl")
    assert len(ds) == 197 and ds.report.total_dropped == 0
    assert all(isinstance(r.image, Path) and r.image.is_file() for r in ds.records)
    assert {r.meta["case"] for r in ds.records} and all(r.meta["modality"] for r in ds.records)
    img = load_image(ds.records[0].image)
    assert img.mode == "RGB" and max(img.size) == 512
