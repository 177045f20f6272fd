"""Which checkpoint ``evaluate``/``compare`` load for a training run folder, and with which prompt."""

from __future__ import annotations

from medblip.evaluation.predict import display_name
from medblip.models.loading import resolve_checkpoint


def _ckpt(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "blip"}')
    return folder


def test_run_folder_resolves_to_best_with_the_runs_prompt(tmp_path):
    run = tmp_path / "roco-blip-full"
    _ckpt(run / "checkpoints" / "last")
    best = _ckpt(run / "checkpoints" / "best")
    (run / "config.resolved.yaml").write_text("model:\n  name_or_path: x\n  prompt: a radiology image of\n"
                                              "  instruction: null\n")
    path, options, notes = resolve_checkpoint(run)
    assert path == str(best) and options == {"prompt": "a radiology image of"}
    assert any("checkpoints/best" in n for n in notes)
    # the checkpoint folder itself also picks up the run's prompt
    assert resolve_checkpoint(best)[:2] == (str(best), {"prompt": "a radiology image of"})
    assert display_name(best) == "roco-blip-full/best"


def test_run_without_best_uses_last_and_plain_folders_pass_through(tmp_path):
    run = tmp_path / "run"
    last = _ckpt(run / "checkpoints" / "last")
    assert resolve_checkpoint(run)[0] == str(last)
    plain = _ckpt(tmp_path / "tiny")
    assert resolve_checkpoint(plain) == (str(plain), {}, [])
    assert resolve_checkpoint("Salesforce/blip-image-captioning-base") == (
        "Salesforce/blip-image-captioning-base", {}, [])
