"""Grounding evaluation of a model's maps on the synthetic benchmark (``medblip explain --evaluate``).

For every test image with a finding, the caption is teacher-forced (by default the *reference*
caption, which always names the finding; ``caption_source="generated"`` explains the model's greedy
caption and skips images whose caption does not name it). The maps of the words naming the finding
(its term and synonyms from :data:`medblip.data.synth.vocab.FINDING_TERMS`, plural forms included)
are averaged, mapped back onto the original image and scored against the lesion mask with
:mod:`medblip.explain.grounding`; images without a finding are skipped and counted.

``random_baseline=True`` adds the model randomisation test (Adebayo et al., 2018): the same
architecture, tokenizer and processor with freshly drawn weights (:func:`random_weights_copy`) explains
the same captions, and its maps are scored on the same masks. A map that points as well without
training measures the image (a lesion is often its most extreme pixels), not what the model learnt;
the exact one-sided McNemar test on the paired hits says whether the trained model points more often.
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


#: a vision tower ``initializer_range`` below this is a placeholder, not an init (see random_weights_copy)
_PLACEHOLDER_INIT = 1e-3
LIVE_INIT_STD = 0.02  # the original ViT / BERT init


def random_weights_copy(adapter: CaptionModel, folder: str | Path, seed: int = 0) -> CaptionModel:
    """``adapter``'s architecture, tokenizer, processor and generation settings with freshly drawn weights
    (``seed``), saved in ``folder`` and loaded like any checkpoint, on the same device and dtype.

    transformers' BLIP-family configs set the vision tower's ``initializer_range`` to 1e-10 (a real
    checkpoint overwrites every weight); drawn at that std the tower is dead and its maps flat, a
    baseline that any map beats. Such a placeholder is replaced by 0.02, the original ViT's init.
    """
    import copy

    import torch

    from medblip.models import create_model

    base = adapter.base_model
    if getattr(base, "is_quantized", False):
        raise MedblipError("the random-weights baseline needs an unquantized model (load it without quantization)")
    folder = Path(folder)
    adapter.save(folder)  # tokenizer, processor and generation settings; the weights are replaced below
    config = copy.deepcopy(base.config)
    for part in (config, *(getattr(config, k, None) for k in ("vision_config", "encoder", "qformer_config"))):
        if part is not None and float(getattr(part, "initializer_range", 1.0)) < _PLACEHOLDER_INIT:
            part.initializer_range = LIVE_INIT_STD
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream where it was
        torch.manual_seed(seed)
        fresh = type(base)(config)
    fresh.save_pretrained(folder)
    return create_model(folder, family=adapter.family, dtype=adapter.dtype, device=adapter.device)


def mcnemar_greater(model_hits: Sequence[bool], other_hits: Sequence[bool]) -> float:
    """Exact one-sided McNemar p-value that the first of two paired hit lists hits more often."""
    better = sum(1 for a, b in zip(model_hits, other_hits, strict=True) if a and not b)
    worse = sum(1 for a, b in zip(model_hits, other_hits, strict=True) if b and not a)
    return binomial_tail(better, better + worse, 0.5) if better + worse else 1.0


def evaluate_grounding(adapter: CaptionModel, data_dir: str | Path, *, split: str = "test",
                       limit: int | None = None, settings: ExplainSettings | None = None,
                       caption_source: str = "reference", tolerance: float = DEFAULT_TOLERANCE,
                       seed: int = 0, random_baseline: bool = False,
                       progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> dict[str, Any]:
    """Pointing game and energy of the finding words' maps vs uniform and centre-bias baselines (and,
    with ``random_baseline``, the same maps of the architecture with random weights).

    ``tolerance`` is a fraction of the image's longer side for the tolerant pointing game (the
    strict one is reported alongside and is the headline). Returns ``{"summary", "rows", ...}``.
    """
    if not random_baseline:
        return _evaluate(adapter, None, data_dir, split, limit, settings, caption_source, tolerance, seed, progress)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medblip-random-weights-") as tmp:
        random_model = random_weights_copy(adapter, Path(tmp) / "model")
        return _evaluate(adapter, random_model, data_dir, split, limit, settings, caption_source, tolerance, seed,
                         progress)


def _evaluate(adapter: CaptionModel, random_model: CaptionModel | None, data_dir: str | Path, split: str,
              limit: int | None, settings: ExplainSettings | None, caption_source: str, tolerance: float,
              seed: int, progress: Callable[[Iterable[Any]], Iterable[Any]] | None) -> dict[str, Any]:
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
        if random_model is not None:  # the same caption (and so the same words), teacher-forced
            other = explain_image(random_model, image, expl.caption, settings, caption_source=expl.caption_source)
            words = finding_word_indices(other.words, finding)
            heat = normalize(to_original(other.word_maps[words].mean(axis=0), other.image_size, other.box))
            rows[-1]["random"] = score_map(heat, mask, tol_px)
    if not rows:
        raise MedblipError(f"no image of split {split!r} could be scored ({dict(skipped) or 'none loaded'})")
    summary = summarise(rows, tolerance, dict(skipped))
    hits = sum(bool(r["model"]["hit"]) for r in rows)
    # Exact one-sided binomial test: could a map that hits at the baseline's mean rate score this well?
    significance = {f"vs_{name}": binomial_tail(hits, len(rows), summary.scores[name].hit)
                    for name in ("uniform", "centre")}
    if random_model is not None:  # paired: the same findings, maps of the trained and the random model
        significance["vs_random_weights"] = mcnemar_greater([bool(r["model"]["hit"]) for r in rows],
                                                            [bool(r["random"]["hit"]) for r in rows])
    by_finding = {f: summarise([r for r in rows if r["finding"] == f], tolerance).model_dump()
                  for f in sorted({r["finding"] for r in rows})}
    return {
        "model": adapter.name_or_path, "family": adapter.family, "data": str(data_dir), "split": split,
        "caption_source": caption_source, "settings": settings.as_dict(),
        "tolerance": f"{tolerance:g} of the longer image side",
        "summary": summary.model_dump(), "hits": hits,
        "p_value": significance,
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
    for name, key in (("model", "model"), ("random-weights model", "random"), ("uniform baseline", "uniform"),
                      ("centre-bias baseline", "centre")):
        if key in sc:
            lines.append(f"| {name} | {sc[key]['hit']:.3f} | {sc[key]['hit_tol']:.3f} | {sc[key]['energy']:.3f} |")
    if "p_value" in result:
        pv = result["p_value"]
        lines += ["", f"Pointing-game hits: {result['hits']} of {s['n']}; one-sided binomial p-value against a map "
                      f"hitting at the baseline's rate: uniform {pv['vs_uniform']:.2g}, centre-bias {pv['vs_centre']:.2g}."]
        if "vs_random_weights" in pv:
            lines += ["", f"Against the same architecture with random weights (the model randomisation test), exact "
                          f"one-sided McNemar p-value on the paired hits: {pv['vs_random_weights']:.2g}."]
    lines += ["", "Uniform pointing = expected hit rate of a random point (mask area fraction); centre-bias = "
              "Gaussian at the image centre (sigma a quarter of each side)."
              + (" Random-weights model = the same architecture, tokenizer and processor with freshly drawn "
                 "weights: a map that scores as well without training measures the image, not the model."
                 if "random" in sc else ""), ""]
    if len(result["by_finding"]) > 1:
        random = "random" in sc
        lines += ["| finding | n | model strict |" + (" random weights |" if random else "") + " uniform | centre |",
                  "|---|---|---|---|---|" + ("---|" if random else "")]
        for f, d in result["by_finding"].items():
            x = d["scores"]
            lines.append(f"| {f} | {d['n']} | {x['model']['hit']:.3f} | "
                         + (f"{x['random']['hit']:.3f} | " if random else "")
                         + f"{x['uniform']['hit']:.3f} | {x['centre']['hit']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def write_grounding(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``grounding.json`` (:class:`medblip.results.Grounding`) and ``grounding.md``."""
    out_dir = Path(out_dir)
    return (Grounding.model_validate(result).write(out_dir),
            atomic_write_text(out_dir / "grounding.md", grounding_markdown(result)))
