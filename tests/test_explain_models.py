"""Explanations on tiny models of every family: shapes, normalisation, Grad-CAM, saliency, saved files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from medblip.errors import MedblipError
from medblip.explain import ExplainSettings, explain_image, save_explanation
from medblip.explain.attention import trace
from medblip.explain.maps import word_key
from medblip.models import CaptionModel, create_model, init_tiny, list_families

FAMILIES = [f for f in ("blip", "vit-gpt2", "blip2", "instructblip") if f in list_families()]
CAPTION = "CT of the chest showing a left lung nodule."
IMAGE_SIZE = 32
PATCH = 8  # tiny models: a 4 x 4 grid


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaptionModel]:
    out: dict[str, CaptionModel] = {}
    for family in FAMILIES:
        folder = init_tiny(family, tmp_path_factory.mktemp(f"x-{family}") / "m", image_size=IMAGE_SIZE,
                           patch_size=PATCH, num_layers=2, num_heads=2, captions=[CAPTION])
        out[family] = create_model(folder)
    return out


@pytest.fixture(params=FAMILIES)
def adapter(request: pytest.FixtureRequest, tiny_models: dict[str, CaptionModel]) -> CaptionModel:
    return tiny_models[request.param]


def _image(size: tuple[int, int] = (120, 80)) -> Image.Image:
    im = Image.new("RGB", size, (30, 30, 30))
    ImageDraw.Draw(im).ellipse((70, 10, 100, 40), fill=(230, 230, 230))
    return im


@pytest.mark.parametrize("method", ["attention", "gradcam"])
def test_token_and_word_maps_shapes_and_normalisation(adapter: CaptionModel, method: str) -> None:
    image = _image()
    expl = explain_image(adapter, image, CAPTION, ExplainSettings(method=method))
    grid = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    assert expl.grid == grid
    t = len(expl.tokens)
    assert t > 0 and expl.token_maps.shape == (t, *grid) and len(expl.logprobs) == t
    assert np.isfinite(expl.token_maps).all() and (expl.token_maps >= 0).all()
    # special tokens are never explained; the caption's words are
    specials = set(adapter.tokenizer.all_special_tokens)
    assert not specials & set(expl.tokens)
    assert "nodule" in [word_key(w) for w in expl.words]
    assert expl.word_maps.shape == (len(expl.words), *grid)
    heat = expl.heatmaps("word")
    assert heat.shape == (len(expl.words), 80, 120)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert all(h.max() in (0.0, 1.0) and h.min() == 0.0 for h in heat)
    if method == "attention" and adapter.family in ("blip", "vit-gpt2"):
        # a decoder cross-attention row over patches sums to 1 minus the CLS weight
        sums = expl.token_maps.sum(axis=(1, 2))
        assert (sums > 0).all() and (sums <= 1.0 + 1e-5).all()


def test_layer_head_selection_and_aggregates(adapter: CaptionModel) -> None:
    image = _image()
    last = explain_image(adapter, image, CAPTION, ExplainSettings(aggregate="last")).token_maps
    one = explain_image(adapter, image, CAPTION, ExplainSettings(layers=[-1], heads=[0, 1])).token_maps
    np.testing.assert_allclose(last, one, rtol=1e-5, atol=1e-7)
    with pytest.raises(MedblipError, match="layer"):
        explain_image(adapter, image, CAPTION, ExplainSettings(layers=[7]))


def test_generated_caption_is_explained(adapter: CaptionModel) -> None:
    expl = explain_image(adapter, _image(), None, ExplainSettings(max_new_tokens=6, min_new_tokens=3))
    assert expl.caption_source == "generated" and expl.caption
    assert expl.token_maps.shape[0] == len(expl.tokens) > 0


def test_save_explanation_files(adapter: CaptionModel, tmp_path: Path) -> None:
    image = _image()
    expl = explain_image(adapter, image, CAPTION)
    doc = save_explanation(expl, image, tmp_path, words=["nodule", "left"])
    assert doc["panels"] == ["nodule", "left"]
    maps = np.load(tmp_path / "token_maps.npy")
    assert maps.shape == (len(expl.tokens), *expl.grid) and maps.dtype == np.float32
    assert np.load(tmp_path / "word_maps.npy").shape == (len(expl.words), *expl.grid)
    js = json.loads((tmp_path / "explanation.json").read_text())
    assert js["tokens"] == expl.tokens and js["words"] == expl.words and js["settings"]["method"] == "attention"
    for name in ["grid.png", *doc["files"]["overlays"]]:
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG"
    with Image.open(tmp_path / doc["files"]["overlays"][0]) as im:
        assert im.size == (120, 80)
    with pytest.raises(MedblipError, match="not in the caption"):
        save_explanation(expl, image, tmp_path / "x", words=["aneurysm"])


def test_blip_attention_matches_adapter_cross_attentions(tiny_models: dict[str, CaptionModel]) -> None:
    """The hook-based trace and the adapter's own output_attentions pass agree (rows shifted by one)."""
    blip = tiny_models["blip"]
    image = _image()
    tr, maps = trace(blip, image, CAPTION, method="attention")
    ids = blip.tokenize([CAPTION])["input_ids"]
    ref = blip.cross_attentions([image], ids)
    # row i of the decoder predicts token i+1: tokens 1..T-1 (before [SEP]) are explained
    expect = np.mean([a[0].mean(0).numpy() for a in ref.attentions], axis=0)[: len(tr.tokens)]
    np.testing.assert_allclose(maps.reshape(len(tr.tokens), -1), expect, rtol=1e-4, atol=1e-6)
    assert ref.tokens[0][1 : len(tr.tokens) + 1] == tr.tokens


def test_gradcam_is_attention_times_positive_gradient(tiny_models: dict[str, CaptionModel]) -> None:
    """Grad-CAM of one token equals A * relu(dlogp/dA) computed by hand from the adapter's model."""
    blip = tiny_models["blip"]
    image = _image()
    tr, cam = trace(blip, image, CAPTION, method="gradcam", layers=[-1])
    batch = blip.collate([image], [CAPTION])
    model = blip.base_model
    with torch.enable_grad():
        emb = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        out = model.text_decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 encoder_hidden_states=emb, output_attentions=True, return_dict=True)
        att = out.cross_attentions[-1]
        t = 2  # the third caption token, predicted at row 2
        logp = torch.log_softmax(out.logits[0, t], -1)[batch["input_ids"][0, t + 1]]
        (g,) = torch.autograd.grad(logp, att)
    want = (att[0, :, t, 1:] * g[0, :, t, 1:].clamp(min=0)).mean(0).detach().numpy()
    np.testing.assert_allclose(cam[t].reshape(-1), want, rtol=1e-4, atol=1e-9)
    assert tr.logprobs[t] == pytest.approx(float(logp.detach()), abs=1e-5)


def test_saliency_maps_are_per_input_pixel(adapter: CaptionModel) -> None:
    """Every family: one map per token at the model's input resolution, non-negative, not flat, and
    onto the original image like the attention maps."""
    expl = explain_image(adapter, _image(), CAPTION, ExplainSettings(method="saliency"))
    t = len(expl.tokens)
    assert expl.grid == (IMAGE_SIZE, IMAGE_SIZE)
    assert expl.token_maps.shape == (t, IMAGE_SIZE, IMAGE_SIZE) and len(expl.logprobs) == t
    assert np.isfinite(expl.token_maps).all() and (expl.token_maps >= 0).all()
    assert (expl.token_maps.max(axis=(1, 2)) > expl.token_maps.min(axis=(1, 2))).all()  # each token's map varies
    assert expl.heatmaps("word").shape == (len(expl.words), 80, 120)
    assert "saliency" in expl.extra
    # the same tokens and log-probabilities as the attention pass: only the maps differ
    plain = explain_image(adapter, _image(), CAPTION)
    assert plain.tokens == expl.tokens
    np.testing.assert_allclose(plain.logprobs, expl.logprobs, rtol=1e-4, atol=1e-5)


def test_saliency_is_the_gradient_of_the_token_logprob(tiny_models: dict[str, CaptionModel]) -> None:
    """One token's saliency equals max over channels of |dlog p / d pixels| computed by hand, and no
    parameter gradient is left behind."""
    blip = tiny_models["blip"]
    image = _image()
    tr, maps = trace(blip, image, CAPTION, method="saliency")
    batch = blip.collate([image], [CAPTION])
    model = blip.base_model
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(pixel_values=pixels, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = 3  # the fourth caption token, predicted at row 3
        logp = torch.log_softmax(logits[0, t].float(), -1)[batch["input_ids"][0, t + 1]]
        (g,) = torch.autograd.grad(logp, pixels)
    np.testing.assert_allclose(maps[t], g[0].abs().amax(dim=0).numpy(), rtol=1e-4, atol=1e-9)
    assert tr.logprobs[t] == pytest.approx(float(logp.detach()), abs=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_are_one_line_errors(tiny_models: dict[str, CaptionModel]) -> None:
    blip = tiny_models["blip"]
    for settings, msg in ((ExplainSettings(method="occlusion"), "unknown method"),
                          (ExplainSettings(aggregate="median"), "unknown aggregate"),
                          (ExplainSettings(method="saliency", layers=[-1]), "saliency method maps input pixels"),
                          (ExplainSettings(method="saliency", heads=[0], aggregate="max"), "heads, aggregate select")):
        with pytest.raises(MedblipError, match=msg):
            explain_image(blip, _image(), CAPTION, settings)
    with pytest.raises(MedblipError, match="empty caption"):
        explain_image(blip, _image(), "   ")


def test_random_weights_copy_keeps_everything_but_the_weights(tiny_models: dict[str, CaptionModel],
                                                              tmp_path: Path) -> None:
    """The randomisation test's model: same class, config values, tokenizer and processor; new weights; a
    live vision tower where the config's init is transformers' 1e-10 placeholder."""
    from medblip.explain.benchmark import random_weights_copy

    blip = tiny_models["blip"]
    assert blip.base_model.config.vision_config.initializer_range < 1e-3  # init_tiny keeps the placeholder
    state = torch.random.get_rng_state()
    copy = random_weights_copy(blip, tmp_path / "random", seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is untouched
    assert type(copy.base_model) is type(blip.base_model) and copy.family == blip.family
    a, b = blip.base_model.config.to_dict(), copy.base_model.config.to_dict()
    assert b["vision_config"].pop("initializer_range") == 0.02
    a["vision_config"].pop("initializer_range")
    for d in (a, b):
        d.pop("transformers_version", None)
        d.pop("_name_or_path", None)
    assert a == b
    assert copy.tokenizer.get_vocab() == blip.tokenizer.get_vocab()
    old, new = blip.base_model.state_dict(), copy.base_model.state_dict()
    assert old.keys() == new.keys()
    assert not torch.equal(old["vision_model.embeddings.patch_embedding.weight"],
                           new["vision_model.embeddings.patch_embedding.weight"])
    assert random_weights_copy(blip, tmp_path / "again", seed=0).base_model.state_dict()[
        "vision_model.embeddings.patch_embedding.weight"].equal(new["vision_model.embeddings.patch_embedding.weight"])
