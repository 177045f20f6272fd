"""Small file helpers shared by every part of medblip: atomic writes and JSON lines."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths appear in metrics and facts; make them serialisable here once.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers never see a partial file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def atomic_replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> Path:
    """Move a fully written ``tmp_dir`` into place as ``final_dir``.

    The old directory is renamed aside first and deleted only after the new one is in place, so at
    every instant either the old or the new complete directory exists under ``final_dir`` (or its
    ``.old`` twin during the swap, which :func:`recover_dir` restores).
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)
    return final_dir


def recover_dir(final_dir: str | Path) -> Path | None:
    """After a crash during :func:`atomic_replace_dir`, restore the ``.old`` copy if needed."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if not final_dir.exists() and old.exists():
        os.replace(old, final_dir)
    return final_dir if final_dir.exists() else None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    lines = "".join(dumps(r, indent=None) + "\n" for r in rows)
    return atomic_write_text(path, lines)


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(dumps(row, indent=None) + "\n")
        fh.flush()


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is absent, unreadable, not JSON or not an object
    (bookkeeping files - markers, locks, caches - that are rewritten when they cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield JSON objects; a malformed line raises ``DataError`` naming file and line."""
    for _, obj in read_jsonl_lines(path):
        yield obj


def decode_line(path: Path, lineno: int, raw: bytes) -> str:
    """A line of a UTF-8 text file (a byte-order mark on line 1 is dropped); ``DataError`` naming the byte."""
    from medblip.errors import DataError

    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                        f"{exc.start + 1}); save the file as UTF-8") from None


def read_jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line; a malformed line raises ``DataError`` naming file and line."""
    from medblip.errors import DataError

    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = decode_line(path, lineno, raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
