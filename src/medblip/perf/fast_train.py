"""The optimised training step: what the throughput benchmark runs as "medblip", and the pieces the
trainer takes over (each is a flag there; see the report in ``benchmarks/RESULTS.md``).

* bf16 autocast on CUDA (``precision="auto"``), TF32 for what stays fp32;
* SDPA attention (:mod:`medblip.perf.attention`: BLIP's eager-only modules patched per instance);
* fused AdamW on CUDA (``foreach`` elsewhere), ``zero_grad(set_to_none=True)``;
* uint8 pixels from the image cache, normalised on the device (:class:`PixelNormalizer`);
  dynamic padding + length buckets come from the batches (:mod:`medblip.perf.batching`);
* ``decoder_only`` with a frozen encoder: features from a :class:`FeatureCache`, decoder only;
* optional ``torch.compile`` of the module that runs.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from medblip.perf.attention import disable_sdpa, enable_sdpa
from medblip.perf.batching import PixelNormalizer
from medblip.perf.captioner import autocast, resolve_precision
from medblip.perf.feature_cache import (
    DecoderFromFeatures,
    FeatureCache,
    decoder_only_loss_from_features,
    encoder_fn,
)
from medblip.perf.tf32 import restore_tf32, set_tf32

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel


def make_adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float = 0.05,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               device: torch.device | None = None, foreach: bool | None = True) -> torch.optim.AdamW:
    """AdamW without decay on 1-d tensors (biases, norm weights); fused kernel on CUDA, else ``foreach``
    (``None``: torch's default, the per-tensor loop on CPU; the trainer's, whose runs the resume tests
    compare bit for bit)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device is not None and device.type == "cuda"
    kw: dict[str, Any] = {"fused": True} if fused else {"foreach": foreach}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kw)


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


@contextlib.contextmanager
def naive_precision(device: torch.device, precision: str) -> Any:
    """The naive loop's autocast (``bf16`` = plain ``torch.autocast``)."""
    with autocast(device, precision):
        yield


def trainer_kernels(adapter: CaptionModel, tc: Any, device: torch.device, source: str) -> dict[str, Any]:
    """``train.sdpa`` and ``train.tf32``: the attention kernel and matmul precision a training run uses.

    On CUDA a run takes this module's kernels by default -- scaled-dot-product attention, TF32 for fp32
    matmuls (and :func:`make_adamw`'s fused AdamW) -- so it gets the throughput the benchmark reports.
    ``auto`` keeps CPU runs and deterministic runs on eager attention, whose numbers the exact-resume and
    DDP tests compare bit for bit. Returns what run.json records (``distributed.kernels``).
    """
    from medblip.errors import ConfigError
    from medblip.perf import attention

    want = tc.sdpa == "on" or (tc.sdpa == "auto" and device.type == "cuda" and not tc.deterministic)
    switched = attention.enable_sdpa(adapter) if want else 0
    if tc.sdpa == "on" and not switched:
        raise ConfigError(f"{source}: train.sdpa: on, but no attention module of this {adapter.family} model "
                          "can use scaled_dot_product_attention; set train.sdpa: auto or off")
    tf32 = bool(tc.tf32 and device.type == "cuda")
    if tf32:
        set_tf32(True)
    return {"sdpa": bool(switched), "sdpa_modules": switched, "tf32": tf32}
