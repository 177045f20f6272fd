"""The trainer's validation pass, and zero-shot runs (strategy ``none`` or no training budget).

:func:`validate` computes the validation loss (every process its share, summed) and, with
``train.val_generate``, captions the validation subset and scores the captions with the trainer's
caption scorer (:func:`validation_scores`); :func:`check_metric_name` checks before training that the
early-stopping metric is one it reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medblip.errors import ConfigError
from medblip.results import StrategyCounts, TrainCost, TrainResult
from medblip.training.cost import CostMeter
from medblip.training.data import AdapterCollate, CaptionDataset, batched
from medblip.training.runfiles import RunLog, write_result

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel
    from medblip.training.config import ExperimentConfig


def validate(adapter: CaptionModel, model: Any, dataset: CaptionDataset, batch_size: int, settings: Any,
              accelerator: Any, *, generate: bool) -> dict[str, Any]:
    """Validation loss (every process its share) and, optionally, caption metrics on the subset."""
    from accelerate.utils import gather_object

    indices = list(range(len(dataset)))[accelerator.process_index::accelerator.num_processes]
    collate = AdapterCollate(adapter)
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # loss sum, images
    rows: list[dict[str, Any]] = []
    adapter.eval_mode()
    try:
        with torch.no_grad():
            for chunk in batched(indices, batch_size):
                items = [dataset[i] for i in chunk]
                loss = adapter.loss(collate(items), model=model)
                total += torch.tensor([float(loss) * len(chunk), len(chunk)], dtype=torch.float64,
                                      device=accelerator.device)
                if generate:
                    preds = adapter.generate([im for im, _ in items], settings)
                    rows += [{"id": dataset.records[i].id, "reference": cap, "prediction": pred}
                             for i, (_, cap), pred in zip(chunk, items, preds, strict=True)]
    finally:
        adapter.train_mode()
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
        rows = [r for part in gather_object([rows]) for r in part] if generate else rows
    out: dict[str, Any] = {"val_loss": float(total[0] / total[1]) if total[1] else float("nan"),
                           "val_images": int(total[1])}
    if generate and rows:
        out.update(validation_scores(rows))
        out["examples"] = [{"id": r["id"], "prediction": r["prediction"], "reference": r["reference"]}
                           for r in rows[:3]]
    return out


def zero_shot(adapter: CaptionModel, val_ds: CaptionDataset, config: ExperimentConfig, accelerator: Any,
              run_dir: Path, log: RunLog, strategy_info: dict[str, Any]) -> TrainResult:
    cost = CostMeter(num_processes=accelerator.num_processes)
    metrics: dict[str, Any] = {}
    if val_ds.records:
        t0 = time.perf_counter()
        model = accelerator.prepare(adapter.model)
        metrics = validate(adapter, model, val_ds, config.train.batch_size, config.generation_settings(),
                            accelerator, generate=config.train.val_generate)
        cost.add_eval(time.perf_counter() - t0)
    result = TrainResult(run_dir=str(run_dir), status="zero_shot", model=config.model.name_or_path, global_step=0,
                         epochs_completed=0, best_checkpoint=config.model.name_or_path,
                         final_metrics={**metrics, "scorer": SCORER_NAME}, strategy=StrategyCounts(**strategy_info),
                         cost=TrainCost(**cost.summary(accelerator.device)))
    if accelerator.is_main_process:
        log.append({"step": 0, "epoch": 0, "split": "validation", **metrics})
        write_result(run_dir, result)
    return result


def check_metric_name(tc: Any, source: str) -> None:
    """Fail before training, not after the first epoch, when early stopping names no reported metric."""
    metric = tc.early_stopping.metric
    if metric in ("val_loss",):
        return
    where = f"{source}: train.early_stopping.metric"
    if not tc.val_generate:
        raise ConfigError(f"{where}: {metric!r} is a caption metric but train.val_generate is false")
    probe = [{"id": "a", "reference": "ct of the chest", "prediction": "ct of the chest"},
             {"id": "b", "reference": "mri of the head", "prediction": "mri of the brain"}]
    available = sorted(validation_scores(probe))
    if metric not in available:
        raise ConfigError(f"{where}: {metric!r} is not reported (available: val_loss, {', '.join(available)})")


# -- caption metrics ----------------------------------------------------------------------------------

#: what result.json names as the validation scorer
SCORER_NAME = "medblip.evaluation.score_predictions (bootstrap 0, METEOR off)"


def validation_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """{metric: value} of the validation captions, by the evaluator every other command uses.

    No bootstrap (early stopping needs the point values only) and no METEOR, whose Java process takes
    10 s or more to start at every evaluation; every other metric (CIDEr, BLEU, ROUGE-L, the clinical
    ones) is the one ``medblip evaluate`` reports.
    """
    from medblip.evaluation import score_predictions

    result = score_predictions(rows, bootstrap=0, meteor=False)
    return {name: float(entry["value"]) for name, entry in result["metrics"].items()
            if isinstance(entry.get("value"), int | float)}
