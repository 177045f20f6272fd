"""Pretrained tiny stand-ins (medblip.experiments.pretrain, ``medblip model pretrain-tiny``) with the
quick recipe: deterministic, loadable like any checkpoint, a tokenizer that covers radiology captions,
reused by key, and the recipe file's errors named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medblip.errors import ConfigError
from medblip.experiments.pretrain import (
    PRETRAIN_JSON,
    RECIPE_NAMES,
    is_current,
    load_recipe,
    pretrain_tiny,
    recipe_key,
    standins,
)

RADIOLOGY = ["Axial contrast-enhanced CT of the chest showing a 12 mm spiculated nodule in the left upper lobe.",
             "Transverse ultrasound of the thyroid: anechoic cyst (8 mm) in the right thyroid lobe."]


@pytest.fixture(scope="module")
def quick_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_tiny("blip", tmp_path_factory.mktemp("standin") / "blip", recipe=load_recipe("blip", "quick"),
                         captions=RADIOLOGY)


def test_stand_in_loads_writes_lay_captions_and_knows_radiology_words(quick_blip: Path) -> None:
    from medblip.models import create_model

    doc = json.loads((quick_blip / PRETRAIN_JSON).read_text())
    assert doc["family"] == "blip" and doc["seed"] == 0 and doc["versions"]["torch"]
    assert doc["key"] == recipe_key(load_recipe("blip", "quick"), 0, RADIOLOGY)
    assert [s["name"] for s in doc["stages"]] == ["scenes"] and doc["stages"][0]["steps"] > 0
    assert doc["samples"] and all({"reference", "caption"} <= set(s) for s in doc["samples"])
    adapter = create_model(quick_blip)
    assert adapter.family == "blip"
    # every word of the radiology captions and of the lay corpus is one token: fine-tuning on the
    # benchmark never meets a word the stand-in's vocabulary splits into characters
    tokenizer = adapter.tokenizer
    for word in ("spiculated", "nodule", "thyroid", "anechoic", "spot", "oval", "left"):
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
    assert not (quick_blip / "trainer_state.pt").exists()  # a checkpoint, not a resumable run


def test_same_seed_same_weights_other_seed_other_weights(quick_blip: Path, tmp_path: Path) -> None:
    again = pretrain_tiny("blip", tmp_path / "again", recipe=load_recipe("blip", "quick"), captions=RADIOLOGY)
    assert (again / "model.safetensors").read_bytes() == (quick_blip / "model.safetensors").read_bytes()
    other = pretrain_tiny("blip", tmp_path / "other", recipe=load_recipe("blip", "quick"), captions=RADIOLOGY, seed=1)
    assert (other / "model.safetensors").read_bytes() != (quick_blip / "model.safetensors").read_bytes()


def test_standins_are_reused_by_key(quick_blip: Path, tmp_path: Path) -> None:
    recipes = {"blip": load_recipe("blip", "quick"), "vit-gpt2": load_recipe("vit-gpt2", "quick")}
    assert is_current(quick_blip, recipes["blip"], 0, RADIOLOGY)
    assert not is_current(quick_blip, recipes["blip"], 0, RADIOLOGY[:1])  # other tokenizer text: stale
    jobs = {"blip": quick_blip, "vit-gpt2": tmp_path / "vit"}
    assert standins(jobs, recipes, captions=RADIOLOGY, parallel=False) == ["vit-gpt2"]
    assert standins(jobs, recipes, captions=RADIOLOGY, parallel=False) == []
    from medblip.models import create_model

    assert create_model(tmp_path / "vit").family == "vit-gpt2"


def test_side_by_side_gives_the_same_weights_and_a_failure_stops_both(quick_blip: Path, tmp_path: Path) -> None:
    """The demo pretrains its stand-ins in two processes: the weights are the ones one process makes, and
    a stand-in that fails ends the run with its error (the other worker is terminated, not orphaned)."""
    import dataclasses

    from medblip.errors import MedblipError

    recipes = {"blip": load_recipe("blip", "quick"), "vit-gpt2": load_recipe("vit-gpt2", "quick")}
    jobs = {"blip": tmp_path / "blip", "vit-gpt2": tmp_path / "vit"}
    assert sorted(standins(jobs, recipes, captions=RADIOLOGY, parallel=True)) == ["blip", "vit-gpt2"]
    assert (tmp_path / "blip" / "model.safetensors").read_bytes() == (quick_blip / "model.safetensors").read_bytes()

    broken = dict(recipes, **{"vit-gpt2": dataclasses.replace(recipes["vit-gpt2"], model={"image_size": -1})})
    jobs = {"blip": tmp_path / "blip2", "vit-gpt2": tmp_path / "vit2"}
    with pytest.raises((MedblipError, ValueError)):
        standins(jobs, broken, captions=RADIOLOGY, parallel=True)
    assert not (tmp_path / "vit2" / "model.safetensors").exists()


def test_cli_pretrain_tiny(medblip_cli: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(RADIOLOGY) + "\n")
    out = tmp_path / "cli"
    code = medblip_cli("model", "pretrain-tiny", "--family", "vit-gpt2", "--out", str(out), "--recipe", "quick",
                       "--captions", str(captions), "--no-progress")
    assert code == 0
    assert "wrote pretrained tiny vit-gpt2 stand-in" in capsys.readouterr().out
    assert json.loads((out / PRETRAIN_JSON).read_text())["tokenizer_captions"]["extra"] == 2
    assert medblip_cli("model", "pretrain-tiny", "--family", "blip", "--out", str(out), "--recipe", "nope") == 2
    assert "no recipe 'nope'" in capsys.readouterr().err
    # a folder of other files is not replaced (nothing is lost): one line naming --overwrite
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert medblip_cli("model", "pretrain-tiny", "--family", "blip", "--out", str(foreign), "--recipe", "quick",
                       "--no-progress") == 2
    assert "--overwrite" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"


def test_shipped_recipes_validate() -> None:
    from medblip.training.config import TrainConfig

    for name in RECIPE_NAMES:
        for family in ("blip", "vit-gpt2"):
            recipe = load_recipe(family, name)
            assert recipe.stages and recipe.threads >= 1
            for stage in recipe.stages:
                TrainConfig.model_validate(stage.train)  # every key is a real train: key


@pytest.mark.parametrize(("text", "message"), [
    ("full: {blip: {model: {}}}", r"stages: expected a list"),
    ("full: {blip: {model: {}, stages: [{name: a, corpus: {}}]}}", r"expected the keys name, corpus and train"),
    ("full: {blip: {model: {}, stages: [], colour: red}}", r"unknown key 'colour'"),
    ("full: {vit-gpt2: {model: {}, stages: []}}", r"no recipe for the blip family"),
    ("full: {blip: {model: {}, threads: 0, stages: [{name: a, corpus: {}, train: {}}]}}", r"threads: expected"),
])
def test_recipe_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe("blip", "full", path)
