"""Session fixtures for the trainer tests and for tests that need a *trained* tiny model.

Register them once in ``tests/conftest.py`` with ``pytest_plugins = ["_train_fixtures"]``:

- ``tiny_blip_dir``: a tiny random BLIP checkpoint folder (the default ``init_tiny`` sizes).
- ``small_synth_dir``: a 60-image synthetic benchmark at 64 px (48 train / 6 validation / 6 test).
- ``trained_tiny_blip``: a tiny BLIP trained from scratch on a 1440-image synthetic benchmark by
  ``medblip.training.train`` (one to two minutes of CPU); it names modality and side well above chance,
  so its attention maps are meaningful for interpretability tests. See :class:`TrainedTinyBlip`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medblip.experiments.demo import FULL as DEMO_FULL
from medblip.training.config import ExperimentConfig, validate_config

#: The learning recipe: the full demo's (medblip.experiments.demo.FULL), so that the test proves what
#: the demo shows. 1440 images at 64 px, a 128-wide 2-layer BLIP, 8 epochs: ~1-2 min on one CPU thread.
#: (Half the data for 6 epochs names the modality of only a third of the test images.)
LEARN_SYNTH = dict(DEMO_FULL["synth"])
LEARN_MODEL = dict(DEMO_FULL["blip"])
LEARN_TRAIN = dict(DEMO_FULL["train"])


@dataclass(frozen=True)
class TrainedTinyBlip:
    """A trained tiny BLIP and the data it was trained on.

    ``model_dir``: HF checkpoint (``checkpoints/best`` of the run; loads with ``create_model`` or
    plain ``BlipForConditionalGeneration``). ``data_dir``: the synthetic benchmark (ROCOv2 layout +
    ``facts.jsonl``, masks/). ``run_dir``: the training run folder. ``facts``: ``load_facts(data_dir)``.
    """

    model_dir: Path
    data_dir: Path
    run_dir: Path
    facts: dict[str, dict[str, Any]]


def train_captions(data_dir: Path) -> list[str]:
    with (data_dir / "train_captions.csv").open(encoding="utf-8", newline="") as fh:
        return [row["Caption"] for row in csv.DictReader(fh)]


def experiment(model: Path, data: Path, out: Path, **train: Any) -> ExperimentConfig:
    """A validated config for a quick CPU run (greedy, short captions)."""
    return validate_config({
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "image_size": 64, "cache_images": True},
        "strategy": {"name": "full"},
        "train": train,
        "generation": {"num_beams": 1, "max_new_tokens": 12},
        "output": {"dir": str(out)},
    }, "test-config")


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.models import init_tiny

    return init_tiny("blip", tmp_path_factory.mktemp("train-tiny") / "tiny-blip", image_size=64, seed=0)


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.data.synth import generate

    out = tmp_path_factory.mktemp("train-synth") / "synth"
    generate(out, 60, seed=0, size=64, splits=(0.8, 0.1, 0.1), workers=1)
    return out


@pytest.fixture(scope="session")
def trained_tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> TrainedTinyBlip:
    from medblip.data.synth import generate, load_facts
    from medblip.models import init_tiny
    from medblip.training.trainer import train

    root = tmp_path_factory.mktemp("trained-tiny-blip")
    data = root / "synth"
    generate(data, LEARN_SYNTH["n"], seed=LEARN_SYNTH["seed"], size=LEARN_SYNTH["size"])
    # The tokenizer is trained on the benchmark's own captions, so captions are short token sequences.
    model = init_tiny("blip", root / "init", captions=train_captions(data), **LEARN_MODEL)
    result = train(experiment(model, data, root / "run", **LEARN_TRAIN), progress=False)
    assert result.status == "completed" and result.best_checkpoint
    return TrainedTinyBlip(model_dir=Path(result.best_checkpoint), data_dir=data, run_dir=root / "run",
                           facts=load_facts(data))
