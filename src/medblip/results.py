"""The results medblip's commands write, as typed and versioned records: the one schema module.

Each producer writes its result through these models and the report (:mod:`medblip.reports.collect`)
reads them back with :func:`read_result`, so a field is spelled one way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

#: the metric a table or plot leads with: the first of these that is present
HEADLINE_ORDER: tuple[str, ...] = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "BLEU-1")


def headline_metric(names: Iterable[str]) -> str | None:
    """The headline of a set of metric names (:data:`HEADLINE_ORDER`, else the first name)."""
    names = list(names)
    return next((m for m in HEADLINE_ORDER if m in names), names[0] if names else None)
