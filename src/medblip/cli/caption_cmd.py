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
    model: str | None = typer.Option(None, "--model", "-m", help="Hub id, checkpoint folder or training run folder "
                                                               "(or --api for a model behind an API)."),
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
    api: str | None = typer.Option(None, "--api", help="Caption through an OpenAI-compatible vision endpoint "
                                   "instead of a local model: its base URL, e.g. "
                                   "https://generativelanguage.googleapis.com/v1beta/openai/ (Gemini), "
                                   "http://localhost:11434/v1 (Ollama), http://127.0.0.1:7860/v1 (medblip serve)."),
    api_model: str | None = typer.Option(None, "--api-model", help="With --api: the model name the endpoint knows "
                                         "(e.g. gemini-1.5-flash)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="With --api: environment variable holding "
                                           "the API key (never the key itself on the command line)."),
    api_concurrency: int = typer.Option(4, "--api-concurrency", min=1, max=256,
                                        help="With --api: requests in flight at once."),
    api_rpm: float | None = typer.Option(None, "--api-requests-per-minute", min=0.001,
                                         help="With --api: rate limit (default: none)."),
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
    from medblip.errors import MedblipError

    if (model is None) == (api is None):
        raise MedblipError("caption: give --model (a local model) or --api (an OpenAI-compatible endpoint), not "
                           + ("both" if model else "neither"))
    if api is None and (api_model or api_key_env):
        raise MedblipError("caption: --api-model and --api-key-env go with --api")
    captioner_model: object = model
    if api is not None:
        from medblip.models.api import ApiCaptioner, ApiConfig

        if not api_model:
            raise MedblipError("caption: --api needs --api-model NAME (the model name the endpoint knows)")
        fields = {"base_url": api, "model": api_model, "api_key_env": api_key_env, "concurrency": api_concurrency,
                  "requests_per_minute": api_rpm}
        if (generation or {}).get("prompt"):
            fields["prompt"] = generation["prompt"]
        captioner_model = ApiCaptioner(ApiConfig(**fields))

    def show(row: dict) -> None:
        label = f"{row['path']}#{row['frame']}" if row.get("frame") is not None else row["path"]
        typer.echo(f"{label}\t{row['caption']}")

    result = caption_inputs(captioner_model, inputs, out, series=series,
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
    if api is not None:
        typer.echo(f"api: {captioner_model.summary_text()}", err=True)  # type: ignore[attr-defined]
