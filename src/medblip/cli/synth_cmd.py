"""``medblip data synth``: render the synthetic radiology benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from medblip.cli.app import data_app
from medblip.cli.options import OVERWRITE_HELP


def _parse_splits(text: str) -> tuple[float, float, float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"expected three comma-separated numbers like 0.8,0.1,0.1, got {text!r}",
                                 param_hint="--splits") from None
    if len(values) != 3:
        raise typer.BadParameter(f"expected three fractions (train,validation,test), got {len(values)}",
                                 param_hint="--splits")
    return values  # type: ignore[return-value]


@data_app.command("synth")
def synth(
    out: Path = typer.Option(Path("data/synth"), "--out", "-o",
                             help="Output directory (created; an earlier benchmark there is replaced)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    n: int = typer.Option(1000, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical output."),
    size: int = typer.Option(384, "--size", min=32, max=2048, help="Image width and height in pixels."),
    splits: str = typer.Option("0.8,0.1,0.1", "--splits", help="Train,validation,test fractions."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Worker processes (default: all CPUs for large runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of text."),
) -> None:
    """Render a synthetic radiology benchmark (CT, MRI, X-ray, ultrasound, angiography, PET) in the
    ROCOv2 layout, with exact ground truth in facts.jsonl and a lesion mask per image."""
    from tqdm import tqdm

    from medblip.data.synth import generate
    from medblip.data.synth.generate import SYNTH_JSON
    from medblip.io import dumps
    from medblip.outputs import check_output_dir

    fractions = _parse_splits(splits)
    check_output_dir(out, "data synth", overwrite=overwrite, known_files=(SYNTH_JSON,), replaces=True)
    with tqdm(total=n, desc="rendering", unit="img", leave=False) as bar:
        summary = generate(out, n, seed=seed, size=size, splits=fractions, workers=workers,
                           on_image=lambda: bar.update(1), overwrite=overwrite)
    if as_json:
        typer.echo(dumps(summary.to_dict()))
        return

    def line(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items())

    typer.echo(f"Synthetic benchmark: {summary.n} images of {size}x{size} px (seed {seed}) in {summary.out}")
    typer.echo(f"  splits:     {line(summary.splits)}")
    typer.echo(f"  modalities: {line(summary.modalities)}")
    typer.echo(f"  findings:   {line(summary.findings)}")
    typer.echo(f"  sides:      {line(summary.sides)}")
    typer.echo(f"  ground truth: {summary.out / 'facts.jsonl'}; parameters: {summary.out / 'synth.json'}")
