"""The TF32 switch that the trainer and the fast step share: whatever they set, the caller's flags come back."""

from __future__ import annotations

import pytest

from medblip.perf.tf32 import restore_tf32, set_tf32, tf32_flags, tf32_restored


@pytest.fixture(autouse=True)
def _keep_flags():
    with tf32_restored():
        yield


def test_set_returns_what_restore_puts_back() -> None:
    restore_tf32((False, True))
    saved = set_tf32(True)
    assert saved == (False, True) and tf32_flags() == (True, True)
    restore_tf32(saved)
    assert tf32_flags() == (False, True)


def test_tf32_restored_undoes_the_body_even_on_error() -> None:
    restore_tf32((True, False))
    with pytest.raises(RuntimeError), tf32_restored():
        set_tf32(False)
        assert tf32_flags() == (False, False)
        raise RuntimeError("boom")
    assert tf32_flags() == (True, False)
