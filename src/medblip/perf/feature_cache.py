"""Frozen-encoder feature cache: decoder-only fine-tuning without running the vision encoder again.

Under ``decoder_only`` the vision encoder is frozen and pinned in eval mode, so with image
augmentation off its output for an image never changes: computing it once per image (instead of
once per image *per epoch*) removes the ViT forward -- most of a BLIP-base training step's cost --
from every epoch after the first.

* :class:`FeatureCache` maps record ids to encoder hidden states, in memory and optionally on disk
  (safetensors shards, memory-mapped on read). Its :attr:`~FeatureCache.key` hashes everything the
  features depend on: the encoder's weights (state-dict hash), the image size, the image processor's
  configuration, the record ids and a data fingerprint (file signatures or content hash). A different
  key is a different cache: changing the encoder, the size or the data invalidates it; on disk, a
  stale cache folder next to the current one is deleted.
* :func:`decoder_only_loss_from_features` computes the family's captioning loss from cached
  features; it equals ``adapter.loss(batch)`` (tested bit-for-bit on CPU). :class:`DecoderFromFeatures`
  is the same as an ``nn.Module``, to hand to ``accelerator.prepare`` (DDP gradient sync, autocast).

Trainer recipe (``train.cache_features: auto|on|off``)::

    if use_feature_cache(adapter, config.train.cache_features, augment=False):
        cache = FeatureCache.for_adapter(adapter, ids=[r.id for r in train_records],
                                         data_fingerprint=records_fingerprint(train_records),
                                         image_size=dc.image_size, directory=None or run_dir / "features")
        decoder = accelerator.prepare(DecoderFromFeatures(adapter))   # instead of adapter.model
        encode = encoder_fn(adapter, autocast=accelerator.autocast)
        cache.precompute(ids, lambda idx: collate(images of idx)["pixel_values"], encode, batch_size)
        ... per batch: feats = cache.get_or_compute(batch_ids, images_fn, encode, device=accelerator.device)
                       loss = decoder_only_loss_from_features(adapter, feats, batch, model=decoder)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medblip.errors import MedblipError
from medblip.io import atomic_write_json

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

#: families whose decoder can run from cached encoder features
FEATURE_FAMILIES = ("blip", "vit-gpt2")
_META = "cache.json"
_VERSION = 1


# -- keys ------------------------------------------------------------------------------------------

def state_dict_hash(module: nn.Module) -> str:
    """BLAKE2b of a module's state dict (names, dtypes, shapes and bytes), independent of device."""
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        t = t.to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def processor_config(adapter: CaptionModel) -> dict[str, Any]:
    """The image processor's settings (what turns a file into pixel values), JSON-safe."""
    proc = adapter.processor.image_processor
    cfg = proc.to_dict() if hasattr(proc, "to_dict") else dict(vars(proc))
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def ids_hash(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()


def feature_key(adapter: CaptionModel, *, ids: Sequence[str] | None = None, image_size: int | None = None,
                data_fingerprint: str | None = None, extra: Any = None,
                encoder_hash: str | None = None) -> dict[str, Any]:
    """The parts a cached feature depends on; :class:`FeatureCache` hashes them into its key."""
    return {
        "version": _VERSION,
        "family": adapter.family,
        "encoder": encoder_hash or state_dict_hash(adapter._vision_module()),
        "encoder_dtype": str(adapter.dtype),
        "image_size": image_size,
        "processor": processor_config(adapter),
        "ids": ids_hash(ids) if ids is not None else None,
        "data": data_fingerprint,
        "extra": extra,
    }


def _hash_parts(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# -- the cache -------------------------------------------------------------------------------------

class FeatureCache:
    """Encoder features by record id, in memory and optionally on disk under ``directory/<key>/``.

    ``parts``: what the features depend on (see :func:`feature_key`); ``key`` is their hash.
    ``store_device``: where in-memory features live (``"cpu"``, or the GPU when they fit: no copy per
    step); ``store_dtype``: keep as computed (``None``, exact) or e.g. ``torch.bfloat16`` to halve the
    memory. ``memory=False`` with a ``directory`` keeps nothing in RAM (reads the memory-mapped shards).
    ``prune_stale``: delete other key folders in ``directory`` (a directory holds one cache).
    """

    def __init__(self, parts: dict[str, Any] | str, directory: str | Path | None = None, *,
                 store_device: str | torch.device = "cpu", store_dtype: torch.dtype | None = None,
                 memory: bool = True, prune_stale: bool = True) -> None:
        self.parts = parts if isinstance(parts, dict) else {"key": parts}
        self.key = _hash_parts(self.parts) if isinstance(parts, dict) else str(parts)
        self.store_device = torch.device(store_device)
        self.store_dtype = store_dtype
        self.memory = memory or directory is None
        self._mem: dict[str, torch.Tensor] = {}
        self._disk: dict[str, str] = {}  # id -> shard file name
        self._handles: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        self.directory: Path | None = None
        if directory is not None:
            root = Path(directory)
            root.mkdir(parents=True, exist_ok=True)
            if prune_stale:
                for other in root.iterdir():
                    if other.is_dir() and other.name != self.key and (other / _META).is_file():
                        shutil.rmtree(other, ignore_errors=True)
            self.directory = root / self.key
            self.directory.mkdir(exist_ok=True)
            meta = self.directory / _META
            if not meta.is_file():
                atomic_write_json(meta, {"key": self.key, "parts": self.parts})
            self._scan()

    @classmethod
    def for_adapter(cls, adapter: CaptionModel, *, ids: Sequence[str] | None = None, image_size: int | None = None,
                    data_fingerprint: str | None = None, directory: str | Path | None = None,
                    extra: Any = None, **kwargs: Any) -> FeatureCache:
        """A cache keyed on ``adapter``'s encoder weights, processor, ``image_size``, ``ids`` and data."""
        if adapter.family not in FEATURE_FAMILIES:
            raise MedblipError(f"feature cache: family {adapter.family!r} is not supported "
                               f"(supported: {', '.join(FEATURE_FAMILIES)})")
        parts = feature_key(adapter, ids=ids, image_size=image_size, data_fingerprint=data_fingerprint, extra=extra)
        return cls(parts, directory, **kwargs)

    # -- storage ---------------------------------------------------------------------------------
    def _scan(self) -> None:
        from safetensors import safe_open

        assert self.directory is not None
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as fh:
                    for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                        self._disk[name] = shard.name
            except Exception:  # a torn shard from a crash: ignore it, its ids are recomputed
                shard.unlink(missing_ok=True)

    def _read_disk(self, rid: str) -> torch.Tensor:
        from safetensors import safe_open

        assert self.directory is not None
        shard = self._disk[rid]
        fh = self._handles.get(shard)
        if fh is None:
            fh = self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
        return fh.get_tensor(rid)

    def _write_shard(self, items: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        assert self.directory is not None
        n = len(list(self.directory.glob("shard-*.safetensors")))
        while (self.directory / f"shard-{n:06d}.safetensors").exists():
            n += 1
        name = f"shard-{n:06d}.safetensors"
        tmp = self.directory / f".{name}.tmp"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in items.items()}, str(tmp))
        tmp.replace(self.directory / name)
        for k in items:
            self._disk[k] = name

    # -- API -------------------------------------------------------------------------------------
    def __contains__(self, rid: str) -> bool:
        return rid in self._mem or rid in self._disk

    def __len__(self) -> int:
        return len(set(self._mem) | set(self._disk))

    def put(self, ids: Sequence[str], features: torch.Tensor) -> None:
        """Store ``features[i]`` for ``ids[i]`` (detached; on ``store_device`` in ``store_dtype``)."""
        if len(ids) != features.shape[0]:
            raise ValueError(f"{len(ids)} ids but {features.shape[0]} feature rows")
        feats = features.detach()
        if self.store_dtype is not None:
            feats = feats.to(self.store_dtype)
        if self.memory:
            stored = feats.to(self.store_device)
            for i, rid in enumerate(ids):
                self._mem[rid] = stored[i]
        if self.directory is not None:
            new = {rid: feats[i] for i, rid in enumerate(ids) if rid not in self._disk}
            if new:
                self._write_shard(new)

    def get(self, ids: Sequence[str], device: str | torch.device | None = None) -> torch.Tensor:
        """Stacked features of ``ids`` (all must be cached) on ``device``."""
        rows = []
        for rid in ids:
            t = self._mem.get(rid)
            if t is None:
                if rid not in self._disk:
                    raise KeyError(f"feature cache: no features for id {rid!r}")
                t = self._read_disk(rid)
                if self.memory:
                    self._mem[rid] = t = t.to(self.store_device)
            rows.append(t)
        out = torch.stack(rows)
        return out if device is None else out.to(device, non_blocking=True)

    def get_or_compute(self, ids: Sequence[str], images_fn: Callable[[list[str]], torch.Tensor],
                       encoder_fn: Callable[[torch.Tensor], torch.Tensor],
                       device: str | torch.device | None = None) -> torch.Tensor:
        """Features of ``ids``; the missing ones are computed as ``encoder_fn(images_fn(missing))``.

        ``images_fn(ids) -> pixel_values`` for those ids; ``encoder_fn(pixel_values) -> features``
        (batch, tokens, hidden) -- e.g. :func:`encoder_fn`. Computed under ``torch.no_grad``.
        """
        missing = list(dict.fromkeys(rid for rid in ids if rid not in self))
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                feats = encoder_fn(images_fn(missing))
            self.put(missing, feats)
        return self.get(ids, device=device)

    def precompute(self, ids: Sequence[str], images_fn: Callable[[list[str]], torch.Tensor],
                   encoder_fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None) -> int:
        """Fill the cache for every id in ``ids`` (in batches); returns how many were computed."""
        todo = [rid for rid in dict.fromkeys(ids) if rid not in self]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            with torch.no_grad():
                self.put(chunk, encoder_fn(images_fn(chunk)))
            if progress is not None:
                progress(min(start + batch_size, len(todo)), len(todo))
        self.misses += len(todo)
        return len(todo)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._mem.values())

    def clear(self) -> None:
        self._mem.clear()

    def close(self) -> None:
        self._handles.clear()


# -- the loss from features ------------------------------------------------------------------------

def encoder_fn(adapter: CaptionModel, autocast: Callable[[], Any] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``pixel_values -> features`` exactly as the model's own forward computes them.

    ``autocast``: the context the training forward runs in (``accelerator.autocast``), so features
    cached under bf16 mixed precision equal those the uncached path would compute.
    """

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        ctx = autocast() if autocast is not None else contextlib.nullcontext()
        with ctx, torch.no_grad():
            return adapter.encode_images(pixel_values)

    return encode


class DecoderFromFeatures(nn.Module):
    """The family's decoder + loss on cached encoder features, as a module for ``accelerator.prepare``.

    ``forward(features, input_ids, attention_mask, labels) -> loss``. It owns no parameters of its
    own: it holds the adapter's decoder (BLIP: ``text_decoder``; ViT-GPT2: the encoder-decoder model,
    whose encoder is skipped because ``encoder_outputs`` are given), so optimizer and checkpoints keep
    working on ``adapter.model``'s parameters.
    """

    def __init__(self, adapter: CaptionModel) -> None:
        super().__init__()
        if adapter.family not in FEATURE_FAMILIES:
            raise MedblipError(f"decoder from features: family {adapter.family!r} is not supported "
                               f"(supported: {', '.join(FEATURE_FAMILIES)})")
        self.family = adapter.family
        self.adapter_loss = adapter.smoothed_loss if adapter.label_smoothing else None
        base = adapter.base_model
        self.decoder = base.text_decoder if adapter.family == "blip" else base

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        if self.family == "blip":
            # exactly BlipForConditionalGeneration.forward after its vision model
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=features,
                               labels=labels, reduction="mean")
            return out.loss
        from transformers.modeling_outputs import BaseModelOutput

        out = self.decoder(encoder_outputs=BaseModelOutput(last_hidden_state=features), decoder_input_ids=input_ids,
                           decoder_attention_mask=attention_mask, labels=labels)
        return self.adapter_loss(out.logits, labels) if self.adapter_loss is not None else out.loss


def decoder_only_loss_from_features(adapter: CaptionModel, features: torch.Tensor, batch: dict[str, torch.Tensor],
                                    *, model: nn.Module | None = None) -> torch.Tensor:
    """The captioning loss of ``batch`` (input_ids, attention_mask, labels) given its encoder features.

    Equals ``adapter.loss(batch)`` when ``features == adapter.encode_images(batch["pixel_values"])``.
    ``model``: the prepared :class:`DecoderFromFeatures` (DDP / autocast); default a fresh one.
    """
    module = model if model is not None else DecoderFromFeatures(adapter)
    device = adapter.device
    # no dtype cast: the model's own forward hands the encoder output to the decoder unchanged
    feats = features.to(device, non_blocking=True)
    return module(feats, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                  batch["labels"].to(device))


def use_feature_cache(adapter: CaptionModel, mode: str = "auto", *, augment: bool = False) -> bool:
    """Whether to train from cached features: ``on``/``off``, or ``auto`` = frozen no-grad encoder, no augmentation.

    ``on`` when it cannot work (encoder trainable, augmentation, unsupported family) raises a one-line error.
    """
    mode = str(mode).lower()
    if mode not in ("auto", "on", "off"):
        raise MedblipError(f"cache_features must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    frozen = "vision_encoder" in (adapter.no_grad_groups() if adapter.strategy else [])
    reasons = []
    if adapter.family not in FEATURE_FAMILIES:
        reasons.append(f"family {adapter.family} is not supported")
    if not frozen:
        reasons.append("the vision encoder is not frozen (strategy must freeze it, e.g. decoder_only)")
    if augment:
        reasons.append("image augmentation is on (features would change every epoch)")
    if reasons and mode == "on":
        raise MedblipError("cache_features: on is impossible: " + "; ".join(reasons))
    return not reasons
