"""Run Debian's Prosody as a throw-away S2S peer through ``../shared/interop/prosody_peer.sh``.

The shared scripts (not this repository) own how Prosody is configured: this module only finds
them, fills in loopback ports and a per-test PEER_DIR, and stops the process it started.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LOOPBACK",
    "Prosody",
    "Session",
    "completed_sessions",
    "free_ports",
    "interop_dir",
    "missing_reason",
    "s2s_sessions",
]

LOOPBACK = "127.0.0.1"
#: the fallback location of the shared scripts on the development machine
_FALLBACK = Path("/work/shared/interop")
#: seconds the script may take to start/stop Prosody (it waits up to 20 s for the ports itself)
_SCRIPT_TIMEOUT = 40


def interop_dir() -> Path | None:
    """``shared/interop`` beside the repository folder (CI's fresh clone), else /work/shared."""
    here = Path(__file__).resolve()
    candidates = []
    if len(here.parents) > 3:
        candidates.append(here.parents[3] / "shared" / "interop")
    candidates.append(_FALLBACK)
    for c in candidates:
        if (c / "prosody_peer.sh").is_file():
            return c
    return None


def missing_reason() -> str | None:
    """Why the interop suite cannot run here, or None when it can."""
    if interop_dir() is None:
        return (
            "the shared interop scripts (shared/interop/prosody_peer.sh beside the repository "
            f"folder, or {_FALLBACK}) are not present"
        )
    for tool in ("prosody", "prosodyctl", "openssl"):
        if shutil.which(tool) is None:
            return (
                f"{tool!r} is not installed (apt-get install prosody lua-unbound lua-event; "
                ".ci/run does this)"
            )
    return None


#: ports handed out by this process: never hand one out twice (a port freed by one test's
#: free_ports() call must not come back for the next Prosody or Node of the same test)
_GIVEN: set[int] = set()


def free_ports(n: int) -> list[int]:
    """*n* distinct TCP ports on 127.0.0.1 that were free a moment ago and not given before."""
    out: list[int] = []
    socks = []
    try:
        while len(out) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in _GIVEN:
                _GIVEN.add(port)
                out.append(port)
        return out
    finally:
        for s in socks:
            s.close()


@dataclass
class Prosody:
    """One Prosody instance serving *domain* on 127.0.0.1.

    Args:
        domain: the VirtualHost it serves.
        peer_dir: its state directory (config, self-signed cert, data, prosody.log).
        remotes: remote domain -> loopback S2S port (``s2s_connect_overrides``).
        tls: ``S2S_TLS``: required | optional | off.
        dns_server: ``127.0.0.1:PORT`` to resolve remotes through a DNS stub instead.
        extra_cfg: extra global Lua lines (``EXTRA_CFG``).
    """

    domain: str
    peer_dir: Path
    remotes: dict[str, int] = field(default_factory=dict)
    tls: str = "required"
    dns_server: str | None = None
    extra_cfg: str = ""
    log_level: str = "debug"
    c2s_port: int = 0
    s2s_port: int = 0
    running: bool = False

    def __post_init__(self) -> None:
        if not self.c2s_port or not self.s2s_port:
            self.c2s_port, self.s2s_port = free_ports(2)

    @property
    def cert_path(self) -> Path:
        """Prosody's self-signed certificate (made by the script on first start)."""
        return self.peer_dir / f"{self.domain}.crt"

    @property
    def log_path(self) -> Path:
        return self.peer_dir / "prosody.log"

    def log(self) -> str:
        """Everything Prosody logged so far (debug level shows the wire bytes)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PEER_DIR=str(self.peer_dir),
            S2S_TLS=self.tls,
            LOG_LEVEL=self.log_level,
            IFACE=LOOPBACK,
            EXTRA_CFG=self.extra_cfg,
        )
        env.pop("DNS_SERVER", None)
        if self.dns_server:
            env["DNS_SERVER"] = self.dns_server
        return env

    def _command(self, *args: str) -> list[str]:
        script = interop_dir()
        assert script is not None, missing_reason()
        return ["bash", str(script / "prosody_peer.sh"), *args]

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            self._command(*args),
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=_SCRIPT_TIMEOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"prosody_peer.sh {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def install_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Use this certificate instead of the self-signed one the script would make."""
        self.peer_dir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(cert_pem)
        key = self.peer_dir / f"{self.domain}.key"
        key.write_bytes(key_pem)
        key.chmod(0o600)

    def start(self) -> None:
        """Start Prosody; the script returns once both ports accept connections."""
        self.peer_dir.mkdir(parents=True, exist_ok=True)
        remotes = [f"{d}={LOOPBACK}:{p}" for d, p in self.remotes.items()]
        self.running = True  # set first: a half-started instance must still be stopped
        self._run("start", self.domain, str(self.c2s_port), str(self.s2s_port), *remotes)

    def adduser(self, user: str, password: str) -> None:
        self._run("adduser", self.domain, user, password)

    def stop(self) -> None:
        """Stop the instance this object started (by the PID the script recorded)."""
        if self.running:
            self.running = False
            self._run("stop", self.domain)

    def stop_nowait(self) -> subprocess.Popen[bytes] | None:
        """Start stopping it (SIGTERM by recorded PID) without waiting for Prosody to exit,
        which takes it about 1.5 s; the caller waits for the returned process later."""
        if not self.running:
            return None
        self.running = False
        return subprocess.Popen(
            self._command("stop", self.domain),
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


_LINE = re.compile(r"^\w+ +\d+ [\d:]+ (\S+)\t(\w+)\t(.*)$")
_COMPLETE = re.compile(r"^(Incoming|Outgoing) s2s connection (\S+)->(\S+) complete")


@dataclass
class Session:
    """One s2s session as Prosody's log tells it (``s2sin…`` / ``s2sout…``)."""

    name: str
    encrypted: bool = False
    #: (from, to) of "Incoming/Outgoing s2s connection FROM->TO complete"
    completed: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return "in" if self.name.startswith("s2sin") else "out"


def s2s_sessions(log: str) -> dict[str, Session]:
    """Prosody's s2s sessions by name, from its debug or info log."""
    out: dict[str, Session] = {}
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m or not m.group(1).startswith(("s2sin", "s2sout")):
            continue
        name, _level, text = m.groups()
        s = out.setdefault(name, Session(name))
        s.lines.append(text)
        if text.startswith("Stream encrypted"):
            s.encrypted = True
        c = _COMPLETE.match(text)
        if c:
            s.completed.append((c.group(2), c.group(3)))
    return out


def completed_sessions(log: str, direction: str) -> list[Session]:
    """Sessions in *direction* ("in"/"out") that Prosody reported as authenticated."""
    return [s for s in s2s_sessions(log).values() if s.direction == direction and s.completed]
