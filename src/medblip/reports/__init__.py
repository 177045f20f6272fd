"""HTML / Markdown reports of medblip runs: ``collect`` run folders, then ``build_report``.

>>> from medblip.reports import collect, build_report
>>> build_report(collect(["runs/demo"], words=["nodule"]), "runs/demo/report")  # doctest: +SKIP

The parsing of every producer file is in :mod:`medblip.reports.collect`; rendering in
:mod:`medblip.reports.html` (template ``medblip/templates/report.html.j2``) and
:mod:`medblip.reports.markdown`; figures in :mod:`medblip.reports.plots`.
"""

from __future__ import annotations

from medblip.reports.collect import Report, collect, discover
from medblip.reports.html import build_report, render_html
from medblip.reports.markdown import render_markdown

__all__ = ["Report", "build_report", "collect", "discover", "render_html", "render_markdown"]
