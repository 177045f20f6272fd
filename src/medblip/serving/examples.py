"""Built-in example images for the page: studies of the synthetic benchmark, rendered in memory.

One study per modality, each with a lesion where the benchmark has one, so a visitor can try the
page without a radiology image at hand. Their true captions come along as the reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    label: str
    reference: str
    data: bytes  # JPEG, as the benchmark writes it


@functools.lru_cache(maxsize=2)
def synthetic_examples(size: int = 256, seed: int = 0, scan: int = 64) -> tuple[Example, ...]:
    """The first study of each modality (preferring one with a finding) among the first ``scan``."""
    from medblip.data.synth import render_record

    chosen: dict[str, Example] = {}
    for index in range(scan):
        row, jpeg, _ = render_record(seed, index, size)
        if row["modality"] in chosen or row["finding"] == "none":
            continue
        side = "" if row["side"] == "none" else f", {row['side']}"
        label = f"{row['modality']} {row['region'].replace('_', ' ')}: {row['finding']}{side} ({row['id']})"
        chosen[row["modality"]] = Example(label, row["caption"], jpeg)
    return tuple(chosen[m] for m in sorted(chosen))
