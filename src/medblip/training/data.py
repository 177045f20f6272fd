"""Torch-side data for the trainer: records -> (image, caption) pairs, a resumable batch order, collate.

The batch order is a pure function of (seed, epoch), so a resumed run can rebuild the interrupted
epoch's order and skip the batches it already consumed, and every process of a distributed run
agrees on it without communicating.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from medblip.data.images import load_image

if TYPE_CHECKING:
    from medblip.data import Record
    from medblip.models.base import CaptionModel


class CaptionDataset(Dataset):
    """(PIL RGB image, caption) per record, optionally resized and kept in memory.

    ``image_size``: images are resized to a ``image_size`` square as they are decoded (the model's
    processor then has nothing left to resize when it is the model's input size). ``cache``: keep the
    decoded, resized pixels (uint8) after first use so later epochs skip decoding; with DataLoader
    workers each worker holds its own copy, so call :meth:`preload` before the loader forks them.

    ``image_cache``: a :class:`~medblip.data.cache.CachedImageDataset` over the same records, in the
    same order (``data.image_cache``): pixels come from its memory-mapped uint8 array instead of
    decoding and resizing the file.

    ``with_ids``: items are ``(image, caption, record id)`` instead of ``(image, caption)`` (the
    collated batch then carries ``ids``). ``load_images=False``: the image is ``None`` and no file is
    read -- for training from cached encoder features, where a batch needs only its text and ids.
    ``arrays=True``: the image is its uint8 (H, W, 3) array instead of a PIL image, which
    :class:`AdapterCollate` normalises without the image processor's per-image round trip.
    """

    def __init__(self, records: Sequence[Record], image_size: int | None = None, cache: bool = False, *,
                 with_ids: bool = False, load_images: bool = True, image_cache: Any = None,
                 arrays: bool = False) -> None:
        self.records = list(records)
        self.image_cache = image_cache
        self.image_size = image_size
        self.cache = cache
        self.with_ids = with_ids
        self.load_images = load_images
        self.arrays = arrays
        self._pixels: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, index: int) -> Image.Image | np.ndarray:
        if self.image_cache is not None:
            return self.image_cache.pixels(index)
        record = self.records[index]
        if record.image is None:
            from medblip.errors import DataError

            raise DataError(f"record {record.id}: no image (load the dataset with require_images=True)")
        image = load_image(record.image)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image

    def pixels(self, index: int) -> np.ndarray:
        """The image as a uint8 (H, W, 3) array."""
        pixels = self._pixels.get(index)
        if pixels is None:
            pixels = np.asarray(self._decode(index), dtype=np.uint8)
            if self.cache:
                self._pixels[index] = pixels
        return pixels

    def image(self, index: int) -> Image.Image:
        if not self.cache and self.image_cache is None:
            image = self._decode(index)
            assert isinstance(image, Image.Image)
            return image
        return Image.fromarray(self.pixels(index), "RGB")

    def preload(self) -> None:
        """Decode every image now (only meaningful with ``cache=True`` and images loaded)."""
        if self.cache and self.load_images:
            for i in range(len(self)):
                self.image(i)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        record = self.records[index]
        image = None if not self.load_images else self.pixels(index) if self.arrays else self.image(index)
        return (image, record.caption, record.id) if self.with_ids else (image, record.caption)


class AdapterCollate:
    """DataLoader ``collate_fn``: a list of (image, caption[, id]) -> the adapter's training batch.

    ``pixel_values``, ``input_ids``, ``attention_mask`` and ``labels`` (``adapter.collate``); items
    with ids add ``ids`` (a list of record ids); items without images (``None``) give the text part
    only (``adapter.tokenize``), for batches whose encoder features come from a cache.

    Images given as uint8 arrays (``CaptionDataset(arrays=True)``, the image cache) are stacked and
    normalised by a lookup table (:class:`~medblip.perf.batching.PixelNormalizer`) instead of going
    through the image processor one PIL image at a time -- once the first batch of that image size
    has shown that both give the same pixel values bit for bit; otherwise (a processor that resizes
    or crops them, or computes differently) the processor keeps doing it. Families whose ``collate``
    adds inputs of its own (BLIP-2's Q-Former text) get PIL images and their ``collate``.
    ``tokens``: the captions tokenized once (:class:`CaptionTokens`) instead of per batch;
    ``text=False``: ``pixel_values`` only (encoding images for the feature cache).
    A class rather than a lambda so DataLoader workers can pickle it.
    """

    def __init__(self, adapter: CaptionModel, tokens: CaptionTokens | None = None, *, text: bool = True) -> None:
        from medblip.models.base import CaptionModel
        from medblip.perf.batching import PixelNormalizer

        self.adapter = adapter
        self.tokens = tokens
        self.text = text
        self.plain_collate = type(adapter).collate is CaptionModel.collate  # processor + tokenize, nothing else
        self.normalizer = PixelNormalizer(adapter.processor.image_processor)
        self._exact: dict[tuple[int, ...], bool] = {}  # array shape -> the table gives the processor's values

    def pixel_values(self, arrays: list[np.ndarray]) -> torch.Tensor:
        shape = arrays[0].shape
        if all(a.shape == shape for a in arrays) and self._exact.get(shape, True):
            fast = self.normalizer(np.stack(arrays))
            if shape in self._exact:
                return fast
            slow = self._processor(arrays)
            self._exact[shape] = fast.shape == slow.shape and torch.equal(fast, slow)
            return slow
        return self._processor(arrays)

    def tokenize(self, captions: list[str]) -> dict[str, Any]:
        return self.tokens.batch(captions) if self.tokens is not None else dict(self.adapter.tokenize(captions))

    def _processor(self, arrays: list[np.ndarray]) -> torch.Tensor:
        images = [Image.fromarray(a, "RGB") for a in arrays]
        return self.adapter.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def __call__(self, items: list[tuple[Any, ...]]) -> dict[str, Any]:
        images = [item[0] for item in items]
        captions = [item[1] for item in items]
        if all(im is None for im in images):
            batch: dict[str, Any] = self.tokenize(captions)
        elif all(isinstance(im, np.ndarray) for im in images) and self.plain_collate:
            batch = {"pixel_values": self.pixel_values(images), **(self.tokenize(captions) if self.text else {})}
        else:
            images = [Image.fromarray(im, "RGB") if isinstance(im, np.ndarray) else im for im in images]
            batch = self.adapter.collate(images, captions)
        if items and len(items[0]) > 2:
            batch["ids"] = [item[2] for item in items]
        return batch


class CaptionTokens:
    """Every caption of a training set tokenized once, instead of once per batch per epoch.

    ``batch(captions)`` gathers the captions' rows and cuts them to the batch's longest caption: what
    ``adapter.tokenize(captions)`` returns, bit for bit, for families that pad on the right (checked
    on a sample of the captions when built; where it does not hold, :attr:`exact` is False and
    :meth:`batch` tokenizes per batch as before). :attr:`lengths` (tokens per caption, in the order
    given) is what length buckets sort on. Rows are kept as int32 to halve the memory.
    """

    def __init__(self, adapter: CaptionModel, captions: Sequence[str], chunk: int = 4096) -> None:
        self.adapter = adapter
        self.row = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        unique = list(self.row)
        parts = [adapter.tokenize(unique[i:i + chunk]) for i in range(0, len(unique), chunk)]
        row_lengths = torch.cat([(p["labels"] != -100).sum(dim=1) for p in parts]) if parts else torch.zeros(0)
        self.lengths = [int(row_lengths[self.row[c]]) for c in captions]
        self.tensors: dict[str, torch.Tensor] = {}
        self.exact = bool(parts) and "attention_mask" in parts[0] and all(
            set(p) == set(parts[0]) and all(t.dim() == 2 and t.shape[1] == p["input_ids"].shape[1] for t in p.values())
            for p in parts)
        if not self.exact:
            return
        width = max(p["input_ids"].shape[1] for p in parts)
        self.dtypes = {k: t.dtype for k, t in parts[0].items()}
        for key in parts[0]:  # chunks are padded to their own longest: widen each with the padding value
            fill = _pad_value(key, parts)
            self.tensors[key] = torch.cat([torch.nn.functional.pad(p[key], (0, width - p[key].shape[1]), value=fill)
                                           for p in parts]).to(torch.int32)
        self._widths = self.tensors["attention_mask"].sum(dim=1)
        by_length = sorted(range(len(unique)), key=lambda i: int(self._widths[i]))
        sample = [unique[i] for i in dict.fromkeys(by_length[:2] + by_length[-2:] + list(range(min(8, len(unique)))))]
        want, got = adapter.tokenize(sample), self.batch(sample)
        self.exact = set(want) == set(got) and all(
            want[k].shape == got[k].shape and want[k].dtype == got[k].dtype and torch.equal(want[k], got[k])
            for k in want)

    def batch(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        if not self.exact or any(c not in self.row for c in captions):
            return dict(self.adapter.tokenize(list(captions)))
        rows = torch.tensor([self.row[c] for c in captions])
        width = int(self._widths[rows].max())
        return {k: t[rows, :width].to(self.dtypes[k]) for k, t in self.tensors.items()}


def _pad_value(key: str, parts: list[dict[str, torch.Tensor]]) -> int:
    """The value ``key`` holds where the attention mask is 0 (the tokenizer's padding)."""
    for part in parts:
        padded = part["attention_mask"] == 0
        if bool(padded.any()):
            return int(part[key][padded][0])
    return -100 if key == "labels" else 0


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled record order of one epoch: depends on nothing but (n, seed, epoch)."""
    gen = torch.Generator()
    gen.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch for one process, in a deterministic order that can skip ahead.

    The epoch's permutation is cut into batches of ``batch_size``; under ``num_processes`` > 1 the
    batch list is padded (wrapping around to its start) to a multiple of the process count and
    process ``rank`` takes batches ``rank, rank + P, ...`` so every process runs the same number of
    steps (a rank with one batch fewer would hang the others' gradient all-reduce). With ``P``
    processes the global batch of step ``k`` is batches ``kP .. kP+P-1`` -- the same images a single
    process with a ``P`` times larger batch would see. ``skip``: batches of *this process* already
    consumed (resume).
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, epoch: int = 0,
                 rank: int = 0, num_processes: int = 1, skip: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.num_processes = num_processes
        self.skip = skip

    def _all_batches(self) -> list[list[int]]:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pad = (-len(batches)) % self.num_processes
        batches += batches[:pad]
        return batches

    def batches_per_process(self) -> int:
        total = math.ceil(self.num_samples / self.batch_size)
        return math.ceil(total / self.num_processes)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._all_batches()[self.rank::self.num_processes]
        yield from mine[self.skip:]

    def __len__(self) -> int:
        return max(0, self.batches_per_process() - self.skip)


def use_length_buckets(tc: Any, *, cached_features: bool) -> dict[str, Any]:
    """How ``train.length_buckets`` resolves for this run: ``{"used": bool, "setting": ..., "why": ...}``.

    ``auto`` buckets only when the decoder trains alone on cached encoder features: there the text
    decoder is the whole step and padding each batch to its longest caption (57% padding with shuffled
    batches of the benchmark's captions) is most of its cost, while the full model keeps the plain
    shuffled batches it learned the lesion side best with."""
    setting = tc.length_buckets
    if setting == "auto":
        used, why = cached_features, ("decoder trains on cached encoder features: padding dominates its step"
                                      if cached_features else "the encoder trains too: plain shuffled batches")
    else:
        used, why = setting == "on", f"train.length_buckets: {setting}"
    return {"used": used, "setting": setting, "why": why}


def epoch_sampler(tc: Any, num_samples: int, lengths: Sequence[int] | None, *, buckets: bool, epoch: int = 0,
                  rank: int = 0, num_processes: int = 1, skip: int = 0) -> Sampler[list[int]]:
    """The batches of one epoch: captions of similar length together when ``buckets``
    (:class:`~medblip.perf.batching.LengthBucketBatchSampler`, ``lengths`` from :class:`CaptionTokens`;
    see :func:`use_length_buckets`) or in plain shuffled order (:class:`EpochBatchSampler`). Both are
    pure functions of (seed, epoch)."""
    if buckets and lengths is not None:
        from medblip.perf.batching import LengthBucketBatchSampler

        return LengthBucketBatchSampler(lengths, tc.batch_size, seed=tc.seed, epoch=epoch, rank=rank,
                                        num_processes=num_processes, skip=skip)
    return EpochBatchSampler(num_samples, tc.batch_size, seed=tc.seed, epoch=epoch, rank=rank,
                             num_processes=num_processes, skip=skip)


def validation_subset(records: Sequence[Record], size: int | None, seed: int) -> list[Record]:
    """A fixed validation subset (same records every evaluation, every resume), in load order."""
    if size is None or size >= len(records):
        return list(records)
    gen = torch.Generator()
    gen.manual_seed(seed)
    keep = sorted(torch.randperm(len(records), generator=gen)[:size].tolist())
    return [records[i] for i in keep]


#: columns (``Record.meta`` keys, any case) whose value groups records of one patient, in priority order
GROUP_COLUMNS = ("patient", "patient_id", "case", "case_id")


def holdout_validation(records: Sequence[Record], fraction: float,
                       seed: int) -> tuple[list[Record], list[Record], str]:
    """(train, validation, what was done): ``fraction`` of ``records`` held out, chosen by ``seed``.

    When the records have a patient/case column (:data:`GROUP_COLUMNS`) whole groups are held out, so
    no patient is on both sides. Both lists keep load order. At least one record (group) stays on each
    side; with fewer than two groups nothing is held out (the returned text says so).
    """
    import random

    key = next((k for col in GROUP_COLUMNS for r in records for k in r.meta if k.lower() == col), None)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        value = r.meta.get(key) if key is not None else None
        groups.setdefault(f"g:{value}" if value not in (None, "") else f"r:{r.id}", []).append(i)
    unit = f"{key!r} group" if key is not None else "record"
    if len(groups) < 2:
        return list(records), [], f"too few {unit}s ({len(groups)}) to hold out validation records"
    order = list(groups)
    random.Random(f"{seed}:validation").shuffle(order)
    target = max(1, round(fraction * len(records)))
    held: set[int] = set()
    taken = 0
    for g in order[:-1]:  # the last group always stays in training
        if len(held) >= target:
            break
        held.update(groups[g])
        taken += 1
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    how = (f"held out {len(val)} of {len(records)} training records for validation (data.val_fraction {fraction:g}, "
           f"seed {seed}" + (f", whole {key!r} groups: {taken} of {len(groups)}" if key is not None else "") + ")")
    return train, val, how


def split_for_training(dataset: Any, dc: Any) -> tuple[list[Record], list[Record], str, str | None]:
    """(train records, validation records, the split the validation records come from, a note or None).

    Data without validation records (e.g. a manifest that names no split: every record is in train)
    gets ``data.val_fraction`` of its training records held out (:func:`holdout_validation`); the note
    says what was done, and run.json keeps it.
    """
    train, val = dataset.split(dc.train_split), dataset.split(dc.val_split)
    if not train or val:
        return train, val, dc.val_split, None
    missing = f"no {dc.val_split!r} records in {dc.path}" + (" (it names no split)" if dataset.report.unsplit else "")
    if dc.val_fraction > 0:
        train, val, how = holdout_validation(train, dc.val_fraction, dc.seed)
        return train, val, dc.train_split, f"{missing}: {how}"
    return train, val, dc.val_split, (f"{missing} and data.val_fraction is 0: training without validation; "
                                      "checkpoints/best is then the first evaluation's checkpoint, not a chosen one")


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def config_dataset(dc: Any, split: str, records: Sequence[Record], source: str, *,
                   arrays: bool = False) -> CaptionDataset:
    """A split as the config's ``data:`` section asks: read from the memory-mapped ``data.image_cache``
    when there is one, else decoded (and with ``data.cache_images`` kept in memory after the first epoch).
    ``arrays``: items carry uint8 arrays (see :class:`CaptionDataset`)."""
    from medblip.errors import ConfigError, DataError

    image_cache = None
    if dc.image_cache is not None and records:
        from medblip.data.cache import CachedImageDataset

        try:
            image_cache = CachedImageDataset(dc.image_cache, split, records, size=dc.image_size)
        except DataError as exc:
            raise ConfigError(f"{source}: data.image_cache: {exc}") from None
    in_memory = dc.cache_images and dc.image_cache is None  # a memory-mapped cache needs no second copy
    return CaptionDataset(records, dc.image_size, cache=in_memory, image_cache=image_cache, arrays=arrays)
