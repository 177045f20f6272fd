"""Scaled-dot-product attention for families whose transformers classes only implement eager attention.

BLIP in transformers 5.x has no SDPA / flash attention (``attn_implementation="sdpa"`` raises
"does not support an attention implementation through scaled_dot_product_attention"). Its two
attention modules -- ``BlipAttention`` (the ViT) and ``BlipTextSelfAttention`` (decoder self- and
cross-attention) -- compute ``softmax(QK^T / sqrt(d) + mask) V`` with explicit matmuls, which
materialises the (tokens x tokens) matrix: 577 x 577 per head for a 384-pixel ViT-B/16.
:func:`enable_sdpa` swaps the ``forward`` of those module *instances* (never the classes) for one
that calls :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels on CUDA, a fused kernel on CPU) with the same weights, the same additive mask and the same
dropout probability. The state dict, ``save`` and reloading are untouched.

When attention *weights* are requested (``output_attentions=True``, e.g. the explainer's
cross-attention maps) the patched forward runs the original eager code, so recorded weights are
exactly transformers'. Families whose classes support SDPA natively (ViT-GPT2: ViT + GPT-2) are
switched with ``set_attn_implementation("sdpa")`` instead.
"""

from __future__ import annotations

import math
import types
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

_PATCHED = "_medblip_sdpa"


def _collector() -> Any:
    """transformers' record of the attention weights being collected (private; None where it moved)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return None
    return _active_collector


def _weights_requested() -> bool:
    """Whether transformers' output recorder is collecting attention weights right now."""
    collector = _collector()
    if collector is None:  # enable_sdpa patches nothing then; stay exact if called anyway
        return True
    collected = collector.get()
    return bool(collected) and any("attention" in k for k in collected)


def _blip_vision_sdpa(self: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    if _weights_requested():
        return type(self).forward(self, hidden_states, **kwargs)
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    p = self.dropout.p if self.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
    ctx = ctx.transpose(1, 2).reshape(bsz, tgt_len, embed_dim)
    return self.projection(ctx), None


#: the KV-cache argument of BlipTextSelfAttention.forward, by transformers release (5.23: past_key_values, 5.24: cache)
_CACHE_ARGS = ("cache", "past_key_values")


def _blip_text_sdpa(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    encoder_hidden_states: torch.Tensor | None = None,
                    encoder_attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    # With a KV cache (transformers' generate) the module's own forward runs: the cache's bookkeeping
    # is transformers' business and changes between releases. Training and teacher forcing have none.
    if _weights_requested() or any(kwargs.get(name) is not None for name in _CACHE_ARGS):
        return type(self).forward(self, hidden_states, attention_mask=attention_mask,
                                  encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask, **kwargs)
    head = self.attention_head_size
    q = self.query(hidden_states).view(*hidden_states.shape[:-1], -1, head).transpose(1, 2)
    is_cross = encoder_hidden_states is not None
    mask = encoder_attention_mask if is_cross else attention_mask
    current = encoder_hidden_states if is_cross else hidden_states
    k = self.key(current).view(*current.shape[:-1], -1, head).transpose(1, 2)
    v = self.value(current).view(*current.shape[:-1], -1, head).transpose(1, 2)
    if mask is not None:
        mask = mask.to(device=q.device, dtype=q.dtype) if mask.is_floating_point() else mask.to(q.device)
    p = self.dropout.p if self.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=1.0 / math.sqrt(head))
    ctx = ctx.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
    return ctx, None


def _agrees(module: nn.Module, fn: Any) -> str | None:
    """Why ``fn`` would not reproduce ``module``'s own forward (None: it does), on a random probe.

    The patched forwards read transformers' attention modules from inside; a release that renames a
    projection or changes what the module returns must leave the module eager, never make it wrong.
    """
    param = next(module.parameters(), None)
    width = getattr(module, "embed_dim", None) or getattr(module, "all_head_size", None)
    if param is None or width is None:
        return "unknown attention layout"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, int(width), generator=g).to(param.device, param.dtype)
    kwargs: dict[str, Any] = {}
    key = getattr(module, "key", None)
    if isinstance(key, nn.Linear) and key.in_features != int(width):  # a cross-attention module
        kwargs["encoder_hidden_states"] = torch.randn(1, 7, key.in_features, generator=g).to(param.device, param.dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = type(module).forward(module, x, **kwargs)[0]
            got = fn(module, x, **kwargs)[0]
        if want.shape != got.shape:
            return f"output shape {tuple(got.shape)} != {tuple(want.shape)}"
        error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        tolerance = 1e-4 if param.dtype == torch.float32 else 5e-2
        return None if error <= tolerance else f"outputs differ by {error:.1e} (relative)"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        module.train(was_training)


def _patch_table() -> dict[type, Any]:
    table: dict[type, Any] = {}
    try:
        from transformers.models.blip.modeling_blip import BlipAttention
        from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

        table[BlipAttention] = _blip_vision_sdpa
        table[BlipTextSelfAttention] = _blip_text_sdpa
    except ImportError:  # pragma: no cover
        pass
    return table


def _unwrap(model: Any) -> nn.Module:
    if hasattr(model, "base_model") and not isinstance(model, nn.Module):  # a CaptionModel adapter
        model = model.base_model
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def enable_sdpa(model: Any) -> int:
    """Make ``model`` (a transformers model or a medblip adapter) use SDPA; returns modules switched.

    Native support is used where the classes have it (``set_attn_implementation("sdpa")``); BLIP's
    eager-only attention modules are patched per instance. Idempotent.
    """
    model = _unwrap(model)
    table = _patch_table() if _collector() is not None else {}
    checked: dict[type, str | None] = {}
    count = 0
    for module in model.modules():
        fn = table.get(type(module))
        if fn is None:
            continue
        if type(module) not in checked:
            checked[type(module)] = problem = _agrees(module, fn)
            if problem is not None:
                warnings.warn(f"medblip: SDPA left off for {type(module).__name__} ({problem}); it stays eager",
                              RuntimeWarning, stacklevel=2)
        if checked[type(module)] is not None:
            continue
        if not module.__dict__.get(_PATCHED):
            module.forward = types.MethodType(fn, module)
            module.__dict__[_PATCHED] = True
        count += 1
    if count == 0 and getattr(model.config, "_attn_implementation", None) == "eager" \
            and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
            count = sum(1 for _ in model.modules())
        except (ValueError, ImportError):
            return 0
    elif count == 0 and getattr(model.config, "_attn_implementation", None) == "sdpa":
        count = sum(1 for _ in model.modules())
    return count


def disable_sdpa(model: Any) -> None:
    """Undo :func:`enable_sdpa`'s instance patches (native implementations are left as they are)."""
    model = _unwrap(model)
    for module in model.modules():
        if module.__dict__.pop(_PATCHED, False):
            module.__dict__.pop("forward", None)


def sdpa_enabled(model: Any) -> bool:
    model = _unwrap(model)
    if any(m.__dict__.get(_PATCHED) for m in model.modules()):
        return True
    return getattr(model.config, "_attn_implementation", None) == "sdpa"


class sdpa_attention:  # noqa: N801 - a context manager, named like contextlib's
    """``with sdpa_attention(model):`` SDPA inside, the previous state restored on exit."""

    def __init__(self, model: Any) -> None:
        self.model = _unwrap(model)
        self.was = False

    def __enter__(self) -> sdpa_attention:
        self.was = any(m.__dict__.get(_PATCHED) for m in self.model.modules())
        if not self.was:
            enable_sdpa(self.model)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.was:
            disable_sdpa(self.model)
