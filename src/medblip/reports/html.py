"""The report page: a :class:`~medblip.reports.collect.Report` through the Jinja2 template
``medblip/templates/report.html.j2``: inline CSS and every image embedded as a ``data:`` URI, so the
one file is the whole report (it can be mailed or attached on its own). The folder around it is
written by :mod:`medblip.reports.build`."""

from __future__ import annotations

import base64
import mimetypes
from importlib import resources
from pathlib import Path
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


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI (base64)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def css_gradient(cmap: str, stops: int = 9) -> str:
    """A CSS ``linear-gradient`` of a matplotlib colour map: the overlays' colour bar."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    parts = []
    for k in range(stops):
        r, g, b, _ = cm(k / (stops - 1))
        parts.append(f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)}) {100 * k / (stops - 1):.0f}%")
    return f"linear-gradient(to right, {', '.join(parts)})"


def render_html(rep: Report, root: str | Path | None = None) -> str:
    """The page; with ``root`` (the report folder) every ``assets/`` image is embedded as a data URI,
    without it the images are linked relative to the page."""
    import jinja2

    from medblip.explain.maps import FLAT_TOLERANCE

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(num=fmt_num, int=fmt_int, params=fmt_params, bytes=fmt_bytes, seconds=fmt_seconds,
                       p=fmt_p, pct=fmt_pct, ci=ci_text, cost=lambda x, key: fmt_cost(key, x))
    env.filters["src"] = (lambda rel: data_uri(Path(root) / rel)) if root is not None else (lambda rel: rel)
    env.filters["gradient"] = css_gradient
    env.globals["lower_is_better"] = lower_is_better
    env.globals["flat_pct"] = f"{FLAT_TOLERANCE:.0%}"
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
