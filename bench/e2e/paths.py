"""Where the repository is, and the import path the harness and its workers need: the
repository (s2sfast, bench), tests/ (certs, dnsserver, daemon_helpers, core_helpers) and
tests/interop/ (the Prosody/ejabberd launchers in ``servers``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_PATH = [ROOT, ROOT / "tests", ROOT / "tests" / "interop"]


#: set in a worker's environment: import s2sfast and tests/ from this other tree (--baseline)
TREE_ENV = "S2SFAST_E2E_TREE"


def tree_paths(tree: Path) -> list[Path]:
    return [tree, tree / "tests", tree / "tests" / "interop"]


def setup() -> None:
    """Make the repository's modules importable in this process (s2sfast and tests/ from the
    tree named by S2SFAST_E2E_TREE when set: a worker measuring another commit)."""
    for path in reversed(IMPORT_PATH):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    tree = os.environ.get(TREE_ENV)
    if tree:
        for path in reversed(tree_paths(Path(tree))):
            sys.path.insert(0, str(path))


def child_env(tree: Path | None = None) -> dict[str, str]:
    """The environment for a worker process (``python3 -m bench.e2e.X``, or with *tree* the
    script bench/e2e/X.py run in that tree)."""
    env = dict(os.environ)
    parts = [str(p) for p in (tree_paths(tree) if tree else []) + IMPORT_PATH]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    if tree:
        env[TREE_ENV] = str(tree)
    else:
        env.pop(TREE_ENV, None)
    return env


def worker_argv(module: str, tree: Path | None) -> list[str]:
    """How to start bench.e2e.*module*: ``-m`` here, or as a script of this checkout when the
    worker's cwd is another tree (whose own bench/ must not be the one imported)."""
    if tree is None:
        return [sys.executable, "-m", module]
    return [sys.executable, str(ROOT / Path(*module.split("."))) + ".py"]


def tree_label(tree: Path) -> str:
    """A short name for another tree: its git commit, else its directory name."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except OSError:
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return tree.name
