"""Report figures (PNG, matplotlib's Agg canvas): training curves and metrics vs. cost.

Figures are built on :class:`matplotlib.figure.Figure` directly, so no pyplot state or GUI backend
is involved.
"""

from __future__ import annotations

import io
import math
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


def val_metric_for(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The caption metric drawn per epoch: the runs' early-stopping metric if it is a caption metric,
    else a preferred caption metric every run reports, else the first one."""
    names = [m for run in runs for m in run.get("val_metrics", [])]
    caption = [m for m in dict.fromkeys(names) if "loss" not in m.lower()]
    for run in runs:
        best = run.get("best_metric_name")
        if best and best in caption:
            return best
    return headline_metric(caption)


def training_curves(runs: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Panels: training loss vs. step; validation loss vs. epoch; a validation caption metric vs. epoch.

    Epochs are drawn 1-based (the trainer logs 0-based epochs); several validations within an epoch
    keep the last. Returns ``None`` when no run has anything to draw.
    """
    runs = [r for r in runs if r.get("train_loss") or r.get("val")]
    if not runs:
        return None
    metric = val_metric_for(runs)
    has_val_loss = any("val_loss" in v["metrics"] for r in runs for v in r.get("val", []))
    panels = ["train"] + (["val_loss"] if has_val_loss else []) + ([metric] if metric else [])
    fig, axes = _figure(4.3 * len(panels), 3.4, len(panels))
    colors = [f"C{k % 10}" for k in range(len(runs))]
    for ax, panel in zip(axes, panels, strict=True):
        drawn = False
        for run, color in zip(runs, colors, strict=True):
            label = _short(str(run.get("name", "run")))
            if panel == "train":
                pts = sorted(run.get("train_loss") or [])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1.4, label=label)
                    drawn = True
                continue
            by_epoch: dict[float, float] = {}
            for v in run.get("val") or []:
                val = v["metrics"].get(panel)
                if val is None or (isinstance(val, float) and not math.isfinite(val)):
                    continue
                epoch = v.get("epoch")
                x = (epoch + 1) if epoch is not None else len(by_epoch) + 1
                if v.get("step") == 0 and epoch in (0, None):
                    x = 0  # zero-shot / before training
                by_epoch[x] = val
            if by_epoch:
                xs = sorted(by_epoch)
                ax.plot(xs, [by_epoch[x] for x in xs], color=color, lw=1.4, marker="o", ms=4, label=label)
                drawn = True
        if panel == "train":
            ax.set_title("training loss", fontsize=10)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("loss")
        else:
            ax.set_title(f"validation {panel.removeprefix('val_') if panel == 'val_loss' else panel}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(panel)
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        for ax in axes[1:]:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        axes[0].legend(handles, labels, fontsize=8, loc="upper right")
    return _save(fig, Path(path))


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
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (95% CI)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.2)
    axes[0].set_title(f"{metric} vs. cost", fontsize=10)
    return _save(fig, Path(path))
