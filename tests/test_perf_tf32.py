"""The TF32 switch that the trainer and the fast step share: whatever they set, the caller's flags come back."""

from __future__ import annotations

import pytest
import torch

from medblip.perf.tf32 import restore_tf32, set_tf32, tf32_restored


@pytest.fixture(autouse=True)
def _keep_flags():
    with tf32_restored():
        yield


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_set_returns_what_restore_puts_back() -> None:
    restore_tf32((False, True))
    saved = set_tf32(True)
    assert saved == (False, True) and flags() == (True, True)
    restore_tf32(saved)
    assert flags() == (False, True)


def test_tf32_restored_undoes_the_body_even_on_error() -> None:
    restore_tf32((True, False))
    with pytest.raises(RuntimeError), tf32_restored():
        set_tf32(False)
        assert flags() == (False, False)
        raise RuntimeError("boom")
    assert flags() == (True, False)
