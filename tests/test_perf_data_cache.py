"""The preprocessed image cache (`medblip data cache`): round trip, invalidation, loader, CLI."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fast_step import UInt8Collate  # benchmarks/
from medblip.data import Dataset, LoadReport, Record, load_dataset, load_image
from medblip.data.cache import CachedImageDataset, ImageCache, build_image_cache, records_fingerprint
from medblip.errors import DataError
from medblip.perf.batching import PixelNormalizer
from test_perf_common import CAPTIONS, load, perf_dirs  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

SIZES = [(40, 30), (64, 64), (25, 50), (32, 32), (90, 45)]


def _write(path: Path, size: tuple[int, int], seed: int, fmt: str = "JPEG") -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


@pytest.fixture
def rocov2(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    lines = ["ID,Caption"]
    for i, size in enumerate(SIZES):
        suffix = ".png" if i == 2 else ".jpg"
        _write(root / "train" / f"T{i}{suffix}", size, i, "PNG" if i == 2 else "JPEG")
        lines.append(f"T{i},{CAPTIONS[i]}")
    (root / "train_captions.csv").write_text("\n".join(lines) + "\n")
    _write(root / "valid" / "V0.jpg", (33, 33), 99)
    (root / "valid_captions.csv").write_text(f"ID,Caption\nV0,{CAPTIONS[5]}\n")
    return root


def test_roundtrip_equals_processor_output(rocov2, tmp_path, perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")  # processor: 32 x 32, bicubic
    summary = build_image_cache(rocov2, tmp_path / "cache", size=32, workers=2)
    assert {s: v["status"] for s, v in summary["splits"].items()} == {"train": "built", "validation": "built"}
    records = load_dataset(rocov2).split("train")
    ds = CachedImageDataset(tmp_path / "cache", "train", records, size=32)
    assert len(ds) == 5 and ds.array.shape == (5, 32, 32, 3) and ds.array.dtype == np.uint8
    ref = adapter.processor.image_processor(images=[load_image(r.image) for r in records],
                                            return_tensors="pt")["pixel_values"]
    got = PixelNormalizer(adapter.processor.image_processor)(ds.pixels_batch(range(5)))
    step = 1 / 255 / min(adapter.processor.image_processor.image_std)
    assert torch.allclose(got, ref, atol=step + 1e-6, rtol=0)  # within uint8 rounding (in fact equal)
    assert torch.allclose(got, ref, atol=1e-5)
    index = ImageCache(tmp_path / "cache").index["splits"]["train"]
    assert index["ids"] == [r.id for r in records] and index["size"] == 32 and len(index["content_hash"]) == 64
    assert index["sources"][0].endswith("T0.jpg") and index["bytes"][0] == os.path.getsize(records[0].image)
    # as PIL for any adapter's collate, and a uint8 DataLoader
    pil, caption = CachedImageDataset(tmp_path / "cache", "train", as_pil=True)[1]
    assert pil.size == (32, 32) and caption == CAPTIONS[1]
    assert len(pickle.dumps(ds)) < 10_000  # workers reopen the memory map instead of copying it
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=UInt8Collate(adapter))
    batch = next(iter(loader))
    assert batch["pixels_uint8"].shape == (2, 32, 32, 3) and "input_ids" in batch


def test_invalidation_on_image_caption_and_size_change(rocov2, tmp_path):
    out = tmp_path / "cache"
    build_image_cache(rocov2, out, size=32)
    again = build_image_cache(rocov2, out, size=32)
    assert {v["status"] for v in again["splits"].values()} == {"up to date"}
    # an image file is replaced
    target = rocov2 / "train" / "T1.jpg"
    _write(target, (64, 64), 1234)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 5_000_000_000))
    records = load_dataset(rocov2).split("train")
    with pytest.raises(DataError, match="stale.*T1"):
        CachedImageDataset(out, "train", records)
    rebuilt = build_image_cache(rocov2, out, size=32)
    assert rebuilt["splits"]["train"]["status"] == "built"
    assert rebuilt["splits"]["validation"]["status"] == "up to date"
    ds = CachedImageDataset(out, "train", records)
    fresh = np.asarray(load_image(target).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(ds.pixels(1), fresh)
    # another size
    with pytest.raises(DataError, match="size 32, wanted 48"):
        CachedImageDataset(out, "train", records, size=48)
    assert build_image_cache(rocov2, out, size=48)["splits"]["train"]["status"] == "built"
    # a caption changes the fingerprint too; a record missing from the cache is refused
    csv = rocov2 / "train_captions.csv"
    csv.write_text(csv.read_text().replace(CAPTIONS[0], "a new caption"))
    assert build_image_cache(rocov2, out, size=48)["splits"]["train"]["status"] == "built"
    extra = Record("T9", rocov2 / "train" / "T0.jpg", "x", "train")
    with pytest.raises(DataError, match="T9 is not in the cache"):
        CachedImageDataset(out, "train", [*load_dataset(rocov2).split("train"), extra])


def test_in_memory_images_and_errors(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(buf, format="PNG")
    recs = [Record("b0", buf.getvalue(), "red", "train"), Record("b1", buf.getvalue(), "red too", "train")]
    ds = Dataset(recs, LoadReport(format="hf", path="mem"))
    build_image_cache(ds, tmp_path / "c", size=16)
    arr = CachedImageDataset(tmp_path / "c", "train", recs).pixels(0)
    assert arr.shape == (16, 16, 3) and arr[8, 8, 0] > 150
    assert records_fingerprint(recs) != records_fingerprint(recs[:1])
    with pytest.raises(DataError, match="not an image cache"):
        ImageCache(tmp_path)
    with pytest.raises(DataError, match="not cached"):
        CachedImageDataset(tmp_path / "c", "test")
    bad = [Record("x", b"not an image", "c", "train")]
    with pytest.raises(DataError, match="x"):
        build_image_cache(Dataset(bad, LoadReport()), tmp_path / "bad", size=16)
    assert not (tmp_path / "bad" / ".train.npy.tmp").exists()


def test_cli_data_cache(rocov2, tmp_path, perf_dirs):  # noqa: F811
    import medblip.cli.cache_cmd  # noqa: F401  (registers the command)
    from medblip.cli.app import app

    runner = CliRunner()
    out = tmp_path / "cli-cache"
    res = runner.invoke(app, ["data", "cache", str(rocov2), "--out", str(out), "--size", "24", "--split", "train"])
    assert res.exit_code == 0, res.output
    assert "train: 5 images, built" in res.output
    assert ImageCache(out).splits == ["train"]
    res = runner.invoke(app, ["data", "cache", str(rocov2), "--out", str(out), "--size", "24", "--split", "train"])
    assert "up to date" in res.output
    res = runner.invoke(app, ["data", "cache", str(rocov2), "--out", str(out), "--model", str(perf_dirs["vit-gpt2"]),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert '"resample": "bilinear"' in res.output and ImageCache(out).entry("train").size == 32
