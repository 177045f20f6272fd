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
    """

    def __init__(self, records: Sequence[Record], image_size: int | None = None, cache: bool = False, *,
                 with_ids: bool = False, load_images: bool = True, image_cache: Any = None) -> None:
        self.records = list(records)
        self.image_cache = image_cache
        self.image_size = image_size
        self.cache = cache
        self.with_ids = with_ids
        self.load_images = load_images
        self._pixels: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, index: int) -> Image.Image:
        if self.image_cache is not None:
            return Image.fromarray(self.image_cache.pixels(index), "RGB")
        record = self.records[index]
        if record.image is None:
            from medblip.errors import DataError

            raise DataError(f"record {record.id}: no image (load the dataset with require_images=True)")
        image = load_image(record.image)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image

    def image(self, index: int) -> Image.Image:
        if not self.cache:
            return self._decode(index)
        pixels = self._pixels.get(index)
        if pixels is None:
            pixels = self._pixels[index] = np.asarray(self._decode(index), dtype=np.uint8)
        return Image.fromarray(pixels, "RGB")

    def preload(self) -> None:
        """Decode every image now (only meaningful with ``cache=True`` and images loaded)."""
        if self.cache and self.load_images:
            for i in range(len(self)):
                self.image(i)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        record = self.records[index]
        image = self.image(index) if self.load_images else None
        return (image, record.caption, record.id) if self.with_ids else (image, record.caption)


class AdapterCollate:
    """DataLoader ``collate_fn``: a list of (image, caption[, id]) -> the adapter's training batch.

    ``pixel_values``, ``input_ids``, ``attention_mask`` and ``labels`` (``adapter.collate``); items
    with ids add ``ids`` (a list of record ids); items without images (``None``) give the text part
    only (``adapter.tokenize``), for batches whose encoder features come from a cache.
    A class rather than a lambda so DataLoader workers can pickle it.
    """

    def __init__(self, adapter: CaptionModel) -> None:
        self.adapter = adapter

    def __call__(self, items: list[tuple[Any, ...]]) -> dict[str, Any]:
        images = [item[0] for item in items]
        captions = [item[1] for item in items]
        if all(im is None for im in images):
            batch: dict[str, Any] = dict(self.adapter.tokenize(captions))  # type: ignore[attr-defined]
        else:
            batch = self.adapter.collate(images, captions)
        if items and len(items[0]) > 2:
            batch["ids"] = [item[2] for item in items]
        return batch


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


def config_dataset(dc: Any, split: str, records: Sequence[Record], source: str) -> CaptionDataset:
    """A split as the config's ``data:`` section asks: read from the memory-mapped ``data.image_cache``
    when there is one, else decoded (and with ``data.cache_images`` kept in memory after the first epoch)."""
    from medblip.errors import ConfigError, DataError

    image_cache = None
    if dc.image_cache is not None and records:
        from medblip.data.cache import CachedImageDataset

        try:
            image_cache = CachedImageDataset(dc.image_cache, split, records, size=dc.image_size)
        except DataError as exc:
            raise ConfigError(f"{source}: data.image_cache: {exc}") from None
    in_memory = dc.cache_images and dc.image_cache is None  # a memory-mapped cache needs no second copy
    return CaptionDataset(records, dc.image_size, cache=in_memory, image_cache=image_cache)
