"""Pretrained tiny stand-ins (``medblip model pretrain-tiny``): general-domain captioners, offline.

The study fine-tunes *pretrained* checkpoints: BLIP and ViT-GPT2 already look at pictures and write
captions, in a general domain, before they meet radiology. A tiny random model (``init_tiny``) does
neither, so freezing its vision encoder or its decoder freezes noise. This module makes the
offline stand-in of a pretrained checkpoint: a tiny model of the family's real transformers classes,
trained by medblip's own trainer on the shapes corpus (:mod:`medblip.data.shapes`: plain-language
captions of shapes and marks, no radiology word), with a tokenizer that also covers radiology
captions so that fine-tuning never changes the vocabulary. The recipe - corpus size, model sizes,
training budget - is a YAML file (``configs/demo/pretrain_tiny.yaml``, commented).

``OUT`` is a ``save_pretrained`` folder (``create_model`` loads it like any checkpoint) plus
``pretrain.json``: family, seed, the recipe and its key, the corpus, the training summary and what
the stand-in writes for a few held-out pictures, versions and git commit. The same family, recipe,
seed and tokenizer captions give the same weights on the same machine (the recipe fixes the thread
count); :func:`standins` reuses a folder whose ``pretrain.json`` has the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medblip.errors import ConfigError, MedblipError
from medblip.io import atomic_write_json, read_json_object
from medblip.outputs import check_output_dir, ensure_writable_dir, install_output_dir

RECIPE_FILE = "demo/pretrain_tiny.yaml"
PRETRAIN_JSON = "pretrain.json"
PRETRAIN_TINY = "model pretrain-tiny"  # the command named in the output folder's marker
RECIPE_NAMES = ("full", "quick")
#: Files of a checkpoint folder that make up the model (the trainer's resumable state is left out).
_TRAINER_STATE = "trainer_state.pt"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    """One pass of pretraining: a shapes corpus (``generate_shapes`` arguments) and the ``train:``
    section (``medblip train``'s keys) it is trained with."""

    name: str
    corpus: dict[str, Any]
    train: dict[str, Any]


@dataclass(frozen=True)
class PretrainRecipe:
    """How to make one family's stand-in: the model (``init_tiny`` arguments), the stages it is trained
    through in order (a curriculum: each starts from the previous one's weights), and the number of
    torch threads (fixed, so that the weights do not depend on the machine's default)."""

    family: str
    model: dict[str, Any]
    stages: tuple[Stage, ...]
    threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def image_size(self) -> int:
        return int(self.model.get("image_size", 64))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def load_recipe(family: str, name: str = "full", path: str | Path | None = None) -> PretrainRecipe:
    """The ``name`` recipe (``full`` or ``quick``) of ``family`` from ``path`` (default: the shipped
    ``configs/demo/pretrain_tiny.yaml``)."""
    from medblip.configfile import read_yaml, shipped_config
    from medblip.models.registry import get_family

    family = get_family(family).family
    file = Path(path) if path is not None else shipped_config(RECIPE_FILE)
    raw = read_yaml(file)
    if not isinstance(raw, dict) or name not in raw:
        raise ConfigError(f"{file}: no recipe {name!r} (expected top-level keys {', '.join(RECIPE_NAMES)})")
    recipes = _mapping(raw[name], f"{file}: {name}")
    if family not in recipes:
        raise ConfigError(f"{file}: {name}: no recipe for the {family} family (has {', '.join(map(str, recipes))})")
    where = f"{file}: {name}.{family}"
    body = _mapping(recipes[family], where)
    unknown = sorted(set(body) - {"model", "stages", "threads"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: model, stages, threads)")
    stages = body.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{where}.stages: expected a list of stages (name, corpus, train)")
    parsed = []
    for k, stage in enumerate(stages):
        st = _mapping(stage, f"{where}.stages[{k}]")
        if set(st) != {"name", "corpus", "train"}:
            raise ConfigError(f"{where}.stages[{k}]: expected the keys name, corpus and train, got {', '.join(st)}")
        parsed.append(Stage(str(st["name"]), _mapping(st["corpus"], f"{where}.stages[{k}].corpus"),
                            _mapping(st["train"], f"{where}.stages[{k}].train")))
    threads = body.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"{where}.threads: expected a positive integer, got {threads!r}")
    return PretrainRecipe(family, _mapping(body.get("model", {}), f"{where}.model"), tuple(parsed), threads)


def recipe_key(recipe: PretrainRecipe, seed: int, captions: Iterable[str]) -> str:
    """What decides the stand-in's weights, hashed: recipe, seed, tokenizer captions, corpus version."""
    from medblip.data.shapes import SHAPES_VERSION

    text = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()
    doc = {"recipe": recipe.as_dict(), "seed": seed, "captions": text, "shapes": SHAPES_VERSION}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def read_pretrain_json(folder: str | Path) -> dict[str, Any] | None:
    return read_json_object(Path(folder) / PRETRAIN_JSON)


def _experiment(model: Path, corpus: Path, out: Path, recipe: PretrainRecipe, stage: Stage, seed: int) -> Any:
    from medblip.training.config import validate_config

    train = {"val_subset": 64, "val_generate": False, "log_every": 20, **stage.train, "seed": seed,
             "early_stopping": {"metric": "val_loss", "patience": None}}
    return validate_config({
        "name": f"pretrain-{recipe.family}-{stage.name}",
        "model": {"name_or_path": str(model)},
        "data": {"path": str(corpus), "image_size": recipe.image_size, "cache_images": True},
        "strategy": {"name": "full"},
        "train": train,
        "generation": {"num_beams": 1, "max_new_tokens": 40},
        "output": {"dir": str(out)},
    }, f"{RECIPE_FILE}: {recipe.family}, stage {stage.name}")


def _samples(model_dir: Path, corpus: Path, n: int) -> list[dict[str, str]]:
    """Greedy captions of the first ``n`` held-out pictures next to their references."""
    from medblip.data import load_dataset, load_image
    from medblip.models import create_model

    records = load_dataset(corpus, splits=["validation"]).records[:n]
    if not records:
        return []
    adapter = create_model(model_dir)
    captions = adapter.generate([load_image(r.image) for r in records], num_beams=1, max_new_tokens=40)
    return [{"id": r.id, "reference": r.caption, "caption": c} for r, c in zip(records, captions, strict=True)]


def pretrain_tiny(family: str, out: str | Path, *, recipe: PretrainRecipe | None = None, seed: int = 0,
                  captions: Iterable[str] | None = None, progress: bool = False, log: Log | None = None,
                  overwrite: bool = False) -> Path:
    """Pretrain ``family``'s tiny stand-in on the shapes corpus and write it to ``out`` (atomically).

    ``recipe``: default the shipped ``full`` one. ``seed``: model initialisation and data order (each
    stage's corpus has its own seed in the recipe). ``captions``: extra tokenizer text - the captions
    the stand-in will be fine-tuned on, so that their words are whole tokens from the start. A
    non-empty ``out`` that is not an earlier stand-in is refused unless ``overwrite`` (medblip.outputs).
    """
    from medblip.data import load_dataset
    from medblip.data.shapes import generate_shapes
    from medblip.models import init_tiny
    from medblip.perf.threads import torch_threads
    from medblip.runinfo import run_metadata
    from medblip.training.trainer import train

    say = log or (lambda _m: None)
    recipe = recipe or load_recipe(family)
    if recipe.family != family:
        raise MedblipError(f"pretrain-tiny: the recipe is for {recipe.family}, not {family}")
    extra = [c for c in (captions or []) if c and c.strip()]
    out = check_output_dir(out, PRETRAIN_TINY, overwrite=overwrite, known_files=(PRETRAIN_JSON,), replaces=True)
    ensure_writable_dir(out.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.pretrain.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        corpora, lay = [], []
        for k, stage in enumerate(recipe.stages):
            corpus = generate_shapes(work / f"shapes-{k}", **{"size": recipe.image_size, **stage.corpus})
            corpora.append(corpus)
            lay += [r.caption for r in load_dataset(corpus.out, splits=["train"]).records]
        model = init_tiny(family, work / "init", captions=[*lay, *extra], seed=seed, **recipe.model)
        stages = []
        with torch_threads(recipe.threads):
            for k, (stage, corpus) in enumerate(zip(recipe.stages, corpora, strict=True)):
                say(f"stage {k + 1}/{len(recipe.stages)} ({stage.name}): {corpus.splits['train']} pictures")
                config = _experiment(model, corpus.out, work / f"run-{k}", recipe, stage, seed)
                result = train(config, progress=progress, source=f"{RECIPE_FILE}: {family}, stage {stage.name}")
                if result.status != "completed" or not result.last_checkpoint:
                    raise MedblipError(f"pretraining {family} stopped in stage {stage.name} ({result.status}); "
                                       f"nothing written to {out}")
                model = Path(result.last_checkpoint)  # the end of the schedule, not an early best
                stages.append({"name": stage.name, "pictures": corpus.splits["train"], "steps": result.global_step,
                               "final_val_loss": result.final_metrics.get("val_loss"),
                               "train_seconds": result.cost.train_seconds})
            samples = _samples(model, corpora[-1].out, 6)
        seconds = time.perf_counter() - t0
        model_dir = work / "standin"
        shutil.copytree(model, model_dir, ignore=shutil.ignore_patterns(_TRAINER_STATE))
        atomic_write_json(model_dir / PRETRAIN_JSON, {
            "family": family, "seed": seed, "key": recipe_key(recipe, seed, extra), "recipe": recipe.as_dict(),
            "corpus": [{"generator": "medblip.data.shapes", "n": c.n, "seed": c.seed, "size": c.size,
                        "splits": c.splits} for c in corpora],
            "tokenizer_captions": {"shapes": len(lay), "extra": len(extra)},
            "stages": stages, "seconds": round(seconds, 1), "samples": samples,
            **run_metadata(seed=seed, command="pretrain-tiny")})
        install_output_dir(model_dir, out, PRETRAIN_TINY, known_files=(PRETRAIN_JSON,))
        say(f"pretrained the {family} stand-in in {seconds:.0f} s -> {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def is_current(out: str | Path, recipe: PretrainRecipe, seed: int, captions: Iterable[str]) -> bool:
    """Whether ``out`` already holds the stand-in of this recipe, seed and tokenizer captions."""
    doc = read_pretrain_json(out)
    return (doc is not None and doc.get("key") == recipe_key(recipe, seed, captions)
            and (Path(out) / "config.json").is_file())


def standins(jobs: Mapping[str, str | Path], recipes: Mapping[str, PretrainRecipe], *, seed: int = 0,
             captions: Iterable[str] | None = None, parallel: bool = True, progress: bool = False,
             log: Log | None = None) -> list[str]:
    """Make sure each ``family -> folder`` of ``jobs`` holds its stand-in (``recipes[family]``); the
    families whose folder is missing or stale are pretrained - side by side in separate processes
    when there are several and ``parallel`` (each stand-in uses its recipe's thread count, so the
    weights are the same either way). Returns the families pretrained now."""
    extra = [c for c in (captions or []) if c and c.strip()]
    todo = [f for f, out in jobs.items() if not is_current(out, recipes[f], seed, extra)]
    if parallel and len(todo) > 1 and (os.cpu_count() or 1) > 1:
        import multiprocessing

        if log:
            log(f"pretraining {' and '.join(todo)} side by side ({len(todo)} processes)")
        # spawn: a fresh interpreter per stand-in (forking a process that holds torch's thread pools is unsafe)
        pool = multiprocessing.get_context("spawn").Pool(len(todo))
        try:
            results = [pool.apply_async(pretrain_tiny, (f, jobs[f]), {"recipe": recipes[f], "seed": seed,
                                                                       "captions": extra}) for f in todo]
            for result in results:
                result.get()
            pool.close()
        except BaseException:
            pool.terminate()  # Ctrl-C or a failed stand-in: the other worker must not train on, orphaned
            raise
        finally:
            pool.join()
    else:
        for f in todo:
            pretrain_tiny(f, jobs[f], recipe=recipes[f], seed=seed, captions=extra, progress=progress, log=log)
    return todo
