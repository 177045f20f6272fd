"""Registry, loading errors and the ``medblip model`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medblip.errors import MedblipError
from medblip.models import create_model, detect_family, get_family, init_tiny, list_families, register_family
from medblip.models.base import CaptionModel


def _one_line(exc: pytest.ExceptionInfo[MedblipError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_families_registered() -> None:
    assert {"blip"} <= set(list_families())
    assert get_family("BLIP").family == "blip"


def test_unknown_family() -> None:
    with pytest.raises(MedblipError) as e:
        create_model("Salesforce/blip-image-captioning-base", family="flamingo")
    msg = _one_line(e)
    assert "flamingo" in msg and "blip" in msg


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MedblipError) as e:
        create_model(tmp_path / "nope")
    assert "does not exist" in _one_line(e)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(MedblipError) as e:
        create_model(tmp_path / "ckpt")
    assert "no config.json" in _one_line(e)


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(MedblipError) as e:
        create_model(tmp_path / "ckpt")
    assert "llama" in _one_line(e)


def test_hub_id_not_cached_offline() -> None:
    with pytest.raises(MedblipError) as e:
        create_model("medblip-test/not-a-real-model", local_files_only=True)
    assert "not in the Hugging Face cache" in _one_line(e)
    with pytest.raises(MedblipError) as e:
        create_model("medblip-test/not-a-real-model", family="blip", local_files_only=True)
    assert "not in the Hugging Face cache" in _one_line(e)


def test_known_hub_ids_resolve_without_network() -> None:
    assert detect_family("Salesforce/blip-image-captioning-large") == "blip"


def test_unknown_option(tmp_path: Path) -> None:
    path = init_tiny("blip", tmp_path / "m", image_size=16)
    with pytest.raises(MedblipError) as e:
        create_model(path, promt="x")
    assert "promt" in _one_line(e)
    m = create_model(path, family="blip", dtype="float32")
    assert m.family == "blip"
    with pytest.raises(MedblipError, match="unknown dtype"):
        create_model(path, dtype="float8")


def test_register_family_decorator() -> None:
    from medblip.models import registry

    @register_family("dummy-test", aliases=("dummy_alias",))
    class Dummy(CaptionModel):  # pragma: no cover - only registered, never loaded
        pass

    try:
        assert get_family("dummy_alias") is Dummy and "dummy-test" in list_families()
    finally:
        registry._FAMILIES.pop("dummy-test")
        registry._ALIASES.pop("dummy-test")
        registry._ALIASES.pop("dummy_alias")


def test_cli_init_tiny_and_info(tmp_path: Path) -> None:
    from medblip.cli import (
        app,
        model_cmd,  # noqa: F401  (registers the commands until cli/__init__ does)
    )

    caps = tmp_path / "caps.txt"
    caps.write_text("CT of the chest showing pneumothorax\nMRI of the brain\n")
    runner = CliRunner()
    res = runner.invoke(app, ["model", "init-tiny", "--family", "blip", "--out", str(tmp_path / "m"),
                              "--image-size", "16", "--captions", str(caps), "--seed", "1",
                              "--vision-init-std", "0.02", "--position-init-std", "1.0"])
    assert res.exit_code == 0, res.output
    tiny = create_model(tmp_path / "m")
    assert "pneumothorax" in tiny.tokenizer.get_vocab()
    vision = tiny.base_model.vision_model
    assert 0.01 < float(vision.encoder.layers[0].mlp.fc1.weight.detach().std()) < 0.05
    assert float(vision.embeddings.position_embedding.detach().std()) > 0.5
    res = runner.invoke(app, ["model", "info", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["family"] == "blip" and info["model_class"] == "BlipForConditionalGeneration"
    assert info["parameters"]["total"] == info["parameters"]["vision_encoder"] + info["parameters"]["text_decoder"]
    res = runner.invoke(app, ["model", "info", str(tmp_path / "m")])
    assert "text_decoder" in res.output and "lora" in res.output


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c",
                           "import sys; from medblip.cli import main, model_cmd; sys.argv=['medblip','model','info',"
                           f"{str(tmp_path / 'missing')!r}]; main()"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
