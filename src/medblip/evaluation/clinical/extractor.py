"""Rule-based extraction of modality, body regions, findings and laterality from a caption.

Findings carry a status, decided NegEx-style (Chapman et al., 2001): a *pre* trigger ("no",
"without", "no evidence of", "possible", "suspicious for") governs the findings after it, a *post*
trigger ("was excluded", "not seen", "cannot be excluded") the findings before it. A scope ends at
sentence punctuation, at a terminator word ("but", "however", "showing", ...) or after a few words;
backward scopes also end at a comma, forward ones do not, so "no effusion, pneumothorax or
consolidation" negates all three. The nearest governing trigger wins. Pseudo-triggers ("no change",
"not only") are matched so that their "no"/"not" negates nothing.

Modalities are never negated: "non-contrast CT" and "MRI without gadolinium" are still CT and MRI.
The *primary* modality is the first one mentioned; combined phrases put their main modality first
(see ``modality_combinations`` in the lexicon): "CT angiography" is CT with ``angiography`` also
listed and the ``angiography`` flag set, "PET-CT" is PET with CT also listed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from medblip.evaluation.clinical.lexicon import (
    NEG_POST,
    NEG_PRE,
    UNC_POST,
    UNC_PRE,
    Lexicon,
    Match,
    load_lexicon,
)

Status = Literal["present", "negated", "uncertain"]
UncertainAs = Literal["present", "absent"]

# Typographic dashes and quotes map one-to-one onto ASCII so that offsets stay valid.
_ASCII = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
                        "\u2212": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u00a0": " "})
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Finding:
    label: str
    status: Status
    text: str
    #: the trigger phrase that decided a negated/uncertain status
    trigger: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.label, "status": self.status, "text": self.text, "trigger": self.trigger}


@dataclass(frozen=True)
class Concepts:
    text: str
    #: the first modality mentioned, or None
    modality: str | None
    #: every modality mentioned, in order of first mention
    modalities: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    #: one entry per mention, in text order
    findings: tuple[Finding, ...] = ()
    #: sides mentioned ("left", "right", "bilateral"), in order of first mention
    sides: tuple[str, ...] = ()
    _status: dict[str, Status] = field(default_factory=dict, repr=False, compare=False)

    @property
    def angiography(self) -> bool:
        return "angiography" in self.modalities

    @property
    def laterality(self) -> str | None:
        """One side for the caption: ``bilateral`` when both sides (or 'bilateral') are mentioned."""
        sides = set(self.sides)
        if "bilateral" in sides or {"left", "right"} <= sides:
            return "bilateral"
        return next(iter(self.sides), None)

    @property
    def finding_status(self) -> dict[str, Status]:
        """Per finding label: present if any mention is present, else uncertain if any is, else negated."""
        return dict(self._status)

    def findings_present(self, uncertain_as: UncertainAs = "present") -> frozenset[str]:
        keep = {"present", "uncertain"} if uncertain_as == "present" else {"present"}
        return frozenset(label for label, status in self._status.items() if status in keep)

    def summary(self) -> dict[str, Any]:
        """What the caption says, without the mentions: :class:`medblip.results.ConceptSummary`'s fields."""
        return {"modality": self.modality, "modalities": list(self.modalities), "regions": list(self.regions),
                "sides": list(self.sides), "findings": dict(self._status)}

    @classmethod
    def from_summary(cls, summary: dict[str, Any], text: str = "") -> Concepts:
        """The concepts back from :meth:`summary` (the mentions are not kept)."""
        return cls(text=text, modality=summary.get("modality"), modalities=tuple(summary.get("modalities", ())),
                   regions=tuple(summary.get("regions", ())), sides=tuple(summary.get("sides", ())),
                   _status=dict(summary.get("findings", {})))

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "modality": self.modality,
            "modalities": list(self.modalities),
            "angiography": self.angiography,
            "regions": list(self.regions),
            "findings": [{"finding": label, "status": status} for label, status in self._status.items()],
            "mentions": [f.to_dict() for f in self.findings],
            "laterality": self.laterality,
            "sides": list(self.sides),
        }


@lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    """One character in, one out: lower-cased, accents dropped ("É" -> "e")."""
    low = c.lower()
    if len(low) != 1:  # a few characters lower-case to two ("İ"); keep offsets aligned
        return c
    if low.isascii():
        return low
    base = unicodedata.normalize("NFD", low)[0]
    return base if base.isascii() else low


def _lower(text: str) -> str:
    text = text.translate(_ASCII)
    if text.isascii():
        return text.lower()
    return "".join(_fold_char(c) for c in text)


def _ordered_labels(matches: list[Match]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(label for m in matches for label in m.labels))


#: the term categories of :func:`term_spans`, most telling first
TERM_CATEGORIES: tuple[str, ...] = ("modality", "region", "finding", "side")


def term_spans(text: str, lexicon: Lexicon | None = None) -> list[tuple[int, int, str, tuple[str, ...]]]:
    """``(start, end, category, labels)`` of every lexicon term in ``text`` (category one of
    :data:`TERM_CATEGORIES`), non-overlapping (the longer match wins), in text order."""
    if not text:
        return []
    low = _lower(text)
    if len(low) != len(text):
        return []
    lex = lexicon or load_lexicon()
    found = []
    for cat, matcher in (("modality", lex.modality_matcher), ("side", lex.laterality_matcher),
                         ("finding", lex.finding_matcher), ("region", lex.region_matcher)):
        found += [(m.start, m.end, cat, tuple(m.labels)) for m in matcher.find(low, text) if m.labels]
    found.sort(key=lambda t: (t[0], -(t[1] - t[0])))
    out, end = [], -1
    for t in found:
        if t[0] >= end:
            out.append(t)
            end = t[1]
    return out


def extract_concepts(text: str, lexicon: Lexicon | str | Path | None = None) -> Concepts:
    """Modality, regions, findings (with negation/uncertainty) and laterality of one caption."""
    path = lexicon.path if isinstance(lexicon, Lexicon) else (str(lexicon) if lexicon is not None else None)
    return _extract_cached(text if isinstance(text, str) else str(text), path)


@lru_cache(maxsize=65536)
def _extract_cached(text: str, lexicon_path: str | None) -> Concepts:
    lex = load_lexicon(lexicon_path)
    original = text.translate(_ASCII)
    low = _lower(text)

    modality_matches = [m for m in lex.modality_matcher.find(low, original) if m.labels]
    modalities = _ordered_labels(modality_matches)
    primary = modality_matches[0].labels[0] if modality_matches else None

    regions = _ordered_labels([m for m in lex.region_matcher.find(low, original) if m.labels])
    sides = _ordered_labels([m for m in lex.laterality_matcher.find(low, original) if m.labels])

    finding_matches = [m for m in lex.finding_matcher.find(low, original) if m.labels]
    findings: list[Finding] = []
    status: dict[str, Status] = {}
    if finding_matches:
        scopes = _Scopes(lex, low, original)
        rank = {"present": 2, "uncertain": 1, "negated": 0}
        for m in finding_matches:
            st, trigger = scopes.status_of(m)
            for label in m.labels:
                findings.append(Finding(label, st, original[m.start:m.end], trigger))
                if label not in status or rank[st] > rank[status[label]]:
                    status[label] = st
    return Concepts(text=text, modality=primary, modalities=modalities, regions=regions,
                    findings=tuple(findings), sides=sides, _status=status)


class _Scopes:
    """Negation/uncertainty triggers and scope terminators of one caption."""

    def __init__(self, lex: Lexicon, low: str, original: str) -> None:
        self.lex = lex
        self.low = low
        self.triggers = [t for t in lex.trigger_matcher.find(low, original) if t.labels]
        self.terminators = [(m.start(), m.end()) for m in lex.terminator_regex.finditer(low)]

    def _blocked(self, start: int, end: int, *, comma: bool) -> bool:
        if any(start <= s and e <= end for s, e in self.terminators):
            return True
        return comma and "," in self.low[start:end]

    def _words(self, start: int, end: int) -> int:
        return len(_WORD.findall(self.low[start:end]))

    def status_of(self, m: Match) -> tuple[Status, str | None]:
        best: tuple[int, Status, str] | None = None
        for t in self.triggers:
            kinds = set(t.labels)
            if t.end <= m.start and kinds & {NEG_PRE, UNC_PRE}:
                gap = self._words(t.end, m.start)
                if gap > self.lex.max_words_forward or self._blocked(t.end, m.start, comma=False):
                    continue
                st: Status = "uncertain" if UNC_PRE in kinds else "negated"
            elif t.start >= m.end and kinds & {NEG_POST, UNC_POST}:
                gap = self._words(m.end, t.start)
                if gap > self.lex.max_words_backward or self._blocked(m.end, t.start, comma=True):
                    continue
                st = "uncertain" if UNC_POST in kinds else "negated"
            else:
                continue
            if best is None or gap < best[0]:
                best = (gap, st, t.text)
        if best is None:
            return "present", None
        return best[1], best[2]


def normalize_modality(name: str) -> str | None:
    """Map a free-text modality name ("MR - T2 weighted", "CT w/contrast", "X-ray") to a lexicon label."""
    return extract_concepts(name).modality
