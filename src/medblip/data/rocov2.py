"""Loader for ROCOv2 (ImageCLEFmedical Caption / Zenodo release) and the synthetic benchmark.

Layout: ``{train,valid,test}_captions.csv`` (``ID,Caption``), optional ``{split}_concepts.csv``
(``ID,CUIs`` with CUIs separated by ``;``), images in ``{split}/`` or ``{split}_images/`` named
``<ID>.jpg`` (``.png`` also accepted).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from medblip.data.captions import (
    CaptionOptions,
    decode_text,
    has_bad_bytes,
    normalize_caption,
    replace_bad_bytes,
)
from medblip.data.records import (
    EMPTY_CAPTION,
    INVALID_UTF8,
    MALFORMED_LINE,
    SPLITS,
    LoadReport,
    Record,
    RecordCollector,
    canonical_split,
    data_lines,
)
from medblip.errors import DataError

CAPTIONS_SUFFIX = "_captions.csv"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_caption_files(root: Path) -> list[tuple[str, Path]]:
    """``(split, file)`` for each ``<split>_captions.csv`` in ``root``, in canonical split order."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return []
    for name in sorted(os.listdir(root)):
        if not name.lower().endswith(CAPTIONS_SUFFIX):
            continue
        split = canonical_split(name[: -len(CAPTIONS_SUFFIX)])
        if split and split not in found and (root / name).is_file():
            found[split] = root / name
    return [(s, found[s]) for s in SPLITS if s in found]


def looks_like_rocov2(root: Path) -> bool:
    return bool(find_caption_files(root))


def iter_csv_rows(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str], bool]]:
    """``(first line number, fields, had bad UTF-8)`` per CSV row; quoted newlines are allowed."""
    text = decode_text(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        bad = any(has_bad_bytes(f) for f in row)
        yield start, ([replace_bad_bytes(f) for f in row] if bad else row), bad
        start = reader.line_num + 1


def _header_index(path: Path, header: list[str], wanted: tuple[str, ...]) -> list[int]:
    names = [h.strip().lower() for h in header]
    missing = [w for w in wanted if w.lower() not in names]
    if missing:
        raise DataError(f"{path}:1: expected a header with columns {', '.join(wanted)}, "
                        f"found {', '.join(header) or 'nothing'}")
    return [names.index(w.lower()) for w in wanted]


def _read_concepts(path: Path, report: LoadReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not path.is_file():
        return out
    rows = iter_csv_rows(path)
    first = next(rows, None)
    if first is None:
        return out
    id_col, cui_col = _header_index(path, first[1], ("ID", "CUIs"))
    for lineno, row, bad in rows:
        if bad:
            report.warn(f"{INVALID_UTF8} in {path.name}", f"{path}:{lineno}")
        if len(row) > max(id_col, cui_col) and row[id_col].strip() not in out:
            out[row[id_col].strip()] = [c.strip() for c in row[cui_col].split(";") if c.strip()]
    return out


def _image_index(root: Path, split_file_name: str, split: str) -> tuple[dict[str, Path], Path | None]:
    """ID -> image path for the first existing image folder of ``split``."""
    prefix = split_file_name[: -len(CAPTIONS_SUFFIX)]  # as written: "valid", "train", ...
    names = dict.fromkeys([prefix, split, f"{prefix}_images", f"{split}_images"])
    for name in names:
        folder = root / name
        if folder.is_dir():
            nested = folder / prefix  # some archives unpack to train_images/train/
            if nested.is_dir() and not any(f.lower().endswith(_IMAGE_SUFFIXES) for f in os.listdir(folder)):
                folder = nested
            index: dict[str, Path] = {}
            # Sorted so that ".jpg" wins over ".png" for the same ID, deterministically.
            for fname in sorted(os.listdir(folder), key=lambda n: (Path(n).stem, n.lower().endswith(".png"))):
                stem, suffix = os.path.splitext(fname)
                if suffix.lower() in _IMAGE_SUFFIXES:
                    index.setdefault(stem, folder / fname)
            return index, folder
    return {}, None


def _load_split(root: Path, split: str, path: Path, options: CaptionOptions,
                collector: RecordCollector) -> None:
    report = collector.report
    rows = iter_csv_rows(path)
    first = next(rows, None)
    if first is None:
        report.warn("empty captions file", str(path))
        return
    id_col, cap_col = _header_index(path, first[1], ("ID", "Caption"))
    prefix = path.name[: -len(CAPTIONS_SUFFIX)]
    concepts = _read_concepts(root / f"{prefix}_concepts.csv", report)
    images, folder = _image_index(root, path.name, split)
    if folder is None:
        report.warn("images folder missing", f"{root}/{prefix}/ or {root}/{prefix}_images/")
    width = len(first[1])

    for where, row in data_lines(path, rows, report):
        if len(row) <= max(id_col, cap_col):
            report.drop(MALFORMED_LINE, f"{where}: expected {width} columns, got {len(row)}")
            continue
        if len(row) > width and cap_col == width - 1:
            # An unquoted comma split the caption (the last column): glue it back together.
            report.warn("unquoted comma in caption (rejoined)", where)
            row = [*row[:cap_col], ",".join(row[cap_col:])]
        rid = row[id_col].strip()
        caption = normalize_caption(row[cap_col], options)
        if not rid:
            report.drop(MALFORMED_LINE, f"{where}: empty ID")
            continue
        if not caption:
            report.drop(EMPTY_CAPTION, f"{where}: {rid}")
            continue
        image = images.get(rid)
        where_img = where if image or folder is None else f"{where}: {rid}: no {folder.name}/{rid}.jpg"
        meta = {"cuis": concepts.get(rid, []), "source": where}
        collector.add(Record(id=rid, image=image, caption=caption, split=split, meta=meta), where_img)


def load_rocov2(root: Path, splits: tuple[str, ...] | None, options: CaptionOptions,
                collector: RecordCollector) -> None:
    files = find_caption_files(root)
    if not files:
        raise DataError(f"{root}: no ROCOv2 layout found (expected {{train,valid,test}}{CAPTIONS_SUFFIX})")
    for split, path in files:
        if splits is None or split in splits:
            _load_split(root, split, path, options, collector)
