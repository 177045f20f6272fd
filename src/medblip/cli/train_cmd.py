"""``medblip train CONFIG [--set key=value ...] [--resume] [--out DIR]``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from medblip.cli.app import app
from medblip.cli.options import MAX_PIXELS_HELP, OVERWRITE_HELP, apply_max_pixels


@app.command("train")
def train_command(
    config: Path = typer.Argument(..., help="experiment YAML file (see configs/)"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in output.dir from checkpoints/last "
                                                        "(refused when the settings differ from the run's)"),
    resume_with_changes: bool = typer.Option(
        False, "--resume-with-changes",
        help="--resume, allowing harmless setting changes (more epochs or steps, logging and checkpoint "
             "intervals, loader workers) and changed model or data files; recorded in run.json"),
    out: Path | None = typer.Option(None, "--out", help="run folder (overrides output.dir)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Fine-tune a model as CONFIG describes; writes checkpoints, metrics and costs to the run folder.

    Multi-GPU / multi-node: start it with `accelerate launch -m medblip train CONFIG` (see configs/accelerate/).
    SIGINT/SIGTERM stop after the current step with a resumable checkpoint (exit status 130/143).
    """
    from medblip.training.config import check_paths, load_config

    _check_launcher()
    apply_max_pixels(max_pixels)
    resume = resume or resume_with_changes
    cfg = load_config(config, set_, out=out)
    check_paths(cfg, str(config))

    from medblip.training.trainer import train

    result = train(cfg, resume=resume, source=str(config), progress=progress, overwrite=overwrite,
                   resume_with_changes=resume_with_changes)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun only rank 0 reports
        raise typer.Exit(result.exit_code)
    if result.status == "interrupted":
        print(f"medblip: stopped by {result.signal} at step {result.global_step}; resume with: "
              f"medblip train {config} --resume" + (f" --out {out}" if out else ""), file=sys.stderr)
        raise typer.Exit(result.exit_code)
    best = f"{result.best_metric_name} {result.best_metric:.4f}" if result.best_metric is not None else "n/a"
    print(f"{result.status}: {result.global_step} steps, best {best}; run folder {result.run_dir}")


_MPI_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def _check_launcher() -> None:
    """``accelerate launch --cpu --num_processes N`` (N > 1) without mpirun starts ONE process that trains
    alone, silently changing the global batch: refuse it and name the command that starts N processes."""
    from medblip.errors import ConfigError

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    asked_for_several = "MASTER_ADDR" in os.environ  # the simple launcher sets it only for N > 1
    if cpu and asked_for_several and "WORLD_SIZE" not in os.environ and not any(k in os.environ for k in _MPI_SIZE):
        raise ConfigError("accelerate launch --cpu --num_processes N starts one process (accelerate runs several "
                          "CPU processes only under mpirun); for N CPU processes (gloo) use: accelerate launch "
                          "--multi_gpu --num_processes N -m medblip train CONFIG")
