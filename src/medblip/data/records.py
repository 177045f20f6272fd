"""The record type every loader produces, the report of what was dropped, and the dataset pair."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip.errors import DataError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}

# Reasons shared by the loaders, so reports (and tests) use one spelling.
IMAGE_MISSING = "image missing"
DUPLICATE_ID = "duplicate id"
EMPTY_CAPTION = "empty caption"
INVALID_UTF8 = "invalid UTF-8"
MALFORMED_LINE = "malformed line"
MAX_EXAMPLES = 5


def canonical_split(name: str) -> str | None:
    """``valid``/``val``/``dev`` -> ``validation`` etc.; ``None`` for names that are no split."""
    return _SPLIT_ALIASES.get(name.strip().lower())


def normalize_splits(splits: Iterable[str] | None) -> tuple[str, ...] | None:
    """Validate a user's ``splits`` argument; ``None`` means every split."""
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [splits]
    out = []
    for s in splits:
        c = canonical_split(s)
        if c is None:
            raise DataError(f"unknown split {s!r}: expected one of {', '.join(SPLITS)} (or valid/val)")
        out.append(c)
    return tuple(dict.fromkeys(out))


@dataclass
class Record:
    """One image-caption pair.

    ``image`` is a file path, the encoded bytes (Hugging Face exports) or ``None`` when the file is
    missing and the dataset was loaded with ``require_images=False``.
    """

    id: str
    image: Path | bytes | None
    caption: str
    split: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What a loader kept, what it dropped and why, with a few ``file:line`` examples per reason.

    ``dropped`` counts records removed; ``warnings`` counts problems that removed nothing (a record
    kept without its image, a tab inside a caption replaced by a space, a blank line skipped).
    """

    format: str = ""
    path: str = ""
    kept: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    limited: dict[str, list[int]] = field(default_factory=dict)  # split -> [before, after]
    #: records left out by choice, not by a problem (e.g. ROCO's non-radiology subset): what -> count
    excluded: Counter[str] = field(default_factory=Counter)
    #: records whose source names no split (a manifest without a ``split`` column); loaders put them in
    #: ``train``, and readers of one split (evaluate, training's validation) decide what that means
    unsplit: int = 0
    #: what a reader decided about these records (e.g. evaluating every record of a split-less manifest)
    notes: list[str] = field(default_factory=list)

    def _example(self, reason: str, where: str) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)

    def drop(self, reason: str, where: str) -> None:
        """Count one dropped record; ``where`` is ``file:line`` plus a short detail."""
        self.dropped[reason] += 1
        self._example(reason, where)

    def warn(self, reason: str, where: str) -> None:
        self.warnings[reason] += 1
        self._example(reason, where)

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def missing_images(self) -> int:
        """Records without an image file, whether dropped or kept with ``image=None``."""
        return self.dropped[IMAGE_MISSING] + self.warnings[IMAGE_MISSING]

    def summary(self) -> str:
        """A few human-readable lines: totals, per split, then each reason with its first example."""
        splits = ", ".join(f"{s} {n}" for s, n in self.kept.items()) or "none"
        lines = [f"{self.format or 'dataset'} at {self.path}: {self.total_kept} records kept ({splits}); "
                 f"{self.total_dropped} dropped"]
        for title, counter in (("dropped", self.dropped), ("warning", self.warnings)):
            for reason, n in counter.most_common():
                ex = self.examples.get(reason, [])
                lines.append(f"  {title}: {reason}: {n}" + (f" (e.g. {ex[0]})" if ex else ""))
        for what, n in self.excluded.items():
            lines.append(f"  not loaded: {what}: {n} records")
        for split, (before, after) in self.limited.items():
            lines.append(f"  limit: {split} subset to {after} of {before}")
        if self.unsplit:
            lines.append(f"  no split given for {self.unsplit} record(s): they are in 'train'")
        lines += [f"  note: {n}" for n in self.notes]
        if self.total_kept == 0 and self.dropped[IMAGE_MISSING]:
            lines.append("  no images were found: a text-only release (such as ROCO's metadata) needs its "
                         "images downloaded, or load it with require_images=False")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "kept": dict(self.kept),
            "total_kept": self.total_kept,
            "dropped": dict(self.dropped.most_common()),
            "total_dropped": self.total_dropped,
            "warnings": dict(self.warnings.most_common()),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "limited": {k: list(v) for k, v in self.limited.items()},
            "excluded": dict(self.excluded),
            "unsplit": self.unsplit,
            "notes": list(self.notes),
        }


def data_lines(path: Path, lines: Iterable[tuple[int, Any, bool]], report: LoadReport) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for the lines (text) or CSV rows (fields) of ``path`` that hold data.

    ``lines``: ``(line number, text or fields, had bad UTF-8)``. A blank one is counted as a
    warning; one with bytes that are not UTF-8 is dropped and counted (its caption would be corrupt).
    """
    for lineno, value, bad in lines:
        where = f"{path}:{lineno}"
        if not (value.strip() if isinstance(value, str) else any(f.strip() for f in value)):
            report.warn("blank line", where)
            continue
        if bad:
            shown = value if isinstance(value, str) else ",".join(value)
            report.drop(INVALID_UTF8, f"{where}: {shown[:60]!r}")
            continue
        yield where, value


@dataclass
class Dataset:
    """Records in load order plus the report of how they were loaded."""

    records: list[Record]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def splits(self) -> list[str]:
        """Splits present, in canonical order."""
        present = {r.split for r in self.records}
        return [s for s in SPLITS if s in present]

    def split(self, name: str) -> list[Record]:
        canon = canonical_split(name)
        if canon is None:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == canon]


class RecordCollector:
    """Accumulates loader output: drops duplicate ids and (optionally) records without images.

    Loaders call :meth:`add` for each parsed record; the first occurrence of an id wins, the way a
    reader of the original files would see it. ``require_captions=False``: a loader that can (the
    manifest) keeps rows without a caption (``caption=""``), for captioning and explaining.
    """

    def __init__(self, report: LoadReport, require_images: bool, require_captions: bool = True) -> None:
        self.report = report
        self.require_images = require_images
        self.require_captions = require_captions
        self.records: list[Record] = []
        self._seen: dict[str, str] = {}

    def add(self, record: Record, where: str) -> None:
        first = self._seen.get(record.id)
        if first is not None:
            self.report.drop(DUPLICATE_ID, f"{where}: {record.id} (first at {first})")
            return
        self._seen[record.id] = where
        if record.image is None:
            if self.require_images:
                self.report.drop(IMAGE_MISSING, where)
                return
            self.report.warn(IMAGE_MISSING, where)
        self.records.append(record)


def apply_limit(records: list[Record], limit: int | None, seed: int, report: LoadReport) -> list[Record]:
    """Keep at most ``limit`` records per split, chosen by ``seed``, preserving load order."""
    if limit is None:
        return records
    if limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    by_split: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_split.setdefault(r.split, []).append(i)
    keep: set[int] = set()
    for split, idx in by_split.items():
        if len(idx) <= limit:
            keep.update(idx)
            continue
        # A string seed is hashed with SHA-512 by `random`, so the subset is stable across runs.
        rng = random.Random(f"{seed}:{split}")
        keep.update(rng.sample(idx, limit))
        report.limited[split] = [len(idx), limit]
    return [r for i, r in enumerate(records) if i in keep]


def count_kept(records: list[Record], report: LoadReport) -> None:
    counts = Counter(r.split for r in records)
    report.kept = {s: counts[s] for s in SPLITS if counts[s]}
