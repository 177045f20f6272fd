"""The project README's code blocks, for the tests that run them as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(section: str, lang: str) -> list[str]:
    """The ``lang`` code blocks under the ``## section`` heading (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else None]
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each shell line of ``block`` split into argv (comments dropped, ``\\`` continuations joined)."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.split("#")[0].strip()]
