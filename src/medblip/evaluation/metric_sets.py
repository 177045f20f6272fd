"""Which metrics a scoring run computes: named sets, single metrics, their models, the config section.

``--metrics`` (and ``scoring.metrics`` in the configs) is a comma-separated list of names:

==============  ===============================================================================
``coco``        BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) -- in the default set
``clinical``    modality accuracy, region / finding F1, laterality agreement -- in the default set
``imageclef``   the ImageCLEFmedical Caption (2024, ROCOv2) set: ``coco`` plus ``rouge1``,
                ``bertscore``, ``bleurt``, ``clipscore`` and ``refclipscore``, with the challenge's
                text preprocessing (:func:`~medblip.evaluation.tokenization.imageclef_preprocess`)
``rouge1``      ROUGE-1 F-measure (Google's ``rouge-score``, no stemming; the challenge's secondary)
``bertscore``   BERTScore F1 (``bert-score``; the challenge's primary metric)
``clipscore``   CLIPScore (Hessel et al., 2021): image-caption agreement, no reference
``refclipscore``  RefCLIPScore: harmonic mean of CLIPScore and the best reference similarity
``bleurt``      BLEURT (Sellam et al., 2020): a BERT regression model scoring the caption against
                its reference; the challenge's checkpoint, BLEURT-20-D12, by default (see
                :mod:`medblip.evaluation.bleurt`)
==============  ===============================================================================

Model-based metrics load their model with ``from_pretrained``: a hub id (downloaded once into the
Hugging Face cache) or a local folder, chosen per model key with ``--metric-model KEY=PATH``
(``scoring.models: {KEY: PATH}``). The keys and their defaults, the models the challenge uses, are
:data:`DEFAULT_MODELS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medblip.errors import ConfigError

#: the metrics medblip computed before metric sets existed, and still computes by default
DEFAULT_METRICS: tuple[str, ...] = ("coco", "clinical")
SINGLE_METRICS: tuple[str, ...] = ("rouge1", "bertscore", "clipscore", "refclipscore", "bleurt")
SETS: dict[str, tuple[str, ...]] = {
    "coco": ("coco",),
    "clinical": ("clinical",),
    "imageclef": ("coco", "rouge1", "bertscore", "bleurt", "clipscore", "refclipscore"),
}
#: model key -> the hub model the ImageCLEFmedical Caption evaluation uses
DEFAULT_MODELS: dict[str, str] = {
    "bertscore": "microsoft/deberta-xlarge-mnli",
    "clip": "openai/clip-vit-base-patch32",
    # the 2025 evaluator's: BLEURT-20 distilled to 12 layers, in the PyTorch conversion
    "bleurt": "lucadiliello/BLEURT-20-D12",
}
#: which model key each model-based metric uses
MODEL_OF: dict[str, str] = {"bertscore": "bertscore", "clipscore": "clip", "refclipscore": "clip",
                            "bleurt": "bleurt"}
#: the name each single metric has in metrics.json
METRIC_NAMES: dict[str, str] = {"rouge1": "ROUGE-1", "bertscore": "BERTScore-F1", "clipscore": "CLIPScore",
                                "refclipscore": "RefCLIPScore", "bleurt": "BLEURT"}


@dataclass(frozen=True)
class MetricSelection:
    """A resolved ``--metrics`` value: what to compute, and whether the ImageCLEF preprocessing is on."""

    requested: tuple[str, ...]
    #: ``coco``, ``clinical`` and the single metrics, in order, each once
    parts: tuple[str, ...]
    imageclef_preprocessing: bool
    models: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    @property
    def model_metrics(self) -> tuple[str, ...]:
        return tuple(p for p in self.parts if p in SINGLE_METRICS)

    def model_for(self, metric: str) -> str:
        key = MODEL_OF[metric]
        return self.models.get(key, DEFAULT_MODELS[key])

    @property
    def needs_images(self) -> bool:
        return "clipscore" in self.parts or "refclipscore" in self.parts


def _names(spec: str | Iterable[str] | None) -> list[str]:
    if spec is None:
        return list(DEFAULT_METRICS)
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    return [s.strip().lower() for s in items if s.strip()]


def select_metrics(spec: str | Iterable[str] | None = None, models: Mapping[str, str] | None = None, *,
                   imageclef: bool = False, option: str = "--metrics") -> MetricSelection:
    """``"coco,clinical"``, ``["imageclef"]``, ... -> :class:`MetricSelection`.

    ``imageclef=True`` switches the ImageCLEF preprocessing on for any set (the ``imageclef`` set
    always has it). Unknown names raise :class:`ConfigError` naming ``option`` and the known names.
    """
    names = _names(spec)
    if not names:
        raise ConfigError(f"{option}: no metric named (known: {', '.join(known_metric_names())})")
    parts: list[str] = []
    for name in names:
        expanded = SETS.get(name) or ((name,) if name in SINGLE_METRICS else None)
        if expanded is None:
            raise ConfigError(f"{option}: unknown metric or set {name!r} (known: {', '.join(known_metric_names())})")
        parts += [p for p in expanded if p not in parts]
    models = check_models(models or {})
    return MetricSelection(tuple(dict.fromkeys(names)), tuple(parts), imageclef or "imageclef" in names, models)


def known_metric_names() -> list[str]:
    return [*SETS, *SINGLE_METRICS]


def check_models(models: Mapping[str, str], option: str = "--metric-model") -> dict[str, str]:
    out = {}
    for key, value in models.items():
        if key not in DEFAULT_MODELS:
            raise ConfigError(f"{option}: unknown model key {key!r} (keys: {', '.join(DEFAULT_MODELS)})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{option}: {key} needs a hub id or a local folder, got {value!r}")
        out[key] = value.strip()
    return out


def parse_model_options(values: Sequence[str] | None, option: str = "--metric-model") -> dict[str, str]:
    """``["bertscore=/models/deberta", "clip=openai/clip-vit-large-patch14"]`` -> ``{key: model}``."""
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, model = value.partition("=")
        if not sep:
            raise ConfigError(f"{option} {value!r}: expected KEY=MODEL with KEY one of {', '.join(DEFAULT_MODELS)}")
        out[key.strip().lower()] = model
    return check_models(out, option)


class ScoringConfig(BaseModel):
    """The ``scoring:`` section of the compare and training/ablation configs: options of
    :func:`medblip.evaluation.score_predictions`, the same for every system."""

    model_config = ConfigDict(extra="forbid")

    #: metric sets and single metrics (see medblip.evaluation.metric_sets), a list or "a,b"
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    #: model per key (bertscore, clip, bleurt): a hub id or a local folder; defaults are the challenge's
    models: dict[str, str] = Field(default_factory=dict)
    #: device of the model-based metrics (default: cuda when available)
    device: str | None = None
    #: ImageCLEFmedical Caption preprocessing before the text metrics (implied by the imageclef set)
    imageclef: bool = False
    #: METEOR needs a Java process that takes 10 s or more to start
    meteor: bool = True
    #: "auto": PTB tokenizer + METEOR when Java is installed; false: never use Java
    java: bool | Literal["auto"] = "auto"
    spice: bool = False
    uncertain_as: Literal["present", "absent"] = "present"

    @field_validator("metrics", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _names(value)
        if isinstance(value, list):
            try:
                select_metrics(value, option="metrics")
            except ConfigError as exc:  # pydantic reports ValueErrors with the key path and file
                raise ValueError(str(exc).removeprefix("metrics: ")) from None
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_models(value, option="models")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("models: ")) from None

    def options(self) -> dict[str, Any]:
        return self.model_dump()
