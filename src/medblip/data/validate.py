"""Dataset statistics for ``medblip data validate``: counts, drops, caption lengths, image sizes."""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from medblip.data.captions import caption_words
from medblip.data.images import ImageInfo, MaxPixels, load_image, probe_image
from medblip.data.records import Dataset, Record
from medblip.errors import ImageError

UNREADABLE_IMAGE = "unreadable image"


def caption_stats(records: list[Record]) -> dict[str, Any]:
    """Caption length in words: count, mean, median, p95, min, max (``None`` when empty)."""
    lengths = np.array([caption_words(r.caption) for r in records], dtype=np.float64)
    if lengths.size == 0:
        return {"count": 0, "mean": None, "median": None, "p95": None, "min": None, "max": None}
    return {
        "count": int(lengths.size),
        "mean": round(float(lengths.mean()), 2),
        "median": float(np.median(lengths)),
        "p95": round(float(np.percentile(lengths, 95)), 2),
        "min": int(lengths.min()),
        "max": int(lengths.max()),
    }


def _range(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": float(np.median(values)), "max": max(values)}


def _check_image(rec: Record, max_pixels: MaxPixels) -> ImageInfo | str:
    """The header's information after a full decode, or the reason the image cannot be used."""
    assert rec.image is not None
    name = None if not isinstance(rec.image, bytes) else f"{rec.meta.get('source', rec.id)} ({rec.id})"
    try:
        info = probe_image(rec.image, name=name)
        load_image(rec.image, max_pixels=max_pixels, name=name)
    except ImageError as exc:
        return str(exc)
    return info


def image_stats(records: list[Record], sample: int = 32, seed: int = 0, max_pixels: MaxPixels = "default",
                progress: bool = False, decode_all: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Decode a deterministic sample of images (or all of them): sizes, modes and formats as stored,
    and the images that cannot be decoded.

    ``decode_all``: every image, on ``workers`` threads (default: the CPU count; PIL decodes outside
    the GIL). ``unreadable`` lists the ids of the records whose image failed.
    """
    with_image = [r for r in records if r.image is not None]
    if decode_all:
        items = with_image
    else:
        k = min(max(sample, 0), len(with_image))
        # Sorted indices keep the sample in load order; the string seed is stable across runs.
        chosen = sorted(random.Random(f"{seed}:images").sample(range(len(with_image)), k))
        items = [with_image[i] for i in chosen]
    widths: list[int] = []
    heights: list[int] = []
    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    errors: list[str] = []
    unreadable: list[str] = []
    n_workers = max(1, workers or os.cpu_count() or 1) if decode_all else 1
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = pool.map(lambda r: _check_image(r, max_pixels), items)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(items), desc="images", unit="img")
        for rec, info in zip(items, results, strict=True):
            if isinstance(info, str):
                errors.append(info)
                unreadable.append(rec.id)
                continue
            widths.append(info.width)
            heights.append(info.height)
            modes[info.mode] += 1
            formats[info.format] += 1
    return {
        "with_image": len(with_image),
        "checked": "all" if decode_all else "sample",
        "sampled": len(items),
        "decoded": len(widths),
        "errors": len(errors),
        "error_examples": errors[:5],
        "unreadable": unreadable,
        "width": _range(widths),
        "height": _range(heights),
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
    }


def validate_dataset(dataset: Dataset, sample: int = 32, seed: int = 0, max_pixels: MaxPixels = "default",
                     progress: bool = False, decode_all: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Everything ``medblip data validate`` reports, as a JSON-ready dict.

    ``records`` counts what the loader kept; ``usable_records`` leaves out the records whose image
    failed to decode (every failing image with ``decode_all``, else those found in the sample), and
    ``image_check`` says in words how much was decoded.
    """
    report = dataset.report
    images = image_stats(dataset.records, sample=sample, seed=seed, max_pixels=max_pixels, progress=progress,
                         decode_all=decode_all, workers=workers)
    return {
        "path": report.path,
        "format": report.format,
        "records": len(dataset),
        "usable_records": len(dataset) - images["errors"],
        "image_check": image_check_sentence(images),
        "splits": {s: {"records": len(dataset.split(s)), "caption_words": caption_stats(dataset.split(s))}
                   for s in dataset.splits},
        "caption_words": caption_stats(dataset.records),
        "images": images,
        "load_report": report.to_dict(),
        "summary": report.summary(),
        **({"roco_subsets": roco_subsets(dataset)} if report.format == "roco" else {}),
    }


def roco_subsets(dataset: Dataset) -> dict[str, Any]:
    """ROCO: records loaded per subset, and those of the subsets left out (``roco_subsets``)."""
    loaded = Counter(str(r.meta.get("subset")) for r in dataset.records)
    return {"loaded": dict(loaded), "not_loaded": dict(dataset.report.excluded)}


def image_check_sentence(images: dict[str, Any]) -> str:
    """How many images were decoded, said plainly (a sample leaves the others unchecked)."""
    bad = (f"{images['errors']} could not be decoded and are counted as dropped ({UNREADABLE_IMAGE})"
           if images["errors"] else "none failed")
    if images["checked"] == "all":
        return f"All {images['with_image']} images were decoded; {bad}."
    unchecked = images["with_image"] - images["sampled"]
    if not unchecked:
        return f"All {images['with_image']} images were decoded (the sample covers them); {bad}."
    return (f"Only a sample of {images['sampled']} of {images['with_image']} images was decoded; {bad}. "
            f"The other {unchecked} were not decoded: run with --decode-all to check every image.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def render_markdown(result: dict[str, Any]) -> str:
    """A human-readable report of :func:`validate_dataset`'s result."""
    img = result["images"]
    usable = result.get("usable_records", result["records"])
    lines = [f"# Dataset validation: {result['path']}", "",
             f"Format: **{result['format']}**, {usable} usable records.", "",
             "| split | records | words mean | median | p95 | max |", "|---|---:|---:|---:|---:|---:|"]
    rows = [*result["splits"].items(), ("all", {"records": result["records"],
                                               "caption_words": result["caption_words"]})]
    for split, info in rows:
        c = info["caption_words"]
        lines.append(f"| {split} | {info['records']} | {_fmt(c['mean'])} | {_fmt(c['median'])} | "
                     f"{_fmt(c['p95'])} | {_fmt(c['max'])} |")
    if "roco_subsets" in result:
        sub = result["roco_subsets"]
        lines += ["", "ROCO subsets loaded: " + (", ".join(f"{k} {n}" for k, n in sub["loaded"].items()) or "none")
                  + "; not loaded: " + (", ".join(f"{k}: {n}" for k, n in sub["not_loaded"].items()) or "none")]
    rep = result["load_report"]
    dropped = [("dropped", reason, n, rep["examples"].get(reason, [""])[0]) for reason, n in rep["dropped"].items()]
    if img.get("errors"):
        dropped.append(("dropped", UNREADABLE_IMAGE, img["errors"], img["error_examples"][0]))
    dropped += [("warning", reason, n, rep["examples"].get(reason, [""])[0]) for reason, n in rep["warnings"].items()]
    lines += ["", f"## Dropped records ({rep['total_dropped'] + img.get('errors', 0)})", ""]
    if dropped:
        lines += ["| kind | reason | count | example |", "|---|---|---:|---|"]
        lines += [f"| {kind} | {reason} | {n} | {_cell(ex)} |" for kind, reason, n, ex in dropped]
    else:
        lines.append("None.")
    checked = "all" if img.get("checked") == "all" else f"sample of {img['sampled']} of {img['with_image']}"
    lines += ["", f"## Images ({checked})", "", result.get("image_check") or image_check_sentence(img), ""]
    if img["sampled"]:
        w, h = img["width"], img["height"]
        lines += [f"- decoded: {img['decoded']}, errors: {img['errors']}",
                  f"- width min/median/max: {_fmt(w['min'])} / {_fmt(w['median'])} / {_fmt(w['max'])}",
                  f"- height min/median/max: {_fmt(h['min'])} / {_fmt(h['median'])} / {_fmt(h['max'])}",
                  "- modes: " + (", ".join(f"{m} {n}" for m, n in img["modes"].items()) or "-"),
                  "- formats: " + (", ".join(f"{m} {n}" for m, n in img["formats"].items()) or "-")]
        lines += [f"- error: {e}" for e in img["error_examples"]]
    else:
        lines.append("No images to sample.")
    return "\n".join(lines) + "\n"
