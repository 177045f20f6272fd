"""Degeneration diagnostics: collapse and repetition loops are flagged loudly, healthy output is not."""

from __future__ import annotations

import pytest

from medblip.evaluation.degeneration import degeneration_report

HEALTHY = [
    "CT of the chest shows a nodule in the right upper lobe.",
    "MRI of the brain with a left temporal cyst.",
    "Chest radiograph: large left pleural effusion.",
    "Thyroid ultrasound shows a hypoechoic nodule.",
]


def test_healthy_outputs_are_not_flagged() -> None:
    r = degeneration_report(HEALTHY, [[c] for c in HEALTHY])
    assert not r.collapsed and r.warnings == []
    assert r.distinct_caption_fraction == 1.0
    assert r.length_ratio == pytest.approx(1.0)
    assert r.repeated_ngram_rate == 0.0


def test_collapse_to_one_caption_is_flagged() -> None:
    preds = ["ct scan of the chest"] * 7 + HEALTHY[:3]
    r = degeneration_report(preds, HEALTHY * 2 + HEALTHY[:2])
    assert r.collapsed
    assert r.most_common_share == pytest.approx(0.7)
    assert r.most_common_caption == "ct scan of the chest"
    assert r.distinct_caption_fraction == pytest.approx(0.4)
    assert any("COLLAPSE" in w and "7 of 10" in w for w in r.warnings)


def test_repetition_loops_are_flagged() -> None:
    preds = ["the the the the mass", "left left left left left lung"] + HEALTHY
    r = degeneration_report(preds)
    assert r.collapsed
    assert r.token_run_share == pytest.approx(2 / 6)
    assert any("REPETITION" in w for w in r.warnings)


def test_distinct_n_and_repeated_ngram_rate_values() -> None:
    r = degeneration_report(["a b a b a b", "a b c"])
    # unigrams: a b a b a b a b c -> 3 distinct of 9; bigrams: ab ba ab ba ab ab bc -> 3 of 7
    assert r.distinct_1 == pytest.approx(3 / 9)
    assert r.distinct_2 == pytest.approx(3 / 7)
    # trigrams of caption 1: aba bab aba bab -> 2 of 4 repeat; caption 2: 0 of 1
    assert r.repeated_ngram_rate == pytest.approx((0.5 + 0.0) / 2)
    assert r.mean_reference_length is None
