"""``medblip ablation CONFIG``: the same experiment once per fine-tuning strategy, one table.

Every strategy runs with the experiment's data, seed and budget (epochs / max_steps, batch size,
learning-rate schedule): only ``strategy.name`` changes. Each best checkpoint is then captioned on the
test split with the config's generation settings and scored with the evaluation core (every metric
with its bootstrap 95% CI). Output folder ``DIR`` (``--out``, else the config's ``output.dir``)::

    DIR/<strategy>/                 the training run (metrics.jsonl, cost.json, result.json, checkpoints/)
    DIR/<strategy>/eval-<split>/    predictions.jsonl, metrics.json, metrics.md, run.json
    DIR/ablation.md / .csv / .json  the table: metrics with CIs, trainable parameters, time per epoch,
                                    total training time, images/s, peak memory, time relative to full
    DIR/ablation_cost.png           headline metric vs. training time and vs. trainable parameters
    DIR/ablation_params.png         trainable parameters per strategy
    DIR/run.json                    seed, resolved config, versions, git commit

Running it again resumes: a strategy whose run has finished (``result.json``) is not trained again,
an interrupted one continues from ``checkpoints/last``, and captions already in a
``predictions.jsonl`` are kept. A run folder written with a different config is an error rather
than silently mixed into the table.

Cost columns come from each run's ``cost.json`` (training steps only, validation excluded). Peak
memory is the CUDA allocator's peak on a GPU, else the process's peak resident set; both are reset
before each strategy (on Linux for the RSS), so each row measures its own run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medblip.errors import ConfigError, MedblipError
from medblip.formatting import fmt_bytes, fmt_num, fmt_params, fmt_pct, fmt_ratio, fmt_seconds, metric_cell
from medblip.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from medblip.results import Ablation, Scores, StrategyRow, TrainResult, headline_metric

if TYPE_CHECKING:
    from medblip.training.config import ExperimentConfig

DEFAULT_STRATEGIES: tuple[str, ...] = ("full", "decoder_only", "encoder_only", "lora")
ABLATION_JSON, ABLATION_CSV, ABLATION_MD = "ablation.json", "ablation.csv", "ablation.md"
COST_PLOT, PARAMS_PLOT = Ablation.COST_PLOT, "ablation_params.png"
EVAL_KEY = "ablation_eval.json"  # what an evaluation folder was made with (reuse check)
FINISHED = ("completed", "early_stopped")

Log = Callable[[str], None]


@dataclass
class AblationResult:
    """What :func:`run_ablation` did. ``interrupted`` is the run that stopped (signal), if any."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: TrainResult | None = None
    interrupted_strategy: str | None = None

    def row(self, strategy: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["strategy"] == strategy)


# -- strategies and configs ---------------------------------------------------------------------------
def parse_strategies(value: str | Sequence[str] | None) -> list[str]:
    """``"full,lora"`` (or a list) -> ``["full", "lora"]``; unknown or repeated names are errors."""
    from medblip.models.strategies import STRATEGIES

    if value is None:
        return list(DEFAULT_STRATEGIES)
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [s.strip() for s in items if s and s.strip()]
    if not names:
        raise ConfigError("--strategies: give at least one strategy, e.g. full,decoder_only")
    known = [s for s in STRATEGIES if s != "none"]
    for s in names:
        if s not in known:
            raise ConfigError(f"--strategies: unknown strategy {s!r} (known: {', '.join(known)})")
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise ConfigError(f"--strategies: {dup[0]!r} is listed twice")
    return names


def model_family(config: ExperimentConfig) -> str | None:
    """The family of ``config.model`` (from the config, else the checkpoint's config.json); ``None``
    when it cannot be told without loading the model."""
    if config.model.family:
        return config.model.family
    try:
        import medblip.models  # noqa: F401  (fills the registry)
        from medblip.models.loading import resolve_source
        from medblip.models.registry import detect_family

        source, _ = resolve_source(config.model.name_or_path)
        return detect_family(source)
    except MedblipError:
        return None


def check_strategies(config: ExperimentConfig, strategies: Sequence[str], source: str = "<config>") -> None:
    """Fail before any training when the model's family does not support a requested strategy."""
    family = model_family(config)
    if family is None:
        return
    from medblip.models.registry import get_family

    supported = get_family(family).strategies
    bad = [s for s in strategies if s not in supported]
    if bad:
        raise ConfigError(f"{source}: the {family} family does not support strategy {bad[0]!r} "
                          f"(supported: {', '.join(s for s in supported if s != 'none')}); "
                          f"choose others with --strategies")


def strategy_config(config: ExperimentConfig, strategy: str, out: str | Path) -> ExperimentConfig:
    """``config`` with only the strategy name and the run folder (``out/<strategy>``) changed."""
    from medblip.training.config import validate_config

    raw = config.model_dump(mode="json")
    raw["strategy"]["name"] = strategy
    raw["output"]["dir"] = str(Path(out) / strategy)
    if raw.get("name"):
        raw["name"] = f"{raw['name']}-{strategy}"
    return validate_config(raw, f"ablation {strategy}")


def _check_same_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    from medblip.training.run_guard import config_changes

    changes = config_changes(run_dir, cfg)
    if changes:
        raise ConfigError(f"{run_dir} holds a run made with a different config ({changes[0]}); use another --out "
                          "or delete that folder to train it again")


def budget_of(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that must be equal across strategies (recorded in ablation.json)."""
    t = config.train
    return {"epochs": t.epochs, "max_steps": t.max_steps, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
            "lr": t.lr, "schedule": t.schedule, "warmup_ratio": t.warmup_ratio, "warmup_steps": t.warmup_steps,
            "weight_decay": t.weight_decay, "seed": t.seed, "mixed_precision": t.mixed_precision,
            "early_stopping": t.early_stopping.model_dump()}


# -- the stages -------------------------------------------------------------------------------------------
def _reset_peak_memory() -> None:
    """Start a fresh peak-memory measurement for the next run in this process."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001  (no torch / no CUDA: nothing to reset)
        pass
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")


def train_strategy(cfg: ExperimentConfig, *, source: str = "<config>", progress: bool = True,
                   log: Log = print) -> tuple[str, TrainResult | None]:
    """Train (or resume, or skip) one strategy's run. Returns (what happened, the TrainResult if trained)."""
    from medblip.training import checkpoint as ckpt

    run_dir = Path(cfg.output.dir)
    strategy = run_dir.name  # how the run is named in the log (the strategy, in an ablation)
    result_path = run_dir / "result.json"
    resume = False
    if result_path.is_file():
        _check_same_config(run_dir, cfg)
        status = TrainResult.read(result_path).status
        if status in FINISHED:
            log(f"  {strategy}: finished run found in {run_dir} ({status}); not trained again")
            return "skipped", None
        resume = status == "interrupted"
    elif (ckpt.checkpoint_dir(run_dir, ckpt.LAST) / ckpt.STATE_FILE).is_file():
        _check_same_config(run_dir, cfg)
        resume = True
    if resume and not (ckpt.checkpoint_dir(run_dir, ckpt.LAST) / ckpt.STATE_FILE).is_file():
        raise ConfigError(f"{run_dir}: the run was interrupted but holds no resumable checkpoint; "
                          "delete the folder to train this strategy again")
    log(f"  {strategy}: {'resuming' if resume else 'training'} in {run_dir}")
    from medblip.training.trainer import train

    _reset_peak_memory()
    result = train(cfg, resume=resume, source=source, progress=progress)
    return ("resumed" if resume else "trained"), result


def best_checkpoint(run_dir: Path) -> Path:
    from medblip.models.loading import run_checkpoint

    checkpoint = run_checkpoint(run_dir)
    if checkpoint is None:
        raise MedblipError(f"{run_dir}: no checkpoint to evaluate (checkpoints/best and checkpoints/last are missing)")
    return checkpoint


def eval_dir(run_dir: Path, split: str) -> Path:
    return run_dir / f"eval-{split}"


def load_eval_records(config: ExperimentConfig, split: str) -> list[Any]:
    """The evaluation split, loaded with the training data's format, caption options, limit and seed."""
    from medblip.evaluation.predict import load_split

    dc = config.data
    records, _ = load_split(dc.path, split, format=dc.format, limit=dc.limit, seed=dc.seed,
                            caption_options=dc.captions)
    return records


def evaluate_strategy(config: ExperimentConfig, run_dir: Path, records: Sequence[Any], *, split: str,
                      bootstrap: int, score_options: Mapping[str, Any] | None, device: str | None,
                      batch_size: int, progress: bool, fresh: bool = False, log: Log = print) -> dict[str, Any]:
    """Caption ``records`` with the run's best checkpoint and score them.

    Finished work is reused: an evaluation made with the same checkpoint, images, generation and
    scoring settings is read back, and captions already in ``predictions.jsonl`` are kept (unless
    ``fresh``: the run was just (re)trained, so older captions are stale).
    """
    from medblip.evaluation.predict import evaluate
    from medblip.evaluation.scoring import METRICS_JSON

    out = eval_dir(run_dir, split)
    checkpoint = best_checkpoint(run_dir)
    settings = config.generation_settings()
    key = {"checkpoint": str(checkpoint.resolve()), "ids": [str(r.id) for r in records],
           "generation": _asdict(settings), "bootstrap": bootstrap, "seed": config.train.seed,
           "scoring": dict(score_options or {})}
    marker = out / EVAL_KEY
    if not fresh and marker.is_file() and (out / METRICS_JSON).is_file() and _read_json(marker) == key:
        log(f"  {run_dir.name}: evaluation found in {out}; not run again")
        return _read_json(out / METRICS_JSON)
    marker.unlink(missing_ok=True)
    log(f"  {run_dir.name}: captioning {len(records)} {split} image(s) with {checkpoint}")
    res = evaluate(str(checkpoint), config.data.path, out, split=split, format=config.data.format,
                   batch_size=batch_size, generation=settings, family=config.model.family, device=device,
                   dtype=config.model.dtype, bootstrap=bootstrap, seed=config.train.seed,
                   score_options=score_options, progress=progress, overwrite=fresh, records=records)
    atomic_write_json(marker, key)
    return res.metrics


def _asdict(settings: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedblipError(f"{path}: unreadable ({exc.__class__.__name__}); delete it to redo that step") from None
    return data if isinstance(data, dict) else {}


# -- the table ----------------------------------------------------------------------------------------------
def strategy_row(strategy: str, run_dir: Path, metrics_doc: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the table (a :class:`medblip.results.StrategyRow`) from the run's result.json and the
    evaluation's metrics.json."""
    result = TrainResult.read(run_dir)
    scores = Scores.model_validate(metrics_doc)
    cost, strat = result.cost, result.strategy
    row = StrategyRow(
        strategy=strategy, status=result.status, run_dir=str(run_dir), checkpoint=str(best_checkpoint(run_dir)),
        steps=result.global_step, epochs=result.epochs_completed, best_step=result.best_step,
        best_metric_name=result.best_metric_name, best_metric=result.best_metric,
        trainable_params=strat.trainable_params, frozen_params=strat.frozen_params, total_params=strat.total_params,
        trainable_fraction=strat.trainable_fraction, trainable_groups=strat.trainable_groups,
        metrics=scores.metrics, time_per_epoch=cost.time_per_epoch, total_time=cost.train_seconds,
        wall_time=cost.wall_seconds, eval_time=cost.eval_seconds, images_per_second=cost.images_per_second,
        peak_memory_bytes=cost.peak_memory_bytes, peak_memory_kind=cost.peak_memory_kind,
        seconds_per_image=scores.generation_time.seconds_per_image if scores.generation_time else None,
        n_images=scores.n_images, degeneration=scores.degeneration)
    return {**row.model_dump(mode="json", exclude_none=False), "warnings": list(scores.warnings)}


def add_relative_time(rows: list[dict[str, Any]]) -> None:
    """Each row's total training time divided by ``full``'s (1.0 for full; None without a full row)."""
    full = next((r for r in rows if r["strategy"] == "full"), None)
    base = full.get("total_time") if full else None
    for r in rows:
        r["relative_time"] = (r["total_time"] / base) if base and r.get("total_time") is not None else None


def ablation_markdown(doc: Mapping[str, Any]) -> str:
    rows = doc["strategies"]
    metrics = doc["metrics"]
    b = doc.get("budget") or {}
    budget = (f"{b.get('max_steps')} steps" if b.get("max_steps") else f"{b.get('epochs')} epoch(s)") + \
        f", batch {b.get('batch_size')}x{b.get('grad_accum')}, lr {b.get('lr')} ({b.get('schedule')}), seed {b.get('seed')}"
    lines = [
        f"# Fine-tuning strategy ablation: `{doc.get('model')}`",
        "",
        f"Same data (`{doc.get('data')}`), seed and budget for every strategy: {budget}. Each best checkpoint "
        f"is evaluated on the {doc.get('split')} split ({doc.get('n_images')} images) with identical generation "
        "settings; metric cells are value [95% bootstrap CI]. Times are training steps only (validation "
        "excluded); time vs full = total training time / full's.",
        "",
        "| strategy | trainable params | share | time / epoch | total time | time vs full | images/s | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['strategy']} | {fmt_params(r.get('trainable_params'), missing='-')} | "
                     f"{fmt_pct(r.get('trainable_fraction'), missing='-')} | "
                     f"{fmt_seconds(r.get('time_per_epoch'), missing='-')} | "
                     f"{fmt_seconds(r.get('total_time'), missing='-')} | {fmt_ratio(r.get('relative_time'), missing='-')} | "
                     f"{fmt_num(r.get('images_per_second'), 1, missing='-')} | "
                     f"{fmt_bytes(r.get('peak_memory_bytes'), missing='-')} |")
    lines += ["", "| metric | " + " | ".join(r["strategy"] for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(metric_cell(r["metrics"].get(m), missing="-") for r in rows) + " |")
    peak = {r.get("peak_memory_kind") for r in rows} - {None}
    lines += ["", f"Peak memory: {'CUDA allocator peak' if peak == {'cuda'} else 'peak resident set size of the process'}"
              f" during each run. Runs: " + ", ".join(f"`{r['run_dir']}`" for r in rows) + "."]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


CSV_FIXED = ("strategy", "status", "trainable_params", "frozen_params", "trainable_fraction", "time_per_epoch",
             "total_time", "relative_time", "wall_time", "images_per_second", "peak_memory_bytes",
             "peak_memory_kind", "steps", "epochs", "n_images", "seconds_per_image")


def ablation_csv(doc: Mapping[str, Any]) -> str:
    """Wide form: one row per strategy; each metric as ``M``, ``M_ci_low``, ``M_ci_high`` columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    metric_cols = [c for m in doc["metrics"] for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    w.writerow([*CSV_FIXED, *metric_cols])
    for r in doc["strategies"]:
        fixed = [_csv(r.get(k)) for k in CSV_FIXED]
        vals = []
        for m in doc["metrics"]:
            v = r["metrics"].get(m) or {}
            vals += [_csv(v.get("value")), _csv(v.get("ci_low")), _csv(v.get("ci_high"))]
        w.writerow([*fixed, *vals])
    return buf.getvalue()


def _csv(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


def plot_ablation(doc: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """``ablation_cost.png`` (headline metric vs. training time and vs. trainable parameters, 95% CI
    bars) and ``ablation_params.png`` (trainable parameters per strategy)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = doc["strategies"]
    paths: dict[str, Path] = {}
    metric = headline_metric(doc["metrics"])
    pts = [r for r in rows if metric and (r["metrics"].get(metric) or {}).get("value") is not None]
    if pts:
        fig = Figure(figsize=(9.5, 3.8), dpi=110)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.88, wspace=0.28)
        for k, (key, label) in enumerate((("total_time", "total training time (s)"),
                                          ("trainable_params", "trainable parameters"))):
            ax = fig.add_subplot(1, 2, k + 1)
            for i, r in enumerate(pts):
                x = r.get(key)
                if x is None:
                    continue
                v = r["metrics"][metric]
                lo = max(v["value"] - v["ci_low"], 0.0) if v.get("ci_low") is not None else 0.0
                hi = max(v["ci_high"] - v["value"], 0.0) if v.get("ci_high") is not None else 0.0
                ax.errorbar([x], [v["value"]], yerr=[[lo], [hi]], fmt="o", ms=7, capsize=3, color=f"C{i % 10}")
                ax.annotate(r["strategy"], (x, v["value"]), textcoords="offset points", xytext=(6, 5), fontsize=8)
            if key == "trainable_params" and all((r.get(key) or 0) > 0 for r in pts):
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{metric} (95% CI)")
            ax.grid(alpha=0.3)
            ax.margins(x=0.2, y=0.25)
            ax.set_ylim(bottom=0.0)
        fig.suptitle(f"{metric} on {doc.get('split')} vs. training cost", fontsize=10)
        paths["cost_plot"] = _save_fig(fig, out / COST_PLOT)
    with_params = [r for r in rows if r.get("trainable_params") is not None]
    if with_params:
        from matplotlib.ticker import FuncFormatter

        fig = Figure(figsize=(6.0, 3.4), dpi=110)
        fig.subplots_adjust(left=0.18, right=0.97, bottom=0.12, top=0.88)
        ax = fig.add_subplot(1, 1, 1)
        names = [r["strategy"] for r in with_params]
        vals = [max(float(r["trainable_params"]), 1.0) for r in with_params]
        bars = ax.bar(names, vals, color=[f"C{i % 10}" for i in range(len(names))])
        for bar, r in zip(bars, with_params, strict=True):
            share = r.get("trainable_fraction")
            ax.annotate(fmt_params(r["trainable_params"], missing="-") + (f" ({100 * share:.0f}%)" if share is not None else ""),
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(vals) * 1.18)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _tick(y)))
        ax.set_ylabel("trainable parameters")
        ax.set_title("Trainable parameters per strategy", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        paths["params_plot"] = _save_fig(fig, out / PARAMS_PLOT)
    return paths


def _tick(y: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(y) >= div:
            return f"{y / div:g}{unit}"
    return f"{y:g}"


def _save_fig(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())


def write_ablation(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """``ablation.json`` (:class:`medblip.results.Ablation`), ``.csv``, ``.md`` and the plots."""
    paths = {
        "json": Ablation.model_validate(doc).write(out),
        "csv": atomic_write_text(out / ABLATION_CSV, ablation_csv(doc)),
        "markdown": atomic_write_text(out / ABLATION_MD, ablation_markdown(doc)),
    }
    paths.update(plot_ablation(doc, out))
    return paths


# -- the runner -----------------------------------------------------------------------------------------------
def run_ablation(config: ExperimentConfig, out: str | Path | None = None,
                 strategies: Sequence[str] | str | None = None, *, source: str = "<config>", split: str = "test",
                 bootstrap: int = 1000, score_options: Mapping[str, Any] | None = None,
                 device: str | None = None, eval_batch_size: int | None = None, progress: bool = True,
                 log: Log = print, overwrite: bool = False) -> AblationResult:
    """Train every strategy (resuming / skipping finished ones), evaluate each, write the table.

    ``out`` defaults to ``config.output.dir``. ``device``: where the evaluation captions (default:
    CUDA when available); training places itself (accelerate). ``score_options``: options of
    :func:`medblip.evaluation.score_predictions` (e.g. ``{"meteor": False}``). ``log`` receives one
    line per stage. When a run is stopped by a signal the result's ``interrupted`` is set and no
    table is written (rerun to resume). A non-empty ``out`` that holds no ablation is refused unless
    ``overwrite`` (:mod:`medblip.outputs`).
    """
    from medblip.models.strategies import STRATEGIES
    from medblip.outputs import check_output_dir, prepare_output_dir
    from medblip.runinfo import run_metadata
    from medblip.training.config import check_paths

    names = parse_strategies(strategies)
    out = Path(out if out is not None else config.output.dir)
    # its strategy run folders identify an ablation folder written before markers existed
    check_output_dir(out, "ablation", overwrite=overwrite, known_files=(ABLATION_JSON, *STRATEGIES))
    check_paths(config, source)
    check_strategies(config, names, source)
    if bootstrap < 0:
        raise ConfigError(f"bootstrap={bootstrap} must be >= 0")
    if device is None:
        from medblip.models.loading import auto_device

        device = auto_device(None)
    result = AblationResult(out=out)
    if config.train.early_stopping.patience is not None:
        result.notes.append(f"train.early_stopping.patience={config.train.early_stopping.patience}: strategies "
                            "may stop after different numbers of steps (see the steps column)")
    prepare_output_dir(out, "ablation", overwrite=overwrite, known_files=(ABLATION_JSON, *STRATEGIES))
    configs = {s: strategy_config(config, s, out) for s in names}
    atomic_write_json(out / "run.json", run_metadata(
        config.model_dump(mode="json"), config.train.seed, command="ablation", source=source,
        strategies=names, split=split, bootstrap=bootstrap, score_options=dict(score_options or {})))

    # 1. training, strategy by strategy
    trained: dict[str, bool] = {}
    for k, s in enumerate(names, 1):
        log(f"[ablation {k}/{len(names)}] train {s}")
        what, run = train_strategy(configs[s], source=source, progress=progress, log=log)
        trained[s] = what != "skipped"
        if run is not None and run.status == "interrupted":
            result.interrupted, result.interrupted_strategy = run, s
            log(f"  {s}: stopped by {run.signal} at step {run.global_step}; run the same command again to resume")
            return result
        if run is not None:
            log(f"  {s}: {run.status}, {run.global_step} steps, {run.cost.train_seconds:.1f} s of training")

    # 2. evaluation of each best checkpoint, identical generation settings
    records = load_eval_records(config, split)
    batch = eval_batch_size or config.train.batch_size
    docs: dict[str, dict[str, Any]] = {}
    for k, s in enumerate(names, 1):
        log(f"[ablation {k}/{len(names)}] evaluate {s} on {split}")
        docs[s] = evaluate_strategy(config, Path(configs[s].output.dir), records, split=split, bootstrap=bootstrap,
                                    score_options=score_options, device=device, batch_size=batch,
                                    progress=progress, fresh=trained[s], log=log)

    # 3. the table
    rows = [strategy_row(s, Path(configs[s].output.dir), docs[s]) for s in names]
    add_relative_time(rows)
    if "full" not in names:
        result.notes.append("no `full` row: time relative to full is left empty")
    metric_names = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    for r in rows:
        for w in r.pop("warnings"):
            result.notes.append(f"{r['strategy']}: {w}")
    result.notes = list(dict.fromkeys(result.notes))
    doc = {
        "model": config.model.name_or_path, "family": model_family(config), "data": config.data.path,
        "split": split, "n_images": len(records), "seed": config.train.seed, "config": source,
        "budget": budget_of(config), "generation": _asdict(config.generation_settings()),
        "bootstrap": bootstrap, "scoring": dict(score_options or {}), "metrics": metric_names,
        "headline": headline_metric(metric_names), "strategies": rows, "notes": result.notes,
    }
    result.rows, result.metric_names = rows, metric_names
    result.files = write_ablation(doc, out)
    log(f"[ablation] table written to {result.files['markdown']}")
    return result


def summary_lines(result: AblationResult, metric: str | None = None) -> list[str]:
    """A short plain-text table for the terminal: strategy, params, headline metric, time vs full."""
    metric = metric or headline_metric(result.metric_names)
    head = f"{'strategy':<14}{'trainable':>11}{'total time':>12}{'vs full':>9}{'img/s':>8}  {metric or ''}"
    lines = [head]
    for r in result.rows:
        v = (r["metrics"].get(metric) or {}) if metric else {}
        lines.append(f"{r['strategy']:<14}{fmt_params(r.get('trainable_params'), missing='-'):>11}"
                     f"{fmt_seconds(r.get('total_time'), missing='-'):>12}"
                     f"{fmt_ratio(r.get('relative_time'), missing='-'):>9}"
                     f"{fmt_num(r.get('images_per_second'), 1, missing='-'):>8}  {metric_cell(v, missing='-')}")
    return lines
