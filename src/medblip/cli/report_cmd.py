"""``medblip report RUN_DIRS... --out DIR``: one self-contained HTML report (plus Markdown and JSON)."""

from __future__ import annotations

from pathlib import Path

import typer

from medblip.cli.app import app
from medblip.cli.options import MAX_PIXELS_HELP, OVERWRITE_HELP, apply_max_pixels
from medblip.errors import MedblipError


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders: evaluate, compare, train, explain, ablation, "
                                                    "dataset-summary folders, or a folder holding them "
                                                    "(searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: report.html (self-contained: images "
                                                     "embedded), report.md, report.json, assets/."),
    title: str | None = typer.Option(None, "--title", help="Report title."),
    words: str | None = typer.Option(None, "--words", help="Comma-separated caption words whose attention "
                                                           "overlays are shown (default: up to 8 of the caption's "
                                                           "clinical words, then other content words)."),
    examples: int = typer.Option(6, "--examples", min=1, max=200,
                                 help="Qualitative examples shown (and lowest-scoring cases per system)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset to take example images from when the runs' "
                                                          "own data path (run.json) is missing or moved."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
) -> None:
    """Write an HTML report (opens offline from file://) of the given run folders.

    Sections: dataset summary, comparison table (95% CIs, best per column in bold, significance
    marks), ablation table, training curves, qualitative examples with clinical terms that agree /
    disagree with the reference, attention overlays, failure cases. A missing input leaves its
    section out with a note.
    """
    from medblip.outputs import check_output_dir
    from medblip.reports import build_report, collect
    from medblip.reports.build import REPORT_HTML
    from medblip.reports.collect import report_inputs_summary

    apply_max_pixels(max_pixels)
    if data is not None and not data.exists():
        raise MedblipError(f"--data {data}: no such file or folder")
    out = out.expanduser()
    for d in run_dirs:
        if d.expanduser().resolve() == out.resolve():
            raise MedblipError(f"--out {out} is one of the run folders; choose another output folder")
    check_output_dir(out, "report", overwrite=overwrite, known_files=(REPORT_HTML,))
    word_list = [w.strip() for w in (words or "").split(",") if w.strip()]
    rep = collect(run_dirs, title=title, words=word_list, examples=examples, data=data, exclude=[out])
    paths = build_report(rep, out, overwrite=overwrite)
    typer.echo(f"read {report_inputs_summary(rep)} folder(s); {len(rep.notes)} note(s)", err=True)
    for note in rep.notes[:10]:
        typer.echo(f"  note: {note}", err=True)
    typer.echo(f"report: {paths['html']}")
