"""The library page's examples run as written and print exactly what the page shows.

docs/library.md holds two configuration files (```toml title="a.toml"``` and "b.toml") and
complete programs (```python title="example"```), each optionally followed by the output it
prints (```text title="output"```). Each program runs in its own interpreter, in a directory
holding the two files, against two real Nodes on 127.0.0.1: the files' ports 5269 and 5270 are
replaced by free loopback ports (the machine may run an XMPP server on 5269), and their
``[s2s] address`` entries route every remote domain to loopback, so no DNS query is made.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from core_helpers import free_port
from docs_helpers import REPO, blocks, page

_TIMEOUT = 60


def _examples() -> list[tuple[str, str | None]]:
    found = blocks(page("library.md"))
    out = []
    for i, block in enumerate(found):
        if block.lang == "python" and block.title == "example":
            nxt = found[i + 1] if i + 1 < len(found) else None
            expected = nxt.body if nxt and nxt.lang == "text" and nxt.title == "output" else None
            out.append((f"line {block.line}", block.body, expected))
    return out


def _config_files() -> dict[str, str]:
    return {
        b.title: b.body
        for b in blocks(page("library.md"))
        if b.lang == "toml" and b.title in ("a.toml", "b.toml")
    }


def test_the_page_has_examples_and_both_files():
    assert set(_config_files()) == {"a.toml", "b.toml"}
    examples = _examples()
    assert len(examples) >= 5
    assert all(expected is not None for _, _, expected in examples), "every example shows output"


@pytest.mark.parametrize(
    ("where", "code", "expected"), _examples(), ids=[w for w, _, _ in _examples()]
)
def test_example_runs_and_prints_what_the_page_shows(tmp_path, where, code, expected):
    ports = {"5269": str(free_port()), "5270": str(free_port())}
    for name, text in _config_files().items():
        for old, new in ports.items():
            assert text.count(old) == 1, f"{name}: {old} should appear once"
            text = text.replace(old, new)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert done.returncode == 0, f"example at {where} failed:\n{done.stderr}"
    assert done.stdout == expected, f"example at {where} printed:\n{done.stdout}"


def test_check_config_sample_matches_the_command(tmp_path):
    """docs/operations.md shows `s2sfast check-config examples/mongooseim.toml`: its output."""
    sample = next(
        b.body
        for b in blocks(page("operations.md"))
        if b.lang == "console" and b.body.startswith("$ s2sfast check-config examples/")
    )
    command, *shown = sample.rstrip("\n").split("\n")
    done = subprocess.run(
        [sys.executable, "-m", "s2sfast", *command.split()[2:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stderr + done.stdout).rstrip("\n").split("\n") == shown
