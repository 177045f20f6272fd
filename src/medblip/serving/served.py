"""The models a server holds: each one loaded once, with its own micro-batcher and lock.

``--model`` takes a hub id, a checkpoint folder or a training run folder (its best checkpoint, with
the prompt it was trained with, as ``medblip evaluate`` does), optionally named: ``NAME=PATH``. The
name is what clients put in the API's ``model`` field and what the page's picker shows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError
from medblip.serving.batching import MicroBatcher

if TYPE_CHECKING:
    from PIL import Image

    from medblip.explain.explainer import Explanation
    from medblip.models.base import CaptionModel, GenerationSettings

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")


@dataclass(frozen=True)
class BatchingOptions:
    """The micro-batcher's knobs (see :mod:`medblip.serving.batching`)."""

    max_batch: int = 16
    max_wait: float = 0.01
    max_queue: int = 64


@dataclass
class ServedModel:
    """One model behind the server: ``settings`` are the captions' generation settings (the API
    may only shorten them; ``generation_source``: where each came from, see
    :func:`medblip.evaluation.predict.resolve_settings`), ``batcher`` serialises and batches every use
    of ``adapter``."""

    name: str
    adapter: CaptionModel
    settings: GenerationSettings
    batcher: MicroBatcher
    source: str
    notes: list[str] = field(default_factory=list)
    generation_source: dict[str, str] = field(default_factory=dict)

    def submit(self, image: Image.Image, settings: GenerationSettings | None = None) -> Future[str]:
        return self.batcher.submit(image, settings or self.settings)

    def explain(self, image: Image.Image, caption: str) -> Explanation:
        """Cross-attention maps of ``caption`` (teacher-forced) on ``image``; waits for the model."""
        from medblip.explain.explainer import explain_image

        with self.batcher.lock:
            return explain_image(self.adapter, image, caption)

    def count_tokens(self, text: str) -> int:
        return len(self.adapter.tokenizer(text, add_special_tokens=False)["input_ids"])

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "family": self.adapter.family, "source": self.source,
                "generation": dataclasses.asdict(self.settings), "generation_source": self.generation_source}

    def close(self) -> None:
        self.batcher.close()


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain ``PATH`` -> (None, PATH)."""
    name, sep, path = spec.partition("=")
    if sep and name and path and _NAME_RE.match(name):
        return name, path
    return None, spec


def load_models(specs: Sequence[str], generation: GenerationSettings | Mapping[str, Any] | None = None, *,
                family: str | None = None, device: str | None = None, dtype: str | None = None,
                batching: BatchingOptions | None = None) -> list[ServedModel]:
    """Load every ``--model`` (see the module doc) and start its batcher; names must be unique.

    ``generation``: the settings asked for (``--num-beams`` ...), over those each checkpoint saved, over
    medblip's defaults (a complete :class:`GenerationSettings` decides everything)."""
    from medblip.evaluation.predict import checkpoint_settings, display_name
    from medblip.models import create_model
    from medblip.models.loading import auto_device, resolve_checkpoint

    if not specs:
        raise MedblipError("give at least one --model (a hub id, checkpoint folder or training run folder)")
    batching = batching or BatchingOptions()
    served: list[ServedModel] = []
    try:
        for spec in specs:
            name, path = parse_model_spec(spec)
            checkpoint, options, notes = resolve_checkpoint(path)
            name = name or display_name(checkpoint)
            if any(m.name == name for m in served):
                raise MedblipError(f"two models are named {name!r}; name them: --model NAME=PATH")
            settings, sources, note = checkpoint_settings(generation, checkpoint, source="medblip serve")
            adapter = create_model(checkpoint, family=family, dtype=dtype, device=auto_device(device), **options)
            batcher = MicroBatcher(adapter.generate, max_batch=batching.max_batch, max_wait=batching.max_wait,
                                   max_queue=batching.max_queue, name=name)
            notes += [note] if note else []
            served.append(ServedModel(name, adapter, settings, batcher, checkpoint, notes, sources))
    except BaseException:
        for m in served:
            m.close()
        raise
    return served
