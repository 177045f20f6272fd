"""Loader for the original ROCO release (Pelka et al., 2018).

Layout: ``data/{train,validation,test}/{radiology,non-radiology}/`` with ``captions.txt``,
``keywords.txt``, ``cuis.txt``, ``semtypes.txt``, ``dlinks.txt``, ``licences.txt`` and an
``images/`` folder whose files are named ``<ROCO_ID>.jpg`` (current fetch script) or
``<PMCID>_<original name>`` (older ones).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medblip.data.captions import CaptionOptions, iter_text_lines, normalize_caption
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

SUBSETS = ("radiology", "non-radiology")
#: what a study fine-tunes on: the radiology figures (non-radiology/ holds charts, photos, drawings)
DEFAULT_SUBSETS = ("radiology",)
CAPTIONS_FILE = "captions.txt"
_PMC_ID = re.compile(r"PMC\d+")
_ROCO_SUFFIXES = (".jpg", ".jpeg", ".png")


def _is_subset_dir(path: Path) -> bool:
    return (path / CAPTIONS_FILE).is_file()


def _split_dirs(data_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for name in sorted(os.listdir(data_dir)) if data_dir.is_dir() else []:
        split = canonical_split(name)
        sub = data_dir / name
        if split and sub.is_dir() and any(_is_subset_dir(sub / s) for s in SUBSETS):
            found.append((split, sub))
    return sorted(found, key=lambda t: SPLITS.index(t[0]))


def find_roco_subsets(root: Path) -> list[tuple[str, str, Path]]:
    """``(split, subset, directory)`` for every captions folder under ``root``.

    ``root`` may be the folder holding ``data/``, ``data/`` itself, one split folder, or one
    ``radiology``/``non-radiology`` folder. Returns ``[]`` when nothing looks like ROCO.
    """
    root = Path(root)
    if _is_subset_dir(root):
        split = canonical_split(root.parent.name)
        if split is None:
            raise DataError(f"{root}: cannot tell the ROCO split: expected the folder to sit in "
                            f"train/, validation/ or test/, found {root.parent.name}/")
        return [(split, root.name, root)]
    split = canonical_split(root.name)
    if split and any(_is_subset_dir(root / s) for s in SUBSETS):
        return [(split, s, root / s) for s in SUBSETS if _is_subset_dir(root / s)]
    for data_dir in (root, root / "data"):
        splits = _split_dirs(data_dir)
        if splits:
            return [(sp, s, d / s) for sp, d in splits for s in SUBSETS if _is_subset_dir(d / s)]
    return []


def looks_like_roco(root: Path) -> bool:
    try:
        return bool(find_roco_subsets(root))
    except DataError:
        return True  # it is ROCO-shaped; loading will report the problem


def _read_id_table(path: Path, report: LoadReport) -> dict[str, list[str]]:
    """``ID<TAB><TAB>v1<TAB>v2...`` -> {ID: [v1, v2, ...]} (empty fields skipped)."""
    table: dict[str, list[str]] = {}
    if not path.is_file():
        return table
    for line in iter_text_lines(path):
        where = f"{path}:{line.lineno}"
        if not line.text.strip():
            continue
        if line.bad_utf8:
            report.warn(f"{INVALID_UTF8} in {path.name}", where)
        fields = line.text.split("\t")
        rid = fields[0].strip()
        if rid and rid not in table:
            table[rid] = [f.strip() for f in fields[1:] if f.strip()]
    return table


def _semtypes(values: list[str], where: str, report: LoadReport) -> list[dict[str, str]]:
    if len(values) % 2:
        report.warn("semtypes: odd number of fields (last code has no name)", where)
        values = [*values, ""]
    return [{"code": values[i], "name": values[i + 1]} for i in range(0, len(values), 2)]


def _read_dlinks(path: Path) -> dict[str, tuple[str | None, str | None]]:
    """ID -> (PMC id from the wget URL, original image file name)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    if not path.is_file():
        return out
    for line in iter_text_lines(path):
        fields = line.text.split("\t")
        rid = fields[0].strip()
        if not rid or rid in out:
            continue
        pmc = _PMC_ID.search(fields[1]) if len(fields) > 1 else None
        original = fields[2].strip() if len(fields) > 2 and fields[2].strip() else None
        out[rid] = (pmc.group(0) if pmc else None, original)
    return out


def _read_licences(path: Path, report: LoadReport) -> dict[str, dict[str, str]]:
    """ID -> {"pmc_field": ..., "licence": ...} from the ``ROCO_ID,PMC_ID,CC`` CSV."""
    out: dict[str, dict[str, str]] = {}
    if not path.is_file():
        return out
    rows = list(csv.reader(line.text for line in iter_text_lines(path)))
    if not rows:
        return out
    header = [h.strip().upper() for h in rows[0]]
    if "ROCO_ID" not in header:
        report.warn("licences.txt without ROCO_ID header (ignored)", f"{path}:1: {','.join(rows[0])}")
        return out
    col = {name: header.index(name) for name in ("ROCO_ID", "PMC_ID", "CC") if name in header}
    for row in rows[1:]:
        if len(row) <= col["ROCO_ID"]:
            continue
        rid = row[col["ROCO_ID"]].strip()
        if rid and rid not in out:
            out[rid] = {k: row[i].strip() for k, i in col.items() if i < len(row)}
    return out


def _image_candidates(rid: str, pmc: str | None, original: str | None, licence_name: str | None) -> list[str]:
    names = [rid + s for s in _ROCO_SUFFIXES]
    if pmc and original:
        names.append(f"{pmc}_{original}")
    if licence_name and os.path.splitext(licence_name)[1]:
        names.append(licence_name)  # licences.txt's PMC_ID field is the old "<PMCID>_<name>"
    return list(dict.fromkeys(names))


def _load_subset(split: str, subset: str, folder: Path, options: CaptionOptions,
                 collector: RecordCollector) -> None:
    report = collector.report
    keywords = _read_id_table(folder / "keywords.txt", report)
    cuis = _read_id_table(folder / "cuis.txt", report)
    semtypes = _read_id_table(folder / "semtypes.txt", report)
    dlinks = _read_dlinks(folder / "dlinks.txt")
    licences = _read_licences(folder / "licences.txt", report)
    images_dir = folder / "images"
    has_images_dir = images_dir.is_dir()
    if has_images_dir:
        available = set(os.listdir(images_dir))
    else:
        available = set()
        report.warn("images folder missing", f"{images_dir} (text-only release: run ROCO's fetch script)")

    captions_path = folder / CAPTIONS_FILE
    for where, text in data_lines(captions_path, iter_text_lines(captions_path), report):
        rid, tab, caption = text.partition("\t")
        rid = rid.strip()
        if not tab or not rid:
            report.drop(MALFORMED_LINE, f"{where}: expected 'ID<TAB>caption', got {text[:60]!r}")
            continue
        if "\t" in caption:
            report.warn("tab inside caption (replaced by a space)", where)
            caption = caption.replace("\t", " ")
        caption = normalize_caption(caption, options)
        if not caption:
            report.drop(EMPTY_CAPTION, f"{where}: {rid}")
            continue

        pmc, original = dlinks.get(rid, (None, None))
        lic = licences.get(rid, {})
        pmc_field = lic.get("PMC_ID") or None
        if pmc is None and pmc_field:
            m = _PMC_ID.match(pmc_field)
            pmc = m.group(0) if m else None
        candidates = _image_candidates(rid, pmc, original, pmc_field)
        found = next((n for n in candidates if n in available), None)
        image = images_dir / found if found else None
        if image:
            where_img = where
        elif has_images_dir:
            where_img = f"{where}: {rid}: none of images/{{{', '.join(candidates)}}}"
        else:
            where_img = f"{where}: {rid}: no images/ folder"
        meta: dict[str, Any] = {
            "subset": subset,
            "cuis": cuis.get(rid, []),
            "keywords": keywords.get(rid, []),
            "semtypes": _semtypes(semtypes.get(rid, []), where, report),
            "pmc_id": pmc,
            "licence": lic.get("CC") or None,
            "original_name": original,
            "source": where,
        }
        collector.add(Record(id=rid, image=image, caption=caption, split=split, meta=meta), where_img)


def check_subsets(subsets: Iterable[str] | None) -> tuple[str, ...]:
    """The ROCO subsets to load (default: radiology); unknown names raise a one-line error."""
    chosen = tuple(dict.fromkeys(DEFAULT_SUBSETS if subsets is None else subsets))
    unknown = [s for s in chosen if s not in SUBSETS]
    if unknown or not chosen:
        raise DataError(f"ROCO subsets: {unknown[0] if unknown else 'none given'!r} is not one of "
                        f"{', '.join(SUBSETS)}")
    return chosen


def _count_records(folder: Path) -> int:
    return sum(1 for line in iter_text_lines(folder / CAPTIONS_FILE) if line.text.strip())


def load_roco(root: Path, splits: tuple[str, ...] | None, options: CaptionOptions,
              collector: RecordCollector, subsets: Iterable[str] | None = None) -> None:
    """Parse the ROCO ``subsets`` (default: radiology) under ``root`` into ``collector``; the records of
    the other subsets are counted in the report's ``excluded`` (not loaded, not errors)."""
    if subsets is None and _is_subset_dir(root) and root.name in SUBSETS:
        subsets = (root.name,)  # a subset folder named on its own is loaded whatever it is
    chosen = check_subsets(subsets)
    found = find_roco_subsets(root)
    if not found:
        raise DataError(f"{root}: no ROCO layout found (expected [data/]{{train,validation,test}}/"
                        f"{{radiology,non-radiology}}/{CAPTIONS_FILE})")
    for split, subset, folder in found:
        if splits is not None and split not in splits:
            continue
        if subset in chosen:
            _load_subset(split, subset, folder, options, collector)
        else:
            collector.report.excluded[f"ROCO {subset} subset (roco_subsets)"] += _count_records(folder)
