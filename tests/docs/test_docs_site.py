"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing anchor
or a page left out of the navigation fails the suite (mkdocs.yml turns each into a warning, and
--strict turns warnings into errors)."""

from __future__ import annotations

import re
import subprocess
import sys

from docs_helpers import DOCS, REPO


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pages = sorted(p.relative_to(DOCS).with_suffix("") for p in DOCS.rglob("*.md"))
    for page in pages:
        built = site / "index.html" if page.name == "index" else site / page / "index.html"
        assert built.is_file(), f"{page} was not built"
        # a fence Python-Markdown did not understand is left in the page as text
        html = built.read_text(encoding="utf-8")
        assert not re.search(r"(^|<p>)```", html, re.MULTILINE), f"{page}: an unrendered fence"
        # Markdown left as text outside code: a table, bold or link Python-Markdown did not parse
        prose = re.sub(r"<(pre|code)\b.*?</\1>", "", html, flags=re.DOTALL)
        for leftover in (r"^\|", r"\*\*", r"\]\("):
            assert not re.search(leftover, prose, re.MULTILINE), f"{page}: unrendered {leftover}"


def test_a_broken_link_fails_the_build(tmp_path):
    # the check above must be able to fail: the same configuration on a copy of the pages with
    # one link to a page that does not exist
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in DOCS.rglob("*.md"):
        target = docs / page.relative_to(DOCS)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    index = docs / "index.md"
    index.write_text(index.read_text() + "\n[gone](no-such-page.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((REPO / "mkdocs.yml").read_text())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr
