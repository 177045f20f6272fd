"""``model.load_in_8bit`` / ``load_in_4bit``: the BitsAndBytesConfig that ``from_pretrained`` gets, quantized
layers that caption and train (QLoRA) on bitsandbytes' CPU backend, and one-line errors without bitsandbytes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from _train_fixtures import experiment, train_one_thread
from medblip.errors import MedblipError
from medblip.models import create_model, init_tiny
from medblip.models.base import GenerationSettings
from medblip.training.config import validate_config

BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(not BNB, reason="bitsandbytes is not installed (make install installs it)")
IMAGES = [Image.new("RGB", (32, 32), (40 * i, 90, 160)) for i in range(2)]
GREEDY = GenerationSettings(num_beams=1, max_new_tokens=5)


@pytest.fixture(scope="module")
def blip64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 64 wide: bitsandbytes quantizes 4-bit weights in blocks of 64 values
    return init_tiny("blip", tmp_path_factory.mktemp("quant") / "blip", image_size=32, hidden_size=64, seed=0)


def test_8_and_4_bit_are_exclusive(blip64: Path) -> None:
    with pytest.raises(MedblipError, match="load_in_8bit and load_in_4bit are exclusive; choose one"):
        create_model(blip64, load_in_8bit=True, load_in_4bit=True)


@pytest.mark.skipif(BNB, reason="bitsandbytes is installed")
@pytest.mark.parametrize("option", ["load_in_8bit", "load_in_4bit"])
def test_without_bitsandbytes_the_run_stops_in_one_line(option: str, blip64: Path, small_synth_dir: Path,
                                                        tmp_path: Path, medblip_cli: Any,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    raw = experiment(blip64, small_synth_dir, tmp_path / "run", max_steps=1).model_dump(mode="json")
    raw["model"][option] = True
    raw["strategy"]["name"] = "lora"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert medblip_cli("train", str(tmp_path / "c.yaml"), "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"medblip: error: {option} needs bitsandbytes, which is not installed: "
                       "pip install 'medblip[quantization]'")
    assert not any("Traceback" in line for line in err)


@needs_bnb
def test_8_bit_weights_caption(blip64: Path) -> None:
    import bitsandbytes as bnb

    model = create_model(blip64, load_in_8bit=True)
    quant = model.base_model.config.quantization_config
    assert quant.load_in_8bit and not quant.load_in_4bit
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.base_model.modules())
    captions = model.generate(IMAGES, GREEDY)
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)


@pytest.mark.slow
@needs_bnb
def test_4_bit_weights_are_qlora_nf4_and_train_with_lora(blip64: Path, small_synth_dir: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    model = create_model(blip64, load_in_4bit=True)
    quant = model.base_model.config.quantization_config
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.base_model.modules())
    assert all(isinstance(c, str) for c in model.generate(IMAGES, GREEDY))
    # QLoRA: one optimizer step of LoRA adapters on the 4-bit weights, through the trainer
    raw = experiment(blip64, small_synth_dir, tmp_path / "run", max_steps=1, val_subset=2,
                     val_generate=False).model_dump()
    raw["model"]["load_in_4bit"] = True
    raw["strategy"]["name"] = "lora"
    result = train_one_thread(validate_config(raw))
    assert result.status == "completed"
    # its checkpoint: the dequantized weights with the LoRA deltas merged, for plain transformers
    saved = create_model(result.best_checkpoint)
    assert getattr(saved.base_model.config, "quantization_config", None) is None
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in saved.base_model.modules())
    assert all(isinstance(c, str) for c in saved.generate(IMAGES, GREEDY))
