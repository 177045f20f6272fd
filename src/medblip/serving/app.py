"""One server: the web page at ``/`` and the OpenAI-compatible API at ``/v1`` on the same port.

:func:`create_app` builds the FastAPI application (the Gradio page is mounted on it);
:func:`run_server` serves it with uvicorn until interrupted, then stops the batchers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from medblip.serving.openai_api import ApiOptions, install
from medblip.serving.served import ServedModel


def create_app(models: Sequence[ServedModel], options: ApiOptions | None = None, *, page: bool = True) -> Any:
    """The FastAPI app: /v1 (OpenAI-compatible), /health, /stats and, with ``page``, the page at /."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from fastapi import FastAPI

    options = options or ApiOptions()
    app = FastAPI(title="medblip", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # each model's decoding settings and where each came from (option, the checkpoint's saved one, default);
        # not its checkpoint path: /health answers without the API key
        described = {m.name: m.describe() for m in models}
        return {"status": "ok", "models": list(described),
                "generation": {name: {k: d[k] for k in ("generation", "generation_source")}
                               for name, d in described.items()}}

    install(app, models, options)
    if page:
        import gradio as gr

        from medblip.serving.examples import synthetic_examples
        from medblip.serving.page import build_page

        blocks = build_page(models, options.limits, synthetic_examples())
        auth = None
        if options.api_key is not None:
            import hmac

            key = options.api_key.encode()

            def auth(user: str, password: str) -> bool:
                return hmac.compare_digest(password.encode(), key)

        app = gr.mount_gradio_app(
            app, blocks, path="/", auth=auth, ssr_mode=False, footer_links=[],
            auth_message="Sign in with any user name and the server's API key as the password." if auth else None,
            max_file_size=2 * options.limits.max_bytes)  # larger files are stopped here; smaller ones by our check
    return app


def run_server(models: Sequence[ServedModel], options: ApiOptions | None = None, *, host: str = "127.0.0.1",
               port: int = 7860, page: bool = True, log_level: str = "warning") -> None:
    """Serve until Ctrl-C / SIGTERM, then stop every model's batcher."""
    import uvicorn

    app = create_app(models, options, page=page)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        for m in models:
            m.close()
