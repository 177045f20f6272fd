"""What a resumable run was started with, so that a resume can refuse to mix two different runs.

A fingerprint is a flat JSON mapping ``{"model.weights": ..., "data.split": ..., ...}`` written into
the run folder when the run starts (``fingerprint.json``). Resuming computes it again and
:func:`differences` lists every key whose value changed, in words a user can act on. Used by
``medblip evaluate`` (model, data, settings) and ``medblip train --resume`` (the resolved config,
the base model's files and the data's metadata files).

File identity is size + modification time (a ``stat`` each, no reading): a checkpoint re-saved in
place, or a data set regenerated at the same path, changes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError

FINGERPRINT_FILE = "fingerprint.json"
#: files that describe a data set (its images are checked per record where records are at hand)
_DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".txt", ".parquet", ".arrow")
_MAX_DATA_DEPTH = 4


def file_signature(path: str | Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file (``None`` when it cannot be read)."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def folder_signature(folder: str | Path, suffixes: tuple[str, ...] | None = None,
                     max_depth: int = 1) -> dict[str, list[int] | None]:
    """``{relative path: [size, mtime_ns]}`` of the files in ``folder`` (hidden ones skipped).

    ``suffixes``: only files ending so; ``max_depth``: 1 = the folder's own files only.
    """
    root = Path(folder)
    out: dict[str, list[int] | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        depth = len(rel.parts) + 1
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < max_depth else []
        for name in sorted(filenames):
            if name.startswith(".") or (suffixes is not None and not name.lower().endswith(suffixes)):
                continue
            out[str(rel / name)] = file_signature(Path(dirpath) / name)
    return out


def model_signature(name_or_path: str | Path) -> dict[str, Any]:
    """A local checkpoint folder: its files' sizes and times; a hub id: the id and the cached revision."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return {"path": str(path.resolve()), "files": folder_signature(path)}
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
        if isinstance(cached, str):
            revision = Path(cached).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - no cache or an odd id: the id alone identifies it
        pass
    return {"hub_id": str(name_or_path), "revision": revision}


def image_signature(image: str | Path | bytes | None) -> dict[str, Any] | None:
    """What identifies a record's image without decoding it: resolved path + size + mtime, or a hash."""
    if image is None:
        return None
    if isinstance(image, bytes):
        import hashlib

        return {"sha256": hashlib.sha256(image).hexdigest()}
    path = Path(image).expanduser()
    return {"path": str(path.resolve()), "size_mtime": file_signature(path)}


def data_signature(path: str | Path) -> dict[str, Any]:
    """A data set's metadata files (captions, manifests, parquet shards) with sizes and times."""
    p = Path(path).expanduser()
    if p.is_file():
        return {"path": str(p.resolve()), "files": {p.name: file_signature(p)}}
    return {"path": str(p.resolve()), "files": folder_signature(p, _DATA_SUFFIXES, _MAX_DATA_DEPTH)}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": value}`` (lists and other values kept as they are)."""
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """``["train.lr: 0.01 -> 0.02", ...]`` for every flattened key that differs (``ignore``: key prefixes)."""
    a, b = flatten(old), flatten(new)
    skip = tuple(ignore)
    out = []
    for key in sorted(set(a) | set(b)):
        if skip and key.startswith(skip):
            continue
        if a.get(key) != b.get(key):
            out.append(f"{key}: {_short(a.get(key, '(absent)'))} -> {_short(b.get(key, '(absent)'))}")
    return out


def _changed_files(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Differences of ``files`` maps, collapsed to one entry per changed file."""
    a, b = old.get("files") or {}, new.get("files") or {}
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """:func:`differences`, with file signatures summarised as "model files changed: model.safetensors"."""
    lines: list[str] = []
    plain_old = {k: v for k, v in old.items() if not (isinstance(v, Mapping) and "files" in v)}
    plain_new = {k: v for k, v in new.items() if not (isinstance(v, Mapping) and "files" in v)}
    lines += differences(plain_old, plain_new, ignore)
    for key in sorted(set(old) | set(new)):
        o, n = old.get(key), new.get(key)
        if not (isinstance(o, Mapping) and "files" in o) and not (isinstance(n, Mapping) and "files" in n):
            continue
        if not isinstance(o, Mapping) or not isinstance(n, Mapping):
            lines.append(f"{key}: {_short(o)} -> {_short(n)}")
            continue
        lines += differences({key: {k: v for k, v in o.items() if k != "files"}},
                             {key: {k: v for k, v in n.items() if k != "files"}})
        changed = _changed_files(o, n)
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            lines.append(f"{key}: files changed since the run started ({', '.join(changed[:3])}{more})")
    return lines


def read_fingerprint(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedblipError(f"{path}: unreadable ({exc}); delete it to start the run again") from None
    return data if isinstance(data, dict) else None


def write_fingerprint(folder: str | Path, fingerprint: Mapping[str, Any]) -> Path:
    from medblip.io import atomic_write_json

    return atomic_write_json(Path(folder) / FINGERPRINT_FILE, dict(fingerprint))
