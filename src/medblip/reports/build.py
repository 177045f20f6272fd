"""Write a report folder that opens from a ``file://`` URL::

    report.html     the page (:mod:`medblip.reports.html`), self-contained: every image embedded
    report.md       a Markdown summary (:mod:`medblip.reports.markdown`), linking images in assets/
    report.json     the collected model (what every section was built from)
    assets/         every image the page shows: plots, example thumbnails, attention overlays

Photos (example thumbnails, attention overlays) are downscaled JPEGs of at most twice the size the
page shows them at, so the page stays a few MB however large the source images are.

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

from PIL import Image

from medblip.data import load_image
from medblip.errors import MedblipError
from medblip.io import atomic_replace_dir, atomic_write_json, atomic_write_text
from medblip.reports import plots
from medblip.reports.collect import Report
from medblip.reports.html import render_html
from medblip.reports.markdown import render_markdown

ASSETS = "assets"
REPORT_HTML = "report.html"
#: longest side of example thumbnails (shown at 132 px) and attention overlays (shown at 200 px):
#: twice the CSS size, for high-density screens
THUMBNAIL_PX = 264
OVERLAY_PX = 400
JPEG_QUALITY = 85


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

    def copy(self, src: str | Path, stem: str, sub: str = "", max_px: int | None = None) -> str | None:
        """``src`` into the assets (an unreadable image is a note); ``max_px``: downscaled to a JPEG
        whose longest side is at most that."""
        key = f"copy:{src}"
        if key in self._done:
            return self._done[key]
        src = Path(src)
        try:
            with Image.open(src) as im:  # only real images reach the page
                im.verify()
        except Exception as exc:  # noqa: BLE001
            self.notes.append(f"{src}: not a readable image ({type(exc).__name__}); left out")
            return None
        suffix = ".jpg" if max_px else (src.suffix.lower() or ".png")
        rel = f"{sub}/{self._name(stem, suffix)}" if sub else self._name(stem, suffix)
        (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if max_px:
            with Image.open(src) as im:
                small = im.convert("RGB")
            small.thumbnail((max_px, max_px))
            small.save(self.folder / rel, format="JPEG", quality=JPEG_QUALITY)
        else:
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
        im = im.convert("RGB")
        im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        rel = f"img/{self._name(stem, '.jpg')}"
        (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(self.folder / rel, format="JPEG", quality=JPEG_QUALITY)
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
    rep.training_plot = rep.training_caption = None
    if rep.training:
        try:
            drawn = plots.training_curves(rep.training, folder / "training_curves.png")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"training curves failed ({type(exc).__name__}: {exc})")
            drawn = None
        if drawn:
            rep.training_plot, rep.training_caption = f"{ASSETS}/{drawn[0].name}", drawn[1]
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
                o["asset"] = assets.copy(o["src"], f"{item['name']}_{o['word']}", sub=f"attention{k}",
                                         max_px=OVERLAY_PX)
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
        "html": atomic_write_text(out / REPORT_HTML, render_html(rep, out)),
        "markdown": atomic_write_text(out / "report.md", render_markdown(rep)),
        "json": atomic_write_json(out / "report.json", rep.to_dict()),
        "assets": out / ASSETS,
    }
    return paths
