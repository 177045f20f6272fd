"""BLEU-1..4, METEOR, ROUGE-L and CIDEr as pycocoevalcap computes them, in resamplable form.

Inputs are *tokenised* captions (see :mod:`medblip.evaluation.tokenization`). Per-image pieces come
from pycocoevalcap itself (its BLEU n-gram cooking, its ROUGE-L scorer, its METEOR jar, its CIDEr
n-gram counts); only the corpus aggregation is vectorised so that bootstrap resamples are cheap.
On the full set every value equals pycocoevalcap's ``compute_score`` (see the tests, and
:func:`pycocoevalcap_scores` for the reference computation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medblip.evaluation.cider import CiderD
from medblip.evaluation.meteor import MeteorSession
from medblip.evaluation.statistics import AdditiveMetric, Resamplable, mean_metric

BLEU_ORDERS = 4
COCO_METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
#: metrics that need Java (METEOR runs a jar; SPICE too)
JAVA_METRICS: frozenset[str] = frozenset({"METEOR", "SPICE"})

# pycocoevalcap's smoothing constants (bleu_scorer.compute_score).
_TINY, _SMALL = 1e-15, 1e-9


def bleu_statistics(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> np.ndarray:
    """Per image: test length, closest reference length, guessed and clipped-correct n-grams (1..4)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for refs, hyp in zip(references, predictions, strict=True):
        comps = cook_test(hyp, cook_refs(list(refs), n=BLEU_ORDERS), eff="closest", n=BLEU_ORDERS)
        rows.append([comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 2 + 2 * BLEU_ORDERS)


def _bleu_finalize(order: int) -> Callable[[np.ndarray], np.ndarray]:
    def finalize(sums: np.ndarray) -> np.ndarray:
        testlen, reflen = sums[:, 0], sums[:, 1]
        guess, correct = sums[:, 2:2 + BLEU_ORDERS], sums[:, 2 + BLEU_ORDERS:]
        prod = np.ones(len(sums))
        for k in range(order):
            prod = prod * (correct[:, k] + _TINY) / (guess[:, k] + _SMALL)
        bleu = prod ** (1.0 / order)
        ratio = (testlen + _TINY) / (reflen + _SMALL)
        with np.errstate(divide="ignore", over="ignore"):
            brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, _TINY)), 1.0)
        return bleu * brevity

    return finalize


def bleu_metrics(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, AdditiveMetric]:
    stats = bleu_statistics(references, predictions)
    return {f"BLEU-{k}": AdditiveMetric(f"BLEU-{k}", stats, _bleu_finalize(k)) for k in range(1, BLEU_ORDERS + 1)}


def rouge_metric(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> AdditiveMetric:
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    return mean_metric("ROUGE-L", [rouge.calc_score([hyp], list(refs))
                                   for refs, hyp in zip(references, predictions, strict=True)])


def caption_metrics(references: Sequence[Sequence[str]], predictions: Sequence[str],
                    meteor: MeteorSession | None = None,
                    progress: Callable[[int], None] | None = None) -> dict[str, Resamplable]:
    """The COCO metrics of one system (METEOR only when a Java ``meteor`` session is given)."""
    out: dict[str, Resamplable] = dict(bleu_metrics(references, predictions))
    if meteor is not None:
        out["METEOR"] = meteor.metric(references, predictions, progress=progress)
    out["ROUGE-L"] = rouge_metric(references, predictions)
    out["CIDEr"] = CiderD(references, predictions)
    return out


def pycocoevalcap_scores(references: Sequence[Sequence[str]], predictions: Sequence[str],
                         meteor: bool = False) -> dict[str, float]:
    """The reference computation: pycocoevalcap's own scorers on the same tokenised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: list(r) for i, r in enumerate(references)}
    res = {i: [p] for i, p in enumerate(predictions)}
    bleu, _ = Bleu(BLEU_ORDERS).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{k + 1}": float(b) for k, b in enumerate(bleu)}
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if meteor:
        with MeteorSession() as session:
            out["METEOR"] = session.compute_score(gts, res)
    return out
