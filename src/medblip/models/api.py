"""API models as captioners: any OpenAI-compatible vision endpoint behind ``generate(images)``.

Gemini (its OpenAI-compatible endpoint), OpenAI, vLLM, Ollama and ``medblip serve`` all accept a chat
completion whose user message holds the image as a base64 ``data:`` URI and a text prompt; the
assistant's reply is the caption. :class:`ApiCaptioner` offers the same
``generate(images, settings=None, **overrides) -> list[str]`` as
:class:`~medblip.models.base.CaptionModel`, so medblip's prediction code (``predict``,
``medblip compare``'s ``api:`` systems, ``medblip caption --api``) uses it like a local model:

* ``concurrency`` requests in flight at once, at most ``requests_per_minute`` started per minute;
* 408/409/429/5xx answers and network errors are retried ``max_retries`` times with exponential
  backoff (``Retry-After`` is honoured); 401/403/404 stop the run at once (wrong key or model name);
* every caption is cached on disk, keyed by the image's hash, endpoint, model, prompt and decoding
  settings, so a rerun (or a resumed comparison) makes no calls;
* :meth:`ApiCaptioner.summary` counts calls, retries, cache hits, failures and time.

Mapping of :class:`~medblip.models.base.GenerationSettings` onto the request: ``prompt`` (``None``:
the configured prompt) is the text, ``max_new_tokens`` is ``max_tokens``, no sampling means
``temperature: 0``; beams and repetition settings do not exist in these APIs and are ignored.
Images that still fail after the retries make ``generate`` raise :class:`ApiCaptionError` once the
others are done (their captions are cached: run again to retry only the failures).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medblip.errors import MedblipError
from medblip.io import atomic_write_json
from medblip.models.base import GenerationSettings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image

    from medblip.data import Record
    from medblip.evaluation.predict import PredictionRun

DEFAULT_PROMPT = ("Write the figure caption of this radiology image as it would appear in a journal article: "
                  "one or two sentences naming the imaging modality, the body region and the main finding "
                  "(with its side), or stating that there is none.")
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
MAX_RETRY_AFTER = 120.0


class ApiCaptionError(MedblipError):
    """Captioning through an API failed for some images (after retries) or could not start."""


class ApiConfig(BaseModel):
    """An API captioner: the ``api:`` block of a compare system, or ``medblip caption --api``."""

    model_config = ConfigDict(extra="forbid")

    #: the endpoint's OpenAI-compatible root, e.g. https://generativelanguage.googleapis.com/v1beta/openai/
    base_url: str
    #: the model name the endpoint knows, e.g. gemini-1.5-flash
    model: str
    #: environment variable holding the API key (never the key itself in a config file)
    api_key_env: str | None = None
    prompt: str = DEFAULT_PROMPT
    max_tokens: int = Field(default=128, ge=1)
    #: 0: the most likely reply (as deterministic as the API allows)
    temperature: float = Field(default=0.0, ge=0)
    #: name of the length field: newer OpenAI models want max_completion_tokens
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    concurrency: int = Field(default=4, ge=1, le=256)
    requests_per_minute: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=5, ge=0)
    #: first backoff in seconds, doubled after every retry (with jitter), at most 60 s
    backoff: float = Field(default=1.0, ge=0)
    timeout: float = Field(default=120.0, gt=0)
    #: caption cache folder (default: $MEDBLIP_CACHE or ~/.cache/medblip, then api-captions/); false: none
    cache_dir: str | Literal[False] | None = None
    image_format: Literal["png", "jpeg"] = "png"
    #: scale images down to this longer side before sending (None: as they are)
    max_image_side: int | None = Field(default=None, ge=16)
    #: extra fields of the request body, e.g. {"reasoning_effort": "none"}
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def default_cache_dir() -> Path:
    root = os.environ.get("MEDBLIP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medblip"
    return Path(root) / "api-captions"


@dataclasses.dataclass
class ApiStats:
    """What the captioner has done so far (all ``generate`` calls together)."""

    images: int = 0
    cached: int = 0
    captioned: int = 0
    calls: int = 0
    retries: int = 0
    failures: int = 0
    seconds: float = 0.0
    http_status: Counter[int] = dataclasses.field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["http_status"] = {str(k): v for k, v in sorted(self.http_status.items())}
        d["seconds"] = round(self.seconds, 3)
        return d


class _RateLimiter:
    """At most ``per_minute`` request starts per minute, spaced evenly, across threads."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class _Failed(Exception):
    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class ApiCaptioner:
    """Caption images through an OpenAI-compatible chat endpoint (see the module doc)."""

    family = "api"

    def __init__(self, config: ApiConfig | None = None, **fields: Any) -> None:
        self.config = config or ApiConfig(**fields)
        c = self.config
        self.name_or_path = f"api:{c.model}@{c.base_url}"
        self.settings = GenerationSettings(num_beams=1, max_new_tokens=c.max_tokens, do_sample=c.temperature > 0,
                                           temperature=c.temperature or 1.0, prompt=c.prompt)
        self.stats = ApiStats()
        self.cache_dir = None if c.cache_dir is False else Path(c.cache_dir or default_cache_dir()).expanduser()
        self._limiter = _RateLimiter(c.requests_per_minute)
        self._client: Any = None
        self._lock = threading.Lock()

    # -- the CaptionModel interface --------------------------------------------------------------
    def generate(self, images: list[Image.Image], settings: GenerationSettings | None = None,
                 **overrides: Any) -> list[str]:
        """One caption per image, in order (cached ones without a call)."""
        if not isinstance(images, list | tuple):
            images = [images]
        settings, extra = (settings or self.settings).updated(**overrides)
        body = self._body_template(settings, extra)
        t0 = time.perf_counter()
        payloads = [self._encode(im) for im in images]
        keys = [self._cache_key(p, body) for p in payloads]
        captions: list[str | None] = [self._cached(k) for k in keys]
        todo = [i for i, c in enumerate(captions) if c is None]
        errors: dict[int, str] = {}
        abort = threading.Event()

        def work(i: int) -> None:
            if abort.is_set():
                errors[i] = "not sent: an earlier request failed fatally"
                return
            try:
                captions[i] = self._request(payloads[i], body)
                self._store(keys[i], captions[i] or "", body)
            except _Failed as exc:
                errors[i] = str(exc)
                if exc.fatal:
                    abort.set()

        if todo:
            with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(todo))) as pool:
                list(pool.map(work, todo))
        with self._lock:
            self.stats.images += len(images)
            self.stats.cached += len(images) - len(todo)
            self.stats.captioned += len(todo) - len(errors)
            self.stats.failures += len(errors)
            self.stats.seconds += time.perf_counter() - t0
        if errors:
            msg = (f"{self.config.endpoint}: {len(errors)} of {len(images)} image(s) got no caption from "
                   f"{self.config.model}: {errors[min(errors)]}")
            if len(errors) < len(images) and self.cache_dir is not None:
                msg += "; the captions that arrived are cached, so running again retries only the failed images"
            raise ApiCaptionError(msg)
        return [c or "" for c in captions]

    # -- summary ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"model": self.config.model, "base_url": self.config.base_url, **self.stats.as_dict()}

    def summary_text(self) -> str:
        s = self.stats
        return (f"{self.config.model} at {self.config.base_url}: {s.images} image(s), {s.captioned} captioned with "
                f"{s.calls} call(s) ({s.retries} retried), {s.cached} from the cache, {s.failures} failed; "
                f"{s.seconds:.1f} s")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return f"ApiCaptioner(model={self.config.model!r}, base_url={self.config.base_url!r})"

    # -- internals -------------------------------------------------------------------------------
    def _body_template(self, settings: GenerationSettings, extra: dict[str, Any]) -> dict[str, Any]:
        prompt = settings.prompt if settings.prompt is not None else self.config.prompt
        body: dict[str, Any] = {"model": self.config.model, "prompt": prompt,
                                self.config.max_tokens_field: settings.max_new_tokens,
                                "temperature": settings.temperature if settings.do_sample else 0.0}
        if settings.do_sample and settings.top_p < 1:
            body["top_p"] = settings.top_p
        return {**body, **self.config.extra_body, **extra}

    def _encode(self, image: Image.Image) -> bytes:
        from PIL import Image as PILImage

        image = image.convert("RGB")
        side = self.config.max_image_side
        if side and max(image.size) > side:
            scale = side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 PILImage.Resampling.LANCZOS)
        buf = io.BytesIO()
        if self.config.image_format == "jpeg":
            image.save(buf, format="JPEG", quality=95)
        else:
            image.save(buf, format="PNG")
        return buf.getvalue()

    def _cache_key(self, payload: bytes, body: dict[str, Any]) -> str:
        ident = {"image_sha256": hashlib.sha256(payload).hexdigest(), "base_url": self.config.base_url.rstrip("/"),
                 "image_format": self.config.image_format, **body}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cached(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            caption = json.loads(path.read_text(encoding="utf-8")).get("caption")
        except (OSError, ValueError):
            return None  # a damaged entry is fetched again
        return caption if isinstance(caption, str) else None

    def _store(self, key: str, caption: str, body: dict[str, Any]) -> None:
        path = self._cache_path(key)
        if path is not None:
            atomic_write_json(path, {"caption": caption, "base_url": self.config.base_url, "request": body,
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def _http(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                headers = {}
                env = self.config.api_key_env
                if env:
                    key = os.environ.get(env)
                    if not key:
                        raise ApiCaptionError(f"api_key_env: the environment variable {env} is not set (it should "
                                              f"hold the API key for {self.config.base_url})")
                    headers["Authorization"] = f"Bearer {key}"
                limits = httpx.Limits(max_connections=self.config.concurrency)
                self._client = httpx.Client(headers=headers, timeout=self.config.timeout, limits=limits)
            return self._client

    def _request(self, payload: bytes, template: dict[str, Any]) -> str:
        import httpx

        mime = "image/jpeg" if self.config.image_format == "jpeg" else "image/png"
        body = {k: v for k, v in template.items() if k != "prompt"}
        content: list[dict[str, Any]] = []
        if template["prompt"]:
            content.append({"type": "text", "text": template["prompt"]})
        content.append({"type": "image_url",
                        "image_url": {"url": f"data:{mime};base64,{base64.b64encode(payload).decode()}"}})
        body["messages"] = [{"role": "user", "content": content}]
        client = self._http()
        problem = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            self._limiter.wait()
            with self._lock:
                self.stats.calls += 1
            retry_after = None
            try:
                resp = client.post(self.config.endpoint, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                with self._lock:
                    self.stats.http_status[resp.status_code] += 1
                if resp.status_code == 200:
                    return _reply_text(resp)
                problem = f"HTTP {resp.status_code}: {_error_message(resp)}"
                if resp.status_code in FATAL_STATUS:
                    raise _Failed(problem, fatal=True)
                if resp.status_code not in RETRY_STATUS:
                    raise _Failed(problem)
                retry_after = _retry_after(resp)
            if attempt < self.config.max_retries:
                delay = min(60.0, self.config.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                time.sleep(retry_after if retry_after is not None else delay)
        raise _Failed(f"{problem} (after {self.config.max_retries} retries)")


def _reply_text(resp: Any) -> str:
    try:
        content = resp.json()["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _Failed(f"unexpected reply (not a chat completion): {resp.text[:200]!r}") from None
    if isinstance(content, list):  # some servers answer with content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(str(content or "").split())


def _error_message(resp: Any) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    except (ValueError, AttributeError):
        pass
    return resp.text[:300].strip() or resp.reason_phrase


def _retry_after(resp: Any) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use the backoff instead


def predict_through_api(config: ApiConfig, records: Sequence[Record], out_path: str | Path, *,
                        batch_size: int | None = None, progress: bool = True, desc: str | None = None,
                        overwrite: bool = False) -> PredictionRun:
    """:func:`medblip.evaluation.predict.predict` with an :class:`ApiCaptioner`: ``predictions.jsonl``
    (resumable) for ``records``; the captioner's summary is the run's last note. ``batch_size``
    (default: 4 x concurrency) images are sent per step, ``concurrency`` of them at a time."""
    from medblip.evaluation.predict import predict

    captioner = ApiCaptioner(config)
    try:
        run = predict(captioner, records, out_path, captioner.settings,
                      batch_size=batch_size or 4 * config.concurrency, progress=progress, desc=desc,
                      overwrite=overwrite)
    finally:
        captioner.close()
    if captioner.stats.images:
        run.notes.append(captioner.summary_text())
    return run
