"""The training loop: ``train(config) -> RunResult``. It reads top to bottom, like nanoGPT's train.py.

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
(:class:`EpochBatchSampler`); checkpoints are written only at optimizer-step boundaries; the state
restores optimizer, scheduler, gradient scaler, every RNG, the position inside the epoch and the
early-stopping bookkeeping. With ``train.deterministic`` and ``data.num_workers: 0`` on CPU a run
killed and resumed ends with the same weights, bit for bit, as one that never stopped.

Frozen-encoder feature cache (``train.cache_features``): under ``decoder_only`` on BLIP or ViT-GPT2
the vision encoder is frozen and pinned in eval mode, so its output for a training image never
changes. The trainer then encodes every training image once (:class:`~medblip.perf.feature_cache.FeatureCache`,
in memory or under ``train.feature_cache_dir``) and each step runs only the decoder on the batch's
cached features (:class:`~medblip.perf.feature_cache.DecoderFromFeatures`, the model's own forward
after its vision encoder): the same losses and weights as the plain path, without image decoding or
encoder forwards in the epochs. Validation, generation and checkpoints use the full ``adapter.model``,
whose decoder is the one that trains.

Kernels (``train.sdpa``, ``train.tf32``, ``train.mixed_precision``): on CUDA a run uses the fast
step's kernels by default -- scaled-dot-product attention, TF32 for fp32 matmuls, fused AdamW -- so
it gets the throughput ``benchmarks/train_throughput.py`` reports; CPU runs stay on eager attention.
run.json records what was used (``distributed.kernels``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medblip.errors import ConfigError, DataError, MedblipError
from medblip.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from medblip.perf.tf32 import set_tf32, tf32_restored
from medblip.runinfo import run_metadata, set_seed
from medblip.training import checkpoint as ckpt
from medblip.training.cost import CostMeter
from medblip.training.data import (
    AdapterCollate,
    CaptionDataset,
    EpochBatchSampler,
    batched,
    holdout_validation,
    validation_subset,
)
from medblip.training.run_guard import open_run

if TYPE_CHECKING:
    from accelerate import Accelerator

    from medblip.models.base import CaptionModel
    from medblip.perf.feature_cache import FeatureCache
    from medblip.training.config import ExperimentConfig

_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class TrainingDiverged(MedblipError):
    """The loss (or gradient norm) became NaN/Inf; the message names the step and the checkpoint kept."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | early_stopped | interrupted | zero_shot
    global_step: int
    epochs_completed: int
    best_metric: float | None = None
    best_metric_name: str | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    final_metrics: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    signal: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out


def train(config: ExperimentConfig, *, resume: bool = False, source: str = "<config>",
          progress: bool = True, should_stop: Callable[[int], bool] | None = None,
          overwrite: bool = False, resume_with_changes: bool = False) -> RunResult:
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
    with (open_run(config, resume=resume, overwrite=overwrite, allow_changes=resume_with_changes, source=source),
          tf32_restored(), library_progress(False)):
        return _train(config, resume=resume, source=source, progress=progress, should_stop=should_stop)


def _image_cache(dc: Any, split: str, records: list[Any], source: str) -> Any:
    """``data.image_cache``: the cached split's rows for ``records`` (None without a cache or records)."""
    if dc.image_cache is None or not records:
        return None
    from medblip.data.cache import CachedImageDataset

    try:
        return CachedImageDataset(dc.image_cache, split, records, size=dc.image_size)
    except DataError as exc:
        raise ConfigError(f"{source}: data.image_cache: {exc}") from None


def _fast_kernels(adapter: CaptionModel, tc: Any, device: torch.device, source: str) -> dict[str, Any]:
    """``train.sdpa`` and ``train.tf32``: the attention kernel and matmul precision the run uses.

    These are the fast step's kernels (:mod:`medblip.perf.fast_train`, what the throughput benchmark
    measures), so a run gets what the benchmark reports. ``auto`` keeps CPU runs and deterministic
    runs on eager attention, whose numbers the exact-resume and DDP tests compare bit for bit.
    """
    from medblip.perf.attention import enable_sdpa

    want = tc.sdpa == "on" or (tc.sdpa == "auto" and device.type == "cuda" and not tc.deterministic)
    switched = enable_sdpa(adapter) if want else 0
    if tc.sdpa == "on" and not switched:
        raise ConfigError(f"{source}: train.sdpa: on, but no attention module of this {adapter.family} model "
                          "can use scaled_dot_product_attention; set train.sdpa: auto or off")
    tf32 = bool(tc.tf32 and device.type == "cuda")
    if tf32:
        set_tf32(True)
    return {"sdpa": bool(switched), "sdpa_modules": switched, "tf32": tf32}


def _train(config: ExperimentConfig, *, resume: bool, source: str, progress: bool,
           should_stop: Callable[[int], bool] | None) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, gather_object
    from tqdm.auto import tqdm

    from medblip.data import load_dataset
    from medblip.models import create_model
    from medblip.perf.feature_cache import DecoderFromFeatures, decoder_only_loss_from_features

    tc = config.train
    run_dir = Path(config.output.dir)
    last_dir = ckpt.checkpoint_dir(run_dir, ckpt.LAST)
    best_dir = ckpt.checkpoint_dir(run_dir, ckpt.BEST)

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
    if is_main:
        ckpt.prepare_checkpoint_dir(run_dir)
    accelerator.wait_for_everyone()
    state: dict[str, Any] | None = None
    if resume:
        if not (last_dir / ckpt.STATE_FILE).is_file():
            raise ConfigError(f"--resume: {last_dir} holds no resumable checkpoint ({ckpt.STATE_FILE}); "
                              "start the run without --resume")
        state = ckpt.load_trainer_state(last_dir)
        if fsdp or state.get("optimizer") is None:
            raise ConfigError("--resume is not supported for FSDP runs (their optimizer state is sharded); "
                              "use DDP, e.g. with the lora strategy, for resumable runs of large models")

    # -- data --------------------------------------------------------------------------------------
    dc = config.data
    dataset = load_dataset(dc.path, format=dc.format, splits=[dc.train_split, dc.val_split],
                           caption_options=dc.captions, limit=dc.limit, seed=dc.seed, roco_subsets=dc.roco_subsets)
    train_records = dataset.split(dc.train_split)
    val_all = dataset.split(dc.val_split)
    validation_note = None
    val_source_split = dc.val_split  # where the validation records are in the data (and its image cache)
    if train_records and not val_all:
        # e.g. a manifest without a split column: every record is in train
        missing = (f"no {dc.val_split!r} records in {dc.path}"
                   + (" (it names no split)" if dataset.report.unsplit else ""))
        if dc.val_fraction > 0:
            train_records, val_all, how = holdout_validation(train_records, dc.val_fraction, dc.seed)
            validation_note = f"{missing}: {how}"
            val_source_split = dc.train_split
        else:
            validation_note = (f"{missing} and data.val_fraction is 0: training without validation; "
                               "checkpoints/best is then the first evaluation's checkpoint, not a chosen one")
        if is_main:
            import sys

            print(f"medblip: {validation_note}", file=sys.stderr, flush=True)
    val_records = validation_subset(val_all, tc.val_subset, dc.seed)
    training = config.strategy.name != "none" and (tc.epochs > 0 or tc.max_steps)
    if training and not train_records:
        raise ConfigError(f"{source}: data.path: no {dc.train_split!r} records in {dc.path} "
                          f"(splits found: {', '.join(dataset.splits) or 'none'})")
    in_memory = dc.cache_images and dc.image_cache is None  # a memory-mapped cache needs no second copy
    train_ds = CaptionDataset(train_records, dc.image_size, cache=in_memory,
                              image_cache=_image_cache(dc, dc.train_split, train_records, source))
    val_ds = CaptionDataset(val_records, dc.image_size, cache=in_memory,
                            image_cache=_image_cache(dc, val_source_split, val_records, source))

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
    report = adapter.apply_strategy(config.strategy.name, **config.strategy.options())
    if state is not None and not resume_from_export:
        ckpt.load_trainable(adapter, last_dir)
    if tc.gradient_checkpointing:
        adapter.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kernels = _fast_kernels(adapter, tc, accelerator.device, source)
    strategy_info = report.as_dict() if hasattr(report, "as_dict") else asdict(report)

    if is_main:
        atomic_write_text(run_dir / "config.resolved.yaml", config.to_yaml())
        _write_run_json(run_dir, config, strategy_info, accelerator, state, kernels, adapter.label_smoothing,
                        validation_note)
    metrics_path = run_dir / "metrics.jsonl"
    settings = config.generation_settings()
    scorer, scorer_name = validation_scores, SCORER_NAME
    if training and val_records:
        _check_metric_name(tc, scorer, source)

    if not training:  # zero-shot: one validation pass, no checkpoints
        return _zero_shot(adapter, val_ds, config, accelerator, run_dir, metrics_path, scorer, scorer_name,
                          strategy_info)

    # -- frozen-encoder feature cache? (decoder_only: see the module doc) -----------------------------------
    cache_info = _feature_cache_plan(adapter, tc, train_ds, fsdp, accelerator, source)
    use_cache = bool(cache_info["used"])

    # -- optimizer and schedule ----------------------------------------------------------------------
    # No weight decay on biases and norm weights (1-d tensors), as in BERT/BLIP and nanoGPT.
    params = [(n, p) for n, p in adapter.model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.adam_betas, eps=tc.adam_eps,
                                  fused=accelerator.device.type == "cuda")
    batches_per_epoch = EpochBatchSampler(len(train_ds), tc.batch_size, seed=tc.seed, rank=rank,
                                          num_processes=world).batches_per_process()
    steps_per_epoch = math.ceil(batches_per_epoch / tc.grad_accum)
    total_steps = tc.max_steps or steps_per_epoch * tc.epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else round(tc.warmup_ratio * total_steps)
    from transformers import get_scheduler

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
    trainable = [p for _, p in params]

    # -- where we are --------------------------------------------------------------------------------
    start_epoch, start_batch, global_step = 0, 0, 0
    es = tc.early_stopping
    mode = es.resolved_mode()
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals = 0
    cache_seconds = 0.0  # building the feature cache, over every segment of the run
    cost = CostMeter(num_processes=world)
    if state is not None:
        if state["world_size"] != world or state["batch_size"] != tc.batch_size or state["grad_accum"] != tc.grad_accum:
            raise ConfigError(
                f"--resume: the checkpoint was written with {state['world_size']} process(es), batch size "
                f"{state['batch_size']} and grad_accum {state['grad_accum']}; resume with the same values "
                "(the data position depends on them)")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch, global_step = state["epoch"], state["batch_in_epoch"], state["global_step"]
        best_metric, best_step, bad_evals = state["best_metric"], state["best_step"], state["bad_evals"]
        cost.load_state_dict(state["cost"])
        cache_seconds = float(state.get("feature_cache_seconds", 0.0))
        # Last of all, so that nothing above (model init, LoRA init) consumes the restored streams.
        ckpt.set_rng_state(state["rng"][rank])
        if is_main:  # rows logged after the checkpoint will be logged again
            _truncate_metrics(metrics_path, global_step)

    def trainer_state(epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        rngs = gather_object([ckpt.rng_state()]) if world > 1 else [ckpt.rng_state()]
        return {
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
            # FSDP shards the optimizer state over the processes; such runs are not resumable.
            "optimizer": None if fsdp else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": rngs, "best_metric": best_metric, "best_step": best_step, "bad_evals": bad_evals,
            "data_order_seed": tc.seed, "world_size": world, "batch_size": tc.batch_size,
            "grad_accum": tc.grad_accum, "cost": cost.state_dict(), "feature_cache_seconds": cache_seconds,
        }

    def save(name: str, epoch: int, batch_in_epoch: int, resumable: bool) -> None:
        # Every process takes part (RNG states are gathered; FSDP gathers the weights), main writes.
        tstate = trainer_state(epoch, batch_in_epoch) if resumable else None
        with _full_params(model, fsdp):
            if is_main:
                ckpt.save_checkpoint(adapter, run_dir, name, tstate, generation=settings)
        accelerator.wait_for_everyone()

    def evaluate(epoch: int) -> dict[str, Any]:
        nonlocal best_metric, best_step, bad_evals
        t0 = time.perf_counter()
        # Validation runs on the plain module: the DDP wrapper would broadcast buffers on every forward,
        # a collective that hangs when processes hold different numbers of batches (FSDP: with the
        # full weights gathered on every process for the duration).
        with _full_params(model, fsdp, rank0_only=False):
            row = _validate(adapter, adapter.model, val_ds, tc.batch_size, settings, scorer, accelerator,
                            gather_object, generate=tc.val_generate)
        cost.add_eval(time.perf_counter() - t0)
        row = {"step": global_step, "epoch": epoch, "split": "validation", **row}
        value = row.get(es.metric)
        if value is None:
            raise ConfigError(f"{source}: train.early_stopping.metric: {es.metric!r} is not reported "
                              f"(available: {', '.join(sorted(k for k in row if isinstance(row[k], float)))})")
        improved = best_metric is None or (value < best_metric - es.min_delta if mode == "min"
                                           else value > best_metric + es.min_delta)
        if improved:
            best_metric, best_step, bad_evals = value, global_step, 0
            save(ckpt.BEST, epoch, 0, resumable=False)
        else:
            bad_evals += 1
        row["improved"] = improved
        if is_main:
            _log(row, metrics_path, writer, global_step)
        return row

    # -- the feature cache: every training image through the frozen encoder, once ----------------------
    feature_cache: FeatureCache | None = None
    if use_cache:
        t0 = time.perf_counter()
        feature_cache, computed = _build_feature_cache(adapter, train_records, dc, tc, accelerator,
                                                       show_progress=progress and is_main)
        build = time.perf_counter() - t0
        cache_seconds += build
        cost.add_train(build, 0)  # part of what training costs (the epoch's train_seconds), not hidden
        cache_info.update(records=len(feature_cache), computed=computed, build_seconds=round(build, 3),
                          build_seconds_total=round(cache_seconds, 3), key=feature_cache.key,
                          memory_bytes=feature_cache.nbytes())
        # batches carry text and record ids only: no image is decoded in the epochs
        train_ds = CaptionDataset(train_records, dc.image_size, with_ids=True, load_images=False)
    if is_main:
        _record_feature_cache(run_dir, cache_info, resumed=state is not None)

    # -- logging and signals ---------------------------------------------------------------------------
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        if state is None:  # a fresh run: drop rows of an earlier attempt that never checkpointed
            metrics_path.unlink(missing_ok=True)
        # purge_step: TensorBoard hides events an earlier (killed) attempt logged after this step.
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step)
        writer.add_text("config", "```yaml\n" + config.to_yaml() + "\n```", global_step)
        if state is None:
            append_jsonl(metrics_path, {"step": 0, "kind": "strategy", **strategy_info})
    stop = _StopFlag(should_stop)
    stop.install()
    bar = tqdm(total=total_steps, initial=global_step, disable=not (progress and is_main), unit="step",
               dynamic_ncols=True)

    # -- the loop ----------------------------------------------------------------------------------
    collate = AdapterCollate(adapter)
    status = "completed"
    last_eval: dict[str, Any] = {}
    last_eval_step = -1
    epoch = start_epoch
    position = (start_epoch, start_batch)  # (epoch, batches of it done) of the latest optimizer step
    try:
        adapter.train_mode()
        for epoch in range(start_epoch, num_epochs):
            skip = start_batch if epoch == start_epoch else 0
            sampler = EpochBatchSampler(len(train_ds), tc.batch_size, seed=tc.seed, epoch=epoch, rank=rank,
                                        num_processes=world, skip=skip)
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
                    _diverged("loss", loss_value, global_step + 1, epoch, i, last_dir)
                grad_norm = None
                if tc.clip_grad is not None:
                    grad_norm = float(accelerator.clip_grad_norm_(trainable, tc.clip_grad))
                    # fp16: an overflow is the gradient scaler's business (it skips the step)
                    if not math.isfinite(grad_norm) and accelerator.scaler is None:
                        _diverged("gradient norm", grad_norm, global_step + 1, epoch, i, last_dir)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                position = (epoch, i + 1) if i + 1 < batches_per_epoch else (epoch + 1, 0)
                cost.add_train(time.perf_counter() - t_window, window_images)
                window_loss = torch.zeros((), device=accelerator.device)
                window_images = 0
                log_losses.append(loss_value)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch + 1, refresh=False)

                if global_step % tc.log_every == 0 and is_main:
                    row = {"step": global_step, "epoch": epoch, "split": "train",
                           "loss": sum(log_losses) / len(log_losses), "lr": scheduler.get_last_lr()[0]}
                    if grad_norm is not None:
                        row["grad_norm"] = grad_norm
                    _log(row, metrics_path, writer, global_step)
                if global_step % tc.log_every == 0:
                    log_losses = []
                done = global_step >= total_steps
                epoch_end = i + 1 == batches_per_epoch
                if tc.eval_every_steps and global_step % tc.eval_every_steps == 0 and not done and not epoch_end:
                    last_eval, last_eval_step = evaluate(epoch), global_step
                    if _patience_spent(es.patience, bad_evals):
                        status = "early_stopped"
                if (tc.save_every_steps and global_step % tc.save_every_steps == 0 and not epoch_end) \
                        or status == "early_stopped":
                    save(ckpt.LAST, *position, resumable=True)
                if stop.agreed(accelerator, global_step) and not epoch_end:
                    save(ckpt.LAST, *position, resumable=True)
                    status = "interrupted"
                if status != "completed" or done:
                    break
                t_window = time.perf_counter()

            if status != "completed":
                break
            # -- end of epoch: cost row, validation, checkpoint -----------------------------------------
            epoch_cost = cost.end_epoch(epoch)
            if is_main:
                _log({"step": global_step, "epoch": epoch, "kind": "epoch_cost", **asdict(epoch_cost),
                      "images_per_second": round(epoch_cost.images_per_second, 3)}, metrics_path, writer,
                     global_step, prefix="cost")
            finished = global_step >= total_steps or epoch + 1 == num_epochs
            every = tc.eval_every_epochs
            if (every and (epoch + 1) % every == 0) or finished:
                if val_ds.records:
                    last_eval, last_eval_step = evaluate(epoch), global_step
                if _patience_spent(es.patience, bad_evals) and not finished:
                    status = "early_stopped"
            save(ckpt.LAST, *position, resumable=True)
            if stop.agreed(accelerator, global_step) and status == "completed" and not finished:
                status = "interrupted"
            if status != "completed" or finished:
                break
    finally:
        bar.close()
        stop.uninstall()

    # -- wrap up ---------------------------------------------------------------------------------------
    if status != "interrupted" and val_ds.records and last_eval_step != global_step:
        last_eval, last_eval_step = evaluate(epoch), global_step
    if not val_ds.records and status != "interrupted":  # nothing to select on: the final model is "best"
        save(ckpt.BEST, epoch, 0, resumable=False)
        best_step = global_step
    result = RunResult(
        run_dir=run_dir, status=status, global_step=global_step,
        epochs_completed=sum(1 for _ in cost.epochs),
        best_metric=best_metric, best_metric_name=es.metric if val_ds.records else None, best_step=best_step,
        best_checkpoint=str(best_dir) if best_dir.exists() else None,
        last_checkpoint=str(last_dir) if last_dir.exists() else None,
        final_metrics={k: v for k, v in last_eval.items() if k not in ("step", "epoch", "split")},
        strategy=strategy_info, cost={**cost.summary(accelerator.device), "feature_cache": cache_info},
        signal=stop.name, exit_code=128 + stop.signum if status == "interrupted" and stop.signum else 0,
    )
    if is_main:
        result.final_metrics["scorer"] = scorer_name
        atomic_write_json(run_dir / "cost.json", result.cost)
        atomic_write_json(run_dir / "result.json", result.to_dict())
        if writer is not None:
            for key in ("wall_seconds", "images_per_second", "peak_memory_bytes"):
                writer.add_scalar(f"cost/{key}", result.cost[key], global_step)
            writer.close()
    accelerator.wait_for_everyone()
    return result


# -- pieces the loop calls -----------------------------------------------------------------------------

def _validate(adapter: CaptionModel, model: Any, dataset: CaptionDataset, batch_size: int, settings: Any,
              scorer: Any, accelerator: Accelerator, gather_object: Any, *, generate: bool) -> dict[str, Any]:
    """Validation loss (every process its share) and, optionally, caption metrics on the subset."""
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
        out.update({k: float(v) for k, v in scorer(rows).items()})
        out["examples"] = [{"id": r["id"], "prediction": r["prediction"], "reference": r["reference"]}
                           for r in rows[:3]]
    return out


def _zero_shot(adapter: CaptionModel, val_ds: CaptionDataset, config: ExperimentConfig, accelerator: Any,
               run_dir: Path, metrics_path: Path, scorer: Any, scorer_name: str,
               strategy_info: dict[str, Any]) -> RunResult:
    from accelerate.utils import gather_object

    cost = CostMeter(num_processes=accelerator.num_processes)
    metrics: dict[str, Any] = {}
    if val_ds.records:
        t0 = time.perf_counter()
        model = accelerator.prepare(adapter.model)
        metrics = _validate(adapter, model, val_ds, config.train.batch_size, config.generation_settings(),
                            scorer, accelerator, gather_object, generate=config.train.val_generate)
        cost.add_eval(time.perf_counter() - t0)
    result = RunResult(run_dir=run_dir, status="zero_shot", global_step=0, epochs_completed=0,
                       best_checkpoint=config.model.name_or_path, final_metrics={**metrics, "scorer": scorer_name},
                       strategy=strategy_info, cost=cost.summary(accelerator.device))
    if accelerator.is_main_process:
        append_jsonl(metrics_path, {"step": 0, "epoch": 0, "split": "validation", **metrics})
        atomic_write_json(run_dir / "cost.json", result.cost)
        atomic_write_json(run_dir / "result.json", result.to_dict())
    return result


def _check_metric_name(tc: Any, scorer: Any, source: str) -> None:
    """Fail before training, not after the first epoch, when early stopping names no reported metric."""
    metric = tc.early_stopping.metric
    if metric in ("val_loss",):
        return
    where = f"{source}: train.early_stopping.metric"
    if not tc.val_generate:
        raise ConfigError(f"{where}: {metric!r} is a caption metric but train.val_generate is false")
    probe = [{"id": "a", "reference": "ct of the chest", "prediction": "ct of the chest"},
             {"id": "b", "reference": "mri of the head", "prediction": "mri of the brain"}]
    available = sorted(scorer(probe))
    if metric not in available:
        raise ConfigError(f"{where}: {metric!r} is not reported (available: val_loss, {', '.join(available)})")


# -- the feature cache ----------------------------------------------------------------------------------

#: auto keeps the features in memory only while all processes' copies take at most this share of it
_CACHE_MEMORY_SHARE = 0.5


def _feature_cache_plan(adapter: CaptionModel, tc: Any, images: CaptionDataset, fsdp: bool, accelerator: Any,
                        source: str) -> dict[str, Any]:
    """Whether to train from cached encoder features (``train.cache_features``): ``{"used": bool, ...}``.

    ``on`` where it cannot work (strategy trains the encoder, unsupported family, FSDP) is a
    :class:`ConfigError` naming the key; ``auto`` says why not in ``reason``. This trainer has no image
    augmentation, so the encoder's output for an image is the same every epoch.
    """
    from medblip.perf.feature_cache import DecoderFromFeatures, encoder_fn, use_feature_cache

    mode = tc.cache_features
    info: dict[str, Any] = {"mode": mode, "used": False, "directory": tc.feature_cache_dir}
    if mode == "off":
        return {**info, "reason": "train.cache_features is off"}
    strategy = adapter.strategy.strategy if adapter.strategy else None
    reasons: list[str] = []
    try:
        use_feature_cache(adapter, "on", augment=False)
    except MedblipError as exc:
        reasons.append(str(exc).removeprefix("cache_features: on is impossible: "))
    if fsdp:
        reasons.append("FSDP shards the model (use DDP)")
    if not reasons:
        inside = {id(p) for p in DecoderFromFeatures(adapter).parameters()}
        outside = [n for n, p in adapter.model.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            reasons.append(f"parameter {outside[0]} trains but is not part of the decoder")
    if reasons:
        if mode == "on":
            raise ConfigError(f"{source}: train.cache_features: on is impossible with strategy {strategy} on "
                              f"family {adapter.family}: {'; '.join(reasons)}. It needs strategy decoder_only on "
                              "blip or vit-gpt2; set train.cache_features to auto or off")
        return {**info, "reason": "; ".join(reasons)}

    # Room for the features: one image through the encoder gives their size.
    with _rng_preserved():
        probe = AdapterCollate(adapter)([images[0]])["pixel_values"]
        per_record = encoder_fn(adapter, autocast=accelerator.autocast)(probe)[0]
    need = per_record.numel() * per_record.element_size() * len(images)
    info["estimated_bytes"] = need
    use = True
    if tc.feature_cache_dir is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes on this machine, each with a copy
        available = _available_memory()
        if available is not None and need * local > _CACHE_MEMORY_SHARE * available:
            why = (f"the features need {need * local / 2**30:.1f} GiB of memory ({local} process(es)), more than "
                   f"{_CACHE_MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available; set "
                   "train.feature_cache_dir to keep them on disk")
            if mode == "on":
                import sys

                print(f"medblip: warning: train.cache_features is on but {why}", file=sys.stderr, flush=True)
            else:
                use = False
                info["reason"] = why
    if accelerator.num_processes > 1:  # every process must take the same path
        agreed = accelerator.reduce(torch.tensor([int(use)], device=accelerator.device), reduction="sum")
        if int(agreed.item()) != accelerator.num_processes and use:
            use = False
            info["reason"] = "another process cannot hold the features in memory"
    info["used"] = use
    return info


def _build_feature_cache(adapter: CaptionModel, records: list[Any], dc: Any, tc: Any, accelerator: Any, *,
                         show_progress: bool) -> tuple[FeatureCache, int]:
    """Encode every training image once; returns the cache and how many images were encoded.

    The key covers the encoder's weights, dtype and autocast, the image size, the processor's config,
    the record ids and the data's file signatures: anything else is a different cache (on disk, a stale
    one is deleted). Distributed: each process encodes its share and the features are gathered, so
    every process holds them all (on disk the main process writes them, the others read).
    """
    import transformers
    from tqdm.auto import tqdm

    from medblip.data.cache import records_fingerprint
    from medblip.perf.attention import sdpa_enabled
    from medblip.perf.feature_cache import FeatureCache, encoder_fn

    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    directory = tc.feature_cache_dir
    writer = directory is None or is_main
    ids = [r.id for r in records]

    def open_cache(parts: Any = None) -> FeatureCache:
        if parts is not None:  # the other processes, after the main one wrote the features
            return FeatureCache(parts, directory, memory=False, prune_stale=False)
        return FeatureCache.for_adapter(adapter, ids=ids, image_size=dc.image_size,
                                        data_fingerprint=records_fingerprint(records), directory=directory,
                                        extra={"mixed_precision": tc.mixed_precision,
                                               "sdpa": sdpa_enabled(adapter),
                                               "transformers": transformers.__version__},
                                        memory=False, prune_stale=is_main)

    with _rng_preserved():  # nothing here may move the streams dropout draws from
        if directory is not None and not is_main:
            accelerator.wait_for_everyone()  # the main process prunes stale caches first
        cache = open_cache()
        if directory is not None and is_main:
            accelerator.wait_for_everyone()
        todo = [i for i, rid in enumerate(ids) if rid not in cache]
        size = tc.batch_size
        chunks = [todo[k:k + size * world] for k in range(0, len(todo), size * world)]
        # every process encodes `size` images per chunk (the last chunk's shares padded with its first image)
        shares = [(c[rank * size:(rank + 1) * size] + [c[0]] * size)[:size] if world > 1 else c for c in chunks]
        loader = torch.utils.data.DataLoader(
            CaptionDataset(records, dc.image_size), batch_sampler=shares, collate_fn=AdapterCollate(adapter),
            num_workers=dc.num_workers, generator=torch.Generator().manual_seed(0))
        encode = encoder_fn(adapter, autocast=accelerator.autocast)
        bar = tqdm(total=len(todo), disable=not show_progress, unit="img", desc="encoder features", leave=False)
        for chunk, batch in zip(chunks, loader, strict=True):
            features = encode(batch["pixel_values"])
            if world > 1:
                gathered = accelerator.gather(features.contiguous())  # (world * size, ...) in process order
                rows = [r * size + j for r in range(world) for j in range(len(chunk[r * size:(r + 1) * size]))]
                features = gathered[rows]
            if writer:
                cache.put([ids[i] for i in chunk], features)
            bar.update(len(chunk))
        bar.close()
        if directory is not None:
            accelerator.wait_for_everyone()
            if not is_main:
                cache = open_cache(cache.parts)
        missing = [rid for rid in ids if rid not in cache]
        if missing:
            raise MedblipError(f"feature cache: no features for {len(missing)} record(s), e.g. {missing[0]!r}")
    return cache, len(todo)


def _record_feature_cache(run_dir: Path, info: dict[str, Any], *, resumed: bool) -> None:
    """Add the feature cache's use and build time to run.json (to the latest resume entry on --resume)."""
    import json

    path = run_dir / "run.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    resumes = data.get("resumes") or []
    (resumes[-1] if resumed and resumes else data)["feature_cache"] = info
    atomic_write_json(path, data)


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def _rng_preserved() -> Any:
    """Every random generator as it was on entry, after the block (the training's dropout stays in step)."""
    saved = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(saved)


def _full_params(model: Any, fsdp: bool, rank0_only: bool = True) -> Any:
    """Under FSDP, materialise the full weights so the adapter can save / generate as usual.

    ``rank0_only``: gather on process 0 only, in CPU memory (saving); else on every process.
    """
    if not fsdp:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(model, writeback=False, rank0_only=rank0_only,
                                                       offload_to_cpu=rank0_only)


def _diverged(what: str, value: float, step: int, epoch: int, batch: int, last_dir: Path) -> None:
    kept = (f"last good checkpoint kept at {last_dir} (step {_checkpoint_step(last_dir)})"
            if (last_dir / ckpt.STATE_FILE).is_file() else "no checkpoint had been written yet")
    raise TrainingDiverged(f"training diverged: {what} is {value} at optimizer step {step} (epoch {epoch + 1}, "
                           f"batch {batch + 1}); {kept}. Lower train.lr or enable train.clip_grad")


def _checkpoint_step(folder: Path) -> int | None:
    try:
        return int(ckpt.load_trainer_state(folder)["global_step"])
    except Exception:
        return None


def _patience_spent(patience: int | None, bad_evals: int) -> bool:
    return patience is not None and bad_evals >= patience


def _log(row: dict[str, Any], path: Path, writer: Any, step: int, prefix: str | None = None) -> None:
    row = {"time": round(time.time(), 3), **row}
    append_jsonl(path, row)
    if writer is None:
        return
    tag = prefix or row.get("split", "misc")
    for key, value in row.items():
        if key in ("step", "epoch", "time") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        writer.add_scalar(f"{tag}/{key}", value, step)
    writer.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    if path.is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step])


def _write_run_json(run_dir: Path, config: ExperimentConfig, strategy: dict[str, Any], accelerator: Any,
                    state: dict[str, Any] | None, kernels: dict[str, Any], label_smoothing: float,
                    validation: str | None = None) -> None:
    import json

    path = run_dir / "run.json"
    dist = {"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device), "kernels": kernels}
    if state is not None and path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        resumes = info.setdefault("resumes", [])
        resumes.append({**run_metadata(seed=config.train.seed), "config": None, "at_step": state["global_step"],
                        "distributed": dist})
    else:
        info = run_metadata(config.model_dump(mode="json"), config.train.seed, strategy=strategy, distributed=dist,
                            label_smoothing=label_smoothing, validation=validation)
    atomic_write_json(path, info)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current optimizer step (a second one kills)."""

    def __init__(self, should_stop: Callable[[int], bool] | None = None) -> None:
        self.signum: int | None = None
        self.should_stop = should_stop
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        import sys

        print(f"\nmedblip: {signal.Signals(signum).name} received: finishing the current step and writing "
              "checkpoints/last (send it again to stop at once)", file=sys.stderr, flush=True)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, accelerator: Any, step: int) -> bool:
        """Whether to stop; every process must agree or the ones that go on would wait forever."""
        local = self.signum is not None or bool(self.should_stop and self.should_stop(step))
        if accelerator.num_processes == 1:
            return local
        flag = accelerator.reduce(torch.tensor([int(local)], device=accelerator.device), reduction="sum")
        return bool(flag.item())


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
