"""Family registry and ``create_model`` (a timm-like factory over one adapter module per family).

Each family module decorates its adapter class with :func:`register_family`; importing
:mod:`medblip.models` imports them all, so the registry is complete before ``create_model`` runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medblip.errors import MedblipError

if TYPE_CHECKING:
    from medblip.models.base import CaptionModel

_FAMILIES: dict[str, type[CaptionModel]] = {}
_ALIASES: dict[str, str] = {}  # alias (lower case) -> family
_MODEL_TYPES: dict[str, str] = {}  # config.json model_type -> family
_HUB_PREFIXES: list[tuple[str, str]] = []  # (lower-case hub id prefix, family)

T = TypeVar("T", bound="type[CaptionModel]")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def create_model(name_or_path: str | Path, family: str | None = None, *, dtype: Any = None,
                 device: Any = None, local_files_only: bool | None = None,
                 **family_options: Any) -> CaptionModel:
    """Load a captioning model from a hub id or a ``save_pretrained`` folder.

    ``family`` defaults to the checkpoint's ``config.json`` ``model_type`` (or a known hub id).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a torch dtype.
    ``family_options`` go to the family adapter (e.g. ``prompt`` for BLIP, ``instruction`` for
    InstructBLIP, ``attn_implementation``); unknown options raise a one-line error.
    """
    import medblip.models  # noqa: F401  (fills the registry)

    source, _folder = resolve_source(name_or_path)
    cls = get_family(family) if family else get_family(detect_family(source, local_files_only=local_files_only))
    return cls.load(source, dtype=parse_dtype(dtype), device=device, local_files_only=local_files_only,
                    **family_options)
