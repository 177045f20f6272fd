"""Model registry and one adapter module per family (BLIP, BLIP-2, InstructBLIP, ViT-GPT2).

``create_model(name_or_path)`` loads a hub id or a ``save_pretrained`` folder through the family's real
transformers classes and returns a :class:`CaptionModel`; ``init_tiny(family, out)`` writes a tiny
random checkpoint of the same classes for tests and demos.
"""

from __future__ import annotations

from medblip.models.base import CaptionModel, CrossAttentionOutput, GenerationSettings
from medblip.models.lora import LoraOptions
from medblip.models.registry import create_model, detect_family, get_family, list_families, register_family
from medblip.models.strategies import STRATEGIES, StrategyReport, apply_strategy
from medblip.models.tiny import init_tiny

# Importing the family modules registers them.
from medblip.models import blip, blip2, instructblip, vit_gpt2  # noqa: E402,F401  isort: skip

__all__ = [
    "STRATEGIES",
    "CaptionModel",
    "CrossAttentionOutput",
    "GenerationSettings",
    "LoraOptions",
    "StrategyReport",
    "apply_strategy",
    "create_model",
    "detect_family",
    "get_family",
    "init_tiny",
    "list_families",
    "register_family",
]
