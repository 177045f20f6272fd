"""BLIP specifics: token layout, loss vs manual cross-entropy, prompt, cross-attentions, tiny builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medblip.models import CaptionModel, create_model, init_tiny
from medblip.models.blip import ZERO_SHOT_PROMPT, BlipCaptioner
from test_models_common import CAPTIONS, tiny_images

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny("blip", tmp_path_factory.mktemp("blip") / "m", captions=CAPTIONS, image_size=32)


@pytest.fixture
def blip(folder: Path) -> CaptionModel:
    return create_model(folder)


def test_loads_real_classes(blip: CaptionModel) -> None:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    assert isinstance(blip, BlipCaptioner) and blip.family == "blip"
    assert isinstance(blip.model, BlipForConditionalGeneration)
    assert isinstance(blip.processor, BlipProcessor)
    tc = blip.model.config.text_config
    tok = blip.tokenizer
    assert (tc.bos_token_id, tc.pad_token_id, tc.sep_token_id) == (
        tok.convert_tokens_to_ids("[DEC]"), tok.pad_token_id, tok.sep_token_id)


def test_collate_token_layout(blip: CaptionModel) -> None:
    b = blip.collate(tiny_images(3), ["CT of the chest", "MRI brain showing a left lesion nodule", "no"])
    tok = blip.tokenizer
    dec = tok.convert_tokens_to_ids("[DEC]")
    assert (b["input_ids"][:, 0] == dec).all(), "[DEC] replaces [CLS] as in BLIP generate"
    for row, mask, lab in zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True):
        n = int(mask.sum())
        assert row[n - 1] == tok.sep_token_id, "caption ends with [SEP] (generate's eos)"
        assert (lab[:n] == row[:n]).all() and (lab[n:] == -100).all()


def test_loss_matches_manual_shifted_cross_entropy(blip: CaptionModel) -> None:
    b = blip.collate(tiny_images(3), ["CT of the chest", "MRI brain showing a left lesion nodule", "no"])
    with torch.no_grad():
        loss = blip.loss(b)
        out = blip.model(pixel_values=b["pixel_values"], input_ids=b["input_ids"],
                         attention_mask=b["attention_mask"])
    logits = out.logits[:, :-1]
    targets = b["input_ids"][:, 1:]
    keep = b["attention_mask"][:, 1:].bool()  # padding ignored, [SEP] included
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, manual, atol=1e-5)
    # padding never changes a caption's loss: the short caption alone gives the same per-token terms
    alone = blip.collate(tiny_images(3)[2:], ["no"])
    with torch.no_grad():
        o1 = blip.model(pixel_values=alone["pixel_values"], input_ids=alone["input_ids"],
                        attention_mask=alone["attention_mask"]).logits
    n = int(alone["attention_mask"].sum())
    assert torch.allclose(o1[0, : n - 1], out.logits[2, : n - 1], atol=1e-4)


def test_prompt_option_masks_and_strips(folder: Path) -> None:
    m = create_model(folder, prompt=True)
    assert m.options["prompt"] == ZERO_SHOT_PROMPT
    b = m.collate(tiny_images(1), ["ct"])
    n_prompt = len(m.tokenizer(ZERO_SHOT_PROMPT)["input_ids"]) - 1
    assert (b["labels"][0, :n_prompt] == -100).all() and (b["labels"][0, n_prompt:] != -100).all()
    ids, skip = m.generate_ids(tiny_images(2), num_beams=1, max_new_tokens=5)
    assert skip == n_prompt
    prompt_ids = m.tokenizer(ZERO_SHOT_PROMPT, return_tensors="pt")["input_ids"][0, 1:-1]
    assert (ids[:, 1:skip] == prompt_ids).all()
    caps = m.generate(tiny_images(2), num_beams=1, max_new_tokens=5)
    assert caps == m.decode(ids, skip=skip)
    # per-call prompt through GenerationSettings, and off by default
    plain = create_model(folder)
    assert plain.generate_ids(tiny_images(1), num_beams=1, max_new_tokens=3)[1] == 0
    assert plain.generate_ids(tiny_images(1), num_beams=1, max_new_tokens=3, prompt="ct")[1] > 0


def test_cross_attentions_shapes(blip: CaptionModel) -> None:
    ids, _ = blip.generate_ids(tiny_images(2), num_beams=1, max_new_tokens=5)
    ca = blip.cross_attentions(tiny_images(2), ids)
    cfg = blip.model.config
    grid = 32 // cfg.vision_config.patch_size
    assert ca.grid == (grid, grid)
    assert len(ca.attentions) == cfg.text_config.num_hidden_layers
    a = ca.attentions[0]
    assert a.shape == (2, cfg.text_config.num_attention_heads, ids.shape[1], grid * grid)
    total = a.sum(-1) + ca.extra["cls_attention"][0]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)
    assert ca.tokens[0][0] == "[DEC]" and len(ca.tokens[0]) == ids.shape[1]


def test_lora_targets_and_options(folder: Path) -> None:
    m = create_model(folder)
    r = m.apply_strategy("lora", target_modules=["query", "value", "qkv"],
                         groups=["text_decoder", "vision_encoder"], r=2)
    assert set(r.trainable_groups) == {"text_decoder", "vision_encoder"} and r.no_grad_groups == []
    from medblip.errors import MedblipError

    with pytest.raises(MedblipError, match="already applied"):
        m.apply_strategy("full")
    with pytest.raises(MedblipError, match="unknown LoRA option 'rank'"):
        create_model(folder).apply_strategy("lora", lora={"rank": 4})
    with pytest.raises(MedblipError, match="no Linear module"):
        create_model(folder).apply_strategy("lora", target_modules=["nothing"])


def test_init_tiny_deterministic_and_sizes(tmp_path: Path) -> None:
    a = init_tiny("blip", tmp_path / "a", seed=3, image_size=32, hidden_size=48, num_layers=2)
    b = init_tiny("blip", tmp_path / "b", seed=3, image_size=32, hidden_size=48, num_layers=2)
    c = init_tiny("blip", tmp_path / "c", seed=4, image_size=32, hidden_size=48, num_layers=2)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    m = create_model(a)
    assert m.model.config.text_config.num_hidden_layers == 2 and m.model.config.vision_config.hidden_size == 48
    assert m.pixel_values(tiny_images(1)).shape[-1] == 32
    vocab = m.tokenizer.get_vocab()
    for word in ("ct", "mri", "radiograph", "left", "right", "lesion", "effusion", "fracture", "liver"):
        assert word in vocab, word
