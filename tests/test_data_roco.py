"""The original ROCO layout: a fixture built here with every quirk, and the real validation metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from medblip.data import CaptionOptions, load_dataset
from medblip.data.roco import find_roco_subsets
from medblip.errors import DataError

WGET = "wget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/1e/ed/{pmc}.tar.gz -P /path/to/Dir"

TRAIN_CAPTIONS = (
    b"ROCO_00001\t CT of the chest showing a nodule (arrow).\n"   # 1 image named <ROCO_ID>.jpg
    b"ROCO_00002\t MRI of the brain.\n"                            # 2 image named <PMCID>_<name> (dlinks)
    b"ROCO_00003\t Ultrasound of the liver.\n"                     # 3 old name from licences.txt only
    b"ROCO_00004\t Radiograph of the hand.\n"                      # 4 no image
    b"\n"                                                          # 5 blank line
    b"ROCO_00001\t Duplicate of the first record.\n"               # 6 duplicate id
    b"ROCO_00006\t Axial CT\twith contrast.\n"                     # 7 tab inside the caption
    b"ROCO_00007\t Bad bytes \xff here.\n"                         # 8 not UTF-8
    b"ROCO_00008\t   \n"                                           # 9 empty caption
    b"ROCO_00009 no tab on this line\n"                            # 10 malformed
)


def _write(folder: Path, name: str, text: str | bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def make_roco(root: Path, write_image) -> Path:
    """``root/data/{train,validation,test}/...`` in the ROCO release layout; returns ``root``."""
    train = root / "data" / "train" / "radiology"
    _write(train, "captions.txt", TRAIN_CAPTIONS)
    _write(train, "keywords.txt", "ROCO_00001\t\tchest\tnodule\nROCO_00002\t\tbrain\n")
    _write(train, "cuis.txt", "ROCO_00001\t\tC0817096\tC0028259\n")
    _write(train, "semtypes.txt",
           "ROCO_00001\t\tT023\tBody Part, Organ, or Organ Component\tT033\tFinding\n")
    _write(train, "dlinks.txt", f"ROCO_00002\t{WGET.format(pmc='PMC222')}\tfig2.jpg\n"
                                f"ROCO_00004\t{WGET.format(pmc='PMC444')}\thand.jpg\n")
    _write(train, "licences.txt", "ROCO_ID,PMC_ID,CC\nROCO_00001,PMC111_a.jpg,CC BY\n"
                                  "ROCO_00003,PMC333_us.png,CC BY-NC\n")
    for name in ("ROCO_00001.jpg", "PMC222_fig2.jpg", "PMC333_us.png", "ROCO_00006.jpg"):
        write_image(train / "images" / name)
    val = root / "data" / "validation" / "non-radiology"
    _write(val, "captions.txt", "ROCO_10001\t Photograph of a skin lesion.\n")
    write_image(val / "images" / "ROCO_10001.jpg")
    test = root / "data" / "test" / "radiology"
    _write(test, "captions.txt", "ROCO_20001\t Chest X-ray.\n")
    write_image(test / "images" / "ROCO_20001.jpg")
    return root


@pytest.fixture
def roco_root(tmp_path, write_image) -> Path:
    return make_roco(tmp_path / "roco", write_image)


def test_roco_records_meta_and_both_image_names(roco_root):
    ds = load_dataset(roco_root, roco_subsets=("radiology", "non-radiology"))
    assert ds.report.format == "roco"
    assert [r.id for r in ds.split("train")] == ["ROCO_00001", "ROCO_00002", "ROCO_00003", "ROCO_00006"]
    by_id = {r.id: r for r in ds.records}
    images = roco_root / "data" / "train" / "radiology" / "images"
    assert by_id["ROCO_00001"].image == images / "ROCO_00001.jpg"
    assert by_id["ROCO_00002"].image == images / "PMC222_fig2.jpg"
    assert by_id["ROCO_00003"].image == images / "PMC333_us.png"
    first = by_id["ROCO_00001"]
    assert first.caption == "CT of the chest showing a nodule (arrow)."  # leading space removed
    assert first.meta["keywords"] == ["chest", "nodule"]
    assert first.meta["cuis"] == ["C0817096", "C0028259"]
    assert first.meta["semtypes"] == [{"code": "T023", "name": "Body Part, Organ, or Organ Component"},
                                      {"code": "T033", "name": "Finding"}]
    assert (first.meta["licence"], first.meta["pmc_id"], first.meta["subset"]) == ("CC BY", "PMC111", "radiology")
    assert by_id["ROCO_00002"].meta["pmc_id"] == "PMC222"
    assert by_id["ROCO_00002"].meta["original_name"] == "fig2.jpg"
    assert by_id["ROCO_10001"].split == "validation" and by_id["ROCO_10001"].meta["subset"] == "non-radiology"
    assert ds.report.kept == {"train": 4, "validation": 1, "test": 1}


def test_roco_quirks_are_counted_with_file_and_line(roco_root):
    ds = load_dataset(roco_root, roco_subsets=("radiology", "non-radiology"))
    rep = ds.report
    assert dict(rep.dropped) == {"image missing": 1, "duplicate id": 1, "invalid UTF-8": 1,
                                 "empty caption": 1, "malformed line": 1}
    assert rep.warnings["blank line"] == 1
    assert rep.warnings["tab inside caption (replaced by a space)"] == 1
    ex = rep.examples
    assert ex["duplicate id"][0].endswith("captions.txt:6: ROCO_00001 (first at " +
                                          str(roco_root / "data/train/radiology/captions.txt") + ":1)")
    assert "captions.txt:8: " in ex["invalid UTF-8"][0]
    assert "captions.txt:9: ROCO_00008" in ex["empty caption"][0]
    assert "captions.txt:10: expected 'ID<TAB>caption'" in ex["malformed line"][0]
    assert "captions.txt:4: ROCO_00004: none of images/{ROCO_00004.jpg" in ex["image missing"][0]
    assert "PMC444_hand.jpg" in ex["image missing"][0]
    assert next(r for r in ds.records if r.id == "ROCO_00006").caption == "Axial CT with contrast."
    first = next(r for r in ds.records if r.id == "ROCO_00001")
    assert first.caption.startswith("CT of the chest")  # the duplicate did not replace the first
    summary = rep.summary()
    assert "6 records kept (train 4, validation 1, test 1); 5 dropped" in summary
    assert "dropped: duplicate id: 1" in summary


def test_roco_keep_missing_images_and_caption_options(roco_root):
    ds = load_dataset(roco_root, require_images=False,
                      caption_options=CaptionOptions(remove_panel_markers=True, lowercase=True))
    missing = next(r for r in ds.records if r.id == "ROCO_00004")
    assert missing.image is None
    assert ds.report.warnings["image missing"] == 1 and "image missing" not in ds.report.dropped
    assert ds.report.missing_images == 1
    assert next(r for r in ds.records if r.id == "ROCO_00001").caption == "ct of the chest showing a nodule."


@pytest.mark.parametrize("sub", ["", "data", "data/train", "data/train/radiology"])
def test_roco_root_may_be_parent_data_split_or_subset(roco_root, sub):
    ds = load_dataset(roco_root / sub, format="roco", roco_subsets=("radiology", "non-radiology"))
    expected = 6 if sub in ("", "data") else 4
    assert len(ds) == expected


def test_roco_split_filter_and_errors(roco_root, tmp_path):
    assert {r.split for r in load_dataset(roco_root, splits=["valid", "test"], roco_subsets=("radiology", "non-radiology"))} == {"validation", "test"}
    odd = tmp_path / "misc" / "radiology"
    _write(odd, "captions.txt", "ROCO_1\t x\n")
    with pytest.raises(DataError, match=r"cannot tell the ROCO split.*found misc/"):
        find_roco_subsets(odd)
    with pytest.raises(DataError, match="no ROCO layout found"):
        load_dataset(tmp_path / "misc", format="roco")


def test_roco_loads_the_radiology_subset_by_default(roco_root, tmp_path):
    ds = load_dataset(roco_root)
    assert {r.meta["subset"] for r in ds.records} == {"radiology"}
    assert "ROCO_10001" not in {r.id for r in ds.records}
    assert ds.report.excluded == {"ROCO non-radiology subset (roco_subsets)": 1}
    assert "not loaded: ROCO non-radiology subset (roco_subsets): 1 records" in ds.report.summary()
    only = load_dataset(roco_root, roco_subsets=["non-radiology"])
    assert [r.id for r in only.records] == ["ROCO_10001"]
    # a subset folder named on its own is loaded whatever it is
    assert [r.id for r in load_dataset(roco_root / "data/validation/non-radiology", format="roco")] == ["ROCO_10001"]
    with pytest.raises(DataError, match="'xray' is not one of radiology, non-radiology"):
        load_dataset(roco_root, roco_subsets=["xray"])


# ---------------------------------------------------------------------------------------------
# The real ROCO validation metadata in ../shared/roco-text (no images)

@pytest.fixture(scope="module")
def real_roco(request):
    shared = request.getfixturevalue("shared_dir")
    root = shared / "roco-text"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root, load_dataset(root, require_images=False, roco_subsets=("radiology", "non-radiology"))


@pytest.mark.shared
def test_real_roco_metadata_parses_completely(real_roco):
    root, ds = real_roco
    subsets = [r.meta["subset"] for r in ds.records]
    assert subsets.count("radiology") == 8180 and subsets.count("non-radiology") == 611
    assert ds.report.kept == {"validation": 8791}
    assert ds.report.total_dropped == 0
    assert ds.report.warnings["image missing"] == 8791
    assert all(r.image is None and r.caption and not r.caption.startswith(" ") for r in ds.records)
    first = ds.records[0]
    assert first.id == "ROCO_00020" and first.meta["pmc_id"] == "PMC3970251"
    assert first.meta["licence"] == "CC BY" and first.meta["cuis"][:2] == ["C4300092", "C0040395"]
    assert {"code": "T046", "name": "Pathologic Function"} in first.meta["semtypes"]
    assert all(r.meta["licence"] and r.meta["pmc_id"] for r in ds.records)
    # Records without CUIs are exactly those whose cuis.txt line has none (e.g. French captions).
    no_cui_lines = sum(
        1 for sub in ("radiology", "non-radiology")
        for line in (root / "validation" / sub / "cuis.txt").read_text().splitlines()
        if not line.split("\t", 1)[1].strip()
    )
    assert 0 < no_cui_lines < 500
    assert sum(1 for r in ds.records if not r.meta["cuis"]) == no_cui_lines


@pytest.mark.shared
def test_real_roco_without_images_reports_every_record_missing(real_roco):
    root, _ = real_roco
    ds = load_dataset(root)  # the radiology subset (the default)
    rep = ds.report
    assert len(ds) == 0 and rep.dropped == {"image missing": 8180}
    summary = rep.summary()
    assert "0 records kept (none); 8180 dropped" in summary
    assert "dropped: image missing: 8180" in summary
    assert "validation/radiology/captions.txt:1: ROCO_00020: no images/ folder" in summary
    assert "images folder missing: 1" in summary
    assert "not loaded: ROCO non-radiology subset (roco_subsets): 611 records" in summary
    assert "text-only release" in summary


@pytest.mark.shared
def test_validate_reports_both_roco_subsets(shared_dir, tmp_path, medblip_cli, capsys):
    """The study's default keeps the 8,180 radiology records and says that 611 non-radiology ones were left out."""
    import json

    out = tmp_path / "v.json"
    assert medblip_cli("data", "validate", str(shared_dir / "roco-text"), "--allow-missing-images",
                       "--sample", "0", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert result["records"] == 8180
    assert result["roco_subsets"] == {"loaded": {"radiology": 8180},
                                      "not_loaded": {"ROCO non-radiology subset (roco_subsets)": 611}}
    assert "ROCO subsets loaded: radiology 8180; not loaded: ROCO non-radiology subset" in capsys.readouterr().out
    assert medblip_cli("data", "validate", str(shared_dir / "roco-text"), "--allow-missing-images", "--sample", "0",
                       "--roco-subsets", "radiology,non-radiology", "--out", str(out)) == 0
    assert json.loads(out.read_text())["roco_subsets"]["loaded"] == {"radiology": 8180, "non-radiology": 611}
