"""Clinical-correctness metrics of predictions against references, from extracted concepts.

* ``modality_accuracy``: over images whose reference names a modality, the share whose prediction
  has the same primary modality.
* ``region_f1``: micro-F1 of body-region labels.
* ``finding_f1``: micro-F1 of findings *present* (negated findings count as absent; uncertain ones as
  present by default, ``uncertain_as="absent"`` to count them absent).
* ``laterality_agreement``: over images whose reference states a side, the share whose prediction
  states the same one (left / right / bilateral).

With several references an image is scored against the most favourable one (as BLEU does with
its closest reference): modality and side agree when they match any reference, the F1 counts are
taken from the reference with the best per-image F1.

Every metric is additive over images (counts), so its bootstrap interval is exact and cheap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from medblip.evaluation.clinical.extractor import Concepts, UncertainAs, extract_concepts
from medblip.evaluation.statistics import AdditiveMetric, f1_metric, mean_metric

CLINICAL_METRICS: tuple[str, ...] = ("modality_accuracy", "region_f1", "finding_f1", "laterality_agreement")


def _set_counts(pred: frozenset[str] | set[str], ref: frozenset[str] | set[str]) -> tuple[int, int, int]:
    tp = len(pred & ref)
    return tp, len(pred - ref), len(ref - pred)


def _best_counts(pred: frozenset[str] | set[str], refs: list[frozenset[str] | set[str]]) -> tuple[int, int, int]:
    def f1(c: tuple[int, int, int]) -> float:
        den = 2 * c[0] + c[1] + c[2]
        return 2 * c[0] / den if den else 1.0

    return max((_set_counts(pred, r) for r in refs), key=f1)


def extract_all(references: Sequence[Sequence[str]], predictions: Sequence[str]
                ) -> tuple[list[Concepts], list[list[Concepts]]]:
    """The concepts of every prediction and of each of its references."""
    return [extract_concepts(p) for p in predictions], [[extract_concepts(r) for r in refs] for refs in references]


def clinical_metrics(references: Sequence[Sequence[str]], predictions: Sequence[str],
                     uncertain_as: UncertainAs = "present",
                     concepts: tuple[list[Concepts], list[list[Concepts]]] | None = None,
                     ) -> tuple[dict[str, AdditiveMetric], dict[str, Any]]:
    """Resamplable clinical metrics and a details block (supports, confusion of modalities).

    ``concepts``: :func:`extract_all`'s result when the caller has it already.
    """
    if uncertain_as not in ("present", "absent"):
        raise ValueError(f"uncertain_as must be 'present' or 'absent', not {uncertain_as!r}")
    pred_concepts, ref_concepts = concepts if concepts is not None else extract_all(references, predictions)
    n = len(predictions)
    modality = np.zeros((n, 2))
    regions = np.zeros((n, 3))
    findings = np.zeros((n, 3))
    side = np.zeros((n, 2))
    confusion: Counter[tuple[str, str]] = Counter()
    negated_in_refs = uncertain_in_refs = 0
    for i, (pc, rcs) in enumerate(zip(pred_concepts, ref_concepts, strict=True)):
        ref_modalities = [c.modality for c in rcs if c.modality]
        if ref_modalities:
            modality[i] = (pc.modality in ref_modalities, 1)
            confusion[ref_modalities[0], pc.modality or "none"] += 1
        regions[i] = _best_counts(set(pc.regions), [set(c.regions) for c in rcs])
        findings[i] = _best_counts(pc.findings_present(uncertain_as),
                                   [c.findings_present(uncertain_as) for c in rcs])
        ref_sides = [c.laterality for c in rcs if c.laterality]
        if ref_sides:
            side[i] = (pc.laterality in ref_sides, 1)
        for c in rcs:
            statuses = c.finding_status.values()
            negated_in_refs += sum(s == "negated" for s in statuses)
            uncertain_in_refs += sum(s == "uncertain" for s in statuses)

    metrics = {
        "modality_accuracy": mean_metric("modality_accuracy", modality[:, 0], modality[:, 1]),
        "region_f1": f1_metric("region_f1", regions),
        "finding_f1": f1_metric("finding_f1", findings),
        "laterality_agreement": mean_metric("laterality_agreement", side[:, 0], side[:, 1]),
    }
    conf: dict[str, dict[str, int]] = {}
    for (ref, pred), count in sorted(confusion.items()):
        conf.setdefault(ref, {})[pred] = count
    details = {
        "support": {
            "modality_accuracy": int(modality[:, 1].sum()),
            "region_f1": int((regions.sum(axis=1) > 0).sum()),
            "finding_f1": int((findings.sum(axis=1) > 0).sum()),
            "laterality_agreement": int(side[:, 1].sum()),
        },
        "modality_confusion": conf,
        "uncertain_as": uncertain_as,
        "reference_findings_negated": negated_in_refs,
        "reference_findings_uncertain": uncertain_in_refs,
    }
    return metrics, details
