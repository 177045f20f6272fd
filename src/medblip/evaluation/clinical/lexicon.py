"""Loading and compiling the radiology lexicon (``lexicon.json`` shipped next to this module).

The lexicon is data, not code, so that clinicians can audit and extend it without reading Python
(``medblip concepts`` shows what it extracts). This module turns it into a few compiled regular
expressions; :mod:`medblip.evaluation.clinical.extractor` applies them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from medblip.errors import ConfigError

#: Trigger kinds used by the negation/uncertainty scopes.
NEG_PRE, NEG_POST, UNC_PRE, UNC_POST, PSEUDO = "neg_pre", "neg_post", "unc_pre", "unc_post", "pseudo"

# Word characters for boundaries: a hyphen or slash is a boundary, so "ct-guided" contains "ct".
_BEFORE = r"(?<![a-z0-9])"
_AFTER = r"(?![a-z0-9])"


_SPACED_HYPHEN = re.compile(r"\s*-\s*")
_SPACES = re.compile(r"\s+")


def _canonical(phrase: str) -> str:
    """"x - ray" and "x-ray", "lymph  node" and "lymph node" are one phrase."""
    return _SPACED_HYPHEN.sub("-", _SPACES.sub(" ", phrase.strip()))


def _flexible(phrase: str) -> str:
    # Detokenised model output spaces hyphens out ("x - ray", "contrast - enhanced"): accept that.
    return r"\s*-\s*".join(r"\s+".join(re.escape(w) for w in part.split(" ")) for part in phrase.split("-"))


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    text: str
    #: labels the phrase stands for (empty for 'ignore' phrases, which only block shorter matches)
    labels: tuple[str, ...]


class PhraseMatcher:
    """Finds lexicon phrases in text: longest phrase wins, matches never overlap.

    ``phrases`` maps a lower-case phrase to its labels; ``case_sensitive`` maps regular expressions
    matched on the original text (abbreviations such as ``US`` or ``MR``) and ``patterns`` maps
    regular expressions matched on the lower-cased text (contextual abbreviations) to labels.
    """

    def __init__(self, phrases: Mapping[str, tuple[str, ...]], *, plurals: bool = False,
                 case_sensitive: Mapping[str, tuple[str, ...]] | None = None,
                 patterns: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self._labels: dict[str, tuple[str, ...]] = {}
        for phrase, labels in phrases.items():
            key = _canonical(phrase)
            self._labels[key] = tuple(dict.fromkeys(self._labels.get(key, ()) + tuple(labels)))
        ordered = sorted(self._labels, key=len, reverse=True)
        suffix = "(?:s|es)?" if plurals else ""
        body = "|".join(_flexible(p) for p in ordered) or "(?!)"
        self._regex = re.compile(f"{_BEFORE}(?P<p>{body}){suffix}{_AFTER}")
        self._extra: list[tuple[re.Pattern[str], tuple[str, ...], bool]] = []
        for pat, labels in (case_sensitive or {}).items():
            self._extra.append((re.compile(pat), labels, True))
        for pat, labels in (patterns or {}).items():
            self._extra.append((re.compile(pat), labels, False))

    def find(self, lowered: str, original: str) -> list[Match]:
        found = [Match(m.start(), m.end(), m.group(0), self._labels[_canonical(m.group("p"))])
                 for m in self._regex.finditer(lowered)]
        if not self._extra:
            return found
        for regex, labels, on_original in self._extra:
            source = original if on_original else lowered
            found.extend(Match(m.start(), m.end(), m.group(0), labels) for m in regex.finditer(source))
        return _non_overlapping(found)


def _non_overlapping(matches: Iterable[Match]) -> list[Match]:
    # Leftmost first, then longest: the same rule the alternation regex applies within one pass.
    chosen: list[Match] = []
    end = -1
    for m in sorted(matches, key=lambda m: (m.start, -(m.end - m.start))):
        if m.start >= end:
            chosen.append(m)
            end = m.end
    return chosen


@dataclass(frozen=True)
class Lexicon:
    path: str
    version: int
    #: modality label -> parent label (``echocardiography`` is a kind of ``ultrasound``) or None
    modality_parents: dict[str, str | None]
    modality_matcher: PhraseMatcher
    region_matcher: PhraseMatcher
    finding_matcher: PhraseMatcher
    laterality_matcher: PhraseMatcher
    trigger_matcher: PhraseMatcher
    terminator_regex: re.Pattern[str]
    max_words_forward: int
    max_words_backward: int

    @property
    def modality_labels(self) -> list[str]:
        return list(self.modality_parents)


def default_lexicon_path() -> Path:
    return Path(str(resources.files("medblip.evaluation.clinical").joinpath("lexicon.json")))


@lru_cache(maxsize=8)
def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """Load and compile a lexicon file (default: the one shipped with medblip)."""
    path = Path(path) if path is not None else default_lexicon_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the lexicon ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON in the lexicon ({exc.msg})") from None
    try:
        return _compile(raw, str(path))
    except (KeyError, TypeError, ValueError, re.error) as exc:
        raise ConfigError(f"{path}: malformed lexicon ({type(exc).__name__}: {exc})") from None


def _lower_terms(terms: Iterable[str]) -> list[str]:
    return [t.lower().strip() for t in terms if t.strip()]


def _phrase_table(groups: Mapping[str, Iterable[str]], ignore: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for label, terms in groups.items():
        for term in _lower_terms(terms):
            # A phrase listed under two labels keeps both, in lexicon order.
            existing = table.get(term, ())
            if label not in existing:
                table[term] = (*existing, label)
    for term in _lower_terms(ignore):
        table[term] = ()
    return table


def _compile(raw: dict[str, Any], path: str) -> Lexicon:
    modalities: dict[str, Any] = raw["modalities"]
    parents = {label: spec.get("is_a") for label, spec in modalities.items()}
    for label, parent in parents.items():
        if parent is not None and parent not in parents:
            raise ValueError(f"modality {label!r} is_a unknown modality {parent!r}")

    phrases = _phrase_table({label: spec.get("terms", []) for label, spec in modalities.items()})
    for term, labels in raw.get("modality_combinations", {}).items():
        unknown = [lab for lab in labels if lab not in parents]
        if unknown:
            raise ValueError(f"combination {term!r} names unknown modalities {unknown}")
        phrases[term.lower()] = tuple(labels)
    case_sensitive = {rf"\b(?:{'|'.join(map(re.escape, spec['case_sensitive']))})\b": (label,)
                      for label, spec in modalities.items() if spec.get("case_sensitive")}
    patterns = {pat: (label,) for label, spec in modalities.items() for pat in spec.get("regex", [])}
    modality_matcher = PhraseMatcher(phrases, plurals=True, case_sensitive=case_sensitive, patterns=patterns)

    region_matcher = PhraseMatcher(_phrase_table(raw["regions"], raw.get("region_ignore", [])), plurals=True)
    finding_matcher = PhraseMatcher(_phrase_table(raw["findings"], raw.get("finding_ignore", [])), plurals=True)
    lat_case = {pat: (side,) for side, pats in raw.get("laterality_case_sensitive", {}).items() for pat in pats}
    laterality_matcher = PhraseMatcher(_phrase_table(raw["laterality"], raw.get("laterality_ignore", [])),
                                       case_sensitive=lat_case)

    neg, unc = raw["negation"], raw["uncertainty"]
    triggers = _phrase_table({NEG_PRE: neg["pre"], NEG_POST: neg["post"], UNC_PRE: unc["pre"],
                              UNC_POST: unc["post"], PSEUDO: neg.get("pseudo", [])})
    scope = raw["scope"]
    words = sorted(_lower_terms(scope["terminators"]), key=len, reverse=True)
    punct = re.escape(scope.get("punctuation", ".;:!?"))
    # A full stop inside a number ("5.2 cm") does not end a sentence.
    terminator_regex = re.compile(
        f"{_BEFORE}(?:{'|'.join(map(re.escape, words))}){_AFTER}|(?:(?!\\.\\d)[{punct}])")
    return Lexicon(
        path=path, version=int(raw.get("version", 1)), modality_parents=parents,
        modality_matcher=modality_matcher, region_matcher=region_matcher, finding_matcher=finding_matcher,
        laterality_matcher=laterality_matcher, trigger_matcher=PhraseMatcher(triggers),
        terminator_regex=terminator_regex,
        max_words_forward=int(scope.get("max_words_forward", 8)),
        max_words_backward=int(scope.get("max_words_backward", 6)),
    )
