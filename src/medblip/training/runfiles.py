"""What a training run writes besides its checkpoints, and how it is asked to stop.

* :class:`RunLog`: ``metrics.jsonl`` (one row per logged step / evaluation / epoch), mirrored as
  TensorBoard scalars under ``tensorboard/``; on ``--resume`` the rows logged after the checkpoint are
  dropped (they will be logged again) and TensorBoard hides its own.
* :func:`write_run_files` / :func:`record_in_run`: ``config.resolved.yaml`` and ``run.json`` (versions, git commit, seed,
  strategy, kernels; one ``resumes`` entry per ``--resume``).
* :func:`write_result`: ``cost.json`` and ``result.json`` (:class:`medblip.results.TrainResult`) when the run ends.
* :class:`StopFlag`: SIGINT / SIGTERM (or the caller's ``should_stop``) ask the loop to stop after
  the current optimizer step, with every process agreeing.

Only the main process writes; a :class:`RunLog` made with ``enabled=False`` (the other processes)
writes nothing.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medblip.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from medblip.results import TrainCost, TrainResult
from medblip.runinfo import run_metadata

if TYPE_CHECKING:
    from medblip.training.config import ExperimentConfig

CONFIG_FILE = "config.resolved.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
COST_FILE = "cost.json"


class RunLog:
    """``metrics.jsonl`` rows, each also written to TensorBoard (main process only)."""

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.tensorboard = Path(run_dir) / "tensorboard"
        self.enabled = enabled
        self.writer: Any = None

    def drop_after(self, step: int) -> None:
        """``--resume``: rows logged after the checkpoint's step will be logged again."""
        if self.enabled and self.path.is_file():
            write_jsonl(self.path, [r for r in read_jsonl(self.path) if int(r.get("step", 0)) <= step])

    def open(self, config: ExperimentConfig, step: int, *, fresh: bool, strategy: dict[str, Any]) -> None:
        """Start TensorBoard at ``step``; a fresh run drops the rows of an earlier attempt that never
        checkpointed and logs the strategy's parameter counts first."""
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        if fresh:
            self.path.unlink(missing_ok=True)
        # purge_step: TensorBoard hides events an earlier (killed) attempt logged after this step.
        self.writer = SummaryWriter(str(self.tensorboard), purge_step=step)
        self.writer.add_text("config", "```yaml\n" + config.to_yaml() + "\n```", step)
        if fresh:
            append_jsonl(self.path, {"step": 0, "kind": "strategy", **strategy})

    def append(self, row: dict[str, Any]) -> None:
        """A row as it is (no TensorBoard, no time stamp)."""
        if self.enabled:
            append_jsonl(self.path, row)

    def log(self, row: dict[str, Any], step: int, prefix: str | None = None) -> None:
        """A time-stamped row; its numbers become TensorBoard scalars ``<prefix or split>/<key>``."""
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **row}
        append_jsonl(self.path, row)
        if self.writer is None:
            return
        tag = prefix or row.get("split", "misc")
        for key, value in row.items():
            if key in ("step", "epoch", "time") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self.writer.add_scalar(f"{tag}/{key}", value, step)
        self.writer.flush()

    def close(self, cost: TrainCost, step: int) -> None:
        if self.writer is None:
            return
        for key in ("wall_seconds", "images_per_second", "peak_memory_bytes"):
            self.writer.add_scalar(f"cost/{key}", getattr(cost, key), step)
        self.writer.close()
        self.writer = None


def write_run_files(run_dir: Path, config: ExperimentConfig, strategy: dict[str, Any], accelerator: Any,
                    state: dict[str, Any] | None, kernels: dict[str, Any], label_smoothing: float,
                    validation: str | None = None) -> None:
    """``config.resolved.yaml``, and ``run.json`` of a fresh run or one more ``resumes`` entry in it
    (``state``: the checkpoint resumed; ``label_smoothing``: the value the loss uses; ``validation``: how
    the validation records were found when the data has no validation split)."""
    atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
    path = run_dir / RUN_FILE
    dist = {"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device), "kernels": kernels}
    if state is not None and path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        resumes = info.setdefault("resumes", [])
        resumes.append({**run_metadata(seed=config.train.seed), "config": None, "at_step": state["global_step"],
                        "distributed": dist})
    else:
        info = run_metadata(config.model_dump(mode="json"), config.train.seed, strategy=strategy, distributed=dist,
                            label_smoothing=label_smoothing, validation=validation)
    atomic_write_json(path, info)


def record_in_run(run_dir: Path, key: str, info: dict[str, Any], *, resumed: bool) -> None:
    """Add a decision taken once the data is known (the feature cache's use and build time, the length
    buckets) to run.json, under ``key`` (in the latest resume entry on --resume)."""
    path = run_dir / RUN_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    resumes = data.get("resumes") or []
    (resumes[-1] if resumed and resumes else data)[key] = info
    atomic_write_json(path, data)


def write_result(run_dir: Path, result: TrainResult) -> None:
    """``cost.json`` (the result's cost block) and ``result.json``."""
    atomic_write_json(run_dir / COST_FILE, result.cost.model_dump(mode="json"))
    result.write(run_dir)


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current optimizer step (a second one kills)."""

    def __init__(self, should_stop: Callable[[int], bool] | None = None) -> None:
        self.signum: int | None = None
        self.should_stop = should_stop
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        print(f"\nmedblip: {signal.Signals(signum).name} received: finishing the current step and writing "
              "checkpoints/last (send it again to stop at once)", file=sys.stderr, flush=True)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, accelerator: Any, step: int) -> bool:
        """Whether to stop; every process must agree or the ones that go on would wait forever."""
        local = self.signum is not None or bool(self.should_stop and self.should_stop(step))
        if accelerator.num_processes == 1:
            return local
        flag = accelerator.reduce(torch.tensor([int(local)], device=accelerator.device), reduction="sum")
        return bool(flag.item())
