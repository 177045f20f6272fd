"""Degeneration diagnostics: does a captioner say the same thing for every image, or loop?

Collapse to one generic caption and runaway repetition ("the the the ...") are the failures users
of BLIP fine-tuning report most; word-overlap metrics can stay deceptively high through both
(a generic "ct scan of the chest" shares many n-grams with every chest CT reference).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from medblip.results import Degeneration

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")

#: share of images with the single most frequent caption above which outputs count as collapsed
COLLAPSE_SHARE = 0.5
#: a token repeated this many times in a row counts as a loop
RUN_LENGTH = 4
#: share of captions with such a loop above which outputs count as degenerate
RUN_SHARE = 0.1


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _longest_run(tokens: Sequence[str]) -> int:
    best = run = 0
    prev = None
    for tok in tokens:
        run = run + 1 if tok == prev else 1
        prev = tok
        best = max(best, run)
    return best


#: the diagnostics of one system's captions (the result schema's type; ``to_dict`` is ``model_dump``)
DegenerationReport = Degeneration


def degeneration_report(predictions: Sequence[str], references: Sequence[str | Sequence[str]] | None = None,
                        *, collapse_share: float = COLLAPSE_SHARE, run_length: int = RUN_LENGTH,
                        run_share: float = RUN_SHARE, repeat_n: int = 3) -> DegenerationReport:
    """Diversity and repetition statistics of ``predictions`` (lengths in words)."""
    n = len(predictions)
    normalised = [" ".join(words(p)) for p in predictions]
    tokens = [t.split() for t in normalised]
    counts = Counter(normalised)
    top, top_count = counts.most_common(1)[0] if counts else ("", 0)

    def distinct(k: int) -> float:
        grams = [g for toks in tokens for g in _ngrams(toks, k)]
        return len(set(grams)) / len(grams) if grams else 0.0

    repeat_rates = []
    for toks in tokens:
        grams = _ngrams(toks, repeat_n)
        if grams:
            repeat_rates.append(1.0 - len(set(grams)) / len(grams))
    runs = sum(_longest_run(toks) >= run_length for toks in tokens)
    lengths = [len(t) for t in tokens]
    mean_len = sum(lengths) / n if n else 0.0

    ref_len = None
    if references is not None:
        ref_lengths = []
        for ref in references:
            refs = [ref] if isinstance(ref, str) else list(ref)
            ref_lengths.append(sum(len(words(r)) for r in refs) / max(1, len(refs)))
        ref_len = sum(ref_lengths) / len(ref_lengths) if ref_lengths else None

    report = DegenerationReport(
        n_captions=n,
        distinct_caption_fraction=len(counts) / n if n else 0.0,
        most_common_caption=top,
        most_common_share=top_count / n if n else 0.0,
        distinct_1=distinct(1),
        distinct_2=distinct(2),
        repeated_ngram_rate=sum(repeat_rates) / len(repeat_rates) if repeat_rates else 0.0,
        token_run_share=runs / n if n else 0.0,
        empty_share=sum(1 for t in tokens if not t) / n if n else 0.0,
        mean_length=mean_len,
        mean_reference_length=ref_len,
        length_ratio=mean_len / ref_len if ref_len else None,
        collapsed=False,
    )
    if n >= 2 and report.most_common_share > collapse_share:
        report.warnings.append(
            f"OUTPUT COLLAPSE: {top_count} of {n} captions ({report.most_common_share:.0%}) are the same "
            f"caption {top!r}; the model ignores the image (check learning rate, frozen encoder, data)")
    if report.token_run_share > run_share:
        report.warnings.append(
            f"REPETITION LOOPS: {runs} of {n} captions ({report.token_run_share:.0%}) repeat a token "
            f"{run_length}+ times in a row; consider repetition_penalty / no_repeat_ngram_size")
    if report.empty_share > run_share:
        report.warnings.append(f"EMPTY OUTPUTS: {report.empty_share:.0%} of captions are empty")
    report.collapsed = bool(report.warnings)
    return report
