"""Render a :class:`~medblip.reports.collect.Report` into a folder that opens from a ``file://`` URL::

    report.html     the page (Jinja2 template ``medblip/templates/report.html.j2``, inline CSS, no
                    external resources)
    report.md       a Markdown summary
    report.json     the collected model (what every section was built from)
    assets/         every image the page shows: plots, example thumbnails, attention overlays

``assets/`` is written to a temporary folder and swapped in whole, so a re-run never leaves a mix
of old and new images.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from medblip.io import atomic_replace_dir, atomic_write_json, atomic_write_text
from medblip.reports.collect import Report, lower_is_better

ASSETS = "assets"
REPORT_HTML = "report.html"
THUMBNAIL_PX = 320
TEMPLATE = "report.html.j2"


# -- formatting (shared with markdown.py) ----------------------------------------------------------
def fmt_num(x: Any, digits: int = 3) -> str:
    if x is None or isinstance(x, bool):
        return "–"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return "–"
    if x != 0 and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_int(x: Any) -> str:
    if x is None or isinstance(x, bool):
        return "–"
    try:
        return f"{int(round(float(x))):,}"
    except (TypeError, ValueError):
        return str(x)


def fmt_params(x: Any) -> str:
    if x is None:
        return "–"
    x = float(x)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def fmt_bytes(x: Any) -> str:
    if x is None:
        return "–"
    x = float(x)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def fmt_seconds(x: Any) -> str:
    if x is None:
        return "–"
    x = float(x)
    if x >= 3600:
        return f"{x / 3600:.2f} h"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def fmt_p(p: Any) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_cost(key: str, x: Any) -> str:
    if key == "trainable_params":
        return fmt_params(x)
    if key in ("time_per_epoch", "total_time"):
        return fmt_seconds(x)
    if key == "peak_memory":
        return fmt_bytes(x)
    if key == "relative_time":
        return "–" if x is None else f"{float(x):.2f}×"
    return fmt_num(x, 2)


def fmt_pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def ci_text(v: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not v or v.get("ci_low") is None or v.get("ci_high") is None:
        return ""
    return f"[{fmt_num(v['ci_low'], digits)}, {fmt_num(v['ci_high'], digits)}]"


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
            from medblip.data import load_image

            im = load_image(Path(src) if src else data)
        except Exception:  # noqa: BLE001  (load_image's own errors, or a missing data package)
            try:
                import io

                from PIL import Image

                im = Image.open(Path(src) if src else io.BytesIO(data)).convert("RGB")
            except Exception as exc:  # noqa: BLE001
                self.notes.append(f"{src or 'an embedded image'}: cannot be decoded ({type(exc).__name__}); "
                                  "shown without an image")
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
    from medblip.reports import plots

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


def build_report(rep: Report, out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write report.html, report.md, report.json and assets/ into ``out``; returns their paths.

    A non-empty ``out`` that holds no report is refused unless ``overwrite`` (see :mod:`medblip.outputs`).
    """
    from medblip.outputs import prepare_output_dir
    from medblip.reports.markdown import render_markdown

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
