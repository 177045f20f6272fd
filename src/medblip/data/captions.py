"""Caption normalisation and tolerant reading of caption text files."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict


class CaptionOptions(BaseModel):
    """How captions are cleaned on load. The defaults keep the text as written, only tidied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strip: bool = True
    collapse_whitespace: bool = True
    nfkc: bool = True
    lowercase: bool = False
    remove_panel_markers: bool = False


DEFAULT_CAPTION_OPTIONS = CaptionOptions()

# A parenthesised group is a panel marker when every comma/"and"/dash-separated part is a panel
# letter ("A", "b", "ii"), a pointer word ("arrow", "white arrowheads", "asterisk") or "*".
_POINTER = (r"(?:(?:white|black|red|yellow|blue|green|thin|thick|small|large|open|closed|solid|curved|"
            r"dashed|dotted|long|short|double)\s+)*(?:arrow(?:head)?s?|asterisks?|stars?|\*+)")
_PANEL_LETTER = r"(?:[A-Za-z]|i{1,3}|iv|vi{0,3}|ix|x)"
_PART = rf"(?:{_PANEL_LETTER}|{_POINTER})"
_SEP = r"\s*(?:,|;|/|&|\band\b|[-\u2013\u2014]|\bto\b)\s*"
_MARKER = rf"\(\s*{_PART}(?:{_SEP}{_PART})*\s*\)"
# "(A) – venous drainage, (B): feeding artery": a marker that opens a clause takes its dash/colon along.
_LEADING_MARKER = re.compile(rf"(^|[.,;:]\s*){_MARKER}\s*[:\u2013\u2014]\s*", re.IGNORECASE)
_PANEL_MARKER = re.compile(rf"\s*{_MARKER}", re.IGNORECASE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_WHITESPACE = re.compile(r"\s+")


def remove_panel_markers(text: str) -> str:
    """Drop figure-panel and pointer references such as "(A)", "(a, b)", "(arrows)", "(asterisk)"."""
    text = _LEADING_MARKER.sub(r"\1", text)
    text = _PANEL_MARKER.sub(" ", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def normalize_caption(text: str, options: CaptionOptions | None = None) -> str:
    """Apply ``options`` to one caption; may return "" (callers drop empty captions)."""
    opts = options or DEFAULT_CAPTION_OPTIONS
    if opts.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if opts.remove_panel_markers:
        text = remove_panel_markers(text)
    if opts.collapse_whitespace:
        text = _WHITESPACE.sub(" ", text)
    if opts.strip:
        text = text.strip()
    if opts.lowercase:
        text = text.lower()
    return text


def caption_words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------
# Reading text files line by line without letting one bad byte stop the whole file.

class TextLine(NamedTuple):
    lineno: int
    text: str
    bad_utf8: bool  # the line had bytes that are not UTF-8; ``text`` holds them as U+FFFD


def decode_text(data: bytes) -> str:
    """UTF-8 decode keeping undecodable bytes as lone surrogates (see :func:`has_bad_bytes`)."""
    text = data.decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


_SURROGATE = re.compile("[\udc80-\udcff]")


def has_bad_bytes(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def replace_bad_bytes(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def iter_text_lines(path: Path) -> Iterator[TextLine]:
    """Yield each line of ``path`` (1-based numbers, newline and CR removed), flagging bad UTF-8."""
    text = decode_text(path.read_bytes())
    # Split on \n only: str.splitlines would also break on form feeds and U+2028 inside captions.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    any_bad = has_bad_bytes(text)  # one scan of the file instead of one per line in the common case
    for i, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        bad = any_bad and has_bad_bytes(line)
        yield TextLine(i, replace_bad_bytes(line) if bad else line, bad)
