"""Shared fixtures: the real data beside the repository and small image writers."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["_train_fixtures", "_serve_fixtures"]  # see the two modules for their fixtures

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models are dominated by per-op overhead: one intra-op thread is faster than two on a
    # 2-core machine and keeps subprocesses (kill/resume, DDP tests) from oversubscribing the CPU.
    # Set before torch is imported so that subprocesses inherit it too.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository root (real ROCO metadata, MedPix images); skips if absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"real data folder {SHARED_DIR} is absent (see the project README: ../shared)")
    return SHARED_DIR


def _image_bytes(size: tuple[int, int], fmt: str, mode: str, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("L", "P"):
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        img = Image.fromarray(arr, mode="L")
        img = img if mode == "L" else img.convert("P")
    else:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    """``image_bytes(size=(32, 24), fmt="JPEG", mode="RGB", seed=0)`` -> encoded noise image."""

    def make(size: tuple[int, int] = (32, 24), fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
        return _image_bytes(size, fmt, mode, seed)

    return make


@pytest.fixture
def write_image(image_bytes: Callable[..., bytes]) -> Callable[..., Path]:
    """``write_image(path, size=(32, 24), mode="RGB", seed=0)``: format from the suffix."""

    def write(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB", seed: int = 0) -> Path:
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}[path.suffix.lower()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(size, fmt, mode, seed))
        return path

    return write


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored afterwards: tiny models gain nothing from a thread
    pool, and on a shared CPU the pool's contention makes them many times slower."""
    from medblip.perf.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def medblip_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``medblip_cli(*argv)`` runs ``medblip ARGV`` in-process as the console script does; returns the exit status."""
    def run(*argv: str) -> int:
        from medblip.cli import main

        monkeypatch.setattr(sys, "argv", ["medblip", *argv])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    return run
