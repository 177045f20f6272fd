"""uint8 normalisation, dynamic padding and length buckets: same inputs, same loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_step import UInt8Collate, pad_to_multiple, padding_fraction  # benchmarks/
from medblip.perf.batching import LengthBucketBatchSampler, PixelNormalizer
from medblip.training.data import CaptionTokens
from test_perf_common import CAPTIONS, load, noise_images, perf_dirs  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def test_pixel_normalizer_equals_processor(perf_dirs):  # noqa: F811
    for family in ("blip", "vit-gpt2"):
        adapter = load(perf_dirs, family)
        images = noise_images(4, size=32)
        ref = adapter.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        got = PixelNormalizer(adapter.processor.image_processor)(np.stack([np.asarray(im) for im in images]))
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert torch.equal(got, ref), family  # bit for bit: the trainer feeds these to the model instead


def test_uint8_collate_and_padding_do_not_change_the_loss(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    adapter.eval_mode()
    images = noise_images(8)
    ref = adapter.collate(images, CAPTIONS)
    items = [(np.asarray(im), c) for im, c in zip(images, CAPTIONS, strict=True)]
    batch = UInt8Collate(adapter, normalize=True, pad_multiple=8)(items)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= ref["input_ids"].shape[1]
    with torch.no_grad():
        ref_loss = float(adapter.loss(ref))
        assert abs(float(adapter.loss(batch)) - ref_loss) < 1e-6
        # padding to a fixed 64 tokens (the naive loop) gives the same loss as dynamic padding
        wide = pad_to_multiple({k: ref[k] for k in ("input_ids", "attention_mask", "labels")}, 64,
                               adapter.tokenizer.pad_token_id)
        assert wide["input_ids"].shape[1] == 64
        assert abs(float(adapter.loss({**wide, "pixel_values": ref["pixel_values"]})) - ref_loss) < 1e-5
    raw = UInt8Collate(adapter)(items)
    assert raw["pixels_uint8"].dtype == torch.uint8 and raw["pixels_uint8"].shape == (8, 32, 32, 3)


def test_bucketed_batches_give_the_same_total_loss(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    adapter.eval_mode()
    captions = CAPTIONS * 3
    images = noise_images(len(captions), seed=5)
    lengths = CaptionTokens(adapter, captions).lengths
    plain = [list(range(i, i + 4)) for i in range(0, len(captions), 4)]
    buckets = list(LengthBucketBatchSampler(lengths, 4, seed=0, window=6))
    assert sorted(i for b in buckets for i in b) == list(range(len(captions)))
    assert padding_fraction(buckets, lengths) < padding_fraction(plain, lengths)

    def total(batches: list[list[int]]) -> float:
        s = 0.0
        with torch.no_grad():
            for b in batches:
                batch = adapter.collate([images[i] for i in b], [captions[i] for i in b])
                n = int((batch["labels"][:, 1:] != -100).sum())  # targets after the shift
                s += float(adapter.loss(batch)) * n
        return s

    assert abs(total(buckets) - total(plain)) < 1e-3


def test_bucket_sampler_is_deterministic_sharded_and_resumable():
    lengths = [int(x) for x in np.random.default_rng(0).integers(3, 60, 103)]
    a = list(LengthBucketBatchSampler(lengths, 8, seed=1, epoch=2))
    assert a == list(LengthBucketBatchSampler(lengths, 8, seed=1, epoch=2))
    assert a != list(LengthBucketBatchSampler(lengths, 8, seed=1, epoch=3))
    s = LengthBucketBatchSampler(lengths, 8, seed=1, epoch=2, window=4)
    assert len(list(s)) == len(s)
    assert list(LengthBucketBatchSampler(lengths, 8, seed=1, epoch=2, skip=3)) == a[3:]
    r0 = list(LengthBucketBatchSampler(lengths, 8, seed=1, epoch=2, rank=0, num_processes=2))
    r1 = list(LengthBucketBatchSampler(lengths, 8, seed=1, epoch=2, rank=1, num_processes=2))
    assert len(r0) == len(r1)
    assert {i for b in r0 + r1 for i in b} == set(range(103))


def test_fast_train_step_full_loss_equals_adapter_loss(perf_dirs):  # noqa: F811
    from fast_step import FastTrainStep
    from medblip.perf.attention import sdpa_enabled

    adapter = load(perf_dirs, "blip")
    adapter.apply_strategy("full")
    images = noise_images(8)
    ref_batch = adapter.collate(images, CAPTIONS)
    adapter.eval_mode()
    with torch.no_grad():
        ref = float(adapter.loss(ref_batch))
    items = [(np.asarray(im), c) for im, c in zip(images, CAPTIONS, strict=True)]
    batch = UInt8Collate(adapter, pad_multiple=8)(items)
    with FastTrainStep(adapter, lr=1e-4) as stepper:  # fp32 on CPU, SDPA, uint8 normalised in the step
        assert stepper.precision == "fp32" and sdpa_enabled(adapter)
        adapter.eval_mode()
        with torch.no_grad():
            assert abs(float(stepper.loss(batch)) - ref) < 1e-5
        adapter.train_mode()
        first = float(stepper.step(batch))
        for _ in range(3):
            last = float(stepper.step(batch))
    assert last < first and not sdpa_enabled(adapter)
