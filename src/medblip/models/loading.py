"""Where a model comes from and how it loads: hub id, checkpoint folder or training run folder; device
and dtype; one-line errors for what ``from_pretrained`` raises.

Family adapters call :func:`load_pretrained` from their ``load``; :mod:`medblip.models.registry` uses
:func:`resolve_source` and :class:`hub_errors` to tell a checkpoint's family. A training run folder
(written by :mod:`medblip.training`) holds ``checkpoints/best`` and ``checkpoints/last``;
:func:`run_checkpoint` and :func:`resolve_checkpoint` are the one place that picks between them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from medblip.errors import MedblipError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: a training run folder's checkpoints: ``<run>/checkpoints/best`` (best validation score) and ``last``
CHECKPOINTS, BEST, LAST = "checkpoints", "best", "last"


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def resolve_source(name_or_path: str | Path) -> tuple[str, Path | None]:
    """(name to pass to from_pretrained, local folder or None for a hub id); bad paths raise."""
    text = str(name_or_path).strip()
    if not text:
        raise MedblipError("empty model name or path")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MedblipError(f"model path {text} is a file, not a checkpoint folder")
        if not (path / "config.json").is_file():
            raise MedblipError(f"model folder {text} has no config.json (not a save_pretrained checkpoint)")
        return str(path), path
    # Hub ids are "org/name"; anything else that is not on disk is a mistyped folder.
    if not _HUB_ID.match(text):
        raise MedblipError(f"model folder {text} does not exist")
    return text, None


class hub_errors:  # noqa: N801 - used as a context manager like contextlib helpers
    """Turn from_pretrained's OSError/ValueError for a missing or unreachable checkpoint into one line."""

    def __init__(self, source: str, local_files_only: bool | None) -> None:
        self.source = source
        self.local_files_only = local_files_only

    def __enter__(self) -> hub_errors:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, MedblipError):
            return False
        if not isinstance(exc, OSError | ValueError | EnvironmentError):
            return False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if Path(self.source).exists():
            raise MedblipError(f"cannot load model from {self.source}: {first}") from exc
        if _offline(self.local_files_only):
            raise MedblipError(
                f"model {self.source!r} is not a local folder and is not in the Hugging Face cache, "
                "and downloads are disabled (offline / local_files_only); download it first or pass a folder"
            ) from exc
        raise MedblipError(f"cannot load model {self.source!r} from the Hugging Face Hub: {first}") from exc


def parse_dtype(dtype: Any) -> Any:
    """``None``/``"auto"``/``"float32"``/``"bf16"``/a torch.dtype -> what from_pretrained takes."""
    if dtype is None or not isinstance(dtype, str):
        return dtype
    import torch

    names = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    key = dtype.lower().replace("torch.", "")
    if key not in names:
        raise MedblipError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[key]


def load_pretrained(family: str, source: str, processor_class: Any, model_class: Any, options: dict[str, Any],
                    known: set[str] | frozenset[str], *, dtype: Any, device: Any,
                    local_files_only: bool | None) -> tuple[Any, Any]:
    """Check a family's load options, then ``from_pretrained`` its processor and model (in eval mode,
    on ``device``); hub and file errors become one-line :class:`MedblipError` s."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise MedblipError(f"unknown option {unknown[0]!r} for family {family}; known: {', '.join(sorted(known))}")
    kw: dict[str, Any] = {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    model_kw = dict(kw)
    if dtype is not None:
        model_kw["dtype"] = dtype
    if options.get("attn_implementation"):
        model_kw["attn_implementation"] = options["attn_implementation"]
    with hub_errors(source, local_files_only):
        processor = processor_class.from_pretrained(source, **kw)
        model = model_class.from_pretrained(source, **model_kw)
    if device is not None:
        model = model.to(device)
    model.eval()
    return processor, model


def run_checkpoint(run_dir: str | Path) -> Path | None:
    """A training run folder's best checkpoint, else its last; None when it has neither."""
    for name in (BEST, LAST):
        folder = Path(run_dir) / CHECKPOINTS / name
        if (folder / "config.json").is_file():
            return folder
    return None


def auto_device(device: str | None) -> str | None:
    """``None`` -> ``"cuda"`` when a GPU is visible (else the adapter's default, CPU)."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else None


def resolve_checkpoint(name_or_path: str | Path) -> tuple[str, dict[str, Any], list[str]]:
    """A hub id or checkpoint folder as given; a training run folder -> its best (else last) checkpoint.

    For a checkpoint inside a run folder (``<run>/checkpoints/<name>``) the family options the model
    was trained with (``model.prompt``, ``model.instruction`` in ``config.resolved.yaml``) are
    returned too, so the model is evaluated with the prompt it learned under.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    notes: list[str] = []
    if path.is_dir() and not (path / "config.json").is_file() and (cand := run_checkpoint(path)) is not None:
        notes.append(f"{text}: a training run folder; evaluating its {CHECKPOINTS}/{cand.name}")
        path, text = cand, str(cand)
    options: dict[str, Any] = {}
    run_cfg = path.parent.parent / "config.resolved.yaml"
    if path.parent.name == CHECKPOINTS and run_cfg.is_file():
        try:
            import yaml

            raw = yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}
            section = raw.get("model") or {}
            options = {k: section[k] for k in ("prompt", "instruction") if section.get(k) is not None}
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            notes.append(f"{run_cfg}: unreadable; the family's default prompt is used")
        if options:
            notes.append(f"{text}: using the run's {', '.join(f'{k}={v!r}' for k, v in options.items())}")
    return text, options, notes
