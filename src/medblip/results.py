"""The results medblip's commands write, as typed and versioned records: the one schema module.

Every producer writes its result file through one of these models, and the report
(:mod:`medblip.reports.collect`) reads them back with :meth:`Result.read`: a field is spelled one
way, in one place. ::

    file                     model            written by
    metrics.json             Scores           evaluate, score, compare (per system), ablation (per strategy)
    per_image.jsonl          ImageScores      the same, one row per image (scored once, read by the report)
    predictions.jsonl        Prediction       evaluate, compare (model systems); external files for score/compare
    comparison.json          Comparison       compare
    ablation.json            Ablation         ablation
    result.json, cost.json   TrainResult      train (cost.json: its ``cost``)
    metrics.jsonl            LogRow           train (one row per logged step / evaluation / epoch)
    summary.json             ExplainSummary   explain (several images)
    explanation.json         Explanation      explain (one image)
    grounding.json           Grounding        explain --evaluate, demo

A result file carries ``schema_version``; one written with another version is refused with a message
that says to rerun the command that made it (nothing here guesses at an older layout).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medblip.errors import DataError
from medblip.io import atomic_write_json

#: the version of every layout below; bumped when a field changes meaning or goes away
SCHEMA_VERSION = 1

#: the metric a table or plot leads with: the first of these that is present
HEADLINE_ORDER: tuple[str, ...] = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "BLEU-1")

R = TypeVar("R", bound="Result")


def headline_metric(names: Iterable[str]) -> str | None:
    """The headline of a set of metric names (:data:`HEADLINE_ORDER`, else the first name)."""
    names = list(names)
    return next((m for m in HEADLINE_ORDER if m in names), names[0] if names else None)


class ResultError(DataError):
    """A result file that is missing, unreadable, of another schema version or not of its schema."""


class Record(BaseModel):
    """A part of a result: every field declared, an unknown one is an error."""

    model_config = ConfigDict(extra="forbid")


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = exc.error_count() - 1
    return f"{key}: {err['msg']}" + (f" (and {more} more problem(s))" if more else "")


class Result(Record):
    """A result file: its name in a run folder and its schema version."""

    FILE: ClassVar[str]
    schema_version: int = SCHEMA_VERSION

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/FILE`` atomically."""
        return atomic_write_json(Path(folder) / self.FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        """Read ``path`` (a file, or a folder holding ``FILE``); any problem is a one-line :class:`ResultError`."""
        path = Path(path)
        if path.is_dir():
            path = path / cls.FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ResultError(f"{path}: not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict):
            raise ResultError(f"{path}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultError(f"{path}: result schema version {version} (this medblip reads {SCHEMA_VERSION}); "
                              "run the command that wrote it again")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ResultError(f"{path}: not a {cls.__name__} result ({_problem(exc)})") from None


def read_rows(model: type[BaseModel], rows: Iterable[dict[str, Any]], where: str) -> list[Any]:
    """JSONL rows as ``model`` records; a row that does not fit is a :class:`ResultError` naming it."""
    out = []
    for k, row in enumerate(rows, 1):
        try:
            out.append(model.model_validate(row))
        except ValidationError as exc:
            raise ResultError(f"{where}: row {k}: {_problem(exc)}") from None
    return out


# -- scores ---------------------------------------------------------------------------------------------------
class Metric(Record):
    """One metric of one system: value, bootstrap confidence interval, and where it applies."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    #: mean of the bootstrap resamples minus the value (metrics whose resamples are biased, e.g. CIDEr)
    bootstrap_bias: float | None = None
    #: the table it belongs in: caption, clinical, embedding, image-text (:func:`medblip.evaluation.scoring.metric_group`)
    group: str | None = None
    #: images the metric is defined on (clinical metrics: those whose reference names the property)
    support: int | None = None
    #: paired test against a comparison's reference system
    p_value: float | None = None


class Degeneration(Record):
    """Diversity and repetition of a system's captions (:func:`medblip.evaluation.degeneration_report`)."""

    n_captions: int
    distinct_caption_fraction: float
    most_common_caption: str
    most_common_share: float
    distinct_1: float
    distinct_2: float
    repeated_ngram_rate: float
    token_run_share: float
    empty_share: float
    mean_length: float
    mean_reference_length: float | None = None
    length_ratio: float | None = None
    collapsed: bool
    warnings: list[str] = Field(default_factory=list)

    def numbers(self) -> dict[str, float]:
        """The diagnostics a table shows (the counts and the caption text left out)."""
        skip = {"n_captions", "most_common_caption", "warnings", "collapsed"}
        return {k: float(v) for k, v in self.model_dump().items() if k not in skip and v is not None}


class GenerationTime(Record):
    seconds_per_image: float | None
    images_timed: int


class Scores(Result):
    """``metrics.json``: :func:`medblip.evaluation.score_predictions`' result, plus what was scored."""

    FILE: ClassVar[str] = "metrics.json"
    n_images: int
    #: rows not scored, by reason: ``{"empty reference": {"count", "examples"}}``
    dropped: dict[str, dict[str, Any]] = Field(default_factory=dict)
    metrics: dict[str, Metric]
    clinical: dict[str, Any] = Field(default_factory=dict)
    degeneration: Degeneration
    warnings: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    generation_time: GenerationTime | None = None
    #: model-based metrics (BERTScore, CLIPScore, ...): metric -> the model, its revision and settings
    model_metrics: dict[str, dict[str, Any]] | None = None
    #: requested metrics that could not be computed: metric -> the reason and how to fix it
    unavailable: dict[str, str] | None = None
    #: per-image values of the model-based metrics: ``{"ids": [...], metric: [value or null, ...]}``
    per_image: dict[str, list[Any]] | None = None
    #: ``medblip score``: the predictions file scored
    source: str | None = None
    #: evaluate / compare / ablation: the model, its decoding settings and the data
    model: str | None = None
    family: str | None = None
    generation: dict[str, Any] | None = None
    #: evaluate: where each decoding setting came from ("option", "checkpoint" or "default")
    generation_source: dict[str, str] | None = None
    data: str | None = None
    split: str | None = None
    format: str | None = None


class ConceptSummary(Record):
    """What the clinical extractor reads in one caption (:meth:`medblip.evaluation.Concepts.summary`)."""

    modality: str | None = None
    modalities: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    sides: list[str] = Field(default_factory=list)
    #: finding label -> present | negated | uncertain
    findings: dict[str, Literal["present", "negated", "uncertain"]] = Field(default_factory=dict)


class ImageScores(Record):
    """``per_image.jsonl``: one image's scores and concepts, computed once when the system is scored."""

    FILE: ClassVar[str] = "per_image.jsonl"
    id: str
    #: ``CIDEr`` (this system's document frequencies) and ``token_f1``
    scores: dict[str, float]
    prediction: ConceptSummary
    #: one per reference caption
    references: list[ConceptSummary]


class Prediction(BaseModel):
    """A ``predictions.jsonl`` row: medblip writes every field; an external file needs ``id`` and
    ``prediction`` (and ``reference`` to be scored). Other fields are kept as they are."""

    model_config = ConfigDict(extra="allow")
    id: str
    prediction: str
    reference: str | list[str] | None = None
    split: str | None = None
    model: str | None = None
    family: str | None = None
    generation: dict[str, Any] | None = None
    gen_seconds: float | None = None
    #: the image: medblip writes its identity (``path`` with ``size_mtime``, or ``sha256`` of the bytes,
    #: :func:`medblip.fingerprint.image_signature`); an external file may give a path (absolute, or
    #: relative to the predictions file)
    image: str | dict[str, Any] | None = None

    def image_path(self) -> str | None:
        """The image file this row names, if any."""
        return image_path(self.image)


def image_path(image: Any) -> str | None:
    """The image file a predictions row's ``image`` names: medblip's identity (``{"path": ...}``) or a path;
    None for bytes' identity (``{"sha256": ...}``) or no image."""
    if isinstance(image, dict):
        image = image.get("path")
    return image if isinstance(image, str) and image else None


# -- compare ----------------------------------------------------------------------------------------------------
class ComparedSystem(Record):
    name: str
    kind: Literal["model", "api", "predictions"]
    #: the model (hub id, checkpoint path, or the API's model name) or the predictions file
    source: str
    family: str | None = None
    description: str | None = None
    generation: dict[str, Any] | None = None
    #: predictions the system has (before the ids shared by all systems were taken)
    n_predictions: int
    seconds_per_image: float | None = None
    metrics: dict[str, Metric]
    diagnostics: Degeneration | None = None
    warnings: list[str] = Field(default_factory=list)
    #: ``systems/<name>/``: metrics.json and per_image.jsonl on the shared ids (model and api systems:
    #: predictions.jsonl)
    folder: str

    @property
    def predictions_file(self) -> Path:
        return Path(self.source) if self.kind == "predictions" else Path(self.folder) / "predictions.jsonl"


class Significance(Record):
    method: str
    samples: int
    alpha: float
    bootstrap: int
    ci: float = 0.95


class Excluded(Record):
    """Ids not scored because some system lacks them (or the systems' references differ)."""

    total: int = 0
    per_system: dict[str, dict[str, int]] = Field(default_factory=dict)
    examples: list[str] = Field(default_factory=list)
    reference_mismatch: int = 0
    reference_mismatch_examples: list[str] = Field(default_factory=list)


class Comparison(Result):
    """``comparison.json``."""

    FILE: ClassVar[str] = "comparison.json"
    out: str
    reference: str
    split: str
    #: the dataset the ids come from (None when every system is a predictions file)
    data: str | None = None
    format: str = "auto"
    n_images: int
    metrics: list[str]
    significance: Significance
    excluded: Excluded
    notes: list[str] = Field(default_factory=list)
    systems: list[ComparedSystem]

    def system(self, name: str) -> ComparedSystem:
        return next(s for s in self.systems if s.name == name)


# -- ablation ----------------------------------------------------------------------------------------------------
class StrategyRow(Record):
    """One strategy of an ablation: its training run's cost and its evaluation's metrics."""

    strategy: str
    status: str | None = None
    run_dir: str | None = None
    checkpoint: str | None = None
    steps: int | None = None
    epochs: int | None = None
    best_step: int | None = None
    best_metric_name: str | None = None
    best_metric: float | None = None
    trainable_params: int | None = None
    frozen_params: int | None = None
    total_params: int | None = None
    trainable_fraction: float | None = None
    trainable_groups: list[str] | None = None
    metrics: dict[str, Metric] = Field(default_factory=dict)
    time_per_epoch: float | None = None
    total_time: float | None = None
    wall_time: float | None = None
    eval_time: float | None = None
    images_per_second: float | None = None
    peak_memory_bytes: float | None = None
    peak_memory_kind: str | None = None
    #: total training time / full's
    relative_time: float | None = None
    seconds_per_image: float | None = None
    n_images: int | None = None
    degeneration: Degeneration | None = None


class Ablation(Result):
    """``ablation.json``."""

    FILE: ClassVar[str] = "ablation.json"
    #: the headline metric vs. training time and trainable parameters, written beside ablation.json
    COST_PLOT: ClassVar[str] = "ablation_cost.png"
    model: str | None = None
    family: str | None = None
    data: str | None = None
    split: str | None = None
    n_images: int | None = None
    seed: int | None = None
    config: str | None = None
    budget: dict[str, Any] = Field(default_factory=dict)
    generation: dict[str, Any] = Field(default_factory=dict)
    bootstrap: int | None = None
    scoring: dict[str, Any] = Field(default_factory=dict)
    metrics: list[str] = Field(default_factory=list)
    headline: str | None = None
    strategies: list[StrategyRow]
    notes: list[str] = Field(default_factory=list)


# -- training ----------------------------------------------------------------------------------------------------
class EpochCost(Record):
    epoch: int
    train_seconds: float
    eval_seconds: float
    images: int
    images_per_second: float


class TrainCost(Record):
    """``cost.json``: training steps only in ``train_seconds`` (validation in ``eval_seconds``)."""

    wall_seconds: float
    train_seconds: float
    eval_seconds: float
    images: int
    images_per_second: float
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    num_processes: int = 1
    epochs: list[EpochCost] = Field(default_factory=list)
    #: the frozen-encoder feature cache: used or why not, and what building it cost
    feature_cache: dict[str, Any] | None = None

    @property
    def time_per_epoch(self) -> float | None:
        return sum(e.train_seconds for e in self.epochs) / len(self.epochs) if self.epochs else None


class StrategyCounts(Record):
    """What a fine-tuning strategy froze (``medblip.models.StrategyReport``, made by ``apply_strategy``)."""

    strategy: str
    trainable_params: int
    frozen_params: int
    total_params: int
    trainable_fraction: float
    trainable_groups: list[str] = Field(default_factory=list)
    frozen_groups: list[str] = Field(default_factory=list)
    #: groups run under torch.no_grad() (input-side frozen groups)
    no_grad_groups: list[str] = Field(default_factory=list)
    #: the LoRA options applied
    options: dict[str, Any] = Field(default_factory=dict)


class TrainResult(Result):
    """``result.json``: how a training run ended."""

    FILE: ClassVar[str] = "result.json"
    run_dir: str
    status: Literal["completed", "early_stopped", "interrupted", "zero_shot"]
    #: the model the run started from
    model: str | None = None
    global_step: int
    epochs_completed: int
    best_metric: float | None = None
    best_metric_name: str | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    #: the last validation row (val_loss, caption metrics, examples) and the scorer's name
    final_metrics: dict[str, Any] = Field(default_factory=dict)
    strategy: StrategyCounts
    cost: TrainCost
    signal: str | None = None
    exit_code: int = 0


class LogRow(BaseModel):
    """A ``metrics.jsonl`` row: a training step (``split: train``: loss, lr, grad_norm), a validation
    (``split: validation``: val_loss and caption metrics), an epoch's cost (``kind: epoch_cost``) or the
    strategy's parameter counts (``kind: strategy``, step 0). The numbers are extra fields."""

    model_config = ConfigDict(extra="allow")
    step: int
    epoch: int | None = None
    split: Literal["train", "validation"] | None = None
    kind: Literal["strategy", "epoch_cost"] | None = None
    time: float | None = None
    improved: bool | None = None

    def numbers(self) -> dict[str, float]:
        """The row's metric values (the position and bookkeeping fields left out)."""
        skip = {"val_images", "lr"}
        return {k: float(v) for k, v in (self.model_extra or {}).items()
                if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)}


# -- explain and grounding -------------------------------------------------------------------------------------
class ExplainedImage(Record):
    """One image of ``summary.json``; its maps are in ``<folder>/explanation.json``."""

    name: str
    folder: str
    caption: str
    caption_source: str
    #: the dataset's caption, when the image came from a dataset
    reference: str | None = None
    words: list[str]
    panels: list[str]


class ExplainSummary(Result):
    """``summary.json`` of ``medblip explain`` (and the demo's explain stage)."""

    FILE: ClassVar[str] = "summary.json"
    model: str
    family: str
    settings: dict[str, Any]
    level: Literal["word", "token"]
    images: list[ExplainedImage]


class ExplanationFiles(Record):
    grid: str
    token_maps: str
    word_maps: str
    #: one overlay per panel, in panel order
    overlays: list[str] = Field(default_factory=list)


class Explanation(Result):
    """``explanation.json``: one image's caption, its tokens and words, and the files of its maps."""

    FILE: ClassVar[str] = "explanation.json"
    caption: str
    caption_source: str
    family: str
    model: str
    tokens: list[str]
    token_ids: list[int]
    token_logprobs: list[float]
    words: list[str]
    word_tokens: list[list[int]]
    grid: list[int]
    image_size: list[int]
    input_box: list[float]
    settings: dict[str, Any]
    extra: dict[str, Any] = Field(default_factory=dict)
    level: Literal["word", "token"]
    #: the words (or tokens) drawn, one panel each
    panels: list[str]
    files: ExplanationFiles
    #: the colour map of the overlays and the grid
    cmap: str = "jet"
    #: each panel's raw map range [min, max] (every overlay is stretched min-to-max, except flat ones)
    panel_ranges: list[list[float]] = Field(default_factory=list)
    #: per panel: near-flat (:func:`medblip.explain.maps.is_flat`), drawn in grey instead of stretched
    flat_panels: list[bool] = Field(default_factory=list)


class MapScores(Record):
    """Pointing game (strict, tolerant) and energy inside the lesion mask, averaged over findings."""

    hit: float
    hit_tol: float
    energy: float


class GroundingSummary(Record):
    n: int
    tolerance_px: float
    #: model | uniform | centre -> scores
    scores: dict[str, MapScores]
    skipped: dict[str, int] = Field(default_factory=dict)


class Grounding(Result):
    """``grounding.json``: where the finding words' maps fall against the true lesion masks."""

    FILE: ClassVar[str] = "grounding.json"
    model: str
    family: str
    data: str
    split: str
    caption_source: str
    settings: dict[str, Any]
    tolerance: str
    summary: GroundingSummary
    #: images whose model map hits the lesion (strict pointing game)
    hits: int
    #: one-sided binomial p-value of the hits against each baseline's rate: vs_uniform, vs_centre
    p_value: dict[str, float]
    by_finding: dict[str, GroundingSummary]
    rows: list[dict[str, Any]]
