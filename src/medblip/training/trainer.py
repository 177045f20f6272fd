"""The training loop: ``train(config) -> TrainResult``. It reads top to bottom, like nanoGPT's train.py.

One process or many: the same code runs under ``accelerate launch`` (DDP on several GPUs or nodes,
gloo on CPU). What it writes into the run folder (``config.output.dir``)::

    config.resolved.yaml   the validated config, every default spelled out
    run.json               versions, git commit, seed, command, strategy parameter counts
    metrics.jsonl          one row per logged step / evaluation / epoch (also in tensorboard/)
    cost.json              wall time per epoch and total, images/s, peak memory
    result.json            how the run ended, best metric, checkpoint folders
    (run.json and cost.json also say whether the feature cache was used, and what building it cost)
    checkpoints/last/      HF checkpoint + trainer_state.pt (resumable), see checkpoint.py
    checkpoints/best/      HF checkpoint with the best validation score

Exactness of ``--resume``: the batch order of every epoch is a function of (seed, epoch) only
(:func:`~medblip.training.data.epoch_sampler`); checkpoints are written only at optimizer-step
boundaries; the state restores optimizer, scheduler, gradient scaler, every RNG, the position in the
epoch and the early-stopping bookkeeping. With ``train.deterministic`` and ``data.num_workers: 0`` on
CPU a run killed and resumed ends with the same weights, bit for bit, as one that never stopped.

Kept elsewhere so that this file is the loop: the feature cache (:mod:`~medblip.training.feature_cache`),
validation (:mod:`~medblip.training.validation`), the run's files and stop flag (:mod:`~medblip.training.runfiles`),
checkpoints (:mod:`~medblip.training.checkpoint`), kernels and fused AdamW (:mod:`medblip.perf.fast_train`),
batches (:mod:`~medblip.training.data`: uint8 images through a lookup table, captions tokenized once,
length buckets), the loop's position and early-stopping bookkeeping (:class:`~medblip.training.loop_state.LoopState`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medblip.errors import ConfigError, MedblipError
from medblip.perf.fast_train import make_adamw, trainer_kernels
from medblip.perf.tf32 import tf32_restored
from medblip.results import StrategyCounts, TrainCost, TrainResult
from medblip.runinfo import set_seed
from medblip.training import checkpoint as ckpt
from medblip.training import runfiles
from medblip.training.cost import CostMeter
from medblip.training.data import (
    AdapterCollate,
    CaptionDataset,
    CaptionTokens,
    config_dataset,
    epoch_sampler,
    split_for_training,
    use_length_buckets,
    validation_subset,
)
from medblip.training.feature_cache import build_feature_cache, plan_feature_cache
from medblip.training.loop_state import LoopState
from medblip.training.run_guard import open_run
from medblip.training.validation import SCORER_NAME, check_metric_name, validate, zero_shot

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel
    from medblip.training.config import ExperimentConfig

_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class TrainingDiverged(MedblipError):
    """The loss (or gradient norm) became NaN/Inf; the message names the step and the checkpoint kept."""


@dataclass
class _Run:
    """What the loop's helpers share, set up once by :func:`_train`."""

    config: ExperimentConfig
    accelerator: Any
    adapter: CaptionModel
    model: Any  # what accelerator.prepare returned (DDP / FSDP wrapper, or the module)
    optimizer: Any
    scheduler: Any
    cost: CostMeter
    log: runfiles.RunLog
    val_ds: CaptionDataset
    source: str
    fsdp: bool


def train(config: ExperimentConfig, *, resume: bool = False, source: str = "<config>",
          progress: bool = True, should_stop: Callable[[int], bool] | None = None,
          overwrite: bool = False, resume_with_changes: bool = False) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data`` with ``config.strategy``; see the module doc.

    ``resume``: continue the run in ``config.output.dir`` from ``checkpoints/last``. ``source``: the
    config's file name, for error messages. ``should_stop(global_step)``: asked after every optimizer
    step; True stops the run like SIGTERM does (resumable checkpoint, status "interrupted").
    ``overwrite`` and ``resume_with_changes``: see :mod:`medblip.training.run_guard` (folder guard,
    lock, resume check).
    """
    from medblip.progress import library_progress

    # train.tf32 switches a process-wide flag; a caller's setting comes back after. transformers' checkpoint
    # loading / saving bars would interleave with the training bar: off for the run, restored after.
    # SIGINT/SIGTERM are caught from the start: one during setup (loading a large model takes minutes)
    # stops the run after its first step, with checkpoints/last written and the folder's lock released.
    stop = runfiles.StopFlag(should_stop)
    stop.install()
    try:
        with (open_run(config, resume=resume, overwrite=overwrite, allow_changes=resume_with_changes,
                       source=source), tf32_restored(), library_progress(False)):
            return _train(config, resume=resume, source=source, progress=progress, stop=stop)
    finally:
        stop.uninstall()


def _train(config: ExperimentConfig, *, resume: bool, source: str, progress: bool,
           stop: runfiles.StopFlag) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from medblip.data import load_dataset
    from medblip.models import create_model
    from medblip.perf.feature_cache import DecoderFromFeatures, decoder_only_loss_from_features

    tc, dc = config.train, config.data
    run_dir = Path(config.output.dir)
    last_dir = ckpt.checkpoint_dir(run_dir, ckpt.LAST)

    # -- processes, precision, seeds ---------------------------------------------------------------
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    # Gradient accumulation is done below, per epoch, instead of with accelerator.accumulate(): that
    # keeps the last, shorter window of an epoch correctly averaged and makes the window boundaries a
    # function of the position in the epoch, which is what an exact resume needs.
    # torchrun on a machine without CUDA: accelerate only picks multi-process CPU (gloo) when asked to.
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=1, cpu=cpu_ddp)
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    set_seed(tc.seed, deterministic=tc.deterministic)

    # -- run folder: fresh, or the one being resumed --------------------------------------------------
    state = ckpt.open_checkpoints(run_dir, accelerator, resume=resume, fsdp=fsdp)

    # -- data --------------------------------------------------------------------------------------
    dataset = load_dataset(dc.path, format=dc.format, splits=[dc.train_split, dc.val_split],
                           caption_options=dc.captions, limit=dc.limit, seed=dc.seed, roco_subsets=dc.roco_subsets)
    train_records, val_all, val_source_split, validation_note = split_for_training(dataset, dc)
    if validation_note and is_main:
        print(f"medblip: {validation_note}", file=sys.stderr, flush=True)
    val_records = validation_subset(val_all, tc.val_subset, dc.seed)
    training = config.strategy.name != "none" and (tc.epochs > 0 or tc.max_steps)
    if training and not train_records:
        raise ConfigError(f"{source}: data.path: no {dc.train_split!r} records in {dc.path} "
                          f"(splits found: {', '.join(dataset.splits) or 'none'})")
    train_ds = config_dataset(dc, dc.train_split, train_records, source, arrays=True)
    val_ds = config_dataset(dc, val_source_split, val_records, source)

    # -- model and strategy ------------------------------------------------------------------------
    # A resumed full / partial fine-tune reloads its own HF checkpoint; a LoRA run rebuilds the base
    # model and loads the unmerged adapters (the HF export has them merged into the weights).
    mc = config.model
    if (mc.load_in_8bit or mc.load_in_4bit) and training and config.strategy.name != "lora":
        raise ConfigError(f"{source}: model.load_in_{'8' if mc.load_in_8bit else '4'}bit: quantized weights cannot be "
                          f"trained with strategy {config.strategy.name}; use strategy lora (QLoRA) or none")
    resume_from_export = state is not None and not (last_dir / ckpt.TRAINABLE_FILE).is_file()
    model_source = str(last_dir) if resume_from_export else config.model.name_or_path
    adapter = create_model(model_source, config.model.family, dtype=config.model.dtype,
                           device=accelerator.device, **config.model.family_options())
    # None: the family's own training recipe's (run.json records the value used)
    adapter.set_label_smoothing(adapter.default_label_smoothing if tc.label_smoothing is None else tc.label_smoothing)
    strategy_info = adapter.apply_strategy(config.strategy.name, **config.strategy.options()).model_dump()
    if state is not None and not resume_from_export:
        ckpt.load_trainable(adapter, last_dir)
    if tc.gradient_checkpointing:
        adapter.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kernels = trainer_kernels(adapter, tc, accelerator.device, source)

    if is_main:
        runfiles.write_run_files(run_dir, config, strategy_info, accelerator, state, kernels, adapter.label_smoothing,
                                 validation_note)
    log = runfiles.RunLog(run_dir, enabled=is_main)
    if training and val_records:
        check_metric_name(tc, source)

    if not training:  # zero-shot: one validation pass, no checkpoints
        return zero_shot(adapter, val_ds, config, accelerator, run_dir, log, strategy_info)

    # -- frozen-encoder feature cache? (decoder_only: see the module doc) -----------------------------------
    cache_info = plan_feature_cache(adapter, tc, train_ds, fsdp, accelerator, source)
    use_cache = bool(cache_info["used"])
    buckets = use_length_buckets(tc, cached_features=use_cache)

    # -- optimizer and schedule ----------------------------------------------------------------------
    # No weight decay on biases and norm weights (1-d tensors), as in BERT/BLIP and nanoGPT.
    trainable = [p for p in adapter.model.parameters() if p.requires_grad]
    optimizer = make_adamw(trainable, lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.adam_betas, eps=tc.adam_eps,
                           device=accelerator.device)
    # every caption tokenized once: batches gather their rows (and length buckets sort on the lengths)
    tokens = CaptionTokens(adapter, [r.caption for r in train_records])
    batches_per_epoch = len(epoch_sampler(tc, len(train_ds), tokens.lengths, buckets=buckets["used"], rank=rank,
                                          num_processes=world))
    steps_per_epoch = math.ceil(batches_per_epoch / tc.grad_accum)
    total_steps = tc.max_steps or steps_per_epoch * tc.epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else round(tc.warmup_ratio * total_steps)
    scheduler = get_scheduler(_SCHEDULES[tc.schedule], optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_steps)
    # The scheduler is stepped by hand once per optimizer step (not prepared): accelerate would step
    # it once per process, which would change the schedule with the process count.
    if use_cache:
        # Training runs the decoder alone (DDP-wrapped when distributed); validation and generation run
        # on the full model, which gets the same mixed-precision forward it would get from prepare().
        accelerator.prepare_model(adapter.model, evaluation_mode=True)
        model, optimizer = accelerator.prepare(DecoderFromFeatures(adapter), optimizer)
    else:
        model, optimizer = accelerator.prepare(adapter.model, optimizer)

    # -- where we are --------------------------------------------------------------------------------
    loop = LoopState()
    cost = CostMeter(num_processes=world)
    if state is not None:
        ckpt.restore_trainer_state(state, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                                   cost=cost, batch_size=tc.batch_size, grad_accum=tc.grad_accum)
        loop = LoopState.restored(state)
        log.drop_after(loop.global_step)
    start_epoch, start_batch = loop.epoch, loop.batch_in_epoch
    run = _Run(config, accelerator, adapter, model, optimizer, scheduler, cost, log, val_ds, source, fsdp)

    # -- the feature cache: every training image through the frozen encoder, once ----------------------
    feature_cache = None
    if use_cache:
        feature_cache, seconds = build_feature_cache(adapter, train_ds, dc, tc, accelerator, cache_info,
                                                     show_progress=progress and is_main)
        loop.feature_cache_seconds += seconds
        cost.add_train(seconds, 0)  # part of what training costs (the epoch's train_seconds), not hidden
        cache_info["build_seconds_total"] = round(loop.feature_cache_seconds, 3)
        # batches carry text and record ids only: no image is decoded in the epochs
        train_ds = CaptionDataset(train_records, dc.image_size, with_ids=True, load_images=False)
    if is_main:
        runfiles.record_in_run(run_dir, "feature_cache", cache_info, resumed=state is not None)
        runfiles.record_in_run(run_dir, "length_buckets", buckets, resumed=state is not None)

    # -- logging and signals ---------------------------------------------------------------------------
    log.open(config, loop.global_step, fresh=state is None, strategy=strategy_info)
    bar = tqdm(total=total_steps, initial=loop.global_step, disable=not (progress and is_main), unit="step",
               dynamic_ncols=True)

    # -- the loop ----------------------------------------------------------------------------------
    es = tc.early_stopping
    collate = AdapterCollate(adapter, tokens)
    epoch = start_epoch
    try:
        adapter.train_mode()
        for epoch in range(start_epoch, num_epochs):
            skip = start_batch if epoch == start_epoch else 0
            sampler = epoch_sampler(tc, len(train_ds), tokens.lengths, buckets=buckets["used"], epoch=epoch,
                                    rank=rank, num_processes=world, skip=skip)
            workers = 0 if use_cache else dc.num_workers  # text-only batches: workers would only cost
            if dc.cache_images and workers > 0 and epoch == start_epoch:
                train_ds.preload()
            # A generator of its own, so creating the loader's iterator draws nothing from the global
            # torch RNG (dropout's): the resumed and the uninterrupted run stay in step.
            loader = torch.utils.data.DataLoader(
                train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                pin_memory=accelerator.device.type == "cuda",
                generator=torch.Generator().manual_seed(tc.seed + epoch),
                persistent_workers=False)
            window_loss = torch.zeros((), device=accelerator.device)
            window_images = 0
            log_losses: list[float] = []
            t_window = time.perf_counter()
            for i, batch in enumerate(loader, start=skip):
                # Accumulation windows are counted from the start of the epoch; the last may be shorter.
                window_start = (i // tc.grad_accum) * tc.grad_accum
                window_size = min(tc.grad_accum, batches_per_epoch - window_start)
                boundary = i + 1 == window_start + window_size
                sync = contextlib.nullcontext() if boundary or world == 1 else accelerator.no_sync(model)
                with sync:
                    if feature_cache is not None:  # the decoder alone, on the batch's cached encoder features
                        features = feature_cache.get(batch["ids"], device=accelerator.device)
                        loss = decoder_only_loss_from_features(adapter, features, batch, model=model)
                    else:
                        loss = adapter.loss(batch, model=model)
                    accelerator.backward(loss / window_size)
                window_loss += loss.detach().float()
                window_images += int(batch["labels"].shape[0])
                if not boundary:
                    continue

                # One optimizer step. The loss is checked before the weights change, so a NaN never
                # reaches a checkpoint.
                step_loss = window_loss / window_size
                if world > 1:
                    step_loss = accelerator.reduce(step_loss, reduction="mean")
                loss_value = float(step_loss)
                if not math.isfinite(loss_value):
                    _diverged("loss", loss_value, loop.global_step + 1, epoch, i, last_dir)
                grad_norm = None
                if tc.clip_grad is not None:
                    grad_norm = float(accelerator.clip_grad_norm_(trainable, tc.clip_grad))
                    # fp16: an overflow is the gradient scaler's business (it skips the step)
                    if not math.isfinite(grad_norm) and accelerator.scaler is None:
                        _diverged("gradient norm", grad_norm, loop.global_step + 1, epoch, i, last_dir)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop.global_step += 1
                loop.epoch, loop.batch_in_epoch = (epoch, i + 1) if i + 1 < batches_per_epoch else (epoch + 1, 0)
                cost.add_train(time.perf_counter() - t_window, window_images)
                window_loss = torch.zeros((), device=accelerator.device)
                window_images = 0
                log_losses.append(loss_value)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch + 1, refresh=False)

                if loop.global_step % tc.log_every == 0:
                    row = {"step": loop.global_step, "epoch": epoch, "split": "train",
                           "loss": sum(log_losses) / len(log_losses), "lr": scheduler.get_last_lr()[0]}
                    if grad_norm is not None:
                        row["grad_norm"] = grad_norm
                    log.log(row, loop.global_step)
                    log_losses = []
                done = loop.global_step >= total_steps
                epoch_end = i + 1 == batches_per_epoch
                if tc.eval_every_steps and loop.global_step % tc.eval_every_steps == 0 and not done and not epoch_end:
                    _evaluate(run, loop, epoch)
                    if loop.patience_spent(es.patience):
                        loop.status = "early_stopped"
                if (tc.save_every_steps and loop.global_step % tc.save_every_steps == 0 and not epoch_end) \
                        or loop.status == "early_stopped":
                    _save(run, loop, ckpt.LAST, resumable=True)
                if stop.agreed(accelerator, loop.global_step) and not epoch_end:
                    _save(run, loop, ckpt.LAST, resumable=True)
                    loop.status = "interrupted"
                if loop.status != "completed" or done:
                    break
                t_window = time.perf_counter()

            if loop.status != "completed":
                break
            # -- end of epoch: cost row, validation, checkpoint -----------------------------------------
            epoch_cost = cost.end_epoch(epoch)
            log.log({"step": loop.global_step, "epoch": epoch, "kind": "epoch_cost", **asdict(epoch_cost),
                     "images_per_second": round(epoch_cost.images_per_second, 3)}, loop.global_step, prefix="cost")
            finished = loop.global_step >= total_steps or epoch + 1 == num_epochs
            every = tc.eval_every_epochs
            if (every and (epoch + 1) % every == 0) or finished:
                if val_ds.records:
                    _evaluate(run, loop, epoch)
                if loop.patience_spent(es.patience) and not finished:
                    loop.status = "early_stopped"
            _save(run, loop, ckpt.LAST, resumable=True)
            if stop.agreed(accelerator, loop.global_step) and loop.status == "completed" and not finished:
                loop.status = "interrupted"
            if loop.status != "completed" or finished:
                break
    finally:
        bar.close()

    # -- wrap up ---------------------------------------------------------------------------------------
    if loop.status != "interrupted" and val_ds.records and loop.last_eval_step != loop.global_step:
        _evaluate(run, loop, epoch)
    if not val_ds.records and loop.status != "interrupted":  # nothing to select on: the final model is "best"
        _save(run, loop, ckpt.BEST, resumable=False)
        loop.best_step = loop.global_step
    best_dir = ckpt.checkpoint_dir(run_dir, ckpt.BEST)
    result = TrainResult(
        run_dir=str(run_dir), status=loop.status, model=config.model.name_or_path, global_step=loop.global_step,
        epochs_completed=sum(1 for _ in cost.epochs),
        best_metric=loop.best_metric, best_metric_name=es.metric if val_ds.records else None,
        best_step=loop.best_step, best_checkpoint=str(best_dir) if best_dir.exists() else None,
        last_checkpoint=str(last_dir) if last_dir.exists() else None,
        final_metrics={k: v for k, v in loop.last_eval.items() if k not in ("step", "epoch", "split")},
        strategy=StrategyCounts(**strategy_info),
        cost=TrainCost(**cost.summary(accelerator.device), feature_cache=cache_info),
        signal=stop.name, exit_code=128 + stop.signum if loop.status == "interrupted" and stop.signum else 0,
    )
    if is_main:
        result.final_metrics["scorer"] = SCORER_NAME
        runfiles.write_result(run_dir, result)
        log.close(result.cost, loop.global_step)
    accelerator.wait_for_everyone()
    return result


# -- pieces the loop calls -----------------------------------------------------------------------------

def _save(run: _Run, loop: LoopState, name: str, *, resumable: bool) -> None:
    """Write ``checkpoints/<name>``; ``resumable``: with the trainer state ``--resume`` needs.

    Every process takes part (RNG states are gathered; FSDP gathers the weights), main writes.
    """
    acc, tc = run.accelerator, run.config.train
    state = None
    if resumable:
        state = ckpt.trainer_state(loop.saved(), optimizer=run.optimizer, scheduler=run.scheduler, accelerator=acc,
                                   cost=run.cost, seed=tc.seed, batch_size=tc.batch_size, grad_accum=tc.grad_accum,
                                   fsdp=run.fsdp)
    with ckpt.full_params(run.model, run.fsdp):
        if acc.is_main_process:
            ckpt.save_checkpoint(run.adapter, run.config.output.dir, name, state,
                                 generation=run.config.generation_settings())
    acc.wait_for_everyone()


def _evaluate(run: _Run, loop: LoopState, epoch: int) -> dict[str, Any]:
    """Validate, do the early-stopping bookkeeping (a new best is saved as ``checkpoints/best``), log."""
    tc, es = run.config.train, run.config.train.early_stopping
    t0 = time.perf_counter()
    # Validation runs on the plain module: the DDP wrapper would broadcast buffers on every forward,
    # a collective that hangs when processes hold different numbers of batches (FSDP: with the
    # full weights gathered on every process for the duration).
    with ckpt.full_params(run.model, run.fsdp, rank0_only=False):
        row = validate(run.adapter, run.adapter.model, run.val_ds, tc.batch_size, run.config.generation_settings(),
                        run.accelerator, generate=tc.val_generate)
    run.cost.add_eval(time.perf_counter() - t0)
    row = {"step": loop.global_step, "epoch": epoch, "split": "validation", **row}
    value = row.get(es.metric)
    if value is None:
        raise ConfigError(f"{run.source}: train.early_stopping.metric: {es.metric!r} is not reported "
                          f"(available: {', '.join(sorted(k for k in row if isinstance(row[k], float)))})")
    row["improved"] = loop.record_eval(value, es)
    if row["improved"]:
        _save(run, loop, ckpt.BEST, resumable=False)
    run.log.log(row, loop.global_step)
    loop.last_eval, loop.last_eval_step = row, loop.global_step
    return row


def _diverged(what: str, value: float, step: int, epoch: int, batch: int, last_dir: Path) -> None:
    kept = (f"last good checkpoint kept at {last_dir} (step {ckpt.checkpoint_step(last_dir)})"
            if (last_dir / ckpt.STATE_FILE).is_file() else "no checkpoint had been written yet")
    raise TrainingDiverged(f"training diverged: {what} is {value} at optimizer step {step} (epoch {epoch + 1}, "
                           f"batch {batch + 1}); {kept}. Lower train.lr or enable train.clip_grad")
