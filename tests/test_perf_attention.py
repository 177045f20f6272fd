"""SDPA attention for BLIP (eager-only in transformers): same loss and gradients, weights still available."""

from __future__ import annotations

import pytest
import torch

from medblip.perf.attention import disable_sdpa, enable_sdpa, sdpa_attention, sdpa_enabled
from test_perf_common import CAPTIONS, load, noise_images, perf_dirs  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _loss_and_grads(adapter, batch):
    adapter.model.zero_grad(set_to_none=True)
    loss = adapter.loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_blip_sdpa_same_loss_and_gradients(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    adapter.apply_strategy("full")
    adapter.eval_mode()  # no dropout: the two paths must agree
    batch = adapter.collate(noise_images(8), CAPTIONS)  # captions of different lengths: padding + mask
    ref_loss, ref_grads = _loss_and_grads(adapter, batch)
    assert enable_sdpa(adapter) > 0 and sdpa_enabled(adapter)
    loss, grads = _loss_and_grads(adapter, batch)
    assert abs(loss - ref_loss) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=1e-4), name
    disable_sdpa(adapter)
    assert not sdpa_enabled(adapter)


def test_attention_weights_still_recorded_under_sdpa(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    images = noise_images(2)
    ids = adapter.tokenize(CAPTIONS[:2])["input_ids"]
    ref = adapter.cross_attentions(images, ids)
    with sdpa_attention(adapter):
        got = adapter.cross_attentions(images, ids)
        # and the plain forward does not materialise weights
        out = adapter.base_model(**adapter.collate(images, CAPTIONS[:2]))
        assert out.loss is not None
    assert not sdpa_enabled(adapter)
    for a, b in zip(ref.attentions, got.attentions, strict=True):
        # the vision encoder ran under SDPA: the same maps up to float rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_vit_gpt2_uses_native_sdpa(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "vit-gpt2")
    adapter.eval_mode()
    batch = adapter.collate(noise_images(4), CAPTIONS[:4])
    with torch.no_grad():
        ref = float(adapter.loss(batch))
        enable_sdpa(adapter)
        got = float(adapter.loss(batch))
    assert sdpa_enabled(adapter)
    assert abs(got - ref) < 1e-5


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_under_sdpa_equals_eager(perf_dirs, beams):  # noqa: F811
    """transformers' generate with its KV cache under the SDPA patch (the trainer's validation on CUDA):
    the same captions as eager. The cache argument was renamed between transformers releases
    (past_key_values -> cache); a patch that dropped it would caption from the last token alone."""
    from test_perf_common import spice_up

    adapter = spice_up(load(perf_dirs, "blip"))
    images = noise_images(6)
    ref = adapter.generate(images, num_beams=beams, max_new_tokens=12)
    assert len(set(ref)) > 2
    with sdpa_attention(adapter):
        assert sdpa_enabled(adapter)
        assert adapter.generate(images, num_beams=beams, max_new_tokens=12) == ref


def test_an_attention_layout_that_disagrees_stays_eager(perf_dirs, monkeypatch):  # noqa: F811
    """If a transformers release changes what the attention module computes, the patch is not applied
    (one warning per class) rather than silently changing the model."""
    from transformers.models.blip.modeling_blip import BlipAttention

    import medblip.perf.attention as attention

    def skewed(self, hidden_states, **kwargs):
        out, w = attention._blip_vision_sdpa(self, hidden_states, **kwargs)
        return out * 1.5, w

    monkeypatch.setitem(attention._patch_table.__globals__, "_blip_vision_sdpa", skewed)
    adapter = load(perf_dirs, "blip")
    with pytest.warns(RuntimeWarning, match="SDPA left off for BlipAttention"):
        switched = enable_sdpa(adapter)
    assert switched > 0  # the text modules still switch
    assert not any(m.__dict__.get("_medblip_sdpa") for m in adapter.base_model.modules() if isinstance(m, BlipAttention))
    disable_sdpa(adapter)
