"""Explain several images into one folder: ``medblip explain --image/--data`` and the demo's explain stage.

Each image gets its own folder (:func:`~medblip.explain.explainer.save_explanation`); the folder's
``summary.json`` (:class:`medblip.results.ExplainSummary`) lists them and ``summary.md`` links their
figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError
from medblip.explain.explainer import ExplainSettings, explain_image, save_explanation
from medblip.io import atomic_write_text
from medblip.results import ExplainSummary

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel


@dataclass(frozen=True)
class ExplainItem:
    """One image to explain. ``caption``: the caption to explain (None: the model's own greedy one);
    ``reference``: the dataset's caption, recorded, and explained instead when the model's is empty
    and ``fallback_to_reference`` is set."""

    name: str
    image: Path | bytes
    caption: str | None = None
    reference: str | None = None


def folder_name(name: str) -> str:
    """A file-system-safe folder name for an image id."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)) or "image"


def explain_items(adapter: CaptionModel, items: Sequence[ExplainItem], out: str | Path,
                  settings: ExplainSettings | None = None, *, caption_source: str | None = None,
                  fallback_to_reference: bool = False, words: Sequence[str] | None = None, level: str = "word",
                  cmap: str = "jet", alpha: float = 0.5,
                  progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
                  log: Callable[[str], None] | None = None) -> ExplainSummary:
    """Explain every item into ``out/<name>/``; write ``summary.json`` and ``summary.md``; return the summary.

    ``caption_source`` names where given captions come from (``reference`` for a dataset's captions).
    """
    from medblip.data import load_image

    settings = (settings or ExplainSettings()).check()
    out = Path(out)
    rows = []
    for item in (progress or (lambda x: x))(items):
        img = load_image(item.image)
        try:
            expl = explain_image(adapter, img, item.caption, settings, caption_source=caption_source)
        except MedblipError:  # the model generated an empty caption
            if not (fallback_to_reference and item.caption is None and item.reference):
                raise
            expl = explain_image(adapter, img, item.reference, settings, caption_source="reference")
        folder = folder_name(item.name)
        doc = save_explanation(expl, img, out / folder, words=words, level=level, cmap=cmap, alpha=alpha)
        rows.append({"name": str(item.name), "folder": folder, "caption": expl.caption,
                     "caption_source": expl.caption_source, "reference": item.reference, "words": expl.words,
                     "panels": doc["panels"]})
        if log is not None:
            log(f"{item.name}: {expl.caption!r} ({expl.caption_source})")
    summary = ExplainSummary.model_validate({"model": adapter.name_or_path, "family": adapter.family,
                                             "settings": settings.as_dict(), "level": level, "images": rows})
    summary.write(out)
    md = [f"# Explanations: `{adapter.name_or_path}` ({adapter.family}, {settings.method})", "",
          "| image | caption | figure |", "|---|---|---|"]
    md += [f"| {r.name} | {r.caption} | [{r.folder}/grid.png]({r.folder}/grid.png) |" for r in summary.images]
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    return summary
