"""Synthetic radiology benchmark: procedurally rendered studies with exact ground truth.

``generate(out, n, seed=0, size=384)`` writes a ROCOv2-layout dataset (captions, concepts, images)
plus ``facts.jsonl`` and lesion masks; ``load_facts(out)`` reads the facts back. The vocabulary the
captions use (modality synonyms, regions, findings, sides, negation cues, UMLS CUIs) lives in
:mod:`medblip.data.synth.vocab`. Side convention: the patient's right is on the image's left.
"""

from __future__ import annotations

from medblip.data.synth.generate import (
    SYNTH_VERSION,
    SynthSummary,
    generate,
    load_facts,
    render_record,
    split_counts,
)
from medblip.data.synth.vocab import (
    FINDING_CUIS,
    FINDING_TERMS,
    FINDINGS,
    MODALITIES,
    MODALITY_CUIS,
    MODALITY_TERMS,
    NEGATION_CUES,
    NO_FINDING,
    NO_SIDE,
    REGION_TERMS,
    REGIONS,
    SIDES,
)

__all__ = [
    "FINDINGS",
    "FINDING_CUIS",
    "FINDING_TERMS",
    "MODALITIES",
    "MODALITY_CUIS",
    "MODALITY_TERMS",
    "NEGATION_CUES",
    "NO_FINDING",
    "NO_SIDE",
    "REGIONS",
    "REGION_TERMS",
    "SIDES",
    "SYNTH_VERSION",
    "SynthSummary",
    "generate",
    "load_facts",
    "render_record",
    "split_counts",
]
