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
from medblip.evaluation.scoring import METRICS_JSON, METRICS_MD
from medblip.fingerprint import describe_differences, image_signature, model_signature
from medblip.io import append_jsonl, atomic_write_json, dumps, write_jsonl
from medblip.models.base import GenerationSettings
from medblip.models.loading import (
    GENERATION_CONFIG,
    auto_device,
    checkpoint_generation_settings,
    resolve_checkpoint,
)
from medblip.results import Prediction, image_path
from medblip.runinfo import set_seed

if TYPE_CHECKING:
    from PIL import Image

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


#: where a setting came from (``generation_source`` in run.json, metrics.json, serve's /health)
OPTION, CHECKPOINT, DEFAULT = "option", "checkpoint", "default"


def resolve_settings(generation: GenerationSettings | Mapping[str, Any] | None = None,
                     saved: Mapping[str, Any] | None = None, *, source: str = "generation",
                     saved_source: str = "the checkpoint's generation_config.json",
                     ) -> tuple[GenerationSettings, dict[str, str]]:
    """The settings to decode with and where each came from (:data:`OPTION`, :data:`CHECKPOINT`, :data:`DEFAULT`).

    ``generation``: the settings asked for (a command's options, ``medblip.load(generation=...)``), or a
    complete :class:`GenerationSettings` that decides everything; over ``saved``, the checkpoint's (see
    :func:`medblip.models.loading.checkpoint_generation_settings`); over medblip's defaults.
    """
    if isinstance(generation, GenerationSettings):
        return make_settings(generation, source=source), dict.fromkeys(SETTING_FIELDS, OPTION)
    given = {k for k, v in (generation or {}).items() if v is not None or k == "prompt"}
    base = make_settings(saved, source=saved_source)
    where = {k: OPTION if k in given else CHECKPOINT if k in (saved or {}) else DEFAULT for k in SETTING_FIELDS}
    return make_settings(generation, base=base, source=source), where


def saved_settings_note(checkpoint: str | Path, settings: GenerationSettings,
                        sources: Mapping[str, str]) -> str | None:
    """A line for the terminal naming the settings ``checkpoint`` decides that differ from medblip's
    defaults (``None`` when there are none): captions unlike those of medblip's defaults say why."""
    defaults = GenerationSettings()
    used = {k: getattr(settings, k) for k, where in sources.items()
            if where == CHECKPOINT and getattr(settings, k) != getattr(defaults, k)}
    if not used:
        return None
    return (f"{checkpoint}: decoding with its saved generation settings "
            f"({', '.join(f'{k}={v!r}' for k, v in used.items())}) where no option says otherwise")


def checkpoint_settings(generation: GenerationSettings | Mapping[str, Any] | None, checkpoint: str | Path, *,
                        source: str = "generation") -> tuple[GenerationSettings, dict[str, str], str | None]:
    """:func:`resolve_settings` for a checkpoint given by name/path (its saved settings read without
    loading it): the settings, where each came from, and :func:`saved_settings_note`'s line (or None)."""
    settings, sources = resolve_settings(generation, checkpoint_generation_settings(checkpoint), source=source,
                                         saved_source=f"{checkpoint}: {GENERATION_CONFIG}")
    return settings, sources, saved_settings_note(checkpoint, settings, sources)


def settings_dict(settings: GenerationSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


# -- predictions.jsonl -----------------------------------------------------------------------------






# -- prediction ------------------------------------------------------------------------------------
@dataclass
class PredictionRun:
    """Result of :func:`predict`: rows for the requested records, in record order.

    ``skipped``: records already in the file (resumed). ``unreadable``: ``(item, reason)`` of images
    that could not be read (only with ``on_unreadable="skip"``; they have no row). ``captioner``: how
    this run's captions were generated (:func:`medblip.perf.captioner.select_captioner`; ``path`` is
    ``None`` when nothing was left to caption). ``is_main``: False on the other processes of a
    multi-process run, whose ``rows`` are empty (the main process holds the merged result).
    """

    path: Path | None
    rows: list[dict[str, Any]]
    generated: int
    skipped: int
    notes: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    captioner: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True
    num_processes: int = 1
    generation_source: dict[str, str] = field(default_factory=dict)

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


def record_image(record: Record) -> Image.Image:
    """The decoded image of a dataset record (``DataError`` when it has none)."""
    from medblip.data import load_image

    if record.image is None:
        raise DataError(f"record {record.id!r} ({record.split}) has no image to caption")
    return load_image(record.image)


def record_fields(record: Record) -> dict[str, Any]:
    """What a prediction line says about a dataset record besides its caption."""
    return {"split": record.split, "reference": record.caption}


def predict(
    model: Any,
    records: Sequence[Any],
    out_path: str | Path | None,
    settings: GenerationSettings | None = None,
    *,
    batch_size: int = 8,
    model_name: str | None = None,
    family: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    desc: str | None = None,
    captioner: str = "auto",
    on_unreadable: str = "raise",
    image_of: Callable[[Any], Image.Image] = record_image,
    fields_of: Callable[[Any], dict[str, Any]] = record_fields,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    generation_source: Mapping[str, str] | None = None,
) -> PredictionRun:
    """Caption every record not yet in ``out_path`` (``predictions.jsonl``), batch by batch.

    ``model``: a :class:`CaptionModel`, any captioner with ``.generate(images, settings) -> list[str]``
    (an API client, :class:`medblip.api.Captioner`), or a zero-argument factory of one, called only if
    something is left to generate. A ``CaptionModel`` captions through the fast captioner when it
    supports the settings (``captioner="auto"``; ``"generate"``: transformers' ``generate`` always).
    ``settings`` must be complete (see :func:`make_settings`); when ``model`` is a factory the caller
    supplies ``model_name``/``family`` so that existing lines can be checked against them. Lines already
    in the file must come from the same model and settings; otherwise a :class:`MedblipError` asks for
    another output folder or ``overwrite``.

    ``records``: :class:`~medblip.data.Record` s, or any items with an ``id`` given ``image_of`` (item ->
    PIL image) and ``fields_of`` (item -> the other fields of its line). ``on_unreadable="skip"``: an
    image that cannot be read (:class:`~medblip.errors.ImageError`) is left out and listed in
    ``PredictionRun.unreadable`` instead of stopping the run. ``out_path=None``: nothing is written or
    resumed. ``on_batch(rows)``: called with each batch's new lines as they are made.
    ``generation_source``: where each setting came from (:func:`resolve_settings`), for the result and
    for the message that refuses a resume with other settings.

    Under ``accelerate launch`` / ``torchrun`` the records still to caption are split between the
    processes (see :mod:`medblip.evaluation.sharding`) and merged into ``out_path`` by the main process.
    """
    from medblip.evaluation.sharding import Processes, part_files, part_path

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if on_unreadable not in ("raise", "skip"):
        raise ValueError(f"on_unreadable must be 'raise' or 'skip', not {on_unreadable!r}")
    procs = Processes()
    if procs.distributed and out_path is None:
        raise ConfigError("several processes need an output file to merge their captions into (--out)")
    out_path = Path(out_path) if out_path is not None else None
    loaded = model if hasattr(model, "generate") else None
    if model_name is None:
        if loaded is None:
            raise ValueError("predict(): model_name is required when model is a factory")
        model_name = model_identity(getattr(loaded, "name_or_path", type(loaded).__name__))
    if family is None and loaded is not None:
        family = getattr(loaded, "family", None)
    if settings is None:
        settings = GenerationSettings()
    gen = settings_dict(settings)

    notes: list[str] = []
    done: dict[str, dict[str, Any]] = {}
    own_file = None
    images = {str(r.id): image_signature(r.image) for r in records}
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and procs.is_main:
            for p in [out_path, *part_files(out_path)]:
                p.unlink(missing_ok=True)
        procs.barrier()
        own_file = part_path(out_path, procs.rank) if procs.distributed else out_path
        # Every process reads everything; each repairs (truncates) only the file it appends to.
        for path in dict.fromkeys([out_path, *part_files(out_path), own_file]):
            existing = read_predictions_file(path, repair=path == own_file)
            if procs.is_main or path == own_file:
                notes.extend(existing.notes)
            _check_compatible(path, existing.rows, model_name, gen, generation_source)
            done.update(existing.by_id)
        fingerprint_notes = _check_fingerprint(out_path, list(done.values()), model_name, images)
        notes += fingerprint_notes if procs.is_main else []
        procs.barrier()  # nobody appends before everybody has read

    ids = [str(r.id) for r in records]
    pending = [r for r in records if str(r.id) not in done]
    skipped = len(records) - len(pending)
    if skipped:
        msg = (f"{out_path}: resuming - {skipped} of {len(records)} image(s) already predicted, "
               f"{len(pending)} to go")
        log.info(msg)
        notes.append(msg)
    mine = procs.shard(pending)
    if procs.distributed and procs.is_main:
        notes.append(f"{procs.world} processes: {len(pending)} image(s) to caption, {len(mine)} in this one")

    unreadable: list[tuple[str, str]] = []
    info: dict[str, Any] = {"path": None, "fallback_reason": None}
    made: list[Any] = []  # the captioner, once the first readable image needs it

    def engine() -> Any:
        nonlocal loaded, family
        if not made:
            if loaded is None:
                loaded = model()
                family = getattr(loaded, "family", None) or family
            captioner_, chosen = _captioner_for(loaded, settings, captioner)
            made.append(captioner_)
            info.update(chosen)
        return made[0]

    if mine:
        _generate_into(engine, mine, own_file, settings, gen, batch_size=batch_size, model_name=model_name,
                       family=lambda: family, progress=progress, desc=desc, done=done, image_of=image_of,
                       fields_of=fields_of, on_unreadable=on_unreadable, unreadable=unreadable,
                       on_batch=on_batch, signatures=images)
        fallbacks = getattr(made[0], "fallbacks", None) if made else None
        if fallbacks:
            info["fallbacks"] = dict(fallbacks)

    if procs.distributed:
        gathered = procs.gather({"unreadable": unreadable, "captioner": info, "generated": len(mine)})
        procs.barrier()  # every part file is complete
        if not procs.is_main:
            return PredictionRun(out_path, [], generated=len(mine), skipped=skipped, notes=notes,
                                 unreadable=unreadable, captioner=info, is_main=False, num_processes=procs.world,
                                 generation_source=dict(generation_source or {}))
        unreadable = [u for g in gathered for u in g["unreadable"]]
        info = next((g["captioner"] for g in gathered if g["captioner"].get("path")), info)
    if out_path is not None and part_files(out_path):
        done = merge_predictions(out_path, ids)
    rows = [{**done[i], **fields_of(r)} for i, r in zip(ids, records, strict=True) if i in done]
    generated = len(pending) - len(unreadable)
    return PredictionRun(out_path, rows, generated=generated, skipped=skipped, notes=notes,
                         unreadable=unreadable, captioner=info, num_processes=procs.world,
                         generation_source=dict(generation_source or {}))


def merge_predictions(out_path: Path, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Fold the part files of a multi-process run into ``out_path`` and remove them.

    The merged file holds the lines for ``ids`` in that order, then any other lines it held before
    (an earlier run's), so it equals the file one process would have written. Returns the rows by id.
    """
    from medblip.evaluation.sharding import part_files

    parts = part_files(out_path)
    rows: dict[str, dict[str, Any]] = {}
    for path in [out_path, *parts]:
        rows.update(read_predictions_file(path).by_id)
    wanted = [i for i in ids if i in rows]
    order = wanted + [i for i in rows if i not in set(wanted)]
    write_jsonl(out_path, [rows[i] for i in order])
    for path in parts:
        path.unlink(missing_ok=True)
    return rows


def _captioner_for(model: Any, settings: GenerationSettings, prefer: str) -> tuple[Any, dict[str, Any]]:
    """The fast captioner for a CaptionModel that supports ``settings``; any other captioner as it is."""
    if not _is_caption_model(model):
        return model, {"path": type(model).__name__, "fallback_reason": None}
    from medblip.perf.captioner import select_captioner

    engine, info = select_captioner(model, settings, prefer)
    if info.get("fallback_reason"):
        log.info("captioning with transformers' generate: the fast captioner does not support %s",
                 info["fallback_reason"])
    return engine, info


def _is_caption_model(obj: Any) -> bool:
    from medblip.models.base import CaptionModel

    return isinstance(obj, CaptionModel)


def _check_compatible(path: Path, rows: list[dict[str, Any]], model_name: str, gen: dict[str, Any],
                      sources: Mapping[str, str] | None = None) -> None:
    sources = sources or {}
    for row in rows:
        old_model, old_gen = row.get("model"), row.get("generation")
        if old_model is not None and old_model != model_name:
            raise MedblipError(
                f"{path} holds predictions of model {old_model!r}, not {model_name!r}; use another "
                f"output folder or --overwrite to start again")
        if old_gen is not None and old_gen != gen:
            diff = sorted(k for k in set(gen) | set(old_gen) if gen.get(k) != old_gen.get(k))
            # e.g. a run made with medblip's defaults, resumed since the checkpoint's saved settings apply
            whence = {CHECKPOINT: " from the checkpoint", DEFAULT: " by medblip's default"}
            changes = ", ".join(f"{k}: {old_gen.get(k)!r} -> {gen.get(k)!r}{whence.get(sources.get(k), '')}"
                                for k in diff)
            earlier = ", ".join(f"{k}={old_gen[k]!r}" for k in diff if old_gen.get(k) is not None)
            raise MedblipError(
                f"{path} holds predictions made with different generation settings ({changes}); resuming "
                "would mix captions of two settings: use another output folder, --overwrite to start again"
                + (f", or ask for the earlier settings ({earlier}) to go on" if earlier else ""))


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


def _load_batch(batch: Sequence[Any], image_of: Callable[[Any], Image.Image],
                on_unreadable: str) -> tuple[list[Any], list[Image.Image], list[tuple[str, str]]]:
    """(readable items, their images, (item, reason) of the unreadable ones)."""
    from medblip.errors import ImageError

    items, images, bad = [], [], []
    for item in batch:
        try:
            image = image_of(item)
        except ImageError as exc:
            if on_unreadable == "raise":
                raise
            label = str(getattr(item, "label", item.id))
            reason = str(exc)
            bad.append((label, reason[len(label) + 2:] if reason.startswith(f"{label}: ") else reason))
            continue
        items.append(item)
        images.append(image)
    return items, images, bad


def _generate_into(engine: Callable[[], Any], pending: Sequence[Any], out_path: Path | None,
                   settings: GenerationSettings, gen: dict[str, Any], *, batch_size: int,
                   model_name: str, family: Callable[[], str | None], progress: bool, desc: str | None,
                   done: dict[str, dict[str, Any]], image_of: Callable[[Any], Image.Image],
                   fields_of: Callable[[Any], dict[str, Any]], on_unreadable: str,
                   unreadable: list[tuple[str, str]],
                   on_batch: Callable[[list[dict[str, Any]]], None] | None,
                   signatures: Mapping[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    bar = tqdm(total=len(pending), desc=desc or "captioning", unit="img", disable=not progress,
               dynamic_ncols=True)
    # The next batch's images are decoded in a thread while this one is captioned (PIL and pydicom
    # release the GIL for most of the decoding), so file reading hides behind generation.
    ahead = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            ahead = pool.submit(_load_batch, batches[0], image_of, on_unreadable) if batches else None
            for n in range(len(batches)):
                assert ahead is not None
                items, images, bad = ahead.result()
                ahead = (pool.submit(_load_batch, batches[n + 1], image_of, on_unreadable)
                         if n + 1 < len(batches) else None)
                for label, reason in bad:
                    log.info("skipped %s: %s", label, reason)
                unreadable += bad
                if images:
                    model = engine()  # loaded here: a run whose images are all unreadable loads no model
                    t0 = time.perf_counter()
                    captions = model.generate(images, settings)
                    elapsed = time.perf_counter() - t0
                    if len(captions) != len(items):  # an adapter bug, not a user error
                        raise RuntimeError(f"{type(model).__name__}.generate returned {len(captions)} captions "
                                           f"for {len(items)} images")
                    per_image = elapsed / len(items)
                    rows = []
                    for item, caption in zip(items, captions, strict=True):
                        row = Prediction(**{"id": str(item.id), **fields_of(item), "prediction": caption,
                                            "model": model_name, "family": family(), "generation": gen,
                                            "gen_seconds": round(per_image, 6),
                                            "image": signatures.get(str(item.id))}).model_dump(exclude_unset=True)
                        if out_path is not None:
                            append_jsonl(out_path, row)
                        done[row["id"]] = row
                        rows.append(row)
                    if on_batch is not None:
                        on_batch(rows)
                bar.update(len(batches[n]))
        finally:
            bar.close()
            if ahead is not None:
                ahead.cancel()


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

    @property
    def is_main(self) -> bool:
        """False on the other processes of a multi-process run (no metrics there)."""
        return self.predictions.is_main


def load_split(data: str | Path, split: str = "test", *, format: str = "auto", limit: int | None = None,
               seed: int = 0, caption_options: Any = None,
               require_captions: bool = True) -> tuple[list[Record], Any]:
    """The records of one split and the loader's report.

    A dataset that names no split at all (a manifest without a ``split`` column, whose records the
    loader puts in ``train``) gives every record, whatever ``split`` asks for, and says so in
    ``report.notes``. An empty split raises :class:`DataError` naming the splits that do have records.
    ``require_captions=False``: an image-only manifest loads (captioning, explaining).
    """
    from medblip.data import load_dataset
    from medblip.data.records import normalize_splits

    (split,) = normalize_splits([split]) or (split,)
    kw = {"format": format, "caption_options": caption_options, "require_images": True,
          "require_captions": require_captions, "seed": seed}
    ds = load_dataset(data, splits=[split], limit=limit, **kw)
    records = [r for r in ds.records if r.split == split]
    if records:
        return records, ds.report
    everything = load_dataset(data, splits=None, limit=limit, **kw)
    found = everything.report.kept
    if everything.report.unsplit and set(found) == {"train"} and everything.report.unsplit >= found["train"]:
        note = (f"{data} names no split (no 'split' column): using all {found['train']} record(s) instead of "
                f"split {split!r}")
        log.warning(note)
        everything.report.notes.append(note)
        return list(everything.records), everything.report
    if found:
        detail = "splits with records: " + ", ".join(f"{s} {n}" for s, n in found.items())
    else:
        detail = everything.report.summary().splitlines()[0] + "; no split has usable records"
    raise DataError(f"{data}: no usable records in split {split!r} ({detail})")


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
    captioner: str = "auto",
) -> EvaluationResult:
    """Caption a split with a model, score it and write the run folder ``out``.

    ``generation`` holds only the settings asked for, over those a checkpoint given by name/path saved,
    over medblip's defaults (or a complete :class:`GenerationSettings`); run.json and metrics.json record the settings
    and, in ``generation_source``, where each came from. ``score_options``: options of
    :func:`medblip.evaluation.score_predictions` (``metrics``, ``models``, ``device``, ``imageclef``,
    ``meteor``, ``java``, ``spice``, ``uncertain_as``); CLIPScore reads the records' images.
    ``records`` skips loading ``data``. ``captioner``: ``auto`` (the fast captioner where it supports
    the settings) or ``generate``; run.json says which ran and why.

    Under ``accelerate launch`` the images are split between the processes; the main process merges
    the predictions, scores them and writes the files; the others wait for it and return the same
    metrics in a result with ``is_main=False``.
    """
    import contextlib

    from medblip.evaluation.sharding import Processes
    from medblip.locks import output_lock
    from medblip.outputs import prepare_output_dir

    unknown = sorted(set(score_options or {}) - set(SCORE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown scoring option {unknown[0]!r} (known: {', '.join(SCORE_OPTIONS)})")
    procs = Processes()
    # the main process guards, marks and locks the folder; the others write only their part files there
    if procs.is_main:
        out = prepare_output_dir(out, "evaluate", overwrite=overwrite, known_files=(PREDICTIONS_FILE,))
    procs.barrier()
    out = Path(out).expanduser()
    with output_lock(out, "evaluate") if procs.is_main else contextlib.nullcontext():
        return _evaluate(model, data, out, split=split, format=format, limit=limit, batch_size=batch_size,
                         generation=generation, family=family, device=device, dtype=dtype,
                         model_options=model_options, bootstrap=bootstrap, seed=seed, score_options=score_options,
                         progress=progress, overwrite=overwrite, records=records, captioner=captioner, procs=procs)


def _evaluate(model: str | Path | CaptionModel, data: str | Path, out: Path, *, split: str, format: str,
              limit: int | None, batch_size: int, generation: GenerationSettings | Mapping[str, Any] | None,
              family: str | None, device: str | None, dtype: str | None, model_options: Mapping[str, Any] | None,
              bootstrap: int, seed: int, score_options: Mapping[str, Any] | None, progress: bool, overwrite: bool,
              records: Sequence[Record] | None, captioner: str, procs: Any) -> EvaluationResult:
    from medblip.progress import library_progress

    notes: list[str] = []
    if records is None:
        records, report = load_split(data, split, format=format, limit=limit, seed=seed)
        notes.append(report.summary())
    set_seed(seed)  # only sampling (do_sample) draws random numbers
    with library_progress(progress):  # progress=False: transformers' "Loading weights" bar too
        run = predict_with(model, records, out / PREDICTIONS_FILE, generation=generation, family=family,
                           device=device, dtype=dtype, model_options=model_options, batch_size=batch_size,
                           progress=progress, overwrite=overwrite, captioner=captioner)
    notes.extend(run.notes)
    if not run.is_main:  # the main process scores and writes the files; the others read them
        procs.barrier()
        return EvaluationResult(out, run, json.loads((out / METRICS_JSON).read_text(encoding="utf-8")),
                                (out / METRICS_MD).read_text(encoding="utf-8"), notes)
    first = run.rows[0]
    split = records[0].split
    images = {str(r.id): r.image for r in records}
    metrics, markdown = score_and_write(
        [{**row, "image": images.get(str(row["id"]))} for row in run.rows], out, bootstrap=bootstrap, seed=seed,
        score_options=score_options, progress=progress,
        title=f"{display_name(first['model'])} on {split} ({len(run.rows)} images)",
        extra={"model": first.get("model"), "family": first.get("family"), "generation": first.get("generation"),
               "generation_source": run.generation_source, "data": str(data), "split": split, "format": format})
    run_info(out, {
        "command": "evaluate",
        "model": str(model) if not _is_caption_model(model) else model.name_or_path,  # type: ignore[union-attr]
        "family": run.rows[0].get("family"),
        "data": str(data), "split": split, "format": format, "limit": limit,
        "batch_size": batch_size, "generation": run.rows[0].get("generation"),
        "generation_source": run.generation_source, "device": device, "dtype": dtype, "bootstrap": bootstrap,
        "scoring": dict(score_options or {}),
        "captioner": captioner,
    }, seed=seed, images=len(run.rows), generated=run.generated, skipped=run.skipped,
        seconds_per_image=run.seconds_per_image, captioner=run.captioner, processes=run.num_processes)
    procs.barrier()
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
    **predict_options: Any,
) -> PredictionRun:
    """:func:`predict` for a model given by name/path (loaded only when needed) or as a captioner.

    ``generation``: the settings asked for, over those a checkpoint given by name/path saved (read
    before it is loaded), over medblip's defaults (:func:`resolve_settings`; a complete
    :class:`GenerationSettings` decides everything); ``prompt: None`` means the family's own prompt
    (each adapter documents it). ``predict_options``: the other options of :func:`predict`
    (``captioner``, ``on_unreadable``, ``image_of``, ``fields_of``, ``on_batch``).
    Under a multi-process launcher each process loads the model on its own device.
    """
    if hasattr(model, "generate"):
        settings, sources = resolve_settings(generation, source=source)
        return predict(model, records, out_path, settings, batch_size=batch_size, progress=progress,
                       overwrite=overwrite, desc=desc, generation_source=sources, **predict_options)
    checkpoint, run_options, notes = resolve_checkpoint(model)
    settings, sources, note = checkpoint_settings(generation, checkpoint, source=source)
    notes += [note] if note else []
    options = {**run_options, **dict(model_options or {})}

    def factory() -> CaptionModel:
        from medblip.evaluation.sharding import Processes
        from medblip.models import create_model

        return create_model(checkpoint, family=family, dtype=dtype,
                            device=auto_device(Processes().device(device)), **options)

    run = predict(factory, records, out_path, settings, batch_size=batch_size,
                  model_name=model_identity(checkpoint), family=family, progress=progress,
                  overwrite=overwrite, desc=desc, generation_source=sources, **predict_options)
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
