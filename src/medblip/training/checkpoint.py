"""Checkpoints that are never half-written, and the trainer state that makes ``--resume`` exact.

Layout of a run folder::

    checkpoints/last/   HF checkpoint (save_pretrained of model + processor, safetensors)
                        + trainer_state.pt (optimizer, scheduler, RNG, data position, early stopping)
                        + trainable.safetensors (LoRA runs only: the unmerged adapter weights)
    checkpoints/best/   HF checkpoint of the best validation score

Each checkpoint is written into a hidden ``checkpoints/.tmp-<name>-<pid>`` folder, flushed to disk,
and swapped into place with :func:`medblip.io.atomic_replace_dir`, so at every instant ``last/`` is
either the previous complete checkpoint or the new complete one -- a SIGKILL at any point leaves
nothing half-written under a visible name. :func:`prepare_checkpoint_dir` cleans up after such a
kill (stale temp folders, a swap interrupted half way).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medblip.io import atomic_replace_dir, recover_dir
from medblip.models.loading import BEST, CHECKPOINTS, LAST

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel, GenerationSettings

STATE_FILE = "trainer_state.pt"
TRAINABLE_FILE = "trainable.safetensors"
STATE_VERSION = 1


def checkpoint_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / CHECKPOINTS / name


def prepare_checkpoint_dir(run_dir: str | Path) -> Path:
    """Create ``checkpoints/``; undo what a killed process left: temp folders and a half-done swap."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for name in (LAST, BEST):
        recover_dir(root / name)
    return root


def _fsync_tree(folder: Path) -> None:
    # save_pretrained does not fsync; without this a power cut right after the rename could leave a
    # complete-looking folder of empty files. (A killed process alone cannot: the page cache survives.)
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def trainable_state(adapter: CaptionModel) -> dict[str, torch.Tensor]:
    """The parameters that train, by ``adapter.model.named_parameters()`` name (CPU copies)."""
    return {name: p.detach().cpu().contiguous() for name, p in adapter.model.named_parameters() if p.requires_grad}


def save_checkpoint(adapter: CaptionModel, run_dir: str | Path, name: str,
                    trainer_state: dict[str, Any] | None = None, generation: GenerationSettings | None = None) -> Path:
    """Write ``checkpoints/<name>`` atomically; ``trainer_state`` makes it resumable; ``generation``: the
    run's decoding settings, carried in the checkpoint's generation config."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    adapter.save(tmp, generation=generation)
    if trainer_state is not None:
        if adapter.is_peft:
            # The HF export has the LoRA deltas merged in; resuming needs them unmerged.
            from safetensors.torch import save_file

            save_file(trainable_state(adapter), str(tmp / TRAINABLE_FILE))
        torch.save({"version": STATE_VERSION, **trainer_state}, tmp / STATE_FILE)
    _fsync_tree(tmp)
    return atomic_replace_dir(tmp, root / name)


def full_params(model: Any, fsdp: bool, rank0_only: bool = True) -> Any:
    """Under FSDP, materialise the full weights so the adapter can save / generate as usual.

    ``rank0_only``: gather on process 0 only, in CPU memory (saving); else on every process.
    """
    if not fsdp:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(model, writeback=False, rank0_only=rank0_only,
                                                       offload_to_cpu=rank0_only)


def open_checkpoints(run_dir: Path, accelerator: Any, *, resume: bool, fsdp: bool) -> dict[str, Any] | None:
    """Prepare ``checkpoints/`` (main process); the trainer state to resume from, or None for a fresh run
    (whether the folder may be written at all is :mod:`medblip.training.run_guard`'s). ``--resume`` needs a
    resumable ``last``."""
    from medblip.errors import ConfigError

    last_dir = checkpoint_dir(run_dir, LAST)
    if accelerator.is_main_process:
        prepare_checkpoint_dir(run_dir)
    accelerator.wait_for_everyone()
    if not resume:
        return None
    if not (last_dir / STATE_FILE).is_file():
        raise ConfigError(f"--resume: {last_dir} holds no resumable checkpoint ({STATE_FILE}); "
                          "start the run without --resume")
    state = load_trainer_state(last_dir)
    if fsdp or state.get("optimizer") is None:
        raise ConfigError("--resume is not supported for FSDP runs (their optimizer state is sharded); "
                          "use DDP, e.g. with the lora strategy, for resumable runs of large models")
    return state


def trainer_state(loop: dict[str, Any], *, optimizer: Any, scheduler: Any, accelerator: Any, cost: Any, seed: int,
                  batch_size: int, grad_accum: int, fsdp: bool) -> dict[str, Any]:
    """What ``trainer_state.pt`` holds: the loop's position and early stopping (``loop``), optimizer,
    scheduler, gradient scaler, every process's RNG streams and the cost so far."""
    from accelerate.utils import gather_object

    rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    return {
        **loop,
        # FSDP shards the optimizer state over the processes; such runs are not resumable.
        "optimizer": None if fsdp else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None, "rng": rngs,
        "data_order_seed": seed, "world_size": accelerator.num_processes, "batch_size": batch_size,
        "grad_accum": grad_accum, "cost": cost.state_dict(),
    }


def restore_trainer_state(state: dict[str, Any], *, optimizer: Any, scheduler: Any, accelerator: Any, cost: Any,
                          batch_size: int, grad_accum: int) -> None:
    """Load :func:`trainer_state`'s optimizer, scheduler, scaler, cost and (last) this process's RNG streams."""
    from medblip.errors import ConfigError

    world = accelerator.num_processes
    if state["world_size"] != world or state["batch_size"] != batch_size or state["grad_accum"] != grad_accum:
        raise ConfigError(
            f"--resume: the checkpoint was written with {state['world_size']} process(es), batch size "
            f"{state['batch_size']} and grad_accum {state['grad_accum']}; resume with the same values "
            "(the data position depends on them)")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    cost.load_state_dict(state["cost"])
    # Last of all, so that nothing before (model init, LoRA init) consumes the restored streams.
    set_rng_state(state["rng"][accelerator.process_index])


_RESUME_FIX = "resume from an intact checkpoint, or start the run again without --resume"


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    import pickle
    import zipfile

    from medblip.errors import CorruptFileError

    path = Path(folder) / STATE_FILE
    try:
        # weights_only: the state holds only tensors, numbers, strings and containers (see rng_state);
        # anything else (a pickle with code in it) is refused, never run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptFileError.from_exception(path, exc, _RESUME_FIX) from None
    if not isinstance(state, dict):
        raise CorruptFileError(path, f"holds a {type(state).__name__}, not a trainer state", _RESUME_FIX)
    if state.get("version") != STATE_VERSION:
        from medblip.errors import MedblipError

        raise MedblipError(f"{path}: trainer state version {state.get('version')} is not {STATE_VERSION}; "
                           "it was written by another medblip version and cannot be resumed")
    return state


def checkpoint_step(folder: str | Path) -> int | None:
    """The optimizer step a resumable checkpoint was written at (None when its state cannot be read)."""
    try:
        return int(load_trainer_state(folder)["global_step"])
    except Exception:  # noqa: BLE001 - only for a message: any failure means "unknown"
        return None


def load_trainable(adapter: CaptionModel, folder: str | Path) -> None:
    """Copy a LoRA run's saved trainable parameters into a freshly strategy-wrapped adapter."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medblip.errors import CorruptFileError

    path = Path(folder) / TRAINABLE_FILE
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CorruptFileError.from_exception(path, exc, _RESUME_FIX) from None
    params = dict(adapter.model.named_parameters())
    missing = sorted(set(saved) - set(params))
    if missing:
        from medblip.errors import MedblipError

        raise MedblipError(f"{folder}/{TRAINABLE_FILE}: parameter {missing[0]} is not in the model; "
                           "was the run's strategy or model changed since the checkpoint?")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


# -- random number generators ------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) generator states, in torch.load(weights_only)-safe types."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {k: (v.tolist() if hasattr(v, "tolist") else v)
                                        for k, v in np_state["state"].items()}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {k: (np.asarray(v, dtype=np.uint32) if isinstance(v, list) else v)
                         for k, v in np_state["state"].items()}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
