"""Output folders that never cost a user a file: a marker names the command that owns a folder.

Every command that writes into an ``--out`` folder calls :func:`prepare_output_dir` first. It

- refuses a path that is an existing file or a folder that cannot be written;
- refuses a non-empty folder unless it is an earlier output of the *same* command -- it holds the
  marker file ``.medblip-output.json`` naming that command (or, for folders written before markers
  existed, one of the files only that command writes) -- or the user passed ``--overwrite``;
- then creates the folder and writes the marker, so the next run of the command recognises it.

Commands that build a whole folder elsewhere and swap it into place (``model init-tiny``, ``data
synth``) call :func:`check_output_dir` with ``replaces=True`` before they start (this also refuses the
current folder and the folders above it) and :func:`install_output_dir` at the end. Their marker lists
the entries they wrote. A folder holding nothing else is swapped for the new one atomically; otherwise
(a file the user added later, or a foreign folder allowed with ``--overwrite``) the new entries are
moved in one by one and only the command's own earlier entries are removed: files it did not write
survive.

Usage, e.g. in a new command::

    out = prepare_output_dir(out, "caption", overwrite=overwrite)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError

MARKER = ".medblip-output.json"


class OutputError(MedblipError):
    """An output path that cannot or must not be written; the message names it and the way out."""


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """``folder``'s marker (``{"command", "entries", "medblip"}``); ``None`` when absent or unreadable."""
    from medblip.io import read_json_object

    data = read_json_object(Path(folder) / MARKER)
    return data if data is not None and isinstance(data.get("command"), str) else None


def write_marker(folder: str | Path, command: str, entries: list[str] | None = None) -> Path:
    """Mark ``folder`` as written by ``medblip <command>``; ``entries``: the names it wrote there, if known."""
    from medblip._version import __version__
    from medblip.io import atomic_write_json

    # No time stamp: outputs that are byte-identical for the same inputs (data synth) stay so.
    return atomic_write_json(Path(folder) / MARKER, {"command": command, "entries": entries,
                                                     "medblip": __version__})


def _contains_cwd(path: Path) -> bool:
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was deleted
        return False
    return path == here or path in here.parents


def _entries(path: Path, option: str) -> list[str]:
    """The folder's entries, less a lock file (another run's bookkeeping, not content)."""
    from medblip.locks import LOCK_FILE

    try:
        return [p.name for p in path.iterdir() if p.name != LOCK_FILE]
    except OSError as exc:
        raise OutputError(f"{path}: cannot list the folder ({exc.strerror or exc}); "
                          f"choose another {option}") from None


def output_owner(path: str | Path, command: str, known_files: Sequence[str] = ()) -> str:
    """``"new"`` (absent or empty), ``"own"`` (an earlier output of ``medblip <command>``) or ``"foreign"``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return "new" if not path.exists() else "foreign"
    entries = _entries(path, "--out")
    if not entries:
        return "new"
    marker = read_marker(path)
    if marker is not None:
        return "own" if marker["command"] == command else "foreign"
    return "own" if any(name in entries for name in known_files) else "foreign"


def check_output_dir(path: str | Path, command: str, *, overwrite: bool = False,
                     known_files: Sequence[str] = (), option: str = "--out", replaces: bool = False) -> Path:
    """Refuse ``path`` as the output folder of ``medblip <command>`` unless writing there loses nothing.

    Nothing is created. ``known_files``: names that only this command writes, which identify its
    outputs from before markers existed (e.g. ``synth.json``). ``option`` names the command-line
    option in messages. ``replaces``: the command swaps a new folder into place, so the current
    folder (or one holding it) is refused too. Returns the path (``~`` expanded).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {option} names an existing file, not a folder; choose a folder path")
    if replaces and _contains_cwd(path.resolve()):
        raise OutputError(f"{path}: {option} is the current folder (or holds it); name a new folder, "
                          f"e.g. {option} {command.split()[-1]}-output")
    if overwrite or output_owner(path, command, known_files) != "foreign":
        return path
    marker = read_marker(path)
    if marker is not None:
        raise OutputError(f"{path}: holds the output of `medblip {marker['command']}`, not `medblip {command}`; "
                          f"choose another {option} (or pass --overwrite to write into it anyway)")
    raise OutputError(f"{path}: folder is not empty and is not an earlier output of `medblip {command}`; "
                      f"choose a new or empty {option} folder (or pass --overwrite to write into it anyway)")


def ensure_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` (with parents) and check that files can be created in it; one-line errors."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: {option} (or a folder above it) is an existing file; "
                          "choose a folder path") from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the folder ({exc.strerror or exc}); "
                          f"choose a writable {option}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".medblip-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{path}: folder is not writable ({exc.strerror or exc}); "
                          f"choose a writable {option}") from None
    return path


def prepare_output_dir(path: str | Path, command: str, *, overwrite: bool = False,
                       known_files: Sequence[str] = (), option: str = "--out") -> Path:
    """:func:`check_output_dir`, then create the folder, check it is writable and mark it as ``command``'s.

    The one call a command makes before writing into its output folder; see the module doc.
    """
    path = check_output_dir(path, command, overwrite=overwrite, known_files=known_files, option=option)
    ensure_writable_dir(path, option)
    marker = read_marker(path)
    if marker is None or marker["command"] != command:
        write_marker(path, command)
    return path


def install_output_dir(tmp: str | Path, out: str | Path, command: str, known_files: Sequence[str] = ()) -> Path:
    """Put the fully written folder ``tmp`` in place as ``out`` and mark it (see the module doc)."""
    from medblip.io import atomic_replace_dir

    tmp, out = Path(tmp), Path(out).expanduser()
    new = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
    owner = output_owner(out, command, known_files)
    marker = read_marker(out) if owner == "own" else None
    # An earlier output from before markers (found by known_files) counts as entirely the command's.
    ours = set(marker.get("entries") or []) if marker is not None else None
    present = set(_entries(out, "--out")) - {MARKER} if out.is_dir() else set()
    if owner == "new" or (owner == "own" and (ours is None or present <= ours)):
        write_marker(tmp, command, new)
        return atomic_replace_dir(tmp, out)
    for name in sorted((ours or set()) - set(new)):  # the command's own stale entries
        _remove(out / name)
    for name in new:
        _remove(out / name)
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp)
    write_marker(out, command, new)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """An output *file* path: not an existing folder; its folder created and writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path}: {option} names a folder; give a file name, e.g. {path / 'report.json'}")
    ensure_writable_dir(path.parent, option)
    return path
