"""The report page: a :class:`~medblip.reports.collect.Report` through the Jinja2 template
``medblip/templates/report.html.j2`` (inline CSS, no external resources). The folder around it is
written by :mod:`medblip.reports.build`."""

from __future__ import annotations

from importlib import resources
from typing import Any

from medblip.formatting import (
    ci_text,
    fmt_bytes,
    fmt_cost,
    fmt_int,
    fmt_num,
    fmt_p,
    fmt_params,
    fmt_pct,
    fmt_seconds,
)
from medblip.reports.collect import Report, lower_is_better

TEMPLATE = "report.html.j2"


# -- rendering -------------------------------------------------------------------------------------
def _template_text() -> str:
    return resources.files("medblip").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")


def render_html(rep: Report) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(num=fmt_num, int=fmt_int, params=fmt_params, bytes=fmt_bytes, seconds=fmt_seconds,
                       p=fmt_p, pct=fmt_pct, ci=ci_text, cost=lambda x, key: fmt_cost(key, x))
    env.globals["lower_is_better"] = lower_is_better
    tpl = env.from_string(_template_text())
    sections = _sections(rep)
    return tpl.render(r=rep, sections=sections)


def _sections(rep: Report) -> list[dict[str, Any]]:
    """The table of contents, in page order (every section is always present, possibly as a note)."""
    return [
        {"id": "dataset", "title": "Dataset", "present": bool(rep.datasets)},
        {"id": "comparison", "title": "Comparison", "present": bool(rep.comparisons)},
        {"id": "ablation", "title": "Ablation", "present": bool(rep.ablations)},
        {"id": "training", "title": "Training curves", "present": bool(rep.training)},
        {"id": "examples", "title": "Examples", "present": bool(rep.examples)},
        {"id": "attention", "title": "Attention", "present": bool(rep.explanations or rep.grounding)},
        {"id": "failures", "title": "Failure cases", "present": bool(rep.failures.get("systems"))},
        {"id": "notes", "title": "Inputs & notes", "present": True},
    ]
