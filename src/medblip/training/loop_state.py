"""Where the training loop is: one small dataclass that the trainer's helpers take, and that a
checkpoint saves (``trainer_state.pt``) so that ``--resume`` continues from the same position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medblip.training.config import EarlyStoppingConfig


@dataclass
class LoopState:
    """Where the loop is. The first seven fields go into ``trainer_state.pt`` and come back on ``--resume``."""

    epoch: int = 0  # position of the latest optimizer step: its epoch ...
    batch_in_epoch: int = 0  # ... and the batches of that epoch done
    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    feature_cache_seconds: float = 0.0  # building the feature cache, over every segment of the run
    status: str = "completed"
    last_eval: dict[str, Any] = field(default_factory=dict)
    last_eval_step: int = -1

    SAVED = ("epoch", "batch_in_epoch", "global_step", "best_metric", "best_step", "bad_evals",
             "feature_cache_seconds")

    @classmethod
    def restored(cls, state: dict[str, Any]) -> LoopState:
        return cls(**{k: state[k] for k in cls.SAVED if k in state})

    def saved(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SAVED}

    def record_eval(self, value: float, es: EarlyStoppingConfig) -> bool:
        """Early-stopping bookkeeping for one validation score; True when it is a new best."""
        best = self.best_metric
        improved = best is None or (value < best - es.min_delta if es.resolved_mode() == "min"
                                    else value > best + es.min_delta)
        if improved:
            self.best_metric, self.best_step, self.bad_evals = value, self.global_step, 0
        else:
            self.bad_evals += 1
        return improved

    def patience_spent(self, patience: int | None) -> bool:
        return patience is not None and self.bad_evals >= patience
