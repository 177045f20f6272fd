"""Frozen-encoder feature cache: exact loss, identical decoder-only training, keys and invalidation."""

from __future__ import annotations

import pytest
import torch

from fast_step import FastTrainStep  # benchmarks/
from medblip.errors import MedblipError
from medblip.perf.feature_cache import (
    DecoderFromFeatures,
    FeatureCache,
    decoder_only_loss_from_features,
    encoder_fn,
    feature_key,
    use_feature_cache,
)
from test_perf_common import CAPTIONS, load, noise_images, perf_dirs  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = [f"r{i}" for i in range(8)]


@pytest.mark.parametrize("family", ["blip", "vit-gpt2"])
def test_loss_from_features_equals_adapter_loss(perf_dirs, family):  # noqa: F811
    adapter = load(perf_dirs, family)
    adapter.apply_strategy("decoder_only")
    adapter.train_mode()  # vit-gpt2's GPT-2 has dropout: same seed, same masks
    batch = adapter.collate(noise_images(8), CAPTIONS)
    torch.manual_seed(0)
    ref = adapter.loss(batch)
    feats = adapter.encode_images(batch["pixel_values"])
    torch.manual_seed(0)
    got = decoder_only_loss_from_features(adapter, feats, batch)
    assert float(got.detach()) == float(ref.detach())
    torch.manual_seed(0)
    got_module = decoder_only_loss_from_features(adapter, feats, batch, model=DecoderFromFeatures(adapter))
    assert float(got_module.detach()) == float(ref.detach())


@pytest.mark.parametrize("family", ["blip", "vit-gpt2"])
def test_cached_decoder_only_training_matches_uncached(perf_dirs, family):  # noqa: F811
    batch_images, steps = noise_images(8), 3

    def run(cached: bool) -> dict[str, torch.Tensor]:
        adapter = load(perf_dirs, family)
        adapter.apply_strategy("decoder_only")
        batch = adapter.collate(batch_images, CAPTIONS)
        batch["ids"] = IDS
        cache = FeatureCache.for_adapter(adapter, ids=IDS, image_size=32) if cached else None
        torch.manual_seed(0)
        with FastTrainStep(adapter, lr=1e-3, sdpa=False, feature_cache=cache) as stepper:
            for _ in range(steps):
                stepper.step(batch)
        if cached:
            assert cache is not None and cache.misses == len(IDS) and cache.hits == len(IDS) * (steps - 1)
        return {n: p.detach().clone() for n, p in adapter.model.named_parameters()}

    ref, got = run(False), run(True)
    initial = dict(load(perf_dirs, family).model.named_parameters())
    changed = 0
    for name, p in ref.items():
        assert torch.allclose(got[name], p, atol=1e-6, rtol=0), name
        changed += int(not torch.equal(p, initial[name]))
    assert changed > 0  # the decoder did train


def test_key_changes_with_encoder_size_processor_ids_and_data(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    base = FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, data_fingerprint="d1").key
    assert FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, data_fingerprint="d1").key == base
    assert FeatureCache.for_adapter(adapter, ids=IDS, image_size=48, data_fingerprint="d1").key != base
    assert FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, data_fingerprint="d2").key != base
    assert FeatureCache.for_adapter(adapter, ids=IDS[:-1], image_size=32, data_fingerprint="d1").key != base
    adapter.processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, data_fingerprint="d1").key != base
    other = load(perf_dirs, "blip")
    with torch.no_grad():
        other.base_model.vision_model.post_layernorm.weight.add_(1e-3)
    parts = feature_key(other, ids=IDS, image_size=32, data_fingerprint="d1")
    assert FeatureCache(parts).key != base
    # the decoder is not part of the key: training it keeps the cache valid
    with torch.no_grad():
        other.base_model.vision_model.post_layernorm.weight.sub_(1e-3)
        other.base_model.text_decoder.cls.predictions.bias.add_(1.0)
    assert FeatureCache.for_adapter(other, ids=IDS, image_size=32, data_fingerprint="d1").key == base


def test_disk_cache_roundtrip_and_stale_folder_pruned(perf_dirs, tmp_path):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    pv = adapter.collate(noise_images(8), CAPTIONS)["pixel_values"]
    calls: list[list[str]] = []

    def images(ids: list[str]) -> torch.Tensor:
        calls.append(list(ids))
        return pv[[IDS.index(i) for i in ids]]

    encode = encoder_fn(adapter)
    cache = FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, directory=tmp_path, data_fingerprint="v1")
    first = cache.get_or_compute(IDS[:5], images, encode)
    both = cache.get_or_compute(IDS[3:], images, encode)
    assert calls == [IDS[:5], IDS[5:]]  # only the missing ids are encoded
    assert torch.equal(both[:2], first[3:5])
    reopened = FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, directory=tmp_path, data_fingerprint="v1",
                                        memory=False)
    assert len(reopened) == 8
    assert torch.equal(reopened.get(IDS[:5]), first)
    assert torch.equal(reopened.get(IDS), encode(pv))
    # the data changed: a new key, a fresh cache, the stale folder removed
    newer = FeatureCache.for_adapter(adapter, ids=IDS, image_size=32, directory=tmp_path, data_fingerprint="v2")
    assert len(newer) == 0 and newer.key != cache.key
    assert [p.name for p in tmp_path.iterdir()] == [newer.key]
    with pytest.raises(KeyError):
        newer.get(IDS[:1])


def test_use_feature_cache_rules(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    adapter.apply_strategy("full")
    assert not use_feature_cache(adapter, "auto")
    with pytest.raises(MedblipError, match="not frozen"):
        use_feature_cache(adapter, "on")
    adapter.apply_strategy("decoder_only")
    assert use_feature_cache(adapter, "auto") and use_feature_cache(adapter, "on")
    assert not use_feature_cache(adapter, "auto", augment=True)
    assert not use_feature_cache(adapter, "off")
    with pytest.raises(MedblipError):
        use_feature_cache(adapter, "sometimes")
