"""Reproducibility record saved with every run: seed, resolved config, versions, git commit."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

_TRACKED_PACKAGES = (
    "medblip", "torch", "transformers", "accelerate", "peft", "tokenizers", "numpy", "pillow",
    "pydicom", "pycocoevalcap", "safetensors",
)


def package_versions() -> dict[str, str | None]:
    return {"python": sys.version.split()[0], **versions_of(*_TRACKED_PACKAGES)}


def versions_of(*packages: str) -> dict[str, str | None]:
    """The installed version of each distribution (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit of the source tree medblip runs from (or of ``start``), plus ``-dirty`` if modified."""
    here = Path(start) if start else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def run_metadata(config: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "seed": seed,
        "config": config,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        **extra,
    }


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch; optionally force deterministic torch kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
