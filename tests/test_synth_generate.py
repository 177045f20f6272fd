"""Synthetic benchmark on disk: determinism, ROCOv2 layout, masks/bboxes, and visible differences."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medblip.data.synth import MODALITIES, MODALITY_CUIS, generate, load_facts, split_counts
from medblip.errors import DataError, MedblipError
from medblip.outputs import OutputError

SIZE = 64


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "synth"
    generate(out, 90, seed=3, size=SIZE)
    return out


@pytest.fixture(scope="module")
def facts(bench: Path) -> dict[str, dict]:
    return load_facts(bench)


def test_same_seed_gives_identical_bytes_and_workers_do_not_matter(tmp_path: Path) -> None:
    a = _tree_bytes(generate(tmp_path / "a", 14, seed=5, size=48, workers=1).out)
    b = _tree_bytes(generate(tmp_path / "b", 14, seed=5, size=48, workers=2).out)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    c = _tree_bytes(generate(tmp_path / "c", 14, seed=6, size=48).out)
    assert a.keys() == c.keys()
    differing = [k for k in a if k.endswith(".jpg") and a[k] != c[k]]
    assert len(differing) == 14
    assert a["train_captions.csv"] != c["train_captions.csv"]


def test_first_images_do_not_depend_on_n(tmp_path: Path) -> None:
    small = load_facts(generate(tmp_path / "s", 4, seed=2, size=40).out)
    large = load_facts(generate(tmp_path / "l", 9, seed=2, size=40).out)
    for key, row in small.items():
        assert {k: v for k, v in row.items() if k not in {"split", "image"}} == \
               {k: v for k, v in large[key].items() if k not in {"split", "image"}}


def test_rocov2_layout_and_csv_round_trip(bench: Path, facts: dict[str, dict]) -> None:
    assert len(facts) == 90
    seen: set[str] = set()
    for split, folder in (("train", "train"), ("validation", "valid"), ("test", "test")):
        with (bench / f"{folder}_captions.csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["ID", "Caption"]
        with (bench / f"{folder}_concepts.csv").open(newline="", encoding="utf-8") as fh:
            concepts = list(csv.reader(fh))
        assert concepts[0] == ["ID", "CUIs"]
        assert [r[0] for r in rows[1:]] == [r[0] for r in concepts[1:]]
        for image_id, caption in rows[1:]:
            fact = facts[image_id]
            assert re.fullmatch(r"SYNTH_\d{6}", image_id)
            assert fact["split"] == split and caption == fact["caption"]
            assert fact["image"] == f"{folder}/{image_id}.jpg" and (bench / fact["image"]).is_file()
            seen.add(image_id)
        for image_id, cuis in concepts[1:]:
            codes = cuis.split(";")
            assert all(re.fullmatch(r"C\d{7}", c) for c in codes)
            assert codes[0] == MODALITY_CUIS[facts[image_id]["modality"]]
    assert seen == set(facts)
    assert [len([f for f in facts.values() if f["split"] == s]) for s in ("train", "validation", "test")] == [72, 9, 9]
    meta = json.loads((bench / "synth.json").read_text())
    assert (meta["seed"], meta["n"], meta["size"]) == (3, 90, SIZE) and meta["version"]
    assert "--seed 3" in (bench / "README.md").read_text()


def test_images_masks_and_bboxes_agree_with_facts(bench: Path, facts: dict[str, dict]) -> None:
    for fact in facts.values():
        image = Image.open(bench / fact["image"])
        mask_img = Image.open(bench / fact["mask"])
        assert image.format == "JPEG" and image.size == (SIZE, SIZE)
        assert mask_img.mode == "L" and mask_img.size == (SIZE, SIZE)
        mask = np.asarray(mask_img)
        assert set(np.unique(mask)) <= {0, 255}
        if fact["finding"] == "none":
            assert not mask.any() and fact["bbox"] is None and fact["side"] == "none" and fact["size_mm"] is None
            continue
        assert mask.any(), fact["id"]
        x0, y0, x1, y1 = fact["bbox"]
        ys, xs = np.nonzero(mask)
        # Tight box with exclusive upper bounds.
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert fact["size_mm"] > 0 and fact["side"] in {"left", "right"}


def test_side_follows_radiological_convention(facts: dict[str, dict]) -> None:
    # Patient's right is on the image's left.
    positives = [f for f in facts.values() if f["finding"] != "none"]
    assert len(positives) > 40
    for f in positives:
        x0, _, x1, _ = f["bbox"]
        centre = (x0 + x1) / 2
        assert (centre < SIZE / 2) == (f["side"] == "right"), (f["id"], f["modality"], f["location"], f["bbox"])


def test_lesions_are_visible_against_their_surroundings(bench: Path, facts: dict[str, dict]) -> None:
    contrasts = []
    for f in facts.values():
        if f["finding"] == "none":
            continue
        img = np.asarray(Image.open(bench / f["image"]), dtype=np.float32)
        mask = np.asarray(Image.open(bench / f["mask"])) > 0
        x0, y0, x1, y1 = f["bbox"]
        pad = max(3, (x1 - x0) // 2)
        ring = np.zeros_like(mask)
        ring[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = True
        ring &= ~mask
        contrasts.append(abs(img[mask].mean() - img[ring].mean()))
    assert np.median(contrasts) > 20
    assert np.mean(np.array(contrasts) > 6) > 0.85


def test_modalities_look_different(bench: Path, facts: dict[str, dict]) -> None:
    by_mod: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    thumbs, labels = [], []
    for f in facts.values():
        image = Image.open(bench / f["image"])
        by_mod[f["modality"]].append(np.asarray(image, dtype=np.float32))
        thumbs.append(np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32).ravel())
        labels.append(f["modality"])
    assert all(len(v) >= 6 for v in by_mod.values()), {k: len(v) for k, v in by_mod.items()}
    # 1-nearest-neighbour on 16x16 thumbnails: half the images as references, half as queries.
    x, y = np.array(thumbs), np.array(labels)
    ref = np.arange(len(y)) % 2 == 0
    nearest = ((x[~ref][:, None] - x[ref][None]) ** 2).sum(-1).argmin(1)
    assert (y[ref][nearest] == y[~ref]).mean() > 0.85
    # Specific signatures: US sector (black corners at the top), inverted PET (bright), CT/MRI (dark air).
    for img in by_mod["ultrasound"]:
        assert img[0, 0] < 10 and img[0, -1] < 10 and img[SIZE // 2].mean() > 20
    assert np.mean([i.mean() for i in by_mod["pet"]]) > 170
    for m in ("ct", "mri"):
        assert np.mean([(i < 25).mean() for i in by_mod[m]]) > 0.25


def test_replaces_an_earlier_benchmark_but_not_other_directories(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate(out, 6, seed=0, size=40)
    generate(out, 3, seed=0, size=40)
    assert len(load_facts(out)) == 3 and len(list((out / "train").iterdir())) + len(list((out / "test").iterdir())) \
        + len(list((out / "valid").iterdir())) == 3
    assert not list(tmp_path.glob(".synth*"))  # no temp directories left behind
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not an earlier output of `medblip data synth`"):
        generate(other, 3, size=40)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be"),
    ({"n": 3, "size": 8}, "size must be"),
    ({"n": 3, "splits": (0.5, 0.2, 0.2)}, "sum to 1"),
    ({"n": 3, "splits": (0.5, 0.5)}, "three"),
    ({"n": 3, "workers": 0}, "workers"),
])
def test_bad_parameters_give_specific_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(MedblipError, match=message):
        generate(tmp_path / "x", **{"size": 40, **kwargs})
    assert not (tmp_path / "x").exists()


def test_split_counts() -> None:
    assert split_counts(1000, (0.8, 0.1, 0.1)) == [800, 100, 100]
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_counts(7, (0.8, 0.2, 0.0)) == [6, 1, 0]
    assert split_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]
    assert all(sum(split_counts(n, (0.7, 0.2, 0.1))) == n for n in range(1, 60))


def test_load_facts_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="facts.jsonl"):
        load_facts(tmp_path)
    row = {"id": "SYNTH_000001", "split": "train", "modality": "ct", "region": "chest", "finding": "none",
           "side": "none", "size_mm": None, "bbox": None, "mask": "masks/SYNTH_000001.png"}
    (tmp_path / "facts.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match="repeats id SYNTH_000001"):
        load_facts(tmp_path)
    (tmp_path / "facts.jsonl").write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(DataError, match="lacks"):
        load_facts(tmp_path)


def test_real_rocov2_loader_reads_the_benchmark(bench: Path, facts: dict[str, dict]) -> None:
    from medblip.data import load_dataset

    dataset = load_dataset(bench, format="rocov2")
    assert len(dataset.records) == len(facts)
    for record in dataset.records:
        assert record.caption == facts[record.id]["caption"]
        assert record.split == facts[record.id]["split"]
