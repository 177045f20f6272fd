"""Caption-facts consistency and sampling balance of the synthetic benchmark (no rendering needed)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from medblip.data.synth import vocab
from medblip.data.synth.captions import article, concept_cuis, write_caption
from medblip.data.synth.scene import Scene, sample_scene


def _mentions(text: str, term: str) -> bool:
    # Upper-case abbreviations (CT, MR, US, DSA, PET) must match case-sensitively.
    flags = 0 if term.isupper() else re.IGNORECASE
    return re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text, flags) is not None


def _families(text: str, terms: dict[str, tuple[str, ...]]) -> set[str]:
    return {key for key, words in terms.items() if any(_mentions(text, w) for w in words)}


def _sizes_mm(text: str) -> list[float]:
    return [float(v) * (10 if unit == "cm" else 1) for v, unit in re.findall(r"(\d+(?:\.\d+)?) (mm|cm)\b", text)]


@pytest.fixture(scope="module")
def studies() -> list[tuple[Scene, str]]:
    out = []
    for index in range(2000):
        scene = sample_scene(np.random.default_rng([11, index, 0]))
        out.append((scene, write_caption(scene, np.random.default_rng([11, index, 2]))))
    return out


def test_every_caption_names_its_modality_and_region(studies: list[tuple[Scene, str]]) -> None:
    for scene, caption in studies:
        assert _families(caption, vocab.MODALITY_TERMS) == {scene.modality}, caption
        assert _families(caption, vocab.REGION_TERMS) >= {scene.region}, caption


def test_positive_captions_state_finding_side_and_size(studies: list[tuple[Scene, str]]) -> None:
    positives = [(s, c) for s, c in studies if s.has_finding]
    assert len(positives) > 1400
    for scene, caption in positives:
        assert _families(caption, vocab.FINDING_TERMS) == {scene.finding}, caption
        sides = {s for s in vocab.SIDES if _mentions(caption, s)}
        assert sides == {scene.side}, caption
        if scene.finding != "effusion":  # effusions are "left-sided pleural effusion", not "left hemithorax"
            assert scene.location and scene.location in caption
        assert not _families(caption, {"neg": vocab.NEGATION_CUES}), caption
        sizes = _sizes_mm(caption)
        if scene.finding == "effusion":
            assert _mentions(caption, vocab.effusion_grade(scene.size_mm)), caption
            assert all(v == scene.size_mm for v in sizes), caption
        elif scene.finding == "fracture":
            assert sizes == [] and scene.appearance and scene.appearance in caption
        else:
            assert sizes == [scene.size_mm], caption
            assert scene.appearance and scene.appearance in caption


def test_negative_captions_are_phrased_as_normal_reports(studies: list[tuple[Scene, str]]) -> None:
    negatives = [c for s, c in studies if not s.has_finding]
    assert len(negatives) > 300
    for caption in negatives:
        assert _families(caption, {"neg": vocab.NEGATION_CUES}), caption
        assert not any(_mentions(caption, s) for s in vocab.SIDES), caption
        assert not _sizes_mm(caption)
    assert len(set(negatives)) > 100  # many templates and synonyms, not one fixed sentence


def test_captions_vary_in_wording(studies: list[tuple[Scene, str]]) -> None:
    captions = [c for _, c in studies]
    assert len(set(captions)) > 0.9 * len(captions)
    openings = Counter(" ".join(c.split()[:2]) for c in captions)
    assert len(openings) > 40
    for word in ("showing", "demonstrating", "(arrow)", "measuring", "computed tomography", "sonography"):
        assert any(word in c for c in captions), word


def test_side_and_presence_are_independent_of_modality(studies: list[tuple[Scene, str]]) -> None:
    table = np.zeros((len(vocab.MODALITIES), 3))
    for scene, _ in studies:
        table[vocab.MODALITIES.index(scene.modality), ("left", "right", "none").index(scene.side)] += 1
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # df = 10, p = 0.004
    for row in table:
        assert 0.42 < row[1] / (row[0] + row[1]) < 0.58
        assert 0.15 < row[2] / row.sum() < 0.3
    modality_share = table.sum(1) / table.sum()
    assert modality_share.min() > 0.12


def test_every_modality_region_finding_combination_occurs(studies: list[tuple[Scene, str]]) -> None:
    seen = {(s.modality, s.region, s.finding) for s, _ in studies}
    for (modality, region), findings in vocab.REGION_FINDINGS.items():
        for finding in (*findings, vocab.NO_FINDING):
            assert (modality, region, finding) in seen


def test_concept_cuis_follow_the_facts(studies: list[tuple[Scene, str]]) -> None:
    for scene, _ in studies[:300]:
        cuis = concept_cuis(scene)
        assert cuis[0] == vocab.MODALITY_CUIS[scene.modality]
        assert (vocab.FINDING_CUIS.get(scene.finding) in cuis) == scene.has_finding


@pytest.mark.parametrize("word, expected", [
    ("8 mm", "an"), ("18 mm", "an"), ("11 mm", "an"), ("80 mm", "an"), ("1.8 cm", "a"), ("12 mm", "a"),
    ("ill-defined", "an"), ("hypoechoic", "a"), ("FDG-avid", "an"), ("saccular", "a"), ("anechoic", "an"),
])
def test_article(word: str, expected: str) -> None:
    assert article(word) == expected
