"""Experiment configuration: a pydantic schema over plain YAML files, plus ``--set a.b=c`` overrides.

An experiment file has eight sections (``model``, ``data``, ``strategy``, ``train``, ``generation``,
``output``, ``scoring`` and an optional top-level ``name``); every key is checked, so a typo such as
``train.lrr`` is an error naming the key and the file instead of a silently ignored value.

Relative paths in a config are relative to the working directory the command runs in (like every
other path given on the command line), not to the config file.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from medblip import configfile
from medblip.data.captions import CaptionOptions
from medblip.errors import ConfigError, MedblipError
from medblip.evaluation.metric_sets import ScoringConfig
from medblip.models.base import GenerationSettings
from medblip.models.lora import LoraOptions
from medblip.models.registry import get_family, list_families


class _Section(BaseModel):
    # extra="forbid" is what turns a misspelt key into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = Field(description="hub id or local folder (e.g. one made by `medblip model init-tiny`)")
    family: str | None = Field(None, description="blip | blip2 | instructblip | vit-gpt2; read from config.json when omitted")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="weights dtype; None keeps the checkpoint's (mixed precision is train.mixed_precision)")
    attn_implementation: str | None = Field(None, description="eager | sdpa | flash_attention_2; None: transformers' default")
    prompt: str | None = Field(None, description="BLIP / BLIP-2 text prompt the caption continues (family default when None)")
    instruction: str | None = Field(None, description="InstructBLIP instruction (family default when None)")
    max_length: int | None = Field(None, ge=2, description="caption token limit in training (longer captions are "
                                                           "truncated); None: the family's default, 128")
    device_map: str | dict[str, Any] | None = Field(
        None, description="place the weights with accelerate's device map (e.g. auto: a 7B model over the visible "
                          "GPUs and the CPU) instead of on the training device; for evaluation-only (strategy none) "
                          "and LoRA runs of models that do not fit one GPU")
    load_in_8bit: bool = Field(False, description="8-bit weights (bitsandbytes; pip install 'medblip[quantization]'); "
                                                  "only strategy none or lora can use them")
    load_in_4bit: bool = Field(False, description="4-bit NF4 weights with double quantization (bitsandbytes), as "
                                                  "load_in_8bit (QLoRA with lora)")

    @field_validator("family")
    @classmethod
    def _family_known(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return _canonical_family(value)

    def family_options(self) -> dict[str, Any]:
        """Keyword options for ``create_model``; unset ones are left to the family's defaults."""
        opts = {"attn_implementation": self.attn_implementation, "prompt": self.prompt,
                "instruction": self.instruction, "max_length": self.max_length, "device_map": self.device_map,
                "load_in_8bit": self.load_in_8bit or None, "load_in_4bit": self.load_in_4bit or None}
        return {k: v for k, v in opts.items() if v is not None}


class DataConfig(_Section):
    path: str = Field(description="dataset folder or file (ROCOv2 layout, synthetic benchmark, HF export, ...)")
    format: Literal["auto", "roco", "rocov2", "hf", "manifest"] = "auto"
    roco_subsets: list[Literal["radiology", "non-radiology"]] = Field(
        ["radiology"], min_length=1, description="ROCO layout only: the subsets loaded (non-radiology/ holds "
                                                 "charts, photos and drawings; the study fine-tunes on radiology)")
    train_split: str = "train"
    val_split: str = "validation"
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="when the data has no validation records (e.g. a manifest without a split "
                                         "column), this fraction of the training records is held out for validation, "
                                         "chosen by `seed` and grouped by a patient/case column when there is one; "
                                         "0 trains without validation")
    captions: CaptionOptions = Field(default_factory=CaptionOptions, description="caption cleaning on load")
    limit: int | None = Field(None, ge=1, description="at most this many records per split (quick runs)")
    seed: int = Field(0, description="seed of the record subsampling done by `limit`")
    image_size: int | None = Field(
        None, ge=8, description="decode-and-resize size (square) of images as loaded and cached; the processor "
                                "still resizes to the model's input size, so set it to that size to make the "
                                "cache hold exactly what the model sees. None keeps the file's size")
    cache_images: bool = Field(False, description="keep decoded images in memory after the first epoch")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = load in the training process)")
    image_cache: str | None = Field(
        None, description="folder made by `medblip data cache` (same data, size = data.image_size): images are read "
                          "from its memory-mapped uint8 arrays instead of being decoded and resized every epoch; a "
                          "stale cache (changed image, other size) is an error")


class LoraConfig(_Section):
    # defaults: medblip.models.lora.LoraOptions, the one place they are set
    r: int = Field(LoraOptions.r, ge=1)
    alpha: int = Field(LoraOptions.alpha, ge=1)
    dropout: float = Field(LoraOptions.dropout, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="module name patterns; None: the family's default")


class StrategyConfig(_Section):
    name: Literal["none", "full", "decoder_only", "encoder_only", "lora", "qformer_only"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)

    def options(self) -> dict[str, Any]:
        """Keyword options for ``CaptionModel.apply_strategy``."""
        if self.name != "lora":
            return {}
        return {"lora": self.lora.model_dump()}


class EarlyStoppingConfig(_Section):
    metric: str = Field("val_loss", description="val_loss or a caption metric name reported by the evaluator")
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: min for *loss, max otherwise")
    patience: int | None = Field(None, ge=1, description="evaluations without improvement before stopping; None: never stop")
    min_delta: float = Field(0.0, ge=0.0)

    def resolved_mode(self) -> Literal["min", "max"]:
        if self.mode != "auto":
            return self.mode
        return "min" if self.metric.endswith("loss") else "max"


class TrainConfig(_Section):
    epochs: int = Field(5, ge=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(8, ge=1, description="images per device per forward pass")
    grad_accum: int = Field(1, ge=1, description="forward passes per optimizer step")
    lr: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0.0)
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the optimizer steps spent warming up")
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio when set")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    clip_grad: float | None = Field(1.0, gt=0.0, description="max gradient norm; None: no clipping")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    label_smoothing: float | None = Field(
        None, ge=0.0, lt=1.0, description="cross-entropy label smoothing of the captioning loss; None: the family's own "
                                          "training code's (BLIP 0.1; BLIP-2, InstructBLIP, ViT-GPT2 0.0). run.json "
                                          "records the value used (label_smoothing)")
    gradient_checkpointing: bool = False
    seed: int = 42
    deterministic: bool = Field(False, description="deterministic kernels (slower); needed for bit-exact resume")
    eval_every_epochs: int | None = Field(1, ge=1, description="validate after every N epochs; None: only at the end")
    eval_every_steps: int | None = Field(None, ge=1, description="also validate every N optimizer steps")
    val_subset: int | None = Field(256, ge=1, description="validation records used (first N, fixed order); None: all")
    val_generate: bool = Field(True, description="caption the validation subset and compute caption metrics")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    save_every_steps: int | None = Field(None, ge=1, description="write checkpoints/last every N optimizer steps")
    log_every: int = Field(10, ge=1, description="optimizer steps between metrics.jsonl / TensorBoard rows")
    cache_features: Literal["auto", "on", "off"] = Field(
        "auto", description="decoder_only on blip / vit-gpt2 (frozen encoder, no image augmentation): compute the "
                            "vision encoder's features of the training images once and train the decoder from them "
                            "every epoch (same losses; no image decoding or encoder forward after that pass). "
                            "auto: whenever possible, unless the features would not fit in memory (set "
                            "train.feature_cache_dir to keep them on disk); on: always, an error when impossible; "
                            "off: never")
    feature_cache_dir: str | None = Field(
        None, description="keep the cached features on disk here (memory-mapped, reused by later runs and "
                          "--resume while encoder, image size, processor and data are unchanged; the folder "
                          "holds one cache: one for another model or data replaces it); None: in memory")

    sdpa: Literal["auto", "on", "off"] = Field(
        "auto", description="run attention through torch's scaled_dot_product_attention (flash / memory-efficient "
                            "kernels on CUDA; BLIP's eager-only modules are switched per instance, weights and "
                            "checkpoints unchanged). Losses agree with eager attention to float rounding. auto: on "
                            "unless train.deterministic; on: everywhere (an error if the model has no module "
                            "that can use it); off: never")
    length_buckets: Literal["auto", "on", "off"] = Field(
        "auto", description="batch captions of similar length together (shuffled windows of 50 batches, sorted by "
                            "length; the batch order is still a function of seed and epoch), so that padding each "
                            "batch to its longest caption pads little. auto: on when the decoder trains on cached "
                            "encoder features (decoder_only), where padding is most of a step's cost, off "
                            "otherwise (batches of similar captions taught the full model the synthetic lesion "
                            "side less well: tests/test_train_trainer.py::test_tiny_blip_learns_side, 0.57 vs "
                            "0.64); on / off: always / never")
    tf32: bool = Field(True, description="TF32 matmuls for the work that stays fp32 (Ampere+ GPUs; no effect on CPU)")

    @field_validator("cache_features", "sdpa", "length_buckets", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on / off as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @property
    def effective_batch_size(self) -> int:
        """Images per optimizer step on one process (times the process count under DDP)."""
        return self.batch_size * self.grad_accum


def _generation_model() -> type[BaseModel]:
    # Built from the GenerationSettings dataclass so the two never drift apart: every decoding option
    # an adapter understands is a valid `generation.*` key, and nothing else is.
    hints = typing.get_type_hints(GenerationSettings)
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(GenerationSettings)}
    return create_model("GenerationConfig", __base__=_Section, **fields)


GenerationConfig = _generation_model()


class OutputConfig(_Section):
    dir: str = Field(description="run folder: checkpoints/, metrics.jsonl, TensorBoard logs, cost.json, ...")


class ExperimentConfig(_Section):
    name: str | None = None
    model: ModelConfig
    data: DataConfig
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)  # type: ignore[valid-type]
    output: OutputConfig
    #: how `medblip ablation` scores each strategy's captions (metric sets, their models, ...)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(**self.generation.model_dump())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _canonical_family(name: str) -> str:
    """The registry's spelling of a family name or alias (``vit_gpt2`` -> ``vit-gpt2``)."""
    try:
        return get_family(name).family
    except MedblipError:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(list_families())})") from None


# -- loading -----------------------------------------------------------------------------------------
_SECTIONS = "a mapping of sections (model, data, train, ...)"


def validate_config(raw: Any, source: str = "<config>", overridden: set[str] | None = None) -> ExperimentConfig:
    """Validate a parsed YAML mapping; any problem is one :class:`ConfigError` line naming key and file."""
    return configfile.validate(ExperimentConfig, raw, source, overridden, expected=_SECTIONS)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                out: str | Path | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment file (paths are not checked; see :func:`check_paths`)."""
    raw = configfile.read_yaml(path, expected=_SECTIONS)
    overridden = configfile.apply_overrides(raw, overrides)
    if out is not None:
        raw.setdefault("output", {})
        if not isinstance(raw["output"], dict):
            raise ConfigError(f"{path}: output: expected a section")
        raw["output"]["dir"] = str(out)
        overridden.add("output.dir")
    return validate_config(raw, str(path), overridden)


def check_paths(config: ExperimentConfig, source: str = "<config>") -> None:
    """The checks that need the filesystem: the data and a local model must exist.

    Kept apart from validation so the shipped ROCO configs validate on machines without the data.
    """
    if not Path(config.data.path).exists():
        raise ConfigError(f"{source}: data.path: {config.data.path} does not exist")
    name = config.model.name_or_path
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(f"{source}: model.name_or_path: {name} does not exist")
