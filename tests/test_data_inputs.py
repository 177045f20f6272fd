"""find_inputs: files, folders, glob patterns, manifests, DICOM series and multi-frame files (no model)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medblip.data import load_image
from medblip.data.inputs import find_inputs
from medblip.errors import ConfigError, ImageError
from test_data_images import _dicom


def write_series(folder: Path, n: int, *, uid: str | None = None, suffix: str = ".dcm") -> tuple[str, list[Path]]:
    """``n`` CT slices of one series; file names sort in reverse slice order (IM<n> is slice 1).

    Slice k holds HU values around 40 * k inside the window (centre 40, width 400), so slices differ.
    Returns (series UID, paths by InstanceNumber).
    """
    uid = uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        hu = (np.arange(64, dtype=np.int32).reshape(8, 8) * 5 - 160 + 40 * k)
        name = f"IM{n - k:04d}{suffix}"
        paths.append(_dicom(folder / name, (hu + 1024).astype(np.uint16), SeriesInstanceUID=uid,
                            InstanceNumber=k + 1, ImagePositionPatient=[0.0, 0.0, 2.5 * k],
                            ImageOrientationPatient=[1, 0, 0, 0, 1, 0], RescaleSlope=1, RescaleIntercept=-1024,
                            WindowCenter=40, WindowWidth=400))
    return uid, paths


def test_files_folders_globs_and_missing_inputs(tmp_path, write_image):
    a = write_image(tmp_path / "scans" / "a.png")
    b = write_image(tmp_path / "scans" / "deep" / "er" / "b.jpg")
    write_image(tmp_path / "scans" / ".hidden" / "h.png")
    (tmp_path / "scans" / "notes.txt").write_text("not an image")
    c = write_image(tmp_path / "other" / "c.tif")
    (tmp_path / "broken.png").write_bytes(b"not a png")  # found now, skipped when decoded
    scan = find_inputs([tmp_path / "scans", str(tmp_path / "other" / "*.tif"), tmp_path / "broken.png",
                        tmp_path / "nope.png", str(tmp_path / "none" / "*.jpg")])
    assert [i.path for i in scan.items] == [a, b, c, tmp_path / "broken.png"]
    assert [i.id for i in scan.items] == [os.path.abspath(p) for p in (a, b, c, tmp_path / "broken.png")]
    assert scan.skipped == [(str(tmp_path / "nope.png"), "no such file or folder"),
                            (str(tmp_path / "none" / "*.jpg"), "no file matches this pattern")]
    assert scan.ignored == 1  # notes.txt; the hidden folder is not searched
    # the same file reached twice (folder and pattern) is one item
    assert len(find_inputs([tmp_path / "scans", str(tmp_path / "scans" / "**" / "*.jpg")]).items) == 2


def test_series_are_grouped_by_uid_and_the_middle_slice_is_chosen(tmp_path):
    uid1, slices1 = write_series(tmp_path / "study" / "s1", 5)
    uid2, slices2 = write_series(tmp_path / "study" / "s2", 4, suffix="")  # no suffix: found by the DICM magic
    _, lone = write_series(tmp_path / "study", 1)  # a single file of a third series
    scan = find_inputs([tmp_path / "study"], series="middle")
    by_uid = {i.series_uid: i for i in scan.items}
    assert len(scan.items) == 3 and scan.series == 2
    assert by_uid[uid1].path == slices1[2] and by_uid[uid1].instance_number == 3  # 5 slices: the 3rd
    assert by_uid[uid2].path == slices2[2] and by_uid[uid2].instance_number == 3  # 4 slices: the upper middle
    # windowed as medblip's reader windows it: the very pixels load_image gives for that file
    assert np.array_equal(np.asarray(by_uid[uid1].load()), np.asarray(load_image(slices1[2])))
    # a series split over two inputs is still one series
    split = find_inputs([*slices1[:2], str(tmp_path / "study" / "s1" / "IM000[1-2].dcm"), slices1[2]])
    assert [(i.series_uid, i.instance_number) for i in split.items] == [(uid1, 3)]


def test_series_all_gives_every_slice_in_instance_order(tmp_path):
    uid, slices = write_series(tmp_path / "s", 5)
    scan = find_inputs([tmp_path / "s"], series="all")
    assert [i.path for i in scan.items] == slices
    assert [i.instance_number for i in scan.items] == [1, 2, 3, 4, 5]
    assert {i.series_uid for i in scan.items} == {uid}
    with pytest.raises(ConfigError, match="--series must be one of middle, all"):
        find_inputs([tmp_path / "s"], series="first")


def test_multi_frame_dicom_middle_and_every_frame():
    path = Path(get_testdata_file("rtdose.dcm"))  # 15 frames
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 15
    (middle,) = find_inputs([path]).items
    assert middle.frame is None and middle.series_uid == ds.SeriesInstanceUID
    frames = find_inputs([path], series="all").items
    assert [i.frame for i in frames] == list(range(15))
    assert frames[4].id == f"{os.path.abspath(path)}#4" and frames[4].label == f"{path}#4"
    # frame k is the k-th frame, scaled like the reader scales a single-frame file
    arr = ds.pixel_array.astype(np.float64) * float(ds.get("DoseGridScaling", 1.0))
    for k in (0, 7, 14):
        got = np.asarray(frames[k].load())[..., 0].astype(np.int32)
        f = arr[k]
        expected = np.rint((f - f.min()) * 255.0 / (f.max() - f.min())) if f.max() > f.min() else np.zeros_like(f)
        assert np.abs(got - expected).max() <= 1
    assert np.array_equal(np.asarray(middle.load()), np.asarray(frames[7].load()))
    with pytest.raises(ImageError, match="frame 15 does not exist"):
        load_image(path, frame=15)


def test_broken_dicom_is_found_and_fails_to_load_naming_the_file(tmp_path):
    # pydicom reads what it can of a header; what is broken shows when the pixels are decoded, where
    # `medblip caption` skips and lists the file (tests/test_caption_cli.py)
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    ok = _dicom(tmp_path / "ok.dcm", np.zeros((4, 4), dtype=np.uint16))
    bad, good = find_inputs([tmp_path]).items
    assert (bad.path, good.path, bad.series_uid) == (tmp_path / "bad.dcm", ok, None)
    with pytest.raises(ImageError, match=r"bad\.dcm"):
        bad.load()


def test_image_only_manifest_lists_its_images(tmp_path, write_image):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b.png")
    (tmp_path / "m.csv").write_text("image,patient\nimgs/a.png,P1\nimgs/missing.png,P2\nimgs/b.png,P1\n")
    scan = find_inputs([tmp_path / "m.csv"])
    assert [(i.id, i.path) for i in scan.items] == [("imgs/a", tmp_path / "imgs" / "a.png"),
                                                    ("imgs/b", tmp_path / "imgs" / "b.png")]
    assert len(scan.skipped) == 1 and "imgs/missing" in scan.skipped[0][1]
