"""Session fixtures for the trainer tests and for tests that need a *trained* tiny model.

Register them once in ``tests/conftest.py`` with ``pytest_plugins = ["_train_fixtures"]``:

- ``tiny_blip_dir``: a tiny random BLIP checkpoint folder (the default ``init_tiny`` sizes).
- ``small_synth_dir``: a 60-image synthetic benchmark at 64 px (48 train / 6 validation / 6 test).
- ``demo_standin``: the full demo's data (1440 synthetic images) and its pretrained tiny BLIP stand-in
  (``medblip.experiments.pretrain``, the full recipe of configs/demo/pretrain_tiny.yaml; two to three minutes
  of CPU): the zero-shot system of the demo and the start of its fine-tuning. See :class:`DemoStandin`.
- ``trained_tiny_blip``: that stand-in fine-tuned by ``medblip.training.train`` with the full demo's
  recipe (all parameters; about a minute of CPU): the fine-tuned BLIP of ``medblip demo``, the
  interpretability and demo-shape tests' model. See :class:`TrainedTinyBlip`.
- ``twin``: ``twin(like)`` -> a tiny twin of a real checkpoint (a hub id medblip ships the published
  config of, or a folder of published config files), built once per session (see medblip.models.twins).
- ``learned_tiny_blip``: the same with the learning recipe (10,000 images, 16 px patches; about 3
  minutes on 2 CPU threads): it names the modality and the lesion's side. The trainer's learning tests.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from medblip.experiments.demo import load_recipe as load_demo_recipe
from medblip.perf.threads import torch_threads
from medblip.training.config import ExperimentConfig, validate_config

#: The learning recipe (the trainer's learning tests; as CLI steps: configs/synth_blip_learn.yaml). A
#: from-scratch ViT learns *where* a lesion is only from many images: 10,000 (9,400 train) seen 5 times,
#: through 16 px patches (3x the images/s of 8 px), with the original BLIP/ViT init (0.02) and position
#: embeddings at std 1 so that position is as loud as patch content. About 3 minutes of training on the
#: 2-core CPU machine (2 threads); greedy test captions name the modality of ~all images and the lesion
#: side of ~0.6 against a ~0.4 majority rate (README, "Models the tests train").
LEARN: dict[str, Any] = {
    "synth": {"n": 10000, "size": 64, "seed": 0, "splits": (0.94, 0.01, 0.05)},
    "blip": {"image_size": 64, "patch_size": 16, "hidden_size": 128, "num_layers": 2, "num_heads": 4,
             "vocab_size": 512, "seed": 0, "vision_init_std": 0.02, "position_init_std": 1.0},
    "train": {"epochs": 5, "batch_size": 32, "lr": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.05,
              "schedule": "cosine", "seed": 0, "val_subset": 64, "val_generate": False, "log_every": 20,
              "label_smoothing": 0.0},
}


#: The grounding tests' recipe: a tiny BLIP trained from random weights on the full demo's benchmark (the
#: demo's recipe before the pretrained stand-ins). Its attention and Grad-CAM maps point at the lesion
#: reliably; the fine-tuned stand-in's do not beat the uniform map's energy on every seed (measurements:
#: tests/test_explain_grounding.py).
GROUNDING: dict[str, Any] = {
    "blip": {"image_size": 64, "patch_size": 8, "hidden_size": 128, "num_layers": 2, "num_heads": 4,
             "vocab_size": 512, "seed": 0},
    "train": {"epochs": 8, "batch_size": 32, "lr": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.05,
              "schedule": "cosine", "seed": 0, "val_subset": 64, "val_generate": False, "log_every": 5,
              "label_smoothing": 0.0},
}


@dataclass(frozen=True)
class DemoStandin:
    """The full demo's synthetic benchmark (``data_dir``, ROCOv2 layout + facts + masks) and its
    pretrained BLIP stand-in (``model_dir``, with ``pretrain.json``), made as ``medblip demo`` makes them."""

    model_dir: Path
    data_dir: Path


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


def experiment(model: Path, data: Path, out: Path, strategy: str = "full", **train: Any) -> ExperimentConfig:
    """A validated config for a quick CPU run (greedy, short captions)."""
    return validate_config({
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "image_size": 64, "cache_images": True},
        "strategy": {"name": strategy},
        "train": train,
        "generation": {"num_beams": 1, "max_new_tokens": 12},
        "output": {"dir": str(out)},
    }, "test-config")


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.models import init_tiny

    return init_tiny("blip", tmp_path_factory.mktemp("train-tiny") / "tiny-blip", image_size=64, seed=0)


@pytest.fixture(scope="session")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from medblip.models import init_tiny

    built: dict[str, Path] = {}

    def make(like: str | Path) -> Path:
        key = str(like)
        if key not in built:
            name = key.strip("/").replace("/", "__")
            built[key] = init_tiny(None, tmp_path_factory.mktemp("twin") / name, like=like, seed=0)
        return built[key]

    return make


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medblip.data.synth import generate

    out = tmp_path_factory.mktemp("train-synth") / "synth"
    generate(out, 60, seed=0, size=64, splits=(0.8, 0.1, 0.1), workers=1)
    return out


def train_one_thread(cfg: ExperimentConfig, **kw: Any) -> Any:
    """``medblip.training.train`` on one thread (results must not depend on threads), no progress bar;
    torch's thread count and deterministic-algorithms flag (which ``train.deterministic`` sets) restored."""
    from medblip.training.trainer import train

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with torch_threads(1):
            return train(cfg, progress=False, **kw)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def train_recipe(root: Path, recipe: dict[str, Any], model: Path | None = None, data: Path | None = None,
                 strategy: str = "full", **overrides: Any) -> TrainedTinyBlip:
    """Train ``model`` (default: a tiny random BLIP of ``recipe["blip"]``) on ``data`` (default: the
    recipe's synthetic benchmark, rendered here) with the recipe's ``train`` section (plus ``overrides``).

    The recipes' models are medblip's own tiny BLIPs, not twins of BLIP-base: a twin keeps the published
    384 px input, 16 px patches and 30,524-token vocabulary, which trains an order of magnitude slower on
    a CPU (the shipped configs' tests use twins: tests/test_configs_shipped.py)."""
    from medblip.data.synth import generate, load_facts
    from medblip.models import init_tiny
    from medblip.training.trainer import train

    if data is None:
        data = root / "synth"
        generate(data, **recipe["synth"])
    if model is None:
        # The tokenizer is trained on the benchmark's own captions, so captions are short token sequences.
        model = init_tiny("blip", root / "init", captions=train_captions(data), **recipe["blip"])
    with torch_threads(min(2, os.cpu_count() or 1)):  # the recipes' times are measured with 2 threads
        result = train(experiment(model, data, root / "run", strategy, **{**recipe["train"], **overrides}),
                       progress=False)
    assert result.status == "completed" and result.best_checkpoint
    return TrainedTinyBlip(model_dir=Path(result.best_checkpoint), data_dir=data, run_dir=root / "run",
                           facts=load_facts(data))


def build_demo_standin(root: Path) -> DemoStandin:
    """As the demo's "models" stage makes it: the full pretraining recipe, the benchmark's captions in the
    tokenizer; nothing is redone when ``root`` already holds both for the current recipe key (recipe,
    seed, tokenizer captions, corpus version)."""
    from medblip.experiments.demo import make_synth
    from medblip.experiments.demo import train_captions as demo_captions
    from medblip.experiments.pretrain import load_recipe, standins

    data, model = root / "synth", root / "tiny-blip"
    demo = load_demo_recipe("full")
    make_synth(data, demo.synth, lambda _m: None)
    standins({"blip": model}, {"blip": load_recipe("blip", demo.pretrain)}, captions=demo_captions(data))
    return DemoStandin(model_dir=model, data_dir=data)


#: the background process building the stand-in (pytest_collection_modifyitems), joined by demo_standin
_BACKGROUND: dict[str, Any] = {}
STANDIN_CACHE_KEY = "medblip-demo-standin"  # pytest's cache folder that both build into


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The stand-in's pretraining takes ~2 minutes on one thread (its recipe's count) and the machine has
    # two cores: it is built in another process from the start of the session, and the tests that need it
    # run last, so that the other tests run beside it instead of after it (the 15-minute CI budget).
    users = [item for item in items if "demo_standin" in getattr(item, "fixturenames", ())]
    cache = getattr(config, "cache", None)
    if (not users or len(users) == len(items) or cache is None or (os.cpu_count() or 1) < 2
            or config.option.collectonly):
        return
    chosen = set(map(id, users))
    items[:] = [item for item in items if id(item) not in chosen] + users
    import multiprocessing

    # spawn: a fresh interpreter (forking a process that holds torch's thread pools is unsafe). Not a
    # daemon: the build renders the benchmark with a process pool, and a daemon may not have children
    # (it failed so, and the fixture then built everything itself); pytest_sessionfinish stops it instead.
    proc = multiprocessing.get_context("spawn").Process(
        target=build_demo_standin, args=(cache.mkdir(STANDIN_CACHE_KEY),), daemon=False)
    proc.start()
    _BACKGROUND["demo_standin"] = proc


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A session that ends before the stand-in's users ran (-x, a deselecting -k, Ctrl-C) does not wait
    # for the build: it is stopped (its outputs are installed atomically, so the cache stays whole).
    proc = _BACKGROUND.pop("demo_standin", None)
    if proc is not None and proc.is_alive():
        proc.terminate()
        proc.join(timeout=30)


@pytest.fixture(scope="session")
def demo_standin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoStandin:
    # Kept in pytest's cache folder when there is one (a rerun reuses it), else made in a temporary folder.
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir(STANDIN_CACHE_KEY) if cache is not None else tmp_path_factory.mktemp("demo-standin")
    background = _BACKGROUND.pop("demo_standin", None)
    if background is not None:
        background.join()  # whatever its outcome, the build below finishes the job or raises its error here
        if background.exitcode != 0:  # say so: the build below then costs the session its ~2 minutes
            warnings.warn(f"the background build of the demo stand-in failed (exit code {background.exitcode}); "
                          "building it in the test process", stacklevel=1)
    return build_demo_standin(root)


@pytest.fixture(scope="session")
def trained_tiny_blip(tmp_path_factory: pytest.TempPathFactory, demo_standin: DemoStandin) -> TrainedTinyBlip:
    # The full demo's fine-tuning of its stand-in, so that the interpretability tests prove what the demo shows.
    return train_recipe(tmp_path_factory.mktemp("trained-tiny-blip"), load_demo_recipe("full").model_dump(),
                        model=demo_standin.model_dir,
                        data=demo_standin.data_dir)


@pytest.fixture(scope="session")
def grounded_tiny_blip(tmp_path_factory: pytest.TempPathFactory, demo_standin: DemoStandin) -> TrainedTinyBlip:
    # The GROUNDING recipe on the full demo's benchmark (the stand-in's data; its model is not used).
    return train_recipe(tmp_path_factory.mktemp("grounded-tiny-blip"), GROUNDING, data=demo_standin.data_dir)


@pytest.fixture(scope="session")
def learned_tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> TrainedTinyBlip:
    # The learning recipe; configs/synth_blip_learn.yaml is its CLI form.
    return train_recipe(tmp_path_factory.mktemp("learned-tiny-blip"), LEARN)
