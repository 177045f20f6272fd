"""Format auto-detection and the single entry point :func:`load_dataset`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from medblip.data.captions import CaptionOptions
from medblip.data.hf import HF_SUFFIXES, load_hf, looks_like_hf
from medblip.data.manifest import MANIFEST_SUFFIXES, find_manifest, load_manifest
from medblip.data.records import (
    Dataset,
    LoadReport,
    RecordCollector,
    apply_limit,
    count_kept,
    normalize_splits,
)
from medblip.data.roco import load_roco, looks_like_roco
from medblip.data.rocov2 import CAPTIONS_SUFFIX, load_rocov2, looks_like_rocov2
from medblip.errors import DataError

FORMATS = ("roco", "rocov2", "hf", "manifest")
Format = Literal["auto", "roco", "rocov2", "hf", "manifest"]
_Loader = Callable[[Path, "tuple[str, ...] | None", CaptionOptions, RecordCollector], None]
_LOADERS: dict[str, _Loader] = {
    "roco": load_roco,
    "rocov2": load_rocov2,
    "hf": load_hf,
    "manifest": load_manifest,
}


def detect_format(path: str | Path) -> tuple[str, Path]:
    """``(format, root to load)`` for ``path``; raises :class:`DataError` when nothing matches.

    A ``*_captions.csv`` file means its folder in ROCOv2 layout; other CSV/JSONL files are
    manifests. Folders are tried as ROCOv2 (also the synthetic benchmark), ROCO, HF files, then a
    manifest.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if path.name.lower().endswith(CAPTIONS_SUFFIX) and looks_like_rocov2(path.parent):
            return "rocov2", path.parent
        if path.name == "captions.txt" and looks_like_roco(path.parent):
            return "roco", path.parent
        if suffix in HF_SUFFIXES:
            return "hf", path
        if suffix in MANIFEST_SUFFIXES:
            return "manifest", path
        raise DataError(f"{path}: unrecognised file type {suffix or '(none)'}: expected a manifest "
                        f"(.jsonl/.csv/.tsv), a .parquet/.arrow export or a dataset folder")
    if looks_like_rocov2(path):
        return "rocov2", path
    if looks_like_roco(path):
        return "roco", path
    if looks_like_hf(path):
        return "hf", path
    if find_manifest(path) is not None:
        return "manifest", path
    raise DataError(
        f"{path}: unrecognised dataset layout: expected ROCO ([data/]{{train,validation,test}}/"
        f"{{radiology,non-radiology}}/captions.txt), ROCOv2 ({{train,valid,test}}{CAPTIONS_SUFFIX}), "
        "Hugging Face .parquet/.arrow files, or manifest.jsonl/.csv"
    )


def load_dataset(
    path: str | Path,
    format: Format = "auto",
    splits: Iterable[str] | None = None,
    caption_options: CaptionOptions | None = None,
    require_images: bool = True,
    limit: int | None = None,
    seed: int = 0,
    roco_subsets: Iterable[str] | None = None,
    require_captions: bool = True,
) -> Dataset:
    """Load any supported layout into records plus a :class:`LoadReport`.

    ``splits`` keeps only those splits (``valid`` is accepted for ``validation``).
    ``require_images=False`` keeps records whose image file is missing (``image=None``) and counts
    them as "image missing" warnings instead of dropping them. ``limit`` keeps at most that many
    records per split, chosen deterministically by ``seed`` (load order is preserved).
    ``roco_subsets`` (ROCO only): the subsets to load, default radiology only (the
    others are counted in ``report.excluded``).
    ``require_captions=False`` lets a manifest without a ``caption`` column (or with empty captions)
    load, for commands that need only the images (``caption``, ``explain``).
    """
    if format == "auto":
        fmt, root = detect_format(path)
    elif format in _LOADERS:
        root = Path(path).expanduser()
        if not root.exists():
            raise DataError(f"{root}: no such file or folder")
        if format in ("roco", "rocov2") and root.is_file():
            root = root.parent  # a captions file names its folder
        fmt = format
    else:
        raise DataError(f"unknown dataset format {format!r}: expected auto or one of {', '.join(FORMATS)}")
    wanted = normalize_splits(splits)
    options = caption_options or CaptionOptions()
    report = LoadReport(format=fmt, path=str(root))
    collector = RecordCollector(report, require_images=require_images, require_captions=require_captions)
    if fmt == "roco":
        load_roco(root, wanted, options, collector, subsets=roco_subsets)
    else:
        _LOADERS[fmt](root, wanted, options, collector)
    records = apply_limit(collector.records, limit, seed, report)
    count_kept(records, report)
    return Dataset(records=records, report=report)
