"""What the page shows for one image: caption, clinical concepts and one attention overlay per word.

The caption comes through the model's micro-batcher (so the page and the API give the same caption);
its words are then teacher-forced once more with cross-attention recorded
(:func:`medblip.explain.explain_image`). Words that name a finding (as
:func:`medblip.evaluation.extract_concepts` reads the caption) come first. Each overlay is min-max
normalised to the colour scale (:func:`colorbar_image`); the map's raw range (attention weight per
image patch, averaged over layers and heads) is kept with it, so a flat map is not mistaken for a
confident one.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError

if TYPE_CHECKING:
    from PIL import Image

    from medblip.evaluation.clinical import Concepts
    from medblip.serving.served import ServedModel

#: overlays are drawn on a copy of the image at most this many pixels on its longer side
DISPLAY_SIDE = 384
MAX_WORDS = 24
CMAP = "jet"


@dataclass
class WordOverlay:
    word: str
    index: int  # position of the word in the caption
    finding: bool
    raw_min: float
    raw_max: float
    image: Image.Image

    @property
    def label(self) -> str:
        tag = " · finding" if self.finding else ""
        return f"{self.word}{tag} · {self.raw_min:.2g}–{self.raw_max:.2g}"


@dataclass
class Analysis:
    model: str
    caption: str
    concepts: Concepts
    overlays: list[WordOverlay] = field(default_factory=list)
    #: why there are no overlays, if there are none
    note: str | None = None


def analyse(model: ServedModel, image: Image.Image, *, timeout: float | None = 300.0,
            max_words: int = MAX_WORDS) -> Analysis:
    """Caption ``image`` with ``model`` and explain the caption word by word."""
    from medblip.evaluation import extract_concepts

    caption = model.submit(image).result(timeout)
    concepts = extract_concepts(caption)
    result = Analysis(model.name, caption, concepts)
    if not caption.strip():
        result.note = "the model generated an empty caption: there are no words to explain"
        return result
    try:
        expl = model.explain(image, caption)
    except MedblipError as exc:
        result.note = f"no attention maps for this model: {exc}"
        return result
    result.overlays = word_overlays(expl, image, concepts, max_words=max_words)
    if not result.overlays:
        result.note = "the caption has no words to explain"
    return result


def word_order(words: list[str], concepts: Concepts) -> tuple[list[int], set[int]]:
    """Word indices with the finding words first (then the rest in caption order, punctuation
    dropped), and the set of finding words."""
    from medblip.explain.benchmark import phrase_word_indices
    from medblip.explain.maps import word_key

    phrases = [m.text.lower().split() for m in concepts.findings]
    finding = phrase_word_indices(words, phrases)
    rest = [i for i, w in enumerate(words) if i not in finding and any(ch.isalnum() for ch in word_key(w))]
    return finding + rest, set(finding)


def word_overlays(expl: Any, image: Image.Image, concepts: Concepts, *,
                  max_words: int = MAX_WORDS, alpha: float = 0.5) -> list[WordOverlay]:
    from medblip.explain.maps import normalize
    from medblip.explain.render import overlay, to_original

    order, finding = word_order(expl.words, concepts)
    order = order[:max_words]
    if not order:
        return []
    small, scale = display_copy(image)
    box = tuple(v * scale for v in expl.box)
    raw = expl.word_maps[order]
    heats = normalize(to_original(raw, small.size, box))  # type: ignore[arg-type]
    return [WordOverlay(expl.words[i], i, i in finding, float(m.min()), float(m.max()),
                        overlay(small, heat, cmap=CMAP, alpha=alpha))
            for i, m, heat in zip(order, raw, heats, strict=True)]


def display_copy(image: Image.Image, side: int = DISPLAY_SIDE) -> tuple[Image.Image, float]:
    """``image`` scaled down to at most ``side`` pixels on its longer side, and the scale used."""
    from PIL import Image as PILImage

    scale = min(1.0, side / max(image.size))
    if scale == 1.0:
        return image.convert("RGB"), 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, PILImage.Resampling.BILINEAR), scale


def concepts_markdown(concepts: Concepts) -> str:
    """The concepts as a small Markdown table (modality, regions, findings with status, side)."""
    d = concepts.to_dict()
    modality = d["modality"] or "—"
    others = [m for m in d["modalities"] if m != d["modality"]]
    if others:
        modality += f" (also {', '.join(others)})"
    findings = []
    for m in d["mentions"]:
        status = m["status"] + (f', "{m["trigger"]}"' if m["trigger"] else "")
        findings.append(f"{m['finding']} ({status})")
    rows = [("modality", modality), ("region", ", ".join(d["regions"]) or "—"),
            ("findings", "; ".join(dict.fromkeys(findings)) or "none named"),
            ("side", d["laterality"] or "—")]
    return "| concept | read in the caption |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@functools.lru_cache(maxsize=4)
def colorbar_png(cmap: str = CMAP) -> bytes:
    """A horizontal colour bar from each map's minimum to its maximum, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 0.75), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.55, 0.84, 0.3))
    bar = ColorbarBase(ax, cmap=cmap, norm=Normalize(0, 1), orientation="horizontal")
    bar.set_ticks([0, 1])
    bar.set_ticklabels(["min", "max"])
    ax.tick_params(labelsize=8)
    fig.text(0.5, 0.06, "each word's map from its own minimum to its maximum (raw range under each overlay)",
             ha="center", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def colorbar_image(cmap: str = CMAP) -> Image.Image:
    from PIL import Image as PILImage

    return PILImage.open(io.BytesIO(colorbar_png(cmap))).convert("RGB")
