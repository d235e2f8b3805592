"""Reading the documentation pages (docs/*.md) for the tests that keep them true."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

#: a fenced block: opening fence with its info string, body. A block the tests look for carries
#: a title in Python-Markdown's attribute form (fenced_code + attr_list), which renders as a
#: plain code block: ```{.python title="example"}
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_TITLE = re.compile(r'title="([^"]*)"')
_ATTR_LANG = re.compile(r"\.([\w-]+)")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a page."""

    lang: str
    title: str | None
    body: str
    line: int


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def blocks(text: str) -> list[Block]:
    """Every fenced block of *text*, in order, with its language and ``title="..."``."""
    out = []
    for match in _FENCE.finditer(text):
        info = match.group(1).strip()
        if info.startswith("{"):  # attribute form: ```{.python title="example"}
            found = _ATTR_LANG.search(info)
            lang = found.group(1) if found else ""
        else:
            lang = info.split(None, 1)[0] if info else ""
        title = _TITLE.search(info)
        line = text.count("\n", 0, match.start()) + 1
        out.append(Block(lang, title.group(1) if title else None, match.group(2), line))
    return out
