"""``medblip export``: a folder plain transformers loads, with the run's generation settings and a model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _train_fixtures import experiment, train_one_thread
from medblip.training.config import validate_config
from test_caption_cli import spicy_blip  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
RUN_GENERATION = {"num_beams": 3, "max_new_tokens": 10}


@pytest.fixture(scope="module")
def run_dir(spicy_blip, small_synth_dir, tmp_path_factory):  # noqa: F811
    """One optimizer step from the spiced tiny BLIP (its captions still depend on the image), generating
    with 3 beams, then `medblip evaluate` of its best checkpoint into the run folder."""
    from medblip.evaluation.predict import evaluate

    out = tmp_path_factory.mktemp("export-run") / "run"
    raw = experiment(spicy_blip, small_synth_dir, out, max_steps=1, lr=1e-6, val_generate=False).model_dump()
    cfg = validate_config({**raw, "generation": {**raw["generation"], **RUN_GENERATION}}, "test")
    assert train_one_thread(cfg).status == "completed"
    evaluate(out, small_synth_dir, out / "eval-test", generation=RUN_GENERATION, bootstrap=20,
             score_options={"meteor": False, "java": False}, progress=False)
    return out


def _images(small_synth_dir: Path) -> list:
    from medblip.data import load_image

    return [load_image(p) for p in sorted((small_synth_dir / "test").glob("*.jpg"))]


def test_export_loads_in_plain_transformers_with_the_run_settings(run_dir, small_synth_dir, tmp_path,
                                                                   medblip_cli, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig, pipeline

    import medblip

    out = tmp_path / "export"
    assert medblip_cli("export", str(run_dir), "--out", str(out)) == 0
    assert "exporting its checkpoints/best" in capsys.readouterr().err
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert files == ["README.md", "config.json", "generation_config.json", "medblip_export.json",
                     "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    gc = json.loads((out / "generation_config.json").read_text())
    assert (gc["num_beams"], gc["max_new_tokens"]) == (3, 10)

    images = _images(small_synth_dir)
    expected = medblip.load(run_dir).caption(images, **RUN_GENERATION)
    assert len(set(expected)) > 2
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.generation_config.num_beams == 3
    ids = model.generate(**processor(images=images, return_tensors="pt"), generation_config=model.generation_config)
    assert [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)] == expected
    pipe = pipeline("image-text-to-text", model=str(out), generation_config=GenerationConfig.from_pretrained(out))
    got = pipe(images=images, text=[""] * len(images))
    assert [r["generated_text"].strip() for r in got] == expected


def test_export_and_load_use_the_saved_settings(run_dir, small_synth_dir, tmp_path):
    """`medblip.load` of a checkpoint or an export decodes with its saved settings (beam 3, 10 new tokens)
    unless told otherwise. Plain `BlipForConditionalGeneration.generate()` without arguments keeps the
    length limit (BLIP's text config carries it) but decodes greedily: BLIP's `generate` runs its inner
    text decoder, which never reads generation_config.json (transformers 5.24), and beam settings cannot be
    kept in a config file; `generation_config=model.generation_config` gives the run's captions."""
    from transformers import AutoProcessor, BlipForConditionalGeneration, pipeline

    import medblip
    from medblip.models.export import export_model

    out = tmp_path / "export"
    export_model(run_dir / "checkpoints" / "best", out)
    images = _images(small_synth_dir)
    beam = medblip.load(run_dir).caption(images, **RUN_GENERATION)
    greedy = medblip.load(run_dir).caption(images, num_beams=1, max_new_tokens=10)
    assert beam != greedy, "the test needs settings that change the captions"
    assert greedy != medblip.load(run_dir).caption(images, num_beams=1, max_new_tokens=20), "captions reach the limit"
    for source in (run_dir, run_dir / "checkpoints" / "best", out):
        loaded = medblip.load(source)
        assert (loaded.settings.num_beams, loaded.settings.max_new_tokens) == (3, 10)
        assert loaded.caption(images) == beam
    assert medblip.load(out, generation={"num_beams": 1}).caption(images) == greedy
    assert medblip.load(out).caption(images, num_beams=1) == greedy

    model = BlipForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(images=images, return_tensors="pt")
    plain = [t.strip() for t in processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)]
    assert plain == greedy
    ids = model.generate(**inputs, generation_config=model.generation_config)
    assert [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)] == beam
    pipe = pipeline("image-text-to-text", model=str(out))  # without the generation config: the same as generate()
    assert [r["generated_text"].strip() for r in pipe(images=images, text=[""] * len(images))] == greedy


def test_model_card(run_dir, tmp_path):
    from medblip.models.export import export_model

    result = export_model(run_dir, tmp_path / "e")
    card = (tmp_path / "e" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-text-to-text\n")
    assert "**Not a medical device.**" in card and "## Intended use and limitations" in card
    assert "- Architecture: `BlipForConditionalGeneration`" in card
    init = json.loads((run_dir / "config.resolved.yaml").parent.joinpath("run.json").read_text())["config"]
    assert f"- Base model: `{init['model']['name_or_path']}`" in card
    assert "- Fine-tuning strategy: `full`" in card and f"- Data: `{init['data']['path']}`" in card
    # the evaluate run of this checkpoint inside the run folder, with its 95% CIs
    assert result.evaluations == [run_dir / "eval-test" / "metrics.json"]
    assert "### `test` split of" in card and "| metric | value | 95% CI | n |" in card
    cider = next(line for line in card.splitlines() if line.startswith("| CIDEr |"))
    assert cider.count("[") == 1 and cider.endswith("| 6 |")
    assert "`num_beams=3`" in card and "generation_config=model.generation_config" in card


def test_export_keeps_files_it_did_not_write_and_skips_resume_files(run_dir, tmp_path):
    from medblip.errors import MedblipError
    from medblip.models.export import export_model

    out = tmp_path / "e"
    export_model(run_dir / "checkpoints" / "last", out)
    assert not (out / "trainer_state.pt").exists() and (out / "model.safetensors").is_file()
    (out / "notes.txt").write_text("mine")
    export_model(run_dir, out)  # an earlier export is replaced; a file the user added stays
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "medblip_export.json").read_text())["source"].endswith("checkpoints/best")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    with pytest.raises(MedblipError, match="not an earlier output of `medblip export`"):
        export_model(run_dir, other)
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]
    with pytest.raises(MedblipError, match="not a training run or checkpoint folder"):
        export_model(tmp_path, tmp_path / "x")


def test_push_to_hub_offline_fails_in_one_line(run_dir, tmp_path, medblip_cli, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "e"
    assert medblip_cli("export", str(run_dir), "--out", str(out), "--push-to-hub", "someone/medblip-test") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medblip: error: cannot push ") and "someone/medblip-test" in err[-1]
    assert "offline mode is enabled" in err[-1] and err[-1].endswith("the export itself is complete")
    assert (out / "README.md").is_file()


@pytest.mark.slow
def test_readme_training_logs_and_export_lines_run_as_written(run_dir, small_synth_dir, tmp_path, medblip_cli,
                                                              capsys, monkeypatch):
    """The README's TensorBoard and export commands, in a folder holding runs/roco-blip-full (a copy of
    the test run; its evaluation is left behind so that the README's evaluate line makes it) and with the
    synthetic benchmark in place of /data/rocov2. Offline, --push-to-hub fails in one line (exit 2)."""
    import shutil
    import subprocess
    import sys
    import time

    import huggingface_hub.constants

    from _readme import code_blocks, commands

    shutil.copytree(run_dir, tmp_path / "runs" / "roco-blip-full", ignore=shutil.ignore_patterns("eval-test"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    blocks = code_blocks("Reproducing the study", "bash")
    tensorboard, export = (commands(b) for b in blocks if "tensorboard" in b or "medblip export" in b)
    bindir = Path(sys.executable).parent
    server, inspect = tensorboard
    proc = subprocess.run([str(bindir / inspect[0]), *inspect[1:]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "validation/val_loss" in proc.stdout + proc.stderr
    board = subprocess.Popen([str(bindir / server[0]), *server[1:]], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline, seen = time.time() + 120, ""
        while "http://localhost:" not in seen and time.time() < deadline and board.poll() is None:
            seen += board.stdout.readline()
        assert "http://localhost:" in seen, seen
    finally:
        board.terminate()
        board.wait(timeout=30)

    evaluate, exported = export
    evaluate = [str(small_synth_dir) if a == "/data/rocov2" else a for a in evaluate]
    assert medblip_cli(*evaluate[1:]) == 0
    assert medblip_cli(*exported[1:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medblip: error: cannot push exports/roco-blip-full to the Hugging Face Hub")
    card = (tmp_path / "exports" / "roco-blip-full" / "README.md").read_text()
    assert "### `test` split of" in card and "| CIDEr |" in card


def test_load_without_saved_settings_uses_medblip_defaults(tiny_blip_dir, twin):
    """A model whose generation_config.json names no decoding setting (init_tiny's, a twin of a hub
    checkpoint: their published files hold only token ids) gets medblip's defaults."""
    import medblip
    from medblip.models.base import GenerationSettings, saved_generation_settings

    for path in (tiny_blip_dir, twin("Salesforce/blip-image-captioning-base")):
        loaded = medblip.load(path)
        assert saved_generation_settings(loaded.adapter.base_model) == {}
        assert loaded.settings == GenerationSettings()
