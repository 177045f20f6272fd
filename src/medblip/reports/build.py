"""Write a report folder that opens from a ``file://`` URL::

    report.html     the page (:mod:`medblip.reports.html`)
    report.md       a Markdown summary (:mod:`medblip.reports.markdown`)
    report.json     the collected model (what every section was built from)
    assets/         every image the page shows: plots, example thumbnails, attention overlays

``assets/`` is written to a temporary folder and swapped in whole, so a re-run never leaves a mix
of old and new images.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medblip.data import load_image
from medblip.errors import MedblipError
from medblip.io import atomic_replace_dir, atomic_write_json, atomic_write_text
from medblip.reports import plots
from medblip.reports.collect import Report
from medblip.reports.html import render_html
from medblip.reports.markdown import render_markdown

ASSETS = "assets"
REPORT_HTML = "report.html"
THUMBNAIL_PX = 320


# -- assets ----------------------------------------------------------------------------------------
class _Assets:
    def __init__(self, folder: Path, notes: list[str]) -> None:
        self.folder = folder
        self.notes = notes
        self._names: set[str] = set()
        self._done: dict[str, str] = {}

    def _name(self, stem: str, suffix: str) -> str:
        stem = re.sub(r"[^\w.-]+|\.{2,}", "_", stem, flags=re.ASCII).strip("._")[:60] or "image"
        name, k = f"{stem}{suffix}", 2
        while name in self._names:
            name, k = f"{stem}_{k}{suffix}", k + 1
        self._names.add(name)
        return name

    def copy(self, src: str | Path, stem: str, sub: str = "") -> str | None:
        key = f"copy:{src}"
        if key in self._done:
            return self._done[key]
        src = Path(src)
        try:
            from PIL import Image

            with Image.open(src) as im:  # only real images reach the page
                im.verify()
        except Exception as exc:  # noqa: BLE001
            self.notes.append(f"{src}: not a readable image ({type(exc).__name__}); left out")
            return None
        rel = f"{sub}/{self._name(stem, src.suffix.lower() or '.png')}" if sub else self._name(stem, src.suffix.lower())
        (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self.folder / rel)
        self._done[key] = f"{ASSETS}/{rel}"
        return self._done[key]

    def thumbnail(self, image: Mapping[str, Any] | None, stem: str) -> str | None:
        """A PNG thumbnail (longest side ``THUMBNAIL_PX``) of a file or of encoded bytes."""
        if not image:
            return None
        src = image.get("src")
        data = image.get("_bytes")
        key = f"thumb:{src or id(data)}"
        if key in self._done:
            return self._done[key]
        try:
            im = load_image(Path(src) if src else data)
        except MedblipError as exc:  # load_image names the file and the problem
            self.notes.append(f"{exc}; shown without an image")
            self._done[key] = None  # type: ignore[assignment]
            return None
        im = im.copy()
        im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        rel = f"img/{self._name(stem, '.png')}"
        (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(self.folder / rel, format="PNG")
        self._done[key] = f"{ASSETS}/{rel}"
        return self._done[key]


def _prepare_assets(rep: Report, folder: Path) -> None:
    """Copy/draw every image into ``folder`` and record its relative path as ``asset``."""
    notes: list[str] = []
    assets = _Assets(folder, notes)
    folder.mkdir(parents=True, exist_ok=True)
    for k, comp in enumerate(rep.comparisons):
        if comp.get("plot"):
            comp["plot"]["asset"] = assets.copy(comp["plot"]["src"], f"comparison_{k}")
    for k, ab in enumerate(rep.ablations):
        for p in ab.get("plots", []):
            p["asset"] = assets.copy(p["src"], f"ablation_{k}_{Path(p['src']).stem}")
        try:
            path = plots.metrics_vs_cost(ab, folder / f"ablation_{k}_metric_vs_cost.png")
        except Exception as exc:  # noqa: BLE001  (a plot must not cost the whole report)
            notes.append(f"ablation {ab['name']}: metrics-vs-cost plot failed ({type(exc).__name__}: {exc})")
            path = None
        ab["cost_plot"] = {"asset": f"{ASSETS}/{path.name}"} if path else None
    rep.training_plot = None
    if rep.training:
        try:
            path = plots.training_curves(rep.training, folder / "training_curves.png")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"training curves failed ({type(exc).__name__}: {exc})")
            path = None
        rep.training_plot = f"{ASSETS}/{path.name}" if path else None
    for ex in rep.examples:
        if ex.get("image"):
            ex["image"]["asset"] = assets.thumbnail(ex["image"], f"example_{ex['id']}")
    for sys_fail in rep.failures.get("systems", []):
        for ex in sys_fail.get("lowest", []):
            if ex.get("image"):
                ex["image"]["asset"] = assets.thumbnail(ex["image"], f"example_{ex['id']}")
    for k, ex in enumerate(rep.explanations):
        for item in ex["images"]:
            for o in item["overlays"]:
                o["asset"] = assets.copy(o["src"], f"{item['name']}_{o['word']}", sub=f"attention{k}")
            if item.get("grid"):
                item["grid"]["asset"] = assets.copy(item["grid"]["src"], f"{item['name']}_grid", sub=f"attention{k}")
    rep.notes.extend(n for n in notes if n not in rep.notes)


def build_report(rep: Report, out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write report.html, report.md, report.json and assets/ into ``out``; returns their paths.

    A non-empty ``out`` that holds no report is refused unless ``overwrite`` (see :mod:`medblip.outputs`).
    """
    from medblip.outputs import prepare_output_dir

    out = prepare_output_dir(out, "report", overwrite=overwrite, known_files=(REPORT_HTML,))
    tmp = Path(tempfile.mkdtemp(prefix=".assets.", dir=out))
    try:
        _prepare_assets(rep, tmp)
        atomic_replace_dir(tmp, out / ASSETS)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {
        "html": atomic_write_text(out / REPORT_HTML, render_html(rep)),
        "markdown": atomic_write_text(out / "report.md", render_markdown(rep)),
        "json": atomic_write_json(out / "report.json", rep.to_dict()),
        "assets": out / ASSETS,
    }
    return paths
