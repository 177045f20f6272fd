"""Family registry and ``create_model`` (a timm-like factory over one adapter module per family).

Each family module decorates its adapter class with :func:`register_family`; importing any
``medblip.models`` module first runs the package's ``__init__``, which imports them all, so the
registry is complete before ``create_model`` runs. Loading helpers live in :mod:`medblip.models.loading`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medblip.errors import MedblipError
from medblip.models.loading import hub_access, hub_errors, parse_dtype, resolve_source

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

_FAMILIES: dict[str, type[CaptionModel]] = {}
_ALIASES: dict[str, str] = {}  # alias (lower case) -> family
_MODEL_TYPES: dict[str, str] = {}  # config.json model_type -> family
_HUB_PREFIXES: list[tuple[str, str]] = []  # (lower-case hub id prefix, family)

T = TypeVar("T", bound="type[CaptionModel]")


def register_family(name: str, *, model_types: tuple[str, ...] = (), hub_prefixes: tuple[str, ...] = (),
                    aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Class decorator: register an adapter under ``name``.

    ``model_types``: the ``config.json`` ``model_type`` values this family loads; ``hub_prefixes``:
    hub ids recognised without reading their config (so a well-known id resolves offline before
    anything is downloaded); ``aliases``: other spellings users type (``blip-2``, ``vit_gpt2``).
    """

    def deco(cls: T) -> T:
        cls.family = name
        _FAMILIES[name] = cls
        for alias in (name, *aliases):
            _ALIASES[alias.lower()] = name
        for mt in model_types:
            _MODEL_TYPES[mt] = name
        _HUB_PREFIXES.extend((p.lower(), name) for p in hub_prefixes)
        return cls

    return deco


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> type[CaptionModel]:
    """The adapter class of a family name or alias; unknown names raise a one-line error."""
    family = _ALIASES.get(str(name).lower().strip())
    if family is None:
        raise MedblipError(f"unknown model family {name!r}; known families: {', '.join(list_families())}")
    return _FAMILIES[family]


def _family_from_model_type(model_type: str | None, where: str) -> str:
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise MedblipError(
        f"{where}: model_type {model_type!r} is not a supported captioning family "
        f"(supported model types: {', '.join(sorted(_MODEL_TYPES))})"
    )


def _read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedblipError(f"{cfg_file}: unreadable config.json ({exc})") from None


def detect_family(name_or_path: str | Path, *, local_files_only: bool | None = None) -> str:
    """The family of a checkpoint: config.json ``model_type``, else a known hub id prefix."""
    source, folder = resolve_source(name_or_path)
    if folder is not None:
        cfg = _read_config(folder)
        return _family_from_model_type(cfg.get("model_type"), f"{folder}/config.json")
    # A cached config.json answers without the network; then well-known ids; only then ask the hub.
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        if isinstance(cached, str):
            cfg = _read_config(Path(cached).parent)
            return _family_from_model_type(cfg.get("model_type"), source)
    except MedblipError:
        raise
    except Exception:
        pass
    lowered = source.lower()
    for prefix, family in _HUB_PREFIXES:
        if lowered.startswith(prefix):
            return family
    from transformers import AutoConfig

    local_files_only = hub_access(source, local_files_only)
    with hub_errors(source, local_files_only):
        config = AutoConfig.from_pretrained(source, local_files_only=bool(local_files_only))
    return _family_from_model_type(getattr(config, "model_type", None), source)


def create_model(name_or_path: str | Path, family: str | None = None, *, dtype: Any = None,
                 device: Any = None, local_files_only: bool | None = None,
                 **family_options: Any) -> CaptionModel:
    """Load a captioning model from a hub id or a ``save_pretrained`` folder.

    ``family`` defaults to the checkpoint's ``config.json`` ``model_type`` (or a known hub id).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a torch dtype.
    ``family_options`` go to the family adapter (e.g. ``prompt`` for BLIP, ``instruction`` for
    InstructBLIP, ``attn_implementation``); unknown options raise a one-line error.
    """
    source, _folder = resolve_source(name_or_path)
    cls = get_family(family) if family else get_family(detect_family(source, local_files_only=local_files_only))
    return cls.load(source, dtype=parse_dtype(dtype), device=device, local_files_only=local_files_only,
                    **family_options)
