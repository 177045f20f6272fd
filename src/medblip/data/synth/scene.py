"""Sampling what one synthetic study shows (modality, region, finding, side, size, appearance).

The finding's presence and its side are drawn independently of the modality, so a captioner can
only get them right by looking at the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medblip.data.synth import vocab


@dataclass(frozen=True)
class Scene:
    modality: str
    region: str
    technique: str
    finding: str  # one of vocab.FINDINGS or vocab.NO_FINDING
    side: str  # patient's side: "left", "right" or vocab.NO_SIDE
    location: str | None  # anatomical site with the side filled in, e.g. "right lower lobe"
    size_mm: int | None  # nominal lesion diameter (effusion: fluid depth; fracture: line length)
    appearance: str | None

    @property
    def has_finding(self) -> bool:
        return self.finding != vocab.NO_FINDING

    @property
    def side_sign(self) -> float:
        """Image x direction of the finding: patient's right is on the image's left (x < 0)."""
        return -1.0 if self.side == "right" else 1.0

    @property
    def fov_mm(self) -> float:
        return vocab.FOV_MM[(self.modality, self.region)]


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator) -> Scene:
    modality = _choice(rng, vocab.MODALITIES)
    regions = vocab.MODALITY_REGIONS[modality]
    names = list(regions)
    region = names[int(rng.choice(len(names), p=np.array(list(regions.values())) / sum(regions.values())))]
    technique = _choice(rng, vocab.TECHNIQUES[(modality, region)])
    # Presence and side are drawn before (and independently of) anything modality-specific.
    has_finding = rng.random() >= vocab.NONE_RATE
    side = _choice(rng, vocab.SIDES)
    if not has_finding:
        return Scene(modality, region, technique, vocab.NO_FINDING, vocab.NO_SIDE, None, None, None)
    finding = _choice(rng, vocab.REGION_FINDINGS[(modality, region)])
    sites = vocab.LOCATIONS[(modality, region, finding)]
    if isinstance(sites, dict):
        sites = sites[side]
    location = _choice(rng, sites).format(side=side)
    lo, hi = vocab.REGION_SIZE_RANGES_MM.get((modality, region, finding), vocab.SIZE_RANGES_MM[(modality, finding)])
    size_mm = int(rng.integers(lo, hi + 1))
    adjectives = vocab.APPEARANCES.get((modality, region, finding))
    appearance = _choice(rng, adjectives) if adjectives else None
    if modality == "mri" and finding == "mass":
        appearance = vocab.MRI_MASS_SIGNAL[technique]
    return Scene(modality, region, technique, finding, side, location, size_mm, appearance)
