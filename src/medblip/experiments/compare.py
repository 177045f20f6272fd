"""``medblip compare CONFIG``: several captioning systems on one split, one table, one plot.

A compare config (YAML) lists *systems*; each is a model run through
:func:`medblip.evaluation.predict.predict_with` (``model:``), a model behind an OpenAI-compatible
endpoint (``api:``, e.g. Gemini; see :mod:`medblip.models.api`) or an existing predictions file
(``predictions:``, captions made elsewhere, scored with the same code). All systems are
scored on the ids they share (the intersection; what was left out is reported), every metric gets
its bootstrap 95% CI, and each system is tested against the ``reference`` system per metric with the
evaluation core's paired test. Output folder::

    comparison.json                                    the result (:class:`medblip.results.Comparison`)
    comparison.md / comparison.csv                     the table (metric x system)
    comparison.png                                     grouped bar plot with CI error bars
    run.json                                           config, seed, versions, git commit
    systems/<name>/predictions.jsonl                   model systems (resumable on a rerun)
    systems/<name>/metrics.json, metrics.md,           each system on the shared ids, with its
                  per_image.jsonl                      per-image scores

Relative paths in the config are resolved against the current working directory.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medblip import configfile
from medblip.configfile import KeyedError
from medblip.errors import ConfigError, DataError
from medblip.evaluation.metric_sets import ScoringConfig
from medblip.evaluation.predict import (
    PREDICTIONS_FILE,
    load_split,
    make_settings,
    predict_with,
    read_predictions_file,
    run_info,
    score_and_write,
    seconds_per_image,
)
from medblip.formatting import fmt_num, fmt_p
from medblip.io import atomic_write_bytes, atomic_write_text
from medblip.models.api import ApiConfig
from medblip.results import ComparedSystem, Comparison, Excluded, Scores, Significance
from medblip.runinfo import set_seed

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# -- config ----------------------------------------------------------------------------------------
class SystemConfig(BaseModel):
    """One system: ``model:`` (run by medblip), ``api:`` (an OpenAI-compatible endpoint) or
    ``predictions:`` (an existing JSONL file)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str | None = None
    predictions: str | None = None
    api: ApiConfig | None = None
    family: str | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    model_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int | None = Field(default=None, ge=1)
    device: str | None = None
    dtype: str | None = None
    #: for a predictions system whose file has no ``gen_seconds``: the time to report, if known
    seconds_per_image: float | None = Field(default=None, ge=0)
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must start with a letter or digit and contain only letters, digits, "
                             "'.', '_', '+', '-' (it names the system's output folder)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SystemConfig:
        if sum(x is not None for x in (self.model, self.predictions, self.api)) != 1:
            raise ValueError("give exactly one of 'model', 'api' or 'predictions'")
        if self.model is None:
            allowed = ("batch_size",) if self.api is not None else ()
            for key in ("family", "model_options", "batch_size", "device", "dtype"):
                if key in self.model_fields_set and key not in allowed:
                    raise ValueError(f"'{key}' only applies to a 'model' system")
            if self.generation:
                raise ValueError("'generation' only applies to a 'model' system (an 'api' system has "
                                 "prompt, max_tokens and temperature in its api block)")
        return self

    @property
    def kind(self) -> str:
        return "model" if self.model is not None else "api" if self.api is not None else "predictions"


class CompareConfig(BaseModel):
    """The compare config file (see ``configs/compare_synth.yaml`` for a commented example)."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = None
    split: str = "test"
    format: str = "auto"
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    out: str | None = None
    reference: str
    systems: list[SystemConfig] = Field(min_length=1)
    #: settings shared by every model system (a system's own ``generation`` overrides them)
    generation: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=8, ge=1)
    device: str | None = None
    dtype: str | None = None
    #: bootstrap resamples for the 95% confidence intervals
    bootstrap: int = Field(default=1000, ge=0)
    #: paired test against the reference system, and its number of resamples / permutations
    significance: Literal["bootstrap", "randomization"] = "bootstrap"
    significance_samples: int = Field(default=1000, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    #: options passed to score_predictions: metrics (sets), models, device, ImageCLEF preprocessing, ...
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    #: metrics drawn in the bar plot (default: every metric on a 0..1 scale, plus CIDEr)
    plot_metrics: list[str] | None = None
    #: fail instead of scoring the intersection when the systems' id sets differ
    strict_ids: bool = False

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        names = [s.name for s in self.systems]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n.lower() in seen:
                raise KeyedError(f"systems[{i}].name", f"duplicate system name {n!r}")
            seen.add(n.lower())
        if self.reference not in names:
            raise KeyedError("reference", f"{self.reference!r} is not a system name "
                                         f"(systems: {', '.join(names)})")
        if self.data is None:
            for i, s in enumerate(self.systems):
                if s.predictions is None:
                    raise KeyedError("data", f"required: system {s.name!r} (systems[{i}]) captions images")
        return self


def load_compare_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> CompareConfig:
    """Read and validate a compare config; any problem is one :class:`ConfigError` line naming
    the file and the key. ``overrides``: top-level keys to replace (``None`` values are ignored)."""
    raw = configfile.read_yaml(path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = configfile.validate(CompareConfig, raw, str(path), {k for k, v in (overrides or {}).items() if v is not None})
    # generation keys are checked here so the message names the key path
    for i, s in enumerate(cfg.systems):
        if s.model is not None:
            make_settings({**cfg.generation, **s.generation}, source=f"{path}: systems[{i}].generation")
        elif s.predictions is not None and not Path(s.predictions).expanduser().is_file():
            raise ConfigError(f"{path}: systems[{i}].predictions: no such file: {s.predictions}")
    if cfg.generation:
        make_settings(cfg.generation, source=f"{path}: generation")
    if cfg.data is not None and not Path(cfg.data).expanduser().exists():
        raise ConfigError(f"{path}: data: no such file or folder: {cfg.data}")
    return cfg


# -- runner ----------------------------------------------------------------------------------------
def run_compare(config: CompareConfig | str | Path, *, out: str | Path | None = None,
                progress: bool = True, config_path: str | Path | None = None, overwrite: bool = False) -> Comparison:
    """Run/load every system, score them on their shared ids and write the comparison files.

    A non-empty ``out`` that holds no comparison is refused unless ``overwrite`` (:mod:`medblip.outputs`).
    """
    from medblip.outputs import prepare_output_dir

    if not isinstance(config, CompareConfig):
        config_path = config
        config = load_compare_config(config)
    cfg = config
    out = Path(out or cfg.out or Path("runs") / "compare" / (Path(config_path).stem if config_path else "compare"))
    out = prepare_output_dir(out, "compare", overwrite=overwrite, known_files=("comparison.json", "systems"))
    notes: list[str] = []
    where = str(config_path) if config_path else "compare config"

    records = None
    data_refs: dict[str, str] | None = None
    split = cfg.split
    if cfg.data is not None:
        records, report = load_split(cfg.data, cfg.split, format=cfg.format, limit=cfg.limit, seed=cfg.seed)
        split = records[0].split
        data_refs = {r.id: r.caption for r in records}
        notes.append(report.summary())

    # 1. predictions-file systems (cheap) first, so id problems show before any model runs
    own: dict[str, dict[str, dict[str, Any]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for s in cfg.systems:
        if s.predictions is None:
            continue
        pf = read_predictions_file(s.predictions, required=("id", "prediction"))
        notes.extend(f"{s.name}: {n}" for n in pf.notes)
        rows = {r["id"]: r for r in pf.rows}
        if not rows:
            raise DataError(f"{s.predictions}: no predictions (system {s.name!r})")
        if data_refs is not None:
            differ = [i for i, r in rows.items() if i in data_refs and isinstance(r.get("reference"), str)
                      and r["reference"].strip() != data_refs[i].strip()]
            if differ:
                notes.append(f"{s.name}: {len(differ)} reference(s) in {s.predictions} differ from the "
                             f"dataset's captions (e.g. id {differ[0]}); the dataset's are used")
        own[s.name] = rows
        info[s.name] = {"kind": "predictions", "source": str(Path(s.predictions).resolve()),
                        "family": None, "generation": None, "folder": out / "systems" / s.name}

    def shared() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        # a model system not run yet will cover every id of the split
        planned = {s.name: own.get(s.name) or {i: {"reference": c} for i, c in (data_refs or {}).items()}
                   for s in cfg.systems}
        common, excluded, refs = _shared_ids(cfg, planned, data_refs)
        if excluded["total"] and cfg.strict_ids:
            raise DataError(f"{where}: the systems' id sets differ and strict_ids is set: {excluded['total']} "
                            f"id(s) not shared ({_excluded_summary(excluded)})")
        if not common:
            raise DataError(f"{where}: the systems share no image ids on split {split!r} "
                            f"({_excluded_summary(excluded)}); nothing to compare")
        return common, excluded, refs

    shared()
    _precheck_models(cfg, records or [], out, where)

    # 2. model and api systems: caption the whole split (resumable), each into its own folder
    for i, s in enumerate(cfg.systems):
        if s.predictions is not None:
            continue
        folder = out / "systems" / s.name
        set_seed(cfg.seed)  # only sampling (do_sample) draws random numbers
        if s.api is not None:
            from medblip.models.api import predict_through_api

            run = predict_through_api(s.api, records, folder / PREDICTIONS_FILE,  # type: ignore[arg-type]
                                      batch_size=s.batch_size, progress=progress, desc=s.name)
            notes.extend(f"{s.name}: {n}" for n in run.notes)
            own[s.name] = {r["id"]: r for r in run.rows}
            info[s.name] = {"kind": "api", "source": run.rows[0].get("model"), "family": None,
                            "generation": run.rows[0].get("generation"), "folder": folder}
            continue
        # every system decodes with the config's settings over medblip's defaults (complete settings: not
        # each checkpoint's saved ones), so that the systems are compared under the same decoding
        run = predict_with(
            s.model, records, folder / PREDICTIONS_FILE,  # type: ignore[arg-type]
            generation=make_settings({**cfg.generation, **s.generation}, source=f"{where}: systems[{i}].generation"),
            family=s.family,
            device=s.device or cfg.device, dtype=s.dtype or cfg.dtype, model_options=s.model_options,
            batch_size=s.batch_size or cfg.batch_size, progress=progress, desc=s.name,
            source=f"{where}: systems[{i}].generation")
        notes.extend(f"{s.name}: {n}" for n in run.notes)
        own[s.name] = {r["id"]: r for r in run.rows}
        first = run.rows[0]
        info[s.name] = {"kind": "model", "source": first.get("model", s.model), "family": first.get("family"),
                        "generation": first.get("generation"), "folder": folder}

    common, excluded, refs = shared()
    if excluded["total"]:
        msg = (f"scoring {len(common)} image(s) shared by all systems; {excluded['total']} id(s) excluded "
               f"({_excluded_summary(excluded)})")
        log.warning(msg)
        notes.append(msg)

    # 3. score each system on the shared ids (CLIPScore reads the dataset's images, else the rows' own)
    images = {str(r.id): r.image for r in records or []}
    scored: dict[str, list[dict[str, Any]]] = {}
    results: list[ComparedSystem] = []
    for s in cfg.systems:
        rows = [{**own[s.name][i], "id": i, "reference": refs[i]} for i in common]
        rows = [{**r, "image": images[r["id"]] if r["id"] in images else _own_image(r, s.predictions)} for r in rows]
        scored[s.name] = rows
        folder = info[s.name]["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        metrics, _ = score_and_write(rows, folder, bootstrap=cfg.bootstrap, seed=cfg.seed,
                                     score_options=cfg.scoring.options(), title=f"{s.name} on {split} ({len(rows)} images)")
        scores = Scores.model_validate(metrics)
        spi = seconds_per_image(rows)
        if spi is None and s.seconds_per_image is not None:
            spi = s.seconds_per_image
        results.append(ComparedSystem(
            name=s.name, kind=info[s.name]["kind"], source=info[s.name]["source"], n_predictions=len(own[s.name]),
            metrics=scores.metrics, seconds_per_image=spi, generation=info[s.name]["generation"],
            family=info[s.name]["family"], diagnostics=scores.degeneration, warnings=scores.warnings,
            folder=str(folder), description=s.description))
    metric_names = list(dict.fromkeys(m for r in results for m in r.metrics))

    # 4. paired significance against the reference, per metric
    ref_rows = scored[cfg.reference]
    for r in results:
        if r.name == cfg.reference:
            continue
        pvals = paired_pvalues(ref_rows, scored[r.name], metric_names, method=cfg.significance,
                               samples=cfg.significance_samples, seed=cfg.seed, score_options=cfg.scoring.options())
        for m, p in pvals.items():
            if m in r.metrics:
                r.metrics[m].p_value = p

    comp = Comparison(
        out=str(out), reference=cfg.reference, split=split, data=cfg.data, format=cfg.format, n_images=len(common),
        metrics=metric_names, systems=results, excluded=Excluded.model_validate(excluded),
        significance=Significance(method=cfg.significance, samples=cfg.significance_samples, alpha=cfg.alpha,
                                  bootstrap=cfg.bootstrap, ci=0.95),
        notes=notes)
    write_comparison(comp, out, alpha=cfg.alpha, plot_metrics=cfg.plot_metrics)
    run_info(out, {"command": "compare", "config_file": str(config_path) if config_path else None,
                   **cfg.model_dump()}, seed=cfg.seed, n_images=len(common))
    return comp


def _own_image(row: Mapping[str, Any], predictions: str | None) -> Any:
    """A predictions-file row's ``image`` field, relative to that file's folder."""
    src = row.get("image")
    if not isinstance(src, str) or not src or predictions is None:
        return None
    path = Path(src).expanduser()
    return path if path.is_absolute() else Path(predictions).expanduser().parent / path


def _precheck_models(cfg: CompareConfig, records: Sequence[Any], out: Path, where: str) -> None:
    """Fail before any model runs when a model system that still has captions to make names a
    local checkpoint folder that does not exist (a finished system needs no model)."""
    from medblip.models.loading import resolve_checkpoint

    ids = {str(r.id) for r in records}
    for i, s in enumerate(cfg.systems):
        if s.model is None:
            continue
        pf = out / "systems" / s.name / PREDICTIONS_FILE
        if pf.exists() and ids <= set(read_predictions_file(pf).by_id):
            continue
        checkpoint, _, _ = resolve_checkpoint(s.model)
        path = Path(checkpoint).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ConfigError(f"{where}: systems[{i}].model: {s.model} is neither a checkpoint folder "
                                  f"(no config.json) nor a training run folder (no checkpoints/best or last)")
            continue
        looks_local = (checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1
                       or Path(checkpoint.split("/")[0]).is_dir())
        if looks_local:
            raise ConfigError(f"{where}: systems[{i}].model: no such checkpoint or run folder: {s.model}")


def _shared_ids(cfg: CompareConfig, own: Mapping[str, Mapping[str, dict[str, Any]]],
                data_refs: Mapping[str, str] | None) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """Ids every system has (in data order, else the reference system's order), what was left out
    and the reference caption of each shared id."""
    names = [s.name for s in cfg.systems]
    if data_refs is not None:
        universe = list(data_refs)
    else:
        universe = list(dict.fromkeys(i for n in [cfg.reference, *names] for i in own[n]))
    present = set(universe)
    for n in names:
        present &= set(own[n])
    excluded: dict[str, Any] = {"total": 0, "per_system": {}, "examples": [], "reference_mismatch": 0}
    refs: dict[str, Any] = {}
    mismatch: list[str] = []
    for i in universe:
        if i not in present:
            continue
        if data_refs is not None:
            refs[i] = data_refs[i]
            continue
        given = {_ref_key(own[n][i].get("reference")): own[n][i].get("reference") for n in names}
        given.pop(None, None)
        if not given:
            raise DataError(f"id {i!r}: no system gives a 'reference' caption and the config has no 'data'")
        if len(given) > 1:
            mismatch.append(i)
            continue
        refs[i] = next(iter(given.values()))
    common = [i for i in universe if i in refs]
    all_ids = set(universe) | {i for n in names for i in own[n]}
    common_set = set(common)
    for n in names:
        mine = set(own[n])
        missing = len(set(universe) - mine)
        extra = len(mine - set(universe)) if data_refs is not None else 0
        if missing or extra:
            excluded["per_system"][n] = {"missing": missing, "not_in_data": extra}
    excluded["total"] = len(all_ids - common_set)
    excluded["examples"] = sorted(all_ids - common_set)[:5]
    excluded["reference_mismatch"] = len(mismatch)
    if mismatch:
        excluded["reference_mismatch_examples"] = mismatch[:5]
    return common, excluded, refs


def _ref_key(ref: Any) -> Any:
    if ref is None or isinstance(ref, str):
        return ref
    return tuple(ref) if isinstance(ref, list) else repr(ref)


def _excluded_summary(ex: Mapping[str, Any]) -> str:
    parts = []
    for n, d in ex["per_system"].items():
        bits = []
        if d["missing"]:
            bits.append(f"{d['missing']} missing")
        if d["not_in_data"]:
            bits.append(f"{d['not_in_data']} not in the data split")
        parts.append(f"{n}: {', '.join(bits)}")
    if ex.get("reference_mismatch"):
        parts.append(f"{ex['reference_mismatch']} with differing reference captions")
    if ex.get("examples"):
        parts.append(f"e.g. {', '.join(ex['examples'][:3])}")
    return "; ".join(parts)


def paired_pvalues(rows_ref: Sequence[Mapping[str, Any]], rows_sys: Sequence[Mapping[str, Any]],
                   metrics: Sequence[str], *, method: str, samples: int, seed: int,
                   score_options: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """Per metric, the paired test's p-value of ``rows_sys`` vs ``rows_ref`` (same ids, same order;
    None for a metric the test does not compute)."""
    from medblip.evaluation import paired_test

    a = [{"id": r["id"], "reference": r["reference"], "prediction": r["prediction"], "image": r.get("image")}
         for r in rows_ref]
    b = [{"id": r["id"], "reference": r["reference"], "prediction": r["prediction"]} for r in rows_sys]
    res = paired_test(a, b, test_metrics=list(metrics), method=method, n=samples, seed=seed,
                      **dict(score_options or {}))
    return {m: res[m]["p_value"] for m in metrics}


# -- writers ---------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    return fmt_num(x, digits, missing="-")


def comparison_markdown(comp: Comparison, *, alpha: float = 0.05) -> str:
    names = [s.name + (" (ref)" if s.name == comp.reference else "") for s in comp.systems]
    lines = [
        f"# Comparison on {comp.split} ({comp.n_images} images)",
        "",
        f"Each cell: value [95% CI] and, for systems other than the reference `{comp.reference}`, the "
        f"p-value of a paired {comp.significance.method} test "
        f"({comp.significance.samples} samples); * marks p < {alpha:g}.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for m in comp.metrics:
        cells = []
        for s in comp.systems:
            v = s.metrics.get(m)
            if v is None:
                cells.append("-")
                continue
            cell = _fmt(v.value)
            if v.ci_low is not None and v.ci_high is not None:
                cell += f" [{_fmt(v.ci_low)}, {_fmt(v.ci_high)}]"
            if s.name != comp.reference:
                cell += f" p={fmt_p(v.p_value, missing='-')}" + ("*" if v.p_value is not None and v.p_value < alpha else "")
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("| generation s/image | " + " | ".join(_fmt(s.seconds_per_image) for s in comp.systems) + " |")
    for label, key, digits in (("distinct captions", "distinct_caption_fraction", 3),
                               ("mean length (words)", "mean_length", 1)):
        if any(s.diagnostics for s in comp.systems):
            lines.append(f"| {label} | " + " | ".join(_fmt(getattr(s.diagnostics, key, None), digits)
                                                      for s in comp.systems) + " |")
    lines.append("")
    lines.append("| system | kind | source | predictions | description |")
    lines.append("|---|---|---|---|---|")
    for s in comp.systems:
        kind = s.kind + (f" ({s.family})" if s.family else "")
        desc = (s.description or "").replace("|", "\\|")
        lines.append(f"| {s.name} | {kind} | `{s.source}` | {s.n_predictions} | {desc} |")
    warns = [(s.name, w) for s in comp.systems for w in s.warnings]
    if warns or comp.excluded.total:
        lines += ["", "## Notes", ""]
        if comp.excluded.total:
            lines.append(f"- {comp.excluded.total} id(s) not shared by every system were excluded: "
                         f"{_excluded_summary(comp.excluded.model_dump())}.")
        lines += [f"- **{n}**: {w}" for n, w in warns]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("system", "kind", "metric", "value", "ci_low", "ci_high", "p_value", "significant",
               "reference", "n_images", "seconds_per_image")


def comparison_csv(comp: Comparison, *, alpha: float = 0.05) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in comp.systems:
        for m in comp.metrics:
            v = s.metrics.get(m)
            if v is None:
                continue
            sig = "" if v.p_value is None else str(v.p_value < alpha).lower()
            w.writerow([s.name, s.kind, m, _csv(v.value), _csv(v.ci_low), _csv(v.ci_high), _csv(v.p_value),
                        sig, comp.reference, comp.n_images, _csv(s.seconds_per_image)])
    return buf.getvalue()


def _csv(x: float | None) -> str:
    return "" if x is None else repr(float(x))


_GROUP_TITLES = {"caption": "caption metrics", "clinical": "clinical correctness", "embedding": "embedding",
                 "image-text": "image-text"}


def plot_comparison(comp: Comparison, path: str | Path, metrics: Sequence[str] | None = None,
                    *, alpha: float = 0.05) -> Path:
    """Grouped bars (one group per metric, one bar per system) with 95% CI error bars, as PNG.

    One panel per metric group (caption, clinical, ...); metrics above 1 (CIDEr on good systems)
    get a panel of their own so the 0..1 metrics stay readable. ``*`` over a bar: p < ``alpha``
    against the reference system.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    chosen = list(metrics) if metrics else comp.metrics
    unknown = [m for m in chosen if m not in comp.metrics]
    if unknown:
        raise ConfigError(f"plot_metrics: unknown metric {unknown[0]!r} (metrics: {', '.join(comp.metrics)})")

    def top(m: str) -> float:
        vals = [x for s in comp.systems if (v := s.metrics.get(m)) for x in (v.value, v.ci_high)
                if x is not None and math.isfinite(x)]
        return max(vals, default=0.0)

    def group_of(m: str) -> str:
        return next((v.group for s in comp.systems if (v := s.metrics.get(m)) and v.group), "metrics")

    panels: dict[tuple[str, bool], list[str]] = {}
    for m in chosen:
        panels.setdefault((group_of(m), top(m) > 1.0 + 1e-9), []).append(m)
    n = len(comp.systems)
    n_bars = sum(len(p) for p in panels.values()) * max(n, 1)
    fig_w = min(24.0, max(6.0, 2.0 + 0.22 * n_bars + 0.6 * len(panels)))
    fig, axes = plt.subplots(1, len(panels), figsize=(fig_w, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": [len(p) for p in panels.values()]})
    width = 0.8 / max(n, 1)
    colors = plt.get_cmap("tab10")
    for ax, ((group, large), names) in zip(axes[0], panels.items(), strict=True):
        x = np.arange(len(names))
        for k, s in enumerate(comp.systems):
            vals, err_lo, err_hi, stars = [], [], [], []
            for m in names:
                v = s.metrics.get(m)
                val = v.value if v and v.value is not None and math.isfinite(v.value) else np.nan
                vals.append(val)
                lo = v.ci_low if v and v.ci_low is not None else val
                hi = v.ci_high if v and v.ci_high is not None else val
                err_lo.append(max(val - lo, 0.0) if np.isfinite(val) else 0.0)
                err_hi.append(max(hi - val, 0.0) if np.isfinite(val) else 0.0)
                stars.append(bool(v and v.p_value is not None and v.p_value < alpha))
            label = s.name + (" (ref)" if s.name == comp.reference else "")
            xs = x + (k - (n - 1) / 2) * width
            ax.bar(xs, vals, width, yerr=[err_lo, err_hi], capsize=2, label=label, color=colors(k % 10),
                   error_kw={"elinewidth": 0.8})
            for xi, val, eh, star in zip(xs, vals, err_hi, stars, strict=True):
                if star and np.isfinite(val):
                    ax.annotate("*", (xi, val + eh), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(_GROUP_TITLES.get(group, group), fontsize=9)
        if not large:
            ax.set_ylim(0, 1.08)
    axes[0][0].set_ylabel("score, 95% CI")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=min(n, 4), frameon=False)
    fig.suptitle(f"{comp.split}: {comp.n_images} images; * p < {alpha:g} vs {comp.reference} "
                 f"(paired {comp.significance.method})", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_comparison(comp: Comparison, out: str | Path, *, alpha: float = 0.05,
                     plot_metrics: Sequence[str] | None = None) -> dict[str, Path]:
    out = Path(out)
    paths = {
        "markdown": atomic_write_text(out / "comparison.md", comparison_markdown(comp, alpha=alpha)),
        "csv": atomic_write_text(out / "comparison.csv", comparison_csv(comp, alpha=alpha)),
        "json": comp.write(out),
    }
    paths["png"] = plot_comparison(comp, out / "comparison.png", plot_metrics, alpha=alpha)
    return paths


__all__ = ["CompareConfig", "SystemConfig", "load_compare_config", "run_compare", "write_comparison"]
