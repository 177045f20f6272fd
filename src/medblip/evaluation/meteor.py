"""METEOR through pycocoevalcap's Meteor 1.5 Java process, with resampling and clean shutdown.

pycocoevalcap's corpus METEOR is not a mean of per-image scores: the jar sums every image's
sufficient statistics (lengths, matches per stage, chunks) and scores the sum, except that an image
matched completely in a single chunk adds no chunk (Meteor 1.5's ``MeteorStats.addStats``). With
that one adjustment the statistics are additive, so the score of any reweighting of the images is
the jar's score of the weighted sum of the per-image statistic vectors. Each image's statistics are fetched once; a batch of resamples is then
one ``EVAL`` request whose "segments" are the resamples' summed vectors, and the per-segment scores
the jar returns are the resamples' corpus scores (exactly its own aggregation).

The jar takes ~10 s to start (it loads a paraphrase table), so one :class:`MeteorSession` serves
all systems of an evaluation; it is a context manager and always stops the Java process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from medblip.evaluation.statistics import AdditiveMetric

# Resamples per EVAL request, so that a request line stays a few hundred kilobytes.
_EVAL_BATCH = 200
# SCORE requests written before their answers are read.
_STAT_BATCH = 64
# Positions in Meteor 1.5's statistics line: test length, reference length, ..., chunks, test
# matches, reference matches.
_TEST_LEN, _REF_LEN, _CHUNKS, _TEST_MATCHES, _REF_MATCHES = 0, 1, -3, -2, -1


class MeteorSession:
    def __init__(self) -> None:
        from pycocoevalcap.meteor.meteor import Meteor

        self._meteor: Any = Meteor()

    def __enter__(self) -> MeteorSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        meteor, self._meteor = self._meteor, None
        if meteor is None:
            return
        proc = meteor.meteor_p
        with meteor.lock:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        # pycocoevalcap's own __del__ runs later on the reaped process: closing a closed pipe and
        # killing a finished Popen are no-ops, so nothing is left behind.

    def _require(self) -> Any:
        if self._meteor is None:
            raise RuntimeError("the METEOR session is closed")
        return self._meteor

    def statistics(self, references: Sequence[Sequence[str]], predictions: Sequence[str],
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Per-image METEOR sufficient statistics (images x fields), tokenised text in, adjusted so
        that they add up to the jar's corpus statistics."""
        meteor = self._require()
        pairs = list(zip(references, predictions, strict=True))
        rows = []
        with meteor.lock:
            # Requests are pipelined in small batches: one round trip per caption is dominated by
            # process wake-ups, and a small batch keeps both pipes far below their buffer size.
            for start in range(0, len(pairs), _STAT_BATCH):
                batch = pairs[start:start + _STAT_BATCH]
                for refs, hyp in batch:
                    # Same request as pycocoevalcap's Meteor._stat; '|||' separates fields.
                    hyp = hyp.replace("|||", "").replace("  ", " ")
                    line = " ||| ".join(("SCORE", " ||| ".join(r.replace("|||", "") for r in refs), hyp))
                    meteor.meteor_p.stdin.write(f"{line}\n".encode())
                meteor.meteor_p.stdin.flush()
                for _ in batch:
                    rows.append([float(x) for x in meteor.meteor_p.stdout.readline().decode().split()])
                if progress:
                    progress(len(batch))
        widths = {len(r) for r in rows}
        if len(widths) > 1:
            raise RuntimeError(f"METEOR returned statistics of varying width: {sorted(widths)}")
        stats = np.asarray(rows, dtype=np.float64)
        if len(stats):
            perfect = ((stats[:, _TEST_MATCHES] == stats[:, _TEST_LEN])
                       & (stats[:, _REF_MATCHES] == stats[:, _REF_LEN]) & (stats[:, _CHUNKS] == 1))
            stats[perfect, _CHUNKS] = 0.0
        return stats

    def score_sums(self, sums: np.ndarray) -> np.ndarray:
        """The jar's METEOR score of each row of summed statistics."""
        meteor = self._require()
        sums = np.atleast_2d(sums)
        out: list[float] = []
        with meteor.lock:
            for start in range(0, len(sums), _EVAL_BATCH):
                batch = sums[start:start + _EVAL_BATCH]
                line = "EVAL ||| " + " ||| ".join(" ".join(repr(float(x)) for x in row) for row in batch)
                meteor.meteor_p.stdin.write(f"{line}\n".encode())
                meteor.meteor_p.stdin.flush()
                out.extend(float(meteor.meteor_p.stdout.readline().strip()) for _ in range(len(batch)))
                meteor.meteor_p.stdout.readline()  # the aggregate over the batch, not needed
        return np.asarray(out)

    def compute_score(self, gts: dict, res: dict) -> float:
        """pycocoevalcap's own ``Meteor.compute_score`` (the reference computation)."""
        return float(self._require().compute_score(gts, res)[0])

    def metric(self, references: Sequence[Sequence[str]], predictions: Sequence[str], name: str = "METEOR",
               progress: Callable[[int], None] | None = None) -> AdditiveMetric:
        stats = self.statistics(references, predictions, progress)
        return AdditiveMetric(name, stats, self.score_sums)

