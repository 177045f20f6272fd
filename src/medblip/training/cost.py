"""What a run costs: wall time per epoch and in total, images/s, peak memory.

These are the cost columns of the ablation table, so they are measured the same way for every run:
wall time around the training steps (validation excluded and reported separately), images counted
as training images seen by this process times the process count, and peak memory as the CUDA
allocator's peak when training on a GPU, else the process's peak resident set size.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def peak_memory(device: torch.device | str | None = None) -> dict[str, Any]:
    """Peak memory so far: ``{"kind": "cuda"|"rss", "bytes": int}``."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return {"kind": "cuda", "bytes": int(torch.cuda.max_memory_allocated(device))}
    # ru_maxrss is KiB on Linux and bytes on macOS.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "rss", "bytes": int(maxrss if sys.platform == "darwin" else maxrss * 1024)}


@dataclass
class EpochCost:
    epoch: int
    train_seconds: float
    eval_seconds: float
    images: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class CostMeter:
    """Accumulates train/eval time and images; survives resume through :meth:`state_dict`."""

    num_processes: int = 1
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    images: int = 0
    epochs: list[EpochCost] = field(default_factory=list)
    # the epoch in progress
    _epoch_train: float = 0.0
    _epoch_eval: float = 0.0
    _epoch_images: int = 0
    _started: float = field(default_factory=time.perf_counter)
    _previous_wall: float = 0.0  # wall time of earlier (interrupted) segments of this run

    def add_train(self, seconds: float, images: int) -> None:
        self.train_seconds += seconds
        self._epoch_train += seconds
        self.images += images * self.num_processes
        self._epoch_images += images * self.num_processes

    def add_eval(self, seconds: float) -> None:
        self.eval_seconds += seconds
        self._epoch_eval += seconds

    def end_epoch(self, epoch: int) -> EpochCost:
        cost = EpochCost(epoch, round(self._epoch_train, 3), round(self._epoch_eval, 3), self._epoch_images)
        self.epochs.append(cost)
        self._epoch_train = self._epoch_eval = 0.0
        self._epoch_images = 0
        return cost

    @property
    def wall_seconds(self) -> float:
        return self._previous_wall + (time.perf_counter() - self._started)

    def summary(self, device: torch.device | str | None = None) -> dict[str, Any]:
        mem = peak_memory(device)
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),
            "images": self.images,
            "images_per_second": round(self.images / self.train_seconds, 3) if self.train_seconds else 0.0,
            "peak_memory_bytes": mem["bytes"],
            "peak_memory_kind": mem["kind"],
            "num_processes": self.num_processes,
            "epochs": [{**asdict(e), "images_per_second": round(e.images_per_second, 3)} for e in self.epochs],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds, "images": self.images,
            "epochs": [asdict(e) for e in self.epochs], "epoch_train": self._epoch_train,
            "epoch_eval": self._epoch_eval, "epoch_images": self._epoch_images, "wall": self.wall_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_seconds = state["train_seconds"]
        self.eval_seconds = state["eval_seconds"]
        self.images = state["images"]
        self.epochs = [EpochCost(**e) for e in state["epochs"]]
        self._epoch_train = state["epoch_train"]
        self._epoch_eval = state["epoch_eval"]
        self._epoch_images = state["epoch_images"]
        self._previous_wall = state["wall"]
        self._started = time.perf_counter()
