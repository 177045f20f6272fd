"""Throughput: the fast pieces ``medblip train`` / ``evaluate`` / ``caption`` run with (what only the
benchmarks use lives in ``benchmarks/``).

=====================================  ===========================================================
``perf.attention``                     ``enable_sdpa(model)`` / ``disable_sdpa`` / ``sdpa_attention``:
                                       SDPA for BLIP (whose transformers classes are eager-only)
``perf.batching``                      ``PixelNormalizer`` (uint8 -> pixel_values, exact),
                                       ``LengthBucketBatchSampler``
``perf.feature_cache``                 ``FeatureCache``, ``decoder_only_loss_from_features``,
                                       ``DecoderFromFeatures``, ``encoder_fn``, ``use_feature_cache``
``perf.fast_generate`` / ``captioner``  ``FastCaptioner(adapter).generate(images)``: same captions
                                       as ``adapter.generate``, cross-attention K/V once per image
``perf.fast_train``                    ``make_adamw`` (fused AdamW), ``trainer_kernels`` (SDPA, TF32)
``perf.tf32``                          ``set_tf32`` / ``restore_tf32`` / ``tf32_restored`` / ``tf32_flags``: the
                                       process-wide TF32 switch, restorable
``perf.threads``                       ``torch_threads(n)``: torch's intra-op thread count for a block, restored
=====================================  ===========================================================

Names are imported lazily (``from medblip.perf import FastCaptioner``) so ``import medblip.perf`` is cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "enable_sdpa": "attention", "disable_sdpa": "attention", "sdpa_attention": "attention",
    "PixelNormalizer": "batching", "LengthBucketBatchSampler": "batching",
    "FeatureCache": "feature_cache", "decoder_only_loss_from_features": "feature_cache",
    "DecoderFromFeatures": "feature_cache", "encoder_fn": "feature_cache", "use_feature_cache": "feature_cache",
    "FastCaptioner": "captioner", "make_adamw": "fast_train", "trainer_kernels": "fast_train",
    "set_tf32": "tf32", "restore_tf32": "tf32", "tf32_restored": "tf32", "tf32_flags": "tf32",
    "torch_threads": "threads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"medblip.perf.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medblip.perf' has no attribute {name!r}")
