"""contrib/systemd/s2sfast.service passes ``systemd-analyze verify`` and runs commands that exist.

The unit names ``/usr/local/bin/s2sfast`` (where ``pip install`` as root puts the command);
systemd-analyze refuses a unit whose executable is missing, so the copy it verifies points at
this environment's ``s2sfast`` instead, every other line unchanged. systemd-analyze exits 0 on
unknown keys and only warns, so any line it prints about the unit fails the test too. Without
systemd-analyze the test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docs_helpers import REPO

from s2sfast.server.cli import build_parser

UNIT = REPO / "contrib" / "systemd" / "s2sfast.service"
SYSUSERS = REPO / "contrib" / "systemd" / "s2sfast.sysusers"
INSTALLED = "/usr/local/bin/s2sfast"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None
    )
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing, and CI=true requires the unit check")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


def _command() -> str:
    beside = Path(sys.executable).parent / "s2sfast"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("s2sfast")
    if found is None:
        pytest.fail("the s2sfast command is not installed (pip install -e '.[test]')")
    return found


def _exec_lines() -> list[list[str]]:
    lines = []
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStart", "ExecStartPre"):
            lines.append(shlex.split(value))
    return lines


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = _systemd_analyze()
    text = UNIT.read_text()
    assert INSTALLED in text
    unit = tmp_path / "s2sfast.service"
    unit.write_text(text.replace(INSTALLED, _command()))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    about_unit = [line for line in (done.stdout + done.stderr).splitlines() if "s2sfast" in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not about_unit, "systemd-analyze warns:\n" + "\n".join(about_unit)


def test_the_unit_runs_the_commands_s2sfast_has():
    lines = _exec_lines()
    assert [line[1] for line in lines] == ["check-config", "run"]
    parser = build_parser()
    for argv in lines:
        assert argv[0] == INSTALLED
        args = parser.parse_args(argv[1:])  # exits (SystemExit) on an option s2sfast lacks
        assert callable(args.func)
    run = parser.parse_args(lines[1][1:])
    assert run.config == "/etc/s2sfast/mongooseim.toml" == lines[0][2]


def test_the_sysusers_file_creates_the_user_the_unit_runs_as():
    user = next(
        line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("User=")
    )
    entries = [
        line.split() for line in SYSUSERS.read_text().splitlines() if line and line[0] != "#"
    ]
    assert ["u", user] in [entry[:2] for entry in entries]
