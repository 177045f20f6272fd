"""Library entry points: score a set of predictions, compare two systems, read/write the files.

``score_predictions`` is what ``medblip score`` and ``medblip evaluate`` run, so captions produced
outside medblip are scored with exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from medblip.errors import ConfigError, DataError
from medblip.evaluation.caption_metrics import COCO_METRICS, caption_metrics
from medblip.evaluation.cider import CiderD
from medblip.evaluation.clinical.extractor import UncertainAs
from medblip.evaluation.clinical.metrics import CLINICAL_METRICS, clinical_metrics, extract_all
from medblip.evaluation.degeneration import degeneration_report
from medblip.evaluation.metric_sets import (
    DEFAULT_METRICS,
    DEFAULT_MODELS,
    MODEL_OF,
    MetricSelection,
    select_metrics,
)
from medblip.evaluation.model_metrics import ModelMetricResult, model_metrics
from medblip.evaluation.per_image import image_scores
from medblip.evaluation.predictions import read_predictions_file
from medblip.evaluation.statistics import (
    AdditiveMetric,
    Resamplable,
    bootstrap_cis,
    mean_metric,
    paired_significance,
)
from medblip.evaluation.tokenization import (
    JavaOption,
    imageclef_preprocess,
    java_available,
    resolve_java,
    tokenize_all,
)
from medblip.formatting import fmt_num

log = logging.getLogger(__name__)

METRICS_JSON, METRICS_MD = "metrics.json", "metrics.md"
PAIRED_METHODS = ("bootstrap", "randomization")
EMPTY_REFERENCE = "empty reference"


class PredictionRows(list):  # type: ignore[type-arg]
    """Rows read from a predictions file that remember where each came from (``source``, ``line_numbers``),
    so that whatever is dropped later is reported as ``file:line``."""

    source: str | None = None
    line_numbers: list[int] | None = None


# -- input ------------------------------------------------------------------------------------------
def _normalise_row(row: Mapping[str, Any], where: str, id_key: str, references_key: str,
                   prediction_key: str) -> tuple[str, list[str], str]:
    for key in (id_key, references_key, prediction_key):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r} (fields: {', '.join(map(str, row)) or 'none'})")
    rid = row[id_key]
    if not isinstance(rid, str | int) or isinstance(rid, bool) or str(rid) == "":
        raise DataError(f"{where}: field {id_key!r} must be a non-empty string or integer, got {rid!r}")
    ref = row[references_key]
    refs = [ref] if isinstance(ref, str) else ref
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise DataError(f"{where}: field {references_key!r} must be a string or a non-empty list of strings, "
                        f"got {type(ref).__name__}")
    pred = row[prediction_key]
    if not isinstance(pred, str):
        raise DataError(f"{where}: field {prediction_key!r} must be a string, got {type(pred).__name__}")
    return str(rid), list(refs), pred


def parse_rows(rows: Iterable[Mapping[str, Any]], *, id_key: str = "id", references_key: str = "reference",
               prediction_key: str = "prediction", source: str | None = None,
               line_numbers: Sequence[int] | None = None,
               dropped: list[str] | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """Validate prediction rows -> (ids, references, predictions); errors name the row (or file:line).

    Blank references are left out of a row's list; a row with no non-blank reference is dropped (there
    is nothing to score it against) and its ``file:line`` (or row number) appended to ``dropped``.
    """
    dropped = dropped if dropped is not None else []
    ids: list[str] = []
    refs: list[list[str]] = []
    preds: list[str] = []
    seen: dict[str, str] = {}
    for i, row in enumerate(rows):
        line = line_numbers[i] if line_numbers is not None else None
        where = f"{source}:{line}" if source and line else f"{source or 'predictions'} row {i + 1}"
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected an object with {id_key!r}, {references_key!r}, {prediction_key!r}")
        rid, ref, pred = _normalise_row(row, where, id_key, references_key, prediction_key)
        ref = [r for r in ref if r.strip()]
        if not ref:
            dropped.append(where)
            continue
        if rid in seen:
            raise DataError(f"{where}: duplicate id {rid!r} (first at {seen[rid]})")
        seen[rid] = where
        ids.append(rid)
        refs.append(ref)
        preds.append(pred)
    if not ids:
        why = f" (every row has an {EMPTY_REFERENCE})" if dropped else ""
        raise DataError(f"{source or 'predictions'}: no predictions to score{why}")
    return ids, refs, preds


def dropped_summary(dropped: Sequence[str]) -> dict[str, Any]:
    """``{"empty reference": {"count", "examples"}}`` for a result's ``dropped`` field."""
    return {EMPTY_REFERENCE: {"count": len(dropped), "examples": list(dropped[:5])}} if dropped else {}


def read_predictions(path: str | Path, *, id_key: str = "id", references_key: str = "reference",
                     prediction_key: str = "prediction") -> list[dict[str, Any]]:
    """Read and validate a predictions JSONL file; a bad line raises ``DataError`` naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    read = read_predictions_file(path, strict=True, required=(id_key, references_key, prediction_key),
                                 id_key=id_key, prediction_key=prediction_key)
    rows = PredictionRows(read.rows)
    rows.source, rows.line_numbers = str(path), read.lines
    parse_rows(rows, id_key=id_key, references_key=references_key, prediction_key=prediction_key,
               source=rows.source, line_numbers=rows.line_numbers)
    return rows


# -- the scorer ---------------------------------------------------------------------------------------
class _Scorer:
    """Settings shared by every system of one evaluation, plus the METEOR Java process."""

    def __init__(self, *, java: JavaOption, selection: MetricSelection, spice: bool, uncertain_as: UncertainAs,
                 progress: bool, meteor: bool = True, device: str | None = None) -> None:
        if uncertain_as not in ("present", "absent"):
            raise ConfigError(f"uncertain_as must be 'present' or 'absent', not {uncertain_as!r}")
        self.selection = selection
        self.spice = spice
        self.needs_tokens = "coco" in selection or spice
        self.use_java = resolve_java(java) if self.needs_tokens else False
        self.uncertain_as = uncertain_as
        self.progress = progress
        self.device = device
        self.use_meteor = meteor and self.use_java and "coco" in selection
        self.warnings: list[str] = []
        self.model_results: ModelMetricResult = ModelMetricResult()
        if java == "auto" and self.needs_tokens and not self.use_java:
            self.warnings.append("Java not found: METEOR and SPICE skipped; BLEU/ROUGE-L/CIDEr use a simple "
                                 "PTB-like tokenizer (not PTB), so they are close to but not exactly the "
                                 "published pycocoevalcap numbers")
        self._stack = ExitStack()
        self._meteor: Any = None

    def __enter__(self) -> _Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def imageclef(self) -> bool:
        return self.selection.imageclef_preprocessing

    @property
    def tokenizer(self) -> str:
        if not self.needs_tokens:
            return "none (no COCO metric chosen)"
        return "ptb" if self.use_java else "simple (not PTB: Java missing or disabled)"

    def meteor(self) -> Any:
        if self.use_meteor and self._meteor is None:
            from medblip.evaluation.meteor import MeteorSession

            self._meteor = self._stack.enter_context(MeteorSession())
        return self._meteor

    def prep(self, text: str) -> str:
        return imageclef_preprocess(text) if self.imageclef else text

    def tokenize(self, references: list[list[str]], systems: list[list[str]]) -> tuple[list[list[str]], list[list[str]]]:
        if not self.needs_tokens:  # no COCO metric: skip the tokenizer (and its Java start)
            return [[] for _ in references], [[] for _ in systems]
        payload: dict[Any, list[str]] = {("ref", i): [self.prep(r) for r in refs] for i, refs in enumerate(references)}
        for s, preds in enumerate(systems):
            payload.update({("sys", s, i): [self.prep(p)] for i, p in enumerate(preds)})
        # One tokenizer run for everything: the PTB tokenizer starts a JVM per call.
        tok = tokenize_all(payload, self.use_java)
        refs_tok = [tok[("ref", i)] for i in range(len(references))]
        return refs_tok, [[tok[("sys", s, i)][0] for i in range(len(preds))] for s, preds in enumerate(systems)]

    def metrics(self, refs_raw: list[list[str]], preds_raw: list[str], refs_tok: list[list[str]],
                preds_tok: list[str], images: Sequence[Any] | None = None,
                concepts: Any = None) -> tuple[dict[str, Resamplable], dict[str, Any]]:
        out: dict[str, Resamplable] = {}
        if "coco" in self.selection:
            bar = _progress_bar(len(preds_tok), "METEOR statistics") if self.progress and self.use_meteor else None
            try:
                coco = caption_metrics(refs_tok, preds_tok, self.meteor(), progress=bar.update if bar else None)
            finally:
                if bar:
                    bar.close()
            out.update({name: coco[name] for name in COCO_METRICS if name in coco})
        if self.spice:
            spice = _spice_metric(refs_tok, preds_tok, self.use_java, self.warnings)
            if spice is not None:
                out["SPICE"] = spice
        if self.selection.model_metrics:
            found = model_metrics(self.selection, refs_raw, preds_raw, [[self.prep(r) for r in refs] for refs in refs_raw],
                                  [self.prep(p) for p in preds_raw], images, self.device, progress=self.progress)
            out.update(found.metrics)
            self.model_results = found
            self.warnings = list(dict.fromkeys([*self.warnings, *found.unavailable.values(), *found.warnings]))
        details: dict[str, Any] = {}
        if "clinical" in self.selection:
            clinical, details = clinical_metrics(refs_raw, preds_raw, self.uncertain_as, concepts)
            out.update(clinical)
        return out, details


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img" if "statistics" in desc else "resample", leave=False)


def _spice_metric(refs_tok: list[list[str]], preds_tok: list[str], use_java: bool,
                  warnings: list[str]) -> AdditiveMetric | None:
    if not use_java:
        warnings.append("SPICE skipped: it needs Java")
        return None
    import pycocoevalcap

    spice_dir = Path(next(iter(pycocoevalcap.__path__))) / "spice"
    if not (spice_dir / "lib" / "stanford-corenlp-3.6.0.jar").exists():
        warnings.append("SPICE skipped: it needs the Stanford CoreNLP 3.6.0 models, which pycocoevalcap "
                        "downloads on first use and which cannot be downloaded here; place "
                        f"stanford-corenlp-3.6.0*.jar in {spice_dir / 'lib'} to enable it")
        return None
    try:
        from pycocoevalcap.spice.spice import Spice

        _, scores = Spice().compute_score({i: r for i, r in enumerate(refs_tok)},
                                          {i: [p] for i, p in enumerate(preds_tok)})
        per_image = [float(s["All"]["f"]) for s in scores]
    except Exception as exc:  # noqa: BLE001 - SPICE is optional; say why it failed, keep the rest
        warnings.append(f"SPICE skipped: the SPICE jar failed ({type(exc).__name__}: {exc})")
        return None
    return mean_metric("SPICE", np.nan_to_num(per_image))


def row_images(rows: Sequence[Mapping[str, Any]], *, image_key: str = "image",
               image_root: str | Path | None = None) -> list[Any]:
    """Each row's image (for CLIPScore): a path (relative ones are relative to ``image_root``), encoded
    bytes, or ``None`` when the row has none."""
    out: list[Any] = []
    for i, row in enumerate(rows):
        src = row.get(image_key) if isinstance(row, Mapping) else None
        if src is None or isinstance(src, bytes):
            out.append(src)
        elif isinstance(src, str | Path) and str(src):
            path = Path(src).expanduser()
            out.append(path if path.is_absolute() or image_root is None else Path(image_root) / path)
        else:
            raise DataError(f"predictions row {i + 1}: field {image_key!r} must be an image path, got {src!r}")
    return out


def _bootstrap(metrics: Mapping[str, Resamplable], n_resamples: int, seed: int, confidence: float,
               progress: bool) -> dict[str, Any]:
    bar = _progress_bar(n_resamples, "bootstrap") if progress and n_resamples else None
    try:
        return bootstrap_cis(metrics, n_resamples, seed, confidence, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


def metric_group(name: str) -> str:
    """The table a metric belongs in: caption, clinical, embedding or image-text."""
    if name in CLINICAL_METRICS:
        return "clinical"
    if name in ("CLIPScore", "RefCLIPScore"):
        return "image-text"
    return "embedding" if name.startswith(("BERTScore", "BLEURT")) else "caption"


def score_predictions(rows: Iterable[Mapping[str, Any]], *, references_key: str = "reference",
                      prediction_key: str = "prediction", id_key: str = "id", bootstrap: int = 1000,
                      seed: int = 0, confidence: float = 0.95, java: JavaOption = "auto",
                      metrics: str | Sequence[str] | None = None, models: Mapping[str, str] | None = None,
                      imageclef: bool = False, device: str | None = None, image_key: str = "image",
                      image_root: str | Path | None = None, spice: bool = False, meteor: bool = True,
                      uncertain_as: UncertainAs = "present", progress: bool = False,
                      image_rows: bool = False) -> dict[str, Any]:
    """Every chosen metric of one system's predictions, each with a bootstrap confidence interval.

    ``rows`` carry an id, a reference (string or list of strings), a prediction and, for CLIPScore,
    an ``image`` (a path, relative to ``image_root``, or encoded bytes). ``metrics``: sets and single
    metrics (default ``coco,clinical``; see :mod:`medblip.evaluation.metric_sets`), ``models`` the
    model per key (``bertscore``, ``clip``), ``device`` where they run (default: CUDA when there is
    one). ``java``: ``"auto"`` uses Java when installed (PTB tokenizer + METEOR) and otherwise warns
    and falls back; ``True`` requires it; ``False`` never uses it. ``meteor=False`` skips METEOR, whose
    Java process takes 10 s or more to start. ``imageclef`` (implied by the ``imageclef`` set) applies
    the ImageCLEFmedical Caption preprocessing before the text metrics; clinical metrics and CLIP
    always read the raw text (negation needs punctuation). A metric that cannot be computed (a model
    not downloaded, a package missing) is listed under ``unavailable`` with the reason; the others are
    computed. Returns a JSON-ready dict, the layout of :class:`medblip.results.Scores` (see
    :func:`metrics_markdown`). ``image_rows`` adds ``"image_rows"``: one :class:`medblip.results.ImageScores`
    per image (CIDEr, token F1, the concepts of each caption; :mod:`medblip.evaluation.per_image`), what
    :func:`write_metrics` stores as ``per_image.jsonl`` for the report.
    """
    source, line_numbers = getattr(rows, "source", None), getattr(rows, "line_numbers", None)
    rows = list(rows)
    selection = select_metrics(metrics, models, imageclef=imageclef)
    dropped: list[str] = []
    ids, refs, preds = parse_rows(rows, id_key=id_key, references_key=references_key,
                                  prediction_key=prediction_key, source=source, line_numbers=line_numbers,
                                  dropped=dropped)
    images = None
    if selection.needs_images:  # aligned with the rows kept (a row with an empty reference is dropped)
        by_id = dict(zip((str(r.get(id_key)) for r in rows), row_images(rows, image_key=image_key,
                                                                        image_root=image_root), strict=True))
        images = [by_id[i] for i in ids]
    # extracted once, for the clinical metrics and the per-image rows
    concepts = extract_all(refs, preds) if "clinical" in selection or image_rows else None
    with _Scorer(java=java, selection=selection, spice=spice, uncertain_as=uncertain_as, progress=progress,
                 meteor=meteor, device=device) as scorer:
        refs_tok, (preds_tok,) = scorer.tokenize(refs, [preds])
        values, clinical = scorer.metrics(refs, preds, refs_tok, preds_tok, images, concepts)
        cis = _bootstrap(values, bootstrap, seed, confidence, progress)
    degeneration = degeneration_report(preds, refs)
    for warning in degeneration.warnings:
        log.warning(warning)
    found = scorer.model_results
    table = {}
    for name, ci in cis.items():
        entry = {**ci.to_dict(), "group": metric_group(name)}
        if name in clinical.get("support", {}):
            entry["support"] = clinical["support"][name]
        elif name in found.info and "images_scored" in found.info[name]:
            entry["support"] = found.info[name]["images_scored"]
        table[name] = entry
    dropped_note = ([f"{len(dropped)} row(s) with an {EMPTY_REFERENCE} dropped, not scored "
                     f"(e.g. {', '.join(dropped[:3])})"] if dropped else [])
    result: dict[str, Any] = {
        "n_images": len(ids),
        "dropped": dropped_summary(dropped),
        "metrics": table,
        "clinical": clinical,
        "degeneration": degeneration.model_dump(),
        "warnings": dropped_note + scorer.warnings + degeneration.warnings,
        "settings": {
            "metrics": list(selection.requested), "metric_parts": list(selection.parts),
            "tokenizer": scorer.tokenizer, "java": scorer.use_java, "meteor": scorer.use_meteor,
            "imageclef": selection.imageclef_preprocessing,
            "bootstrap": bootstrap, "seed": seed, "confidence": confidence, "uncertain_as": uncertain_as,
            "spice": spice,
            "models": {key: selection.models.get(key, DEFAULT_MODELS[key]) for key in
                       dict.fromkeys(MODEL_OF[m] for m in selection.model_metrics if m in MODEL_OF)},
        },
        "versions": {"pycocoevalcap": _version("pycocoevalcap"), "medblip": _version("medblip"),
                     "java": java_available() if scorer.use_java else False},
    }
    if found.info:
        result["model_metrics"] = found.info
    if found.unavailable:
        result["unavailable"] = found.unavailable
    if found.per_image:
        # the per-image values behind each mean (null: not scored), in the order of "ids"
        result["per_image"] = {"ids": ids, **found.per_image}
    if image_rows:
        cider = values.get("CIDEr")
        result["image_rows"] = image_scores(ids, refs, preds, concepts=concepts,
                                            cider=cider.per_image() if isinstance(cider, CiderD) else None)
    return result


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# -- two systems ----------------------------------------------------------------------------------------
def _align(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]], names: tuple[str, str],
           keys: dict[str, str]) -> tuple[list[str], list[list[str]], list[str], list[str]]:
    ids_a, refs_a, preds_a = parse_rows(rows_a, source=names[0], **keys)
    ids_b, refs_b, preds_b = parse_rows(rows_b, source=names[1], **keys)
    index_b = {rid: i for i, rid in enumerate(ids_b)}
    missing_b = [rid for rid in ids_a if rid not in index_b]
    missing_a = sorted(set(ids_b) - set(ids_a))
    if missing_a or missing_b:
        raise DataError(f"paired comparison needs the same images: {len(missing_b)} id(s) only in {names[0]} "
                        f"(e.g. {missing_b[:3]}), {len(missing_a)} only in {names[1]} (e.g. {missing_a[:3]})")
    order = [index_b[rid] for rid in ids_a]
    for rid, ref_a, j in zip(ids_a, refs_a, order, strict=True):
        if refs_b[j] != ref_a:
            raise DataError(f"paired comparison: id {rid!r} has different references in {names[0]} and {names[1]}")
    return ids_a, refs_a, preds_a, [preds_b[j] for j in order]


def compare_systems(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]], *,
                    names: tuple[str, str] = ("A", "B"), test_metrics: Sequence[str] | None = None,
                    method: str = "bootstrap", n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                    java: JavaOption = "auto", metrics: str | Sequence[str] | None = None,
                    models: Mapping[str, str] | None = None, imageclef: bool = False, device: str | None = None,
                    image_key: str = "image", image_root: str | Path | None = None, spice: bool = False,
                    meteor: bool = True, uncertain_as: UncertainAs = "present", references_key: str = "reference",
                    prediction_key: str = "prediction", id_key: str = "id",
                    progress: bool = False) -> dict[str, Any]:
    """Paired significance of system B against system A on the same images, per metric.

    ``metrics``, ``models``, ``imageclef``, ``device`` and the image fields choose and compute the
    metrics as in :func:`score_predictions` (images are taken from ``rows_a``); ``test_metrics``
    limits the tests to these metric names (default: every metric computed). ``method``:
    ``"bootstrap"`` (paired bootstrap, also gives a CI of the difference), ``"randomization"``
    (approximate randomisation) or ``"both"`` (``p_value`` is the bootstrap one).
    """
    methods = list(PAIRED_METHODS) if method == "both" else [method]
    for m in methods:
        if m not in PAIRED_METHODS:
            raise ConfigError(f"unknown paired test {method!r}: use 'bootstrap', 'randomization' or 'both'")
    selection = select_metrics(metrics, models, imageclef=imageclef)
    keys = {"id_key": id_key, "references_key": references_key, "prediction_key": prediction_key}
    rows_a = list(rows_a)
    ids, refs, preds_a, preds_b = _align(rows_a, rows_b, names, keys)
    images = None
    if selection.needs_images:
        by_id = dict(zip((str(r[id_key]) for r in rows_a), row_images(rows_a, image_key=image_key,
                                                                       image_root=image_root), strict=True))
        images = [by_id[i] for i in ids]
    result: dict[str, Any] = {"systems": list(names), "n_images": len(ids), "method": method,
                              "n_resamples": n_resamples, "seed": seed, "metrics": {}}
    with _Scorer(java=java, selection=selection, spice=spice, uncertain_as=uncertain_as, progress=progress,
                 meteor=meteor, device=device) as scorer:
        refs_tok, (tok_a, tok_b) = scorer.tokenize(refs, [preds_a, preds_b])
        ma, _ = scorer.metrics(refs, preds_a, refs_tok, tok_a, images)
        mb, _ = scorer.metrics(refs, preds_b, refs_tok, tok_b, images)
        wanted = list(ma) if test_metrics is None else list(test_metrics)
        for name in wanted:
            if name not in ma:
                result["metrics"][name] = {"p_value": None, "note": f"metric {name!r} not computed "
                                                                    f"(available: {', '.join(ma)})"}
                continue
            entry: dict[str, Any] = {}
            for m in methods:
                r = paired_significance(ma[name], mb[name], m, n_resamples, seed, confidence)
                d = r.to_dict()
                if not entry:
                    entry = {"a": d["a"], "b": d["b"], "difference": d["difference"], "method": m,
                             "p_value": d["p_value"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}
                entry[f"p_{m}"] = d["p_value"]
            result["metrics"][name] = entry
    result["warnings"] = scorer.warnings
    result["settings"] = {"tokenizer": scorer.tokenizer, "metrics": list(selection.requested),
                          "imageclef": selection.imageclef_preprocessing, "confidence": confidence,
                          "uncertain_as": uncertain_as}
    return result


def paired_test(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]], *,
                test_metrics: Sequence[str] | None = None, method: str = "bootstrap", n: int = 1000, seed: int = 0,
                **options: Any) -> dict[str, dict[str, Any]]:
    """Per metric: ``{"a", "b", "difference" (b - a), "p_value", ...}`` of a paired test on the same images.

    A thin form of :func:`compare_systems`; ``options`` are the scoring options of
    :func:`score_predictions` (metrics, models, device, java, imageclef, spice, uncertain_as, ...).
    """
    return compare_systems(rows_a, rows_b, test_metrics=test_metrics, method=method, n_resamples=n, seed=seed,
                           **options)["metrics"]


# -- output -------------------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 4) -> str:
    return fmt_num(x, digits, missing="-")


def metrics_markdown(result: Mapping[str, Any], title: str | None = None) -> str:
    """A Markdown report of :func:`score_predictions`' result: metrics with CIs, diagnostics, warnings."""
    settings = result.get("settings", {})
    conf = settings.get("confidence", 0.95)
    lines = [f"# {title or 'Caption evaluation'}", ""]
    warnings = result.get("warnings") or []
    if warnings:
        lines += [f"> **WARNING:** {w}" for w in warnings] + [""]
    lines += [f"{result.get('n_images', '?')} images · metrics: {','.join(settings.get('metrics') or DEFAULT_METRICS)} · "
              f"tokenizer: {settings.get('tokenizer', '?')} · "
              f"ImageCLEF preprocessing: {'yes' if settings.get('imageclef') else 'no'} · "
              f"{conf:.0%} CI from {settings.get('bootstrap', 0)} bootstrap resamples (seed "
              f"{settings.get('seed', 0)})", ""]
    models = result.get("model_metrics") or {}
    if models:
        lines += ["Models: " + "; ".join(f"{name}: `{info.get('model')}`"
                                        + (f" (revision {info['revision'][:12]})" if info.get("revision") else "")
                                        for name, info in models.items()), ""]
    lines += [f"| metric | value | {conf:.0%} CI | n |", "|---|---:|---|---:|"]
    for name, m in result.get("metrics", {}).items():
        ci = f"[{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]" if m.get("ci_low") is not None else "-"
        n = m.get("support") if m.get("support") is not None else result.get("n_images", "")  # None: every image
        lines.append(f"| {name} | {_fmt(m.get('value'))} | {ci} | {n} |")
    for name in result.get("unavailable") or {}:
        lines.append(f"| {name} | not available (see warnings) | - | - |")
    deg = result.get("degeneration")
    if deg:
        lines += ["", "## Degeneration diagnostics", "", "| diagnostic | value |", "|---|---:|"]
        rows = [("distinct captions", _fmt(deg["distinct_caption_fraction"], 3)),
                ("most common caption share", _fmt(deg["most_common_share"], 3)),
                ("distinct-1 / distinct-2", f"{_fmt(deg['distinct_1'], 3)} / {_fmt(deg['distinct_2'], 3)}"),
                ("repeated trigram rate (within caption)", _fmt(deg["repeated_ngram_rate"], 3)),
                ("captions with a 4+ token run", _fmt(deg["token_run_share"], 3)),
                ("mean length (words) / references",
                 f"{_fmt(deg['mean_length'], 1)} / {_fmt(deg.get('mean_reference_length'), 1)}"),
                ("collapsed", "**YES**" if deg["collapsed"] else "no")]
        lines += [f"| {k} | {v} |" for k, v in rows]
        if deg.get("most_common_caption") and deg["most_common_share"] * deg["n_captions"] > 1:
            lines += ["", f"Most common caption: `{deg['most_common_caption']}`"]
    timing = result.get("generation_time") or {}
    if timing.get("seconds_per_image") is not None:
        lines += ["", f"Generation time: {timing['seconds_per_image']:.3f} s/image "
                      f"({timing['images_timed']} images timed)."]
    return "\n".join(lines) + "\n"


def write_metrics(result: Mapping[str, Any], out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``metrics.json`` (a :class:`medblip.results.Scores`), ``metrics.md`` and, when the result has
    them (``image_rows``), the per-image rows as ``per_image.jsonl``, atomically, into ``out_dir``."""
    from medblip.io import atomic_write_text, write_jsonl
    from medblip.results import ImageScores, Scores

    out = Path(out_dir)
    result = dict(result)
    rows = result.pop("image_rows", None)
    paths = {"json": Scores.model_validate(result).write(out),
             "markdown": atomic_write_text(out / METRICS_MD, metrics_markdown(result, title))}
    if rows is not None:
        paths["per_image"] = write_jsonl(out / ImageScores.FILE, rows)
    return paths
