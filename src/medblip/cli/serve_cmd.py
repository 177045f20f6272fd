"""``medblip serve``: the web page and the OpenAI-compatible API for one or more models."""

from __future__ import annotations

import importlib.util
import socket

import typer

from medblip.cli.app import app
from medblip.cli.options import saved_or
from medblip.errors import MedblipError


def _need_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn", "gradio") if importlib.util.find_spec(m) is None]
    if missing:
        raise MedblipError(f"medblip serve needs {', '.join(missing)}: install the extra with "
                           "pip install 'medblip[serve]' (make install does)")


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise MedblipError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                               "or --host") from None


@app.command("serve")
def serve_cmd(
    model: list[str] = typer.Option(..., "--model", "-m",
                                    help="Hub id, checkpoint folder or training run folder; NAME=PATH names it. "
                                         "Repeat to serve several models (the page gets a picker)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Interface to listen on. Anything but loopback is reachable by other machines."),
    port: int = typer.Option(7860, "--port", min=1, max=65535),
    api_key: str | None = typer.Option(None, "--api-key", envvar="MEDBLIP_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on the API and the key as the "
                                            "page's password (or set MEDBLIP_API_KEY)."),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images",
                                             help="Let API requests name http(s) image URLs for the server to "
                                                  "fetch (default: only data: URIs)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, help="Largest image accepted, in MB."),
    max_pixels: int = typer.Option(36_000_000, "--max-pixels", min=1, help="Largest image accepted, in pixels."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most requests captioned in one forward pass."),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", min=0.0,
                                        help="How long a request waits for others to share its forward pass."),
    max_queue: int = typer.Option(64, "--max-queue", min=1,
                                  help="Requests allowed to wait per model; more get 503 with Retry-After."),
    num_beams: int | None = typer.Option(None, "--num-beams", min=1, help=f"Beam width {saved_or('num_beams')}."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1,
                                              help=f"Longest caption in tokens {saved_or('max_new_tokens')}; "
                                                   "API clients may ask for less with max_tokens."),
    min_new_tokens: int | None = typer.Option(None, "--min-new-tokens", min=0, help=saved_or("min_new_tokens")),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt (default: the family's, or the run's)."),
    text_as_prompt: bool = typer.Option(False, "--text-as-prompt",
                                        help="Use the text of an API request as the model's prompt (default: "
                                             "ignored; captioning models continue prompts, they do not obey them)."),
    family: str | None = typer.Option(None, "--family", help="Model family (default: from config.json)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: best available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, float16, bfloat16."),
    page: bool = typer.Option(True, "--page/--no-page", help="Serve the web page at / (the API is always on)."),
) -> None:
    """Serve models on one port: a web page (upload an image: caption, clinical concepts, attention per
    word) and an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models).

    Binds 127.0.0.1 by default: only this machine can connect. Concurrent requests are batched into
    one forward pass (--max-batch, --batch-wait-ms); when --max-queue requests wait, more get 503.
    """
    _need_extra()
    from medblip.serving.app import run_server
    from medblip.serving.limits import UploadLimits, host_warning
    from medblip.serving.openai_api import ApiOptions
    from medblip.serving.served import BatchingOptions, load_models

    if api_key is not None and not api_key.strip():
        raise MedblipError("--api-key / MEDBLIP_API_KEY is empty; give a key or leave it unset")
    options = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
               "prompt": prompt}
    asked = {k: v for k, v in options.items() if v is not None}  # the rest: each checkpoint's, else medblip's
    _check_port(host, port)
    warning = host_warning(host, api_key)
    if warning:
        typer.secho(f"medblip: warning: {warning}", fg=typer.colors.YELLOW, err=True)
    models = load_models(model, asked, family=family, device=device, dtype=dtype,
                         batching=BatchingOptions(max_batch=max_batch, max_wait=batch_wait_ms / 1000,
                                                  max_queue=max_queue))
    for m in models:
        for note in m.notes:
            typer.echo(f"{m.name}: {note}", err=True)
    limits = UploadLimits(max_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                          allow_remote=allow_remote_images)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"medblip serve: {', '.join(m.name for m in models)} on http://{shown}:{port}/ "
               f"(page{'' if page else ': off'}) and http://{shown}:{port}/v1 (OpenAI-compatible API"
               f"{', key required' if api_key else ''}); Ctrl-C stops", err=True)
    run_server(models, ApiOptions(api_key=api_key, limits=limits, text_as_prompt=text_as_prompt),
               host=host, port=port, page=page)
