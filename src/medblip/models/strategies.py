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
from typing import TYPE_CHECKING, Any

from medblip.errors import MedblipError
from medblip.models.lora import LoraOptions, apply_lora
from medblip.results import StrategyCounts

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

STRATEGIES: dict[str, str] = {
    "none": "zero-shot, everything frozen",
    "full": "all parameters train",
    "decoder_only": "vision encoder frozen",
    "encoder_only": "text decoder / language side frozen",
    "qformer_only": "only the Q-Former bridge trains",
    "lora": "LoRA adapters (peft) on the family's target modules, base weights frozen",
}


#: what a strategy froze, recorded with every run (the result schema's type)
StrategyReport = StrategyCounts


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
        if p.is_floating_point():  # 8/4-bit quantized weights (integer storage) never train
            p.requires_grad_(True)

    recorded: dict[str, Any] = {}
    if strategy == "lora":
        recorded = apply_lora(adapter, LoraOptions.parse(lora))
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
    total = n_train + n_frozen
    return StrategyReport(
        strategy=strategy,
        trainable_params=n_train,
        frozen_params=n_frozen,
        total_params=total,
        trainable_fraction=n_train / total if total else 0.0,
        trainable_groups=[g for g in members if g not in frozen],
        frozen_groups=frozen,
        no_grad_groups=no_grad,
    )
