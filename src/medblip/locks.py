"""One writer per output folder: ``with output_lock(folder, "train"): ...``.

The lock is the file ``<folder>/.medblip.lock``, held with an exclusive ``flock`` for as long as the
command runs and deleted when it ends. It records the holder (command, pid, host, start time) so that
a second command into the same folder is refused with a message naming the first. The operating
system releases a ``flock`` when its process dies, however it dies (``kill -9`` included), so a lock
file left behind by a dead process is stale by construction: the next command takes it over and says
so. If the file system ignores ``flock`` (some network mounts), a lock file that names a live process
on this host (``os.kill(pid, 0)``) is still refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError

LOCK_FILE = ".medblip.lock"


class FolderLocked(MedblipError):
    """Another medblip process writes into the same output folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    from medblip.io import read_json_object

    return read_json_object(path) or {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return (f"`medblip {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


def _refuse(folder: Path, path: Path, holder: dict[str, Any]) -> FolderLocked:
    return FolderLocked(f"{folder}: in use by {_describe(holder)}; wait for it to finish or choose another "
                        f"output folder (if that process is gone, delete {path})")


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) while the block runs; see the module doc.

    Raises :class:`FolderLocked` at once when another process holds it. A stale lock left by a dead
    process is taken over with a note on stderr.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(folder, path, _read_holder(path)) from None
        # The holder before us may have deleted the file between our open and our flock: then the
        # lock we hold is on a file nobody else sees, and we start again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read_holder(path)
        old_pid = previous.get("pid")
        if previous and isinstance(old_pid, int) and old_pid != os.getpid():
            if previous.get("host") == host and pid_alive(old_pid):
                raise _refuse(folder, path, previous)  # flock is not honoured on this file system
            print(f"medblip: note: {path}: taking over a stale lock of {_describe(previous)}, which is "
                  "no longer running", file=sys.stderr)
        holder = {"command": command, "pid": os.getpid(), "host": host,
                  "started": datetime.now(UTC).isoformat(timespec="seconds"), "time": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before unlocking, so the next holder creates a fresh file
        os.close(fd)
