"""Fine-tuning strategies: which parameter groups train, and LoRA.

=================  ==================================================================================
``none``           zero-shot: everything frozen
``full``           everything trains
``decoder_only``   vision encoder frozen (BLIP-2/InstructBLIP: Q-Former and language model train)
``encoder_only``   text side frozen, vision encoder trains
``qformer_only``   BLIP-2/InstructBLIP: only the Q-Former bridge (Q-Former, query tokens, language
                   projection) trains
``lora``           peft LoRA adapters on ``target_modules`` (module-name suffixes) inside ``groups``;
                   everything else frozen
=================  ==================================================================================

Which strategies a family supports is its adapter's ``strategies``; the groups each leaves trainable
its ``strategy_groups``. Frozen groups are pinned in eval mode and, at the input side, run under
no_grad (see :mod:`medblip.models.base`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError
from medblip.models.base import StrategyReport

if TYPE_CHECKING:
    import torch

    from medblip.models.base import CaptionModel

STRATEGIES: dict[str, str] = {
    "none": "zero-shot, everything frozen",
    "full": "all parameters train",
    "decoder_only": "vision encoder frozen",
    "encoder_only": "text decoder / language side frozen",
    "qformer_only": "only the Q-Former bridge trains",
    "lora": "LoRA adapters (peft) on the family's target modules, base weights frozen",
}


@dataclass
class LoraOptions:
    """LoRA hyper-parameters. ``target_modules``/``groups`` default to the family's choice."""

    r: int = 8
    alpha: int = 16
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


def _check(adapter: CaptionModel, strategy: str) -> None:
    if strategy not in adapter.strategies:
        raise MedblipError(
            f"strategy {strategy!r} is not supported for family {adapter.family!r}; "
            f"supported: {', '.join(adapter.strategies)}"
        )
    if adapter.is_peft:
        raise MedblipError(
            f"{adapter.family}: a LoRA strategy was already applied to this model; "
            "create the model again to apply another strategy"
        )


def apply_strategy(adapter: CaptionModel, strategy: str, *, lora: LoraOptions | dict[str, Any] | None = None,
                   **options: Any) -> StrategyReport:
    """Freeze / LoRA-wrap ``adapter``'s model for ``strategy`` and return the parameter counts.

    Flat LoRA keywords (``r=16``, ``target_modules=[...]``) are accepted as well as ``lora={...}``.
    Applying a non-LoRA strategy again first unfreezes everything, so strategies can be switched.
    """
    strategy = str(strategy).strip().lower().replace("-", "_")
    _check(adapter, strategy)
    if options:
        if strategy != "lora":
            raise MedblipError(f"strategy {strategy!r} takes no options (got {', '.join(sorted(options))})")
        lora = {**(dataclasses.asdict(LoraOptions.parse(lora)) if lora else {}), **options}
    members = adapter.group_modules()
    for group in members.values():
        for m in group:
            adapter._unpin(m)
    for p in adapter.model.parameters():
        p.requires_grad_(True)

    recorded: dict[str, Any] = {}
    if strategy == "lora":
        recorded = _apply_lora(adapter, LoraOptions.parse(lora))
        members = adapter.group_modules()
    else:
        trainable = set(adapter.strategy_groups[strategy])
        for group, ms in members.items():
            if group not in trainable:
                for m in ms:
                    _params(m, lambda p: p.requires_grad_(False))

    report = _pin_and_count(adapter, strategy, members)
    report.options = recorded
    adapter.strategy = report
    return report


def _params(member: Any, fn: Any) -> None:
    from torch import nn

    for p in [member] if isinstance(member, nn.Parameter) else member.parameters():
        fn(p)


def _pin_and_count(adapter: CaptionModel, strategy: str, members: dict[str, list[Any]]) -> StrategyReport:
    from torch import nn

    def trainable(ms: list[Any]) -> bool:
        return any(p.requires_grad for m in ms
                   for p in ([m] if isinstance(m, nn.Parameter) else m.parameters()))

    frozen = [g for g, ms in members.items() if not trainable(ms)]
    # Only a prefix of frozen groups in pipeline order has no trainable module upstream; those can run
    # without building a graph. A frozen group further down must pass gradients back to earlier ones.
    no_grad: list[str] = []
    for g in adapter.group_order:
        if g not in frozen:
            break
        no_grad.append(g)
    for g in frozen:
        for m in members[g]:
            adapter._pin(m, no_grad=g in no_grad)
    n_train = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in adapter.model.parameters() if not p.requires_grad)
    return StrategyReport(
        strategy=strategy,
        trainable_params=n_train,
        frozen_params=n_frozen,
        trainable_groups=[g for g in members if g not in frozen],
        frozen_groups=frozen,
        no_grad_groups=no_grad,
    )


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


def _apply_lora(adapter: CaptionModel, opts: LoraOptions) -> dict[str, Any]:
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
