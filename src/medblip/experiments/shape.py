"""Does a demo run have the study's shape? Each claim of issue 21, measured from the run's own outputs.

The study's findings, as the tiny demo must reproduce them (``medblip demo`` writes ``DIR/shape.json``
and ``shape.md``; the README gives their ranges across seeds):

- ``fine_tuned_vs_zero_shot``: fine-tuned BLIP's CIDEr over the zero-shot stand-in's (``>= 5``: "widely");
- ``decoder_only_cider``: decoder_only's CIDEr over full's (``>= 0.8``), ``decoder_only_time``: its
  training time over full's (``<= 0.6``);
- ``pointing``: the fine-tuned model's pointing game on the true lesion (``>= 0.15``) and over the
  uniform baseline (``pointing_vs_uniform >= 5``);
- ``side``: the fine-tuned captions' side on test images with a one-sided lesion against the majority
  side's rate (``side_over_majority >= 0.1``: "clearly above").

A criterion whose inputs the run lacks (no masks, no ablation row) is reported as not measured.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medblip.io import atomic_write_json, atomic_write_text

SHAPE_JSON, SHAPE_MD = "shape.json", "shape.md"


@dataclass(frozen=True)
class Criterion:
    """One claim: its measured value, the threshold and which way it must lie."""

    name: str
    what: str
    value: float | None
    threshold: float
    at_least: bool = True

    @property
    def holds(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "holds": self.holds}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def side_rates(captions: dict[str, str], facts: dict[str, dict[str, Any]]) -> tuple[float | None, float | None, int]:
    """(share of ``captions`` naming the lesion's side, majority side's share, n) over one-sided lesions."""
    from medblip.evaluation.clinical.validation import facts_agreement

    lateral = {i: c for i, c in captions.items() if (facts.get(i) or {}).get("side") in ("left", "right")}
    if not lateral:
        return None, None, 0
    agreement = facts_agreement(lateral, facts, fields=("side",))["side"]["agreement"]
    majority = max(Counter(facts[i]["side"] for i in lateral).values()) / len(lateral)
    return float(agreement), majority, len(lateral)


def study_shape(out: Path, fine_tuned: str, zero_shot: str) -> list[Criterion]:
    """The criteria of the demo run in ``out`` (its compare/, ablation/, grounding/ and data/synth/)."""
    from medblip.evaluation.scoring import read_predictions
    from medblip.results import Ablation, Comparison, Grounding, ResultError

    comparison = Comparison.read(out / "compare")
    cider = {s.name: (s.metrics["CIDEr"].value if "CIDEr" in s.metrics else None) for s in comparison.systems}
    rows: dict[str, Any] = {}
    with contextlib.suppress(ResultError):  # no ablation (yet): its criteria are not measured
        rows = {r.strategy: r for r in Ablation.read(out / "ablation").strategies}

    def strategy(name: str, key: str) -> float | None:
        row = rows.get(name)
        if row is None:
            return None
        return row.metrics["CIDEr"].value if key == "CIDEr" and "CIDEr" in row.metrics else getattr(row, key, None)

    point = uniform = None
    if (out / "grounding" / Grounding.FILE).is_file():
        scores = Grounding.read(out / "grounding").summary.scores
        point, uniform = scores["model"].hit, scores["uniform"].hit
    side = majority = None
    facts_file = out / "data" / "synth" / "facts.jsonl"
    predictions = out / "compare" / "systems" / fine_tuned / "predictions.jsonl"
    if facts_file.is_file() and predictions.is_file():
        from medblip.data.synth import load_facts

        captions = {str(r["id"]): str(r["prediction"]) for r in read_predictions(predictions)}
        side, majority, _ = side_rates(captions, load_facts(facts_file.parent))
    return [
        Criterion("fine_tuned_vs_zero_shot", "fine-tuned BLIP's CIDEr / the zero-shot stand-in's",
                  _ratio(cider.get(fine_tuned), cider.get(zero_shot)), 5.0),
        Criterion("decoder_only_cider", "decoder_only's CIDEr / full's",
                  _ratio(strategy("decoder_only", "CIDEr"), strategy("full", "CIDEr")), 0.8),
        Criterion("decoder_only_time", "decoder_only's training time / full's",
                  _ratio(strategy("decoder_only", "total_time"), strategy("full", "total_time")), 0.6, at_least=False),
        Criterion("pointing", "pointing game of the fine-tuned BLIP (lesions hit)", point, 0.15),
        Criterion("pointing_vs_uniform", "pointing game / the uniform map's", _ratio(point, uniform), 5.0),
        Criterion("side_over_majority", "side named right on one-sided lesions minus the majority side's rate",
                  None if side is None or majority is None else side - majority, 0.1),
    ]


def shape_lines(criteria: list[Criterion]) -> list[str]:
    """A Markdown table of the criteria (also what the terminal shows)."""
    lines = ["| criterion | measured | needed | holds |", "|---|---:|---:|:---:|"]
    for c in criteria:
        value = "not measured" if c.value is None else f"{c.value:.3f}"
        need = f"{'>=' if c.at_least else '<='} {c.threshold:g}"
        holds = {True: "yes", False: "**no**", None: "-"}[c.holds]
        lines.append(f"| {c.what} | {value} | {need} | {holds} |")
    return lines


def write_shape(out: Path, criteria: list[Criterion]) -> Path:
    atomic_write_text(out / SHAPE_MD, "# The study's shape, measured on this run\n\n" + "\n".join(shape_lines(criteria))
                      + "\n")
    return atomic_write_json(out / SHAPE_JSON, {"criteria": [c.as_dict() for c in criteria],
                                                "holds": all(c.holds is not False for c in criteria)})
