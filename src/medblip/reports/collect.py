"""Gather run folders into one report model (:class:`Report`) from the results their producers wrote.

The inputs are any mix of folders written by other medblip commands, found recursively by their
marker files (a folder can be several kinds at once); each result is read through its type in
:mod:`medblip.results`::

    kind        marker                                  read as
    evaluate    predictions.jsonl and/or metrics.json   Scores, Prediction rows, ImageScores rows
    compare     comparison.json                         Comparison (+ each system's predictions and
                                                        systems/<name>/per_image.jsonl)
    train       result.json, metrics.jsonl              TrainResult, LogRow rows
                (or config.resolved.yaml)
    explain     summary.json, or a lone explanation.json  ExplainSummary, Explanation (+ overlays, grid)
    grounding   grounding.json                          Grounding
    ablation    ablation.json (+ *.png beside it)       Ablation
    dataset     any small *.json holding ``splits`` and ``load_report`` (``medblip data validate --json``)

Every section is optional: a missing result, one of another schema version or one that does not fit
its type adds a note naming the file and leaves its part out; nothing here raises for a producer file.

Per-image scores (CIDEr, token F1, the clinical concepts of each caption) are the evaluation's
``per_image.jsonl``; only a predictions file that was never scored (an evaluation stopped before its
scoring) has them computed here, by the same function, with a note.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from medblip.errors import DataError, MedblipError
from medblip.evaluation.clinical import Concepts, load_lexicon, term_spans
from medblip.evaluation.per_image import image_scores
from medblip.evaluation.predictions import PREDICTIONS_FILE, read_predictions_file
from medblip.evaluation.scoring import metric_group
from medblip.explain.render import range_text
from medblip.explain.words import rank_words
from medblip.io import read_jsonl_lines
from medblip.results import (
    Ablation,
    Comparison,
    ExplainSummary,
    Explanation,
    Grounding,
    ImageScores,
    LogRow,
    Metric,
    Prediction,
    Result,
    ResultError,
    Scores,
    TrainResult,
    headline_metric,
    read_rows,
)

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Result)

#: folders never searched for run folders
_SKIP_DIRS = {"checkpoints", "tensorboard", "overlays", "assets", "__pycache__", "node_modules", ".git"}
#: JSON files with a known meaning (never taken for a dataset summary)
_KNOWN_JSON = {"metrics.json", "comparison.json", "run.json", "cost.json", "result.json", "explanation.json",
               "summary.json", "grounding.json", "ablation.json", "report.json", "config.json",
               "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "preprocessor_config.json", "vocab.json", "adapter_config.json", "trainer_state.json"}
_MAX_JSON_BYTES = 20_000_000
_MAX_DEPTH = 8

#: names that mark a metric where lower is better (everything else: higher is better)
_LOWER_BETTER = re.compile(r"loss|error|perplexity|repeat|repetition|degenera|hallucin|empty|copy|most_common|token_run|"
                           r"seconds|time|memory|(^|[_\s-])wer($|[_\s-])", re.I)


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER_BETTER.search(metric))


# -- the model -------------------------------------------------------------------------------------
@dataclass
class Report:
    """Everything the renderers need; ``to_dict`` is what report.json holds.

    Image fields hold the *source* file (``src``) until :func:`medblip.reports.build.build_report`
    copies it into ``assets/`` and records the relative path as ``asset``.
    """

    title: str
    created: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    files_read: list[str] = field(default_factory=list)
    #: findings about the inputs (left out, unreadable, computed here)
    notes: list[str] = field(default_factory=list)
    #: the producers' progress lines (resuming, records loaded), apart from the findings
    log: list[str] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    ablations: list[dict[str, Any]] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    systems: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, Any] = field(default_factory=dict)
    explanations: list[dict[str, Any]] = field(default_factory=list)
    grounding: list[dict[str, Any]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    score_name: str | None = None
    #: assets/ path of the training-curves figure and its caption (set when the report is built)
    training_plot: str | None = None
    training_caption: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _public(asdict(self))


def _public(obj: Any) -> Any:
    """Drop private keys (``_bytes`` images, parsed rows) and non-finite floats for JSON."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_public(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bytes):
        return None
    return obj


class _Reader:
    """Reads producer files, remembering what was read and turning every problem into a note."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.read: list[str] = []
        #: producers' progress lines (resuming, records loaded): kept, but apart from the findings
        self.log: list[str] = []

    def note(self, msg: str) -> None:
        log.warning(msg)
        self.notes.append(msg)

    def result(self, model: type[R], path: Path, *, quiet_missing: bool = False) -> R | None:
        """A typed result (``path``: the file, or its folder); None with a note when it cannot be read."""
        path = path / model.FILE if path.is_dir() else path
        if not path.is_file():
            if not quiet_missing:
                self.note(f"{path}: not found; its part of the report is left out")
            return None
        try:
            out = model.read(path)
        except ResultError as exc:
            self.note(f"{exc}; left out")
            return None
        self.read.append(str(path))
        return out

    def json(self, path: Path) -> Any:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.note(f"{path}: unreadable ({type(exc).__name__}: {exc}); left out")
            return None
        self.read.append(str(path))
        return data

    def log_rows(self, path: Path) -> list[LogRow]:
        """``metrics.jsonl``: a malformed line is skipped with a note (a run may be writing it)."""
        rows: list[LogRow] = []
        bad = 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            self.note(f"{path}: unreadable ({exc}); left out")
            return rows
        for line in lines:
            if not line.strip():
                continue
            try:
                rows.append(LogRow.model_validate_json(line))
            except ValueError:
                bad += 1
        if bad:
            self.note(f"{path}: {bad} malformed line(s) skipped")
        self.read.append(str(path))
        return rows

    def predictions(self, path: Path) -> list[dict[str, Any]]:
        try:
            read = read_predictions_file(path)
            read_rows(Prediction, read.rows, str(path))  # every row a Prediction, or one note
        except DataError as exc:
            self.note(f"{exc}; its examples are left out")
            return []
        for n in read.notes:
            self.note(n)
        self.read.append(str(path))
        return read.rows

    def per_image(self, folder: Path) -> dict[str, ImageScores] | None:
        path = folder / ImageScores.FILE
        if not path.is_file():
            return None
        try:
            rows = read_rows(ImageScores, (obj for _, obj in read_jsonl_lines(path)), str(path))
        except DataError as exc:
            self.note(f"{exc}; its per-image scores are left out")
            return None
        self.read.append(str(path))
        return {r.id: r for r in rows}


# -- tables ----------------------------------------------------------------------------------------
def metric_groups(metrics: Sequence[str], groups: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Metrics split into caption / clinical / embedding / image-text tables, each in the given order.

    ``groups`` is the producer's ``group`` per metric; a metric without one (a training run's validation
    metrics) is grouped as the evaluation groups it.
    """
    order: dict[str, list[str]] = {}
    for m in metrics:
        order.setdefault(str((groups or {}).get(m) or metric_group(m)), []).append(m)
    titles = {"caption": "Caption metrics", "clinical": "Clinical correctness", "embedding": "Embedding similarity",
              "image-text": "Image-text agreement"}
    return [{"name": g, "title": titles.get(g, g.capitalize()), "metrics": ms} for g, ms in order.items()]


def best_per_metric(systems: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, list[str]]:
    """Metric -> names of the systems with the best value (ties all win), among comparable rows only.

    Comparable: scored on the same images (a system's ``image_set``; systems without one share a set)
    and not collapsed (``diagnostics["collapsed"]``: a model that writes one caption for every image
    can top a clinical column by chance). A column where every comparable row ties has no best.
    """
    best: dict[str, list[str]] = {}
    for m in metrics:
        by_set: dict[Any, list[tuple[str, float]]] = {}
        for s in systems:
            v = (s["metrics"].get(m) or {}).get("value")
            if v is not None and not (s.get("diagnostics") or {}).get("collapsed"):
                by_set.setdefault(s.get("image_set"), []).append((s["name"], v))
        best[m] = []
        for vals in by_set.values():
            if len(vals) < 2:
                continue
            target = (min if lower_is_better(m) else max)(v for _, v in vals)
            top = [n for n, v in vals if abs(v - target) <= 1e-12 * max(1.0, abs(target))]
            if len(top) < len(vals):
                best[m] += top
    return best


def significance_mark(p: float | None, alpha: float) -> str:
    if p is None or p >= alpha:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


#: notes a producer logged about its own progress (not findings about the results)
_LOG_NOTE = re.compile(r": resuming - \d+ of \d+ image|^\d+ processes: |\d+ records kept \(|"
                       r"already predicted|image\(s\) to caption", re.I)
_COLLAPSE_ADVICE = re.compile(r"\s*\(check learning rate[^)]*\)")


def is_log_note(note: str) -> bool:
    """A progress line (resuming, records loaded, processes) rather than a finding about the results."""
    return bool(_LOG_NOTE.search(note))


def fine_tuned(model: str | None) -> bool | None:
    """Whether ``model`` is a checkpoint of a medblip training run (``RUN/checkpoints/NAME`` beside the
    run's result.json, status not ``zero_shot``); None when it is not a local folder."""
    if not model:
        return None
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    try:
        return TrainResult.read(run / TrainResult.FILE).status != "zero_shot"
    except ResultError:
        return False


def system_warnings(warnings: Sequence[str], kind: str | None, model: str | None) -> list[str]:
    """A system's warnings, each once, with advice that fits the system: the degeneration check's
    "check learning rate" only for a model medblip fine-tuned; a zero-shot model was never trained on
    this domain."""
    trained = fine_tuned(model) if kind in (None, "model", "evaluate") else None
    out: list[str] = []
    for w in warnings:
        if _COLLAPSE_ADVICE.search(w):
            if trained:
                advice = " (check the learning rate, the frozen parts and the data)"
            elif kind == "predictions" or (trained is None and kind != "api"):
                advice = ""
            else:
                advice = ("; a zero-shot model: it was not trained on this domain, so this is expected "
                          "before fine-tuning")
            w = _COLLAPSE_ADVICE.sub(advice, w)
        if w not in out:
            out.append(w)
    return out


def metric_choice(scores: Scores) -> dict[str, Any]:
    """What a scoring run was asked to compute and what it used: the metric sets and single metrics
    chosen (``--metrics``), the model behind each model-based metric (with its revision), and the
    metrics that could not be computed, with the reason."""
    from medblip.evaluation.metric_sets import DEFAULT_METRICS

    settings = scores.settings
    models = [{"metric": name, "model": info.get("model"), "revision": info.get("revision")}
              for name, info in (scores.model_metrics or {}).items() if info.get("model")]
    return {"sets": list(settings.get("metrics") or DEFAULT_METRICS), "parts": list(settings.get("metric_parts") or []),
            "imageclef_preprocessing": bool(settings.get("imageclef")), "models": models,
            "unavailable": dict(scores.unavailable or {})}


def _image_set(scores: Scores | None, per_image: Mapping[str, Any] | None) -> str | None:
    """What identifies the images a system was scored on: its per-image ids, else data/split/count."""
    if per_image:
        import hashlib

        return hashlib.sha256("\n".join(sorted(per_image)).encode()).hexdigest()[:16]
    if scores is None:
        return None
    return f"{scores.data}|{scores.split}|{scores.n_images}"


def _metric_dicts(metrics: Mapping[str, Metric]) -> dict[str, dict[str, Any]]:
    return {m: v.model_dump() for m, v in metrics.items()}


def _diagnostics(scores: Any) -> dict[str, Any]:
    """A Degeneration's numbers plus ``collapsed`` (empty without one)."""
    return {**scores.numbers(), "collapsed": scores.collapsed} if scores is not None else {}


def _table(name: str, source: str, systems: list[dict[str, Any]], *, reference: str | None, split: str | None,
           n_images: Any, alpha: float, significance: dict[str, Any], notes: list[str],
           excluded: dict[str, Any], plot: dict[str, Any] | None,
           metric_choices: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A comparison table of the report (a comparison, or evaluations side by side).

    ``metric_choices``: per system, :func:`metric_choice` (shown once when every system has the same).
    """
    metric_names = list(dict.fromkeys(m for s in systems for m in s["metrics"]))
    for s in systems:
        for v in s["metrics"].values():
            v["mark"] = "" if s["name"] == reference else significance_mark(v.get("p_value"), alpha)
    diag = list(dict.fromkeys(k for s in systems for k in s["diagnostics"] if k != "collapsed"))
    groups = {m: v["group"] for s in systems for m, v in s["metrics"].items() if v.get("group")}
    return {"name": name, "source": source, "reference": reference, "split": split, "n_images": n_images,
            "significance": significance, "alpha": alpha, "notes": notes, "excluded": excluded,
            "metrics": metric_names, "systems": systems, "best": best_per_metric(systems, metric_names),
            "lower_is_better": [m for m in metric_names if lower_is_better(m)],
            "has_ci": any(v.get("ci_low") is not None for s in systems for v in s["metrics"].values()),
            "has_p": any(v.get("p_value") is not None for s in systems for v in s["metrics"].values()),
            "plot": plot, "diagnostics": diag + (["collapsed"] if any("collapsed" in s["diagnostics"]
                                                                      for s in systems) else []),
            "groups": metric_groups(metric_names, groups), "metric_choices": _merge_choices(metric_choices)}


def _merge_choices(choices: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per distinct choice, naming the systems that made it (all of them: ``systems`` empty)."""
    merged: list[dict[str, Any]] = []
    for c in choices:
        body = {k: v for k, v in c.items() if k != "system"}
        same = next((m for m in merged if m["choice"] == body), None)
        if same:
            same["systems"].append(c.get("system"))
        else:
            merged.append({"choice": body, "systems": [c.get("system")]})
    if len(merged) == 1:
        merged[0]["systems"] = []
    return [{**m["choice"], "systems": m["systems"]} for m in merged]


# -- discovery -------------------------------------------------------------------------------------
@dataclass
class Found:
    kind: str
    path: Path
    name: str


def discover(roots: Sequence[Path], exclude: Sequence[Path] = ()) -> list[Found]:
    """Walk ``roots`` and classify folders by their marker files (see the module docstring)."""
    found: list[Found] = []
    excluded = {p.resolve() for p in exclude}
    seen: set[tuple[str, Path]] = set()
    for root in roots:
        root = Path(root)
        base_name = root.resolve().name or str(root)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            d = Path(dirpath)
            rel = d.relative_to(root)
            depth = len(rel.parts)
            if d.resolve() in excluded:
                dirnames[:] = []
                continue
            dirnames[:] = sorted(n for n in dirnames
                                 if n not in _SKIP_DIRS and not n.startswith(".") and depth < _MAX_DEPTH
                                 and (d / n).resolve() not in excluded)
            name = base_name if depth == 0 else f"{base_name}/{rel.as_posix()}"
            kinds = _classify(d, set(filenames))
            for kind in kinds:
                key = (kind, d.resolve())
                if key not in seen:
                    seen.add(key)
                    found.append(Found(kind, d, name))
            if "compare" in kinds:  # its systems/<name>/ folders belong to the comparison
                dirnames[:] = [n for n in dirnames if n != "systems"]
            if "explain" in kinds:  # per-image folders belong to the explain summary
                dirnames[:] = []
    return found


def _classify(d: Path, files: set[str]) -> list[str]:
    kinds: list[str] = []
    if Comparison.FILE in files:
        kinds.append("compare")
    if Ablation.FILE in files:
        kinds.append("ablation")
    if files & {"metrics.jsonl", "config.resolved.yaml", TrainResult.FILE}:
        kinds.append("train")
    if (PREDICTIONS_FILE in files or Scores.FILE in files) and "compare" not in kinds:
        kinds.append("evaluate")
    if Explanation.FILE in files or ExplainSummary.FILE in files:
        kinds.append("explain")
    if Grounding.FILE in files:
        kinds.append("grounding")
    for f in sorted(files):
        if f.endswith(".json") and f not in _KNOWN_JSON and _is_dataset_summary(d / f):
            kinds.append(f"dataset:{f}")
    return kinds


def _is_dataset_summary(path: Path) -> bool:
    if path.name.startswith(("report", "ablation", "comparison")):
        return False
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            return False
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(d, dict) and isinstance(d.get("splits"), dict) and "load_report" in d


# -- parsers: one per kind -------------------------------------------------------------------------
def parse_dataset(r: _Reader, path: Path, name: str) -> dict[str, Any] | None:
    """``medblip data validate``'s JSON (:func:`medblip.data.validate.validate_dataset`)."""
    d = r.json(path)
    if not isinstance(d, dict):
        return None

    def words(info: Mapping[str, Any]) -> dict[str, Any]:
        cw = info.get("caption_words") or {}
        return {"words_mean": cw.get("mean"), "words_median": cw.get("median"), "words_p95": cw.get("p95"),
                "words_max": cw.get("max")}

    rep = d.get("load_report") or {}
    img = d.get("images") or {}

    def rng(key: str) -> str | None:
        v = img.get(key)
        return f"{v['min']}–{v['max']} (median {v['median']})" if v and v.get("min") is not None else None

    return {
        "name": name, "source": str(path), "path": d.get("path"), "format": d.get("format"),
        "path_exists": bool(d.get("path")) and Path(str(d.get("path"))).exists(),
        "records": d.get("records"),
        "splits": [{"split": str(split), "records": info.get("records"), **words(info)}
                   for split, info in d["splits"].items()],
        "all": {"records": d.get("records"), **words(d)},
        "dropped": dict(rep.get("dropped") or {}), "total_dropped": rep.get("total_dropped"),
        "warnings": dict(rep.get("warnings") or {}),
        "images": {"sampled": img.get("sampled"), "with_image": img.get("with_image"),
                   "decoded": img.get("decoded"), "errors": img.get("errors"), "width": rng("width"),
                   "height": rng("height"), "modes": dict(img.get("modes") or {}),
                   "formats": dict(img.get("formats") or {})} if img else None,
        "summary": d.get("summary"),
    }


def _predictions(r: _Reader, name: str, path: Path, scored_in: Path, data: str | None, split: str | None,
                 fmt: str | None) -> dict[str, Any] | None:
    """One system's captions for the examples: its predictions and the per-image scores written when it
    was scored (in ``scored_in``)."""
    if not path.is_file():
        r.note(f"{path}: predictions of system {name!r} not found; it is left out of the examples")
        return None
    rows = r.predictions(path)
    return {"name": name, "source": str(path), "_rows": rows, "_scores": r.per_image(scored_in),
            "_data": data, "_split": split, "_format": fmt}


def parse_comparison(r: _Reader, d: Path, name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """comparison.json -> the table, plus each system's predictions for the examples."""
    comp = r.result(Comparison, d)
    if comp is None:
        return None, []
    if not comp.systems:
        r.note(f"{d / Comparison.FILE}: no systems; the comparison table is left out")
        return None, []
    systems = [{"name": s.name, "kind": s.kind, "family": s.family, "source": s.source, "folder": s.folder,
                "n_predictions": s.n_predictions, "seconds_per_image": s.seconds_per_image,
                "metrics": _metric_dicts(s.metrics), "diagnostics": _diagnostics(s.diagnostics),
                "warnings": system_warnings(s.warnings, s.kind, s.source)} for s in comp.systems]
    png = d / "comparison.png"
    for n in comp.notes:
        if is_log_note(n):
            r.log.append(n)
    notes = [n for n in comp.notes if not is_log_note(n)]
    choices = [{"system": s.name, **metric_choice(sc)} for s in comp.systems
               if (sc := r.result(Scores, Path(s.folder), quiet_missing=True)) is not None]
    table = _table(name, str(d), systems, reference=comp.reference, split=comp.split, n_images=comp.n_images,
                   alpha=comp.significance.alpha, significance=comp.significance.model_dump(), notes=notes,
                   excluded=comp.excluded.model_dump(), plot={"src": str(png)} if png.is_file() else None,
                   metric_choices=choices)
    table["metrics"] = list(comp.metrics) or table["metrics"]
    preds = [p for s in comp.systems
             if (p := _predictions(r, s.name, s.predictions_file, Path(s.folder), comp.data, comp.split, comp.format))]
    return table, preds


def parse_evaluate(r: _Reader, d: Path, name: str) -> dict[str, Any]:
    """An evaluate (or ``medblip score``) folder: metrics.json, predictions.jsonl, per_image.jsonl."""
    scores = r.result(Scores, d, quiet_missing=True)
    rows = r.predictions(d / PREDICTIONS_FILE) if (d / PREDICTIONS_FILE).is_file() else []
    model = scores.model if scores else next((row.get("model") for row in rows if row.get("model")), None)
    timing = scores.generation_time if scores else None
    per_image = r.per_image(d)
    return {"name": name, "source": str(d), "model": model, "split": scores.split if scores else None,
            "n_images": scores.n_images if scores else None,
            "metrics": _metric_dicts(scores.metrics) if scores else {},
            "diagnostics": _diagnostics(scores.degeneration) if scores else {},
            "seconds_per_image": timing.seconds_per_image if timing else None, "n_predictions": len(rows),
            "warnings": system_warnings(scores.warnings, "evaluate", model) if scores else [],
            "image_set": _image_set(scores, per_image), "metric_choice": metric_choice(scores) if scores else None,
            "_rows": rows, "_scores": per_image, "_data": scores.data if scores else None,
            "_split": scores.split if scores else None, "_format": scores.format if scores else None}


_COST_LABELS = {"trainable_params": "trainable params", "time_per_epoch": "time / epoch",
                "total_time": "total time", "images_per_second": "images/s", "peak_memory": "peak memory",
                "relative_time": "time vs full"}


def parse_ablation(r: _Reader, d: Path, name: str) -> dict[str, Any] | None:
    ab = r.result(Ablation, d)
    if ab is None:
        return None
    if not ab.strategies:
        r.note(f"{d / Ablation.FILE}: no strategy rows; the ablation table is left out")
        return None
    rows = []
    for s in ab.strategies:
        cost = {"trainable_params": s.trainable_params, "time_per_epoch": s.time_per_epoch,
                "total_time": s.total_time, "images_per_second": s.images_per_second,
                "peak_memory": s.peak_memory_bytes, "relative_time": s.relative_time}
        rows.append({"strategy": s.strategy, "metrics": _metric_dicts(s.metrics),
                     "cost": {k: v for k, v in cost.items() if v is not None},
                     "collapsed": bool(s.degeneration and s.degeneration.collapsed)})
    metric_names = list(ab.metrics) or list(dict.fromkeys(m for x in rows for m in x["metrics"]))
    as_systems = [{"name": x["strategy"], "metrics": x["metrics"], "diagnostics": {"collapsed": x["collapsed"]}}
                  for x in rows]
    groups = {m: v["group"] for x in rows for m, v in x["metrics"].items() if v.get("group")}
    return {"name": name, "source": str(d),
            "meta": {k: v for k, v in ab.model_dump().items() if not isinstance(v, list | dict)},
            "rows": rows, "metrics": metric_names,
            "cost_columns": [{"key": k, "label": label} for k, label in _COST_LABELS.items()
                             if any(k in x["cost"] for x in rows)],
            "best": best_per_metric(as_systems, metric_names),
            "has_ci": any(v.get("ci_low") is not None for x in rows for v in x["metrics"].values()),
            "headline": ab.headline or headline_metric(metric_names),
            # the report draws the metric-vs-cost figure itself (build.py): the ablation's own copy is left out
            "plots": [{"src": str(p)} for p in sorted(d.glob("*.png")) if p.name != Ablation.COST_PLOT], "cost_plot": None,
            "scoring": {k: v for k, v in ab.scoring.items() if k in ("metrics", "models", "imageclef")},
            "groups": metric_groups(metric_names, groups)}


def parse_training(r: _Reader, d: Path, name: str) -> dict[str, Any]:
    rows = r.log_rows(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
    result = r.result(TrainResult, d, quiet_missing=True)  # a run still going has none yet
    strategy = next((row.model_extra for row in rows if row.kind == "strategy"), None) or {}
    train = [[float(row.step), row.numbers()["loss"]] for row in rows
             if row.split == "train" and "loss" in row.numbers()]
    val = [{"step": row.step, "epoch": row.epoch, "metrics": row.numbers()} for row in rows
           if row.split == "validation" and row.numbers()]
    epoch_secs = [row.numbers()["train_seconds"] for row in rows
                  if row.kind == "epoch_cost" and "train_seconds" in row.numbers()]
    if not rows and result is None:
        r.note(f"{d}: a training run folder without metrics.jsonl or result.json; left out")
    cost = result.cost if result else None
    return {
        "name": name, "source": str(d), "status": result.status if result else None,
        "model": result.model if result else None,
        "strategy": result.strategy.strategy if result else strategy.get("strategy"),
        "trainable_params": result.strategy.trainable_params if result else strategy.get("trainable_params"),
        "frozen_params": result.strategy.frozen_params if result else strategy.get("frozen_params"),
        "epochs": result.epochs_completed if result else (len(epoch_secs) or None),
        "steps": result.global_step if result else None,
        "best_metric": result.best_metric if result else None,
        "best_metric_name": result.best_metric_name if result else None,
        "cost": {"wall_seconds": cost.wall_seconds if cost else None,
                 "train_seconds": cost.train_seconds if cost else None,
                 "time_per_epoch": cost.time_per_epoch if cost else (sum(epoch_secs) / len(epoch_secs)
                                                                     if epoch_secs else None),
                 "images_per_second": cost.images_per_second if cost else None,
                 "peak_memory": cost.peak_memory_bytes if cost else None,
                 "peak_memory_kind": cost.peak_memory_kind if cost else None},
        "train_loss": train, "val": val, "val_metrics": list(dict.fromkeys(m for v in val for m in v["metrics"])),
    }


def _word_key(w: str) -> str:
    return re.sub(r"[^\w]+", "", str(w).lower())


#: attention overlays shown per image when no --words are given
MAX_OVERLAYS = 8


def parse_explain(r: _Reader, d: Path, name: str, words: Sequence[str], max_items: int) -> dict[str, Any] | None:
    summary = r.result(ExplainSummary, d, quiet_missing=True)
    if summary is not None:
        folders = [(it.name, d / it.folder) for it in summary.images]
    elif (d / Explanation.FILE).is_file():
        folders = [(d.name, d)]
    else:
        return None
    wanted = {_word_key(w) for w in words if _word_key(w)}
    items = []
    for item_name, folder in folders[:max_items]:
        doc = r.result(Explanation, folder)
        if doc is None:
            continue
        overlays = []
        for k, (word, rel) in enumerate(zip(doc.panels, doc.files.overlays, strict=False)):
            path = folder / rel
            if not path.is_file():
                r.note(f"{path}: overlay listed in explanation.json is missing")
                continue
            low, high = doc.panel_ranges[k] if k < len(doc.panel_ranges) else (None, None)
            overlays.append({"word": word, "src": str(path), "low": low, "high": high,
                             "range": range_text(low, high) if low is not None else None,
                             "flat": doc.flat_panels[k] if k < len(doc.flat_panels) else None})
        if wanted:
            chosen = [o for o in overlays if _word_key(o["word"]) in wanted]
        else:  # the clinical words first, no punctuation or function words, each word once
            firsts = list({_word_key(o["word"]): o for o in reversed(overlays)}.values())[::-1]
            chosen = [firsts[i] for i in rank_words([o["word"] for o in firsts], limit=MAX_OVERLAYS)]
        grid = folder / doc.files.grid
        shown = {_word_key(o["word"]) for o in overlays}
        items.append({
            "name": item_name, "caption": doc.caption, "caption_source": doc.caption_source, "model": doc.model,
            "cmap": doc.cmap,
            "method": doc.settings.get("method"), "overlays": chosen, "n_overlays": len(overlays),
            "missing_words": sorted(w for w in words if _word_key(w) and _word_key(w) not in shown) if wanted else [],
            "grid": {"src": str(grid)} if grid.is_file() and not chosen else None,
        })
    if not items:
        r.note(f"{d}: no readable explanation; the attention section for it is left out")
        return None
    if len(folders) > max_items:
        r.note(f"{d}: {len(folders)} explained images; the first {max_items} are shown")
    return {"name": name, "source": str(d), "model": summary.model if summary else items[0]["model"],
            "method": summary.settings.get("method") if summary else items[0]["method"], "images": items}


def parse_grounding(r: _Reader, path: Path, name: str) -> dict[str, Any] | None:
    g = r.result(Grounding, path)
    if g is None:
        return None
    labels = {"model": "model", "random": "random-weights model", "uniform": "uniform baseline",
              "centre": "centre-bias baseline"}
    table = [{"map": label, **g.summary.scores[key].model_dump()} for key, label in labels.items()
             if key in g.summary.scores]
    by_finding = [{"finding": f, "n": s.n, **{key: s.scores[key].hit if key in s.scores else None for key in labels}}
                  for f, s in g.by_finding.items()]
    return {"name": name, "source": str(path), "model": g.model, "split": g.split,
            "caption_source": g.caption_source, "method": g.settings.get("method"), "tolerance": g.tolerance,
            "n": g.summary.n, "skipped": dict(g.summary.skipped), "table": table, "by_finding": by_finding,
            "has_random": "random" in g.summary.scores, "p_vs_random": g.p_value.get("vs_random_weights")}


# -- clinical terms --------------------------------------------------------------------------------
class Clinical:
    """Highlighting of a caption's clinical terms, judged against its reference's concepts.

    The concepts come from the evaluation (``per_image.jsonl``); only the terms' positions in the text
    are found here, with the same lexicon.
    """

    def __init__(self) -> None:
        self.lexicon = load_lexicon()

    def _same_modality(self, a: str, b: str) -> bool:
        if a == b:
            return True
        parents = self.lexicon.modality_parents
        return parents.get(a) == b or parents.get(b) == a

    @staticmethod
    def summary(c: Concepts | None) -> dict[str, Any]:
        if c is None:
            return {}
        return {"modality": c.modality, "laterality": c.laterality, "regions": list(c.regions),
                "findings": sorted(c.findings_present()),
                "negated": sorted(k for k, v in c.finding_status.items() if v == "negated")}

    def spans(self, text: str) -> list[tuple[int, int, str, tuple[str, ...]]]:
        """(start, end, category, labels) of every lexicon term, non-overlapping, in text order."""
        return term_spans(text, self.lexicon)

    def judge(self, cat: str, labels: tuple[str, ...], pred: Concepts | None, ref: Concepts | None) -> tuple[str, str]:
        """('agree'|'disagree'|'term', explanation) for one term of a prediction."""
        if ref is None:
            return "term", cat
        if cat == "modality":
            if not ref.modalities:
                return "term", "modality (the reference names none)"
            ok = any(self._same_modality(lab, m) for lab in labels for m in ref.modalities)
            return ("agree", f"modality {labels[0]} as in the reference") if ok else \
                ("disagree", f"modality {labels[0]}; the reference says {ref.modality}")
        if cat in ("side", "region"):
            named = ref.sides if cat == "side" else ref.regions
            if not named:
                return "term", f"{cat} (the reference names none)"
            if any(lab in named for lab in labels):
                return "agree", f"{cat} {labels[0]} as in the reference"
            return "disagree", (f"side {labels[0]}; the reference says {ref.laterality}" if cat == "side"
                                else f"region {labels[0]} is not in the reference")
        # finding: compare presence
        ref_present = ref.findings_present()
        ref_status = ref.finding_status
        pstat = pred.finding_status if pred is not None else {}
        verdicts = []
        for lab in labels:
            p_present = pstat.get(lab, "present") in ("present", "uncertain")
            r_present = lab in ref_present
            if p_present and r_present:
                verdicts.append(("agree", f"finding {lab}: present in both"))
            elif p_present:
                why = "negated in the reference" if ref_status.get(lab) == "negated" else "not in the reference"
                verdicts.append(("disagree", f"finding {lab}: {why}"))
            elif r_present:
                verdicts.append(("disagree", f"finding {lab}: negated here, present in the reference"))
            elif lab in ref_status:
                verdicts.append(("agree", f"finding {lab}: absent in both"))
            else:
                verdicts.append(("term", f"finding {lab}: negated (not in the reference)"))
        for want in ("agree", "disagree", "term"):
            hit = next((v for v in verdicts if v[0] == want), None)
            if hit:
                return hit
        return "term", cat

    def segments(self, text: str, pred: Concepts | None = None, ref: Concepts | None = None) -> list[dict[str, Any]]:
        """The caption split into plain and highlighted pieces (``cls``: agree/disagree/term); without
        ``ref`` (the reference caption itself) every term is a plain ``term``."""
        text = text or ""
        spans = self.spans(text)
        if not spans:
            return [{"text": text, "cls": None, "title": None}] if text else []
        out, pos = [], 0
        for start, end, cat, labels in spans:
            if start > pos:
                out.append({"text": text[pos:start], "cls": None, "title": None})
            cls, title = self.judge(cat, labels, pred, ref) if ref is not None else ("term", f"{cat}: {labels[0]}")
            out.append({"text": text[start:end], "cls": cls, "title": title, "category": cat})
            pos = end
        if pos < len(text):
            out.append({"text": text[pos:], "cls": None, "title": None})
        return out

    def chips(self, pred: Concepts | None, ref: Concepts | None) -> list[dict[str, str]]:
        """Per caption: modality / side verdicts and findings missed relative to the reference."""
        if pred is None or ref is None:
            return []
        chips = []
        if ref.modality or pred.modality:
            if pred.modality and ref.modality:
                ok = self._same_modality(pred.modality, ref.modality) or pred.modality in ref.modalities
                chips.append({"cls": "agree" if ok else "disagree", "text": f"modality {pred.modality}",
                              "title": f"reference: {ref.modality}"})
            elif ref.modality:
                chips.append({"cls": "missed", "text": f"no modality (ref. {ref.modality})", "title": ""})
        if ref.laterality or pred.laterality:
            if pred.laterality and ref.laterality:
                ok = pred.laterality == ref.laterality
                chips.append({"cls": "agree" if ok else "disagree", "text": f"side {pred.laterality}",
                              "title": f"reference: {ref.laterality}"})
            elif ref.laterality:
                chips.append({"cls": "missed", "text": f"no side (ref. {ref.laterality})", "title": ""})
        missed = sorted(ref.findings_present() - pred.findings_present())
        if missed:
            chips.append({"cls": "missed", "text": "missed: " + ", ".join(missed), "title": "present in the reference"})
        return chips

    def errors(self, pred: Concepts | None, ref: Concepts | None) -> dict[str, bool | None]:
        """Wrong modality / wrong side (None when either caption does not say)."""
        if pred is None or ref is None:
            return {"modality": None, "side": None}
        mod = None
        if pred.modality and ref.modality:
            mod = not (self._same_modality(pred.modality, ref.modality) or pred.modality in ref.modalities)
        side = None
        if pred.laterality and ref.laterality:
            side = pred.laterality != ref.laterality
        return {"modality": mod, "side": side}


# -- images for the examples -----------------------------------------------------------------------
class ImageResolver:
    """Finds each example's image: the predictions row's ``image`` (absolute, or relative to the
    predictions file or the data), else the record in the dataset the system was run on (its
    result's ``data``/``split``/``format``, or ``--data``)."""

    def __init__(self, reader: _Reader, data_override: Path | None = None) -> None:
        self.r = reader
        self.data_override = data_override
        self._datasets: dict[tuple[str, str | None, str | None], dict[str, Any]] = {}

    def _from_dataset(self, data: str, split: str | None, fmt: str | None) -> dict[str, Any]:
        key = (data, split, fmt)
        if key not in self._datasets:
            mapping: dict[str, Any] = {}
            try:
                from medblip.data import load_dataset

                ds = load_dataset(data, format=fmt or "auto", splits=[split] if split else None,
                                  require_images=False)
                mapping = {str(rec.id): rec.image for rec in ds.records if rec.image is not None}
            except MedblipError as exc:  # a moved or partial dataset must not break the report
                self.r.note(f"{data}: cannot load the dataset to find example images "
                            f"({exc}); examples are shown without images")
            self._datasets[key] = mapping
        return self._datasets[key]

    def resolve(self, row: Mapping[str, Any], system: Mapping[str, Any]) -> Path | bytes | None:
        base = Path(system.get("source") or ".")
        base = base.parent if base.suffix else base
        data = str(self.data_override) if self.data_override else system.get("_data")
        image = Prediction.model_validate(row).image_path()
        if image:
            p = Path(image).expanduser()
            for cand in ([p] if p.is_absolute() else [base / p, *([Path(data) / p] if data else []), p]):
                if cand.is_file():
                    return cand
        if data:
            split = row.get("split") or system.get("_split")
            img = self._from_dataset(str(data), str(split) if split else None,
                                     None if self.data_override else system.get("_format"))
            v = img.get(str(row.get("id")))
            if isinstance(v, bytes):
                return v
            if v is not None and Path(v).is_file():
                return Path(v)
        return None


# -- the collector ---------------------------------------------------------------------------------
def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    taken.add(out)
    return out


def collect(run_dirs: Sequence[str | Path], *, title: str | None = None, words: Sequence[str] = (),
            examples: int = 6, data: str | Path | None = None, exclude: Sequence[Path] = ()) -> Report:
    """Discover and parse every run folder under ``run_dirs`` into a :class:`Report`."""
    roots = [Path(p).expanduser() for p in run_dirs]
    for p in roots:
        if not p.is_dir():
            raise MedblipError(f"{p}: no such run folder")
    r = _Reader()
    found = discover(roots, exclude=exclude)
    if not found:
        raise MedblipError(
            f"no run folders found in {', '.join(map(str, roots))}: expected predictions.jsonl / metrics.json "
            "(evaluate), comparison.json (compare), metrics.jsonl / result.json (train), summary.json / "
            "explanation.json (explain), grounding.json, ablation.json or a dataset summary from "
            "`medblip data validate`")
    rep = Report(title=title or "medblip report", created=datetime.now(UTC).isoformat(timespec="seconds"),
                 words=[w for w in words if w.strip()])
    # absolute paths: a relative one ("demo_output/dataset") names nothing from where the report is opened
    rep.inputs = [{"kind": f.kind.split(":")[0], "name": f.name, "path": str(f.path.resolve())} for f in found
                  if f.path.is_dir()]
    preds: list[dict[str, Any]] = []
    evaluated: list[dict[str, Any]] = []
    names: set[str] = set()
    for f in found:
        if f.kind.startswith("dataset:"):
            if (ds := parse_dataset(r, f.path / f.kind.split(":", 1)[1], f.name)) is not None:
                rep.datasets.append(ds)
        elif f.kind == "compare":
            comp, sys_preds = parse_comparison(r, f.path, f.name)
            if comp is not None:
                rep.comparisons.append(comp)
            for s in sys_preds:
                s["name"] = _unique(s["name"], names)
                preds.append(s)
        elif f.kind == "evaluate":
            ev = parse_evaluate(r, f.path, f.name)
            short = f.path.name if f.path.name not in names else f.name
            ev["name"] = _unique(short, names)
            evaluated.append(ev)
            if ev["_rows"]:
                preds.append(ev)
            elif not ev["metrics"]:
                r.note(f"{f.path}: neither predictions nor metrics could be read; left out")
        elif f.kind == "train":
            rep.training.append(parse_training(r, f.path, f.name))
        elif f.kind == "ablation":
            if (ab := parse_ablation(r, f.path, f.name)) is not None:
                rep.ablations.append(ab)
        elif f.kind == "explain":
            if (ex := parse_explain(r, f.path, f.name, rep.words, max_items=max(examples, 1))) is not None:
                rep.explanations.append(ex)
        elif f.kind == "grounding" and (g := parse_grounding(r, f.path / Grounding.FILE, f.name)):
            rep.grounding.append(g)
    # evaluate folders: a table of their own (no p-values)
    with_metrics = [e for e in evaluated if e["metrics"]]
    if with_metrics:
        rep.comparisons.append(_table_from_evaluations(with_metrics))
    _warn_once(rep.comparisons)
    _build_examples(rep, r, preds, examples, Path(data).expanduser() if data else None)
    if not rep.datasets:
        r.note("no dataset summary (a `medblip data validate` JSON) among the inputs; that section is left out")
    rep.notes = list(dict.fromkeys(r.notes))
    rep.log = list(dict.fromkeys(r.log))
    rep.files_read = list(dict.fromkeys(r.read))
    return rep


def _warn_once(tables: Sequence[Mapping[str, Any]]) -> None:
    """A system that appears in several tables (a comparison and its own evaluation) is warned about once."""
    seen: set[tuple[str, str]] = set()
    for table in tables:
        for s in table["systems"]:
            s["warnings"] = [w for w in s["warnings"] if (s["name"], w) not in seen]
            seen.update((s["name"], w) for w in s["warnings"])


def _table_from_evaluations(evaluated: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    systems = [{"name": e["name"], "kind": "evaluate", "family": None, "source": e["source"], "folder": e["source"],
                "n_predictions": e["n_predictions"], "seconds_per_image": e["seconds_per_image"],
                "metrics": {m: dict(v) for m, v in e["metrics"].items()}, "diagnostics": e["diagnostics"],
                "warnings": e["warnings"], "image_set": e["image_set"]} for e in evaluated]
    splits = {e.get("split") for e in evaluated} - {None}
    sizes = {e.get("n_images") for e in evaluated} - {None}
    notes = ["evaluate folders scored separately: no paired test (use `medblip compare`)"]
    sets = list(dict.fromkeys(s["image_set"] for s in systems))
    if len(sets) > 1:  # label the sets so the reader sees which rows compare
        for s in systems:
            s["image_set_label"] = f"set {chr(ord('A') + sets.index(s['image_set']) % 26)}"
        notes.append(f"the evaluations were scored on {len(sets)} different image sets (column 'images'): "
                     "bold marks the best only among rows scored on the same images")
    return _table("evaluations", ", ".join(e["source"] for e in evaluated), systems, reference=None,
                  split=splits.pop() if len(splits) == 1 else None, n_images=sizes.pop() if len(sizes) == 1 else None,
                  alpha=0.05, significance={}, excluded={}, plot=None, notes=notes,
                  metric_choices=[{"system": e["name"], **e["metric_choice"]} for e in evaluated
                                  if e.get("metric_choice")])


def _spread(items: Sequence[str], n: int) -> list[str]:
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _scored(r: _Reader, s: dict[str, Any], refs: dict[str, str]) -> dict[str, ImageScores]:
    """The system's per-image scores: as its evaluation stored them, or (never scored) computed now."""
    if s["_scores"] is not None:
        return s["_scores"]
    ids = [i for i in s["_by_id"] if i in refs]
    if not ids:
        return {}
    r.note(f"{s['source']}: not scored yet (no {ImageScores.FILE}); its per-image scores are computed for the report")
    rows = image_scores(ids, [[refs[i]] for i in ids], [str(s["_by_id"][i].get("prediction") or "") for i in ids])
    return {row["id"]: ImageScores.model_validate(row) for row in rows}


def _build_examples(rep: Report, r: _Reader, preds: list[dict[str, Any]], n_examples: int,
                    data: Path | None) -> None:
    clinical = Clinical()
    systems = [{**s, "_by_id": {str(row["id"]): row for row in s["_rows"]}} for s in preds if s["_rows"]]
    if not systems:
        r.note("no predictions.jsonl among the inputs: the examples and failure cases are left out")
        return
    # references: a system's own, else any other system's for the same id
    refs: dict[str, str] = {}
    for s in systems:
        for i, row in s["_by_id"].items():
            if isinstance(row.get("reference"), str) and i not in refs:
                refs[i] = row["reference"]
    for s in systems:
        s["_per_image"] = _scored(r, s, refs)
    rep.score_name = "CIDEr" if all("CIDEr" in sc.scores for s in systems for sc in s["_per_image"].values()) \
        else "token_f1"
    rep.systems = [{"name": s["name"], "source": s["source"], "n": len(s["_by_id"])} for s in systems]
    resolver = ImageResolver(r, data)
    images: dict[str, Any] = {}

    def concepts(s: Mapping[str, Any], i: str) -> tuple[Concepts | None, Concepts | None]:
        """(prediction, reference) concepts of image ``i`` of system ``s``, from its per-image scores."""
        sc = s["_per_image"].get(i)
        if sc is None:
            return None, None
        pred = Concepts.from_summary(sc.prediction.model_dump(), str(s["_by_id"][i].get("prediction") or ""))
        ref = Concepts.from_summary(sc.references[0].model_dump(), refs.get(i, "")) if sc.references else None
        return pred, ref

    def image_for(i: str) -> dict[str, Any] | None:
        if i not in images:
            img = None
            for s in systems:
                if i in s["_by_id"]:
                    img = resolver.resolve(s["_by_id"][i], s)
                    if img is not None:
                        break
            images[i] = None if img is None else (
                {"src": None, "_bytes": img} if isinstance(img, bytes) else {"src": str(img)})
        return images[i]

    def card(i: str, members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        ref_text = refs.get(i)
        ref_c = next((c for s in members if (c := concepts(s, i)[1]) is not None), None)
        out = {"id": i, "image": image_for(i), "reference": ref_text,
               "reference_segments": clinical.segments(ref_text) if ref_text else [],
               "reference_concepts": clinical.summary(ref_c), "systems": []}
        for s in members:
            row = s["_by_id"].get(i)
            if row is None:
                continue
            caption = str(row.get("prediction") or "")
            pred_c, ref_c = concepts(s, i)
            sc = s["_per_image"].get(i)
            out["systems"].append({
                "name": s["name"], "caption": caption,
                "segments": clinical.segments(caption, pred_c, ref_c) if caption else [],
                "chips": clinical.chips(pred_c, ref_c), "scores": dict(sc.scores) if sc else {},
                "errors": clinical.errors(pred_c, ref_c)})
        return out

    # qualitative examples: ids every system has, spread over the list
    order = list(systems[0]["_by_id"])
    shared = [i for i in order if i in refs and all(i in s["_by_id"] for s in systems)]
    if not shared:
        r.note("the systems share no image ids; examples show the first system's images")
        shared = [i for i in order if i in refs]
    rep.examples = [card(i, systems) for i in _spread(shared, n_examples)]

    # failure cases, per system
    score = rep.score_name
    per_system = []
    for s in systems:
        scored = sorted(s["_per_image"].items(),
                        key=lambda t: (t[1].scores.get(score, t[1].scores["token_f1"]), t[1].scores["token_f1"], t[0]))
        lowest = [card(i, [s]) for i, _ in scored[:max(1, min(n_examples, 4))]]
        wrong_mod, wrong_side, n_mod, n_side = [], [], 0, 0
        for i in (i for i in s["_by_id"] if i in s["_per_image"]):
            pred_c, ref_c = concepts(s, i)
            err = clinical.errors(pred_c, ref_c)
            case = {"id": i, "reference": refs.get(i), "prediction": s["_by_id"][i].get("prediction")}
            if err["modality"] is not None:
                n_mod += 1
                if err["modality"]:
                    wrong_mod.append({**case, "expected": ref_c.modality, "got": pred_c.modality})  # type: ignore[union-attr]
            if err["side"] is not None:
                n_side += 1
                if err["side"]:
                    wrong_side.append({**case, "expected": ref_c.laterality, "got": pred_c.laterality})  # type: ignore[union-attr]
        limit = max(n_examples, 5)
        per_system.append({
            "system": s["name"], "n": len(s["_per_image"]), "lowest": lowest,
            "wrong_modality": wrong_mod[:limit], "wrong_modality_count": len(wrong_mod), "modality_checked": n_mod,
            "wrong_side": wrong_side[:limit], "wrong_side_count": len(wrong_side), "side_checked": n_side,
        })
    rep.failures = {"score": score, "systems": per_system}


def report_inputs_summary(rep: Report) -> str:
    kinds: dict[str, int] = {}
    for i in rep.inputs:
        kinds[i["kind"]] = kinds.get(i["kind"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())
