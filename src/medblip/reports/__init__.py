"""HTML / Markdown reports of medblip runs: ``collect`` run folders, then ``build_report``.

>>> from medblip.reports import collect, build_report
>>> build_report(collect(["runs/demo"], words=["nodule"]), "runs/demo/report")  # doctest: +SKIP

The reading of every producer's result is in :mod:`medblip.reports.collect`; the page in
:mod:`medblip.reports.html` (template ``medblip/templates/report.html.j2``), the summary in
:mod:`medblip.reports.markdown`, figures in :mod:`medblip.reports.plots`, and the folder that holds
them in :mod:`medblip.reports.build`.
"""

from __future__ import annotations

from medblip.reports.build import build_report
from medblip.reports.collect import Report, collect, discover
from medblip.reports.html import render_html
from medblip.reports.markdown import render_markdown

__all__ = ["Report", "build_report", "collect", "discover", "render_html", "render_markdown"]
