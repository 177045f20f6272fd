"""``predictions.jsonl``: one caption per image, and the one reader of such files.

medblip writes a :class:`medblip.results.Prediction` per line (``id``, ``split``, ``reference``,
``prediction``, ``model``, ``family``, ``generation``, ``gen_seconds``) and appends as it goes, so a
crash can leave a half-written last line: :func:`read_predictions_file` reads such a file for resuming
(the torn line dropped with a note), for scoring (``strict``: nothing dropped) and for the report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip.errors import DataError
from medblip.io import decode_line

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"


@dataclass
class PredictionsFile:
    """What :func:`read_predictions_file` found: the rows (last one wins per id) and notes to show."""

    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    repaired: bool = False
    #: the line each row was read from
    lines: list[int] = field(default_factory=list)

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {str(r["id"]): r for r in self.rows}


def read_predictions_file(path: str | Path, *, repair: bool = False, strict: bool = False,
                          required: Sequence[str] = ("id", "prediction"), id_key: str = "id",
                          prediction_key: str = "prediction") -> PredictionsFile:
    """Read a predictions JSONL file tolerant of an interrupted writer.

    A last line that is not valid JSON (a crash mid-write) is dropped with a note; with
    ``repair=True`` the file is also truncated to its last complete line so appending can go on.
    An invalid line anywhere else, or a row missing a ``required`` field, raises :class:`DataError`
    naming the file and line. Rows repeating an earlier id replace it (noted).

    ``strict`` (a file to score as it is): a torn last line and a repeated id are errors too, and
    nothing is dropped. ``id_key`` / ``prediction_key``: the fields' names in the file.
    """
    path = Path(path)
    notes: list[str] = []
    if not path.exists():
        return PredictionsFile([], notes)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    # byte offset where each line starts, to truncate a torn last line
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    last_content = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    by_id: dict[str, dict[str, Any]] = {}
    lines_of: dict[str, int] = {}
    duplicates = 0
    truncate_at: int | None = None
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        lineno = i + 1
        torn = i == last_content and not strict  # a crash mid-write leaves a broken last line
        try:
            obj = json.loads(decode_line(path, lineno, raw))
        except (DataError, json.JSONDecodeError) as exc:
            if torn:
                notes.append(f"{path}:{lineno}: dropped a half-written last line (malformed JSON left by an "
                             "interrupted run)")
                truncate_at = offsets[i]
                break
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        for key in required:
            if key not in obj:
                raise DataError(f"{path}:{lineno}: missing field {key!r} "
                                f"(each line needs {', '.join(repr(k) for k in required)})")
        if not isinstance(obj.get(prediction_key, ""), str):
            raise DataError(f"{path}:{lineno}: field {prediction_key!r} must be a string")
        rid = str(obj[id_key])
        if rid in by_id:
            if strict:
                raise DataError(f"{path}:{lineno}: duplicate id {rid!r} (first at line {lines_of[rid]})")
            duplicates += 1
            del by_id[rid]  # keep file order of the latest occurrence
        by_id[rid] = {**obj, id_key: rid}
        lines_of[rid] = lineno
    if duplicates:
        notes.append(f"{path}: {duplicates} repeated id(s); the last line for each id is used")
    repaired = False
    if repair:
        if truncate_at is not None:
            _truncate(path, truncate_at)
            repaired = True
        elif data and not data.endswith(b"\n"):
            with path.open("ab") as fh:  # complete last line: add its newline so appends stay separate
                fh.write(b"\n")
            repaired = True
    for note in notes:
        log.warning(note)
    return PredictionsFile(list(by_id.values()), notes, repaired, [lines_of[r] for r in by_id])


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())
