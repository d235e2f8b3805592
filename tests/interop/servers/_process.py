"""What Prosody and ejabberd have in common here: loopback ports, a detached child process
stopped by its PID, config templates, the skip/fail rule for a missing server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dnsserver import DnsServer

from .dns import add_xmpp_domain

__all__ = [
    "INSTALL",
    "LOOPBACK",
    "REQUIRE_ENV",
    "ServerError",
    "ServerProcess",
    "Session",
    "free_ports",
    "missing",
    "render",
    "required",
]

LOOPBACK = "127.0.0.1"
#: set to 1 (CI does) and a missing server fails the interop tests instead of skipping them
REQUIRE_ENV = "S2SFAST_REQUIRE_INTEROP"
#: how to get both servers on Debian/Ubuntu
INSTALL = "apt-get install prosody lua-unbound lua-event ejabberd"
TEMPLATES = Path(__file__).parent / "templates"

#: ports handed out by this process: a port freed by one free_ports() call never comes back
#: for the next server or Node of the same test run
_GIVEN: set[int] = set()


@dataclass
class Session:
    """One S2S stream as the server's log tells it.

    ``name`` is the server's own name for it (Prosody ``s2sin55d0…``, ejabberd the Erlang
    process ``<0.481.0>``), ``direction`` "in" or "out" as the server sees it, ``encrypted``
    whether TLS is on, ``completed`` the (from, to) domain pairs it authenticated, ``lines``
    everything logged about it."""

    name: str
    direction: str
    encrypted: bool = False
    completed: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class ServerError(RuntimeError):
    """A server did not start (or a command against it failed); the message quotes its log."""


def required() -> bool:
    """Whether a missing server must fail the tests (``S2SFAST_REQUIRE_INTEROP=1``)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing(*programs: str) -> str | None:
    """Why these programs cannot run here (with how to install them), or None."""
    absent = [p for p in programs if shutil.which(p) is None and not Path(p).is_file()]
    if not absent:
        return None
    return f"{', '.join(absent)} not installed ({INSTALL})"


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


def render(template: str, **values: object) -> str:
    """templates/*template* with every ``@KEY@`` replaced by ``values[KEY]``."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_0-9]+@", text)
    if left:  # an unfilled placeholder is a harness bug
        raise ValueError(f"{template}: unfilled placeholders {left}")
    return text


class ServerProcess:
    """One server process started detached (own session, stdin/stdout/stderr not ours) and
    stopped by the PID it was given: SIGTERM, then SIGKILL after ``stop_timeout`` seconds."""

    #: what the subclass runs: its name for messages
    program = "server"
    stop_timeout = 10.0
    start_timeout = 30.0

    def __init__(
        self,
        domain: str,
        directory: Path,
        c2s_port: int = 0,
        s2s_port: int = 0,
        remotes: dict[str, int] | None = None,
        dns: DnsServer | None = None,
    ) -> None:
        self.domain = domain
        self.dir = Path(directory)
        if not c2s_port or not s2s_port:
            c2s_port, s2s_port = free_ports(2)
        self.c2s_port = c2s_port
        self.s2s_port = s2s_port
        self._proc: subprocess.Popen[bytes] | None = None
        #: remote domain -> loopback S2S port, published in the DNS zone at start()
        self.remotes: dict[str, int] = dict(remotes or {})
        #: the caller's DNS zone (None: a private one, made at start(), closed at stop())
        self.dns = dns
        self._own_dns: DnsServer | None = None
        self._started = False

    # -- to be provided by the server classes ---------------------------------------------

    def _prepare(self) -> tuple[list[str], dict[str, str]]:  # pragma: no cover - abstract
        """Write the config; return the command line and the environment."""
        raise NotImplementedError

    def _ready(self) -> bool:  # pragma: no cover - abstract
        """Whether the started process serves: its log says it listens on every port (read
        from the log, so no probe connection shows up in it)."""
        raise NotImplementedError

    def _state_dirs(self) -> list[Path]:
        """What the first start() of this object clears (accounts, rosters, ...)."""
        return []

    def log(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def s2s_sessions(self) -> dict[str, Session]:  # pragma: no cover - abstract
        """The server's S2S streams by its name for them, from its log."""
        raise NotImplementedError

    def completed_sessions(self, direction: str) -> list[Session]:
        """Streams in *direction* ("in"/"out", as the server sees it) it authenticated."""
        return [s for s in self.s2s_sessions().values() if s.direction == direction and s.completed]

    # -- DNS --------------------------------------------------------------------------------

    @property
    def dns_zone(self) -> DnsServer | None:
        """The DNS zone the server resolves remote domains through while it runs."""
        return self.dns or self._own_dns

    def _open_zone(self) -> DnsServer:
        """The zone to resolve through, with the ``remotes`` published in it."""
        zone = self.dns
        if zone is None:
            zone = self._own_dns = DnsServer()
        for domain, port in self.remotes.items():
            add_xmpp_domain(zone, domain, port)
        return zone

    def _close_zone(self) -> None:
        if self._own_dns is not None:
            self._own_dns.close()
            self._own_dns = None

    # -- process ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's PID while this object's process runs."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def stdout_path(self) -> Path:
        return self.dir / "stdout.log"

    def start(self) -> None:
        """Start the server and return once it serves; :class:`ServerError` if it does not."""
        if self.running:
            raise ServerError(f"{self.program} for {self.domain} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._started:  # a fresh server: no accounts or state of an earlier one
            for state in self._state_dirs():
                shutil.rmtree(state, ignore_errors=True)
        self._started = True
        argv, env = self._prepare()
        with open(self.stdout_path, "ab") as out:
            # a session of its own and none of our descriptors: a caller that reads our
            # output is not kept waiting by the server, and a terminal's ^C does not reach it
            self._proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self._proc.poll() is not None else "timed out"
                self.kill()
                raise ServerError(
                    f"{self.program} for {self.domain} did not start ({why}); "
                    f"last output:\n{self._tail()}"
                )
            time.sleep(0.05)

    def _tail(self, lines: int = 15) -> str:
        text = self.log().splitlines()[-lines:]
        try:
            text += self.stdout_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            pass
        return "\n".join(text)

    def stop(self, wait: bool = True) -> None:
        """SIGTERM by PID (the server closes its streams); with *wait*, wait for the exit and
        SIGKILL after ``stop_timeout``. Without, :meth:`wait_stopped` finishes the job."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)
        if wait:
            self.wait_stopped()

    def wait_stopped(self, timeout: float | None = None) -> None:
        """Wait for a stopped server to exit (SIGKILL when it takes over *timeout*)."""
        if self._proc is None:
            return
        try:
            self._proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._close_zone()

    def kill(self) -> None:
        """SIGKILL by PID: the server dies at once, its peers see the TCP connections reset
        or closed without a stream close (a crash)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._close_zone()

    def run_tool(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        """Run a command-line tool of the server; its output, or ServerError."""
        proc = subprocess.run(
            argv, cwd=self.dir, env=env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise ServerError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.domain} c2s={self.c2s_port} s2s={self.s2s_port} "
            f"pid={self.pid} dir={self.dir}>"
        )
