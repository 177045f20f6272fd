"""Write the synthetic benchmark to disk in the ROCOv2 layout, plus facts and lesion masks.

Every image depends only on (seed, index): its scene, pixels and caption come from three numpy
generators seeded with ``[seed, index, stream]``. Output is therefore byte-identical for the same
seed whatever the number of worker processes, and the first k images are the same for any n >= k.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medblip.data.synth import vocab
from medblip.data.synth.captions import concept_cuis, write_caption
from medblip.data.synth.render import render_scene
from medblip.data.synth.scene import sample_scene
from medblip.errors import DataError, MedblipError
from medblip.io import atomic_write_json, dumps, read_jsonl
from medblip.outputs import check_output_dir, ensure_writable_dir, install_output_dir

SYNTH_JSON = "synth.json"  # the benchmark's parameters; also how an earlier benchmark is recognised

SYNTH_VERSION = "1.0"
JPEG_QUALITY = 92
MIN_SIZE, MAX_SIZE = 32, 2048
MAX_N = 1_000_000
# Canonical split names (as in medblip Record.split) and their ROCOv2 folder/file prefixes.
SPLITS: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "valid"), ("test", "test"))
SIDE_CONVENTION = ("radiological: images are viewed facing the patient, so the patient's right is on "
                   "the image's left; 'side' in facts.jsonl is the patient's side")
FACT_KEYS = ("id", "split", "image", "caption", "modality", "region", "technique", "finding", "side",
             "location", "size_mm", "appearance", "bbox", "mask", "width", "height", "cuis")

_STREAM_SCENE, _STREAM_PIXELS, _STREAM_CAPTION = 0, 1, 2


@dataclass
class SynthSummary:
    out: Path
    n: int
    seed: int
    size: int
    splits: dict[str, int]
    modalities: dict[str, int] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)
    sides: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def image_id(index: int) -> str:
    return f"SYNTH_{index + 1:06d}"


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Images per split: largest-remainder rounding, and at least one image in every split with a
    positive fraction when n allows it."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _check_args(n: int, size: int, splits: Sequence[float], workers: int | None) -> None:
    if not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise MedblipError(f"n must be an integer between 1 and {MAX_N}, got {n!r}")
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise MedblipError(f"size must be an integer between {MIN_SIZE} and {MAX_SIZE} pixels, got {size!r}")
    if len(splits) != 3 or any((not math.isfinite(f)) or f < 0 for f in splits):
        raise MedblipError(f"splits must be three non-negative fractions (train, validation, test), got {tuple(splits)}")
    if abs(sum(splits) - 1.0) > 1e-6 or splits[0] <= 0:
        raise MedblipError(f"split fractions must sum to 1 with a non-empty train split, got {tuple(splits)}")
    if workers is not None and workers < 1:
        raise MedblipError(f"workers must be at least 1, got {workers}")


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array, "L").save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(array, "L").save(buf, "PNG")
    return buf.getvalue()


def render_record(seed: int, index: int, size: int) -> tuple[dict[str, Any], bytes, bytes]:
    """One study: (facts row without split/image paths, JPEG bytes, mask PNG bytes)."""
    scene = sample_scene(np.random.default_rng([seed, index, _STREAM_SCENE]))
    image, mask, bbox = render_scene(scene, size, np.random.default_rng([seed, index, _STREAM_PIXELS]))
    caption = write_caption(scene, np.random.default_rng([seed, index, _STREAM_CAPTION]))
    row = {
        "id": image_id(index),
        "caption": caption,
        "modality": scene.modality,
        "region": scene.region,
        "technique": scene.technique,
        "finding": scene.finding,
        "side": scene.side,
        "location": scene.location,
        "size_mm": scene.size_mm,
        "appearance": scene.appearance,
        "bbox": bbox,
        "width": size,
        "height": size,
        "cuis": concept_cuis(scene),
    }
    return row, _encode(image, "JPEG"), _encode(mask, "PNG")


def _work(job: tuple[int, int, int, str, str, str]) -> dict[str, Any]:
    seed, index, size, split, folder, root = job
    row, jpeg, png = render_record(seed, index, size)
    image_rel, mask_rel = f"{folder}/{row['id']}.jpg", f"masks/{row['id']}.png"
    Path(root, image_rel).write_bytes(jpeg)
    Path(root, mask_rel).write_bytes(png)
    return {"split": split, "image": image_rel, "mask": mask_rel, **row}


def _jobs(seed: int, size: int, counts: list[int], root: Path) -> Iterator[tuple[int, int, int, str, str, str]]:
    index = 0
    for (split, folder), count in zip(SPLITS, counts, strict=True):
        for _ in range(count):
            yield seed, index, size, split, folder, str(root)
            index += 1


def _default_workers(n: int) -> int:
    # Process start-up costs about as much as rendering ~100 images, so small runs stay in-process.
    if n < 300:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def _csv(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _readme(summary: SynthSummary, fractions: Sequence[float]) -> str:
    def table(title: str, counts: dict[str, int]) -> str:
        lines = [f"| {title} | images |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()]
        return "\n".join(lines)

    return f"""# medblip synthetic radiology benchmark

Generated by `medblip data synth --n {summary.n} --seed {summary.seed} --size {summary.size}`
(generator version {SYNTH_VERSION}). Regenerating with the same arguments gives byte-identical files.
All images are procedurally rendered; no patient data is involved.

Layout (ROCOv2): `{{train,valid,test}}_captions.csv` (`ID,Caption`), `{{split}}_concepts.csv`
(`ID,CUIs`, `;`-separated UMLS CUIs), images in `{{train,valid,test}}/<ID>.jpg` (8-bit greyscale JPEG,
quality {JPEG_QUALITY}, {summary.size}x{summary.size} px).

Ground truth: `facts.jsonl`, one object per image with `id`, `split` (train/validation/test),
`image`, `caption`, `modality`, `region`, `technique`, `finding` (or `none`), `side` (left/right/none),
`location`, `size_mm`, `appearance`, `bbox` ([x0, y0, x1, y1] in pixels, x1/y1 exclusive), `mask`
(`masks/<ID>.png`: 0/255 greyscale, same size as the image, non-empty iff there is a finding) and
`cuis`. Sizes are nominal lesion diameters in mm (effusion: fluid depth; fracture: fracture zone
length), computed from a nominal field of view per modality.

Side convention: {SIDE_CONVENTION}.

Split fractions (train/validation/test): {", ".join(f"{f:g}" for f in fractions)}.

{table("split", summary.splits)}

{table("modality", summary.modalities)}

{table("finding", summary.findings)}

{table("side", summary.sides)}
"""


def generate(
    out: str | Path,
    n: int,
    seed: int = 0,
    size: int = 384,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    workers: int | None = None,
    on_image: Callable[[], None] | None = None,
    overwrite: bool = False,
) -> SynthSummary:
    """Render ``n`` studies into ``out`` (replacing an earlier benchmark there atomically).

    A non-empty ``out`` that holds no benchmark is refused unless ``overwrite`` (then the benchmark's
    files are added to it and the folder's other files kept); see :mod:`medblip.outputs`.

    ``splits`` are the train/validation/test fractions; images are assigned to splits in ID order.
    ``workers`` processes render in parallel (default: 1 for small runs, else the available CPUs);
    the output does not depend on it. ``on_image`` is called once per finished image (progress bars).
    """
    _check_args(n, size, splits, workers)
    out = check_output_dir(out, "data synth", overwrite=overwrite, known_files=(SYNTH_JSON,), replaces=True)
    counts = split_counts(n, splits)
    ensure_writable_dir(out.parent)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for _, folder in SPLITS:
            (tmp / folder).mkdir(parents=True)
        (tmp / "masks").mkdir()
        jobs = list(_jobs(seed, size, counts, tmp))
        workers = workers or _default_workers(n)
        rows: list[dict[str, Any]] = []
        if workers == 1:
            for job in jobs:
                rows.append(_work(job))
                if on_image:
                    on_image()
        else:
            # fork keeps start-up cheap and works from scripts without a __main__ guard.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(workers) as pool:
                for row in pool.imap(_work, jobs, chunksize=8):
                    rows.append(row)
                    if on_image:
                        on_image()
        summary = _write_tables(tmp, rows, out, seed, size, counts, splits)
        install_output_dir(tmp, out, "data synth", known_files=(SYNTH_JSON,))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_tables(tmp: Path, rows: list[dict[str, Any]], out: Path, seed: int, size: int,
                  counts: list[int], fractions: Sequence[float]) -> SynthSummary:
    facts = [{k: row[k] for k in FACT_KEYS} for row in rows]
    for (split, folder), _ in zip(SPLITS, counts, strict=True):
        mine = [r for r in facts if r["split"] == split]
        (tmp / f"{folder}_captions.csv").write_text(_csv(("ID", "Caption"), [(r["id"], r["caption"]) for r in mine]),
                                                    encoding="utf-8")
        (tmp / f"{folder}_concepts.csv").write_text(
            _csv(("ID", "CUIs"), [(r["id"], ";".join(r["cuis"])) for r in mine]), encoding="utf-8")
    (tmp / "facts.jsonl").write_text("".join(dumps(r, indent=None) + "\n" for r in facts), encoding="utf-8")

    def tally(key: str, order: Sequence[str]) -> dict[str, int]:
        c = Counter(r[key] for r in facts)
        return {k: c[k] for k in order if c[k]}

    summary = SynthSummary(
        out=out, n=len(facts), seed=seed, size=size,
        splits={split: count for (split, _), count in zip(SPLITS, counts, strict=True)},
        modalities=tally("modality", vocab.MODALITIES),
        findings=tally("finding", (*vocab.FINDINGS, vocab.NO_FINDING)),
        sides=tally("side", (*vocab.SIDES, vocab.NO_SIDE)),
    )
    meta = {
        "generator": "medblip.data.synth",
        "version": SYNTH_VERSION,
        "seed": seed,
        "n": len(facts),
        "size": size,
        "split_fractions": dict(zip((s for s, _ in SPLITS), (float(f) for f in fractions), strict=True)),
        "splits": summary.splits,
        "image_format": f"JPEG, 8-bit greyscale, quality {JPEG_QUALITY}",
        "mask_format": "PNG, 8-bit greyscale, 0 background / 255 finding",
        "bbox_format": "[x0, y0, x1, y1] pixels, x1 and y1 exclusive",
        "side_convention": SIDE_CONVENTION,
        "fov_mm": {f"{m}/{r}": v for (m, r), v in vocab.FOV_MM.items()},
        "counts": {"modality": summary.modalities, "finding": summary.findings, "side": summary.sides},
    }
    atomic_write_json(tmp / SYNTH_JSON, meta)
    (tmp / "README.md").write_text(_readme(summary, fractions), encoding="utf-8")
    return summary


_REQUIRED_FACT_KEYS = ("id", "split", "modality", "region", "finding", "side", "size_mm", "bbox", "mask")


def load_facts(directory: str | Path) -> dict[str, dict[str, Any]]:
    """``facts.jsonl`` of a synthetic benchmark as {image id: facts}."""
    path = Path(directory) / "facts.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found - is {directory} a benchmark written by `medblip data synth`?")
    facts: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl(path), 1):
        missing = [k for k in _REQUIRED_FACT_KEYS if k not in row]
        if missing:
            raise DataError(f"{path}: record {number} lacks {', '.join(missing)}")
        if row["id"] in facts:
            raise DataError(f"{path}: record {number} repeats id {row['id']}")
        facts[row["id"]] = row
    return facts
