"""``medblip ablation CONFIG`` and ``medblip demo``."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer

from medblip.cli.app import app
from medblip.cli.metric_options import IMAGECLEF_HELP, METRIC_MODEL_HELP, METRICS_HELP, scoring_choice
from medblip.cli.options import MAX_PIXELS_HELP, OVERWRITE_HELP, apply_max_pixels


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings, info logs and checkpoint bars would interleave with the stage output:
    off for the command, as they were afterwards (the CLI also runs in-process, e.g. in tests)."""
    from transformers.utils import logging as tf_logging

    from medblip.progress import library_progress

    verbosity = tf_logging.get_verbosity()
    with warnings.catch_warnings(), library_progress(False):
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
        tf_logging.set_verbosity_error()
        try:
            yield
        finally:
            tf_logging.set_verbosity(verbosity)


def _log(line: str) -> None:
    print(line, flush=True)


@app.command("ablation")
def ablation_command(
    config: Path = typer.Argument(..., help="experiment YAML (the `medblip train` schema); its strategy is "
                                            "replaced per run"),
    strategies: str = typer.Option("full,decoder_only,encoder_only,lora", "--strategies",
                                   help="comma-separated strategies (BLIP-2/InstructBLIP: qformer_only "
                                        "instead of encoder_only)"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="override a config value, e.g. --set train.epochs=3 (repeatable)"),
    out: Path | None = typer.Option(None, "--out", help="ablation folder (default: the config's output.dir); "
                                                        "runs go to OUT/<strategy>/"),
    split: str = typer.Option("test", "--split", help="split every best checkpoint is evaluated on"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="bootstrap resamples for the 95% CIs"),
    meteor: bool = typer.Option(True, "--meteor/--no-meteor", help="METEOR (starts a Java process)"),
    metrics: str | None = typer.Option(None, "--metrics", help=METRICS_HELP + " [default: the config's "
                                       "scoring.metrics]", show_default=False),
    metric_model: list[str] | None = typer.Option(None, "--metric-model", metavar="KEY=MODEL",
                                                  help=METRIC_MODEL_HELP, show_default=False),
    imageclef: bool = typer.Option(False, "--imageclef", help=IMAGECLEF_HELP),
    device: str | None = typer.Option(None, "--device", help="evaluation device (default: cuda when available)"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                          help="evaluation batch size (default: train.batch_size)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Fine-tune once per strategy with identical data, seed and budget; evaluate each best checkpoint.

    Writes OUT/ablation.md, .csv, .json (every metric with its 95% CI, trainable parameters, time per
    epoch, total training time, images/s, peak memory, time relative to full) and plots (PNG). Rerun
    the same command to resume: finished strategies are skipped, an interrupted one continues.
    """
    from medblip.experiments.ablation import parse_strategies, run_ablation, summary_lines
    from medblip.training.config import load_config

    apply_max_pixels(max_pixels)
    names = parse_strategies(strategies)
    cfg = load_config(config, set_)
    # the config's scoring section, with what the command line says on top
    score_options = cfg.scoring.options()
    chosen = scoring_choice(metrics or ",".join(cfg.scoring.metrics), metric_model,
                            imageclef or cfg.scoring.imageclef, device or cfg.scoring.device)
    score_options.update({**chosen, "models": {**cfg.scoring.models, **chosen["models"]},
                          "meteor": meteor and cfg.scoring.meteor})
    t0 = time.perf_counter()
    with _quiet_transformers():
        result = run_ablation(cfg, out, names, source=str(config), split=split, bootstrap=bootstrap,
                              score_options=score_options, device=device, eval_batch_size=batch_size,
                              progress=progress, log=_log, overwrite=overwrite)
    if result.interrupted is not None:
        run = result.interrupted
        print(f"medblip: {result.interrupted_strategy} stopped by {run.signal} at step {run.global_step}; "
              f"run the same command again to resume", file=sys.stderr)
        raise typer.Exit(run.exit_code or 130)
    print("")
    for line in summary_lines(result):
        print(line)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"ablation: {result.files['markdown']} (also .csv, .json, plots) in {time.perf_counter() - t0:.0f} s")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo_output"), "--out", help="output folder (rerun to resume)"),
    quick: bool = typer.Option(False, "--quick", help="a far smaller run (~1-2 min on CPU): every stage and file, "
                                                     "meaningless numbers"),
    model: str | None = typer.Option(None, "--model", help="real BLIP checkpoint or hub id (e.g. "
                                                           "Salesforce/blip-image-captioning-base) instead of "
                                                           "the tiny BLIP; uses the shipped configs"),
    data: Path | None = typer.Option(None, "--data", help="dataset (e.g. a ROCOv2 folder) instead of the "
                                                          "generated synthetic benchmark"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda when available)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    seed: int = typer.Option(0, "--seed", help="seed of the tiny stand-ins and of every fine-tuning (the "
                                               "synthetic benchmark stays the same)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """The whole study in one command, offline: synthetic data, tiny models, zero-shot vs fine-tuned
    comparison, strategy ablation, attention maps, grounding score and the HTML report.

    Finishes within 10 minutes on 2 CPU cores (--quick: 1-2 minutes). Each stage is skipped when its
    outputs exist, so a rerun resumes. The real study on a GPU machine:
    medblip demo --model Salesforce/blip-image-captioning-base --data /path/to/rocov2
    """
    from medblip.experiments.demo import DemoOptions, main_print, run_demo

    apply_max_pixels(max_pixels)
    t0 = time.perf_counter()
    with _quiet_transformers():
        result = run_demo(DemoOptions(out=out, quick=quick, model=model, data=data, device=device,
                                      progress=progress, overwrite=overwrite, seed=seed), log=_log)
    if result.interrupted is not None:
        run = result.interrupted
        print(f"medblip: stopped by {run.signal} at step {run.global_step}; run the same command again to resume",
              file=sys.stderr)
        raise typer.Exit(run.exit_code or 130)
    main_print(result, time.perf_counter() - t0)
