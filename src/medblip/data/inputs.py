"""Which images to caption: files, folders (recursively), glob patterns, manifests and DICOM series.

:func:`find_inputs` turns what a user types after ``medblip caption`` into :class:`InputItem` s, one per
image to caption, and lists what it could not use (a missing path, an unreadable DICOM header) with
the reason instead of failing.

DICOM files are grouped into series by ``SeriesInstanceUID`` across every input and ordered by
``InstanceNumber`` (then slice position along the patient axis, then file name). With
``series="middle"`` (the default) a series gives one item, its middle slice (the upper one of the two
middle slices for an even count); a multi-frame file gives its middle frame. With ``series="all"``
every slice and every frame is an item. Pixels are decoded later, by
:func:`medblip.data.images.load_image` (modality LUT, VOI LUT / window, MONOCHROME1 inversion), so a
slice is windowed exactly as medblip's dataset reader windows it.

Item ids are stable across runs (resume and multi-process merging rely on them): the file's absolute
path, with ``#<frame>`` for one frame of a multi-frame file; a manifest's own ids for its rows.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medblip.data.images import IMAGE_SUFFIXES
from medblip.errors import ConfigError, DataError, ImageError

if TYPE_CHECKING:
    from PIL import Image

SERIES_MODES = ("middle", "all")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")
_GLOB_CHARS = "*?["
#: header tags needed for grouping (read without pixel data)
_HEADER_TAGS = ("SeriesInstanceUID", "InstanceNumber", "NumberOfFrames", "ImagePositionPatient",
                "ImageOrientationPatient", "Modality", "SeriesDescription")
#: the columns of a caption row, in output order (``caption`` comes last)
ROW_FIELDS = ("id", "path", "series_uid", "instance_number", "frame")


@dataclass(frozen=True)
class InputItem:
    """One image to caption. ``frame``: 0-based frame of a multi-frame DICOM (``None``: the file's
    single image, or its middle frame). ``series_uid``/``instance_number``: from the DICOM header."""

    id: str
    path: Path
    frame: int | None = None
    series_uid: str | None = None
    instance_number: int | None = None

    @property
    def image(self) -> Path:
        """The file, as a :class:`~medblip.data.Record` names its image (resume fingerprints read it)."""
        return self.path

    @property
    def label(self) -> str:
        """How the item is shown to a person: the path as found, plus ``#frame``."""
        return f"{self.path}#{self.frame}" if self.frame is not None else str(self.path)

    def load(self) -> Image.Image:
        from medblip.data.images import load_image

        return load_image(self.path, frame=self.frame)

    def fields(self) -> dict[str, Any]:
        """The row fields (:data:`ROW_FIELDS`) of this item."""
        return {"id": self.id, "path": str(self.path), "series_uid": self.series_uid,
                "instance_number": self.instance_number, "frame": self.frame}


@dataclass
class InputScan:
    """Result of :func:`find_inputs`: the items in input order, and what was skipped and why."""

    items: list[InputItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or pattern, reason)
    series: int = 0  # DICOM series found (of more than one file, or multi-frame)
    ignored: int = 0  # files in folders that are neither images nor DICOM (not listed)

    def summary(self) -> str:
        parts = [f"{len(self.items)} image(s) to caption"]
        if self.series:
            parts.append(f"{self.series} DICOM series")
        if self.skipped:
            parts.append(f"{len(self.skipped)} input(s) skipped")
        if self.ignored:
            parts.append(f"{self.ignored} other file(s) in folders ignored")
        return ", ".join(parts)


@dataclass
class _Dicom:
    path: Path
    order: int  # discovery order, for placing the series among the other inputs
    series_uid: str | None
    instance_number: int | None
    frames: int
    position: float | None


def find_inputs(inputs: Sequence[str | Path], *, series: str = "middle", progress: bool = False) -> InputScan:
    """Items for ``inputs`` (files, folders, glob patterns, CSV/JSONL manifests with an ``image`` column).

    Nothing here raises for a bad input: it is skipped with its reason (``InputScan.skipped``).
    ``progress``: a bar over the files found (reading DICOM headers takes a while in large archives).
    """
    from tqdm.auto import tqdm

    if series not in SERIES_MODES:
        raise ConfigError(f"--series must be one of {', '.join(SERIES_MODES)}, not {series!r}")
    if not inputs:
        raise ConfigError("no input: give image files, folders or glob patterns")
    scan = InputScan(items=[])
    files: list[Path] = []  # raster images and DICOM candidates, in discovery order
    manifest_items: list[tuple[int, InputItem]] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text).expanduser()
        if path.is_file() and path.suffix.lower() in _MANIFEST_SUFFIXES:
            manifest_items += [(len(files), item) for item in _manifest_items(path, scan)]
        elif path.is_file():
            files.append(path)
        elif path.is_dir():
            files += _walk(path, scan)
        elif any(ch in text for ch in _GLOB_CHARS):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                scan.skipped.append((text, "no file matches this pattern"))
            for m in matches:
                mp = Path(m)
                files += _walk(mp, scan) if mp.is_dir() else [mp] if mp.is_file() else []
        else:
            scan.skipped.append((text, "no such file or folder"))

    placed: list[tuple[int, InputItem]] = list(manifest_items)
    dicoms: list[_Dicom] = []
    reached: set[str] = set()
    for order, f in enumerate(tqdm(files, desc="finding images", unit="file", dynamic_ncols=True,
                                   disable=not progress or len(files) < 500)):
        if os.path.abspath(f) in reached:  # a file reached twice (folder and pattern) counts once
            continue
        reached.add(os.path.abspath(f))
        kind = _kind(f)
        if kind == "image":
            placed.append((order, InputItem(id=_abs_id(f), path=f)))
        elif kind == "dicom":
            try:
                dicoms.append(_read_header(f, order))
            except ImageError as exc:
                scan.skipped.append((str(f), _reason(exc, f)))
        else:
            scan.skipped.append((str(f), "not an image or DICOM file"))
    for group in _group_series(dicoms):
        if len(group) > 1 or group[0].frames > 1:
            scan.series += 1
        placed += [(group[0].order, item) for item in _series_items(group, series)]
    seen: set[str] = set()
    for _, item in sorted(placed, key=lambda pair: pair[0]):  # stable: series keep their slice order
        if item.id not in seen:
            seen.add(item.id)
            scan.items.append(item)
    return scan


def _abs_id(path: Path, frame: int | None = None) -> str:
    base = os.path.abspath(path)
    return f"{base}#{frame}" if frame is not None else base


def _reason(exc: Exception, path: Path) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _walk(root: Path, scan: InputScan) -> list[Path]:
    """Image and DICOM candidates under ``root``, recursively, in sorted order; hidden entries skipped."""
    out: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = Path(folder) / name
            suffix = p.suffix.lower()
            if suffix in IMAGE_SUFFIXES or (not suffix or not _known_other(suffix)) and _has_dicom_magic(p):
                out.append(p)
            else:
                scan.ignored += 1
    return out


def _known_other(suffix: str) -> bool:
    """Suffixes that are surely not DICOM (DICOM series often come without any suffix or as ``.IMA``)."""
    return suffix in {".txt", ".json", ".jsonl", ".csv", ".tsv", ".md", ".html", ".xml", ".yaml", ".yml",
                      ".py", ".npy", ".npz", ".pdf", ".zip", ".gz", ".tar"}


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES or _has_dicom_magic(path):
        return "dicom"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "other"


def _read_header(path: Path, order: int) -> _Dicom:
    """Grouping tags of a DICOM file; :class:`ImageError` when it is no readable DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with path.open("rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS),
                                 force=not _has_dicom_magic(path))
    except InvalidDicomError as exc:
        raise ImageError(f"{path}: not a valid DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{path}: cannot parse DICOM header ({type(exc).__name__}: {exc})") from None
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or None
    return _Dicom(path=path, order=order, series_uid=uid, instance_number=_int(ds.get("InstanceNumber")),
                  frames=_int(ds.get("NumberOfFrames")) or 1, position=_slice_position(ds))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _slice_position(ds: Any) -> float | None:
    """Position along the slice normal (ImagePositionPatient . (row x column direction))."""
    try:
        pos = [float(v) for v in ds.ImagePositionPatient]
        o = [float(v) for v in ds.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(pos) != 3 or len(o) != 6:
        return None
    normal = (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])
    return sum(p * n for p, n in zip(pos, normal, strict=True))


def _group_series(dicoms: Iterable[_Dicom]) -> list[list[_Dicom]]:
    """Files of one SeriesInstanceUID together, each group in slice order; files without a UID alone."""
    groups: dict[str, list[_Dicom]] = {}
    alone: list[list[_Dicom]] = []
    for d in dicoms:
        if d.series_uid is None:
            alone.append([d])
        else:
            groups.setdefault(d.series_uid, []).append(d)

    def key(d: _Dicom) -> tuple[Any, ...]:
        return (d.instance_number is None, d.instance_number or 0, d.position is None, d.position or 0.0,
                str(d.path))

    out = [sorted(g, key=key) for g in groups.values()] + alone
    return sorted(out, key=lambda g: min(d.order for d in g))


def _series_items(group: list[_Dicom], mode: str) -> list[InputItem]:
    chosen = [group[len(group) // 2]] if mode == "middle" else group
    items: list[InputItem] = []
    for d in chosen:
        frames: list[int | None] = list(range(d.frames)) if mode == "all" and d.frames > 1 else [None]
        items += [InputItem(id=_abs_id(d.path, f), path=d.path, frame=f, series_uid=d.series_uid,
                            instance_number=d.instance_number) for f in frames]
    return items


def _manifest_items(path: Path, scan: InputScan) -> list[InputItem]:
    """The images a manifest lists (its ``caption`` and ``split`` columns are not needed here)."""
    from medblip.data.loader import load_dataset
    from medblip.data.records import IMAGE_MISSING

    try:
        ds = load_dataset(path, format="manifest", require_images=False, require_captions=False)
    except DataError as exc:
        scan.skipped.append((str(path), _reason(exc, path)))
        return []
    for reason, n in ds.report.dropped.items():
        examples = ds.report.examples.get(reason, [])
        scan.skipped.append((str(path), f"{n} row(s) dropped: {reason}" + (f" (e.g. {examples[0]})"
                                                                               if examples else "")))
    items = []
    for rec in ds.records:
        if not isinstance(rec.image, Path):
            scan.skipped.append((str(rec.meta.get("source", path)), f"{IMAGE_MISSING} for row {rec.id!r}"))
            continue
        items.append(InputItem(id=str(rec.id), path=rec.image))
    return items
