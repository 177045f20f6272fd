"""Loader for Hugging Face dataset exports on local disk (parquet or ``datasets`` arrow files).

Read with pyarrow only (no ``datasets`` dependency, no network). Columns: ``image`` (struct
``{bytes, path}``, raw bytes or a path string), ``image_id``, ``caption`` and optionally ``cui``.
The split comes from the file name (``train-00000-of-00001.parquet``) or a parent folder
(``validation/data-00000-of-00001.arrow`` as written by ``save_to_disk``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medblip.data.captions import CaptionOptions, normalize_caption
from medblip.data.records import EMPTY_CAPTION, MALFORMED_LINE, Record, RecordCollector, canonical_split
from medblip.errors import DataError

HF_SUFFIXES = (".parquet", ".arrow")
_SPLIT_TOKEN = re.compile(r"(?:^|[-_.])(train|training|validation|valid|val|dev|test)(?=[-_.]|$)", re.I)
_ID_COLUMNS = ("image_id", "id", "ID", "name")
_CAPTION_COLUMNS = ("caption", "Caption", "text")
_CUI_COLUMNS = ("cui", "cuis", "CUIs", "concepts")
_BATCH_ROWS = 256


def find_hf_files(root: Path) -> list[Path]:
    """Parquet/arrow data files under ``root`` (or ``root`` itself), skipping ``datasets`` caches."""
    if root.is_file():
        return [root] if root.suffix.lower() in HF_SUFFIXES else []
    if not root.is_dir():
        return []
    files = [
        p for p in root.rglob("*")
        if p.suffix.lower() in HF_SUFFIXES and p.is_file()
        and not p.name.startswith("cache-")  # map()/filter() caches written beside the data
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files)


def looks_like_hf(root: Path) -> bool:
    return bool(find_hf_files(root))


def split_of(path: Path, root: Path) -> str | None:
    """Split named by the file's stem, else by the nearest folder between it and ``root``."""
    m = _SPLIT_TOKEN.search(path.stem)
    if m:
        return canonical_split(m.group(1))
    for parent in path.parents:
        split = canonical_split(parent.name) if parent.name else None
        if split:
            return split
        if parent == root:
            break
    return None


def _iter_batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS):
                yield batch.to_pylist()
            return
        with pa.memory_map(str(path), "r") as source:
            try:
                # `datasets` writes the IPC *stream* format; plain pyarrow users often write the file format.
                reader: Any = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i).to_pylist()
                return
            for batch in reader:
                yield batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read {path.suffix[1:]} file ({exc})") from None


def _column(names: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _schema_names(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            return list(pq.read_schema(path).names)
        with pa.memory_map(str(path), "r") as source:
            try:
                return list(pa.ipc.open_stream(source).schema.names)
            except pa.ArrowInvalid:
                source.seek(0)
                return list(pa.ipc.open_file(source).schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read {path.suffix[1:]} file ({exc})") from None


def _image_source(value: Any, base: Path) -> tuple[Path | bytes | None, str | None]:
    """(image, original path) from an ``image`` cell: struct, bytes or path string."""
    data, ref = None, None
    if isinstance(value, dict):
        data, ref = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray):
        data = value
    elif isinstance(value, str):
        ref = value
    if data:
        return bytes(data), ref
    if ref:
        p = Path(ref) if Path(ref).is_absolute() else base / ref
        return (p if p.is_file() else None), ref
    return None, ref


def _cuis(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in re.split(r"[;,\s]+", value) if c.strip()]
    return [str(c).strip() for c in value if c is not None and str(c).strip()]


def _load_file(path: Path, split: str, options: CaptionOptions, collector: RecordCollector) -> None:
    report = collector.report
    names = _schema_names(path)
    image_col = "image" if "image" in names else None
    cap_col = _column(names, _CAPTION_COLUMNS)
    if image_col is None or cap_col is None:
        raise DataError(f"{path}: expected columns 'image' and 'caption', found {', '.join(names)}")
    id_col = _column(names, _ID_COLUMNS)
    cui_col = _column(names, _CUI_COLUMNS)
    row = 0
    for batch in _iter_batches(path):
        for cells in batch:
            where = f"{path} row {row}"
            rid = str(cells[id_col]).strip() if id_col and cells.get(id_col) is not None else f"{path.stem}-{row}"
            row += 1
            caption = cells.get(cap_col)
            if not isinstance(caption, str):
                report.drop(MALFORMED_LINE if caption is not None else EMPTY_CAPTION, f"{where}: {rid}")
                continue
            caption = normalize_caption(caption, options)
            if not caption:
                report.drop(EMPTY_CAPTION, f"{where}: {rid}")
                continue
            image, ref = _image_source(cells.get(image_col), path.parent)
            meta: dict[str, Any] = {"source": where}
            if cui_col:
                meta["cuis"] = _cuis(cells.get(cui_col))
            if ref:
                meta["image_path"] = ref
            where_img = where if image is not None else f"{where}: {rid}: image has no bytes and no readable path"
            collector.add(Record(id=rid, image=image, caption=caption, split=split, meta=meta), where_img)


def load_hf(root: Path, splits: tuple[str, ...] | None, options: CaptionOptions,
            collector: RecordCollector) -> None:
    files = find_hf_files(root)
    if not files:
        raise DataError(f"{root}: no .parquet or .arrow files found")
    base = root if root.is_dir() else root.parent
    for path in files:
        split = split_of(path, base)
        if split is None:
            collector.report.warn("split not in file name (assumed train)", str(path))
            split = "train"
        if splits is None or split in splits:
            _load_file(path, split, options, collector)
