"""BLIP-2 / InstructBLIP specifics: both LM kinds (OPT decoder-only, T5 encoder-decoder), labels vs
manual cross-entropy, prompt/instruction handling, Q-Former cross-attentions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from medblip.errors import MedblipError
from medblip.models import CaptionModel, create_model, init_tiny
from medblip.models.blip2 import Blip2Captioner
from medblip.models.instructblip import DEFAULT_INSTRUCTION, InstructBlipCaptioner
from test_models_common import CAPTIONS, tiny_images

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = [("blip2", "opt"), ("blip2", "t5"), ("instructblip", "t5"), ("instructblip", "opt")]
# Twins of the real checkpoints: their published ids (BLIP-2 OPT ends captions at 50118, not at its
# tokenizer's </s>; InstructBLIP Vicuna's config eos 1 is LLaMA's <s>), not ids medblip chose.
TWINS = [("twin", "Salesforce/blip2-opt-2.7b"), ("twin", "Salesforce/blip2-flan-t5-xl"),
         ("twin", "Salesforce/instructblip-vicuna-7b"), ("twin", "Salesforce/instructblip-flan-t5-xl")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    return {}


@pytest.fixture(params=CASES + TWINS, ids=[f"{f}-{lm.split('/')[-1]}" for f, lm in CASES + TWINS])
def model(request: pytest.FixtureRequest, folders: dict[tuple[str, str], Path],
          tmp_path_factory: pytest.TempPathFactory, twin: Any) -> CaptionModel:
    family, lm = request.param
    if family == "twin":
        return create_model(twin(lm))
    if request.param not in folders:
        folders[request.param] = init_tiny(family, tmp_path_factory.mktemp(f"{family}-{lm}") / "m",
                                           captions=CAPTIONS, image_size=32, language_model=lm)
    return create_model(folders[request.param])


def _lm_loss_manual(m: CaptionModel, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        loss = m.loss(b)
        out = m.model(**{k: v for k, v in b.items() if k != "labels"}) if m.decoder_only else \
            m.model(**b)
    logits = out.logits
    labels = b["labels"]
    if m.decoder_only:  # causal LM: position t predicts t+1
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    return loss, torch.nn.functional.cross_entropy(logits[keep], labels[keep])


def test_real_classes(model: CaptionModel) -> None:
    import transformers

    name = type(model).model_class_name
    assert isinstance(model.model, getattr(transformers, name))
    assert isinstance(model.processor, getattr(transformers, type(model).processor_class_name))
    assert isinstance(model, Blip2Captioner | InstructBlipCaptioner)


def test_labels_layout_and_manual_loss(model: CaptionModel) -> None:
    b = model.collate(tiny_images(3), ["CT of the chest", "MRI brain showing a left lesion nodule", "no"])
    eos = model.model.generation_config.eos_token_id  # where generate stops (a twin: the published id)
    q = model.model.config.num_query_tokens
    image_token = model.model.config.image_token_id
    assert (b["input_ids"][:, :q] == image_token).all()
    mask = b.get("decoder_attention_mask", b["attention_mask"])
    for lab, m in zip(b["labels"], mask, strict=True):
        n = int(m.sum())
        assert lab[n - 1] == eos, "caption ends with the LM's eos"
        assert (lab[n:] == -100).all()
        if model.decoder_only:
            assert (lab[: q + 1] == -100).all(), "image placeholders and bos are not targets"
    loss, manual = _lm_loss_manual(model, b)
    assert torch.allclose(loss, manual, atol=1e-5)
    # the decoded targets are the captions
    targets = [model.tokenizer.decode([t for t in row.tolist() if t != -100], skip_special_tokens=True).strip()
               for row in b["labels"]]
    assert targets[0] == "CT of the chest"


def test_prompt_tokens_masked(model: CaptionModel) -> None:
    m = create_model(model.name_or_path, prompt="axial image")
    prompt = m._prompt()
    b = m.collate(tiny_images(1), ["CT of the chest"])
    kept = [t for t in b["labels"][0].tolist() if t != -100]
    assert m.tokenizer.decode(kept, skip_special_tokens=True).strip() == "CT of the chest"
    if isinstance(m, InstructBlipCaptioner):
        assert prompt == "axial image"  # prompt option overrides the default instruction
        assert "qformer_input_ids" in b
    ids, skip = m.generate_ids(tiny_images(2), num_beams=1, max_new_tokens=4, min_new_tokens=2)
    assert len(m.decode(ids, skip)) == 2
    if m.decoder_only:
        assert skip == q_len(m, prompt)


def q_len(m: CaptionModel, prompt: str) -> int:
    return m.model.config.num_query_tokens + len(m.tokenizer(prompt)["input_ids"])


def test_instruction_default_and_option(tmp_path: Path) -> None:
    path = init_tiny("instructblip", tmp_path / "ib", image_size=16)
    assert create_model(path).instruction == DEFAULT_INSTRUCTION
    m = create_model(path, instruction="Describe the finding.")
    b = m.collate(tiny_images(1), ["CT"])
    assert m.processor.qformer_tokenizer.decode(b["qformer_input_ids"][0], skip_special_tokens=True) \
        == "describe the finding."
    with pytest.raises(MedblipError, match="instruction"):
        create_model(init_tiny("blip2", tmp_path / "b2", image_size=16), instruction="x")


def test_cross_attentions(model: CaptionModel) -> None:
    ids, skip = model.generate_ids(tiny_images(2), num_beams=1, max_new_tokens=4, min_new_tokens=2)
    ca = model.cross_attentions(tiny_images(2), ids)
    cfg = model.model.config
    grid = cfg.vision_config.image_size // cfg.vision_config.patch_size  # the processor resizes to image_size
    q = cfg.num_query_tokens
    assert ca.grid == (grid, grid)
    assert len(ca.attentions) == cfg.qformer_config.num_hidden_layers
    assert ca.attentions[0].shape == (2, cfg.qformer_config.num_attention_heads, q, grid * grid)
    t = ca.token_ids.shape[1]
    assert len(ca.tokens[0]) == t
    lm = ca.extra["lm_query_attentions"]
    assert lm and lm[0].shape[0] == 2 and lm[0].shape[2:] == (t, q)
    tok_maps = ca.extra["token_attentions"][0]
    assert tok_maps.shape == (2, 1, t, grid * grid)
    assert torch.allclose(tok_maps.sum(-1), torch.ones(2, 1, t), atol=1e-4)
    if model.decoder_only:
        assert ids.shape[1] - skip == t - ca.extra["caption_start"]


def test_lora_targets_language_model(model: CaptionModel) -> None:
    report = model.apply_strategy("lora", r=2)
    assert report.trainable_groups == ["language_model"]
    assert report.no_grad_groups == ["vision_encoder", "qformer"]
    lora_names = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n and "language_model" in n for n in lora_names)


def test_qformer_only_passes_gradients_through_frozen_lm(model: CaptionModel) -> None:
    report = model.apply_strategy("qformer_only")
    assert report.frozen_groups == ["vision_encoder", "language_model"]
    assert report.no_grad_groups == ["vision_encoder"], "the frozen LM must still pass gradients back"
    model.train_mode()
    model.loss(model.collate(tiny_images(2), CAPTIONS[:2])).backward()
    groups = model.parameter_groups()
    params = dict(model.model.named_parameters())
    assert all(params[n].grad is None for n in groups["language_model"])
    assert any(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in groups["qformer"])
    assert not model.model.language_model.training
