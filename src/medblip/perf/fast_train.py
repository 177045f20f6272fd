"""What ``medblip train`` takes from the throughput work for its optimizer and kernels:
:func:`make_adamw` (fused AdamW on CUDA and CPU, no decay on 1-d tensors) and :func:`trainer_kernels`
(``train.sdpa`` / ``train.tf32``). The benchmark's bare training step that uses the same pieces is
``benchmarks/fast_step.py``; the measured figures are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from medblip.perf.tf32 import set_tf32

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel


def make_adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float = 0.05,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               device: torch.device | None = None, foreach: bool | None = True) -> torch.optim.AdamW:
    """AdamW without decay on 1-d tensors (biases, norm weights), with torch's fused kernel on CUDA and
    CPU (one kernel per tensor for the whole update: on a tiny CPU model ten times faster than the
    per-tensor Python loop), else ``foreach`` (``None``: torch's default)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device is not None and device.type in ("cuda", "cpu")
    kw: dict[str, Any] = {"fused": True} if fused else {"foreach": foreach}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kw)


def trainer_kernels(adapter: CaptionModel, tc: Any, device: torch.device, source: str) -> dict[str, Any]:
    """``train.sdpa`` and ``train.tf32``: the attention kernel and matmul precision a training run uses.

    By default a run takes this module's kernels -- scaled-dot-product attention, TF32 for fp32 matmuls
    on CUDA (and :func:`make_adamw`'s fused AdamW) -- so it gets the throughput the benchmark reports.
    ``auto`` keeps deterministic runs on eager attention, whose numbers the exact-resume and DDP tests
    compare bit for bit. Returns what run.json records (``distributed.kernels``).
    """
    from medblip.errors import ConfigError
    from medblip.perf import attention

    want = tc.sdpa == "on" or (tc.sdpa == "auto" and not tc.deterministic)
    switched = attention.enable_sdpa(adapter) if want else 0
    if tc.sdpa == "on" and not switched:
        raise ConfigError(f"{source}: train.sdpa: on, but no attention module of this {adapter.family} model "
                          "can use scaled_dot_product_attention; set train.sdpa: auto or off")
    tf32 = bool(tc.tf32 and device.type == "cuda")
    if tf32:
        set_tf32(True)
    return {"sdpa": bool(switched), "sdpa_modules": switched, "tf32": tf32}
