"""The ROCOv2 layout (also the synthetic benchmark's): CSV captions, concepts, image folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from medblip.data import load_dataset
from medblip.errors import DataError


def make_rocov2(root: Path, write_image) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_captions.csv").write_bytes(
        b"ID,Caption\n"
        b"ROCOv2_2023_train_000001,Head CT demonstrating left parotiditis.\n"           # 2
        b'ROCOv2_2023_train_000002,"Chest X-ray, PA view: bilateral effusion."\n'       # 3 quoted comma
        b'ROCOv2_2023_train_000003,"Axial MRI\nshowing a lesion."\n'                    # 4-5 quoted newline
        b"ROCOv2_2023_train_000004,Ultrasound of the kidney.\n"                         # 6 png image
        b"ROCOv2_2023_train_000005,Missing image.\n"                                    # 7
        b"ROCOv2_2023_train_000001,Duplicate.\n"                                        # 8
        b"ROCOv2_2023_train_000006,   \n"                                               # 9 empty caption
        b"ROCOv2_2023_train_000007,Caf\xe9 latte sign.\n"                               # 10 Latin-1 byte
        b"\n"                                                                           # 11 blank
    )
    (root / "train_concepts.csv").write_text(
        "ID,CUIs\nROCOv2_2023_train_000001,C0040405;C0030581\nROCOv2_2023_train_000002,C1306645\n")
    for i, suffix in ((1, ".jpg"), (2, ".jpg"), (3, ".jpg"), (4, ".png"), (6, ".jpg"), (7, ".jpg")):
        write_image(root / "train" / f"ROCOv2_2023_train_00000{i}{suffix}")
    (root / "valid_captions.csv").write_text("ID,Caption\nROCOv2_2023_valid_000001,CT of the abdomen.\n")
    write_image(root / "valid_images" / "ROCOv2_2023_valid_000001.jpg")
    (root / "test_captions.csv").write_text("ID,Caption\nROCOv2_2023_test_000001,Angiogram.\n")
    write_image(root / "test_images" / "test" / "ROCOv2_2023_test_000001.jpg")  # nested archive folder
    return root


@pytest.fixture
def rocov2_root(tmp_path, write_image) -> Path:
    return make_rocov2(tmp_path / "rocov2", write_image)


def test_rocov2_records_splits_and_concepts(rocov2_root):
    ds = load_dataset(rocov2_root)
    assert ds.report.format == "rocov2"
    assert ds.report.kept == {"train": 4, "validation": 1, "test": 1}
    train = {r.id[-1]: r for r in ds.split("train")}
    assert sorted(train) == ["1", "2", "3", "4"]
    assert train["2"].caption == "Chest X-ray, PA view: bilateral effusion."
    assert train["3"].caption == "Axial MRI showing a lesion."
    assert train["4"].image == rocov2_root / "train" / "ROCOv2_2023_train_000004.png"
    assert train["1"].meta["cuis"] == ["C0040405", "C0030581"]
    assert train["3"].meta["cuis"] == []
    assert train["3"].meta["source"].endswith("train_captions.csv:4")
    valid = ds.split("valid")
    assert len(valid) == 1 and valid[0].image == rocov2_root / "valid_images" / "ROCOv2_2023_valid_000001.jpg"
    assert ds.split("test")[0].image.parent.name == "test"


def test_rocov2_bad_rows_are_counted(rocov2_root):
    rep = load_dataset(rocov2_root).report
    assert dict(rep.dropped) == {"image missing": 1, "duplicate id": 1, "empty caption": 1, "invalid UTF-8": 1}
    assert rep.warnings["blank line"] == 1
    assert "train_captions.csv:7: ROCOv2_2023_train_000005: no train/ROCOv2_2023_train_000005.jpg" \
        in rep.examples["image missing"][0]
    assert "train_captions.csv:8: ROCOv2_2023_train_000001 (first at" in rep.examples["duplicate id"][0]
    assert "train_captions.csv:10: " in rep.examples["invalid UTF-8"][0]


def test_rocov2_missing_image_folder_and_bad_header(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "test_captions.csv").write_text("ID,Caption\nX1,Some caption.\n")
    ds = load_dataset(root, require_images=False)
    assert ds.records[0].image is None
    assert ds.report.warnings["images folder missing"] == 1
    (root / "test_captions.csv").write_text("image,text\nX1,Some caption.\n")
    with pytest.raises(DataError, match=r"test_captions\.csv:1: expected a header with columns ID, Caption, "
                                         r"found image, text"):
        load_dataset(root)


def test_rocov2_file_path_selects_its_folder(rocov2_root):
    ds = load_dataset(rocov2_root / "valid_captions.csv")
    assert ds.report.format == "rocov2" and len(ds) == 6
    assert len(load_dataset(rocov2_root / "train_captions.csv", format="rocov2")) == 6
