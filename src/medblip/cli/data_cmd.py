"""``medblip data ...`` commands."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from medblip.cli.app import data_app


class DataFormat(StrEnum):
    auto = "auto"
    roco = "roco"
    rocov2 = "rocov2"
    hf = "hf"
    manifest = "manifest"


def _default_out(path: Path) -> Path:
    name = path.expanduser().resolve().name or "dataset"
    return Path.cwd() / f"validate-{Path(name).stem}.json"


@data_app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="Dataset folder or file (ROCO, ROCOv2, HF parquet/arrow, manifest)."),
    format: DataFormat = typer.Option(DataFormat.auto, "--format", "-f", help="Layout; auto detects it."),
    split: list[str] | None = typer.Option(None, "--split", help="Only this split (repeatable)."),
    limit: int | None = typer.Option(None, "--limit", min=0,
                                     help="At most N records per split, chosen by --seed (quick runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --limit and the image sample."),
    sample: int = typer.Option(32, "--sample", min=0, help="Images decoded for size statistics."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="JSON report path (default ./validate-<name>.json); "
                                         "a Markdown copy is written beside it (.md)."),
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
    max_pixels: int = typer.Option(64_000_000, "--max-pixels", min=1,
                                   help="Refuse images larger than this (decompression-bomb guard)."),
) -> None:
    """Check a dataset: per-split counts, dropped records by reason, caption and image statistics.

    Writes a JSON report and a Markdown copy, prints the summary, and exits with status 2 when the path is missing, the layout is unrecognised, or no usable record remains.
    """
    from medblip.data import CaptionOptions, load_dataset
    from medblip.data.validate import render_markdown, validate_dataset
    from medblip.errors import DataError
    from medblip.io import atomic_write_json, atomic_write_text

    options = CaptionOptions(lowercase=lowercase, remove_panel_markers=remove_panel_markers)
    dataset = load_dataset(path, format=format.value, splits=split or None, caption_options=options,
                           require_images=not allow_missing_images, limit=limit, seed=seed,
                           roco_subsets=[x.strip() for x in roco_subsets.split(",") if x.strip()])
    result = validate_dataset(dataset, sample=sample, seed=seed, max_pixels=max_pixels, progress=True)
    result["options"] = {"format": format.value, "splits": split or None, "limit": limit, "seed": seed,
                         "sample": sample, "allow_missing_images": allow_missing_images,
                         "roco_subsets": roco_subsets,
                         "caption_options": options.model_dump()}
    json_path = out or _default_out(path)
    md_path = json_path.with_suffix(".md")
    markdown = render_markdown(result)
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, markdown)
    typer.echo(markdown)
    typer.echo(dataset.report.summary())
    typer.echo(f"wrote {json_path} and {md_path}")
    if len(dataset) == 0:
        hint = ("; for a text-only release use --allow-missing-images"
                if dataset.report.missing_images and not allow_missing_images else "")
        dropped = ", ".join(f"{r} {n}" for r, n in dataset.report.dropped.most_common()) or "nothing found"
        raise DataError(f"no usable records in {path} (dropped: {dropped}){hint}")
