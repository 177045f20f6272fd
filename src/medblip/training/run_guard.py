"""What ``train()`` checks before it touches a run folder: the folder may be written, no other run
writes it, and a resume continues the run that is there.

:func:`open_run` (a context manager around the whole training run) does, on the main process:

1. the output-folder guard (:func:`medblip.outputs.prepare_output_dir`): a fresh run goes only into a
   new or empty folder, an earlier ``medblip train`` run folder, or any folder with ``--overwrite``;
2. the folder lock (:func:`medblip.locks.output_lock`), held until training ends, so a second ``train``
   into the same folder is refused instead of interleaving its metrics with the first;
3. on ``--resume``, the comparison of the new settings with the run's ``config.resolved.yaml`` and of
   the base model's and data's files with ``fingerprint.json``: any difference is refused with the
   list of what changed. ``--resume-with-changes`` allows the harmless ones (:data:`RESUMABLE_CHANGES`:
   more epochs, logging and checkpoint intervals, loader workers ...) and changed model or data files;
   the allowed changes are recorded in run.json (``resume_changes``).

The other processes of a distributed run skip it: if the main process refuses, the launcher stops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medblip.errors import ConfigError
from medblip.fingerprint import (
    data_signature,
    describe_differences,
    differences,
    model_signature,
    read_fingerprint,
    write_fingerprint,
)

if TYPE_CHECKING:
    from medblip.training.config import ExperimentConfig

RESOLVED_CONFIG = "config.resolved.yaml"
#: settings that a resume may change with ``--resume-with-changes``: they extend or observe the run
#: without changing what its finished steps mean
RESUMABLE_CHANGES = (
    "train.epochs", "train.max_steps", "train.eval_every_epochs", "train.eval_every_steps",
    "train.save_every_steps", "train.log_every", "train.early_stopping.patience", "train.gradient_checkpointing",
    "train.feature_cache_dir", "data.num_workers", "data.cache_images", "data.image_cache",
)
#: never compared: the run folder itself may be spelt differently (relative / absolute), the name is a label
_NOT_COMPARED = ("output.", "name")


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``config.resolved.yaml`` with today's defaults filled in (``None`` when absent)."""
    import yaml

    from medblip.training.config import validate_config

    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc.__class__.__name__}); the run cannot be compared with the "
                          "new settings: start a new run with --out") from None
    return validate_config(raw, str(path)).model_dump(mode="json")


def config_changes(run_dir: str | Path, config: ExperimentConfig) -> list[str]:
    """``["train.lr: 0.01 -> 0.02", ...]``: how ``config`` differs from the run in ``run_dir``."""
    old = saved_config(run_dir)
    if old is None:
        return []
    return differences(old, config.model_dump(mode="json"), ignore=_NOT_COMPARED)


def run_fingerprint(config: ExperimentConfig) -> dict[str, Any]:
    """The files a run depends on beyond its config: the base model's and the data set's metadata."""
    return {"model": model_signature(config.model.name_or_path), "data": data_signature(config.data.path)}


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that wrote a checkpoint or finished."""
    from medblip.training import checkpoint as ckpt

    return ckpt.checkpoint_dir(run_dir, ckpt.LAST).exists() or (run_dir / "result.json").exists()


def _key(change: str) -> str:
    return change.split(":", 1)[0]


def check_resume(run_dir: Path, config: ExperimentConfig, *, allow_changes: bool, source: str) -> list[str]:
    """Raise :class:`ConfigError` when resuming ``run_dir`` with ``config`` would silently change the run;
    returns the changes that were allowed (``allow_changes``)."""
    settings = config_changes(run_dir, config)
    old_files = read_fingerprint(run_dir)
    files = describe_differences(old_files, run_fingerprint(config)) if old_files is not None else []
    if not settings and not files:
        return []
    fixed = [_key(c) for c in settings if _key(c) not in RESUMABLE_CHANGES]
    if fixed or not allow_changes:
        what = f"{source}: --resume: the run in {run_dir} was started with other settings or files: " \
               + "; ".join(settings + files)
        if fixed:
            raise ConfigError(f"{what}; {', '.join(fixed)} cannot change on resume: resume with the run's own "
                              "settings, or start a new run with --out")
        raise ConfigError(f"{what}; resume with the run's own settings, or pass --resume-with-changes to accept "
                          "these changes")
    return settings + files


def _record_changes(run_dir: Path, changes: list[str]) -> None:
    from medblip.io import atomic_write_json

    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    info.setdefault("resume_changes", []).append(
        {"at": datetime.now(UTC).isoformat(timespec="seconds"), "changes": changes})
    atomic_write_json(path, info)


@contextlib.contextmanager
def open_run(config: ExperimentConfig, *, resume: bool, overwrite: bool = False, allow_changes: bool = False,
             source: str = "<config>") -> Iterator[None]:
    """Guard, lock and (on resume) check the run folder for the duration of a training run; see the module doc."""
    from medblip.locks import output_lock
    from medblip.outputs import prepare_output_dir

    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    run_dir = prepare_output_dir(config.output.dir, "train", overwrite=overwrite, known_files=(RESOLVED_CONFIG,),
                                 option="--out (output.dir)")
    with output_lock(run_dir, "train"):
        if not resume and holds_run(run_dir):
            raise ConfigError(f"{source}: output.dir: {run_dir} already holds a run; pass --resume to continue "
                              "it, or --out to write a new run elsewhere")
        if resume:
            allowed = check_resume(run_dir, config, allow_changes=allow_changes, source=source)
            if allowed:
                print(f"medblip: resuming with changes: {'; '.join(allowed)}", file=sys.stderr)
                _record_changes(run_dir, allowed)
        if not resume or read_fingerprint(run_dir) is None or allow_changes:
            write_fingerprint(run_dir, run_fingerprint(config))
        yield
