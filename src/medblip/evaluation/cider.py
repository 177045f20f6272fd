"""CIDEr-D that can be recomputed cheaply on bootstrap resamples.

pycocoevalcap's ``Cider`` (which is CIDEr-D: clipped tf-idf n-gram vectors, Gaussian length
penalty with sigma 6, scores x 10) takes its document frequencies from the references of the
images being scored, so a resample of images changes every idf. Recomputing it in Python per
resample would be slow; here the n-gram counts are extracted once (with pycocoevalcap's own
``precook``), and for a resample only the document frequencies are re-summed and the three sums
that make up each cosine (numerator and two norms) are re-weighted by the new squared idf:

    min(tf_h * idf, tf_r * idf) * tf_r * idf = min(tf_h, tf_r) * tf_r * idf**2   (idf >= 0).

With all weights 1 this reproduces ``pycocoevalcap.cider.Cider`` (tested to 1e-9), including its
quirk of measuring caption length for the penalty in bigrams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medblip.evaluation.statistics import AdditiveMetric, Resamplable, mean_metric

_ORDERS = 4


class CiderD:
    """CIDEr-D of one system's captions against the references, for any reweighting of images."""

    name = "CIDEr"
    # Duplicated images in a resample inflate document frequencies: see medblip.evaluation.statistics.
    centre_bootstrap = True

    def __init__(self, references: Sequence[Sequence[str]], predictions: Sequence[str], sigma: float = 6.0,
                 name: str = "CIDEr") -> None:
        from pycocoevalcap.cider.cider_scorer import precook

        if len(references) != len(predictions):
            raise ValueError("references and predictions differ in length")
        self.name = name
        self.sigma = sigma
        self._n = len(predictions)
        vocab: dict[tuple[str, ...], int] = {}

        def index(gram: tuple[str, ...]) -> int:
            return vocab.setdefault(gram, len(vocab))

        presence_img, presence_col = [], []
        h_row, h_col, h_val = [], [], []
        r_row, r_col, r_val = [], [], []
        c_row, c_col, c_val = [], [], []
        pair_img, pair_delta = [], []
        self._n_refs = np.zeros(self._n)
        for i, (refs, hyp) in enumerate(zip(references, predictions, strict=True)):
            if not refs:
                raise ValueError(f"image {i} has no reference")
            hyp_counts = precook(hyp, _ORDERS)
            hyp_len = sum(tf for g, tf in hyp_counts.items() if len(g) == 2)
            for g, tf in hyp_counts.items():
                h_row.append(i * _ORDERS + len(g) - 1)
                h_col.append(index(g))
                h_val.append(tf * tf)
            seen: set[int] = set()
            self._n_refs[i] = len(refs)
            for ref in refs:
                p = len(pair_img)
                pair_img.append(i)
                ref_counts = precook(ref, _ORDERS)
                ref_len = sum(tf for g, tf in ref_counts.items() if len(g) == 2)
                pair_delta.append(hyp_len - ref_len)
                for g, tf in ref_counts.items():
                    col = index(g)
                    seen.add(col)
                    r_row.append(p * _ORDERS + len(g) - 1)
                    r_col.append(col)
                    r_val.append(tf * tf)
                    if g in hyp_counts:
                        c_row.append(p * _ORDERS + len(g) - 1)
                        c_col.append(col)
                        c_val.append(min(hyp_counts[g], tf) * tf)
            presence_img.extend([i] * len(seen))
            presence_col.extend(seen)

        def arr(x: list, dtype: type = np.int64) -> np.ndarray:
            return np.asarray(x, dtype=dtype)

        self._vocab_size = len(vocab)
        self._presence = (arr(presence_img), arr(presence_col))
        self._hyp = (arr(h_row), arr(h_col), arr(h_val, np.float64))
        self._ref = (arr(r_row), arr(r_col), arr(r_val, np.float64))
        self._common = (arr(c_row), arr(c_col), arr(c_val, np.float64))
        self._pair_img = arr(pair_img)
        delta = arr(pair_delta, np.float64)
        self._penalty = np.exp(-(delta**2) / (2 * sigma**2))
        self._full_scores: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self._n

    def _scores_for(self, weights: np.ndarray) -> np.ndarray:
        """Per-image CIDEr-D when the corpus is the images repeated ``weights`` times."""
        img, col = self._presence
        df = np.bincount(col, weights=weights[img], minlength=self._vocab_size)
        idf = np.log(float(weights.sum())) - np.log(np.maximum(1.0, df))
        idf2 = idf * idf
        n_pairs = len(self._pair_img)

        def row_sums(part: tuple[np.ndarray, np.ndarray, np.ndarray], rows: int) -> np.ndarray:
            r, c, v = part
            return np.bincount(r, weights=v * idf2[c], minlength=rows * _ORDERS).reshape(rows, _ORDERS)

        norm_h = np.sqrt(row_sums(self._hyp, self._n))[self._pair_img]
        norm_r = np.sqrt(row_sums(self._ref, n_pairs))
        num = row_sums(self._common, n_pairs)
        ok = (norm_h != 0) & (norm_r != 0)
        sim = np.where(ok, num / np.where(ok, norm_h * norm_r, 1.0), num) * self._penalty[:, None]
        per_image = np.bincount(self._pair_img, weights=sim.mean(axis=1), minlength=self._n)
        return per_image / self._n_refs * 10.0

    def per_image(self) -> np.ndarray:
        if self._full_scores is None:
            self._full_scores = self._scores_for(np.ones(self._n))
        return self._full_scores

    def value(self) -> float:
        return float(self.per_image().mean()) if self._n else float("nan")

    def on_weights(self, weights: np.ndarray) -> np.ndarray:
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return np.array([float(w @ self._scores_for(w) / w.sum()) for w in weights])

    def as_additive(self) -> AdditiveMetric:
        """Per-image scores under the full set's document frequencies (which depend on the references
        only, so they are the same for every system scored against them)."""
        return mean_metric(self.name, self.per_image())

    def mixed(self, other: Resamplable, take_other: np.ndarray) -> np.ndarray:
        if not isinstance(other, CiderD):
            raise TypeError(f"cannot mix CIDEr with {other!r}")
        return self.as_additive().mixed(other.as_additive(), take_other)
