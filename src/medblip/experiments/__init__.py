"""Experiments built from the other packages: the comparison, the strategy ablation and the one-command demo.

* :func:`medblip.experiments.compare.run_compare` - ``medblip compare CONFIG``: several captioning
  systems (models, or existing predictions files) scored on one split with paired significance
  tests against a reference; writes ``comparison.{md,csv,json,png}``.
* :func:`medblip.experiments.ablation.run_ablation` - ``medblip ablation CONFIG``: one run per
  fine-tuning strategy on the same data, seed and budget, each evaluated on the test split; writes
  ``ablation.{md,csv,json}`` and plots.
* :func:`medblip.experiments.demo.run_demo` - ``medblip demo``: synthetic benchmark, tiny models,
  ablation, zero-shot vs fine-tuned comparison, attention maps, grounding score and the report.

Heavy libraries (torch, transformers) are imported inside functions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_STRATEGIES", "AblationResult", "DemoOptions", "DemoResult", "run_ablation", "run_compare",
           "run_demo"]


def __getattr__(name: str) -> Any:
    if name in ("DEFAULT_STRATEGIES", "AblationResult", "run_ablation"):
        from medblip.experiments import ablation

        return getattr(ablation, name)
    if name == "run_compare":
        from medblip.experiments import compare

        return compare.run_compare
    if name in ("DemoOptions", "DemoResult", "run_demo"):
        from medblip.experiments import demo

        return getattr(demo, name)
    raise AttributeError(f"module 'medblip.experiments' has no attribute {name!r}")
