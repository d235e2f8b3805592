"""Where the repository is, and the import path the harness and its workers need: the
repository (s2sfast, bench), tests/ (certs, dnsserver, daemon_helpers, core_helpers) and
tests/interop/ (the Prosody/ejabberd launchers in ``servers``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_PATH = [ROOT, ROOT / "tests", ROOT / "tests" / "interop"]


def setup() -> None:
    """Make the repository's modules importable in this process."""
    for path in reversed(IMPORT_PATH):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def child_env() -> dict[str, str]:
    """The environment for a worker process started with ``python3 -m bench.e2e.X``."""
    env = dict(os.environ)
    parts = [str(p) for p in IMPORT_PATH]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env
