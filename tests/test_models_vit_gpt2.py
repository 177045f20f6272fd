"""ViT-GPT2 specifics: pad = eos, explicit eos target, loss vs manual cross-entropy, cross-attentions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medblip.models import CaptionModel, create_model, init_tiny
from medblip.models.vit_gpt2 import ViTGPT2Captioner, VitGpt2Processor
from test_models_common import CAPTIONS, tiny_images

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny("vit-gpt2", tmp_path_factory.mktemp("vg") / "m", captions=CAPTIONS, image_size=32)


@pytest.fixture
def vg(folder: Path) -> CaptionModel:
    return create_model(folder)


def test_loads_real_classes(vg: CaptionModel) -> None:
    from transformers import GPT2LMHeadModel, GPT2Tokenizer, VisionEncoderDecoderModel, ViTModel

    assert isinstance(vg, ViTGPT2Captioner) and vg.family == "vit-gpt2"
    assert isinstance(vg.model, VisionEncoderDecoderModel)
    assert isinstance(vg.model.encoder, ViTModel) and isinstance(vg.model.decoder, GPT2LMHeadModel)
    assert isinstance(vg.processor, VitGpt2Processor) and isinstance(vg.tokenizer, GPT2Tokenizer)
    cfg = vg.model.config
    eos = vg.tokenizer.eos_token_id
    assert cfg.decoder_start_token_id == cfg.pad_token_id == cfg.eos_token_id == eos
    assert vg.tokenizer.pad_token_id == eos


def test_collate_layout_eos_learned(vg: CaptionModel) -> None:
    b = vg.collate(tiny_images(3), ["CT of the chest", "MRI brain showing a left lesion nodule", "no"])
    eos = vg.tokenizer.eos_token_id
    assert (b["input_ids"][:, 0] == vg.model.config.decoder_start_token_id).all()
    for ids, mask, lab in zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True):
        n = int(mask.sum())
        assert lab[n - 1] == eos, "every caption ends with an eos target so the model learns to stop"
        assert (lab[n:] == -100).all() and (lab[: n - 1] != eos).all()
        assert (ids[1:n] == lab[: n - 1]).all(), "decoder inputs are the labels shifted right"
    # the captions round-trip through the tokenizer
    assert vg.decode(b["labels"].clamp(min=0))[0] == "CT of the chest"


def test_loss_matches_manual_cross_entropy(vg: CaptionModel) -> None:
    b = vg.collate(tiny_images(3), ["CT of the chest", "MRI brain showing a left lesion nodule", "no"])
    with torch.no_grad():
        loss = vg.loss(b)
        logits = vg.model(pixel_values=b["pixel_values"], decoder_input_ids=b["input_ids"]).logits
        # the model's own label shifting gives the same decoder inputs
        own = vg.model(pixel_values=b["pixel_values"], labels=b["labels"]).loss
    keep = b["attention_mask"].bool()
    manual = torch.nn.functional.cross_entropy(logits[keep], b["labels"][keep])
    assert torch.allclose(loss, manual, atol=1e-5)
    assert torch.allclose(loss, own, atol=1e-5)


def test_cross_attentions(vg: CaptionModel) -> None:
    ids, skip = vg.generate_ids(tiny_images(2), num_beams=1, max_new_tokens=4, min_new_tokens=3)
    assert skip == 0
    ca = vg.cross_attentions(tiny_images(2), ids)
    grid = 32 // vg.model.config.encoder.patch_size
    assert ca.grid == (grid, grid)
    assert ca.attentions[0].shape == (2, vg.model.config.decoder.n_head, ids.shape[1], grid * grid)
    total = ca.attentions[0].sum(-1) + ca.extra["cls_attention"][0]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)
    assert vg.model.config._attn_implementation == "sdpa", "eager only for the call"


def test_processor_wrapper_roundtrip(vg: CaptionModel, tmp_path: Path) -> None:
    vg.processor.save_pretrained(tmp_path)
    p2 = VitGpt2Processor.from_pretrained(tmp_path)
    out = p2(images=tiny_images(1), text=["CT of the chest"])
    assert out["pixel_values"].shape[-1] == 32
    assert p2.decode(out["input_ids"][0]) == "CT of the chest"


def test_init_tiny_deterministic(tmp_path: Path) -> None:
    a = init_tiny("vit-gpt2", tmp_path / "a", image_size=16, seed=1)
    b = init_tiny("vit-gpt2", tmp_path / "b", image_size=16, seed=1)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_lora_not_supported_is_clear(vg: CaptionModel) -> None:
    from medblip.errors import MedblipError

    with pytest.raises(MedblipError, match="supported: none, full, decoder_only, encoder_only"):
        vg.apply_strategy("lora")
