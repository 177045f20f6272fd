"""Progress bars of the libraries medblip calls (transformers' "Loading weights" / "Writing model shards",
huggingface_hub's downloads): off for the duration of a block, as they were afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def library_progress(enabled: bool) -> Iterator[None]:
    """``enabled=False``: transformers' and huggingface_hub's bars are silent inside the block; the
    previous setting comes back after it (library callers keep theirs). ``True`` changes nothing."""
    if enabled:
        yield
        return
    import huggingface_hub.utils as hub
    from transformers.utils import logging as tf_logging

    transformers_on = tf_logging.is_progress_bar_enabled()
    hub_off = hub.are_progress_bars_disabled()
    tf_logging.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            tf_logging.enable_progress_bar()
        if not hub_off:
            hub.enable_progress_bars()
