"""Where a model comes from and how it loads: hub id, checkpoint folder or training run folder; device
and dtype; one-line errors for what ``from_pretrained`` raises.

Family adapters call :func:`load_pretrained` from their ``load``; :mod:`medblip.models.registry` uses
:func:`resolve_source` and :class:`hub_errors` to tell a checkpoint's family. A training run folder
(written by :mod:`medblip.training`) holds ``checkpoints/best`` and ``checkpoints/last``;
:func:`run_checkpoint` and :func:`resolve_checkpoint` are the one place that picks between them.
"""

from __future__ import annotations

import functools
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


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HUB_PROBE_SECONDS = 3.0


def _corrupt_weights(folder: Path, exc: BaseException) -> MedblipError | None:
    """A truncated / damaged weights file, or a pickle refused by weights-only loading, named as such."""
    import pickle

    from safetensors import SafetensorError, safe_open

    from medblip.errors import CorruptFileError

    reader_failed = isinstance(exc, SafetensorError | pickle.UnpicklingError | EOFError) or (
        isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc)) or (
        isinstance(exc, OSError) and exc.errno == 22)  # mmap of a cut-off file: "Invalid argument"
    if not reader_failed:
        return None
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    except OSError:
        files = []
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except Exception:  # noqa: BLE001 - any failure to read the header is the answer
                return CorruptFileError.from_exception(f, exc)
    wanted = ".safetensors" if isinstance(exc, SafetensorError) else ".bin"
    named = next((f for f in files if f.suffix == wanted), files[0] if files else folder)
    return CorruptFileError.from_exception(named, exc)


def check_device(device: Any) -> None:
    """A device this torch can use, else one line naming it and the fix (before any weights are read)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise MedblipError(f"--device {device!r}: not a device name ({exc}); use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise MedblipError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu, or "
                               "install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedblipError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                               f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MedblipError(f"--device {device}: Apple's MPS backend is not available here; use --device cpu")


@functools.lru_cache(maxsize=4)
def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub (or the HTTPS proxy) cannot be reached, found within a few seconds; None when it can.

    One TCP connection in a thread, so that neither a slow DNS nor a silently dropped packet holds the
    caller longer than the timeout (huggingface_hub would retry for minutes).
    """
    import socket
    import threading
    from urllib.parse import urlparse

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=_HUB_PROBE_SECONDS).close()
            result.append(None)
        except OSError as exc:
            result.append(exc.strerror or str(exc) or type(exc).__name__)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(_HUB_PROBE_SECONDS + 0.5)
    what = f"{host}:{port}" + (" (the HTTPS proxy)" if proxy else "")
    if not result:
        return f"{what}: no answer within {_HUB_PROBE_SECONDS:g} s"
    return f"{what}: {result[0]}" if result[0] else None


def hub_access(source: str, local_files_only: bool | None) -> bool | None:
    """``local_files_only`` to load ``source`` with: a hub id with no network fails here, in seconds.

    Local folders, offline mode and ``local_files_only`` pass through. When the hub cannot be reached
    a cached copy is used (``True``); without one the error names the id and the offline switch.
    """
    if local_files_only or _offline(local_files_only) or Path(source).expanduser().exists():
        return local_files_only
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        endpoint = constants.ENDPOINT
        cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:  # noqa: BLE001 - no usable huggingface_hub: let from_pretrained answer
        return local_files_only
    why = _hub_unreachable(endpoint)
    if why is None:
        return local_files_only
    if cached:
        return True
    raise MedblipError(f"model {source!r} is not a local folder and not in the Hugging Face cache, and the hub "
                       f"cannot be reached ({why}); check the id for typos or pass a checkpoint folder (set "
                       "HF_HUB_OFFLINE=1 to use only the local cache without trying the network)")


class hub_errors:  # noqa: N801 - used as a context manager like contextlib helpers
    """Turn from_pretrained's errors for a missing, unreachable or damaged checkpoint into one line."""

    def __init__(self, source: str, local_files_only: bool | None) -> None:
        self.source = source
        self.local_files_only = local_files_only

    def __enter__(self) -> hub_errors:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, MedblipError):
            return False
        folder = Path(self.source).expanduser()
        if folder.is_dir():
            corrupt = _corrupt_weights(folder, exc)
            if corrupt is not None:
                raise corrupt from None
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


#: load options every family takes (``create_model(..., **options)``, the config's ``model.*`` keys)
LOAD_OPTIONS = frozenset({"attn_implementation", "device_map", "load_in_8bit", "load_in_4bit"})


def quantization_config(options: dict[str, Any], dtype: Any = None) -> Any:
    """``load_in_8bit`` / ``load_in_4bit`` -> a ``BitsAndBytesConfig`` (None when neither is set).

    4-bit is QLoRA's: NF4 weights with double quantization, computing in ``dtype`` (default bfloat16).
    bitsandbytes runs on CUDA, and on the CPU from 0.50 (slowly; what the tests use).
    """
    eight, four = bool(options.get("load_in_8bit")), bool(options.get("load_in_4bit"))
    if not (eight or four):
        return None
    if eight and four:
        raise MedblipError("load_in_8bit and load_in_4bit are exclusive; choose one")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        what = "load_in_8bit" if eight else "load_in_4bit"
        raise MedblipError(f"{what} needs bitsandbytes, which is not installed: pip install 'medblip[quantization]'")
    import torch
    from transformers import BitsAndBytesConfig

    compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
    if eight:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_pretrained(family: str, source: str, processor_class: Any, model_class: Any, options: dict[str, Any],
                    known: set[str] | frozenset[str], *, dtype: Any, device: Any,
                    local_files_only: bool | None) -> tuple[Any, Any]:
    """Check a family's load options, then ``from_pretrained`` its processor and model (in eval mode,
    on ``device``); hub and file errors become one-line :class:`MedblipError` s.

    ``device_map`` (e.g. ``"auto"``: spread a 7B model over the visible GPUs and the CPU) and 8/4-bit
    loading place the weights themselves; ``device`` is then not applied.
    """
    known = set(known) | LOAD_OPTIONS
    unknown = sorted(set(options) - known)
    if unknown:
        raise MedblipError(f"unknown option {unknown[0]!r} for family {family}; known: {', '.join(sorted(known))}")
    check_device(device)
    local_files_only = hub_access(source, local_files_only)
    kw: dict[str, Any] = {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    model_kw = dict(kw)
    if dtype is not None:
        model_kw["dtype"] = dtype
    if options.get("attn_implementation"):
        model_kw["attn_implementation"] = options["attn_implementation"]
    quant = quantization_config(options, dtype)
    if quant is not None:
        model_kw["quantization_config"] = quant
        model_kw.setdefault("device_map", options.get("device_map") or "auto")
    elif options.get("device_map") is not None:
        model_kw["device_map"] = options["device_map"]
    with hub_errors(source, local_files_only):
        processor = processor_class.from_pretrained(source, **kw)
        model = model_class.from_pretrained(source, **model_kw)
    if device is not None and "device_map" not in model_kw:
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


GENERATION_CONFIG = "generation_config.json"


def checkpoint_generation_settings(checkpoint: str | Path) -> dict[str, Any]:
    """The decoding settings ``checkpoint`` saved, read without loading the model: for a checkpoint folder
    (:func:`resolve_checkpoint` gives one for a run folder) its generation_config.json, for a hub id the
    cached one (never downloaded). ``{}`` when there is none or it names no decoding setting (see
    :func:`medblip.models.base.generation_config_settings`); a damaged file raises naming it."""
    from transformers import GenerationConfig

    from medblip.models.base import generation_config_settings

    folder = Path(str(checkpoint)).expanduser()
    if folder.is_dir():
        if not (folder / GENERATION_CONFIG).is_file():
            return {}
        try:
            return generation_config_settings(GenerationConfig.from_pretrained(folder))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedblipError(f"{folder / GENERATION_CONFIG}: unreadable ({first}); repair or remove it") from None
    try:
        gen = GenerationConfig.from_pretrained(str(checkpoint), local_files_only=True)
    except (OSError, ValueError):  # not in the cache (or not a hub id): no saved settings to follow
        return {}
    return generation_config_settings(gen)
