"""`s2sfast run` refusals that happen before any node starts: exit 1 with the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_helpers import ROOT


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s2sfast", "run", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


def test_port_overrides_are_refused_with_a_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[general]\nhosts = ["a.test"]\n')
    result = _run_cli("--config", str(cfg), "--s2s-port", "1234")
    assert result.returncode == 1
    assert "embedded defaults only" in result.stderr


def test_invalid_config_exits_1_naming_the_option(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[general]\nhosts = ["a.test"]\n[[listen.service]]\nport = 5347\n')
    result = _run_cli("--config", str(cfg))
    assert result.returncode == 1
    assert "listen.service[0].password" in result.stderr
