"""``medblip export``: a trained model as a transformers folder with a model card, optionally pushed to the Hub."""

from __future__ import annotations

from pathlib import Path

import typer

from medblip.cli.app import app
from medblip.cli.options import OVERWRITE_HELP


@app.command("export")
def export_cmd(
    source: Path = typer.Argument(..., help="Training run folder (its best checkpoint) or checkpoint folder.",
                                  show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (new, empty, or an earlier export; files "
                                                          "you added to an earlier export are kept)."),
    evaluation: list[Path] = typer.Option([], "--evaluation", "-e",
                                          help="`medblip evaluate` output folder(s) whose metrics go into the card "
                                               "(default: those in the run folder that evaluated this checkpoint)."),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="Also upload to this Hub repo (user/name).",
                                           show_default=False),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a folder plain transformers loads (from_pretrained, pipeline("image-text-to-text")): the weights,
    processor, the run's generation settings (generation_config.json) and a model card (README.md)."""
    from medblip.models.export import export_model
    from medblip.models.export import push_to_hub as push

    result = export_model(source, out, evaluations=evaluation, overwrite=overwrite)
    for note in result.notes:
        typer.echo(note, err=True)
    typer.echo(f"exported {result.checkpoint} to {result.out} (README.md model card, generation_config.json: "
               + ", ".join(f"{k}={v}" for k, v in result.generation.items()) + ")", err=True)
    if push_to_hub:
        url = push(result.out, push_to_hub, private=private)
        typer.echo(f"pushed to {url}", err=True)
