"""LoRA: its hyper-parameters, the modules it wraps, and merging the adapters back for saving.

:class:`LoraOptions` holds the one set of defaults (``r=16``, ``alpha=32``, ``dropout=0.05``); the
experiment config's ``strategy.lora`` section (:class:`medblip.training.config.LoraConfig`) takes its
defaults from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError

if TYPE_CHECKING:
    import torch

    from medblip.models.base import CaptionModel


@dataclass
class LoraOptions:
    """LoRA hyper-parameters. ``target_modules``/``groups`` default to the family's choice."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # module-name suffixes, e.g. ["query", "value"]
    groups: list[str] | None = None  # parameter groups searched for target modules
    bias: str = "none"

    @classmethod
    def parse(cls, value: LoraOptions | dict[str, Any] | None) -> LoraOptions:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise MedblipError(f"lora options must be a mapping, got {type(value).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise MedblipError(f"unknown LoRA option {unknown[0]!r}; known: {', '.join(sorted(names))}")
        return cls(**value)


def lora_target_names(adapter: CaptionModel, opts: LoraOptions) -> list[str]:
    """Full module names (in the base model) that LoRA wraps: Linear layers whose name ends in a target."""
    from torch import nn

    targets = tuple(opts.target_modules or adapter.lora_targets)
    groups = list(opts.groups or adapter.lora_groups)
    members = adapter.group_modules()
    unknown = [g for g in groups if g not in members]
    if unknown:
        raise MedblipError(f"LoRA group {unknown[0]!r} is not a parameter group of {adapter.family}; "
                           f"groups: {', '.join(members)}")
    wanted = {id(m) for g in groups for member in members[g] if isinstance(member, nn.Module)
              for m in member.modules()}
    names = [name for name, mod in adapter.base_model.named_modules()
             if id(mod) in wanted and name.rsplit(".", 1)[-1] in targets and isinstance(mod, nn.Linear)]
    if not names:
        raise MedblipError(
            f"LoRA: no Linear module named {', '.join(targets)} in group(s) {', '.join(groups)} of {adapter.family}"
        )
    return names


def apply_lora(adapter: CaptionModel, opts: LoraOptions) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    names = lora_target_names(adapter, opts)
    config = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, bias=opts.bias,
                        target_modules=names)
    # get_peft_model injects LoRA layers into the base model in place and freezes everything else;
    # the adapter keeps calling the base model (adapter.base_model), so every code path sees LoRA.
    adapter.model = get_peft_model(adapter.model, config)
    return {**dataclasses.asdict(opts), "target_modules": list(opts.target_modules or adapter.lora_targets),
            "groups": list(opts.groups or adapter.lora_groups), "wrapped_modules": len(names)}


def merged_state_dict(peft_model: Any) -> dict[str, torch.Tensor]:
    """The base model's state dict with LoRA deltas added to the wrapped weights, live model untouched.

    Names are those of the plain transformers model (``.base_layer`` removed, ``lora_*`` dropped), so
    ``save_pretrained(dir, state_dict=...)`` writes a checkpoint the plain classes reload.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or name.startswith("lora_"):
            continue
        merged[name.replace(".base_layer.", ".")] = tensor
    with torch.no_grad():
        for mod_name, mod in base.named_modules():
            if not isinstance(mod, LoraLayer) or getattr(mod, "merged", False):
                continue
            key = f"{mod_name}.weight"
            weight = merged[key]
            for adapter_name in mod.active_adapters:
                if adapter_name in mod.lora_A:
                    weight = weight + mod.get_delta_weight(adapter_name).to(weight.dtype)
            merged[key] = weight.detach().clone()
    return merged
