"""Fine-tuning: the experiment config schema, the trainer and its checkpoints.

``load_config(path, overrides)`` -> :class:`ExperimentConfig`; ``train(config)`` ->
:class:`medblip.results.TrainResult` (what ``result.json`` holds).
The trainer (torch, accelerate) is imported on first use so that reading a config stays light.
"""

from __future__ import annotations

from typing import Any

from medblip.training.config import ExperimentConfig, check_paths, load_config, validate_config

__all__ = ["ExperimentConfig", "TrainingDiverged", "check_paths", "load_config", "train", "validate_config"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainingDiverged"):
        from medblip.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'medblip.training' has no attribute {name!r}")
