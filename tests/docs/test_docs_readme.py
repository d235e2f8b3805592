"""The README stays short and points into the documentation.

It opens with the two commands (install and run; install the test dependencies and test), the
second being exactly what CI runs (``.ci/run`` ends with it), and the first running the
``s2sfast run`` command the package installs; its relative links lead to files that exist,
docs/index.md among them (the strict MkDocs build checks the links between the pages).
"""

from __future__ import annotations

import re
import shlex

from docs_helpers import DOCS, REPO, blocks

from s2sfast.server.cli import build_parser

_MAX_LINES = 60


def _readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def test_the_two_commands_open_the_readme():
    readme = _readme()
    assert readme.startswith("# s2sfast\n\n```sh\n")
    commands = [line.split("#", 1)[0].strip() for line in blocks(readme)[0].body.splitlines()]
    assert len(commands) == 2
    install, test = commands
    ci = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci[-1] == test, "CI runs the README's test command, exactly"
    pip, run = (shlex.split(part) for part in install.split("&&"))
    assert pip == ["pip", "install", "."]
    assert run[0] == "s2sfast"
    assert build_parser().parse_args(run[1:]).command == "run"


def test_the_links_lead_to_existing_pages():
    links = [
        link.split("#", 1)[0]
        for link in re.findall(r"\]\(([^)\s]+)\)", _readme())
        if "://" not in link
    ]
    assert links, "the README links into docs/"
    for link in links:
        assert (REPO / link).is_file(), f"README links to {link}, which does not exist"
    assert (DOCS / "index.md") in {REPO / link for link in links}


def test_the_readme_is_short():
    assert _readme().count("\n") <= _MAX_LINES
