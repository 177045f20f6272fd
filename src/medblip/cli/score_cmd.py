"""``medblip score`` and ``medblip concepts`` (the evaluation commands that need no model).

Heavy imports (numpy, pycocoevalcap) happen inside the commands so ``medblip --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from medblip.cli.app import app
from medblip.cli.metric_options import IMAGECLEF_HELP, METRIC_MODEL_HELP, METRICS_HELP, scoring_choice
from medblip.cli.options import OVERWRITE_HELP
from medblip.errors import ConfigError


@app.command("score")
def score_command(
    predictions: Annotated[Path, typer.Argument(
        help="JSONL file, one object per line with 'id', 'reference' (string or list) and 'prediction'; "
             "for clipscore/refclipscore also 'image' (a path, relative to the file's folder).",
        show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Also write metrics.json, metrics.md and per_image.jsonl into this folder (without it, nothing is "
                            "written: the table is printed).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% CIs (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    metrics: Annotated[str | None, typer.Option(
        "--metrics", help=METRICS_HELP, show_default=False)] = None,
    metric_model: Annotated[list[str] | None, typer.Option(
        "--metric-model", metavar="KEY=MODEL", help=METRIC_MODEL_HELP, show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        help="Device of the model-based metrics: cpu, cuda, cuda:1 ... [default: cuda when available]",
        show_default=False)] = None,
    imageclef: Annotated[bool, typer.Option("--imageclef", help=IMAGECLEF_HELP)] = False,
    no_java: Annotated[bool, typer.Option(
        "--no-java", help="Do not use Java: no METEOR, a PTB-like tokenizer instead of PTB.")] = False,
    no_meteor: Annotated[bool, typer.Option(
        "--no-meteor", help="Skip METEOR (its Java process takes 10 s or more to start).")] = False,
    spice: Annotated[bool, typer.Option("--spice", help="Also try SPICE (needs models that are usually "
                                                         "missing; reported, never fatal).")] = False,
    uncertain_as: Annotated[str, typer.Option(
        help="Count uncertain findings ('possible mass') as 'present' or 'absent' in finding F1.")] = "present",
    title: Annotated[str | None, typer.Option(help="Title of metrics.md.", show_default=False)] = None,
) -> None:
    """Score an existing predictions file: COCO metrics, clinical correctness (or --metrics), degeneration, CIs."""
    from medblip.evaluation import metrics_markdown
    from medblip.evaluation.scoring import read_predictions, score_predictions, write_metrics
    from medblip.evaluation.tokenization import MetricWarning
    from medblip.outputs import prepare_output_dir

    if uncertain_as not in ("present", "absent"):
        raise ConfigError(f"--uncertain-as must be 'present' or 'absent', not {uncertain_as!r}")
    choice = scoring_choice(metrics, metric_model, imageclef, device)
    if out is not None:
        out = prepare_output_dir(out, "score", overwrite=overwrite)
    rows = read_predictions(predictions)
    # The library also warns through `warnings`/`logging`; here every warning is printed once, below.
    scoring_log = logging.getLogger("medblip.evaluation.scoring")
    level = scoring_log.level
    scoring_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            result = score_predictions(rows, bootstrap=bootstrap, seed=seed, java=False if no_java else "auto",
                                       spice=spice, meteor=not no_meteor, uncertain_as=uncertain_as,  # type: ignore[arg-type]
                                       image_root=predictions.parent, progress=sys.stderr.isatty(), image_rows=out is not None,
                                       **choice)
    finally:
        scoring_log.setLevel(level)
    result["source"] = str(predictions)
    for warning in result["warnings"]:
        typer.secho(f"WARNING: {warning}", fg=typer.colors.YELLOW, err=True)
    if out is None:
        typer.echo(metrics_markdown(result, title or predictions.name))
        return
    paths = write_metrics(result, out, title=title or predictions.name)
    typer.echo(paths["markdown"].read_text(encoding="utf-8"))
    typer.echo(f"wrote {paths['json']} and {paths['markdown']}", err=True)


@app.command("concepts")
def concepts_command(
    file: Annotated[str, typer.Argument(help="Text file with one caption per line, or '-' for stdin.")] = "-",
    lexicon: Annotated[Path | None, typer.Option(
        help="A lexicon JSON file to use instead of the shipped one.", show_default=False)] = None,
    mentions: Annotated[bool, typer.Option(
        "--mentions/--no-mentions", help="Include every finding mention with the trigger that set its status.")]
    = False,
) -> None:
    """Extract modality, regions, findings (with negation) and laterality: one JSON object per line."""
    from medblip.errors import DataError
    from medblip.evaluation.clinical import extract_concepts, load_lexicon
    from medblip.io import dumps

    lex = load_lexicon(lexicon) if lexicon is not None else None
    if file == "-":
        stream = sys.stdin
    else:
        path = Path(file)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        stream = path.open(encoding="utf-8")
    try:
        for line in stream:
            caption = line.rstrip("\r\n")
            d = extract_concepts(caption, lex).to_dict()
            if not mentions:
                d.pop("mentions")
            typer.echo(dumps(d, indent=None))
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason})") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
