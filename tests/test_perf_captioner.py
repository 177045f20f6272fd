"""FastCaptioner: the same captions (and ids) as adapter.generate, greedy and beam search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medblip.perf.batching import PixelNormalizer
from medblip.perf.captioner import FastCaptioner
from test_perf_common import load, noise_images, perf_dirs, spice_up  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def spicy(perf_dirs):  # noqa: F811
    return spice_up(load(perf_dirs, "blip"))


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("static", [False, True])
def test_same_ids_and_captions_as_generate(spicy, beams, static):
    images = noise_images(8)
    fast = FastCaptioner(spicy, static=static)
    ref_ids, ref_skip = spicy.generate_ids(images, num_beams=beams, max_new_tokens=20)
    ids, skip = fast.generate_ids(images, num_beams=beams, max_new_tokens=20)
    assert skip == ref_skip
    assert torch.equal(ids, ref_ids)
    captions = fast.generate(images, num_beams=beams, max_new_tokens=20)
    assert captions == spicy.generate(images, num_beams=beams, max_new_tokens=20)
    assert len(set(captions)) > 2  # the images really lead to different captions
    assert not fast.fallbacks


def test_prompt_min_tokens_and_pixel_values(spicy):
    images = noise_images(5, seed=3)
    fast = FastCaptioner(spicy)
    kw = {"num_beams": 3, "max_new_tokens": 12, "min_new_tokens": 4, "prompt": "ct of the"}
    ref = spicy.generate_ids(images, **kw)
    got = fast.generate_ids(images, **kw)
    assert got[1] == ref[1] and torch.equal(got[0], ref[0])
    pv = PixelNormalizer(spicy.processor.image_processor)(np.stack([np.asarray(im) for im in images]))
    assert fast.generate(pixel_values=pv, num_beams=1, max_new_tokens=10) == spicy.generate(images, num_beams=1,
                                                                                            max_new_tokens=10)


def test_unsupported_settings_fall_back_to_transformers(spicy, perf_dirs):  # noqa: F811
    images = noise_images(3)
    fast = FastCaptioner(spicy)
    ref = spicy.generate(images, num_beams=2, max_new_tokens=8, repetition_penalty=1.3)
    assert fast.generate(images, num_beams=2, max_new_tokens=8, repetition_penalty=1.3) == ref
    assert fast.fallbacks == {"repetition_penalty": 1}
    vit = load(perf_dirs, "vit-gpt2")
    fast_vit = FastCaptioner(vit)
    assert fast_vit.generate(images, num_beams=2, max_new_tokens=6) == vit.generate(images, num_beams=2,
                                                                                    max_new_tokens=6)
    assert "family vit-gpt2" in fast_vit.fallbacks


def test_training_mode_is_restored(spicy):
    spicy.train_mode()
    FastCaptioner(spicy).generate(noise_images(2), num_beams=1, max_new_tokens=4)
    assert spicy.model.training
    spicy.eval_mode()


class _RenamedNorm(torch.nn.Module):
    """BLIP's text embeddings with their LayerNorm under another name, as a transformers release might
    spell it: the same computation, a layout the lean loop does not know."""

    def __init__(self, emb: torch.nn.Module) -> None:
        super().__init__()
        self.word_embeddings, self.position_embeddings = emb.word_embeddings, emb.position_embeddings
        self.layer_norm, self.dropout = emb.LayerNorm, emb.dropout
        self.register_buffer("position_ids", emb.position_ids, persistent=False)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None, **kwargs):
        start = next((int(v) for k, v in kwargs.items() if k.endswith("length")), 0)
        pos = self.position_ids[:, start:start + input_ids.shape[1]] if position_ids is None else position_ids
        return self.dropout(self.layer_norm(self.word_embeddings(input_ids) + self.position_embeddings(pos)))


class _ScaledEmbeddings(torch.nn.Module):
    """The embeddings computed differently (scaled): same attribute names, other numbers."""

    def __init__(self, emb: torch.nn.Module) -> None:
        super().__init__()
        self.inner = emb
        self.word_embeddings, self.position_embeddings = emb.word_embeddings, emb.position_embeddings
        self.LayerNorm, self.dropout = emb.LayerNorm, emb.dropout  # noqa: N815 - transformers' name

    def forward(self, *args, **kwargs):
        return 2.0 * self.inner(*args, **kwargs)


@pytest.mark.parametrize("change", [_RenamedNorm, _ScaledEmbeddings], ids=["renamed-module", "other-computation"])
def test_unknown_decoder_layout_falls_back_to_generate_with_one_warning(perf_dirs, change):  # noqa: F811
    """A text decoder the lean loop does not reproduce is found when the captioner is built: one
    RuntimeWarning, then transformers' generate, the same captions, never a TypeError mid-run."""
    adapter = spice_up(load(perf_dirs, "blip"))
    bert = adapter.base_model.text_decoder.bert
    bert.embeddings = change(bert.embeddings)
    images = noise_images(4)
    ref = adapter.generate(images, num_beams=3, max_new_tokens=10)
    with pytest.warns(RuntimeWarning, match="fast captioner off") as record:
        fast = FastCaptioner(adapter)
        assert fast.generate(images, num_beams=3, max_new_tokens=10) == ref
    assert len(record) == 1 and fast.layout_problem
    assert fast.fallbacks == {"fast decoder unavailable": 1}


def test_a_supported_layout_passes_the_check(spicy):
    assert FastCaptioner(spicy).layout_problem is None
