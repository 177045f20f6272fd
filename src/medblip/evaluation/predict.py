"""Batched caption generation over a dataset split, and ``medblip evaluate`` built on it.

:func:`predict` captions the records that ``predictions.jsonl`` does not hold yet, appending one line
per image as each batch finishes, so an interrupted run resumes where it stopped (a half-written last
line left by a crash is dropped, with a note). Each line is a :class:`medblip.results.Prediction`::

    {"id", "split", "reference", "prediction", "model", "family", "generation": {...}, "gen_seconds", "image"}

where ``generation`` is the full :class:`~medblip.models.base.GenerationSettings` used,
``gen_seconds`` the wall-clock generation time per image (batch time / batch size) and ``image`` the
image's identity (path, size and modification time, or a hash of its bytes). A resume goes on only
when everything matches: the model (its files' sizes and times, kept in ``predictions.fingerprint.json``
beside the predictions), the generation settings and the image of every id already captioned;
otherwise it is refused with what differs, so one file never mixes two models or two data sets.

:func:`evaluate` = load the split, :func:`predict`, score with
:func:`medblip.evaluation.score_predictions`, write ``metrics.json``, ``metrics.md`` and ``run.json``.
The model is only loaded when some record still needs a caption, so re-scoring a finished run (or
resuming a compare) costs no model load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medblip.errors import ConfigError, DataError, MedblipError
from medblip.evaluation.predictions import PREDICTIONS_FILE, read_predictions_file
from medblip.fingerprint import describe_differences, image_signature, model_signature
from medblip.io import append_jsonl, atomic_write_json, dumps
from medblip.models.base import GenerationSettings
from medblip.models.loading import auto_device, resolve_checkpoint
from medblip.results import Prediction, image_path
from medblip.runinfo import set_seed

if TYPE_CHECKING:
    from medblip.data import Record
    from medblip.models.base import CaptionModel

log = logging.getLogger(__name__)

RUN_JSON = "run.json"

#: GenerationSettings field names (the CLI options and the YAML ``generation:`` keys)
SETTING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationSettings))


# -- generation settings ---------------------------------------------------------------------------
def make_settings(values: GenerationSettings | Mapping[str, Any] | None = None,
                  base: GenerationSettings | None = None, *, source: str = "generation",
                  **overrides: Any) -> GenerationSettings:
    """``base`` updated with ``values`` and then ``overrides`` (``None`` values are ignored).

    Unknown keys raise :class:`ConfigError` naming ``source`` (a file/section) and the key.
    """
    settings = dataclasses.replace(base) if base is not None else GenerationSettings()
    merged: dict[str, Any] = {}
    if isinstance(values, GenerationSettings):
        merged.update(dataclasses.asdict(values))
    elif values:
        merged.update(values)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(merged) - set(SETTING_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown generation setting {unknown[0]!r} "
                          f"(known: {', '.join(SETTING_FIELDS)})")
    merged = {k: v for k, v in merged.items() if v is not None or k == "prompt"}
    settings = dataclasses.replace(settings, **merged)
    _check_settings(settings, source)
    return settings


def _check_settings(s: GenerationSettings, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key}={getattr(s, key)!r} {why}")

    if not isinstance(s.num_beams, int) or s.num_beams < 1:
        raise bad("num_beams", "must be an integer >= 1")
    if not isinstance(s.max_new_tokens, int) or s.max_new_tokens < 1:
        raise bad("max_new_tokens", "must be an integer >= 1")
    if not isinstance(s.min_new_tokens, int) or not 0 <= s.min_new_tokens <= s.max_new_tokens:
        raise bad("min_new_tokens", "must be an integer between 0 and max_new_tokens")
    if not isinstance(s.top_p, int | float) or not 0 < s.top_p <= 1:
        raise bad("top_p", "must be in (0, 1]")
    if not isinstance(s.temperature, int | float) or s.temperature <= 0:
        raise bad("temperature", "must be > 0")
    if not isinstance(s.repetition_penalty, int | float) or s.repetition_penalty <= 0:
        raise bad("repetition_penalty", "must be > 0")
    if not isinstance(s.no_repeat_ngram_size, int) or s.no_repeat_ngram_size < 0:
        raise bad("no_repeat_ngram_size", "must be an integer >= 0")
    if s.prompt is not None and not isinstance(s.prompt, str):
        raise bad("prompt", "must be a string")


def settings_dict(settings: GenerationSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


# -- prediction ------------------------------------------------------------------------------------
@dataclass
class PredictionRun:
    """Result of :func:`predict`: rows for the requested records, in record order."""

    path: Path
    rows: list[dict[str, Any]]
    generated: int
    skipped: int
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float | None:
        return seconds_per_image(self.rows)


def seconds_per_image(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Mean ``gen_seconds`` over the rows that record it (``None`` when none do)."""
    times = [float(r["gen_seconds"]) for r in rows
             if isinstance(r.get("gen_seconds"), int | float) and math.isfinite(r["gen_seconds"])]
    return sum(times) / len(times) if times else None


def display_name(model: str | Path) -> str:
    """A short name for tables: the folder name (``run/checkpoints/best`` -> ``run/best``) or hub id."""
    p = Path(str(model))
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        return f"{p.parent.parent.name}/{p.name}"
    return p.name if p.is_absolute() or p.exists() else str(model)


def model_identity(name_or_path: str | Path) -> str:
    """How a model is named in predictions: the absolute path for a local checkpoint, else the hub id."""
    p = Path(str(name_or_path)).expanduser()
    return str(p.resolve()) if p.exists() else str(name_or_path)


def predict(
    model: CaptionModel | Callable[[], CaptionModel],
    records: Sequence[Record],
    out_path: str | Path,
    settings: GenerationSettings | None = None,
    *,
    batch_size: int = 8,
    model_name: str | None = None,
    family: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    desc: str | None = None,
) -> PredictionRun:
    """Caption every record not yet in ``out_path`` (``predictions.jsonl``), batch by batch.

    ``model`` may be a zero-argument factory: it is called only if something is left to generate.
    ``settings`` must be complete (see :func:`make_settings`); when ``model`` is a factory the
    caller supplies ``model_name``/``family`` so that existing lines can be checked against them.
    Lines already in the file must come from the same model and settings; otherwise a
    :class:`MedblipError` asks for another output folder or ``overwrite``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and out_path.exists():
        out_path.unlink()
    loaded: CaptionModel | None = None if callable(model) and not _is_caption_model(model) else model
    if model_name is None:
        if loaded is None:
            raise ValueError("predict(): model_name is required when model is a factory")
        model_name = model_identity(loaded.name_or_path)
    if family is None and loaded is not None:
        family = getattr(loaded, "family", None)
    if settings is None:
        settings = GenerationSettings()
    gen = settings_dict(settings)

    existing = read_predictions_file(out_path, repair=True)
    notes = list(existing.notes)
    done = existing.by_id
    _check_compatible(out_path, existing.rows, model_name, gen)
    images = {str(r.id): image_signature(r.image) for r in records}
    notes += _check_fingerprint(out_path, existing.rows, model_name, images)

    ids = [str(r.id) for r in records]
    pending = [r for r in records if str(r.id) not in done]
    skipped = len(records) - len(pending)
    if skipped:
        msg = (f"{out_path}: resuming - {skipped} of {len(records)} image(s) already predicted, "
               f"{len(pending)} to go")
        log.info(msg)
        notes.append(msg)

    if pending:
        if loaded is None:
            loaded = model()  # type: ignore[operator]
            family = getattr(loaded, "family", None) or family
        _generate_into(loaded, pending, out_path, settings, gen, batch_size=batch_size,
                       model_name=model_name, family=family, progress=progress, desc=desc, done=done,
                       signatures=images)
    # the dataset's caption is the reference (it may differ from a stored one if caption options changed)
    rows = [{**done[i], "reference": r.caption} for i, r in zip(ids, records, strict=True)]
    return PredictionRun(out_path, rows, generated=len(pending), skipped=skipped, notes=notes)


def _is_caption_model(obj: Any) -> bool:
    from medblip.models.base import CaptionModel

    return isinstance(obj, CaptionModel)


def _check_compatible(path: Path, rows: list[dict[str, Any]], model_name: str, gen: dict[str, Any]) -> None:
    for row in rows:
        old_model, old_gen = row.get("model"), row.get("generation")
        if old_model is not None and old_model != model_name:
            raise MedblipError(
                f"{path} holds predictions of model {old_model!r}, not {model_name!r}; use another "
                f"output folder or --overwrite to start again")
        if old_gen is not None and old_gen != gen:
            diff = sorted(k for k in set(gen) | set(old_gen) if gen.get(k) != old_gen.get(k))
            raise MedblipError(
                f"{path} holds predictions made with different generation settings "
                f"({', '.join(f'{k}: {old_gen.get(k)!r} -> {gen.get(k)!r}' for k in diff)}); "
                f"use another output folder or --overwrite to start again")


def fingerprint_path(predictions: Path) -> Path:
    return predictions.with_name(predictions.stem + ".fingerprint.json")


def _check_fingerprint(path: Path, rows: list[dict[str, Any]], model_name: str,
                       images: Mapping[str, Any]) -> list[str]:
    """Refuse to add to ``path`` when its rows came from other model files or other images (see module doc).

    Writes the fingerprint when the file starts (or predates fingerprints); returns notes.
    """
    fp_file = fingerprint_path(path)
    current = {"model": model_signature(model_name)}
    old = None
    if fp_file.is_file():
        try:
            old = json.loads(fp_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
    notes: list[str] = []
    if rows:
        if old is not None:
            diffs = describe_differences(old, current)
            if diffs:
                raise MedblipError(
                    f"{path} holds predictions of a model that has changed since ({'; '.join(diffs)}); resuming "
                    "would mix two models' captions: use another output folder, or --overwrite to start again")
        else:
            notes.append(f"{path}: no {fp_file.name} (written by an older medblip); resuming on the model name "
                         "and settings alone")
        for row in rows:
            rid = str(row["id"])
            if rid in images and row.get("image") is not None and row["image"] != images[rid]:
                raise MedblipError(
                    f"{path}: id {rid!r} was captioned from another image ({row['image'].get('path', 'bytes')}) "
                    f"than the data set now holds ({(images[rid] or {}).get('path', 'bytes')}); resuming would "
                    "mix two data sets: use another output folder, or --overwrite to start again")
    if old != current:
        atomic_write_json(fp_file, current)
    return notes


def _generate_into(model: CaptionModel, pending: Sequence[Record], out_path: Path,
                   settings: GenerationSettings, gen: dict[str, Any], *, batch_size: int,
                   model_name: str, family: str | None, progress: bool, desc: str | None,
                   done: dict[str, dict[str, Any]], signatures: Mapping[str, Any]) -> None:
    from tqdm.auto import tqdm

    from medblip.data import load_image

    bar = tqdm(total=len(pending), desc=desc or "captioning", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            images = []
            for rec in batch:
                if rec.image is None:
                    raise DataError(f"record {rec.id!r} ({rec.split}) has no image to caption")
                images.append(load_image(rec.image))
            t0 = time.perf_counter()
            captions = model.generate(images, settings)
            elapsed = time.perf_counter() - t0
            if len(captions) != len(batch):  # an adapter bug, not a user error
                raise RuntimeError(f"{type(model).__name__}.generate returned {len(captions)} captions "
                                   f"for {len(batch)} images")
            per_image = elapsed / len(batch)
            for rec, caption in zip(batch, captions, strict=True):
                row = Prediction(id=str(rec.id), split=rec.split, reference=rec.caption, prediction=caption,
                                 model=model_name, family=family, generation=gen, gen_seconds=round(per_image, 6),
                                 image=signatures.get(str(rec.id))).model_dump(exclude_unset=True)
                append_jsonl(out_path, row)
                done[row["id"]] = row
            bar.update(len(batch))
    finally:
        bar.close()


# -- evaluate --------------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    out: Path
    predictions: PredictionRun
    metrics: Any
    markdown: str
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float | None:
        return self.predictions.seconds_per_image


def load_split(data: str | Path, split: str = "test", *, format: str = "auto", limit: int | None = None,
               seed: int = 0, caption_options: Any = None) -> tuple[list[Record], Any]:
    """The records of one split (``DataError`` when it is empty) and the loader's report."""
    from medblip.data import load_dataset
    from medblip.data.records import normalize_splits

    (split,) = normalize_splits([split]) or (split,)
    ds = load_dataset(data, format=format, splits=[split], caption_options=caption_options,
                      require_images=True, limit=limit, seed=seed)
    records = [r for r in ds.records if r.split == split]
    if not records:
        raise DataError(f"{data}: no usable records in split {split!r} ({ds.report.summary().splitlines()[0]})")
    return records, ds.report


def evaluate(
    model: str | Path | CaptionModel,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    format: str = "auto",
    limit: int | None = None,
    batch_size: int = 8,
    generation: GenerationSettings | Mapping[str, Any] | None = None,
    family: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    score_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    records: Sequence[Record] | None = None,
) -> EvaluationResult:
    """Caption a split with a model, score it and write the run folder ``out``.

    ``generation`` holds only the settings to change from the family's defaults (or a complete
    :class:`GenerationSettings`). ``score_options``: options of
    :func:`medblip.evaluation.score_predictions` (``metrics``, ``models``, ``device``, ``imageclef``,
    ``meteor``, ``java``, ``spice``, ``uncertain_as``); CLIPScore reads the records' images.
    ``records`` skips loading ``data``.
    """
    from medblip.locks import output_lock
    from medblip.outputs import prepare_output_dir

    unknown = sorted(set(score_options or {}) - set(SCORE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown scoring option {unknown[0]!r} (known: {', '.join(SCORE_OPTIONS)})")
    out = prepare_output_dir(out, "evaluate", overwrite=overwrite, known_files=(PREDICTIONS_FILE,))
    with output_lock(out, "evaluate"):
        return _evaluate(model, data, out, split=split, format=format, limit=limit, batch_size=batch_size,
                         generation=generation, family=family, device=device, dtype=dtype,
                         model_options=model_options, bootstrap=bootstrap, seed=seed, score_options=score_options,
                         progress=progress, overwrite=overwrite, records=records)


def _evaluate(model: str | Path | CaptionModel, data: str | Path, out: Path, *, split: str, format: str,
              limit: int | None, batch_size: int, generation: GenerationSettings | Mapping[str, Any] | None,
              family: str | None, device: str | None, dtype: str | None, model_options: Mapping[str, Any] | None,
              bootstrap: int, seed: int, score_options: Mapping[str, Any] | None, progress: bool, overwrite: bool,
              records: Sequence[Record] | None) -> EvaluationResult:
    notes: list[str] = []
    if records is None:
        records, report = load_split(data, split, format=format, limit=limit, seed=seed)
        notes.append(report.summary())
    set_seed(seed)  # only sampling (do_sample) draws random numbers
    from medblip.progress import library_progress

    with library_progress(progress):  # progress=False: transformers' "Loading weights" bar too
        run = predict_with(model, records, out / PREDICTIONS_FILE, generation=generation, family=family,
                           device=device, dtype=dtype, model_options=model_options, batch_size=batch_size,
                           progress=progress, overwrite=overwrite)
    notes.extend(run.notes)
    first = run.rows[0]
    split = records[0].split
    images = {str(r.id): r.image for r in records}
    metrics, markdown = score_and_write(
        [{**row, "image": images.get(str(row["id"]))} for row in run.rows], out, bootstrap=bootstrap, seed=seed,
        score_options=score_options, progress=progress,
        title=f"{display_name(first['model'])} on {split} ({len(run.rows)} images)",
        extra={"model": first.get("model"), "family": first.get("family"),
               "generation": first.get("generation"), "data": str(data), "split": split, "format": format})
    run_info(out, {
        "command": "evaluate",
        "model": str(model) if not _is_caption_model(model) else model.name_or_path,  # type: ignore[union-attr]
        "family": run.rows[0].get("family"),
        "data": str(data), "split": split, "format": format, "limit": limit,
        "batch_size": batch_size, "generation": run.rows[0].get("generation"),
        "device": device, "dtype": dtype, "bootstrap": bootstrap, "scoring": dict(score_options or {}),
    }, seed=seed, images=len(run.rows), generated=run.generated, skipped=run.skipped,
        seconds_per_image=run.seconds_per_image)
    return EvaluationResult(out, run, metrics, markdown, notes)


def predict_with(
    model: str | Path | CaptionModel,
    records: Sequence[Record],
    out_path: str | Path,
    *,
    generation: GenerationSettings | Mapping[str, Any] | None = None,
    family: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    overwrite: bool = False,
    desc: str | None = None,
    source: str = "generation",
) -> PredictionRun:
    """:func:`predict` for a model given by name/path (loaded only when needed) or as an adapter.

    ``generation`` changes the shared :class:`GenerationSettings` defaults; ``prompt: None`` means
    the family's own prompt (each adapter documents it).
    """
    settings = make_settings(generation, source=source)
    if _is_caption_model(model):
        return predict(model, records, out_path, settings, batch_size=batch_size, progress=progress,
                       overwrite=overwrite, desc=desc)
    checkpoint, run_options, notes = resolve_checkpoint(model)
    options = {**run_options, **dict(model_options or {})}

    def factory() -> CaptionModel:
        from medblip.models import create_model

        return create_model(checkpoint, family=family, dtype=dtype, device=auto_device(device), **options)

    run = predict(factory, records, out_path, settings, batch_size=batch_size,
                  model_name=model_identity(checkpoint), family=family, progress=progress,
                  overwrite=overwrite, desc=desc)
    run.notes[:0] = notes
    return run


# -- scoring and files -----------------------------------------------------------------------------
#: options of score_predictions that evaluate/compare pass through (``scoring:`` in a compare config)
SCORE_OPTIONS = ("metrics", "models", "device", "java", "imageclef", "meteor", "spice", "uncertain_as")


def score_and_write(rows: Sequence[Mapping[str, Any]], out: Path, *, bootstrap: int, seed: int,
                    score_options: Mapping[str, Any] | None = None, title: str | None = None,
                    progress: bool = False, extra: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """Score the id/reference/prediction of ``rows`` with :func:`medblip.evaluation.score_predictions`;
    write ``metrics.json`` (plus ``generation_time`` and ``extra``), ``metrics.md`` and ``per_image.jsonl``.
    Returns the result (without the per-image rows) and the Markdown."""
    from medblip.evaluation.scoring import score_predictions, write_metrics

    # the image is what CLIPScore reads; nothing else of a row is scored
    clean = [{"id": r["id"], "reference": r["reference"], "prediction": r["prediction"],
              **({"image": image} if (image := _image(r.get("image"))) is not None else {})} for r in rows]
    result = score_predictions(clean, bootstrap=bootstrap, seed=seed, progress=progress, image_rows=True,
                               **dict(score_options or {}))
    result["generation_time"] = {"seconds_per_image": seconds_per_image(rows),
                                 "images_timed": sum(1 for r in rows if "gen_seconds" in r)}
    result.update(extra or {})
    paths = write_metrics(result, out, title=title)
    result.pop("image_rows")
    return result, paths["markdown"].read_text(encoding="utf-8")


def _image(image: Any) -> Any:
    """What CLIPScore reads of a row's ``image``: a path or bytes as given (compare passes the data set's),
    or the path in the image identity medblip records in predictions.jsonl."""
    return image_path(image) if isinstance(image, dict) else image


def run_info(out: Path, config: Mapping[str, Any], *, seed: int | None = None, **extra: Any) -> Path:
    from medblip.runinfo import run_metadata

    return atomic_write_json(out / RUN_JSON, json.loads(dumps(run_metadata(dict(config), seed, **extra))))
