"""The interface every model family adapter implements (one module per family, like transformers).

An adapter wraps the family's real transformers classes (model + processor/tokenizer) and gives the
trainer, the evaluator and the explainer one way to talk to any family. Adapters are created by
:func:`medblip.models.create_model`, never by hand.

Shared machinery lives here so that a family module only says what is specific to it: how to load,
which modules form which parameter group, how to tokenize captions and how to call ``generate``.

Freezing contract (see :mod:`medblip.models.strategies`): a frozen group has ``requires_grad=False``
and is *pinned* in eval mode (``model.train()`` cannot flip it back, so dropout stays off). Frozen
groups at the input side of the pipeline (``group_order``: e.g. the vision encoder) additionally run
under ``torch.no_grad()``, so no autograd graph is built through them at all. A frozen group in the
middle (e.g. BLIP-2's language model under ``qformer_only``) still builds a graph, because gradients
must flow through it to the trainable modules before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from medblip.errors import MedblipError
from medblip.models.lora import merged_state_dict
from medblip.models.strategies import StrategyReport, apply_strategy

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn


@dataclass
class GenerationSettings:
    """Decoding settings shared by all families (mapped onto ``model.generate`` kwargs)."""

    num_beams: int = 3
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    prompt: str | None = None  # family default when None (see each adapter)

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kw.update(top_p=self.top_p, temperature=self.temperature)
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kw

    def updated(self, **overrides: Any) -> tuple[GenerationSettings, dict[str, Any]]:
        """Settings with known fields replaced, plus the remaining raw ``generate`` kwargs."""
        names = {f.name for f in dataclasses.fields(self)}
        known = {k: v for k, v in overrides.items() if k in names}
        extra = {k: v for k, v in overrides.items() if k not in names}
        return dataclasses.replace(self, **known), extra


@dataclass
class CrossAttentionOutput:
    """Decoder cross-attention for a batch of teacher-forced token sequences.

    ``attentions``: one tensor per decoder layer, shaped (batch, heads, text_len, image_tokens) over
    the *patch* positions only (any CLS / query prefix removed by the adapter), and ``grid`` the
    (rows, cols) patch grid that image_tokens reshapes to. ``tokens``: the decoded token strings per
    position (batch x text_len) so maps can be labelled and merged into words.
    ``extra``: family-specific additions (documented on each adapter's ``cross_attentions``).
    """

    attentions: list[torch.Tensor]
    grid: tuple[int, int]
    token_ids: torch.Tensor
    tokens: list[list[str]]
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with eager attention for the duration (SDPA/flash return no attention weights)."""
    current = getattr(model.config, "_attn_implementation", None)
    switch = current not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


Member = Any  # an nn.Module or a bare nn.Parameter belonging to a parameter group


def checkpoint_generation_config(model: Any, settings: GenerationSettings) -> Any:
    """``model``'s generation config with medblip's decoding ``settings`` in it: what a saved checkpoint
    carries, so that plain transformers decode as medblip did (see :func:`carried_generation_settings`)."""
    import copy

    gen = copy.deepcopy(model.generation_config)
    gen.update(**{k: v for k, v in settings.generate_kwargs().items() if v is not None})
    # a config "from the model config" is rebuilt from config.json on load: this one is the run's own
    gen._from_model_config = False
    return gen


def saved_generation_settings(model: Any) -> dict[str, Any]:
    """The decoding settings ``model``'s generation config sets (see :func:`generation_config_settings`)."""
    return generation_config_settings(getattr(model, "generation_config", None))


def generation_config_settings(gen: Any) -> dict[str, Any]:
    """The decoding settings a transformers ``GenerationConfig`` sets (the :class:`GenerationSettings` fields
    it holds), e.g. those a checkpoint saved by medblip carries; the inverse of :func:`checkpoint_generation_config`.
    A setting the config leaves unset (``None``: transformers' own default) is left out, so a hub checkpoint
    whose generation_config.json names no decoding setting gives ``{}`` and keeps medblip's defaults."""
    if gen is None:
        return {}
    names = [f.name for f in dataclasses.fields(GenerationSettings) if f.name != "prompt"]
    values = {name: getattr(gen, name, None) for name in names}
    if not values.get("do_sample"):  # sampling parameters are not used without sampling
        values.pop("top_p")
        values.pop("temperature")
    return {k: v for k, v in values.items() if v is not None}


def text_config_limits(settings: GenerationSettings) -> dict[str, Any]:
    """The length limits a nested family's ``text_config`` carries (see :func:`carried_generation_settings`)."""
    return {"max_new_tokens": settings.max_new_tokens, "min_new_tokens": settings.min_new_tokens or None}


@contextlib.contextmanager
def carried_generation_settings(model: Any, settings: GenerationSettings | None) -> Iterator[None]:
    """For the duration (a ``save_pretrained``), ``model`` holds ``settings`` where plain transformers read them.

    ``generation_config.json`` gets every setting (beams, length limits, penalties, sampling). BLIP, BLIP-2
    and InstructBLIP generate through their language model, whose generation config transformers 5 builds
    from the text sub-config instead of that file; the length limits (``max_new_tokens``,
    ``min_new_tokens``, which transformers keeps in a config) are also written there, so that a pipeline
    does not cut captions at its default length. (Beam search settings cannot be kept in a config; pass
    ``generation_config=GenerationConfig.from_pretrained(folder)`` to ``generate`` for those families.)
    """
    if settings is None:
        yield
        return
    saved = model.generation_config
    text = getattr(model.config, "text_config", None)
    limits = text_config_limits(settings)
    before = {k: getattr(text, k, None) for k in limits} if text is not None else {}
    model.generation_config = checkpoint_generation_config(model, settings)
    try:
        for key, value in limits.items() if text is not None else ():
            setattr(text, key, value)
        yield
    finally:
        model.generation_config = saved
        for key, value in before.items():
            setattr(text, key, value)


#: parameter groups of the two-part families (BLIP, ViT-GPT2): strategy -> groups left trainable
ENCODER_DECODER_GROUPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "full": ("vision_encoder", "text_decoder"),
    "decoder_only": ("text_decoder",),
    "encoder_only": ("vision_encoder",),
}


def patch_grid(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    return pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # Bound onto frozen modules as ``train``: the parent's ``train()`` recurses into children by
    # calling ``child.train(mode)``, so this keeps a frozen module (and its dropout) in eval mode.
    from torch import nn

    return nn.Module.train(self, False)


def _no_grad_forward(member: nn.Module) -> Any:
    """``member``'s own forward under no_grad, with its real signature: generate() validates its
    kwargs against ``inspect.signature(forward)``."""
    import functools
    import inspect

    import torch

    original = type(member).forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return original(member, *args, **kwargs)

    forward.__signature__ = inspect.signature(original.__get__(member))  # bound: without self
    return forward


class CaptionModel(ABC):
    """A captioning model of one family, ready to generate, train and explain."""

    family: ClassVar[str]
    #: strategies this family supports (see :mod:`medblip.models.strategies`)
    strategies: ClassVar[tuple[str, ...]] = ("none", "full")
    #: parameter groups in pipeline order, input side first (decides which frozen groups may run
    #: under no_grad: only a prefix of frozen groups has no trainable module before it)
    group_order: ClassVar[tuple[str, ...]] = ()
    #: strategy -> groups left trainable (``lora`` is handled separately)
    strategy_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: LoRA defaults: module-name suffixes to adapt, and the groups they are searched in
    lora_targets: ClassVar[tuple[str, ...]] = ()
    lora_groups: ClassVar[tuple[str, ...]] = ()
    #: transformers classes, for ``medblip model info`` and the plain-reload check
    model_class_name: ClassVar[str] = ""
    processor_class_name: ClassVar[str] = ""
    #: label smoothing of the family's own training code (``train.label_smoothing`` defaults to it)
    default_label_smoothing: ClassVar[float] = 0.0
    #: the transformers forward applies ``label_smoothing`` itself (else :meth:`loss` recomputes it)
    native_label_smoothing: ClassVar[bool] = False
    #: logits[t] predict labels[t + 1] (causal LM with unshifted labels) rather than labels[t]
    shifted_labels: ClassVar[bool] = False

    def __init__(self, model: Any, processor: Any, name_or_path: str | Path, **options: Any) -> None:
        self.model = model
        self.processor = processor
        self.name_or_path = str(name_or_path)
        self.options = options
        self.strategy: StrategyReport | None = None
        self.label_smoothing = 0.0

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, source: str, *, dtype: Any = None, device: Any = None,
             local_files_only: bool | None = None, **options: Any) -> CaptionModel:
        """Load from a hub id or a local folder through the family's transformers classes."""

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def base_model(self) -> Any:
        """The transformers model (LoRA layers injected in place when a LoRA strategy is applied)."""
        model = self.model
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        return model

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "get_base_model")

    @abstractmethod
    def _group_members(self) -> dict[str, list[Member]]:
        """Group name -> the modules (or bare parameters) of the base model that form it."""

    def group_modules(self) -> dict[str, list[Member]]:
        return self._group_members()

    def parameter_groups(self) -> dict[str, list[str]]:
        """Group name -> names of its parameters, as named by ``self.model.named_parameters()``.

        Every parameter of the model is in exactly one group (tied weights are listed once).
        """
        from torch import nn

        names = {id(p): n for n, p in self.model.named_parameters()}
        groups: dict[str, list[str]] = {}
        for group, members in self._group_members().items():
            out: list[str] = []
            for m in members:
                params = [m] if isinstance(m, nn.Parameter) else list(m.parameters())
                out.extend(names[id(p)] for p in params if id(p) in names)
            groups[group] = list(dict.fromkeys(out))
        return groups

    def parameter_counts(self) -> dict[str, int]:
        """Group name -> number of parameters (trainable or not)."""
        sizes = {n: p.numel() for n, p in self.model.named_parameters()}
        return {g: sum(sizes[n] for n in names) for g, names in self.parameter_groups().items()}

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)
            out[k] = v
        return out

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> normalised pixel tensor on the model's device and dtype."""
        if not isinstance(images, list | tuple):
            images = [images]
        images = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        pv = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pv.to(self.device, dtype=self.dtype)

    # -- train / eval modes ----------------------------------------------------------------------
    def train_mode(self) -> CaptionModel:
        """Put the model in training mode; frozen groups stay in eval mode (they are pinned)."""
        self.model.train()
        return self

    def eval_mode(self) -> CaptionModel:
        self.model.eval()
        return self

    def _pin(self, member: Member, *, no_grad: bool) -> None:
        from torch import nn

        if not isinstance(member, nn.Module):
            return
        member.eval()
        member.train = types.MethodType(_stay_eval, member)
        if no_grad:
            member.forward = _no_grad_forward(member)

    def _unpin(self, member: Member) -> None:
        from torch import nn

        if isinstance(member, nn.Module):
            for attr in ("train", "forward"):
                member.__dict__.pop(attr, None)

    def no_grad_groups(self) -> list[str]:
        return list(self.strategy.no_grad_groups) if self.strategy else []

    # -- inference -------------------------------------------------------------------------------
    def generate(self, images: list[Image.Image], settings: GenerationSettings | None = None,
                 **overrides: Any) -> list[str]:
        """Caption each image; ``overrides`` update ``settings`` field by field.

        Override names that are not :class:`GenerationSettings` fields are passed to
        ``model.generate`` unchanged (e.g. ``length_penalty``).
        """
        ids, skip = self.generate_ids(images, settings, **overrides)
        return self.decode(ids, skip=skip)

    def generate_ids(self, images: list[Image.Image], settings: GenerationSettings | None = None,
                     **overrides: Any) -> tuple[torch.Tensor, int]:
        """Raw generated sequences and how many leading positions are prompt (not caption)."""
        if not isinstance(images, list | tuple):
            images = [images]
        settings, extra = (settings or GenerationSettings()).updated(**overrides)
        kwargs = {**settings.generate_kwargs(), **extra}
        with self.inference():
            return self._generate(list(images), settings, kwargs)

    @contextlib.contextmanager
    def inference(self, *, grad: bool = False) -> Iterator[None]:
        """Eval mode (frozen groups stay pinned) and, unless ``grad``, no_grad for the duration; a
        model that was training is put back in training mode afterwards."""
        import torch

        was_training = self.model.training
        self.eval_mode()
        try:
            with torch.set_grad_enabled(grad):
                yield
        finally:
            if was_training:
                self.train_mode()

    @abstractmethod
    def _generate(self, images: list[Image.Image], settings: GenerationSettings,
                  kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Family-specific call of ``generate``; returns (sequences, prompt positions to skip)."""

    def decode(self, ids: torch.Tensor, skip: int = 0) -> list[str]:
        texts = self.tokenizer.batch_decode(ids[:, skip:], skip_special_tokens=True)
        return [t.strip() for t in texts]

    # -- training --------------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Teacher-forcing inputs of the captions: input_ids, attention_mask, labels (-100 = ignored)."""

    def collate(self, images: list[Image.Image], captions: list[str]) -> dict[str, torch.Tensor]:
        """Processor + tokenizer: pixel_values plus :meth:`tokenize`'s tensors (on the CPU)."""
        if len(images) != len(captions):
            raise MedblipError(f"collate: {len(images)} images but {len(captions)} captions")
        pv = self.processor.image_processor(images=[im.convert("RGB") for im in images],
                                            return_tensors="pt")["pixel_values"]
        return {"pixel_values": pv, **self.tokenize(captions)}

    def loss(self, batch: dict[str, torch.Tensor], *, model: Any = None) -> torch.Tensor:
        """The family's own captioning loss for a collated batch.

        ``model``: the module to call instead of ``self.model``, e.g. the DDP wrapper that
        ``accelerator.prepare(adapter.model)`` returned, so that gradients are synchronised.
        Frozen input-side groups run under no_grad inside the model's own forward (see module doc).
        """
        batch = self._to_device(batch)
        out = (model if model is not None else self.model)(**self._forward_inputs(batch))
        if self.label_smoothing and not self.native_label_smoothing:
            return self.smoothed_loss(out.logits, batch["labels"])
        return out.loss

    def set_label_smoothing(self, value: float) -> None:
        """Cross-entropy label smoothing of :meth:`loss` (0.0: none), as ``train.label_smoothing`` sets it."""
        if not 0.0 <= value < 1.0:
            raise MedblipError(f"label smoothing must be in [0, 1), got {value}")
        self.label_smoothing = float(value)

    def smoothed_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Token-mean cross-entropy with :attr:`label_smoothing` over the labelled positions (-100 ignored),
        for families whose transformers loss has no smoothing option."""
        import torch

        if self.shifted_labels:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 labels.reshape(-1).to(logits.device), ignore_index=-100,
                                                 label_smoothing=self.label_smoothing)

    def _forward_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = ("pixel_values", "input_ids", "attention_mask", "labels")
        return {k: batch[k] for k in keys if k in batch}

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision encoder hidden states (batch, tokens, hidden); no graph when the encoder is frozen."""
        vision = self._vision_module()
        return vision(pixel_values=pixel_values.to(self.device, dtype=self.dtype)).last_hidden_state

    @abstractmethod
    def _vision_module(self) -> nn.Module:
        ...

    def apply_strategy(self, strategy: str, **options: Any) -> StrategyReport:
        """Freeze / wrap (LoRA) the model for a fine-tuning strategy and report parameter counts."""
        return apply_strategy(self, strategy, **options)

    # -- explanation -----------------------------------------------------------------------------
    def cross_attentions(self, images: list[Image.Image], token_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> CrossAttentionOutput:
        raise MedblipError(f"{self.family}: cross-attention maps are not available")

    def _tokens(self, token_ids: torch.Tensor) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in token_ids]

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: str | Path, *, generation: GenerationSettings | None = None) -> Path:
        """``save_pretrained`` of model and processor (safetensors) into ``directory``.

        The folder reloads with the family's plain transformers classes. A LoRA model is saved with
        the adapters merged into the weights, computed into a separate state dict so the live
        (training) model is left untouched. ``generation``: decoding settings the checkpoint carries
        (its generation_config.json; see :func:`carried_generation_settings`), e.g. a run's
        ``generation:`` section, so plain transformers caption as medblip did.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base, peft = self.base_model, self.model if self.is_peft else None
        if peft is not None and getattr(base, "is_quantized", False):
            # QLoRA: adding the deltas to 4/8-bit weights would round them away; the checkpoint holds the
            # dequantized weights with the deltas merged (a copy: the live model keeps training quantized)
            import copy

            peft = copy.deepcopy(peft)
            base = peft.get_base_model()
            base.dequantize()
        with carried_generation_settings(base, generation):
            if peft is not None:
                base.save_pretrained(directory, state_dict=merged_state_dict(peft))
            else:
                base.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        return directory

    def describe(self) -> dict[str, Any]:
        """Summary for ``medblip model info``."""
        counts = self.parameter_counts()
        return {
            "family": self.family,
            "name_or_path": self.name_or_path,
            "model_class": type(self.base_model).__name__,
            "processor_class": type(self.processor).__name__,
            "tokenizer_class": type(self.tokenizer).__name__,
            "dtype": str(self.dtype).replace("torch.", ""),
            "parameters": {"total": sum(counts.values()), **counts},
            "strategies": list(self.strategies),
            "options": {k: v for k, v in self.options.items() if v is not None},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, name_or_path={self.name_or_path!r})"
