"""Bootstrap intervals and paired tests: coverage of the point estimate, shrinkage, p-values, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from medblip.evaluation.caption_metrics import caption_metrics
from medblip.evaluation.statistics import (
    AdditiveMetric,
    approximate_randomization,
    bootstrap_ci,
    bootstrap_cis,
    f1_metric,
    mean_metric,
    paired_bootstrap,
)


def _scores(n: int, seed: int = 0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.5, 0.2, n), 0, 1)


def test_bootstrap_ci_contains_point_and_shrinks_with_n() -> None:
    small = bootstrap_ci(_scores(40), n_resamples=500, seed=1)
    large = bootstrap_ci(_scores(1600), n_resamples=500, seed=1)
    for ci in (small, large):
        assert ci.low <= ci.value <= ci.high
    assert (large.high - large.low) < 0.35 * (small.high - small.low)  # ~ 1/sqrt(40) shrinkage
    assert small.value == pytest.approx(_scores(40).mean())


def test_bootstrap_is_seeded() -> None:
    values = _scores(100)
    assert bootstrap_ci(values, 300, seed=7) == bootstrap_ci(values, 300, seed=7)
    assert bootstrap_ci(values, 300, seed=7) != bootstrap_ci(values, 300, seed=8)


def test_corpus_metric_intervals_contain_point_and_shrink() -> None:
    rng = np.random.default_rng(0)
    vocab = ["ct", "mri", "chest", "brain", "mass", "nodule", "left", "right", "lobe", "shows", "the", "of",
             "a", "with", "no", "effusion"]

    def corpus(n: int) -> tuple[list[list[str]], list[str]]:
        refs = [[" ".join(rng.choice(vocab, 10))] for _ in range(n)]
        preds = [" ".join(r[0].split()[:6] + list(rng.choice(vocab, 4))) for r in refs]
        return refs, preds

    widths = {}
    for n in (30, 480):
        metrics = caption_metrics(*corpus(n))
        cis = bootstrap_cis(metrics, n_resamples=200, seed=0)
        for name, ci in cis.items():
            assert ci.low <= ci.value <= ci.high, (n, name, ci)
        widths[n] = {name: ci.high - ci.low for name, ci in cis.items()}
        # Resampled CIDEr is biased low (duplicates inflate document frequencies); the interval is
        # re-centred on the point estimate and the bias is reported.
        assert cis["CIDEr"].centred and cis["CIDEr"].bias < 0
        assert "bootstrap_bias" in cis["CIDEr"].to_dict() and "bootstrap_bias" not in cis["BLEU-4"].to_dict()
    for name in widths[30]:
        assert widths[480][name] < widths[30][name], name


def test_f1_and_mean_metrics_with_empty_support() -> None:
    f1 = f1_metric("f1", np.array([[1, 0, 1], [0, 0, 0], [2, 1, 0]]))
    assert f1.value() == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    acc = mean_metric("acc", [1, 0, 1], eligible=[1, 0, 0])
    assert acc.value() == 1.0
    none = mean_metric("acc", [0, 0], eligible=[0, 0])
    assert np.isnan(none.value())
    ci = bootstrap_ci(none, 50)
    assert np.isnan(ci.low) and np.isnan(ci.high)


def test_mixing_equals_recomputing_with_swapped_outputs() -> None:
    rng = np.random.default_rng(0)
    a = AdditiveMetric("m", rng.random((20, 3)), lambda s: s[:, 0] / (s[:, 1] + s[:, 2]))
    b = AdditiveMetric("m", rng.random((20, 3)), a.finalize)
    take = rng.random((5, 20)) < 0.5
    got = a.mixed(b, take)
    for row, mask in zip(got, take, strict=True):
        swapped = np.where(mask[:, None], b.stats, a.stats).sum(axis=0, keepdims=True)
        assert row == pytest.approx(a.finalize(swapped)[0])


@pytest.mark.parametrize("test", [paired_bootstrap, approximate_randomization])
def test_paired_tests_small_p_for_better_system_large_for_identical(test) -> None:
    base = _scores(120, seed=3)
    better = np.clip(base + 0.15 + np.random.default_rng(4).normal(0, 0.05, 120), 0, 1)
    a, b = mean_metric("score", base), mean_metric("score", better)
    clear = test(a, b, n_resamples=500, seed=0)
    assert clear.difference > 0.1
    assert clear.p_value < 0.01
    same = test(a, mean_metric("score", base.copy()), n_resamples=500, seed=0)
    assert same.difference == 0
    assert same.p_value == 1.0
    noisy = test(a, mean_metric("score", _scores(120, seed=9)), n_resamples=500, seed=0)
    assert noisy.p_value > 0.05  # two draws from the same distribution


def test_paired_bootstrap_interval_of_difference_and_size_check() -> None:
    a, b = mean_metric("s", _scores(60)), mean_metric("s", _scores(60) + 0.1)
    r = paired_bootstrap(a, b, n_resamples=300, seed=0)
    assert r.ci_low == pytest.approx(0.1) and r.ci_high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, mean_metric("s", _scores(61)))
