"""Numbers as people read them in tables: metrics, p-values, parameter counts, bytes, durations.

One home for every table medblip writes (the report's HTML and Markdown, ``comparison.md``,
``ablation.md``, the terminal summaries). ``missing`` is what stands for a value that is absent or
not finite: the report uses an en dash, the plain-text tables a hyphen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DASH = "–"


def _number(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_num(x: Any, digits: int = 3, *, missing: str = DASH) -> str:
    """``digits`` decimals; thousands and more as a whole number with separators."""
    value = _number(x)
    if value is None:
        return missing if x is None or isinstance(x, bool | int | float) else str(x)
    if value != 0 and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_int(x: Any, *, missing: str = DASH) -> str:
    value = _number(x)
    if value is None:
        return missing if x is None or isinstance(x, bool | int | float) else str(x)
    return f"{int(round(value)):,}"


def fmt_p(p: Any, *, missing: str = DASH) -> str:
    value = _number(p)
    if value is None:
        return missing
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def fmt_params(x: Any, *, missing: str = DASH) -> str:
    """A parameter count: ``777.20k``, ``1.25M``."""
    value = _number(x)
    if value is None:
        return missing
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.2f}{unit}"
    return str(int(value))


def fmt_bytes(x: Any, *, missing: str = DASH) -> str:
    value = _number(x)
    if value is None:
        return missing
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def fmt_seconds(x: Any, *, missing: str = DASH) -> str:
    value = _number(x)
    if value is None:
        return missing
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def fmt_ratio(x: Any, *, missing: str = DASH, sign: str = "x") -> str:
    """A time relative to another: ``0.49x``."""
    value = _number(x)
    return missing if value is None else f"{value:.2f}{sign}"


def fmt_pct(x: Any, *, missing: str = DASH) -> str:
    value = _number(x)
    return missing if value is None else f"{100 * value:.1f}%"


def ci_text(v: Mapping[str, Any] | None, digits: int = 3, *, missing: str = DASH) -> str:
    """``[low, high]`` of a metric with a confidence interval; empty without one."""
    if not v or v.get("ci_low") is None or v.get("ci_high") is None:
        return ""
    return f"[{fmt_num(v['ci_low'], digits, missing=missing)}, {fmt_num(v['ci_high'], digits, missing=missing)}]"


def metric_cell(v: Mapping[str, Any] | None, digits: int = 3, *, missing: str = DASH) -> str:
    """``value [low, high]`` of a metric (the value alone without an interval)."""
    if not v:
        return missing
    ci = ci_text(v, digits, missing=missing)
    return fmt_num(v.get("value"), digits, missing=missing) + (f" {ci}" if ci else "")


def fmt_cost(key: str, x: Any, *, missing: str = DASH) -> str:
    """A cost column of the ablation tables, by its key."""
    if key == "trainable_params":
        return fmt_params(x, missing=missing)
    if key in ("time_per_epoch", "total_time"):
        return fmt_seconds(x, missing=missing)
    if key in ("peak_memory", "peak_memory_bytes"):
        return fmt_bytes(x, missing=missing)
    if key == "relative_time":
        return fmt_ratio(x, missing=missing, sign="×")
    return fmt_num(x, 2, missing=missing)
