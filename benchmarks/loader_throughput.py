"""Data-loader throughput: decoding JPEGs every epoch vs the preprocessed image cache, vs what training consumes.

    python benchmarks/loader_throughput.py --images 256 --json out.json                  # synthetic JPEGs
    python benchmarks/loader_throughput.py --data /data/rocov2 --split train --limit 2000 --shapes base --json out.json

Loaders (DataLoader, ``--workers`` processes, default ``os.cpu_count()``; batches of ``--batch-size``):

* ``decode``: the trainer's ``CaptionDataset`` (decode + resize each file every time) + ``adapter.collate``
  (the processor on PIL images) -- what training does without a cache;
* ``cached_uint8``: :class:`medblip.data.cache.CachedImageDataset` rows of the memory-mapped ``.npy`` +
  :class:`fast_step.UInt8Collate` (uint8 batches; normalised later on the device);
* ``cached_pil``: the cache as PIL images + ``adapter.collate`` (the drop-in for the current trainer).

The trainer's consumption rate is measured in the same process with :class:`fast_step.FastTrainStep` on the
``--shapes`` model and ``--strategy`` (or given with ``--consumption-rate``); the script prints each
loader's images/s and its ratio to that rate (the issue asks for >= 2x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bench_utils as bu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset path (any medblip layout); default: synthetic JPEGs")
    p.add_argument("--format", default="auto")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None, help="at most N records of the split")
    p.add_argument("--images", type=int, default=256, help="synthetic dataset size")
    p.add_argument("--source-size", type=int, default=512, help="synthetic JPEG side (real files are larger)")
    p.add_argument("--cache-dir", default=None, help="where the image cache goes (default: a temp folder)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: os.cpu_count())")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batches", type=int, default=None, help="stop each loader after N batches")
    p.add_argument("--family", default="blip")
    p.add_argument("--shapes", default="tiny", choices=bu.SHAPES)
    p.add_argument("--strategy", default="full", choices=["full", "decoder_only", "encoder_only"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--consumption-rate", type=float, default=None,
                   help="images/s the trainer consumes (skip measuring it)")
    p.add_argument("--train-steps", type=int, default=5, help="steps to measure the consumption rate")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def synthetic_rocov2(root: Path, n: int, size: int) -> Path:
    """A ROCOv2-layout folder of ``n`` JPEG images (``size`` px) with captions."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    captions = bu.synthetic_captions(n, seed=1)
    lines = ["ID,Caption"]
    for start in range(0, n, 64):
        chunk = bu.synthetic_pixels(min(64, n - start), size, seed=start)
        for j, px in enumerate(chunk):
            rid = f"SYN_train_{start + j:06d}"
            Image.fromarray(px, "RGB").save(root / "train" / f"{rid}.jpg", quality=90)
            lines.append(f'{rid},"{captions[start + j]}"')
    (root / "train_captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


class _DecodeDataset:
    """Fallback for the trainer's CaptionDataset: decode + resize on every access."""

    def __init__(self, records: list[Any], size: int) -> None:
        self.records = records
        self.size = size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        from PIL import Image

        from medblip.data import load_image

        im = load_image(self.records[i].image)
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return im, self.records[i].caption


class _AdapterCollate:
    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def __call__(self, items: list[tuple[Any, str]]) -> dict[str, torch.Tensor]:
        return self.adapter.collate([a for a, _ in items], [c for _, c in items])


def measure_loader(dataset: Any, collate: Any, *, batch_size: int, workers: int, max_batches: int | None) -> dict[str, Any]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate, persistent_workers=False,
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    first = next(it)  # worker start-up is not throughput
    images = 0
    t0 = time.perf_counter()
    for batches, batch in enumerate(it, 1):
        key = "pixels_uint8" if "pixels_uint8" in batch else "pixel_values"
        images += int(batch[key].shape[0])
        if max_batches and batches >= max_batches:
            break
    seconds = time.perf_counter() - t0
    del first, it, loader
    return {"images": images, "seconds": seconds, "images_per_second": images / seconds if seconds else float("nan"),
            "workers": workers}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = bu.bench_device(args.device, args.threads)
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    from fast_step import UInt8Collate
    from medblip.data import load_dataset
    from medblip.data.cache import CachedImageDataset, ImageCache, build_image_cache

    tmp = Path(tempfile.mkdtemp(prefix="medblip-loader-"))
    data = Path(args.data) if args.data else synthetic_rocov2(tmp / "data", args.images, args.source_size)
    adapter = bu.build_adapter(args.family, args.shapes, device=device, max_length=64)
    size = bu.image_size_of(adapter)
    dataset = load_dataset(data, format=args.format, splits=[args.split], limit=args.limit)
    records = dataset.split(args.split)
    if not records:
        sys.exit(f"no {args.split} records in {data}")
    cache_dir = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
    t0 = time.perf_counter()
    summary = build_image_cache(dataset, cache_dir, size=size, workers=workers)
    build_s = time.perf_counter() - t0
    cache = ImageCache(cache_dir)
    result: dict[str, Any] = {
        "benchmark": "loader_throughput", "environment": bu.environment(device), "command": " ".join(sys.argv),
        "data": str(data), "records": len(records), "image_size": size, "batch_size": args.batch_size,
        "workers": workers, "cache_build": {"seconds": build_s, "images_per_second": len(records) / build_s,
                                            "summary": summary["splits"]},
        "loaders": {},
    }
    try:
        from medblip.training.data import AdapterCollate, CaptionDataset

        decode_ds: Any = CaptionDataset(records, size)
        collate: Any = AdapterCollate(adapter)
    except Exception:  # pragma: no cover - trainer data module unavailable
        decode_ds, collate = _DecodeDataset(records, size), _AdapterCollate(adapter)
    kw = {"batch_size": args.batch_size, "workers": workers, "max_batches": args.max_batches}
    result["loaders"]["decode"] = measure_loader(decode_ds, collate, **kw)
    cached = CachedImageDataset(cache, args.split, records, size=size)
    result["loaders"]["cached_uint8"] = measure_loader(cached, UInt8Collate(adapter, pad_multiple=8), **kw)
    cached_pil = CachedImageDataset(cache, args.split, records, size=size, as_pil=True)
    result["loaders"]["cached_pil"] = measure_loader(cached_pil, collate, **kw)

    if args.consumption_rate:
        rate, how = args.consumption_rate, "given"
    else:
        rate, how = consumption(adapter, args, cached), f"measured: FastTrainStep {args.shapes} {args.strategy}"
    result["consumption"] = {"images_per_second": rate, "source": how}
    for r in result["loaders"].values():
        r["ratio_to_consumption"] = r["images_per_second"] / rate
    r = result["loaders"]
    result["ratio_cached_vs_decode"] = r["cached_uint8"]["images_per_second"] / r["decode"]["images_per_second"]
    print(f"loader throughput: {len(records)} images at {size}px, {workers} workers, batch {args.batch_size} "
          f"on {result['environment']['cpu']}")
    print(f"  cache build     {result['cache_build']['images_per_second']:10.1f} images/s (once)")
    for name, x in r.items():
        print(f"  {name:<15} {x['images_per_second']:10.1f} images/s   {x['ratio_to_consumption']:6.2f}x the trainer")
    print(f"  trainer consumes {rate:.1f} images/s ({how}); cached uint8 / decode: {result['ratio_cached_vs_decode']:.2f}x")
    bu.write_json(args.json, result)
    return result


def consumption(adapter: Any, args: argparse.Namespace, cached: Any) -> float:
    """Images/s of FastTrainStep on batches from the cache (data already in memory: pure consumption)."""
    from fast_step import FastTrainStep, UInt8Collate

    adapter.apply_strategy(args.strategy)
    collate = UInt8Collate(adapter, pad_multiple=8)
    bs = args.batch_size
    n = len(cached)
    batches = [collate([cached[(i * bs + j) % n] for j in range(bs)]) for i in range(min(4, max(1, n // bs)))]
    with FastTrainStep(adapter) as stepper:
        r = bu.run_timed(lambda i: stepper.step(batches[i % len(batches)]), steps=args.train_steps, warmup=1,
                         device=adapter.device)
    return bs / r["step_seconds_median"] if r["step_seconds_median"] else float(np.inf)


if __name__ == "__main__":
    main()
