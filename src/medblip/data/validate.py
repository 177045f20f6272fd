"""Dataset statistics for ``medblip data validate``: counts, drops, caption lengths, image sizes."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import numpy as np

from medblip.data.captions import caption_words
from medblip.data.images import DEFAULT_MAX_PIXELS, load_image, probe_image
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


def image_stats(records: list[Record], sample: int = 32, seed: int = 0,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: bool = False) -> dict[str, Any]:
    """Decode a deterministic sample of images: sizes, modes and formats as stored, decode errors."""
    with_image = [r for r in records if r.image is not None]
    k = min(max(sample, 0), len(with_image))
    # Sorted indices keep the sample in load order; the string seed is stable across runs.
    chosen = sorted(random.Random(f"{seed}:images").sample(range(len(with_image)), k))
    items = [with_image[i] for i in chosen]
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="images", unit="img")
    widths: list[int] = []
    heights: list[int] = []
    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    errors: list[str] = []
    for rec in items:
        if rec.image is None:  # filtered above; keeps the type checker informed
            continue
        name = None if not isinstance(rec.image, bytes) else f"{rec.meta.get('source', rec.id)} ({rec.id})"
        try:
            info = probe_image(rec.image, name=name)
            load_image(rec.image, max_pixels=max_pixels, name=name)
        except ImageError as exc:
            errors.append(str(exc))
            continue
        widths.append(info.width)
        heights.append(info.height)
        modes[info.mode] += 1
        formats[info.format] += 1
    return {
        "with_image": len(with_image),
        "sampled": k,
        "decoded": len(widths),
        "errors": len(errors),
        "error_examples": errors[:5],
        "width": _range(widths),
        "height": _range(heights),
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
    }


def validate_dataset(dataset: Dataset, sample: int = 32, seed: int = 0,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: bool = False) -> dict[str, Any]:
    """Everything ``medblip data validate`` reports, as a JSON-ready dict."""
    report = dataset.report
    return {
        "path": report.path,
        "format": report.format,
        "records": len(dataset),
        "splits": {s: {"records": len(dataset.split(s)), "caption_words": caption_stats(dataset.split(s))}
                   for s in dataset.splits},
        "caption_words": caption_stats(dataset.records),
        "images": image_stats(dataset.records, sample=sample, seed=seed, max_pixels=max_pixels,
                              progress=progress),
        "load_report": report.to_dict(),
        "summary": report.summary(),
        **({"roco_subsets": roco_subsets(dataset)} if report.format == "roco" else {}),
    }


def roco_subsets(dataset: Dataset) -> dict[str, Any]:
    """ROCO: records loaded per subset, and those of the subsets left out (``roco_subsets``)."""
    loaded = Counter(str(r.meta.get("subset")) for r in dataset.records)
    return {"loaded": dict(loaded), "not_loaded": dict(dataset.report.excluded)}


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def render_markdown(result: dict[str, Any]) -> str:
    """A human-readable report of :func:`validate_dataset`'s result."""
    lines = [f"# Dataset validation: {result['path']}", "",
             f"Format: **{result['format']}**, {result['records']} usable records.", "",
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
    lines += ["", f"## Dropped records ({rep['total_dropped']})", ""]
    if rep["dropped"] or rep["warnings"]:
        lines += ["| kind | reason | count | example |", "|---|---|---:|---|"]
        for kind, counts in (("dropped", rep["dropped"]), ("warning", rep["warnings"])):
            for reason, n in counts.items():
                ex = rep["examples"].get(reason, [""])[0].replace("|", "\\|")
                lines.append(f"| {kind} | {reason} | {n} | {ex} |")
    else:
        lines.append("None.")
    img = result["images"]
    lines += ["", f"## Images (sample of {img['sampled']} of {img['with_image']})", ""]
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
