"""Manifests without a split column, or without captions: training holds out validation records, evaluation
uses every record, and each says so; image-only manifests work where no caption is needed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from _train_fixtures import experiment, train_one_thread
from medblip.data import Record, load_dataset
from medblip.errors import DataError
from medblip.training.data import holdout_validation


def _records(n: int, patients: int | None = None) -> list[Record]:
    meta = (lambda i: {"Patient": f"P{i % patients}"}) if patients else (lambda i: {})
    return [Record(id=f"r{i}", image=None, caption="c", split="train", meta=meta(i)) for i in range(n)]


def test_holdout_keeps_patients_on_one_side_and_is_seeded():
    records = _records(60, patients=12)  # 5 images per patient
    train, val, how = holdout_validation(records, 0.1, seed=0)
    assert len(train) + len(val) == 60 and 6 <= len(val) <= 10
    assert not {r.meta["Patient"] for r in train} & {r.meta["Patient"] for r in val}
    assert "whole 'Patient' groups" in how and f"held out {len(val)} of 60" in how
    assert [r.id for r in train] == sorted((r.id for r in train), key=lambda x: int(x[1:]))  # load order kept
    assert holdout_validation(records, 0.1, seed=0)[1] == val
    assert holdout_validation(records, 0.1, seed=1)[1] != val
    # without a patient/case column single records are held out
    train, val, how = holdout_validation(_records(50), 0.2, seed=0)
    assert len(val) == 10 and "groups" not in how
    # nothing to split
    train, val, how = holdout_validation(_records(5, patients=1), 0.5, seed=0)
    assert len(train) == 5 and val == [] and "too few" in how


def _manifest(synth: Path, out: Path, *, captions: bool = True, limit: int = 24) -> Path:
    """A split-less manifest over the synthetic benchmark's training images (two images per patient)."""
    with (synth / "train_captions.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:limit]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "patient"] if captions else ["image"])
        for i, r in enumerate(rows):
            image = str(synth / "train" / f"{r['ID']}.jpg")
            w.writerow([image, r["Caption"], f"P{i // 2}"] if captions else [image])
    return out


def test_training_on_a_split_less_manifest_holds_out_validation(tiny_blip_dir, small_synth_dir, tmp_path, capsys):
    manifest = _manifest(small_synth_dir, tmp_path / "m.csv")
    cfg = experiment(tiny_blip_dir, manifest, tmp_path / "run", max_steps=1, batch_size=8, val_generate=False)
    result = train_one_thread(cfg)
    assert result.status == "completed"
    err = capsys.readouterr().err
    note = (f"no 'validation' records in {manifest} (it names no split): held out 2 of 24 training records for "
            "validation (data.val_fraction 0.1, seed 0, whole 'patient' groups: 1 of 12)")
    assert note in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["validation"] == note
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_images"] for r in rows if r.get("split") == "validation"] == [2]
    # with a `medblip data cache` of the manifest (its one split, train) the held-out images come from it too
    from medblip.data.cache import build_image_cache

    build_image_cache(manifest, tmp_path / "cache", size=64)
    cfg.data.image_cache = str(tmp_path / "cache")
    cfg.output.dir = str(tmp_path / "cached")
    assert train_one_thread(cfg).status == "completed"
    rows = [json.loads(x) for x in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_images"] for r in rows if r.get("split") == "validation"] == [2]


def test_evaluate_on_a_split_less_manifest_uses_every_record(tiny_blip_dir, small_synth_dir, tmp_path,
                                                            medblip_cli, capsys):
    manifest = _manifest(small_synth_dir, tmp_path / "m.csv", limit=5)
    assert medblip_cli("evaluate", "--model", str(tiny_blip_dir), "--data", str(manifest), "--num-beams", "1",
                       "--max-new-tokens", "4", "--bootstrap", "0", "--no-java", "--out", str(tmp_path / "ev"),
                       "--no-progress") == 0
    err = capsys.readouterr().err
    assert f"{manifest} names no split (no 'split' column): using all 5 record(s) instead of split 'test'" in err
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == 5


def test_image_only_manifest_works_where_captions_are_not_needed(tiny_blip_dir, small_synth_dir, tmp_path,
                                                                medblip_cli, capsys):
    manifest = _manifest(small_synth_dir, tmp_path / "images.csv", captions=False, limit=2)
    with pytest.raises(DataError, match=r"images\.csv: no 'caption' column \(header: image\): training and "
                                        r"evaluation need a reference caption per image; to caption images "
                                        r"without one use `medblip caption`"):
        load_dataset(manifest)
    assert len(load_dataset(manifest, require_captions=False).records) == 2
    # evaluate / train stop with that line; explain and caption take the images
    argv = ["--model", str(tiny_blip_dir), "--data", str(manifest)]
    assert medblip_cli("evaluate", *argv, "--out", str(tmp_path / "ev"), "--no-progress") == 2
    assert "no 'caption' column" in capsys.readouterr().err
    assert medblip_cli("explain", *argv, "--max-new-tokens", "3", "--out", str(tmp_path / "ex"), "--no-progress") == 0
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert len(summary["images"]) == 2 and all(r["caption_source"] == "generated" for r in summary["images"])
    capsys.readouterr()
    assert medblip_cli("caption", str(manifest), "--model", str(tiny_blip_dir), "--max-new-tokens", "3",
                       "--no-progress") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    (tmp_path / "t.yaml").write_text(experiment(tiny_blip_dir, manifest, tmp_path / "run").to_yaml())
    assert medblip_cli("train", str(tmp_path / "t.yaml"), "--no-progress") == 2
    assert "no 'caption' column" in capsys.readouterr().err
