"""``medblip evaluate`` and ``medblip compare``."""

from __future__ import annotations

from pathlib import Path

import typer

from medblip.cli.app import app
from medblip.cli.metric_options import IMAGECLEF_HELP, METRIC_MODEL_HELP, METRICS_HELP, scoring_choice
from medblip.cli.options import MAX_PIXELS_HELP, OVERWRITE_HELP, apply_max_pixels, generation_options


def _note(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command("evaluate")
@generation_options
def evaluate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Hub id or local checkpoint folder."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder or file (any supported layout)."),
    split: str = typer.Option("test", "--split", help="Split to caption: train, validation (valid), test."),
    format: str = typer.Option("auto", "--format", help="Dataset format (auto-detected by default)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N images (a seeded subset)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    family: str | None = typer.Option(None, "--family", help="Model family (default: from config.json)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... for the model and the model-based "
                                      "metrics (default: best available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, float16, bfloat16."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for 95% CIs (0 = none)."),
    metrics: str | None = typer.Option(None, "--metrics", help=METRICS_HELP, show_default=False),
    metric_model: list[str] | None = typer.Option(None, "--metric-model", metavar="KEY=MODEL",
                                                  help=METRIC_MODEL_HELP, show_default=False),
    imageclef: bool = typer.Option(False, "--imageclef", help=IMAGECLEF_HELP),
    no_java: bool = typer.Option(False, "--no-java", help="Do not use Java: no METEOR, PTB-like tokenizer."),
    no_meteor: bool = typer.Option(False, "--no-meteor", help="Skip METEOR (its Java process is slow to start)."),
    spice: bool = typer.Option(False, "--spice", help="Also try SPICE (reported, never fatal)."),
    uncertain_as: str = typer.Option("present", "--uncertain-as",
                                     help="Uncertain findings count as 'present' or 'absent' in finding F1."),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: runs/eval/<model>-<split>)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Discard earlier predictions in --out instead of resuming; also write into "
                                        "a non-empty folder that is not an earlier evaluate output."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    captioner: str = typer.Option("auto", "--captioner",
                                  help="auto: the fast captioner where it supports the settings (same captions), "
                                       "else transformers' generate; generate: always generate."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    generation: dict | None = None,  # the generation options (see medblip.cli.options)
) -> None:
    """Caption a split with a model and score it: predictions.jsonl, metrics.json/.md, run.json.

    Re-running with the same --out resumes: images already in predictions.jsonl are not captioned again,
    provided the model files, the images and the settings are those the predictions were made with
    (otherwise it stops and says what differs). Under `accelerate launch --num_processes N -m medblip
    evaluate ...` the images are split between the processes and merged into one predictions.jsonl.
    """
    from medblip.errors import ConfigError
    from medblip.evaluation.predict import display_name, evaluate

    if uncertain_as not in ("present", "absent"):
        raise ConfigError(f"--uncertain-as must be 'present' or 'absent', not {uncertain_as!r}")
    apply_max_pixels(max_pixels)
    scoring = {"java": False if no_java else "auto", "meteor": not no_meteor, "spice": spice,
               "uncertain_as": uncertain_as, **scoring_choice(metrics, metric_model, imageclef, device)}

    if out is None:
        name = display_name(model.rstrip("/")).replace("/", "-") or "model"
        out = Path("runs") / "eval" / f"{name}-{split}"
    result = evaluate(model, data, out, split=split, format=format, limit=limit, batch_size=batch_size,
                      generation=generation, family=family, device=device, dtype=dtype, bootstrap=bootstrap,
                      seed=seed, score_options=scoring, progress=progress, overwrite=overwrite,
                      captioner=captioner)
    if not result.is_main:  # another process of a multi-process run: the main one reports
        return
    for n in result.notes:
        _note(n)
    for w in result.metrics.get("warnings") or []:
        typer.secho(f"WARNING: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo(result.markdown.rstrip("\n"))
    run = result.predictions
    how = run.captioner.get("path")
    if how and run.captioner.get("fallback_reason"):
        how = f"{how} (the fast captioner does not support {run.captioner['fallback_reason']})"
    _note(f"{len(run.rows)} image(s): {run.generated} captioned now" + (f" with {how}" if how else "")
          + f", {run.skipped} resumed; written to {result.out}")


@app.command("compare")
def compare_cmd(
    config: Path = typer.Argument(..., help="Compare config (YAML); see configs/compare_synth.yaml."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (overrides the config's out)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run or load several systems on one split; write comparison.{md,csv,json,png}.

    Re-running resumes each model system from its predictions in <out>/systems/<name>/.
    """
    from medblip.experiments.compare import run_compare

    apply_max_pixels(max_pixels)
    comp = run_compare(config, out=out, progress=progress, overwrite=overwrite)
    for n in comp.notes:
        _note(n)
    for s in comp.systems:
        for w in s.warnings:
            typer.secho(f"WARNING: {s.name}: {w}", fg=typer.colors.YELLOW, err=True)
    typer.echo((Path(comp.out) / "comparison.md").read_text(encoding="utf-8").rstrip("\n"))
    _note(f"comparison written to {comp.out} (comparison.md, .csv, .json, .png)")
