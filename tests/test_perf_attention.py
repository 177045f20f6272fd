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
