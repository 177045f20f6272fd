"""``medblip caption``: caption image files, folders, glob patterns and DICOM series with a model."""

from __future__ import annotations

from pathlib import Path

import typer

from medblip.cli.app import app
from medblip.cli.options import generation_options

#: unreadable inputs listed on the terminal when they are also in run.json (all of them otherwise)
_LISTED = 20


@app.command("caption")
@generation_options
def caption_cmd(
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively), glob patterns "
                                                 "('scans/**/*.dcm', quoted), DICOM series folders, or CSV/JSONL "
                                                 "manifests with an 'image' column.", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Hub id, checkpoint folder or training run folder."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="FILE.csv or FILE.jsonl: one row per image (id, path, series_uid, "
                                         "instance_number, frame, caption), plus FILE.run.json; a rerun resumes. "
                                         "Default: print 'path<TAB>caption' lines."),
    series: str = typer.Option("middle", "--series",
                               help="DICOM series and multi-frame files: 'middle' slice/frame of each, or 'all'."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    family: str | None = typer.Option(None, "--family", help="Model family (default: from config.json)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: best available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, float16, bfloat16."),
    captioner: str = typer.Option("auto", "--captioner",
                                  help="auto: the fast captioner where it supports the settings (same captions), "
                                       "else transformers' generate; generate: always generate."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Caption everything again (discard the log of --out)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    generation: dict | None = None,  # the generation options (see medblip.cli.options)
) -> None:
    """Caption your own images: no reference captions needed.

    Folders are searched recursively; DICOM files are grouped into series by SeriesInstanceUID and, by
    default, the middle slice of each series (the middle frame of a multi-frame file) is captioned,
    windowed as medblip reads DICOM. Images that cannot be read are skipped, counted and listed.
    Under `accelerate launch --num_processes N -m medblip caption ... --out F` the images are split
    between the processes and merged into one F.
    """
    from medblip.captioning import caption_inputs

    def show(row: dict) -> None:
        label = f"{row['path']}#{row['frame']}" if row.get("frame") is not None else row["path"]
        typer.echo(f"{label}\t{row['caption']}")

    result = caption_inputs(model, inputs, out, series=series,
                            generation=generation,
                            batch_size=batch_size, family=family, device=device, dtype=dtype, captioner=captioner,
                            progress=progress, overwrite=overwrite, on_caption=None if out else show)
    if not result.is_main:  # another process of a multi-process run: the main one reports
        return
    for note in result.notes:
        typer.echo(note, err=True)
    bad = result.unreadable
    if bad:
        typer.secho(f"skipped {len(bad)} unreadable input(s):", fg=typer.colors.YELLOW, err=True)
        shown = bad if out is None else bad[:_LISTED]
        for where, reason in shown:
            typer.echo(f"  {where}: {reason}", err=True)
        if len(shown) < len(bad):
            typer.echo(f"  ... and {len(bad) - len(shown)} more, all listed in {result.files['run']}", err=True)
    how = result.captioner.get("path")
    if how and result.captioner.get("fallback_reason"):
        how = f"{how} (the fast captioner does not support {result.captioner['fallback_reason']})"
    summary = (f"{len(result.rows)} image(s) captioned ({result.generated} now"
               + (f" with {how}" if how else "") + f", {result.resumed} resumed); {len(bad)} skipped"
               + (f"; {result.scan.series} DICOM series" if result.scan.series else ""))
    if out is not None:
        summary += f"; written to {out} and {result.files['run'].name}"
    typer.echo(summary, err=True)
