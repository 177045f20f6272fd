"""Scores of single images: what the report shows on example cards and sorts failure cases by.

Computed once, when a system is scored (:func:`medblip.evaluation.score_predictions` with
``image_rows=True``, which the evaluate / compare / ablation / score writers ask for), and stored as
``per_image.jsonl`` (:class:`medblip.results.ImageScores`) beside ``metrics.json``:

* ``CIDEr``: the image's CIDEr-D, under this system's document frequencies (the same numbers whose
  mean is the system's CIDEr);
* ``token_f1``: F1 of the caption's and the reference's word multisets (defined for any single image);
* the concepts the clinical extractor reads in the prediction and in each reference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from medblip.evaluation.clinical.extractor import Concepts
from medblip.evaluation.clinical.metrics import extract_all

_TOKEN_RE = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall((text or "").lower())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the two captions' word multisets (1.0 when both are empty)."""
    p, r = _tokens(prediction), _tokens(reference)
    if not p or not r:
        return 1.0 if not p and not r else 0.0
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def image_scores(ids: Sequence[str], references: Sequence[Sequence[str]], predictions: Sequence[str], *,
                 cider: Sequence[float] | None = None,
                 concepts: tuple[list[Concepts], list[list[Concepts]]] | None = None) -> list[dict[str, Any]]:
    """One :class:`medblip.results.ImageScores` row (as a dict) per image.

    ``cider`` and ``concepts`` are what the scorer computed already; without them CIDEr-D is computed
    on simply tokenised captions (two images or more) and the concepts are extracted.
    """
    if cider is None and len(predictions) >= 2:
        from medblip.evaluation.cider import CiderD
        from medblip.evaluation.tokenization import simple_tokenize

        refs_tok = [[simple_tokenize(r) or "-" for r in refs] for refs in references]
        cider = [float(x) for x in CiderD(refs_tok, [simple_tokenize(p) for p in predictions]).per_image()]
    pred_c, ref_c = concepts if concepts is not None else extract_all(references, predictions)
    rows = []
    for k, (rid, refs, pred) in enumerate(zip(ids, references, predictions, strict=True)):
        scores = {"token_f1": token_f1(pred, refs[0])}
        if cider is not None:
            scores["CIDEr"] = float(cider[k])
        rows.append({"id": str(rid), "scores": scores, "prediction": pred_c[k].summary(),
                     "references": [c.summary() for c in ref_c[k]]})
    return rows
