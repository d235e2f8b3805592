"""Short, bounded atheris runs of the fuzz harnesses in fuzz/ (the long runs: fuzz/README.md).

Each run starts from the committed seed corpus, mutates for a fixed number of iterations with
a fixed seed, and fails on any finding (the harness's exception and the input are shown).
New corpus units go to a temporary directory; the committed corpus is never modified.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(ROOT, "fuzz")
RUNS = 2000

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install atheris; it is in the test extra)",
)


def fuzz(harness: str, corpus: str, tmp_path, runs: int = RUNS, **env: str) -> str:
    new_units = tmp_path / "new"
    new_units.mkdir()
    cmd = [
        sys.executable,
        os.path.join(FUZZ, harness),
        str(new_units),
        os.path.join(FUZZ, "corpus", corpus),
        f"-runs={runs}",
        "-seed=1",
        "-max_len=8192",
        f"-artifact_prefix={tmp_path}/",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    lines = [ln for ln in output.splitlines() if not ln.startswith("INFO: Instrumenting")]
    tail = "\n".join(lines[-40:])
    assert proc.returncode == 0, f"{harness} found a problem:\n{tail}"
    assert f"Done {runs} runs" in output, tail
    return output


def test_framer_never_crashes_and_is_chunk_invariant(tmp_path):
    """Checks 1 and 2 of fuzz/fuzz_framer.py: only FramingError, and whole == chunked."""
    fuzz("fuzz_framer.py", "framer", tmp_path, FUZZ_ORACLE="0")


def test_framer_agrees_with_the_lxml_oracle(tmp_path):
    """Check 3 of fuzz/fuzz_framer.py: the differential oracle on every input."""
    fuzz("fuzz_framer.py", "framer", tmp_path)


def test_negotiation_machines_raise_only_stream_errors(tmp_path):
    fuzz("fuzz_incoming.py", "incoming", tmp_path)
