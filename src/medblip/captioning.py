"""Caption your own images: files, folders, glob patterns, DICOM series -> one caption per image.

:func:`caption_inputs` is ``medblip caption``: it finds the images (:func:`medblip.data.inputs.find_inputs`),
captions them with medblip's predictor (:func:`medblip.evaluation.predict.predict`: batched, the fast
captioner where it supports the settings, resumable, split between processes under ``accelerate launch``)
and writes, for ``out=captions.csv`` (or ``.jsonl``)::

    captions.csv                one row per image: id, path, series_uid, instance_number, frame, caption
    captions.run.json           model, settings (and where each came from), captioner used, counts, what
                                was skipped and why; versions
    captions.predictions.jsonl  the resumable log (one line per captioned image, as ``medblip evaluate``'s)
    captions.predictions.fingerprint.json  what the log was made with (a resume with other model files stops)

A rerun with the same ``out`` captions only the images the log does not hold yet. An image that cannot
be read is skipped, counted and listed (``CaptionRun.unreadable``, run.json); the run goes on.

The model may be anything with ``.generate(images, settings) -> list[str]`` (a
:class:`~medblip.models.CaptionModel`, :class:`medblip.api.Captioner`, a client of a captioning API), or
a hub id / checkpoint / run folder, loaded only when something is left to caption.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medblip.data.inputs import ROW_FIELDS, InputItem, InputScan, find_inputs
from medblip.errors import ConfigError, MedblipError
from medblip.io import atomic_write_json, atomic_write_text, dumps, write_jsonl

OUT_SUFFIXES = (".jsonl", ".csv")
COLUMNS = (*ROW_FIELDS, "caption")


@dataclass
class CaptionRun:
    """What :func:`caption_inputs` did. ``rows``: one per captioned image, in input order, with
    :data:`COLUMNS`. ``unreadable``: ``(input, reason)`` for every input that gave no caption."""

    rows: list[dict[str, Any]]
    scan: InputScan
    unreadable: list[tuple[str, str]]
    generated: int
    resumed: int
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    captioner: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    is_main: bool = True


def output_files(out: str | Path) -> dict[str, Path]:
    """``{"captions", "run", "log"}`` paths for ``out`` (which must end in .jsonl or .csv)."""
    out = Path(out)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out {out}: expected a .jsonl or .csv file name")
    return {"captions": out, "run": out.with_name(f"{out.stem}.run.json"),
            "log": out.with_name(f"{out.stem}.predictions.jsonl")}


def _check_out(files: dict[str, Path], overwrite: bool) -> None:
    """Refuse to replace a file that no earlier ``medblip caption`` run wrote (unless ``overwrite``)."""
    import json

    target = files["captions"]
    if overwrite or not target.exists():
        return
    try:
        ours = json.loads(files["run"].read_text(encoding="utf-8")).get("config", {}).get("command") == "caption"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise MedblipError(f"{target} exists and was not written by `medblip caption` (no {files['run'].name} "
                           "beside it); choose another --out, or pass --overwrite to replace it")


def caption_inputs(
    model: Any,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    series: str = "middle",
    generation: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    family: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    captioner: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    on_caption: Callable[[dict[str, Any]], None] | None = None,
) -> CaptionRun:
    """Caption the images ``inputs`` name; write ``out`` (see the module doc) when given.

    ``generation``: the settings asked for (as ``medblip evaluate``'s options), over those a checkpoint
    given by name/path saved, over medblip's defaults; run.json records where each came from.
    ``on_caption(row)``: called for each new caption as its batch finishes (``medblip caption`` without
    ``--out`` prints them as they come). ``captioner``: ``auto`` (fast where supported) or ``generate``.
    """
    from medblip.evaluation.predict import predict_with
    from medblip.evaluation.sharding import Processes
    from medblip.runinfo import run_metadata

    files = output_files(out) if out is not None else {}
    if files:
        from medblip.outputs import check_output_file

        check_output_file(files["captions"])  # not a folder; its folder writable
        _check_out(files, overwrite)
    scan = find_inputs(inputs, series=series, progress=progress)
    if not scan.items:
        raise MedblipError(f"no image to caption in {', '.join(map(str, inputs))}"
                           + (f" ({scan.skipped[0][0]}: {scan.skipped[0][1]})" if scan.skipped else ""))

    def emit(rows: list[dict[str, Any]]) -> None:
        if on_caption is not None:
            for row in rows:
                on_caption(caption_row(row))

    from medblip.progress import library_progress

    with library_progress(progress):  # progress=False: transformers' "Loading weights" bar too
        run = predict_with(model, scan.items, files.get("log"), generation=generation, family=family, device=device,
                           dtype=dtype, batch_size=batch_size, progress=progress, overwrite=overwrite,
                           desc="captioning", source="caption", captioner=captioner, on_unreadable="skip",
                           image_of=InputItem.load, fields_of=InputItem.fields, on_batch=emit)
    result = CaptionRun(rows=[caption_row(r) for r in run.rows], scan=scan,
                        unreadable=[*scan.skipped, *run.unreadable], generated=run.generated,
                        resumed=run.skipped, out=Path(out) if out is not None else None, files=files,
                        captioner=run.captioner, notes=list(run.notes), is_main=run.is_main)
    if not run.is_main or not files:
        return result
    write_captions(files["captions"], result.rows)
    first = run.rows[0] if run.rows else {}
    config = {"command": "caption", "model": _model_name(model), "family": first.get("family") or family,
              "inputs": [str(i) for i in inputs], "series": series, "generation": first.get("generation"),
              "generation_source": run.generation_source, "batch_size": batch_size, "device": device,
              "dtype": dtype, "captioner": captioner}
    info = run_metadata(config, None, images=len(result.rows), generated=result.generated,
                        resumed=result.resumed, unreadable=[{"input": i, "reason": r} for i, r in result.unreadable],
                        dicom_series=scan.series, captioner=run.captioner, processes=Processes().world,
                        **_api_stats(model),
                        seconds_per_image=run.seconds_per_image, files={k: str(v) for k, v in files.items()})
    atomic_write_json(files["run"], _plain(info))
    return result


def caption_row(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """A predictor line -> an output row (:data:`COLUMNS`)."""
    return {**{k: prediction.get(k) for k in ROW_FIELDS}, "caption": prediction["prediction"]}


def write_captions(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as JSON lines or CSV (by the suffix), atomically; empty CSV cells for missing values."""
    if path.suffix.lower() == ".jsonl":
        return write_jsonl(path, [dict(r) for r in rows])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def _api_stats(model: Any) -> dict[str, Any]:
    """A captioner behind an API (:class:`medblip.models.api.ApiCaptioner`): its calls, retries, cache
    hits, failures and time, for run.json."""
    stats = getattr(model, "stats", None)
    return {"api": {"config": model.config.model_dump(), "stats": stats.as_dict()}} if hasattr(stats, "as_dict") else {}


def _model_name(model: Any) -> str:
    if hasattr(model, "generate"):
        return str(getattr(model, "name_or_path", type(model).__name__))
    return str(model)


def _plain(obj: Any) -> Any:
    import json

    return json.loads(dumps(obj))
