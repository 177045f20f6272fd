"""medblip: fine-tune, evaluate, compare and explain vision-language models for radiology captioning.

The library is importable without the command line interface (``medblip.cli``). The quickest way in::

    import medblip
    m = medblip.load("runs/my-blip")           # hub id, checkpoint or training run folder
    m.caption(["scan.dcm", "xray.png"], num_beams=3)

``medblip.load`` and ``medblip.Captioner`` live in :mod:`medblip.api` (imported on first use, so that
``import medblip`` stays light).
"""

from __future__ import annotations

from typing import Any

from medblip._version import __version__

__all__ = ["Captioner", "__version__", "load"]
_LAZY = ("Captioner", "load")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from medblip import api

        return getattr(api, name)
    raise AttributeError(f"module 'medblip' has no attribute {name!r}")
