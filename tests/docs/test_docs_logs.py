"""docs/logs.md explains every log line s2sfast writes at info level and above, and every
stream-error condition it can send.

The lines are found in the code itself: every ``log.info/warning/error/critical/exception(...)``
call of the package (by its AST), whose format string is split at its ``%`` placeholders; each
literal piece of three characters or more must appear on the page (which writes the
placeholders as upper-case words: ``stream LOCAL -> REMOTE failed: REASON``). The conditions are
those the code raises ``LocalStreamError``/``RemoteStreamError`` (or closes) with, and those the
framer reports.
"""

from __future__ import annotations

import ast
import re

from docs_helpers import REPO, page

_LEVELS = {"info", "warning", "error", "critical", "exception"}
_LOGGERS = {"log", "_log", "logger"}
_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfgi]")


def _log_formats() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO / "s2sfast").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in _LOGGERS
            ):
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{where}: a log call whose message is not a constant format string"
                )
                out.append((where, first.value))
    return out


def test_every_log_line_is_explained():
    text = page("logs.md")
    formats = _log_formats()
    assert len(formats) > 50
    missing = []
    for where, fmt in formats:
        pieces = [p.strip() for p in _PLACEHOLDER.split(fmt)]
        absent = [p for p in pieces if len(p) >= 3 and p not in text]
        if absent:
            missing.append(f"{where}: {fmt!r} (missing {absent})")
    assert not missing, "log lines not on docs/logs.md:\n" + "\n".join(missing)


def _conditions_sent() -> set[str]:
    found: set[str] = set()
    call = re.compile(r"(?:Local|Remote)StreamError\(\s*\"([a-z-]+)\"")
    close = re.compile(r"Close\(\s*condition=\"([a-z-]+)\"")
    for path in (REPO / "s2sfast").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        found |= set(call.findall(source)) | set(close.findall(source))
    framer = (REPO / "ext" / "framer.pyx").read_text(encoding="utf-8")
    found |= set(re.findall(r"cdef str \w+ = \"([a-z]+-[a-z-]+)\"", framer))
    return found


def test_every_stream_error_sent_is_explained():
    text = page("logs.md")
    section = text.split("## Stream errors s2sfast sends", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE))
    sent = _conditions_sent()
    assert len(sent) > 10
    assert not sent - rows, f"sent, not explained on docs/logs.md: {sorted(sent - rows)}"
