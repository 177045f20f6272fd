"""Caption tokenisation for the COCO metrics: pycocoevalcap's PTB tokenizer, or a Java-free stand-in.

The captioning literature reports BLEU/METEOR/ROUGE-L/CIDEr on text tokenised by the Stanford PTB
tokenizer (lower-cased, punctuation tokens dropped), as pycocoevalcap does; numbers are only
comparable with the same tokenisation. That tokenizer runs in Java. Without Java,
:func:`simple_tokenize` imitates it closely enough for development, and results say so.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Literal

from medblip.errors import ConfigError

JavaOption = bool | Literal["auto"]

# pycocoevalcap drops exactly these tokens after PTB tokenisation. Its list spells brackets in upper
# case (-LRB-) but tokenises with -lowerCase, so "-lrb-"/"-rrb-" tokens survive in every published
# number; the stand-in keeps that quirk to stay close to it.
_PTB_DROPPED = {"''", "'", "``", "`", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
                '"', "\u2013", "\u2014", "\u201c", "\u201d", "\u2018"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# PTB keeps the full stop of common abbreviations and initials inside a sentence ("fig. 2").
_ABBREV = r"(?<![^\W_])(?:figs?|nos?|vs|dr|mrs?|ms|st|approx|etc|e\.g|i\.e|al|[a-z])\.(?=\s+\S)"
# Words keep inner hyphens, slashes and dots (t2-weighted, pet/ct, 5.2-cm) and digit groups (1,000).
_WORD = r"[^\W_]+(?:(?:[-/.\u2010\u2011]|(?<=\d),(?=\d))[^\W_]+)*"
_TOKEN = re.compile(
    _ABBREV
    + rf"|{_WORD}(?=n't)"  # "don't" -> "do" + "n't"
    + r"|n't|'s|'re|'ve|'ll|'d|'m"
    + rf"|{_WORD}"
    + r"|\.\.\.|--|[^\s\w]|_"
)
_WHITESPACE = re.compile(r"\s+")


class MetricWarning(UserWarning):
    """A metric could not be computed the standard way (e.g. Java missing); results say how."""


@functools.lru_cache(maxsize=1)
def java_available() -> bool:
    """Whether a working ``java`` is on PATH (checked once per process)."""
    exe = shutil.which("java")
    if exe is None:
        return False
    try:
        subprocess.run([exe, "-version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


_warned_no_java = False


def resolve_java(java: JavaOption) -> bool:
    """``"auto"``: use Java when present (warning once per process when not); ``True``: require it."""
    global _warned_no_java
    if java is False:
        return False
    if java_available():
        return True
    if java is True:
        raise ConfigError("Java is required for PTB tokenisation and METEOR but no working 'java' is on "
                          "PATH; install a JRE (Debian: apt-get install default-jre-headless) or pass "
                          "java='auto'/--no-java")
    if not _warned_no_java:
        _warned_no_java = True
        msg = ("Java not found: METEOR (and SPICE) are skipped and captions are tokenised by a simple "
               "PTB-like tokenizer, so BLEU/ROUGE-L/CIDEr are close to but not exactly the published "
               "pycocoevalcap numbers. Install a JRE (Debian: default-jre-headless) for exact numbers.")
        warnings.warn(msg, MetricWarning, stacklevel=3)
    return False


def clean_whitespace(text: str) -> str:
    # The PTB tokenizer runs with -preserveLines: any line break inside a caption (including
    # \u2028 or \x0b) would shift every following caption onto the wrong image.
    return _WHITESPACE.sub(" ", text).strip()


def simple_tokenize(text: str) -> str:
    """Lower-case, split like the PTB tokenizer, drop punctuation tokens; not PTB-identical."""
    tokens = []
    for tok in _TOKEN.findall(clean_whitespace(text).lower().replace("\u2019", "'")):
        tok = _BRACKETS.get(tok, tok)
        if tok not in _PTB_DROPPED and tok != '"':
            tokens.append(tok)
    return " ".join(tokens)


_NUMBER = re.compile(r"\d+")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def imageclef_preprocess(text: str) -> str:
    """The ImageCLEFmedical Caption preprocessing, step for step as the organisers' evaluator does it
    before BERTScore, ROUGE and BLEURT: lower-case, replace every run of digits by ``number``, then
    delete ASCII punctuation (``string.punctuation``); whitespace is left as it is. So ``5.2 cm``
    becomes ``numbernumber cm`` and ``T2-weighted`` becomes ``tnumberweighted``."""
    return _NUMBER.sub("number", text.lower()).translate(_PUNCT_TABLE)


@contextlib.contextmanager
def _java_stderr() -> Iterator[list[str]]:
    """Collect what child processes write to stderr (the PTB tokenizer's Java prints a progress line
    on every call, which would clutter the command line); the text is kept for error messages."""
    captured: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """Tokenise ``{key: [caption, ...]}`` with pycocoevalcap's PTBTokenizer in one Java call."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = list(captions)
    # PTBTokenizer keys its result by dict key; plain ints avoid any surprise with exotic ids.
    payload = {i: [{"caption": clean_whitespace(c)} for c in captions[k]] for i, k in enumerate(keys)}
    payload = {i: v for i, v in payload.items() if v}
    stderr: list[str] = []
    try:
        with _java_stderr() as stderr:
            tokenized = PTBTokenizer().tokenize(payload) if payload else {}
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"the PTB tokenizer (Java) failed: {exc}; {''.join(stderr).strip()[-500:]}") from exc
    out: dict[Hashable, list[str]] = {}
    for i, k in enumerate(keys):
        got = tokenized.get(i, [])
        if len(got) != len(captions[k]):
            raise RuntimeError(f"PTB tokenizer returned {len(got)} caption(s) for {k!r}, expected "
                               f"{len(captions[k])} (Java said: {''.join(stderr).strip()[-500:] or 'nothing'})")
        out[k] = got
    return out


def tokenize_all(captions: Mapping[Hashable, Sequence[str]], use_java: bool) -> dict[Hashable, list[str]]:
    if use_java:
        return ptb_tokenize(captions)
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
