"""Loader for a generic manifest: CSV/TSV or JSON lines with ``image`` and ``caption`` columns.

Optional ``id`` and ``split`` columns; every other column goes into ``Record.meta``. Image paths are
relative to the manifest's folder (absolute paths work too). Without an ``id`` the record id is the
image path without its extension; a record without a ``split`` is put in ``train`` and counted in
``LoadReport.unsplit`` (training then carves a validation split from it, evaluation uses all of it).
Where captions are not needed (``require_captions=False``: captioning, explaining) a manifest may have
an ``image`` column only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medblip.data.captions import CaptionOptions, iter_text_lines, normalize_caption
from medblip.data.records import (
    EMPTY_CAPTION,
    MALFORMED_LINE,
    Record,
    RecordCollector,
    canonical_split,
    data_lines,
)
from medblip.data.rocov2 import iter_csv_rows
from medblip.errors import DataError

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".tsv")
MANIFEST_NAMES = tuple(f"manifest{s}" for s in MANIFEST_SUFFIXES)
INVALID_JSON = "invalid JSON"
MISSING_FIELD = "missing image/caption field"
UNKNOWN_SPLIT = "unknown split"
DEFAULT_SPLIT = "train"


def find_manifest(root: Path) -> Path | None:
    """``root`` itself if it is a manifest file; else ``manifest.{jsonl,csv,tsv}`` or the only one."""
    if root.is_file():
        return root if root.suffix.lower() in MANIFEST_SUFFIXES else None
    if not root.is_dir():
        return None
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    candidates = [root / n for n in sorted(os.listdir(root))
                  if n.lower().endswith(MANIFEST_SUFFIXES) and (root / n).is_file()]
    return candidates[0] if len(candidates) == 1 else None


def _iter_jsonl(path: Path, collector: RecordCollector) -> Iterator[tuple[str, dict[str, Any]]]:
    report = collector.report
    for where, text in data_lines(path, iter_text_lines(path), report):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.drop(INVALID_JSON, f"{where}: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            report.drop(INVALID_JSON, f"{where}: expected an object, got {type(obj).__name__}")
            continue
        yield where, obj


def _no_captions(manifest: Path, found: str) -> DataError:
    return DataError(f"{manifest}: no 'caption' column ({found}): training and evaluation need a reference "
                     "caption per image; to caption images without one use `medblip caption`")


def _iter_csv(path: Path, collector: RecordCollector) -> Iterator[tuple[str, dict[str, Any]]]:
    report = collector.report
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = iter_csv_rows(path, delimiter=delimiter)
    first = next(rows, None)
    if first is None:
        return
    header = [h.strip() for h in first[1]]
    lowered = [h.lower() for h in header]
    if "image" not in lowered or ("caption" not in lowered and collector.require_captions):
        if "image" in lowered:
            raise _no_captions(path, f"header: {', '.join(header)}")
        needed = "columns image and caption" if collector.require_captions else "an image column"
        raise DataError(f"{path}:1: expected a header with {needed}, "
                        f"found {', '.join(header) or 'nothing'}")
    header = [h.lower() if h.lower() in ("image", "caption", "id", "split") else h for h in header]
    for where, row in data_lines(path, rows, report):
        if len(row) != len(header):
            report.drop(MALFORMED_LINE, f"{where}: expected {len(header)} columns, got {len(row)}")
            continue
        yield where, dict(zip(header, row, strict=True))


def _resolve_image(value: Any, base: Path) -> tuple[Path | None, str]:
    """(existing image path or None, why it is missing)."""
    if not isinstance(value, str) or not value.strip():
        return None, "empty image path"
    value = value.strip()
    if "://" in value:
        return None, f"remote image {value!r} is not fetched"
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    return (p, "") if p.is_file() else (None, f"no file {value}")


def load_manifest(path: Path, splits: tuple[str, ...] | None, options: CaptionOptions,
                  collector: RecordCollector) -> None:
    report = collector.report
    manifest = find_manifest(path)
    if manifest is None:
        raise DataError(f"{path}: no manifest found (expected manifest.jsonl/.csv or a single .jsonl/.csv)")
    rows = _iter_jsonl(manifest, collector) if manifest.suffix.lower() == ".jsonl" else _iter_csv(manifest, collector)
    base = manifest.parent
    parsed = 0
    keys_seen: list[str] = []
    need_caption = collector.require_captions
    image_only = 0  # rows with an image and no caption field (JSONL)
    for where, row in rows:
        if "image" not in row or ("caption" not in row and need_caption):
            keys_seen = keys_seen or list(row)
            image_only += "image" in row
            report.drop(MISSING_FIELD, f"{where}: has {', '.join(row) or 'no fields'}")
            continue
        parsed += 1
        raw_split = row.get("split")
        unsplit = raw_split in (None, "")
        report.unsplit += unsplit
        split = DEFAULT_SPLIT if unsplit else canonical_split(str(raw_split))
        if split is None:
            report.drop(UNKNOWN_SPLIT, f"{where}: {raw_split!r}")
            continue
        if splits is not None and split not in splits:
            continue
        caption = row.get("caption")
        caption = normalize_caption(caption, options) if isinstance(caption, str) else ""
        image_value = row["image"]
        rid = str(row.get("id") or "").strip()
        if not rid:
            rid = str(Path(str(image_value)).with_suffix("")) if image_value else where
        if not caption and need_caption:
            report.drop(EMPTY_CAPTION, f"{where}: {rid}")
            continue
        image, why = _resolve_image(image_value, base)
        meta = {k: v for k, v in row.items() if k not in ("image", "caption", "id", "split")}
        meta["source"] = where
        collector.add(Record(id=rid, image=image, caption=caption, split=split, meta=meta),
                      where if image else f"{where}: {rid}: {why}")
    if parsed == 0 and keys_seen:
        if image_only:
            raise _no_captions(manifest, f"first row has {', '.join(keys_seen)}")
        raise DataError(f"{manifest}: no row has both 'image' and 'caption' (first row has "
                        f"{', '.join(keys_seen)})")
