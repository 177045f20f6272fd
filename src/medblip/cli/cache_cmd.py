"""``medblip data cache``: build the preprocessed image cache (see :mod:`medblip.data.cache`)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from medblip.cli.app import data_app
from medblip.cli.options import MAX_PIXELS_HELP, OVERWRITE_HELP, apply_max_pixels


class CacheFormat(StrEnum):
    auto = "auto"
    roco = "roco"
    rocov2 = "rocov2"
    hf = "hf"
    manifest = "manifest"


class Resample(StrEnum):
    bicubic = "bicubic"
    bilinear = "bilinear"
    lanczos = "lanczos"
    nearest = "nearest"


@data_app.command("cache")
def cache_cmd(
    path: Path = typer.Argument(..., help="Dataset folder or file (ROCO, ROCOv2, HF parquet/arrow, manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder (index.json + one <split>.npy per split)."),
    size: int | None = typer.Option(None, "--size", min=8,
                                    help="Square side in pixels (default 384, or the --model processor's)."),
    format: CacheFormat = typer.Option(CacheFormat.auto, "--format", "-f", help="Layout; auto detects it."),
    split: list[str] | None = typer.Option(None, "--split", help="Only this split (repeatable)."),
    model: str | None = typer.Option(None, "--model",
                                     help="Take size and resize filter from this checkpoint's image processor."),
    resample: Resample | None = typer.Option(None, "--resample",
                                             help="Resize filter (default bicubic = BLIP's; ViT uses bilinear)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Decoding threads (default: CPU count)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="At most N records per split (by --seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --limit."),
    force: bool = typer.Option(False, "--force", help="Rebuild splits even when they are up to date."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=0, help=MAX_PIXELS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Decode and resize every image once into memory-mapped uint8 arrays for fast training.

    A split is rebuilt only when its images (files, sizes, modification times), captions, the size or
    the filter changed; otherwise it is reported as up to date. Exits 2 on a missing or unreadable
    dataset or image.
    """
    from medblip.data.cache import INDEX_NAME, build_image_cache, processor_image_settings
    from medblip.outputs import check_output_dir

    apply_max_pixels(max_pixels)
    check_output_dir(out, "data cache", overwrite=overwrite, known_files=(INDEX_NAME,))

    filt = resample.value if resample else None
    if model is not None:
        from medblip.models import create_model

        adapter = create_model(model)
        msize, mfilter = processor_image_settings(adapter.processor.image_processor)
        size = size or msize
        filt = filt or mfilter
    size = size or 384
    filt = filt or "bicubic"

    def progress(name: str, done: int, total: int) -> None:
        if not json_out and (done == total or done % 500 == 0):
            typer.echo(f"  {name}: {done}/{total}", err=True)

    summary = build_image_cache(path, out, size=size, resample=filt, format=format.value, splits=split or None,
                                workers=workers, force=force, limit=limit, seed=seed, progress=progress,
                                overwrite=overwrite)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"image cache {summary['directory']} ({size}x{size}, {filt}):")
    for name, info in summary["splits"].items():
        extra = f", {info['bytes'] / 2**20:.1f} MiB in {info['seconds']:.1f} s" if info["status"] == "built" else ""
        typer.echo(f"  {name}: {info['count']} images, {info['status']}{extra}")
