"""Captioning with several processes (``accelerate launch`` / ``torchrun``): shards, part files, merging.

Under a launcher every process reads what is already predicted (the merged file plus every process's
part file), takes its share of the images still to caption (accelerate's ``split_between_processes``:
contiguous, in order) and appends its lines to its own part file, ``<name>.part-<rank><suffix>``. When
all are done the main process merges the part files into the one output, in input order, and removes
them -- the same file a one-process run writes. A killed run resumes with any number of processes:
what any part file holds is not captioned again.

Without a launcher (``WORLD_SIZE`` unset or 1) nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Processes:
    """The processes of this run: rank, count, barrier, shard and gather (one process: trivial)."""

    def __init__(self) -> None:
        self.state: Any = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            import torch
            from accelerate import PartialState

            # on a machine without CUDA accelerate only sets up multi-process CPU (gloo) when asked to
            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, requested: str | None) -> str | None:
        """The requested device; under a launcher without one, this process's own (``cuda:<local rank>``)."""
        if requested is not None or not self.distributed:
            return requested
        return str(self.state.device)

    def barrier(self) -> None:
        if self.distributed:
            self.state.wait_for_everyone()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous share of ``items`` (every process passes the same list)."""
        if not self.distributed:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
        if not self.distributed:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))


def part_path(out_path: Path, rank: int) -> Path:
    """The file process ``rank`` appends to: ``predictions.part-1.jsonl`` beside ``predictions.jsonl``."""
    return out_path.with_name(f"{out_path.stem}.part-{rank}{out_path.suffix}")


def part_files(out_path: Path) -> list[Path]:
    """Part files of ``out_path`` left by this or an earlier multi-process run, by rank."""
    found = out_path.parent.glob(f"{out_path.stem}.part-*{out_path.suffix}")

    def rank(p: Path) -> int:
        tail = p.name[len(out_path.stem) + len(".part-"):len(p.name) - len(out_path.suffix)]
        return int(tail) if tail.isdigit() else 1 << 30

    return sorted((p for p in found if rank(p) < 1 << 30), key=rank)
