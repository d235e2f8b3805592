"""The wheel is a real, self-contained platform wheel, and the framer never silently degrades."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_STREAM = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a.test' version='1.0'>"
    b"<message to='bob@b.test' from='alice@a.test' id='m1'>"
    b"<body>gr\xc3\xbc\xc3\x9fe</body></message>"
    b"</stream:stream>"
)


def _source_files() -> list[str]:
    """The files a clean clone would have (tracked plus untracked-but-not-ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def test_missing_extension_fails_loudly_with_build_instructions() -> None:
    code = (
        "import sys; sys.modules['s2sfast._framer'] = None\n"
        "try:\n"
        "    import s2sfast.framing\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
        "sys.exit(0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "s2sfast._framer" in proc.stdout
    assert "pip install" in proc.stdout


@pytest.mark.slow
def test_wheel_builds_installs_and_frames_without_the_source_tree(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the source files")
    src = tmp_path / "src"
    for name in _source_files():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("s2sfast-*.whl"))
    assert len(wheels) == 1
    # A platform wheel: it carries the compiled framer, so it is not py3-none-any.
    assert "none-any" not in wheels[0].name
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheels[0])], check=True, capture_output=True
    )
    probe = (
        "import s2sfast, s2sfast.framing as f, sys\n"
        "assert 'site-packages' in s2sfast.__file__, s2sfast.__file__\n"
        f"events = f.StreamFramer().feed({_STREAM!r})\n"
        "print([type(e).__name__ for e in events], events[1].to, events[1].raw[-10:])\n"
    )
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=clean_env
    )
    assert proc.returncode == 0, proc.stderr
    assert "['StreamOpen', 'Stanza', 'StreamClose'] bob@b.test" in proc.stdout
    cli = subprocess.run(
        [str(env_dir / "bin" / "s2sfast"), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert cli.returncode == 0 and "0.1.0" in cli.stdout + cli.stderr
