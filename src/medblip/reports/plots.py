"""Report figures (PNG, matplotlib's Agg canvas): training curves and metrics vs. cost.

Figures are built on :class:`matplotlib.figure.Figure` directly, so no pyplot state or GUI backend
is involved.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medblip.io import atomic_write_bytes
from medblip.results import headline_metric


def _figure(width: float, height: float, ncols: int) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    # Fixed margins instead of a layout engine: constrained/tight layout costs more CPU than drawing.
    fig = Figure(figsize=(width, height), dpi=110)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.25 / width, bottom=0.17, top=0.9, wspace=0.32)
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


#: numbers a validation row may carry that are bookkeeping, not a caption metric
_NOT_A_METRIC = re.compile(r"loss|time|seconds|images|step|epoch|lr$", re.I)


def val_metric_for(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The caption metric drawn: the runs' early-stopping metric if it is a caption metric, else a
    preferred caption metric some run reports, else the first one; None when no run logs one."""
    names = [m for run in runs for m in run.get("val_metrics", [])]
    caption = [m for m in dict.fromkeys(names) if not _NOT_A_METRIC.search(m)]
    for run in runs:
        best = run.get("best_metric_name")
        if best and best in caption:
            return best
    return headline_metric(caption)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def training_curves(runs: Sequence[Mapping[str, Any]], path: str | Path) -> tuple[Path, str] | None:
    """Panels against the optimizer step: training loss; validation loss; a validation caption metric.
    A panel is drawn only when some run logged its values. Returns the figure and a caption that says
    exactly what it shows (``None`` when no run has anything to draw).

    Several validations at one step keep the last; a validation at step 0 is the model before training.
    """
    runs = [r for r in runs if r.get("train_loss") or r.get("val")]
    if not runs:
        return None

    def val_points(run: Mapping[str, Any], key: str) -> list[tuple[int, float]]:
        by_step = {int(v["step"]): v["metrics"][key] for v in run.get("val") or []
                   if _finite(v["metrics"].get(key)) and v.get("step") is not None}
        return sorted(by_step.items())

    from matplotlib.ticker import MaxNLocator

    metric = val_metric_for(runs)
    panels = ["train"] if any(r.get("train_loss") for r in runs) else []
    panels += [key for key in ("val_loss", metric) if key and any(val_points(r, key) for r in runs)]
    if not panels:
        return None
    fig, axes = _figure(4.3 * len(panels), 3.4, len(panels))
    colors = [f"C{k % 10}" for k in range(len(runs))]
    before_training = False
    for ax, panel in zip(axes, panels, strict=True):
        for run, color in zip(runs, colors, strict=True):
            label = _short(str(run.get("name", "run")))
            if panel == "train":
                pts = sorted(run.get("train_loss") or [])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.4, label=label)
                continue
            pts = val_points(run, panel)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.4, marker="o", ms=4, label=label)
                before_training |= pts[0][0] == 0
        ax.set_title("training loss" if panel == "train" else f"validation {panel.removeprefix('val_')}",
                     fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss" if panel in ("train", "val_loss") else panel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    last = max([p[0] for r in runs for p in r.get("train_loss") or []] + [v["step"] for r in runs for v in r.get("val") or []
                                                                       if v.get("step") is not None] + [1])
    for ax in axes:  # one step axis for every panel, from before training to the last step
        ax.set_xlim(-0.03 * last, 1.03 * last)
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            axes[0].legend(handles, labels, fontsize=8, loc="best")
            break
    what = {"train": "training loss", "val_loss": "validation loss"}
    shown = [what.get(p, f"validation {p}") for p in panels]
    caption = ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]
    caption = caption[0].upper() + caption[1:]
    caption += " against the optimizer step"
    if before_training:
        caption += "; step 0: before training"
    return _save(fig, Path(path)), caption + "."


def metrics_vs_cost(ablation: Mapping[str, Any], path: str | Path, metric: str | None = None) -> Path | None:
    """The headline metric (95% CI error bars) against total training time and trainable parameters."""
    metric = metric or ablation.get("headline")
    rows = [r for r in ablation.get("rows", []) if metric in r.get("metrics", {})
            and r["metrics"][metric].get("value") is not None]
    if not metric or not rows:
        return None
    xs_keys = [(k, label) for k, label in (("total_time", "total training time (s)"),
                                           ("time_per_epoch", "time per epoch (s)"),
                                           ("trainable_params", "trainable parameters"))
               if sum(1 for r in rows if r["cost"].get(k) is not None) >= 1]
    # time: total if present else per epoch; plus parameters
    chosen = [x for x in xs_keys if x[0] == "total_time"] or [x for x in xs_keys if x[0] == "time_per_epoch"]
    chosen += [x for x in xs_keys if x[0] == "trainable_params"]
    if not chosen:
        return None
    fig, axes = _figure(4.6 * len(chosen), 3.6, len(chosen))
    for ax, (key, label) in zip(axes, chosen, strict=True):
        for k, r in enumerate(rows):
            x = r["cost"].get(key)
            if x is None:
                continue
            v = r["metrics"][metric]
            lo = v["value"] - v["ci_low"] if v.get("ci_low") is not None else 0.0
            hi = v["ci_high"] - v["value"] if v.get("ci_high") is not None else 0.0
            ax.errorbar([x], [v["value"]], yerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="o", ms=7, capsize=3,
                        color=f"C{k % 10}", label=r["strategy"])
            ax.annotate(r["strategy"], (x, v["value"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
        if key == "trainable_params" and all(r["cost"].get(key, 0) > 0 for r in rows if key in r["cost"]):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short range
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (95% CI)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.2)
    axes[0].set_title(f"{metric} vs. cost", fontsize=10)
    return _save(fig, Path(path))
