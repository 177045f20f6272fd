"""The shapes corpus (medblip.data.shapes): lay language only, captions true to the pictures, and a
folder the ordinary loader reads, byte-identical for a seed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medblip.data.shapes import MANIFEST, generate_shapes, read_meta
from medblip.data.shapes import vocab as lay
from medblip.data.shapes.captions import write_caption
from medblip.data.shapes.scene import ShapeScene, sample_scene
from medblip.data.synth import vocab as radiology
from medblip.errors import MedblipError

#: Plain words the lay captions share with radiology captions on purpose: where something is and how
#: big, which is what a general-domain captioner brings to radiology (the study's premise).
SHARED_PLAIN_WORDS = {"left", "right", "small", "large", "upper", "lower", "middle"}
_FUNCTION_WORDS = {"a", "an", "and", "in", "of", "on", "or", "the", "with", "no"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def scenes() -> list[tuple[ShapeScene, str]]:
    out = []
    for index in range(1500):
        scene = sample_scene(np.random.default_rng([5, index, 0]))
        out.append((scene, write_caption(scene, np.random.default_rng([5, index, 2]))))
    return out


def _radiology_words() -> set[str]:
    """Every word the synthetic radiology benchmark uses for modality, region, finding, appearance,
    technique, location and negated items."""
    from medblip.data.synth.captions import _NEGATED_ITEMS, _REGION_NOUNS

    texts: list[str] = []
    for group in (radiology.MODALITY_TERMS, radiology.REGION_TERMS, radiology.FINDING_TERMS, _REGION_NOUNS):
        texts += [t for terms in group.values() for t in terms]
    texts += [t for terms in radiology.APPEARANCES.values() for t in terms]
    texts += [t for terms in radiology.TECHNIQUES.values() for t in terms]
    texts += [t for terms in _NEGATED_ITEMS.values() for t in terms]
    for sites in radiology.LOCATIONS.values():
        for site in (sites.values() if isinstance(sites, dict) else [sites]):
            texts += [s.format(side="left") for s in site]
    return set().union(*(_words(t) for t in texts)) - _FUNCTION_WORDS


def test_lay_captions_use_no_radiology_vocabulary(scenes: list[tuple[ShapeScene, str]]) -> None:
    """The clinical extractor finds no modality, body region or finding in any lay caption, and no
    lay word is one of the radiology benchmark's domain words (only plain position and size words)."""
    from medblip.evaluation import extract_concepts

    vocabulary: set[str] = set()
    for _, caption in scenes:
        concepts = extract_concepts(caption)
        assert concepts.modality is None and not concepts.regions and not concepts.findings, caption
        vocabulary |= _words(caption)
    shared = vocabulary & _radiology_words()
    assert shared <= SHARED_PLAIN_WORDS, sorted(shared - SHARED_PLAIN_WORDS)
    assert {"left", "right"} <= vocabulary  # the captions do say where things are


def test_captions_name_the_subject_and_every_mark_with_its_side(scenes: list[tuple[ShapeScene, str]]) -> None:
    counts = {0: 0, 1: 0, 2: 0}
    for scene, caption in scenes:
        words = _words(caption)
        counts[len(scene.marks)] += 1
        if not scene.simple:
            assert scene.shape.split("-")[0] in words, caption
        for mark in scene.marks:
            assert mark.kind in words or (mark.kind == "spot" and "dot" in words), caption
            assert mark.side in words, caption
        if len(scene.marks) == 1:  # one mark: its side and never the other
            other = "right" if scene.marks[0].side == "left" else "left"
            assert other not in words, caption
        if not scene.marks:
            assert not words & {"left", "right"}, caption
    # every kind of picture is frequent: no mark, one, two (and the easy mark-only pictures)
    assert min(counts.values()) > 150, counts
    assert 0.25 < sum(s.simple for s, _ in scenes) / len(scenes) < 0.45


def test_corpus_folder_is_deterministic_and_loads(tmp_path: Path) -> None:
    from medblip.data import load_dataset

    a = generate_shapes(tmp_path / "a", 40, seed=3, size=48)
    generate_shapes(tmp_path / "b", 40, seed=3, size=48)
    assert a.splits == {"train": 38, "validation": 2, "test": 0}
    for name in (MANIFEST, "images/SHAPE_000007.png", "masks/SHAPE_000007.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    rows = [json.loads(line) for line in (tmp_path / "a" / MANIFEST).read_text().splitlines()]
    dataset = load_dataset(tmp_path / "a")
    assert len(dataset) == 40 and {r.split for r in dataset.records} == {"train", "validation"}
    assert read_meta(tmp_path / "a")["n"] == 40
    # each mark's pixels are where its box says, under its own grey level in the mask
    for row in rows:
        mask = np.asarray(Image.open(tmp_path / "a" / row["mask"]))
        assert mask.shape == (48, 48)
        for mark in row["marks"]:
            x0, y0, x1, y1 = mark["bbox"]
            assert (mask[y0:y1, x0:x1] == mark["mask_value"]).any(), row["id"]
        assert bool(mask.any()) == bool(row["marks"])


def test_refuses_bad_arguments_and_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(MedblipError, match="n must be"):
        generate_shapes(tmp_path / "x", 0)
    with pytest.raises(MedblipError, match="size must be"):
        generate_shapes(tmp_path / "x", 10, size=8)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(MedblipError, match="holds no shapes corpus"):
        generate_shapes(tmp_path / "mine", 10)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert lay.MARK_RATE > 0.5  # most pictures have something to look at
