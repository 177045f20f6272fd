"""Bootstrap confidence intervals and paired significance tests for corpus-level metrics.

Corpus metrics (BLEU, CIDEr, METEOR) are not means of per-image scores, so a bootstrap must
recompute the corpus metric on every resample of images. Every metric here is a :class:`Resamplable`:
it evaluates itself for a batch of image *weights* (how often each image occurs in a resample), which
lets the metric precompute per-image statistics once and makes a resample cost one weighted sum.

* :func:`bootstrap_cis`: percentile intervals; all metrics share the same resamples.
* :func:`paired_bootstrap`: the two systems are evaluated on the same resamples; the p-value is that
  of the centred (null-shifted) bootstrap distribution of the difference, two-sided
  (Berg-Kirkpatrick et al., 2012; Koehn, 2004).
* :func:`approximate_randomization`: each image's two outputs are swapped with probability 1/2;
  the p-value is the share of shuffles whose |difference| reaches the observed one (Noreen, 1989;
  Riezler and Maxwell, 2005), with the usual +1 correction so that it is never 0.

Everything is seeded: the same seed gives the same resamples, hence the same intervals.

CIDEr needs care: recomputing its document frequencies on a resample counts a duplicated image's
n-grams two or three times, which lowers their idf, so resampled CIDEr is biased low (strongly on
small or diverse sets) and a plain percentile interval can miss the point estimate altogether.
Metrics with such a resampling artefact set ``centre_bootstrap = True``; their bootstrap
distribution is shifted so that its median is the point estimate (its spread is kept). Every
interval reports the raw bootstrap bias (mean of the resamples minus the point estimate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Upper bound on the number of weight-matrix cells materialised at once.
_CELLS_PER_CHUNK = 2_000_000


@runtime_checkable
class Resamplable(Protocol):
    """A corpus-level metric that can be recomputed for reweighted sets of images."""

    name: str

    @property
    def n(self) -> int: ...

    def value(self) -> float: ...

    # Optional: ``centre_bootstrap = True`` for metrics whose resamples are biased by construction.

    def on_weights(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` (resamples x images, counts) -> the metric on each resample."""
        ...

    def mixed(self, other: Resamplable, take_other: np.ndarray) -> np.ndarray:
        """``take_other`` (shuffles x images, bool) -> the metric when the marked images take
        ``other``'s outputs (same images and references, another system)."""
        ...


class AdditiveMetric:
    """A metric that is a function of per-image statistics summed over images.

    Means (ROUGE-L, accuracy), ratios (F1 from tp/fp/fn) and BLEU (clipped n-gram counts and lengths)
    are all of this form, so resampling and swapping are exact and cheap.
    """

    def __init__(self, name: str, stats: np.ndarray, finalize: Callable[[np.ndarray], np.ndarray]) -> None:
        stats = np.asarray(stats, dtype=np.float64)
        if stats.ndim == 1:
            stats = stats[:, None]
        self.name = name
        self.stats = stats
        self.finalize = finalize

    @property
    def n(self) -> int:
        return int(self.stats.shape[0])

    def value(self) -> float:
        return float(self.finalize(self.stats.sum(axis=0, keepdims=True))[0])

    def on_weights(self, weights: np.ndarray) -> np.ndarray:
        return self.finalize(np.asarray(weights, dtype=np.float64) @ self.stats)

    def mixed(self, other: Resamplable, take_other: np.ndarray) -> np.ndarray:
        if not isinstance(other, AdditiveMetric) or other.stats.shape != self.stats.shape:
            raise TypeError(f"cannot mix {self.name} with {getattr(other, 'name', other)!r}")
        base = self.stats.sum(axis=0)
        return self.finalize(base + np.asarray(take_other, dtype=np.float64) @ (other.stats - self.stats))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def mean_metric(name: str, values: np.ndarray | list[float], eligible: np.ndarray | None = None) -> AdditiveMetric:
    """Mean of per-image ``values`` (over ``eligible`` images only, when given)."""
    values = np.asarray(values, dtype=np.float64)
    mask = np.ones_like(values) if eligible is None else np.asarray(eligible, dtype=np.float64)
    stats = np.stack([np.where(mask > 0, values, 0.0), mask], axis=1)
    return AdditiveMetric(name, stats, lambda s: _safe_ratio(s[:, 0], s[:, 1]))


def f1_metric(name: str, tp_fp_fn: np.ndarray) -> AdditiveMetric:
    """Micro-averaged F1 from per-image (tp, fp, fn) counts."""
    return AdditiveMetric(name, np.asarray(tp_fp_fn, dtype=np.float64),
                          lambda s: _safe_ratio(2 * s[:, 0], 2 * s[:, 0] + s[:, 1] + s[:, 2]))


@dataclass(frozen=True)
class ConfidenceInterval:
    value: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    #: mean of the resampled values minus the point estimate (before any centring)
    bias: float = float("nan")
    #: whether the interval comes from a median-centred bootstrap distribution
    centred: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {"value": _num(self.value), "ci_low": _num(self.low), "ci_high": _num(self.high)}
        if self.centred:
            out["bootstrap_bias"] = _num(self.bias)
        return out


@dataclass(frozen=True)
class PairedResult:
    metric: str
    method: str
    a: float
    b: float
    #: b - a
    difference: float
    p_value: float
    n_resamples: int
    #: percentile interval of the resampled difference (bootstrap only)
    ci_low: float | None = None
    ci_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _chunks(n_images: int, n_draws: int) -> Iterator[int]:
    size = max(1, _CELLS_PER_CHUNK // max(1, n_images))
    done = 0
    while done < n_draws:
        step = min(size, n_draws - done)
        yield step
        done += step


def bootstrap_weights(n_images: int, n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Resamples of ``n_images`` images with replacement, as count matrices, in chunks."""
    rng = np.random.default_rng(seed)
    p = np.full(n_images, 1.0 / n_images)
    for step in _chunks(n_images, n_resamples):
        yield rng.multinomial(n_images, p, size=step).astype(np.float64)


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_cis(metrics: Mapping[str, Resamplable], n_resamples: int = 1000, seed: int = 0,
                  confidence: float = 0.95,
                  progress: Callable[[int], None] | None = None) -> dict[str, ConfidenceInterval]:
    """Percentile bootstrap intervals for several metrics over the same images and resamples."""
    if not metrics:
        return {}
    sizes = {m.n for m in metrics.values()}
    if len(sizes) != 1:
        raise ValueError(f"metrics cover different numbers of images: {sorted(sizes)}")
    n = sizes.pop()
    points = {name: m.value() for name, m in metrics.items()}
    if n_resamples <= 0 or n == 0:
        return {name: ConfidenceInterval(v, float("nan"), float("nan"), confidence, 0) for name, v in points.items()}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for weights in bootstrap_weights(n, n_resamples, seed):
        for name, m in metrics.items():
            samples[name].append(np.asarray(m.on_weights(weights), dtype=np.float64))
        if progress:
            progress(len(weights))
    out = {}
    for name, chunks in samples.items():
        values = np.concatenate(chunks)
        centred = bool(getattr(metrics[name], "centre_bootstrap", False))
        finite = values[np.isfinite(values)]
        bias = float(finite.mean() - points[name]) if finite.size else float("nan")
        if centred and finite.size and np.isfinite(points[name]):
            values = values + (points[name] - float(np.median(finite)))
        low, high = _percentile_interval(values, confidence)
        out[name] = ConfidenceInterval(points[name], low, high, confidence, n_resamples, bias, centred)
    return out


def bootstrap_ci(metric: Resamplable | np.ndarray | list[float], n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> ConfidenceInterval:
    """Bootstrap interval of one metric; a plain array is treated as per-image values to average."""
    if not isinstance(metric, Resamplable):
        metric = mean_metric("mean", np.asarray(metric, dtype=np.float64))
    return bootstrap_cis({metric.name: metric}, n_resamples, seed, confidence)[metric.name]


def paired_bootstrap(a: Resamplable, b: Resamplable, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> PairedResult:
    """Two-sided paired bootstrap test of ``b - a`` on the same images."""
    _check_pair(a, b)
    va, vb = a.value(), b.value()
    delta = vb - va
    diffs = np.concatenate([np.asarray(b.on_weights(w)) - np.asarray(a.on_weights(w))
                            for w in bootstrap_weights(a.n, n_resamples, seed)])
    diffs = diffs[np.isfinite(diffs)]
    # Centring the bootstrap distribution on 0 gives the null distribution of the difference.
    extreme = np.count_nonzero(np.abs(diffs - delta) >= abs(delta) - 1e-12)
    p = (extreme + 1) / (diffs.size + 1)
    if diffs.size and (getattr(a, "centre_bootstrap", False) or getattr(b, "centre_bootstrap", False)):
        diffs = diffs + (delta - float(np.median(diffs)))
    low, high = _percentile_interval(diffs, confidence)
    return PairedResult(a.name, "bootstrap", va, vb, delta, float(min(1.0, p)), n_resamples, low, high)


def approximate_randomization(a: Resamplable, b: Resamplable, n_resamples: int = 1000,
                              seed: int = 0) -> PairedResult:
    """Two-sided approximate randomisation test of ``b - a`` on the same images."""
    _check_pair(a, b)
    va, vb = a.value(), b.value()
    delta = vb - va
    rng = np.random.default_rng(seed)
    diffs = []
    for step in _chunks(a.n, n_resamples):
        swap = rng.random((step, a.n)) < 0.5
        diffs.append(np.asarray(b.mixed(a, swap)) - np.asarray(a.mixed(b, swap)))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    extreme = np.count_nonzero(np.abs(d) >= abs(delta) - 1e-12)
    p = (extreme + 1) / (d.size + 1)
    return PairedResult(a.name, "randomization", va, vb, delta, float(min(1.0, p)), n_resamples)


def paired_significance(a: Resamplable, b: Resamplable, method: str = "bootstrap", n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95) -> PairedResult:
    if method == "bootstrap":
        return paired_bootstrap(a, b, n_resamples, seed, confidence)
    if method in {"randomization", "randomisation", "approximate-randomization"}:
        return approximate_randomization(a, b, n_resamples, seed)
    raise ValueError(f"unknown paired test {method!r}: use 'bootstrap' or 'randomization'")


def _check_pair(a: Resamplable, b: Resamplable) -> None:
    if a.n != b.n:
        raise ValueError(f"paired test needs the same images: {a.n} vs {b.n}")
    if a.n == 0:
        raise ValueError("paired test needs at least one image")
