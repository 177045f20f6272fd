"""The OpenAI-compatible API: ``GET /v1/models`` and ``POST /v1/chat/completions``.

A chat request carries one image in its last user message (``{"type": "image_url", "image_url":
{"url": "data:image/png;base64,..."}}``) and optionally text; the caption comes back as the
assistant's message. The text is ignored unless the server runs with ``--text-as-prompt``: a
captioning model continues a prompt rather than following an instruction, so a client's "Describe
this image" would only derail it. ``max_tokens`` may shorten the caption (never lengthen it beyond
the server's setting); sampling parameters are ignored (captions are deterministic). ``stream: true``
is answered as one chunk. Every error is OpenAI's JSON shape ``{"error": {"message", "type",
"param", "code"}}``, with the HTTP status OpenAI uses (400, 401, 404, 503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from medblip.serving.batching import QueueFull
from medblip.serving.limits import UploadError, UploadLimits, decode_image, image_bytes_from_url
from medblip.serving.served import ServedModel

#: JSON around the base64 image: messages, text, parameters
_BODY_OVERHEAD = 1 << 20


class OpenAIError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers, content={
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}})


@dataclasses.dataclass(frozen=True)
class ApiOptions:
    api_key: str | None = None
    limits: UploadLimits = dataclasses.field(default_factory=UploadLimits)
    text_as_prompt: bool = False


def check_bearer(authorization: str | None, api_key: str | None) -> None:
    """Raise a 401 OpenAIError unless ``authorization`` is ``Bearer <api_key>`` (no key: open)."""
    if api_key is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise OpenAIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>' "
                               "with the key the server was started with", code="invalid_api_key")


def install(app: FastAPI, models: Sequence[ServedModel], options: ApiOptions) -> None:
    """Add the /v1 routes, /stats and the OpenAI-shaped error handlers to the FastAPI ``app``."""
    by_name = {m.name: m for m in models}

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> Any:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Any:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return OpenAIError(400, str(err.get("msg")), param=".".join(str(x) for x in err.get("loc", ()))).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Any:
        if request.url.path.startswith("/v1"):
            return OpenAIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404
                               else None).response()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def authorise(request: Request) -> None:
        check_bearer(request.headers.get("authorization"), options.api_key)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        authorise(request)
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "medblip"} for m in models]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> Any:
        authorise(request)
        if name not in by_name:
            raise _unknown_model(name, by_name)
        return {"id": name, "object": "model", "created": 0, "owned_by": "medblip"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        authorise(request)
        body = await _read_json(request, options.limits.max_bytes * 4 // 3 + _BODY_OVERHEAD)
        model = _pick_model(body, by_name)
        url, text = _image_and_text(body)
        settings = _settings(model, body, text if options.text_as_prompt else None)
        caption = await _caption(model, url, options.limits, settings)
        tokens = model.count_tokens(caption)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            return StreamingResponse(_stream(ident, created, model.name, caption), media_type="text/event-stream")
        return {"id": ident, "object": "chat.completion", "created": created, "model": model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": caption},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}}

    @app.get("/stats")
    async def stats(request: Request) -> Any:
        """Micro-batching counters per model (requests, forward passes, batch sizes, refusals)."""
        authorise(request)
        return {m.name: m.batcher.stats() for m in models}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(rest: str, request: Request) -> Any:
        raise OpenAIError(404, f"unknown endpoint {request.method} /v1/{rest}: this server offers GET /v1/models "
                               "and POST /v1/chat/completions", code="not_found")


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise OpenAIError(400, f"request body of {int(declared):,} bytes exceeds this server's limit of {limit:,} "
                               "bytes (--max-upload-mb)", code="image_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise OpenAIError(400, f"request body exceeds this server's limit of {limit:,} bytes (--max-upload-mb)",
                              code="image_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpenAIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    return body


def _unknown_model(name: Any, by_name: dict[str, ServedModel]) -> OpenAIError:
    return OpenAIError(404, f"the model {name!r} does not exist on this server (served: {', '.join(by_name)})",
                       param="model", code="model_not_found")


def _pick_model(body: dict[str, Any], by_name: dict[str, ServedModel]) -> ServedModel:
    name = body.get("model")
    if name is None and len(by_name) == 1:
        return next(iter(by_name.values()))
    if name not in by_name:
        raise _unknown_model(name, by_name)
    return by_name[name]


def _image_and_text(body: dict[str, Any]) -> tuple[str, str]:
    """The one image URL and the text of the last user message."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty list", param="messages")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise OpenAIError(400, "no user message: send one with the image", param="messages")
    i = users[-1]
    content = messages[i].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise OpenAIError(400, "message content must be a string or a list of parts", param=f"messages[{i}].content")
    urls, texts = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            ref = part.get("image_url")
            urls.append(ref.get("url") if isinstance(ref, dict) else ref)
        elif kind == "text":
            texts.append(str(part.get("text") or ""))
        else:
            raise OpenAIError(400, f"unsupported content part type {kind!r} (use 'text' and 'image_url')",
                              param=f"messages[{i}].content")
    if len(urls) != 1:
        raise OpenAIError(400, f"the last user message must hold exactly one image_url part, found {len(urls)}",
                          param=f"messages[{i}].content", code="invalid_image" if not urls else None)
    return urls[0], " ".join(t for t in texts if t.strip()).strip()


def _settings(model: ServedModel, body: dict[str, Any], prompt: str | None) -> Any:
    n = body.get("n", 1)
    if n not in (1, None):
        raise OpenAIError(400, "n must be 1: a caption is deterministic", param="n")
    settings = model.settings
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise OpenAIError(400, "max_tokens must be a positive integer", param="max_tokens")
        new_max = min(limit, settings.max_new_tokens)
        settings = dataclasses.replace(settings, max_new_tokens=new_max,
                                       min_new_tokens=min(settings.min_new_tokens, new_max))
    if prompt:
        settings = dataclasses.replace(settings, prompt=prompt)
    return settings


async def _caption(model: ServedModel, url: Any, limits: UploadLimits, settings: Any) -> str:
    try:
        model.batcher.check_room()  # a busy server refuses before decoding anything
        data = await run_in_threadpool(image_bytes_from_url, url, limits)
        image = await run_in_threadpool(decode_image, data, limits, "image_url")
        future = model.submit(image, settings)
    except UploadError as exc:
        raise OpenAIError(400, str(exc), param="messages", code=exc.code) from None
    except QueueFull as exc:
        raise OpenAIError(503, str(exc), type="server_error", code="queue_full",
                          headers={"Retry-After": str(exc.retry_after)}) from None
    try:
        return await asyncio.wrap_future(future)
    except Exception as exc:  # noqa: BLE001 - the model failed; the client gets a 500, the log has the trace
        raise OpenAIError(500, f"captioning failed ({type(exc).__name__}: {exc})", type="server_error") from None


async def _stream(ident: str, created: int, model: str, caption: str) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        return "data: " + json.dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                      "model": model, "choices": [{"index": 0, "delta": delta,
                                                                   "finish_reason": finish}]}) + "\n\n"

    yield chunk({"role": "assistant", "content": caption}, None)
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"
