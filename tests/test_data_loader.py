"""Format auto-detection, split selection and deterministic subsetting in load_dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medblip.data import detect_format, load_dataset
from medblip.errors import DataError


def _rocov2(root: Path, write_image, n: int = 10) -> Path:
    for split in ("train", "valid"):
        lines = ["ID,Caption"] + [f"{split}_{i:03d},Caption number {i} of {split}." for i in range(n)]
        (root / f"{split}_captions.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}_captions.csv").write_text("\n".join(lines) + "\n")
        for i in range(n):
            write_image(root / split / f"{split}_{i:03d}.jpg", size=(8, 8))
    return root


def test_detect_each_layout(tmp_path, write_image):
    rocov2 = _rocov2(tmp_path / "v2", write_image, n=1)
    (rocov2 / "facts.jsonl").write_text("{}\n")  # the synthetic benchmark's extra file must not confuse it
    assert detect_format(rocov2) == ("rocov2", rocov2)
    roco = tmp_path / "roco" / "data" / "test" / "radiology"
    roco.mkdir(parents=True)
    (roco / "captions.txt").write_text("ROCO_1\t x\n")
    assert detect_format(tmp_path / "roco")[0] == "roco"
    assert detect_format(roco / "captions.txt") == ("roco", roco)
    hf = tmp_path / "hf" / "data"
    hf.mkdir(parents=True)
    pq.write_table(pa.table({"image": [b"x"], "caption": ["c"]}), hf / "train-0.parquet")
    assert detect_format(tmp_path / "hf")[0] == "hf"
    man = tmp_path / "man"
    man.mkdir()
    (man / "manifest.csv").write_text("image,caption\n")
    assert detect_format(man)[0] == "manifest"
    assert detect_format(man / "manifest.csv") == ("manifest", man / "manifest.csv")


def test_fatal_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: unrecognised dataset layout: expected ROCO"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(DataError, match=r"unrecognised file type \.docx"):
        load_dataset(tmp_path / "notes.docx")
    with pytest.raises(DataError, match=r"unknown dataset format 'coco'"):
        load_dataset(tmp_path, format="coco")
    with pytest.raises(DataError, match=r"unknown split 'holdout'"):
        load_dataset(tmp_path / "empty", format="manifest", splits=["holdout"])


def test_limit_is_deterministic_per_split_and_keeps_order(tmp_path, write_image):
    root = _rocov2(tmp_path / "v2", write_image, n=10)
    a = load_dataset(root, limit=3, seed=1)
    b = load_dataset(root, limit=3, seed=1)
    c = load_dataset(root, limit=3, seed=2)
    ids = [r.id for r in a.records]
    assert ids == [r.id for r in b.records]
    assert ids != [r.id for r in c.records]
    assert a.report.kept == {"train": 3, "validation": 3}
    assert a.report.limited == {"train": [10, 3], "validation": [10, 3]}
    train_ids = [r.id for r in a.split("train")]
    assert train_ids == sorted(train_ids)  # load order preserved
    assert len(load_dataset(root, limit=50).records) == 20  # a limit above the size keeps all
    assert "limit: train subset to 3 of 10" in a.report.summary()


def test_split_selection_accepts_aliases(tmp_path, write_image):
    root = _rocov2(tmp_path / "v2", write_image, n=2)
    ds = load_dataset(root, splits=["valid"])
    assert ds.splits == ["validation"] and len(ds) == 2
    assert ds.report.to_dict()["kept"] == {"validation": 2}
    with pytest.raises(DataError, match="unknown split"):
        ds.split("holdout")
