"""Helpers shared by the tests/test_perf_*.py files (tiny models of the real classes, images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medblip.models import CaptionModel, create_model, init_tiny

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = [
    "axial CT of the chest showing a left lung nodule",
    "MRI of the brain",
    "radiograph of the knee with no fracture and no effusion of the joint space",
    "ultrasound of the liver showing a cyst",
    "CT of the abdomen showing a large right kidney mass with calcification",
    "MRI spine",
    "chest x-ray showing bilateral effusion",
    "coronal CT of the pelvis showing a left fracture",
]


@pytest.fixture(scope="session")
def perf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("perf-tiny")
    return {
        "blip": init_tiny("blip", root / "blip", captions=CAPTIONS, image_size=32, hidden_size=64, num_layers=2,
                          seed=1),
        "vit-gpt2": init_tiny("vit-gpt2", root / "vit-gpt2", captions=CAPTIONS, image_size=32, seed=1),
    }


def load(perf_dirs: dict[str, Path], family: str = "blip", **options: object) -> CaptionModel:
    return create_model(perf_dirs[family], **options)


def noise_images(n: int = 8, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def spice_up(adapter: CaptionModel, seed: int = 0, eos_bias: float = 0.5) -> CaptionModel:
    """Larger random weights: captions depend on the image and stop at varied lengths (a fair test
    of beam bookkeeping; the init's tiny weights give the same caption for every image)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.base_model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
        if adapter.family == "blip":
            eos = adapter.base_model.config.text_config.sep_token_id
            adapter.base_model.text_decoder.cls.predictions.bias[eos] += eos_bias
    return adapter
