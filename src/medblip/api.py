"""The Python API in three lines: ``m = medblip.load(...)``, ``m.caption(images)``, ``m.explain(image)``.

:func:`load` takes what ``medblip evaluate --model`` takes (a hub id, a checkpoint folder, a training run
folder -- its best checkpoint, with the prompt it was trained with) and returns a :class:`Captioner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from medblip.explain.explainer import Explanation
    from medblip.models.base import CaptionModel, GenerationSettings


class Captioner:
    """A loaded captioning model of any family: caption images, explain a caption.

    ``caption`` takes file paths (any format medblip reads: JPEG, PNG, 16-bit TIFF, DICOM ...), encoded
    bytes or PIL images, and captions them in batches through the fastest path that gives
    ``generate``'s captions (the fast captioner for BLIP greedy / beam search). ``generate(images,
    settings)`` is the interface every medblip captioner shares (``medblip caption`` accepts any object
    with it). ``adapter`` is the :class:`~medblip.models.CaptionModel` (``adapter.model``: the
    transformers model, ``adapter.processor``).
    """

    def __init__(self, adapter: CaptionModel, *, generation: GenerationSettings | Mapping[str, Any] | None = None,
                 captioner: str = "auto") -> None:
        from medblip.evaluation.predict import make_settings

        self.adapter = adapter
        self.settings = make_settings(generation, source="medblip.load(generation=...)")
        self.prefer = captioner
        self.last_path: dict[str, Any] = {}  # how the last batch was captioned (select_captioner's record)
        self._fast: Any = None

    @property
    def name_or_path(self) -> str:
        return self.adapter.name_or_path

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def device(self) -> Any:
        return self.adapter.device

    def __repr__(self) -> str:
        return f"Captioner({self.name_or_path!r}, family={self.family!r}, device={self.device})"

    def generate(self, images: Sequence[Image.Image], settings: GenerationSettings | None = None) -> list[str]:
        """Caption decoded RGB images with complete ``settings`` (default: this captioner's)."""
        from medblip.perf.captioner import FastCaptioner, select_captioner

        settings = settings or self.settings
        engine, self.last_path = select_captioner(self.adapter, settings, self.prefer, fast=self._fast)
        if isinstance(engine, FastCaptioner):
            self._fast = engine
        return engine.generate(list(images), settings)

    def caption(self, images: Any, *, batch_size: int = 8, progress: bool = False,
                **generation: Any) -> list[str]:
        """One caption per image, in order; ``images`` is a list (or one image) of paths, bytes or PIL images.

        ``generation``: settings to change for this call (``num_beams=3``, ``max_new_tokens=40``,
        ``prompt=...``; the options of ``medblip evaluate``). An unreadable file raises
        :class:`~medblip.errors.ImageError` naming it.
        """
        from tqdm.auto import tqdm

        from medblip.evaluation.predict import make_settings

        items = _as_list(images)
        settings = make_settings(generation, base=self.settings, source="caption()")
        out: list[str] = []
        with tqdm(total=len(items), desc="captioning", unit="img", disable=not progress) as bar:
            for start in range(0, len(items), batch_size):
                batch = [to_image(x) for x in items[start:start + batch_size]]
                out += self.generate(batch, settings)
                bar.update(len(batch))
        return out

    def explain(self, image: Any, caption: str | None = None, *, method: str = "attention",
                layers: list[int] | None = None, heads: list[int] | None = None, aggregate: str = "mean",
                max_new_tokens: int = 40) -> Explanation:
        """Per-token and per-word maps of ``caption`` (default: the greedy caption) on ``image``.

        ``method``: ``attention``, ``gradcam`` or ``saliency`` (the gradient at each input pixel; no layers
        or heads). Returns a :class:`medblip.explain.Explanation`: ``.caption``, ``.words``, ``.word_maps`` /
        ``.token_maps`` (raw, on the patch grid; saliency: on the input's pixels) and ``.heatmaps()`` (on the
        original image, in [0, 1]);
        ``medblip.explain.save_explanation`` draws them.
        """
        from medblip.explain.explainer import ExplainSettings, explain_image

        settings = ExplainSettings(method=method, layers=layers, heads=heads, aggregate=aggregate,
                                   max_new_tokens=max_new_tokens).check()
        return explain_image(self.adapter, to_image(image), caption, settings)


def load(name_or_path: str | Path, device: str | None = None, dtype: str | None = None, *,
         family: str | None = None, generation: Mapping[str, Any] | None = None, captioner: str = "auto",
         **options: Any) -> Captioner:
    """Load a model for captioning: a hub id, a checkpoint folder or a training run folder.

    ``device``: ``cpu``, ``cuda``, ``cuda:1`` ... (default: a GPU when there is one); ``dtype``:
    ``float32``, ``bfloat16``, ``float16`` (default: the checkpoint's). ``generation``: default
    settings of every ``caption`` call, on top of those the checkpoint carries (a checkpoint or export
    of a training run: its run's ``generation:`` settings, from generation_config.json) and medblip's
    defaults for the rest. ``options``: family options (e.g. ``prompt`` for BLIP-2).
    """
    from medblip.evaluation.predict import checkpoint_settings
    from medblip.models import create_model
    from medblip.models.loading import auto_device, resolve_checkpoint

    checkpoint, run_options, _ = resolve_checkpoint(name_or_path)
    defaults, _, _ = checkpoint_settings(generation, checkpoint, source="medblip.load(generation=...)")
    adapter = create_model(checkpoint, family=family, dtype=dtype, device=auto_device(device),
                           **{**run_options, **options})
    return Captioner(adapter, generation=defaults, captioner=captioner)


def to_image(source: Any) -> Image.Image:
    """A path, encoded bytes or PIL image -> an RGB PIL image (medblip's reader for files and bytes)."""
    from PIL import Image

    from medblip.data import load_image

    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, str | Path | bytes):
        return load_image(source)
    raise TypeError(f"expected a file path, bytes or a PIL image, got {type(source).__name__}")


def _as_list(images: Any) -> list[Any]:
    from PIL import Image

    if isinstance(images, str | Path | bytes | Image.Image):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"expected images (a list of paths, bytes or PIL images), got {type(images).__name__}")
