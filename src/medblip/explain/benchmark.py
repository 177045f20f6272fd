"""Grounding evaluation of a model's maps on the synthetic benchmark (``medblip explain --evaluate``).

For every test image with a finding, the caption is teacher-forced (by default the *reference*
caption, which always names the finding; ``caption_source="generated"`` explains the model's greedy
caption and skips images whose caption does not name it). The maps of the words naming the finding
(its term and synonyms from :data:`medblip.data.synth.vocab.FINDING_TERMS`, plural forms included)
are averaged, mapped back onto the original image and scored against the lesion mask with
:mod:`medblip.explain.grounding`; images without a finding are skipped and counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medblip.errors import DataError, MedblipError
from medblip.explain.explainer import ExplainSettings, explain_image
from medblip.explain.grounding import baseline_scores, score_map, summarise
from medblip.explain.maps import normalize, word_key
from medblip.explain.render import to_original
from medblip.io import atomic_write_text
from medblip.results import Grounding

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

CAPTION_SOURCES = ("reference", "generated")
DEFAULT_TOLERANCE = 0.05  # of the image's longer side, for the tolerant pointing game


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (n is at most a few thousand images)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def finding_terms(finding: str) -> list[list[str]]:
    """Word sequences that name ``finding`` in captions (its vocabulary terms, lower case)."""
    from medblip.data.synth.vocab import FINDING_TERMS

    terms = FINDING_TERMS.get(finding, (finding,))
    return [t.lower().split() for t in terms]


def _same_word(word: str, term: str) -> bool:
    return word in (term, term + "s", term + "es")


def finding_word_indices(words: Sequence[str], finding: str) -> list[int]:
    """Indices of the caption words naming ``finding`` (every occurrence of every term)."""
    return phrase_word_indices(words, finding_terms(finding))


def phrase_word_indices(words: Sequence[str], phrases: Sequence[Sequence[str]]) -> list[int]:
    """Indices of the caption words that spell any of ``phrases`` (lower-case word sequences; plural
    forms of their words match too), every occurrence, sorted."""
    lower = [word_key(w) for w in words]
    hits: list[int] = []
    for term in phrases:
        n = len(term)
        for i in range(len(lower) - n + 1):
            if all(_same_word(lower[i + k], term[k]) for k in range(n)):
                hits.extend(j for j in range(i, i + n) if j not in hits)
    return sorted(hits)


def load_mask(data_dir: Path, fact: dict[str, Any]) -> np.ndarray:
    from PIL import Image

    rel = fact.get("mask") or f"masks/{fact['id']}.png"
    path = data_dir / rel
    if not path.is_file():
        raise DataError(f"{path}: lesion mask not found")
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def evaluate_grounding(adapter: CaptionModel, data_dir: str | Path, *, split: str = "test",
                       limit: int | None = None, settings: ExplainSettings | None = None,
                       caption_source: str = "reference", tolerance: float = DEFAULT_TOLERANCE,
                       seed: int = 0,
                       progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> dict[str, Any]:
    """Pointing game and energy of the finding words' maps vs uniform and centre-bias baselines.

    ``tolerance`` is a fraction of the image's longer side for the tolerant pointing game (the
    strict one is reported alongside and is the headline). Returns ``{"summary", "rows", ...}``.
    """
    from medblip.data import load_image
    from medblip.data.synth import load_facts
    from medblip.evaluation.predict import load_split

    if caption_source not in CAPTION_SOURCES:
        raise MedblipError(f"unknown caption source {caption_source!r}; choose one of {', '.join(CAPTION_SOURCES)}")
    settings = (settings or ExplainSettings()).check()
    data_dir = Path(data_dir)
    if not (data_dir / "facts.jsonl").is_file():
        raise DataError(f"{data_dir}: no facts.jsonl (not a synthetic benchmark folder; see `medblip data synth`)")
    facts = load_facts(data_dir)
    records, _ = load_split(data_dir, split, limit=limit, seed=seed)  # DataError naming the splits found
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for rec in (progress or (lambda x: x))(records):
        fact = facts.get(rec.id)
        if fact is None:
            skipped["no facts"] += 1
            continue
        finding = str(fact.get("finding", "none"))
        if finding in ("none", "", "None"):
            skipped["no finding"] += 1
            continue
        image = load_image(rec.image)
        caption = rec.caption if caption_source == "reference" else None
        expl = explain_image(adapter, image, caption, settings, caption_source=caption_source)
        idx = finding_word_indices(expl.words, finding)
        if not idx:
            skipped["finding not named in caption"] += 1
            continue
        mask = load_mask(data_dir, fact)
        if mask.shape != (image.height, image.width):
            raise DataError(f"{rec.id}: mask {mask.shape[::-1]} and image {image.size} differ in size")
        if not mask.any():
            skipped["empty mask"] += 1
            continue
        heat = normalize(to_original(expl.word_maps[idx].mean(axis=0), expl.image_size, expl.box))
        tol_px = tolerance * max(image.size)
        rows.append({
            "id": rec.id, "finding": finding, "caption": expl.caption,
            "words": [expl.words[i] for i in idx], "mask_fraction": float(mask.mean()),
            "model": score_map(heat, mask, tol_px), **baseline_scores(mask, tol_px),
        })
    if not rows:
        raise MedblipError(f"no image of split {split!r} could be scored ({dict(skipped) or 'none loaded'})")
    summary = summarise(rows, tolerance, dict(skipped))
    hits = sum(bool(r["model"]["hit"]) for r in rows)
    # Exact one-sided binomial test: could a map that hits at the baseline's mean rate score this well?
    significance = {name: binomial_tail(hits, len(rows), summary.scores[name].hit)
                    for name in ("uniform", "centre")}
    by_finding = {f: summarise([r for r in rows if r["finding"] == f], tolerance).model_dump()
                  for f in sorted({r["finding"] for r in rows})}
    return {
        "model": adapter.name_or_path, "family": adapter.family, "data": str(data_dir), "split": split,
        "caption_source": caption_source, "settings": settings.as_dict(),
        "tolerance": f"{tolerance:g} of the longer image side",
        "summary": summary.model_dump(), "hits": hits,
        "p_value": {f"vs_{k}": v for k, v in significance.items()},
        "by_finding": by_finding, "rows": rows,
    }


def grounding_markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    sc = s["scores"]
    lines = [
        f"# Grounding on {result['data']} ({result['split']})",
        "",
        f"- model: `{result['model']}` ({result['family']})",
        f"- method: {result['settings']['method']}, layers {result['settings']['layers'] or 'default'}, "
        f"heads {result['settings']['heads'] or 'all'}, aggregate {result['settings']['aggregate']}",
        f"- captions: {result['caption_source']} (teacher-forced); findings scored: {s['n']}"
        + (f"; skipped: {', '.join(f'{k} {v}' for k, v in s['skipped'].items())}" if s["skipped"] else ""),
        "",
        f"| map | pointing game (strict) | pointing game (tol. {result['tolerance']}) | energy in mask |",
        "|---|---|---|---|",
    ]
    for name, key in (("model", "model"), ("uniform baseline", "uniform"), ("centre-bias baseline", "centre")):
        lines.append(f"| {name} | {sc[key]['hit']:.3f} | {sc[key]['hit_tol']:.3f} | {sc[key]['energy']:.3f} |")
    if "p_value" in result:
        pv = result["p_value"]
        lines += ["", f"Pointing-game hits: {result['hits']} of {s['n']}; one-sided binomial p-value against a map "
                      f"hitting at the baseline's rate: uniform {pv['vs_uniform']:.2g}, centre-bias {pv['vs_centre']:.2g}."]
    lines += ["", "Uniform pointing = expected hit rate of a random point (mask area fraction); centre-bias = "
              "Gaussian at the image centre (sigma a quarter of each side).", ""]
    if len(result["by_finding"]) > 1:
        lines += ["| finding | n | model strict | uniform | centre |", "|---|---|---|---|---|"]
        for f, d in result["by_finding"].items():
            x = d["scores"]
            lines.append(f"| {f} | {d['n']} | {x['model']['hit']:.3f} | {x['uniform']['hit']:.3f} | "
                         f"{x['centre']['hit']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def write_grounding(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``grounding.json`` (:class:`medblip.results.Grounding`) and ``grounding.md``."""
    out_dir = Path(out_dir)
    return (Grounding.model_validate(result).write(out_dir),
            atomic_write_text(out_dir / "grounding.md", grounding_markdown(result)))
