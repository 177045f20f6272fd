"""Batching for throughput: uint8 pixels normalised on the device, dynamic padding, length buckets.

* :class:`PixelNormalizer` turns a (B, H, W, 3) uint8 batch into the processor's ``pixel_values``
  (rescale + normalise, bit for bit the image processor's result) -- on the GPU, after moving a
  quarter of the bytes float32 pixels would take.
* :class:`LengthBucketBatchSampler`: batches of captions of similar length, so dynamic padding pads
  little; like the trainer's ``EpochBatchSampler`` the order is a pure function of (seed, epoch),
  split across processes the same way, and can skip already-consumed batches (resume).

The trainer uses both (:class:`medblip.training.data.AdapterCollate`, ``train.length_buckets``); the
caption lengths come from :class:`medblip.training.data.CaptionTokens`. Padding never changes the
loss: labels are -100 on padding and BLIP's decoder is causal with padding on the right, so real
tokens never see pad tokens (tested: same loss as padding to 64 tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


class PixelNormalizer:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) ``pixel_values`` with the image processor's settings.

    Bit for bit what the (PIL-backend) image processor computes for an image already at its size:
    its rescale runs in float64 and rounds to float32, its normalisation runs in float32. A uint8
    channel value has 256 possible results, so they are computed once that way into a (3, 256)
    table and a batch is a table lookup -- exact, and cheaper than the arithmetic.
    """

    def __init__(self, image_processor: Any) -> None:
        self.do_rescale = bool(getattr(image_processor, "do_rescale", True))
        self.rescale_factor = float(getattr(image_processor, "rescale_factor", 1 / 255))
        self.do_normalize = bool(getattr(image_processor, "do_normalize", True))
        mean = getattr(image_processor, "image_mean", None) or (0.0, 0.0, 0.0)
        std = getattr(image_processor, "image_std", None) or (1.0, 1.0, 1.0)
        mean = [mean] * 3 if isinstance(mean, int | float) else list(mean)
        std = [std] * 3 if isinstance(std, int | float) else list(std)
        levels = np.arange(256, dtype=np.float64)
        values = (levels * self.rescale_factor if self.do_rescale else levels).astype(np.float32)
        table = np.stack([values] * 3)
        if self.do_normalize:
            table = (table - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
        # flat, so that channel c's value v is entry 256 c + v
        self.table = torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32).reshape(-1))
        self._offsets = torch.arange(3, dtype=torch.int32).view(1, 3, 1, 1) * 256
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixels: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        if device is not None:
            pixels = pixels.to(device, non_blocking=True)
        dev = pixels.device
        if dev not in self._on:
            self._on[dev] = (self.table.to(dev), self._offsets.to(dev))
        table, offsets = self._on[dev]
        index = pixels.permute(0, 3, 1, 2).to(torch.int32) + offsets
        x = table.index_select(0, index.reshape(-1)).view(index.shape)
        return x if dtype is None else x.to(dtype)


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose captions have similar lengths (less padding), deterministic per epoch.

    The epoch's permutation is cut into windows of ``batch_size * window`` items; each window is
    sorted by length and cut into batches; the batch order is then shuffled. Distribution and
    ``skip`` follow the trainer's ``EpochBatchSampler``: batches padded (wrapping around) to a
    multiple of ``num_processes``, process ``rank`` takes every ``num_processes``-th batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int = 0, window: int = 50,
                 rank: int = 0, num_processes: int = 1, skip: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.window = max(1, window)
        self.rank = rank
        self.num_processes = num_processes
        self.skip = skip

    def _generator(self, salt: int) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + salt)
        return gen

    def all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        order = torch.randperm(n, generator=self._generator(0)).tolist()
        span = self.batch_size * self.window
        batches: list[list[int]] = []
        for start in range(0, n, span):
            chunk = sorted(order[start:start + span], key=lambda i: (-self.lengths[i], i))
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        perm = torch.randperm(len(batches), generator=self._generator(1)).tolist()
        batches = [batches[i] for i in perm]
        pad = (-len(batches)) % self.num_processes
        return batches + batches[:pad]

    def batches_per_process(self) -> int:
        n = len(self.lengths)
        span = self.batch_size * self.window
        total = sum(math.ceil(min(span, n - s) / self.batch_size) for s in range(0, n, span))
        return math.ceil(total / self.num_processes)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.all_batches()[self.rank::self.num_processes]
        yield from mine[self.skip:]

    def __len__(self) -> int:
        return max(0, self.batches_per_process() - self.skip)
