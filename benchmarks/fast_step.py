"""The benchmark's optimised training step (the ``medblip`` variant of ``train_throughput.py``).

It assembles the pieces ``medblip train`` runs with -- :func:`medblip.perf.fast_train.make_adamw`
(fused AdamW), SDPA attention (:mod:`medblip.perf.attention`), the exact uint8 -> pixel_values lookup
(:class:`medblip.perf.batching.PixelNormalizer`), the frozen-encoder feature cache
(:mod:`medblip.perf.feature_cache`) -- into one step with no data loader, scheduler, clipping or
bookkeeping around it: the ceiling the trainer is measured against. Here too: :class:`UInt8Collate`
(uint8 pixels + tokenized captions, optionally padded to a multiple of 8) and :func:`padding_fraction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medblip.perf.attention import disable_sdpa, enable_sdpa
from medblip.perf.batching import PixelNormalizer
from medblip.perf.captioner import autocast, resolve_precision
from medblip.perf.fast_train import make_adamw
from medblip.perf.feature_cache import (
    DecoderFromFeatures,
    FeatureCache,
    decoder_only_loss_from_features,
    encoder_fn,
)
from medblip.perf.tf32 import restore_tf32, set_tf32

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel


def pad_to_multiple(text: dict[str, torch.Tensor], multiple: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad input_ids / attention_mask / labels to a multiple of ``multiple`` (loss unchanged)."""
    if multiple <= 1:
        return text
    length = text["input_ids"].shape[1]
    extra = (-length) % multiple
    if not extra:
        return text
    out = dict(text)
    b = text["input_ids"].shape[0]
    fills = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    for key, fill in fills.items():
        if key in text:
            t = text[key]
            out[key] = torch.cat([t, torch.full((b, extra), fill, dtype=t.dtype)], dim=1)
    return out


class UInt8Collate:
    """``collate_fn`` for (uint8 HWC array, caption) items -> {pixels_uint8, input_ids, attention_mask, labels}.

    ``normalize=True`` puts float ``pixel_values`` in the batch instead (for ``adapter.loss`` as is);
    leave it off and call a :class:`PixelNormalizer` on the device. ``pad_multiple``: see
    :func:`pad_to_multiple`. A class, not a lambda, so DataLoader workers can pickle it.
    """

    def __init__(self, adapter: CaptionModel, *, normalize: bool = False, pad_multiple: int = 1,
                 with_pixels: bool = True) -> None:
        self.adapter = adapter
        self.normalize = normalize
        self.pad_multiple = pad_multiple
        self.with_pixels = with_pixels
        self.normalizer = PixelNormalizer(adapter.processor.image_processor) if normalize else None

    def __call__(self, items: list[tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
        captions = [c for _, c in items]
        text = self.adapter.tokenize(captions)
        pad_id = self.adapter.tokenizer.pad_token_id or 0
        out: dict[str, torch.Tensor] = dict(pad_to_multiple(text, self.pad_multiple, pad_id))
        if self.with_pixels:
            pixels = torch.from_numpy(np.stack([np.asarray(p) for p, _ in items]))
            if self.normalizer is not None:
                out["pixel_values"] = self.normalizer(pixels)
            else:
                out["pixels_uint8"] = pixels
        return out


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of token slots that are padding when each batch pads to its longest caption."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / slots if slots else 0.0


class FastTrainStep:
    """One optimised optimizer step per call of :meth:`step` on an adapter whose strategy is applied.

    ``feature_cache``: a :class:`FeatureCache` to train the decoder from cached encoder features
    (requires the encoder frozen, i.e. ``decoder_only``); batches then carry ``ids``.
    ``compile``: ``torch.compile`` the module that runs (full model, or decoder-from-features).
    """

    def __init__(self, adapter: CaptionModel, *, lr: float = 1e-5, weight_decay: float = 0.05,
                 precision: str = "auto", sdpa: bool = True, compile: bool = False,
                 feature_cache: FeatureCache | None = None) -> None:
        self.adapter = adapter
        self.device = adapter.device
        self.precision = resolve_precision(precision, self.device)
        self.sdpa = sdpa
        if sdpa:
            enable_sdpa(adapter)
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("FastTrainStep: no trainable parameters (apply a training strategy first)")
        self.optimizer = make_adamw(params, lr=lr, weight_decay=weight_decay, device=self.device)
        self.normalizer = PixelNormalizer(adapter.processor.image_processor)
        self.cache = feature_cache
        self.decoder = DecoderFromFeatures(adapter) if feature_cache is not None else None
        self.encode = encoder_fn(adapter, autocast=lambda: autocast(self.device, self.precision))
        self.module: Any = self.decoder if self.decoder is not None else adapter.model
        if compile:
            self.module = torch.compile(self.module)
        self._tf32 = set_tf32(True) if self.device.type == "cuda" else None
        adapter.train_mode()

    def close(self) -> None:
        """Undo the global / model changes (SDPA patches, TF32 setting)."""
        if self.sdpa:
            disable_sdpa(self.adapter)
        if self._tf32 is not None:
            restore_tf32(self._tf32)

    def pixel_values(self, batch: dict[str, Any]) -> torch.Tensor:
        if "pixel_values" in batch:
            return batch["pixel_values"].to(self.device, non_blocking=True)
        return self.normalizer(batch["pixels_uint8"], device=self.device)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        assert self.cache is not None
        ids = list(batch["ids"])

        def images(missing: list[str]) -> torch.Tensor:
            rows = [ids.index(m) for m in missing]
            if "pixel_values" in batch:
                return batch["pixel_values"][rows].to(self.device)
            return self.normalizer(batch["pixels_uint8"][rows], device=self.device)

        return self.cache.get_or_compute(ids, images, self.encode, device=self.device)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        with autocast(self.device, self.precision):
            if self.cache is not None:
                return decoder_only_loss_from_features(self.adapter, self.features(batch), batch, model=self.module)
            text = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
            full = {"pixel_values": self.pixel_values(batch), **text}
            return self.adapter.loss(full, model=self.module)

    def step(self, batch: dict[str, Any]) -> torch.Tensor:
        loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def __enter__(self) -> FastTrainStep:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
