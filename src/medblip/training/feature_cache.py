"""The trainer's frozen-encoder feature cache: whether a run can use it, and building it.

Under ``decoder_only`` on BLIP or ViT-GPT2 the vision encoder is frozen and pinned in eval mode, so
its output for a training image never changes (this trainer has no image augmentation).
:func:`plan_feature_cache` decides from ``train.cache_features`` (``auto``/``on``/``off``), the strategy,
the family, FSDP and the memory the features need; :func:`build_feature_cache` encodes every training
image once into a :class:`~medblip.perf.feature_cache.FeatureCache` (in memory or under
``train.feature_cache_dir``), sharing the work among processes. Nothing here moves the random streams
the training draws from (:func:`rng_preserved`), so a run with the cache stays in step with one without.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from medblip.errors import ConfigError, MedblipError
from medblip.perf.feature_cache import DecoderFromFeatures, FeatureCache, encoder_fn, use_feature_cache
from medblip.training import checkpoint as ckpt
from medblip.training.data import AdapterCollate, CaptionDataset

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

#: auto keeps the features in memory only while all processes' copies take at most this share of it
_CACHE_MEMORY_SHARE = 0.5


def plan_feature_cache(adapter: CaptionModel, tc: Any, images: CaptionDataset, fsdp: bool, accelerator: Any,
                        source: str) -> dict[str, Any]:
    """Whether to train from cached encoder features (``train.cache_features``): ``{"used": bool, ...}``.

    ``on`` where it cannot work (strategy trains the encoder, unsupported family, FSDP) is a
    :class:`ConfigError` naming the key; ``auto`` says why not in ``reason``. This trainer has no image
    augmentation, so the encoder's output for an image is the same every epoch.
    """
    mode = tc.cache_features
    info: dict[str, Any] = {"mode": mode, "used": False, "directory": tc.feature_cache_dir}
    if mode == "off":
        return {**info, "reason": "train.cache_features is off"}
    strategy = adapter.strategy.strategy if adapter.strategy else None
    reasons: list[str] = []
    try:
        use_feature_cache(adapter, "on", augment=False)
    except MedblipError as exc:
        reasons.append(str(exc).removeprefix("cache_features: on is impossible: "))
    if fsdp:
        reasons.append("FSDP shards the model (use DDP)")
    if not reasons:
        inside = {id(p) for p in DecoderFromFeatures(adapter).parameters()}
        outside = [n for n, p in adapter.model.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            reasons.append(f"parameter {outside[0]} trains but is not part of the decoder")
    if reasons:
        if mode == "on":
            raise ConfigError(f"{source}: train.cache_features: on is impossible with strategy {strategy} on "
                              f"family {adapter.family}: {'; '.join(reasons)}. It needs strategy decoder_only on "
                              "blip or vit-gpt2; set train.cache_features to auto or off")
        return {**info, "reason": "; ".join(reasons)}

    # Room for the features: one image through the encoder gives their size.
    with rng_preserved():
        probe = AdapterCollate(adapter)([images[0]])["pixel_values"]
        per_record = encoder_fn(adapter, autocast=accelerator.autocast)(probe)[0]
    need = per_record.numel() * per_record.element_size() * len(images)
    info["estimated_bytes"] = need
    use = True
    if tc.feature_cache_dir is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes on this machine, each with a copy
        available = _available_memory()
        if available is not None and need * local > _CACHE_MEMORY_SHARE * available:
            why = (f"the features need {need * local / 2**30:.1f} GiB of memory ({local} process(es)), more than "
                   f"{_CACHE_MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available; set "
                   "train.feature_cache_dir to keep them on disk")
            if mode == "on":
                print(f"medblip: warning: train.cache_features is on but {why}", file=sys.stderr, flush=True)
            else:
                use = False
                info["reason"] = why
    if accelerator.num_processes > 1:  # every process must take the same path
        agreed = accelerator.reduce(torch.tensor([int(use)], device=accelerator.device), reduction="sum")
        if int(agreed.item()) != accelerator.num_processes and use:
            use = False
            info["reason"] = "another process cannot hold the features in memory"
    info["used"] = use
    return info


def build_feature_cache(adapter: CaptionModel, records: list[Any], dc: Any, tc: Any, accelerator: Any,
                        info: dict[str, Any], *, show_progress: bool) -> tuple[FeatureCache, float]:
    """Encode every training image once; returns the cache and the seconds it took, and adds what was
    built to ``info`` (:func:`plan_feature_cache`'s, recorded in run.json and cost.json).

    The key covers the encoder's weights, dtype and autocast, the image size, the processor's config,
    the record ids and the data's file signatures: anything else is a different cache (on disk, a stale
    one is deleted). Distributed: each process encodes its share and the features are gathered, so
    every process holds them all (on disk the main process writes them, the others read).
    """
    import transformers
    from tqdm.auto import tqdm

    from medblip.data.cache import records_fingerprint
    from medblip.perf.attention import sdpa_enabled

    t0 = time.perf_counter()
    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    directory = tc.feature_cache_dir
    writer = directory is None or is_main
    ids = [r.id for r in records]

    def open_cache(parts: Any = None) -> FeatureCache:
        if parts is not None:  # the other processes, after the main one wrote the features
            return FeatureCache(parts, directory, memory=False, prune_stale=False)
        return FeatureCache.for_adapter(adapter, ids=ids, image_size=dc.image_size,
                                        data_fingerprint=records_fingerprint(records), directory=directory,
                                        extra={"mixed_precision": tc.mixed_precision,
                                               "sdpa": sdpa_enabled(adapter),
                                               "transformers": transformers.__version__},
                                        memory=False, prune_stale=is_main)

    with rng_preserved():  # nothing here may move the streams dropout draws from
        if directory is not None and not is_main:
            accelerator.wait_for_everyone()  # the main process prunes stale caches first
        cache = open_cache()
        if directory is not None and is_main:
            accelerator.wait_for_everyone()
        todo = [i for i, rid in enumerate(ids) if rid not in cache]
        size = tc.batch_size
        chunks = [todo[k:k + size * world] for k in range(0, len(todo), size * world)]
        # every process encodes `size` images per chunk (the last chunk's shares padded with its first image)
        shares = [(c[rank * size:(rank + 1) * size] + [c[0]] * size)[:size] if world > 1 else c for c in chunks]
        loader = torch.utils.data.DataLoader(
            CaptionDataset(records, dc.image_size), batch_sampler=shares, collate_fn=AdapterCollate(adapter),
            num_workers=dc.num_workers, generator=torch.Generator().manual_seed(0))
        encode = encoder_fn(adapter, autocast=accelerator.autocast)
        bar = tqdm(total=len(todo), disable=not show_progress, unit="img", desc="encoder features", leave=False)
        for chunk, batch in zip(chunks, loader, strict=True):
            features = encode(batch["pixel_values"])
            if world > 1:
                gathered = accelerator.gather(features.contiguous())  # (world * size, ...) in process order
                rows = [r * size + j for r in range(world) for j in range(len(chunk[r * size:(r + 1) * size]))]
                features = gathered[rows]
            if writer:
                cache.put([ids[i] for i in chunk], features)
            bar.update(len(chunk))
        bar.close()
        if directory is not None:
            accelerator.wait_for_everyone()
            if not is_main:
                cache = open_cache(cache.parts)
        missing = [rid for rid in ids if rid not in cache]
        if missing:
            raise MedblipError(f"feature cache: no features for {len(missing)} record(s), e.g. {missing[0]!r}")
    seconds = time.perf_counter() - t0
    info.update(records=len(cache), computed=len(todo), build_seconds=round(seconds, 3), key=cache.key,
                memory_bytes=cache.nbytes())
    return cache, seconds


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def rng_preserved() -> Any:
    """Every random generator as it was on entry, after the block (the training's dropout stays in step)."""
    saved = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(saved)
