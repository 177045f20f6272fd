"""Preprocessed image cache: decoded, resized uint8 pixels in one memory-mapped ``.npy`` per split.

``medblip data cache DATA --out CACHE --size 384`` decodes every image once (JPEG/PNG/DICOM through
:func:`medblip.data.load_image`), resizes it to ``size`` x ``size`` with the model processor's filter
(bicubic for BLIP) and stores it in ``CACHE/<split>.npy`` shaped (N, size, size, 3). Training then
reads rows of a memory-mapped array -- no decoding, no resizing -- and the processor has nothing left
to do but rescale and normalise (which :class:`medblip.perf.batching.PixelNormalizer` does on the
device from uint8, a quarter of the bytes of float32 to move).

``CACHE/index.json`` records, per split, the ids, captions, source files, their sizes and
modification times (``signature``), the SHA-256 of all image bytes (``content_hash``), the size and
the filter. A split is rebuilt when any of those change: :func:`build_image_cache` reuses a split
whose fingerprint still matches, and :class:`CachedImageDataset` refuses a stale cache (a changed,
added or removed image, another size) with a :class:`~medblip.errors.DataError` saying to rebuild.

Exactness: a cached row is what the processor's own resize produces (PIL, same filter, uint8), and
the processor leaves an image that is already ``size`` x ``size`` unresized, so pixel values from the
cache equal those from the original file within float rounding (tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from medblip.data.images import MaxPixels, load_image
from medblip.errors import DataError
from medblip.io import atomic_write_json

if TYPE_CHECKING:
    from medblip.data.records import Dataset, Record

CACHE_VERSION = 2  # 2: EXIF orientation and DICOM colour palettes applied by load_image
INDEX_NAME = "index.json"
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
_RESAMPLE_NAMES = {int(v): k for k, v in RESAMPLE.items()}


# -- fingerprints ------------------------------------------------------------------------------------

def record_signature(record: Record) -> dict[str, Any]:
    """What identifies a record's image without reading it: path + size + mtime, or a hash of bytes."""
    if record.image is None:
        raise DataError(f"record {record.id}: no image to cache (load the dataset with require_images=True)")
    if isinstance(record.image, bytes):
        return {"id": record.id, "source": "<bytes>", "bytes": len(record.image),
                "sha256": hashlib.sha256(record.image).hexdigest()}
    path = Path(record.image)
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
    return {"id": record.id, "source": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def records_fingerprint(records: Iterable[Record], extra: Any = None) -> str:
    """SHA-256 over the ordered record signatures (and captions): changes when any image file changes.

    Cheap (a ``stat`` per file, no reading). ``extra`` (JSON-serialisable) is mixed in, e.g. the size.
    """
    h = hashlib.sha256()
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for r in records:
        sig = record_signature(r)
        sig["caption"] = r.caption
        h.update(json.dumps(sig, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def resample_name(value: Any) -> str:
    """``"bicubic"`` / PIL enum / int (a processor's ``resample``) -> canonical name."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in RESAMPLE:
            raise DataError(f"unknown resample filter {value!r}; use one of {', '.join(RESAMPLE)}")
        return key
    try:
        return _RESAMPLE_NAMES[int(value)]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"unsupported resample filter {value!r}; use one of {', '.join(RESAMPLE)}") from None


def processor_image_settings(image_processor: Any) -> tuple[int, str]:
    """(square size, resample filter name) a transformers image processor resizes to."""
    size = getattr(image_processor, "size", None) or {}
    if isinstance(size, int | float):
        h = w = int(size)
    else:  # a dict or transformers' SizeDict
        h, w = size.get("height"), size.get("width")
        if h is None and size.get("shortest_edge") is not None:
            h = w = size.get("shortest_edge")
    if h is None or h != w:
        raise DataError(f"image processor size {size!r} is not a square; the cache needs one size")
    return int(h), resample_name(getattr(image_processor, "resample", Image.Resampling.BICUBIC))


def decode_resized(source: Path | bytes, size: int, resample: str = "bicubic",
                   max_pixels: MaxPixels = "default", name: str | None = None) -> np.ndarray:
    """Decode to RGB and resize to ``size`` x ``size`` exactly as the PIL image processors do -> uint8 HWC."""
    image = load_image(source, max_pixels=max_pixels, name=name)
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE[resample])
    return np.asarray(image, dtype=np.uint8)


# -- the index -------------------------------------------------------------------------------------

@dataclass
class SplitEntry:
    """One split of the cache: the rows of ``file`` in the order of ``ids``."""

    split: str
    file: str
    ids: list[str]
    captions: list[str]
    signatures: list[dict[str, Any]]
    fingerprint: str
    content_hash: str
    size: int
    resample: str
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "count": len(self.ids), "size": self.size, "resample": self.resample,
                "shape": [len(self.ids), self.size, self.size, 3], "dtype": "uint8",
                "fingerprint": self.fingerprint, "content_hash": self.content_hash,
                "build_seconds": round(self.seconds, 3), "ids": self.ids, "captions": self.captions,
                "sources": [s["source"] for s in self.signatures],
                "bytes": [s["bytes"] for s in self.signatures],
                "mtimes_ns": [s.get("mtime_ns") for s in self.signatures],
                "sha256": [s.get("sha256") for s in self.signatures]}

    @classmethod
    def from_dict(cls, split: str, d: dict[str, Any]) -> SplitEntry:
        sigs = []
        for i, rid in enumerate(d["ids"]):
            sig: dict[str, Any] = {"id": rid, "source": d["sources"][i], "bytes": d["bytes"][i]}
            if d["sources"][i] == "<bytes>":
                sig["sha256"] = d["sha256"][i]
            else:
                sig["mtime_ns"] = d["mtimes_ns"][i]
            sigs.append(sig)
        return cls(split=split, file=d["file"], ids=list(d["ids"]), captions=list(d["captions"]),
                   signatures=sigs, fingerprint=d["fingerprint"], content_hash=d["content_hash"],
                   size=int(d["size"]), resample=d["resample"], seconds=float(d.get("build_seconds", 0.0)))


def split_fingerprint(records: Sequence[Record], size: int, resample: str) -> str:
    return records_fingerprint(records, extra={"version": CACHE_VERSION, "size": size, "resample": resample})


class ImageCache:
    """An image cache folder: ``index.json`` + one ``<split>.npy`` per split (opened memory-mapped)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            raise DataError(f"{self.directory}: not an image cache (no {INDEX_NAME}); build one with "
                            "`medblip data cache DATA --out DIR`")
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{index_path}: unreadable cache index ({exc})") from None
        if self.index.get("version") != CACHE_VERSION:
            raise DataError(f"{index_path}: cache format version {self.index.get('version')} is not "
                            f"{CACHE_VERSION}; rebuild it with `medblip data cache`")
        self.entries = {s: SplitEntry.from_dict(s, d) for s, d in self.index.get("splits", {}).items()}

    @property
    def splits(self) -> list[str]:
        return list(self.entries)

    def entry(self, split: str) -> SplitEntry:
        if split not in self.entries:
            raise DataError(f"{self.directory}: split {split!r} is not cached (cached: {', '.join(self.entries) or 'none'})")
        return self.entries[split]

    def array(self, split: str) -> np.ndarray:
        """The split's (N, H, W, 3) uint8 array, memory-mapped read-only."""
        entry = self.entry(split)
        path = self.directory / entry.file
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable cache array ({exc}); rebuild with `medblip data cache`") from None
        if arr.shape != (len(entry.ids), entry.size, entry.size, 3) or arr.dtype != np.uint8:
            raise DataError(f"{path}: array shape {arr.shape} does not match the index; rebuild the cache")
        return arr

    def stale_reason(self, split: str, records: Sequence[Record], size: int | None = None) -> str | None:
        """Why the cached split does not hold exactly ``records`` at ``size`` (None: it does)."""
        entry = self.entries.get(split)
        if entry is None:
            return f"split {split!r} is not cached"
        if size is not None and entry.size != size:
            return f"cached at size {entry.size}, wanted {size}"
        cached = {rid: i for i, rid in enumerate(entry.ids)}
        for r in records:
            i = cached.get(r.id)
            if i is None:
                return f"record {r.id} is not in the cache"
            sig = record_signature(r)
            if sig != entry.signatures[i]:
                return f"image of {r.id} changed ({sig['source']})"
        return None


# -- building --------------------------------------------------------------------------------------

def build_image_cache(data: str | Path | Dataset, out: str | Path, *, size: int = 384, resample: str = "bicubic",
                      format: str = "auto", splits: Iterable[str] | None = None, workers: int | None = None,
                      force: bool = False, limit: int | None = None, seed: int = 0, caption_options: Any = None,
                      max_pixels: MaxPixels = "default",
                      progress: Callable[[str, int, int], None] | None = None,
                      overwrite: bool = False) -> dict[str, Any]:
    """Build (or bring up to date) the image cache of a dataset in ``out``; returns a summary.

    ``data``: a dataset path (loaded with :func:`~medblip.data.load_dataset`) or a loaded
    :class:`~medblip.data.Dataset`. Splits whose fingerprint (ids, files, sizes, mtimes, captions,
    size, filter) still matches are kept as they are unless ``force``. ``workers``: decoding threads
    (default: the machine's CPU count; PIL releases the GIL while decoding and resizing).
    ``progress(split, done, total)`` is called as images are written. A non-empty ``out`` that is
    not an image cache is refused unless ``overwrite`` (see :mod:`medblip.outputs`).
    """
    from medblip.data import load_dataset
    from medblip.outputs import check_output_dir, prepare_output_dir

    check_output_dir(out, "data cache", overwrite=overwrite, known_files=(INDEX_NAME,))

    if size < 1:
        raise DataError(f"cache size must be positive, got {size}")
    resample = resample_name(resample)
    if isinstance(data, str | Path):
        dataset = load_dataset(data, format=format, splits=splits, caption_options=caption_options,
                               require_images=True, limit=limit, seed=seed)
        source = {"path": str(data), "format": dataset.report.format}
    else:
        dataset = data
        source = {"path": dataset.report.path, "format": dataset.report.format}
    wanted = dataset.splits
    if splits is not None:
        from medblip.data.records import normalize_splits

        wanted = [s for s in normalize_splits(splits) or () if s in dataset.splits]
    if not wanted:
        raise DataError(f"{source['path']}: no records to cache (splits found: {', '.join(dataset.splits) or 'none'})")
    out = prepare_output_dir(out, "data cache", overwrite=overwrite, known_files=(INDEX_NAME,))
    old: ImageCache | None = None
    if (out / INDEX_NAME).is_file():
        try:
            old = ImageCache(out)
        except DataError:
            old = None
    workers = max(1, workers or os.cpu_count() or 1)
    entries: dict[str, SplitEntry] = dict(old.entries) if old is not None else {}
    summary: dict[str, Any] = {"directory": str(out), "size": size, "resample": resample, "splits": {}}
    for split in wanted:
        records = dataset.split(split)
        fingerprint = split_fingerprint(records, size, resample)
        previous = entries.get(split)
        if (not force and previous is not None and previous.fingerprint == fingerprint
                and (out / previous.file).is_file()):
            summary["splits"][split] = {"status": "up to date", "count": len(records), "seconds": 0.0}
            continue
        t0 = time.perf_counter()
        entry = _build_split(split, records, out, size, resample, fingerprint, workers, max_pixels, progress)
        entry.seconds = time.perf_counter() - t0
        entries[split] = entry
        # The index is rewritten after every split, so an interrupted build keeps what is finished.
        _write_index(out, entries, source)
        summary["splits"][split] = {"status": "built", "count": len(records), "seconds": round(entry.seconds, 3),
                                    "bytes": len(records) * size * size * 3}
    _write_index(out, entries, source)
    return summary


def _write_index(out: Path, entries: dict[str, SplitEntry], source: dict[str, Any]) -> None:
    atomic_write_json(out / INDEX_NAME, {
        "version": CACHE_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source,
        "splits": {s: e.to_dict() for s, e in entries.items()}})


def _build_split(split: str, records: Sequence[Record], out: Path, size: int, resample: str, fingerprint: str,
                 workers: int, max_pixels: MaxPixels,
                 progress: Callable[[str, int, int], None] | None) -> SplitEntry:
    n = len(records)
    final = out / f"{split}.npy"
    tmp = out / f".{split}.npy.tmp"
    signatures = [record_signature(r) for r in records]
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    digests: list[bytes] = [b""] * n

    def work(i: int) -> None:
        r = records[i]
        raw = r.image if isinstance(r.image, bytes) else Path(r.image).read_bytes()  # type: ignore[arg-type]
        digests[i] = hashlib.sha256(raw).digest()
        # Decode from the record itself (a path keeps its extension: DICOM files without a preamble).
        name = None if not isinstance(r.image, bytes) else f"{r.id} (in-memory image)"
        arr[i] = decode_resized(r.image, size, resample, max_pixels=max_pixels, name=name)  # type: ignore[arg-type]

    try:
        done = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(work, range(n)):
                done += 1
                if progress is not None:
                    progress(split, done, n)
        arr.flush()
        os.replace(tmp, final)  # the open map follows the renamed file (POSIX)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    content = hashlib.sha256(b"".join(digests)).hexdigest()
    return SplitEntry(split=split, file=final.name, ids=[r.id for r in records], captions=[r.caption for r in records],
                      signatures=signatures, fingerprint=fingerprint, content_hash=content, size=size,
                      resample=resample)


def remove_image_cache(directory: str | Path) -> None:
    directory = Path(directory)
    if (directory / INDEX_NAME).is_file():
        shutil.rmtree(directory)


# -- reading ---------------------------------------------------------------------------------------

class CachedImageDataset:
    """A torch-style Dataset over one cached split: item ``i`` is (uint8 HWC array, caption).

    ``records``: the records a trainer wants, in its order (e.g. ``dataset.split("train")``); every one
    must be in the cache with an unchanged image file, else a :class:`DataError` says to rebuild.
    Without ``records`` the cache's own order and captions are used. ``as_pil=True`` returns PIL images
    (drop-in for :class:`medblip.training.data.CaptionDataset` with any adapter's ``collate``).

    The memory map is opened lazily in each process, so DataLoader workers (fork or spawn) share the
    page cache instead of pickling the array.
    """

    def __init__(self, cache: str | Path | ImageCache, split: str, records: Sequence[Record] | None = None,
                 *, size: int | None = None, as_pil: bool = False) -> None:
        from medblip.data.records import canonical_split

        self.cache = cache if isinstance(cache, ImageCache) else ImageCache(cache)
        self.split = canonical_split(split) or split
        self.as_pil = as_pil
        entry = self.cache.entry(self.split)
        if records is not None:
            reason = self.cache.stale_reason(self.split, records, size)
            if reason is not None:
                raise DataError(f"image cache {self.cache.directory} is stale for split {self.split!r}: {reason}; "
                                "rebuild it with `medblip data cache`")
            rows = {rid: i for i, rid in enumerate(entry.ids)}
            self.rows = [rows[r.id] for r in records]
            self.ids = [r.id for r in records]
            self.captions = [r.caption for r in records]
        else:
            if size is not None and entry.size != size:
                raise DataError(f"image cache {self.cache.directory} holds size {entry.size}, wanted {size}")
            self.rows = list(range(len(entry.ids)))
            self.ids = list(entry.ids)
            self.captions = list(entry.captions)
        self.size = entry.size
        self._path = self.cache.directory / entry.file
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self.cache.array(self.split)
        return self._array

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, index: int) -> np.ndarray:
        return np.asarray(self.array[self.rows[index]])

    def pixels_batch(self, indices: Sequence[int]) -> np.ndarray:
        """(B, H, W, 3) uint8 for several items in one fancy-indexed read."""
        return np.asarray(self.array[[self.rows[i] for i in indices]])

    def __getitem__(self, index: int) -> tuple[Any, str]:
        px = self.pixels(index)
        return (Image.fromarray(px, "RGB") if self.as_pil else px), self.captions[index]
