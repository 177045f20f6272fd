"""Hugging Face exports on disk: parquet shards and ``datasets`` arrow files, read with pyarrow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medblip.data import load_dataset, load_image
from medblip.errors import DataError

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _table(rows: list[dict], with_cui: bool = True) -> pa.Table:
    fields = [("image", IMAGE_TYPE), ("image_id", pa.string()), ("caption", pa.string())]
    if with_cui:
        fields.append(("cui", pa.list_(pa.string())))
    schema = pa.schema(fields)
    return pa.Table.from_pylist(rows, schema=schema)


def _write_arrow_stream(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _write_arrow_file(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


@pytest.fixture
def hf_parquet(tmp_path, image_bytes) -> Path:
    root = tmp_path / "ROCOv2-radiology"
    (root / "data").mkdir(parents=True)
    (root / "data" / "local.png").write_bytes(image_bytes(size=(20, 10), fmt="PNG"))
    train = _table([
        {"image": {"bytes": image_bytes(seed=1), "path": "a.jpg"}, "image_id": "T1",
         "caption": " CT of the head. ", "cui": ["C0040405", "C0018670"]},
        {"image": {"bytes": None, "path": "local.png"}, "image_id": "T2", "caption": "MRI.", "cui": None},
        {"image": {"bytes": None, "path": "gone.png"}, "image_id": "T3", "caption": "Missing.", "cui": []},
        {"image": {"bytes": image_bytes(seed=2), "path": None}, "image_id": "T4", "caption": None, "cui": []},
        {"image": {"bytes": image_bytes(seed=3), "path": None}, "image_id": "T1", "caption": "Dup.", "cui": []},
    ])
    pq.write_table(train.slice(0, 3), root / "data" / "train-00000-of-00002.parquet")
    pq.write_table(train.slice(3), root / "data" / "train-00001-of-00002.parquet")
    test = _table([{"image": {"bytes": image_bytes(seed=4), "path": None}, "image_id": "S1",
                    "caption": "Ultrasound.", "cui": ["C0041618"]}])
    pq.write_table(test, root / "data" / "test-00000-of-00001.parquet")
    return root


def test_hf_parquet_shards(hf_parquet):
    ds = load_dataset(hf_parquet)
    rep = ds.report
    assert rep.format == "hf" and rep.kept == {"train": 2, "test": 1}
    t1, t2 = ds.split("train")
    assert isinstance(t1.image, bytes) and load_image(t1.image).size == (32, 24)
    assert t1.caption == "CT of the head." and t1.meta["cuis"] == ["C0040405", "C0018670"]
    assert t2.image == hf_parquet / "data" / "local.png" and t2.meta["cuis"] == []
    assert dict(rep.dropped) == {"image missing": 1, "empty caption": 1, "duplicate id": 1}
    assert "train-00000-of-00002.parquet row 2: T3: image has no bytes" in rep.examples["image missing"][0]
    assert "train-00001-of-00002.parquet row 0: T4" in rep.examples["empty caption"][0]
    assert ds.split("test")[0].meta["cuis"] == ["C0041618"]


def test_hf_arrow_stream_and_file_formats(tmp_path, image_bytes):
    root = tmp_path / "saved"
    rows = [{"image": {"bytes": image_bytes(seed=i), "path": None}, "image_id": f"V{i}",
             "caption": f"Caption {i}."} for i in range(3)]
    # `datasets.save_to_disk` layout: one folder per split, stream-format arrow shards.
    _write_arrow_stream(root / "validation" / "data-00000-of-00001.arrow", _table(rows, with_cui=False))
    _write_arrow_file(root / "train" / "data-00000-of-00001.arrow",
                      _table([{**rows[0], "image_id": "T0"}], with_cui=False))
    (root / "train" / "cache-1234.arrow").write_bytes(b"not read")  # map() cache files are skipped
    ds = load_dataset(root, format="auto")
    assert ds.report.kept == {"train": 1, "validation": 3}
    assert [r.id for r in ds.split("validation")] == ["V0", "V1", "V2"]
    assert "cuis" not in ds.records[0].meta
    one = load_dataset(root / "validation" / "data-00000-of-00001.arrow")
    assert one.report.kept == {"validation": 3}


def test_hf_errors_name_the_file(tmp_path):
    bad = tmp_path / "train-0.parquet"
    pq.write_table(pa.table({"img": [b"x"], "text_x": ["y"]}), bad)
    with pytest.raises(DataError, match=r"train-0\.parquet: expected columns 'image' and 'caption', "
                                         r"found img, text_x"):
        load_dataset(bad)
    corrupt = tmp_path / "d" / "test-0.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataError, match=r"test-0\.parquet: cannot read parquet file"):
        load_dataset(corrupt.parent, format="hf")


def test_hf_split_unknown_is_assumed_train_with_warning(tmp_path, image_bytes):
    path = tmp_path / "export.parquet"
    pq.write_table(_table([{"image": {"bytes": image_bytes(), "path": None}, "image_id": "A",
                            "caption": "x", "cui": None}]), path)
    ds = load_dataset(path)
    assert ds.records[0].split == "train"
    assert ds.report.warnings["split not in file name (assumed train)"] == 1
    assert np.asarray(load_image(ds.records[0].image)).shape == (24, 32, 3)
