"""Which caption words are worth an attention overlay: the clinical terms first (modality, region,
finding, side, as the clinical concept extractor of :mod:`medblip.evaluation.clinical` finds them),
then the other content words; punctuation and function words never."""

from __future__ import annotations

import re
from collections.abc import Sequence

from medblip.evaluation.clinical import TERM_CATEGORIES, term_spans

_FUNCTION_WORDS = """
a an the and or but nor of in on at to for from by with without within into onto over under above below
between through during after before than then as is are was were be been being has have had do does did
this that these those there here it its it's which who whom whose what where when while
no not also both each either neither any all some such very more most less least other another same
can could may might will would shall should must s
"""
#: English function words: their maps say nothing about the image
STOP_WORDS = frozenset(_FUNCTION_WORDS.split())

_CONTENT = re.compile(r"\w", re.UNICODE)


def is_content_word(word: str) -> bool:
    """A word with a letter or digit that is not a function word ("(", ":", "of", "the" are not)."""
    key = word.strip().lower().strip("'\".,;:()[]{}")
    return bool(_CONTENT.search(key)) and key not in STOP_WORDS


def rank_words(words: Sequence[str], limit: int | None = None) -> list[int]:
    """Indices of ``words`` (a caption's words, in order) to draw: clinical terms by category
    (:data:`TERM_CATEGORIES`) then position, then the other content words by position."""
    text, starts = "", []
    for w in words:
        starts.append(len(text))
        text += w + " "
    category: dict[int, int] = {}
    for start, end, cat, _ in term_spans(text):
        for i, s in enumerate(starts):
            if s < end and s + len(words[i]) > start and is_content_word(words[i]):
                category.setdefault(i, TERM_CATEGORIES.index(cat))
    clinical = sorted(category, key=lambda i: (category[i], i))
    others = [i for i, w in enumerate(words) if i not in category and is_content_word(w)]
    ranked = clinical + others
    return ranked[:limit] if limit is not None else ranked
