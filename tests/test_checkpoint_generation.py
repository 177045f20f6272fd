"""``medblip caption``, ``evaluate`` and ``serve`` decode with the settings a checkpoint saved (a training
run's ``generation:`` section, in its generation_config.json) where no option says otherwise, as
``medblip.load`` does: options > the checkpoint's saved settings > medblip's defaults."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import medblip.cli.caption_cmd  # noqa: F401  (registers the commands on the app)
import medblip.cli.evaluate_cmd  # noqa: F401
from medblip.data import load_image
from medblip.errors import MedblipError
from medblip.evaluation.predict import SETTING_FIELDS, resolve_settings
from medblip.models import GenerationSettings, create_model
from medblip.models.loading import GENERATION_CONFIG, checkpoint_generation_settings

pytestmark = pytest.mark.usefixtures("single_thread")

#: what the checkpoint saved (``adapter.save(dir, generation=SAVED)``, as ``medblip train`` does)
SAVED = GenerationSettings(num_beams=1, max_new_tokens=7)
DEFAULTS = dataclasses.asdict(GenerationSettings())
#: the fields a saved checkpoint sets (the sampling ones only with do_sample)
FROM_CHECKPOINT = {"num_beams", "max_new_tokens", "min_new_tokens", "do_sample", "repetition_penalty"}
SCORE = ["--bootstrap", "0", "--no-meteor", "--no-java"]


@pytest.fixture(scope="module")
def saved_run(served_blip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run folder whose best checkpoint carries SAVED (its images get different captions)."""
    run = tmp_path_factory.mktemp("gen") / "run"
    create_model(served_blip_dir).save(run / "checkpoints" / "best", generation=SAVED)
    return run


@pytest.fixture(scope="module")
def images(synth_jpegs: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gen-images")
    paths = [root / f"scan{i}.jpg" for i in range(3)]
    for path, data in zip(paths, synth_jpegs, strict=False):
        path.write_bytes(data)
    return paths


def _sources(**given: str) -> dict[str, str]:
    return {k: given.get(k, "checkpoint" if k in FROM_CHECKPOINT else "default") for k in SETTING_FIELDS}


# -- reading the saved settings before the model is loaded ------------------------------------------
def test_saved_settings_are_read_from_the_checkpoint_folder(saved_run, served_blip_dir, tmp_path):
    best = saved_run / "checkpoints" / "best"
    assert checkpoint_generation_settings(best) == {"num_beams": 1, "max_new_tokens": 7, "min_new_tokens": 0,
                                                    "do_sample": False, "repetition_penalty": 1.0}
    # init_tiny's generation_config.json holds only token ids: nothing overrides medblip's defaults
    assert (served_blip_dir / GENERATION_CONFIG).is_file() and checkpoint_generation_settings(served_blip_dir) == {}
    assert checkpoint_generation_settings("nobody/not-in-the-cache") == {}  # offline: never downloaded
    damaged = tmp_path / "damaged"
    shutil.copytree(best, damaged)
    (damaged / GENERATION_CONFIG).write_text("{ not json")
    with pytest.raises(MedblipError, match=f"{damaged / GENERATION_CONFIG}: unreadable"):
        checkpoint_generation_settings(damaged)


def test_published_checkpoints_keep_medblips_defaults(shared_dir):
    """The real BLIP has no generation_config.json; BLIP-2's and InstructBLIP's name only token ids."""
    folders = sorted(p for p in (shared_dir / "real-checkpoints").iterdir() if p.is_dir())
    assert any((f / GENERATION_CONFIG).is_file() for f in folders)
    for folder in folders:
        assert checkpoint_generation_settings(folder) == {}, folder.name


def test_precedence_and_sources():
    saved = {"num_beams": 1, "max_new_tokens": 7}
    settings, where = resolve_settings({"max_new_tokens": 5, "top_p": None}, saved)
    assert (settings.num_beams, settings.max_new_tokens, settings.repetition_penalty) == (1, 5, 1.0)
    assert where["num_beams"] == "checkpoint" and where["max_new_tokens"] == "option"
    assert where["top_p"] == where["repetition_penalty"] == "default"  # an option left unset is no option
    complete, where = resolve_settings(GenerationSettings(num_beams=2), saved)  # decides everything
    assert complete == GenerationSettings(num_beams=2) and set(where.values()) == {"option"}
    with pytest.raises(MedblipError, match="/ckpt: generation_config.json: num_beams=0"):
        resolve_settings({}, {"num_beams": 0}, saved_source="/ckpt: generation_config.json")


def test_help_names_medblips_defaults():
    from medblip.cli.options import GENERATION_DEFAULTS

    assert {k: v for k, v in DEFAULTS.items() if k != "prompt"} == GENERATION_DEFAULTS


# -- medblip caption ---------------------------------------------------------------------------------
def _caption(medblip_cli, model: Path, images: list[Path], out: Path, *options: str) -> dict:
    argv = ["caption", *map(str, images), "--model", str(model), "--out", str(out), "--no-progress", *options]
    assert medblip_cli(*argv) == 0
    return json.loads(out.with_name(f"{out.stem}.run.json").read_text())


def _captions(out: Path) -> list[str]:
    return [json.loads(line)["caption"] for line in out.read_text().splitlines()]


def test_caption_follows_the_saved_settings_unless_an_option_says_otherwise(saved_run, served_blip_dir, images,
                                                                           medblip_cli, capsys, tmp_path):
    adapter = create_model(saved_run / "checkpoints" / "best")
    decoded = [load_image(p) for p in images]

    # (a) no option: the run's settings (a run folder resolves to its best checkpoint)
    info = _caption(medblip_cli, saved_run, images, tmp_path / "a.jsonl")
    assert (f"{saved_run / 'checkpoints' / 'best'}: decoding with its saved generation settings (num_beams=1, "
            "max_new_tokens=7) where no option says otherwise") in capsys.readouterr().err
    assert info["config"]["generation"] == dataclasses.asdict(SAVED)
    assert info["config"]["generation_source"] == _sources()
    captions = _captions(tmp_path / "a.jsonl")
    assert captions == adapter.generate(decoded, SAVED)
    assert all(len(c.split()) <= 7 for c in captions)  # a word is one token or more

    # (b) an option overrides its setting; the others still come from the checkpoint
    info = _caption(medblip_cli, saved_run, images, tmp_path / "b.jsonl", "--num-beams", "2")
    assert info["config"]["generation"] == {**dataclasses.asdict(SAVED), "num_beams": 2}
    assert info["config"]["generation_source"] == _sources(num_beams="option")
    assert _captions(tmp_path / "b.jsonl") == adapter.generate(decoded, dataclasses.replace(SAVED, num_beams=2))

    # (c) a checkpoint without saved settings: medblip's defaults
    capsys.readouterr()
    info = _caption(medblip_cli, served_blip_dir, images[:1], tmp_path / "c.jsonl")
    assert "saved generation settings" not in capsys.readouterr().err
    assert info["config"]["generation"] == DEFAULTS
    assert info["config"]["generation_source"] == dict.fromkeys(SETTING_FIELDS, "default")
    assert _captions(tmp_path / "c.jsonl") == adapter.generate(decoded[:1], GenerationSettings())  # same weights


# -- medblip evaluate --------------------------------------------------------------------------------
def _evaluate(medblip_cli, model: Path, data: Path, out: Path, *options: str) -> int:
    return medblip_cli("evaluate", "--model", str(model), "--data", str(data), "--split", "test", *SCORE,
                       "--out", str(out), "--no-progress", *options)


def test_evaluate_follows_the_saved_settings_unless_an_option_says_otherwise(saved_run, served_blip_dir,
                                                                             small_synth_dir, medblip_cli,
                                                                             tmp_path):
    for name, model, options, generation, sources in [
        ("a", saved_run, [], dataclasses.asdict(SAVED), _sources()),
        ("b", saved_run, ["--max-new-tokens", "5"], {**dataclasses.asdict(SAVED), "max_new_tokens": 5},
         _sources(max_new_tokens="option")),
        ("c", served_blip_dir, ["--limit", "2"], DEFAULTS, dict.fromkeys(SETTING_FIELDS, "default")),
    ]:
        assert _evaluate(medblip_cli, model, small_synth_dir, tmp_path / name, *options) == 0, name
        run = json.loads((tmp_path / name / "run.json").read_text())
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert run["config"]["generation"] == metrics["generation"] == generation, name
        assert run["config"]["generation_source"] == metrics["generation_source"] == sources, name
        rows = [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        assert rows and all(r["generation"] == generation for r in rows), name


def test_evaluate_begun_with_medblips_defaults_is_not_resumed_with_the_saved_settings(
        saved_run, small_synth_dir, medblip_cli, capsys, tmp_path):
    out = tmp_path / "old"
    # what the run recorded before evaluate followed the checkpoint: medblip's defaults
    earlier = ["--limit", "2", "--num-beams", "3", "--max-new-tokens", "64"]
    assert _evaluate(medblip_cli, saved_run, small_synth_dir, out, *earlier) == 0
    before = (out / "predictions.jsonl").read_text()
    assert all(json.loads(line)["generation"] == DEFAULTS for line in before.splitlines())
    capsys.readouterr()

    assert _evaluate(medblip_cli, saved_run, small_synth_dir, out, "--limit", "2") == 2
    err = capsys.readouterr().err
    assert "different generation settings (max_new_tokens: 64 -> 7 from the checkpoint, num_beams: 3 -> 1 from " \
           "the checkpoint); resuming would mix captions of two settings" in err
    assert "or ask for the earlier settings (max_new_tokens=64, num_beams=3) to go on" in err
    assert (out / "predictions.jsonl").read_text() == before  # nothing mixed in

    assert _evaluate(medblip_cli, saved_run, small_synth_dir, out, *earlier) == 0  # the earlier settings: resumed
    assert "0 captioned now, 2 resumed" in capsys.readouterr().err


# -- medblip serve -----------------------------------------------------------------------------------
def test_serve_follows_the_saved_settings_unless_an_option_says_otherwise(saved_run, served_blip_dir,
                                                                         synth_jpegs):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from medblip.serving.app import create_app
    from medblip.serving.limits import UploadLimits, decode_image
    from medblip.serving.served import load_models

    models = load_models([f"run={saved_run}", f"plain={served_blip_dir}"], {})
    models += load_models([f"asked={saved_run}"], {"num_beams": 2})
    try:
        run, plain, asked = models
        assert (run.settings, run.generation_source) == (SAVED, _sources())  # (a)
        assert any("saved generation settings (num_beams=1, max_new_tokens=7)" in n for n in run.notes)
        assert asked.settings == dataclasses.replace(SAVED, num_beams=2)  # (b)
        assert asked.generation_source == _sources(num_beams="option")
        assert plain.settings == GenerationSettings()  # (c)
        assert set(plain.generation_source.values()) == {"default"}
        image = decode_image(synth_jpegs[0], UploadLimits())
        assert run.submit(image).result(timeout=60) == run.adapter.generate([image], SAVED)[0]

        with TestClient(create_app(models, page=False)) as client:
            health = client.get("/health").json()
        assert health["models"] == ["run", "plain", "asked"]
        assert health["generation"]["run"] == {"generation": dataclasses.asdict(SAVED),
                                               "generation_source": _sources()}
        assert health["generation"]["asked"]["generation"]["num_beams"] == 2
        assert health["generation"]["plain"]["generation"] == DEFAULTS
    finally:
        for m in models:
            m.close()
