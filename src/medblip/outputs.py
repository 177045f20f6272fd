"""Output folders that never cost a user a file: a marker names the command that owns a folder.

Every command that writes into an ``--out`` folder calls :func:`prepare_output_dir` first. It

- refuses a path that is an existing file or a folder that cannot be written;
- refuses a non-empty folder unless it is an earlier output of the *same* command -- it holds the
  marker file ``.medblip-output.json`` naming that command (or, for folders written before markers
  existed, one of the files only that command writes) -- or the user passed ``--overwrite``;
- then creates the folder and writes the marker, so the next run of the command recognises it.

Commands that build a whole folder elsewhere and swap it into place (``model init-tiny``, ``data
synth``) call :func:`check_output_dir` with ``replaces=True`` before they start (this also refuses the
current folder and the folders above it) and :func:`install_output_dir` at the end. A folder the
command created is replaced as a whole, atomically. A foreign folder the user allowed with
``--overwrite`` only gets the new entries moved in (entries of the same names replaced), and its
marker says so, so that no later run replaces it as a whole: files the command did not write survive.

Usage, e.g. in a new command::

    out = prepare_output_dir(out, "caption", overwrite=overwrite)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError

MARKER = ".medblip-output.json"


class OutputError(MedblipError):
    """An output path that cannot or must not be written; the message names it and the way out."""


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """``folder``'s marker (``{"command", "whole_folder", ...}``); ``None`` when absent or unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def write_marker(folder: str | Path, command: str, *, whole_folder: bool = True) -> Path:
    """Mark ``folder`` as written by ``medblip <command>``; ``whole_folder``: every entry is the command's."""
    from medblip import __version__
    from medblip.io import atomic_write_json

    return atomic_write_json(Path(folder) / MARKER, {
        "command": command, "whole_folder": whole_folder, "medblip": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds")})


def _contains_cwd(path: Path) -> bool:
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was deleted
        return False
    return path == here or path in here.parents


def _entries(path: Path, option: str) -> list[str]:
    try:
        return [p.name for p in path.iterdir()]
    except OSError as exc:
        raise OutputError(f"{path}: cannot list the folder ({exc.strerror or exc}); "
                          f"choose another {option}") from None


def output_owner(path: str | Path, command: str, known_files: Sequence[str] = ()) -> str:
    """Who ``path`` belongs to, for ``medblip <command>``.

    ``"new"``: absent or empty; ``"own"``: a folder this command wrote as a whole; ``"shared"``: a
    folder it wrote into next to other files (``--overwrite`` once); ``"foreign"``: anything else.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        return "new" if not path.exists() else "foreign"
    entries = _entries(path, "--out")
    if not entries:
        return "new"
    marker = read_marker(path)
    if marker is not None and marker["command"] == command:
        return "own" if marker.get("whole_folder", True) else "shared"
    if marker is None and any(name in entries for name in known_files):
        return "own"
    return "foreign"


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
    owner = output_owner(path, command, known_files)
    ensure_writable_dir(path, option)
    if owner in ("new", "foreign") or read_marker(path) is None:
        write_marker(path, command, whole_folder=owner != "foreign")
    return path


def install_output_dir(tmp: str | Path, out: str | Path, command: str, known_files: Sequence[str] = ()) -> Path:
    """Put the fully written folder ``tmp`` in place as ``out`` and mark it (see the module doc).

    ``out`` absent, empty or written by ``command`` as a whole: swapped atomically
    (:func:`medblip.io.atomic_replace_dir`). Otherwise (``--overwrite`` of a foreign folder) ``tmp``'s
    entries are moved into it one by one, replacing only entries of the same names.
    """
    from medblip.io import atomic_replace_dir

    tmp, out = Path(tmp), Path(out).expanduser()
    if output_owner(out, command, known_files) in ("new", "own"):
        write_marker(tmp, command)
        return atomic_replace_dir(tmp, out)
    write_marker(tmp, command, whole_folder=False)
    for entry in sorted(tmp.iterdir()):
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    tmp.rmdir()
    return out


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """An output *file* path: not an existing folder; its folder created and writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path}: {option} names a folder; give a file name, e.g. {path / 'report.json'}")
    ensure_writable_dir(path.parent, option)
    return path
