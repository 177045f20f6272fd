"""``medblip data ...`` commands."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from medblip.cli.app import data_app
from medblip.cli.options import MAX_PIXELS_HELP, apply_max_pixels


class DataFormat(StrEnum):
    auto = "auto"
    roco = "roco"
    rocov2 = "rocov2"
    hf = "hf"
    manifest = "manifest"


@data_app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="Dataset folder or file (ROCO, ROCOv2, HF parquet/arrow, manifest)."),
    format: DataFormat = typer.Option(DataFormat.auto, "--format", "-f", help="Layout; auto detects it."),
    split: list[str] | None = typer.Option(None, "--split", help="Only this split (repeatable)."),
    limit: int | None = typer.Option(None, "--limit", min=0,
                                     help="At most N records per split, chosen by --seed (quick runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --limit and the image sample."),
    sample: int = typer.Option(32, "--sample", min=0,
                               help="Images decoded for size statistics (the others are not checked)."),
    decode_all: bool = typer.Option(False, "--decode-all",
                                    help="Decode every image (in parallel) instead of a sample; unreadable ones "
                                         "are counted as dropped."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Decoding threads for --decode-all (default: CPU count)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Also write the report as JSON to this file, with a Markdown copy beside "
                                         "it (.md); without it nothing is written."),
    allow_missing_images: bool = typer.Option(
        False, "--allow-missing-images",
        help="Keep records whose image file is missing (counted as warnings). Needed for text-only "
             "releases such as ROCO's metadata: without it they have 0 usable records and exit 2."),
    remove_panel_markers: bool = typer.Option(False, "--remove-panel-markers",
                                              help='Strip "(A)", "(arrow)" ... from captions.'),
    lowercase: bool = typer.Option(False, "--lowercase", help="Lowercase captions."),
    roco_subsets: str = typer.Option("radiology", "--roco-subsets",
                                     help="ROCO only: subsets to load, comma-separated (radiology, non-radiology); "
                                          "the others are counted as not loaded."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
) -> None:
    """Check a dataset: per-split counts, dropped records by reason, caption and image statistics.

    Prints the report; with --out also writes it as JSON and Markdown. By default only a sample of the
    images is decoded (--decode-all checks every one). Exits with status 2 when the path is missing, the
    layout is unrecognised, or no usable record remains.
    """
    from medblip.data import CaptionOptions, load_dataset
    from medblip.data.validate import image_check_sentence, render_markdown, validate_dataset
    from medblip.errors import DataError
    from medblip.io import atomic_write_json, atomic_write_text
    from medblip.outputs import check_output_file

    apply_max_pixels(max_pixels)
    json_path = check_output_file(out) if out is not None else None
    options = CaptionOptions(lowercase=lowercase, remove_panel_markers=remove_panel_markers)
    dataset = load_dataset(path, format=format.value, splits=split or None, caption_options=options,
                           require_images=not allow_missing_images, limit=limit, seed=seed,
                           roco_subsets=[x.strip() for x in roco_subsets.split(",") if x.strip()])
    result = validate_dataset(dataset, sample=sample, seed=seed, progress=True, decode_all=decode_all,
                              workers=workers)
    result["options"] = {"format": format.value, "splits": split or None, "limit": limit, "seed": seed,
                         "sample": sample, "decode_all": decode_all, "allow_missing_images": allow_missing_images,
                         "roco_subsets": roco_subsets,
                         "caption_options": options.model_dump()}
    markdown = render_markdown(result)
    if json_path is not None:
        md_path = json_path.with_suffix(".md")
        atomic_write_json(json_path, result)
        atomic_write_text(md_path, markdown)
    typer.echo(markdown)
    typer.echo(dataset.report.summary())
    typer.echo(image_check_sentence(result["images"]))
    if json_path is not None:
        typer.echo(f"wrote {json_path} and {md_path}")
    if result["usable_records"] == 0 and len(dataset) > 0:
        raise DataError(f"no usable records in {path}: every image that was decoded failed "
                        f"(e.g. {result['images']['error_examples'][0]})")
    if len(dataset) == 0:
        hint = ("; for a text-only release use --allow-missing-images"
                if dataset.report.missing_images and not allow_missing_images else "")
        dropped = ", ".join(f"{r} {n}" for r, n in dataset.report.dropped.most_common()) or "nothing found"
        raise DataError(f"no usable records in {path} (dropped: {dropped}){hint}")
