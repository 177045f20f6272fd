"""Micro-batching: caption requests that arrive together share one ``generate`` call.

One worker thread per served model takes the oldest waiting request, gathers the other waiting
requests with the same generation settings (waiting up to ``max_wait`` seconds for more, at most
``max_batch`` in all), captions them in one batched forward pass and resolves each request's future.
Requests keep arriving while a batch runs, so under load every batch is full; a lone request pays at
most ``max_wait``. The waiting line is bounded: a request that finds ``max_queue`` requests already
waiting is refused at once with :class:`QueueFull` (the API answers 503 with ``Retry-After``), so an
overloaded server sheds load instead of letting requests hang.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError

if TYPE_CHECKING:
    from PIL import Image

    from medblip.models.base import GenerationSettings

log = logging.getLogger(__name__)

GenerateFn = Callable[[list["Image.Image"], "GenerationSettings"], list[str]]


class QueueFull(MedblipError):
    """The server's waiting line is full; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Job:
    image: Image.Image
    settings: GenerationSettings
    key: tuple[Any, ...]
    future: Future[str] = field(default_factory=Future)


class MicroBatcher:
    """Batch concurrent :meth:`submit` calls into calls of ``generate(images, settings)``.

    ``lock`` is held around every ``generate`` call; other users of the same model (the page's
    attention maps) take it too, so the model never runs two things at once.
    """

    def __init__(self, generate: GenerateFn, *, max_batch: int = 16, max_wait: float = 0.01,
                 max_queue: int = 64, lock: threading.Lock | None = None, name: str = "model") -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise MedblipError(f"batching: max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1 "
                               f"and max_wait ({max_wait}) >= 0")
        self._generate = generate
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.lock = lock or threading.Lock()
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._sizes: Counter[int] = Counter()
        self._rejected = 0
        self._thread = threading.Thread(target=self._run, name=f"medblip-batcher-{name}", daemon=True)
        self._thread.start()

    # -- clients ---------------------------------------------------------------------------------
    def submit(self, image: Image.Image, settings: GenerationSettings) -> Future[str]:
        """Queue one image; the future resolves to its caption. Raises :class:`QueueFull` at once
        when ``max_queue`` requests are already waiting."""
        job = _Job(image, settings, tuple(dataclasses.astuple(settings)))
        with self._cond:
            self._refuse_if_full()
            self._waiting.append(job)
            self._cond.notify_all()
        return job.future

    def check_room(self) -> None:
        """Raise :class:`QueueFull` now if a request would be refused, so that a server can refuse
        before it spends time decoding the image (:meth:`submit` checks again)."""
        with self._cond:
            self._refuse_if_full()

    def _refuse_if_full(self) -> None:
        if self._closed:
            raise MedblipError("the server is shutting down")
        if len(self._waiting) >= self.max_queue:
            self._rejected += 1
            raise QueueFull(f"the server is busy ({len(self._waiting)} requests waiting); retry shortly")

    def stats(self) -> dict[str, Any]:
        """Requests served, forward passes, batch sizes (size -> count), refusals, waiting now."""
        with self._cond:
            sizes = dict(sorted(self._sizes.items()))
            waiting, rejected = len(self._waiting), self._rejected
        requests = sum(k * v for k, v in sizes.items())
        batches = sum(sizes.values())
        return {"requests": requests, "batches": batches, "mean_batch": requests / batches if batches else 0.0,
                "largest_batch": max(sizes, default=0), "batch_sizes": sizes, "rejected": rejected,
                "waiting": waiting, "max_batch": self.max_batch, "max_queue": self.max_queue,
                "max_wait_ms": self.max_wait * 1000}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; requests still waiting fail with a MedblipError."""
        with self._cond:
            self._closed = True
            left, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in left:
            job.future.set_exception(MedblipError("the server is shutting down"))
        self._thread.join(timeout)

    # -- worker ----------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Job]:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            first = self._waiting.popleft()
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while True:
                for job in [j for j in self._waiting if j.key == first.key][: self.max_batch - len(batch)]:
                    self._waiting.remove(job)
                    batch.append(job)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._closed:
                    return batch
                self._cond.wait(remaining)

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            # a client that gave up (cancelled future) costs nothing
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                with self.lock:
                    captions = self._generate([j.image for j in batch], batch[0].settings)
                if len(captions) != len(batch):
                    raise RuntimeError(f"generate returned {len(captions)} captions for {len(batch)} images")
            except Exception as exc:  # noqa: BLE001 - every waiting client must hear about it
                log.exception("captioning a batch of %d failed", len(batch))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            with self._cond:
                self._sizes[len(batch)] += 1
            for job, caption in zip(batch, captions, strict=True):
                job.future.set_result(caption)
