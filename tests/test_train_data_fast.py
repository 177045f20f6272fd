"""The trainer's fast data path gives the batches the plain one does, bit for bit: captions tokenized
once (CaptionTokens) and uint8 images normalised by a lookup table (AdapterCollate on arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medblip.training.data import AdapterCollate, CaptionTokens
from test_perf_common import CAPTIONS, load, noise_images, perf_dirs  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", ["blip", "vit-gpt2"])
def test_caption_tokens_batch_equals_tokenize(perf_dirs, family):  # noqa: F811
    adapter = load(perf_dirs, family)
    captions = CAPTIONS * 2 + ["a much longer caption " * 6, "short"]
    tokens = CaptionTokens(adapter, captions, chunk=3)  # several chunks, each padded to its own longest
    assert tokens.exact
    for batch in ([0, 1, 2], [len(captions) - 1, 3], [len(captions) - 2, 0, 5, 6], [4]):
        chosen = [captions[i] for i in batch]
        _same(tokens.batch(chosen), adapter.tokenize(chosen))
    ref = adapter.tokenize(captions)
    assert tokens.lengths == (ref["labels"] != -100).sum(dim=1).tolist()
    _same(tokens.batch(["a caption it never saw"]), adapter.tokenize(["a caption it never saw"]))


@pytest.mark.parametrize("family", ["blip", "vit-gpt2"])
def test_array_batches_equal_the_processor_path(perf_dirs, family):  # noqa: F811
    adapter = load(perf_dirs, family)
    images = noise_images(8, size=32)  # the processor's size: nothing to resize
    plain = AdapterCollate(adapter)([(im, c) for im, c in zip(images, CAPTIONS, strict=True)])
    collate = AdapterCollate(adapter, CaptionTokens(adapter, CAPTIONS))
    arrays = [(np.asarray(im), c) for im, c in zip(images, CAPTIONS, strict=True)]
    for _ in range(2):  # the first batch checks the lookup against the processor, the second uses it
        _same(collate(arrays), plain)
    assert collate._exact == {(32, 32, 3): True}


def test_arrays_the_processor_must_resize_stay_on_the_processor(perf_dirs):  # noqa: F811
    adapter = load(perf_dirs, "blip")
    images = noise_images(4, size=40)  # 40 px, the processor makes 32
    collate = AdapterCollate(adapter)
    arrays = [(np.asarray(im), c) for im, c in zip(images, CAPTIONS, strict=False)]
    ref = adapter.collate(images, CAPTIONS[:4])
    for _ in range(2):
        _same(collate(arrays), ref)
    assert collate._exact == {(40, 40, 3): False}
