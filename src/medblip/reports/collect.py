"""Gather run folders into one report model (:class:`Report`). Every producer file is parsed here.

The inputs are any mix of folders written by other medblip commands, found recursively by their
marker files (a folder can be several kinds at once)::

    kind        marker                                   files read
    evaluate    predictions.jsonl and/or metrics.json    + run.json (config.data / config.split)
    compare     comparison.json (or comparison.csv)      + comparison.png, run.json,
                                                           systems/<name>/predictions.jsonl (or the
                                                           system's ``source`` predictions file)
    train       metrics.jsonl, config.resolved.yaml,     + cost.json, result.json, run.json
                result.json
    explain     summary.json with an ``images`` list      + <folder>/explanation.json, overlays/*.png,
                or a lone explanation.json                  grid.png
    grounding   grounding.json
    ablation    ablation.json (or ablation.csv)           + *.png beside it
    dataset     any small *.json holding ``splits`` and ``load_report`` (``medblip data validate``)

Every section is optional: a missing or unreadable file adds a note and leaves its section out;
nothing here raises for a malformed producer file. Formats are read defensively (several
spellings of a field are accepted) so that producers can evolve.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medblip.results import headline_metric

log = logging.getLogger(__name__)

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

_VALUE_KEYS = ("value", "score", "mean")


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER_BETTER.search(metric))


# -- the model -------------------------------------------------------------------------------------
@dataclass
class Report:
    """Everything the renderers need; ``to_dict`` is what report.json holds.

    Image fields hold the *source* file (``src``) until :func:`medblip.reports.html.build_report`
    copies it into ``assets/`` and records the relative path as ``asset``.
    """

    title: str
    created: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    files_read: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
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
    extractor: bool = False
    #: assets/ path of the training-curves figure (set when the report is built)
    training_plot: str | None = None

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

    def note(self, msg: str) -> None:
        log.warning(msg)
        self.notes.append(msg)

    def json(self, path: Path, *, quiet_missing: bool = False) -> Any:
        if not path.is_file():
            if not quiet_missing:
                self.note(f"{path}: not found; its part of the report is left out")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.note(f"{path}: unreadable ({type(exc).__name__}: {exc}); left out")
            return None
        self.read.append(str(path))
        return data

    def jsonl(self, path: Path) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.note(f"{path}: unreadable ({exc}); left out")
            return rows
        bad = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
        if bad:
            self.note(f"{path}: {bad} malformed line(s) skipped")
        self.read.append(str(path))
        return rows

    def yaml(self, path: Path) -> Any:
        if not path.is_file():
            return None
        try:
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001  (yaml errors, OSError, missing module)
            self.note(f"{path}: unreadable ({type(exc).__name__}); left out")
            return None
        self.read.append(str(path))
        return data

    def csv(self, path: Path) -> list[dict[str, str]]:
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            self.note(f"{path}: unreadable ({exc}); left out")
            return []
        self.read.append(str(path))
        return rows


# -- small value helpers ---------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, str):
        try:
            v = float(x)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def metric_value(v: Any) -> dict[str, Any] | None:
    """A metric in any of the producers' spellings -> ``{value, ci_low, ci_high, p_value}``.

    Accepts a number, ``{"value"|"score"|"mean", "ci_low"/"ci_high" | "low"/"high" | "ci": [lo, hi],
    "p_value"|"p"}``. Returns ``None`` for anything else.
    """
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return {"value": _num(v), "ci_low": None, "ci_high": None, "p_value": None}
    if not isinstance(v, Mapping):
        return None
    key = next((k for k in _VALUE_KEYS if k in v), None)
    if key is None:
        return None
    val = v[key]
    if val is not None and (isinstance(val, bool) or not isinstance(val, int | float)):
        return None
    lo, hi = v.get("ci_low", v.get("low")), v.get("ci_high", v.get("high"))
    ci = v.get("ci")
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        lo, hi = ci
    out: dict[str, Any] = {"value": _num(val), "ci_low": _num(lo), "ci_high": _num(hi),
                           "p_value": _num(v.get("p_value", v.get("p")))}
    if isinstance(v.get("group"), str):
        out["group"] = v["group"]
    return out


_NOT_METRICS = {"generation_time", "n", "n_images", "images", "diagnostics", "degeneration", "warnings",
                "per_image", "notes", "settings", "options", "config", "bootstrap", "seed", "tokenizer",
                "confidence", "n_resamples"}


def metrics_table(d: Any) -> dict[str, dict[str, float | None]]:
    """metrics.json (score_predictions' result) -> metric name -> value with CI.

    Reads the ``metrics`` block when there is one (else the top level); a nested group whose members
    are metrics (e.g. ``clinical: {modality_accuracy: {...}}``) is flattened one level.
    """
    if not isinstance(d, Mapping):
        return {}
    block = d.get("metrics") if isinstance(d.get("metrics"), Mapping) else d
    out: dict[str, dict[str, float | None]] = {}
    for name, v in block.items():
        if name in _NOT_METRICS:
            continue
        mv = metric_value(v)
        if mv is not None:
            out[str(name)] = mv
        elif isinstance(v, Mapping):
            for sub, sv in v.items():
                smv = metric_value(sv)
                if smv is not None and sub not in _NOT_METRICS:
                    out[str(sub) if str(sub) not in block else f"{name}.{sub}"] = smv
    return out


_DIAG_SKIP = {"n_captions", "most_common_caption", "warnings", "collapsed"}


def diagnostics_of(d: Any) -> dict[str, Any]:
    """Degeneration diagnostics of metrics.json / a comparison system: the numbers, plus ``collapsed``."""
    if not isinstance(d, Mapping):
        return {}
    diag = d.get("diagnostics") or d.get("degeneration") or {}
    out: dict[str, Any] = {}
    if isinstance(diag, Mapping):
        for k, v in diag.items():
            if k in _DIAG_SKIP:
                continue
            if _num(v) is not None:
                out[str(k)] = float(v)
            elif isinstance(v, Mapping) and _num(v.get("value")) is not None:
                out[str(k)] = float(v["value"])
        if isinstance(diag.get("collapsed"), bool):
            out["collapsed"] = diag["collapsed"]
    return out


_CLINICAL_RE = re.compile(r"modality|laterality|finding|region|clinical|side", re.I)


def metric_groups(metrics: Sequence[str], groups: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Metrics split into caption / clinical / embedding / other tables, each in the given order.

    ``groups`` is the producer's own ``group`` per metric (metrics.json); otherwise names decide.
    """
    def group_of(m: str) -> str:
        if groups and groups.get(m):
            return str(groups[m])
        if m.lower().startswith("bertscore"):
            return "embedding"
        return "clinical" if _CLINICAL_RE.search(m) else "caption"

    order: dict[str, list[str]] = {}
    for m in metrics:
        order.setdefault(group_of(m), []).append(m)
    titles = {"caption": "Caption metrics", "clinical": "Clinical correctness", "embedding": "Embedding similarity"}
    return [{"name": g, "title": titles.get(g, g.capitalize()), "metrics": ms} for g, ms in order.items()]


def best_per_metric(systems: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, list[str]]:
    """Metric -> names of the systems with the best value (ties all win)."""
    best: dict[str, list[str]] = {}
    for m in metrics:
        vals = [(s["name"], s["metrics"][m]["value"]) for s in systems
                if m in s["metrics"] and s["metrics"][m]["value"] is not None]
        if len(vals) < 2:
            best[m] = []
            continue
        target = (min if lower_is_better(m) else max)(v for _, v in vals)
        best[m] = [n for n, v in vals if abs(v - target) <= 1e-12 * max(1.0, abs(target))]
    return best


def significance_mark(p: float | None, alpha: float) -> str:
    if p is None or p >= alpha:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


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
            files = set(filenames)
            name = base_name if depth == 0 else f"{base_name}/{rel.as_posix()}"
            kinds = _classify(d, files)
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
    if "comparison.json" in files or "comparison.csv" in files:
        kinds.append("compare")
    if "ablation.json" in files or "ablation.csv" in files:
        kinds.append("ablation")
    if "metrics.jsonl" in files or "config.resolved.yaml" in files or "result.json" in files:
        kinds.append("train")
    if ("predictions.jsonl" in files or "metrics.json" in files) and "compare" not in kinds:
        kinds.append("evaluate")
    if "explanation.json" in files or ("summary.json" in files and _is_explain_summary(d / "summary.json")):
        kinds.append("explain")
    if "grounding.json" in files:
        kinds.append("grounding")
    for f in sorted(files):
        if f.endswith(".json") and f not in _KNOWN_JSON and _is_dataset_summary(d / f):
            kinds.append(f"dataset:{f}")
    return kinds


def _small_json(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _is_explain_summary(path: Path) -> bool:
    d = _small_json(path)
    return isinstance(d, dict) and isinstance(d.get("images"), list)


def _is_dataset_summary(path: Path) -> bool:
    if path.name.startswith(("report", "ablation", "comparison")):
        return False
    d = _small_json(path)
    return isinstance(d, dict) and isinstance(d.get("splits"), dict) and (
        "load_report" in d or "caption_words" in d)


# -- parsers: one per kind -------------------------------------------------------------------------
def parse_dataset(r: _Reader, path: Path, name: str) -> dict[str, Any] | None:
    d = r.json(path)
    if not isinstance(d, dict):
        return None
    splits = []
    for split, info in (d.get("splits") or {}).items():
        info = info if isinstance(info, Mapping) else {}
        cw = info.get("caption_words") if isinstance(info.get("caption_words"), Mapping) else {}
        splits.append({"split": str(split), "records": info.get("records"), "words_mean": cw.get("mean"),
                       "words_median": cw.get("median"), "words_p95": cw.get("p95"), "words_max": cw.get("max")})
    cw = d.get("caption_words") if isinstance(d.get("caption_words"), Mapping) else {}
    rep = d.get("load_report") if isinstance(d.get("load_report"), Mapping) else {}
    img = d.get("images") if isinstance(d.get("images"), Mapping) else {}

    def rng(key: str) -> str | None:
        v = img.get(key)
        if isinstance(v, Mapping) and v.get("min") is not None:
            return f"{v.get('min')}–{v.get('max')} (median {v.get('median')})"
        return None

    return {
        "name": name, "source": str(path), "path": d.get("path"), "format": d.get("format"),
        "records": d.get("records"), "splits": splits,
        "all": {"records": d.get("records"), "words_mean": cw.get("mean"), "words_median": cw.get("median"),
                "words_p95": cw.get("p95"), "words_max": cw.get("max")},
        "dropped": dict(rep.get("dropped") or {}), "total_dropped": rep.get("total_dropped"),
        "warnings": dict(rep.get("warnings") or {}),
        "images": {"sampled": img.get("sampled"), "with_image": img.get("with_image"),
                   "decoded": img.get("decoded"), "errors": img.get("errors"), "width": rng("width"),
                   "height": rng("height"), "modes": dict(img.get("modes") or {}),
                   "formats": dict(img.get("formats") or {})} if img else None,
        "summary": d.get("summary"),
    }


def _run_config(r: _Reader, d: Path) -> dict[str, Any]:
    info = r.json(d / "run.json", quiet_missing=True)
    if isinstance(info, dict) and isinstance(info.get("config"), dict):
        return info["config"]
    return {}


def parse_comparison(r: _Reader, d: Path, name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """comparison.json (or .csv) -> the table, plus each system's predictions for the examples."""
    doc = r.json(d / "comparison.json", quiet_missing=True)
    systems: list[dict[str, Any]] = []
    if isinstance(doc, dict) and isinstance(doc.get("systems"), list):
        sig = doc.get("significance") if isinstance(doc.get("significance"), Mapping) else {}
        alpha = _num(sig.get("alpha")) or 0.05
        for s in doc["systems"]:
            if not isinstance(s, Mapping) or "name" not in s:
                continue
            metrics = {str(m): mv for m, v in (s.get("metrics") or {}).items() if (mv := metric_value(v))}
            systems.append({"name": str(s["name"]), "kind": s.get("kind"), "family": s.get("family"),
                            "source": s.get("source"), "folder": s.get("folder"),
                            "n_predictions": s.get("n_predictions"),
                            "seconds_per_image": _num(s.get("seconds_per_image")), "metrics": metrics,
                            "diagnostics": diagnostics_of(s), "warnings": list(s.get("warnings") or [])})
        metric_names = [str(m) for m in (doc.get("metrics") or [])] or \
            list(dict.fromkeys(m for s in systems for m in s["metrics"]))
        comp = {"reference": doc.get("reference"), "split": doc.get("split"), "n_images": doc.get("n_images"),
                "significance": dict(sig), "alpha": alpha, "notes": list(doc.get("notes") or []),
                "excluded": doc.get("excluded") or {}}
    elif (d / "comparison.csv").is_file():
        rows = r.csv(d / "comparison.csv")
        by: dict[str, dict[str, Any]] = {}
        ref = n_images = None
        for row in rows:
            sname = row.get("system")
            if not sname or not row.get("metric"):
                continue
            s = by.setdefault(sname, {"name": sname, "kind": row.get("kind"), "family": None, "source": None,
                                      "folder": None, "n_predictions": None,
                                      "seconds_per_image": _num(row.get("seconds_per_image")),
                                      "metrics": {}, "diagnostics": {}, "warnings": []})
            s["metrics"][row["metric"]] = {"value": _num(row.get("value")), "ci_low": _num(row.get("ci_low")),
                                           "ci_high": _num(row.get("ci_high")), "p_value": _num(row.get("p_value"))}
            ref = ref or row.get("reference")
            n_images = n_images or row.get("n_images")
        systems = list(by.values())
        metric_names = list(dict.fromkeys(m for s in systems for m in s["metrics"]))
        comp = {"reference": ref, "split": None, "n_images": n_images, "significance": {}, "alpha": 0.05,
                "notes": [], "excluded": {}}
    else:
        r.note(f"{d}: comparison.json is missing or malformed; the comparison table is left out")
        return None, []
    if not systems:
        r.note(f"{d}/comparison.json: no systems; the comparison table is left out")
        return None, []
    alpha = comp["alpha"]
    for s in systems:
        for v in s["metrics"].values():
            v["mark"] = "" if s["name"] == comp["reference"] else significance_mark(v.get("p_value"), alpha)
    comp.update({
        "name": name, "source": str(d), "metrics": metric_names, "systems": systems,
        "best": best_per_metric(systems, metric_names),
        "lower_is_better": [m for m in metric_names if lower_is_better(m)],
        "has_ci": any(v.get("ci_low") is not None for s in systems for v in s["metrics"].values()),
        "has_p": any(v.get("p_value") is not None for s in systems for v in s["metrics"].values()),
        "plot": {"src": str(d / "comparison.png")} if (d / "comparison.png").is_file() else None,
        "diagnostics": _diag_columns(systems),
        "groups": metric_groups(metric_names, _producer_groups(systems)),
    })
    # predictions for the examples
    cfg = _run_config(r, d)
    preds: list[dict[str, Any]] = []
    for s in systems:
        candidates = [d / "systems" / s["name"] / "predictions.jsonl"]
        if s.get("folder"):
            candidates.append(Path(s["folder"]) / "predictions.jsonl")
        if s.get("source") and str(s["source"]).endswith(".jsonl"):
            candidates.append(Path(str(s["source"])))
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            r.note(f"{d}: no predictions file found for system {s['name']!r} "
                   f"(looked for systems/{s['name']}/predictions.jsonl and its source); "
                   "it is left out of the examples")
            continue
        preds.append({"name": s["name"], "source": str(path), "_rows": r.jsonl(path),
                      "_data": cfg.get("data"), "_split": cfg.get("split"), "_format": cfg.get("format")})
    return comp, preds


def parse_evaluate(r: _Reader, d: Path, name: str) -> dict[str, Any]:
    metrics_doc = r.json(d / "metrics.json", quiet_missing=True)
    cfg = _run_config(r, d)
    rows = r.jsonl(d / "predictions.jsonl") if (d / "predictions.jsonl").is_file() else []
    model = cfg.get("model") or next((row.get("model") for row in rows if row.get("model")), None)
    gt = metrics_doc.get("generation_time") if isinstance(metrics_doc, Mapping) else None
    spi = _num(gt.get("seconds_per_image")) if isinstance(gt, Mapping) else None
    n_images = metrics_doc.get("n_images") if isinstance(metrics_doc, Mapping) else None
    return {"name": name, "source": str(d), "model": model, "split": cfg.get("split"), "n_images": n_images,
            "metrics": metrics_table(metrics_doc), "diagnostics": diagnostics_of(metrics_doc),
            "seconds_per_image": spi, "n_predictions": len(rows),
            "_rows": rows, "_data": cfg.get("data"), "_split": cfg.get("split"), "_format": cfg.get("format")}


_COST_ALIASES: dict[str, tuple[str, ...]] = {
    "trainable_params": ("trainable_params", "trainable_parameters", "params_trainable", "trainable"),
    "time_per_epoch": ("time_per_epoch", "seconds_per_epoch", "epoch_seconds", "time_per_epoch_s",
                       "sec_per_epoch", "mean_epoch_seconds"),
    "total_time": ("total_time", "total_seconds", "train_seconds", "total_train_seconds", "training_seconds",
                   "total_time_s", "wall_seconds"),
    "images_per_second": ("images_per_second", "images_per_s", "throughput", "img_per_s"),
    "peak_memory": ("peak_memory_bytes", "peak_memory", "peak_mem_bytes", "peak_memory_mb", "peak_memory_gb",
                    "peak_memory_mib", "peak_memory_gib"),
    "relative_time": ("relative_time", "time_vs_full", "relative_to_full", "time_relative_to_full",
                      "relative_time_vs_full", "speedup_vs_full", "rel_time"),
}
_COST_LABELS = {"trainable_params": "trainable params", "time_per_epoch": "time / epoch",
                "total_time": "total time", "images_per_second": "images/s", "peak_memory": "peak memory",
                "relative_time": "time vs full"}
_ABLATION_SKIP = {"strategy", "name", "system", "run_dir", "folder", "status", "notes", "model", "family",
                  "frozen_params", "total_params", "trainable_fraction", "epochs", "steps", "global_step",
                  "peak_memory_kind", "num_processes", "images", "eval_seconds", "n_images", "seed"}


def _cost_of(row: Mapping[str, Any]) -> dict[str, Any]:
    pools = [row] + [row[k] for k in ("cost", "costs", "training") if isinstance(row.get(k), Mapping)]
    out: dict[str, Any] = {}
    for key, aliases in _COST_ALIASES.items():
        for pool in pools:
            hit = next((a for a in aliases if _num(pool.get(a)) is not None), None)
            if hit is not None:
                v = float(_num(pool[hit]))  # type: ignore[arg-type]
                if key == "peak_memory":  # normalise to bytes
                    scale = {"mb": 1e6, "gb": 1e9, "mib": 2**20, "gib": 2**30}.get(hit.rsplit("_", 1)[-1], 1.0)
                    v *= scale
                out[key] = v
                break
    if "time_per_epoch" not in out:
        for pool in pools:
            eps = pool.get("epochs")
            if isinstance(eps, list) and eps:
                secs = [_num(e.get("train_seconds")) for e in eps if isinstance(e, Mapping)]
                secs = [s for s in secs if s is not None]
                if secs:
                    out["time_per_epoch"] = sum(secs) / len(secs)
                    break
    return out


def parse_ablation(r: _Reader, d: Path, name: str) -> dict[str, Any] | None:
    doc = r.json(d / "ablation.json", quiet_missing=True)
    raw_rows: list[tuple[str, Mapping[str, Any]]] = []
    meta: dict[str, Any] = {}
    if doc is not None:
        items: Any = doc
        if isinstance(doc, Mapping):
            meta = {k: v for k, v in doc.items() if not isinstance(v, list | dict)}
            for key in ("strategies", "rows", "results", "runs", "table"):
                if key in doc:
                    items = doc[key]
                    break
        if isinstance(items, Mapping):
            raw_rows = [(str(k), v) for k, v in items.items() if isinstance(v, Mapping)]
        elif isinstance(items, list):
            raw_rows = [(str(v.get("strategy") or v.get("name") or f"#{i + 1}"), v)
                        for i, v in enumerate(items) if isinstance(v, Mapping)]
    elif (d / "ablation.csv").is_file():
        csv_rows = r.csv(d / "ablation.csv")
        if csv_rows and "metric" in csv_rows[0] and "value" in csv_rows[0]:  # long form
            grouped: dict[str, dict[str, Any]] = {}
            for row in csv_rows:
                sname = row.get("strategy") or row.get("name") or "?"
                g = grouped.setdefault(sname, {k: v for k, v in row.items()
                                               if k not in ("metric", "value", "ci_low", "ci_high", "p_value")})
                g.setdefault("metrics", {})[row["metric"]] = {
                    "value": _num(row.get("value")), "ci_low": _num(row.get("ci_low")),
                    "ci_high": _num(row.get("ci_high"))}
            raw_rows = list(grouped.items())
        else:
            raw_rows = [(row.get("strategy") or row.get("name") or f"#{i + 1}", row) for i, row in enumerate(csv_rows)]
    if not raw_rows:
        r.note(f"{d}: ablation.json has no strategy rows (or is unreadable); the ablation table is left out")
        return None
    cost_keys = {a for aliases in _COST_ALIASES.values() for a in aliases}
    rows = []
    for sname, row in raw_rows:
        metrics: dict[str, dict[str, float | None]] = {}
        nested = row.get("metrics")
        if isinstance(nested, Mapping):
            for m, v in nested.items():
                if (mv := metric_value(v)) is not None:
                    metrics[str(m)] = mv
        else:
            for k, v in row.items():
                if k in cost_keys or k in _ABLATION_SKIP or k in ("cost", "costs", "training"):
                    continue
                if k.endswith(("_ci_low", "_ci_high", "_low", "_high")):
                    continue
                mv = metric_value(_num(v) if isinstance(v, str) else v)
                if mv is not None and mv["value"] is not None:
                    mv["ci_low"] = mv["ci_low"] or _num(row.get(f"{k}_ci_low", row.get(f"{k}_low")))
                    mv["ci_high"] = mv["ci_high"] or _num(row.get(f"{k}_ci_high", row.get(f"{k}_high")))
                    metrics[str(k)] = mv
        rows.append({"strategy": str(sname), "metrics": metrics, "cost": _cost_of(row)})
    # time relative to full, when the producer did not give it
    full = next((x for x in rows if x["strategy"].lower() == "full"), None)
    if full and full["cost"].get("total_time"):
        for x in rows:
            if "relative_time" not in x["cost"] and x["cost"].get("total_time") is not None:
                x["cost"]["relative_time"] = x["cost"]["total_time"] / full["cost"]["total_time"]
    metric_names = list(dict.fromkeys(m for x in rows for m in x["metrics"]))
    cost_cols = [k for k in _COST_ALIASES if any(k in x["cost"] for x in rows)]
    plots = [{"src": str(p)} for p in sorted(d.glob("*.png"))]
    as_systems = [{"name": x["strategy"], "metrics": x["metrics"]} for x in rows]
    return {"name": name, "source": str(d), "meta": meta, "rows": rows, "metrics": metric_names,
            "cost_columns": [{"key": k, "label": _COST_LABELS[k]} for k in cost_cols],
            "best": best_per_metric(as_systems, metric_names),
            "has_ci": any(v.get("ci_low") is not None for x in rows for v in x["metrics"].values()),
            "headline": headline_metric(metric_names), "plots": plots, "cost_plot": None,
            "groups": metric_groups(metric_names, _producer_groups(as_systems))}


_VAL_SKIP = {"step", "epoch", "split", "kind", "improved", "val_images", "examples", "lr"}


def parse_training(r: _Reader, d: Path, name: str) -> dict[str, Any]:
    rows = r.jsonl(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
    result = r.json(d / "result.json", quiet_missing=True)
    result = result if isinstance(result, dict) else {}
    cost = r.json(d / "cost.json", quiet_missing=True)
    cost = cost if isinstance(cost, dict) else (result.get("cost") if isinstance(result.get("cost"), dict) else {})
    cfg = r.yaml(d / "config.resolved.yaml")
    cfg = cfg if isinstance(cfg, dict) else {}
    strategy: dict[str, Any] = dict(result.get("strategy") or {})
    train: list[list[float]] = []
    val: list[dict[str, Any]] = []
    epoch_costs: list[dict[str, Any]] = []
    for row in rows:
        kind = row.get("kind")
        if kind == "strategy":
            strategy = {**{k: v for k, v in row.items() if k not in ("step", "kind")}, **strategy}
        elif kind == "epoch_cost":
            epoch_costs.append(row)
        elif row.get("split") == "train" and _num(row.get("loss")) is not None and _num(row.get("step")) is not None:
            train.append([float(row["step"]), float(row["loss"])])
        elif row.get("split") == "validation":
            vals = {k: float(v) for k, v in row.items()
                    if k not in _VAL_SKIP and _num(v) is not None and not isinstance(v, bool)}
            if vals:
                val.append({"step": _num(row.get("step")), "epoch": _num(row.get("epoch")), "metrics": vals})
    val_names = list(dict.fromkeys(m for v in val for m in v["metrics"]))
    best_name = result.get("best_metric_name")
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    strat_cfg = cfg.get("strategy")
    strategy_name = strategy.get("strategy") or (strat_cfg.get("name") if isinstance(strat_cfg, Mapping) else strat_cfg)
    epochs = cost.get("epochs") if isinstance(cost.get("epochs"), list) else epoch_costs
    secs = [x for e in epochs if isinstance(e, Mapping) and (x := _num(e.get("train_seconds"))) is not None]
    if not rows and not result and not cost:
        r.note(f"{d}: a training run folder without metrics.jsonl, result.json or cost.json; left out")
    return {
        "name": name, "source": str(d), "status": result.get("status"),
        "model": model_cfg.get("name_or_path") if isinstance(model_cfg, Mapping) else None,
        "strategy": strategy_name, "trainable_params": _num(strategy.get("trainable_params")),
        "frozen_params": _num(strategy.get("frozen_params")),
        "epochs": result.get("epochs_completed", len(epochs) or None), "steps": result.get("global_step"),
        "best_metric": _num(result.get("best_metric")), "best_metric_name": best_name,
        "cost": {"wall_seconds": _num(cost.get("wall_seconds")), "train_seconds": _num(cost.get("train_seconds")),
                 "time_per_epoch": sum(secs) / len(secs) if secs else None,
                 "images_per_second": _num(cost.get("images_per_second")),
                 "peak_memory": _num(cost.get("peak_memory_bytes")), "peak_memory_kind": cost.get("peak_memory_kind")},
        "train_loss": train, "val": val, "val_metrics": val_names,
    }


def _word_key(w: str) -> str:
    return re.sub(r"[^\w]+", "", str(w).lower())


def parse_explain(r: _Reader, d: Path, name: str, words: Sequence[str], max_items: int) -> dict[str, Any] | None:
    summary = r.json(d / "summary.json", quiet_missing=True)
    items_meta: list[tuple[str, Path]] = []
    model = method = None
    if isinstance(summary, dict) and isinstance(summary.get("images"), list):
        model = summary.get("model")
        settings = summary.get("settings") if isinstance(summary.get("settings"), Mapping) else {}
        method = settings.get("method")
        for it in summary["images"]:
            if isinstance(it, Mapping) and it.get("folder"):
                items_meta.append((str(it.get("name") or it["folder"]), d / str(it["folder"])))
    elif (d / "explanation.json").is_file():
        items_meta.append((d.name, d))
    wanted = {_word_key(w) for w in words if _word_key(w)}
    items = []
    for item_name, folder in items_meta[:max_items]:
        doc = r.json(folder / "explanation.json")
        if not isinstance(doc, dict):
            continue
        files = doc.get("files") if isinstance(doc.get("files"), Mapping) else {}
        panels = [str(p) for p in (doc.get("panels") or doc.get("words") or [])]
        overlay_files = [str(f) for f in (files.get("overlays") or [])]
        overlays = []
        for i, rel in enumerate(overlay_files):
            word = panels[i] if i < len(panels) else Path(rel).stem.split("_", 1)[-1]
            path = folder / rel
            if not path.is_file():
                r.note(f"{path}: overlay listed in explanation.json is missing")
                continue
            overlays.append({"word": word, "src": str(path)})
        chosen = [o for o in overlays if _word_key(o["word"]) in wanted] if wanted else overlays[:8]
        grid = folder / str(files.get("grid") or "grid.png")
        settings = doc.get("settings") if isinstance(doc.get("settings"), Mapping) else {}
        items.append({
            "name": item_name, "caption": doc.get("caption"), "caption_source": doc.get("caption_source"),
            "model": doc.get("model") or model, "method": settings.get("method") or method,
            "overlays": chosen, "n_overlays": len(overlays),
            "missing_words": sorted(w for w in words if _word_key(w) and
                                    _word_key(w) not in {_word_key(o["word"]) for o in overlays}) if wanted else [],
            "grid": {"src": str(grid)} if grid.is_file() and (not chosen) else None,
        })
    if not items:
        r.note(f"{d}: no readable explanation; the attention section for it is left out")
        return None
    if len(items_meta) > max_items:
        r.note(f"{d}: {len(items_meta)} explained images; the first {max_items} are shown")
    return {"name": name, "source": str(d), "model": model or items[0].get("model"), "method": method, "images": items}


def parse_grounding(r: _Reader, path: Path, name: str) -> dict[str, Any] | None:
    doc = r.json(path)
    if not isinstance(doc, dict):
        return None
    summ = doc.get("summary") if isinstance(doc.get("summary"), Mapping) else {}
    scores = summ.get("scores") if isinstance(summ.get("scores"), Mapping) else {}
    table = []
    for src, label in (("model", "model"), ("uniform", "uniform baseline"), ("centre", "centre-bias baseline")):
        s = scores.get(src)
        if isinstance(s, Mapping):
            table.append({"map": label, "hit": _num(s.get("hit")), "hit_tol": _num(s.get("hit_tol")),
                          "energy": _num(s.get("energy"))})
    by_finding = []
    for f, v in (doc.get("by_finding") or {}).items():
        sc = v.get("scores", {}) if isinstance(v, Mapping) else {}
        by_finding.append({"finding": f, "n": v.get("n") if isinstance(v, Mapping) else None,
                           "model": _num((sc.get("model") or {}).get("hit")),
                           "uniform": _num((sc.get("uniform") or {}).get("hit")),
                           "centre": _num((sc.get("centre") or {}).get("hit"))})
    settings = doc.get("settings") if isinstance(doc.get("settings"), Mapping) else {}
    if not table:
        r.note(f"{path}: no summary.scores; the grounding table is left out")
        return None
    return {"name": name, "source": str(path), "model": doc.get("model"), "split": doc.get("split"),
            "caption_source": doc.get("caption_source"), "method": settings.get("method"),
            "tolerance": doc.get("tolerance"), "n": summ.get("n"), "skipped": dict(summ.get("skipped") or {}),
            "table": table, "by_finding": by_finding}


# -- clinical terms --------------------------------------------------------------------------------
class Clinical:
    """The evaluation core's extractor, if importable; agreement of a caption with its reference."""

    def __init__(self) -> None:
        try:
            from medblip.evaluation.clinical import extract_concepts, load_lexicon

            self.extract = extract_concepts
            self.lexicon = load_lexicon()
            self.ok = True
        except Exception as exc:  # noqa: BLE001  (the extractor is another helper's module)
            log.warning("clinical extractor unavailable: %s", exc)
            self.ok = False

    def concepts(self, text: str) -> Any:
        return self.extract(text or "") if self.ok else None

    def _same_modality(self, a: str, b: str) -> bool:
        if a == b:
            return True
        parents = getattr(self.lexicon, "modality_parents", {}) or {}
        return parents.get(a) == b or parents.get(b) == a

    def summary(self, c: Any) -> dict[str, Any]:
        if c is None:
            return {}
        return {"modality": c.modality, "laterality": c.laterality, "regions": list(c.regions),
                "findings": sorted(c.findings_present()),
                "negated": sorted(k for k, v in c.finding_status.items() if v == "negated")}

    def spans(self, text: str) -> list[tuple[int, int, str, tuple[str, ...]]]:
        """(start, end, category, labels) of every lexicon term, non-overlapping, in text order."""
        if not self.ok or not text:
            return []
        try:
            from medblip.evaluation.clinical.extractor import _lower

            low, original = _lower(text), text
        except Exception:  # noqa: BLE001
            low, original = text.lower(), text
        if len(low) != len(text):
            return []
        lex = self.lexicon
        found = []
        for cat, matcher in (("modality", lex.modality_matcher), ("side", lex.laterality_matcher),
                             ("finding", lex.finding_matcher), ("region", lex.region_matcher)):
            try:
                found += [(m.start, m.end, cat, tuple(m.labels)) for m in matcher.find(low, original) if m.labels]
            except Exception:  # noqa: BLE001
                continue
        found.sort(key=lambda t: (t[0], -(t[1] - t[0])))
        out, end = [], -1
        for t in found:
            if t[0] >= end:
                out.append(t)
                end = t[1]
        return out

    def judge(self, cat: str, labels: tuple[str, ...], pred: Any, ref: Any) -> tuple[str, str]:
        """('agree'|'disagree'|'term', explanation) for one term of a prediction."""
        if ref is None:
            return "term", cat
        if cat == "modality":
            if not ref.modalities:
                return "term", "modality (the reference names none)"
            ok = any(self._same_modality(lab, m) for lab in labels for m in ref.modalities)
            return ("agree", f"modality {labels[0]} as in the reference") if ok else \
                ("disagree", f"modality {labels[0]}; the reference says {ref.modality}")
        if cat == "side":
            if not ref.sides:
                return "term", "side (the reference names none)"
            ok = any(lab in ref.sides for lab in labels)
            return ("agree", f"side {labels[0]} as in the reference") if ok else \
                ("disagree", f"side {labels[0]}; the reference says {ref.laterality}")
        if cat == "region":
            if not ref.regions:
                return "term", "region (the reference names none)"
            ok = any(lab in ref.regions for lab in labels)
            return ("agree", f"region {labels[0]} as in the reference") if ok else \
                ("disagree", f"region {labels[0]} is not in the reference")
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

    def segments(self, text: str, ref_text: str | None) -> list[dict[str, Any]]:
        """The caption split into plain and highlighted pieces (``cls``: agree/disagree/term)."""
        text = text or ""
        spans = self.spans(text)
        if not spans:
            return [{"text": text, "cls": None, "title": None}] if text else []
        pred = self.concepts(text)
        ref = self.concepts(ref_text) if ref_text is not None else None
        out, pos = [], 0
        for start, end, cat, labels in spans:
            if start > pos:
                out.append({"text": text[pos:start], "cls": None, "title": None})
            cls, title = self.judge(cat, labels, pred, ref) if ref_text is not None else ("term", f"{cat}: {labels[0]}")
            out.append({"text": text[start:end], "cls": cls, "title": title, "category": cat})
            pos = end
        if pos < len(text):
            out.append({"text": text[pos:], "cls": None, "title": None})
        return out

    def chips(self, pred: Any, ref: Any) -> list[dict[str, str]]:
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

    def errors(self, pred: Any, ref: Any) -> dict[str, bool | None]:
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


# -- per-image scores ------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall((text or "").lower())


def token_f1(pred: str, ref: str) -> float:
    p, r = _tokens(pred), _tokens(ref)
    if not p or not r:
        return 1.0 if not p and not r else 0.0
    from collections import Counter

    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def per_image_scores(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, dict[str, float]], bool]:
    """id -> {"CIDEr": ..., "token_f1": ...}; CIDEr-D (the evaluation core's, document frequencies
    over this system's images) when importable. Returns whether CIDEr is included."""
    ids = [str(r["id"]) for r in rows]
    out = {i: {"token_f1": token_f1(str(r.get("prediction") or ""), str(r.get("reference") or ""))}
           for i, r in zip(ids, rows, strict=True)}
    has_cider = False
    if len(rows) >= 2:
        try:
            from medblip.evaluation.cider import CiderD
            from medblip.evaluation.tokenization import simple_tokenize

            refs = [[simple_tokenize(str(r.get("reference") or "")) or "-"] for r in rows]
            preds = [simple_tokenize(str(r.get("prediction") or "")) for r in rows]
            scores = CiderD(refs, preds).per_image()
            for i, s in zip(ids, scores, strict=True):
                out[i]["CIDEr"] = float(s)
            has_cider = True
        except Exception as exc:  # noqa: BLE001
            log.warning("per-image CIDEr unavailable (%s); failure cases use token F1", exc)
    return out, has_cider


# -- images for the examples -----------------------------------------------------------------------
_IMAGE_FIELDS = ("image", "image_path", "image_file", "path", "file")


class ImageResolver:
    """Finds each example's image: a path in the predictions row, else the record in the dataset the
    run was made on (``run.json`` config ``data``/``split``/``format``, or ``--data``)."""

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
            except Exception as exc:  # noqa: BLE001  (a moved or partial dataset must not break the report)
                self.r.note(f"{data}: cannot load the dataset to find example images "
                            f"({type(exc).__name__}: {exc}); examples are shown without images")
            self._datasets[key] = mapping
        return self._datasets[key]

    def resolve(self, row: Mapping[str, Any], system: Mapping[str, Any]) -> Path | bytes | None:
        base = Path(system.get("source") or ".")
        base = base.parent if base.suffix else base
        data = str(self.data_override) if self.data_override else system.get("_data")
        for key in _IMAGE_FIELDS:
            v = row.get(key)
            if isinstance(v, str) and v:
                p = Path(v).expanduser()
                for cand in ([p] if p.is_absolute() else [base / p, *( [Path(data) / p] if data else []), p]):
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
    from medblip.errors import MedblipError

    roots = [Path(p).expanduser() for p in run_dirs]
    for p in roots:
        if not p.is_dir():
            raise MedblipError(f"{p}: no such run folder")
    r = _Reader()
    found = discover(roots, exclude=exclude)
    if not found:
        raise MedblipError(
            f"no run folders found in {', '.join(map(str, roots))}: expected predictions.jsonl / metrics.json "
            "(evaluate), comparison.json (compare), metrics.jsonl (train), summary.json / explanation.json "
            "(explain), grounding.json, ablation.json or a dataset summary from `medblip data validate`")
    rep = Report(title=title or "medblip report", created=datetime.now(UTC).isoformat(timespec="seconds"),
                 words=[w for w in words if w.strip()])
    rep.inputs = [{"kind": f.kind.split(":")[0], "name": f.name, "path": str(f.path)} for f in found]
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
        elif f.kind == "grounding" and (g := parse_grounding(r, f.path / "grounding.json", f.name)):
            rep.grounding.append(g)
    # evaluate folders without a comparison: a table of their own (no p-values)
    if evaluated and not rep.comparisons and any(e["metrics"] for e in evaluated):
        rep.comparisons.append(_table_from_evaluations(evaluated))
    elif evaluated and rep.comparisons:
        with_metrics = [e for e in evaluated if e["metrics"]]
        if with_metrics:
            rep.comparisons.append(_table_from_evaluations(with_metrics))
    _build_examples(rep, r, preds, examples, Path(data).expanduser() if data else None)
    if not rep.datasets:
        r.note("no dataset summary (a `medblip data validate` JSON) among the inputs; that section is left out")
    rep.notes = list(dict.fromkeys(r.notes))
    rep.files_read = list(dict.fromkeys(r.read))
    return rep


def _table_from_evaluations(evaluated: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    systems = [{"name": e["name"], "kind": "evaluate", "family": None, "source": e["source"], "folder": e["source"],
                "n_predictions": e["n_predictions"], "seconds_per_image": e["seconds_per_image"],
                "metrics": {m: {**v, "mark": ""} for m, v in e["metrics"].items()},
                "diagnostics": e["diagnostics"], "warnings": []} for e in evaluated]
    metric_names = list(dict.fromkeys(m for s in systems for m in s["metrics"]))
    splits = {e.get("split") for e in evaluated} - {None}
    sizes = {e.get("n_images") for e in evaluated} - {None}
    return {"name": "evaluations", "source": ", ".join(e["source"] for e in evaluated), "reference": None,
            "split": splits.pop() if len(splits) == 1 else None,
            "n_images": sizes.pop() if len(sizes) == 1 else None, "significance": {},
            "alpha": 0.05, "notes": ["evaluate folders scored separately: no paired test (use `medblip compare`)"],
            "excluded": {}, "metrics": metric_names, "systems": systems,
            "best": best_per_metric(systems, metric_names),
            "lower_is_better": [m for m in metric_names if lower_is_better(m)],
            "has_ci": any(v.get("ci_low") is not None for s in systems for v in s["metrics"].values()),
            "has_p": False, "plot": None, "diagnostics": _diag_columns(systems),
            "groups": metric_groups(metric_names, _producer_groups(systems))}


def _producer_groups(systems: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {m: v["group"] for s in systems for m, v in s["metrics"].items() if v.get("group")}


def _diag_columns(systems: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for s in systems for k in s["diagnostics"] if k != "collapsed"))
    return cols + (["collapsed"] if any("collapsed" in s["diagnostics"] for s in systems) else [])


def _spread(items: Sequence[str], n: int) -> list[str]:
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _build_examples(rep: Report, r: _Reader, preds: list[dict[str, Any]], n_examples: int,
                    data: Path | None) -> None:
    clinical = Clinical()
    rep.extractor = clinical.ok
    if not clinical.ok:
        r.note("the clinical extractor (medblip.evaluation.clinical) is unavailable: no term highlighting")
    systems = []
    for s in preds:
        rows = [row for row in s["_rows"] if "id" in row and isinstance(row.get("prediction", ""), str)]
        by_id = {str(row["id"]): row for row in rows}
        if by_id:
            systems.append({**s, "_by_id": by_id})
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
        s["_rows_ref"] = [{**row, "id": i, "reference": refs[i]} for i, row in s["_by_id"].items() if i in refs]
        s["_scores"], has_cider = per_image_scores(s["_rows_ref"]) if s["_rows_ref"] else ({}, False)
        s["_has_cider"] = has_cider
    rep.score_name = "CIDEr" if all(s["_has_cider"] for s in systems if s["_rows_ref"]) else "token_f1"
    rep.systems = [{"name": s["name"], "source": s["source"], "n": len(s["_by_id"])} for s in systems]
    resolver = ImageResolver(r, data)
    images: dict[str, Any] = {}

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
        ref_c = clinical.concepts(ref_text) if ref_text is not None else None
        out = {"id": i, "image": image_for(i), "reference": ref_text,
               "reference_segments": clinical.segments(ref_text, None) if ref_text else [],
               "reference_concepts": clinical.summary(ref_c), "systems": []}
        for s in members:
            row = s["_by_id"].get(i)
            if row is None:
                continue
            caption = str(row.get("prediction") or "")
            pred_c = clinical.concepts(caption)
            out["systems"].append({
                "name": s["name"], "caption": caption,
                "segments": clinical.segments(caption, ref_text) if caption else [],
                "chips": clinical.chips(pred_c, ref_c), "scores": s["_scores"].get(i, {}),
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
        scored = [(i, sc) for i, sc in s["_scores"].items()]
        scored.sort(key=lambda t: (t[1].get(score, t[1]["token_f1"]), t[1]["token_f1"], t[0]))
        lowest = [card(i, [s]) for i, _ in scored[:max(1, min(n_examples, 4))]]
        wrong_mod, wrong_side, n_mod, n_side = [], [], 0, 0
        for i in (x["id"] for x in s["_rows_ref"]):
            pred_c = clinical.concepts(str(s["_by_id"][i].get("prediction") or ""))
            ref_c = clinical.concepts(refs[i])
            err = clinical.errors(pred_c, ref_c)
            if err["modality"] is not None:
                n_mod += 1
                if err["modality"]:
                    wrong_mod.append({"id": i, "reference": refs[i], "prediction": s["_by_id"][i].get("prediction"),
                                      "expected": ref_c.modality, "got": pred_c.modality})
            if err["side"] is not None:
                n_side += 1
                if err["side"]:
                    wrong_side.append({"id": i, "reference": refs[i], "prediction": s["_by_id"][i].get("prediction"),
                                       "expected": ref_c.laterality, "got": pred_c.laterality})
        limit = max(n_examples, 5)
        per_system.append({
            "system": s["name"], "n": len(s["_rows_ref"]), "lowest": lowest,
            "wrong_modality": wrong_mod[:limit], "wrong_modality_count": len(wrong_mod), "modality_checked": n_mod,
            "wrong_side": wrong_side[:limit], "wrong_side_count": len(wrong_side), "side_checked": n_side,
        })
    rep.failures = {"score": score, "systems": per_system}


def report_inputs_summary(rep: Report) -> str:
    kinds: dict[str, int] = {}
    for i in rep.inputs:
        kinds[i["kind"]] = kinds.get(i["kind"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())
