"""TF32 for CUDA matmuls and cuDNN convolutions: a process-wide switch, so every setter can restore it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

Saved = tuple[bool, bool]


def tf32_flags() -> Saved:
    """The current (matmul, cuDNN) TF32 flags."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_tf32(enabled: bool) -> Saved:
    """Switch TF32 matmuls and cuDNN convolutions; return the previous flags for :func:`restore_tf32`."""
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    return saved


def restore_tf32(saved: Saved) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def tf32_restored() -> Iterator[None]:
    """Whatever the body switches, the caller's TF32 flags come back afterwards."""
    saved = tf32_flags()
    try:
        yield
    finally:
        restore_tf32(saved)
