"""The contenders: two ``s2sfast run`` daemons, two Prosody, two ejabberd (each pair federating
over loopback with TLS required and dialback), and the library path (two Node processes).

A server contender starts its two servers, says which PIDs to measure, and opens the load
client's two connections: the sender on server A and the receiver on server B. For s2sfast
both are XEP-0114 components (A's serves a.test, B's serves b.test); for Prosody and ejabberd
they are c2s users alice@a.test and bob@b.test (SASL PLAIN on loopback).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.e2e import paths, traffic

paths.setup()

import certs  # noqa: E402  (tests/certs.py)
from daemon_helpers import DaemonProcess, free_port  # noqa: E402

PASSWORD = "bench-secret"


def write_daemon_config(
    path: Path,
    host: str,
    s2s_port: int,
    comp_port: int,
    peers: dict[str, int],
    certfile: str,
    cafile: str,
    *,
    state_timeout_ms: int = 30000,
    verify_mode: str | None = None,
) -> Path:
    """A mongooseim.toml for one bench daemon: TLS required, a component listener, an
    [[s2s.address]] for every peer domain. *cafile*: the CA peers' certificates are checked
    against (see :func:`cafile_for`); *verify_mode*: the listener's ``tls.verify_mode``
    (None: not set, peers are asked for a certificate)."""
    addresses = "".join(
        f'  [[s2s.address]]\n    host = "{d}"\n    ip_address = "127.0.0.1"\n    port = {p}\n'
        for d, p in peers.items()
    )
    path.write_text(
        f"""[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {s2s_port}
  ip_address = "127.0.0.1"
  state_timeout = {state_timeout_ms}
  tls.cacertfile = "{cafile}"
{f'  tls.verify_mode = "{verify_mode}"{chr(10)}' if verify_mode else ""}[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "{PASSWORD}"
[s2s]
  use_starttls = "required"
  certfile = "{certfile}"
  default_policy = "allow"
{addresses}"""
    )
    return path


def cafile_for(auth: str, cafile: str, directory: Path) -> str:
    """The tls.cacertfile for *auth*: "trusted", the CA that issued every certificate (peers
    prove their names: SASL EXTERNAL where offered); "dialback", an unrelated CA, so no peer
    certificate verifies and every stream authenticates by dialback, as Prosody and ejabberd do
    here (their certificates are self-signed)."""
    if auth == "trusted":
        return cafile
    return certs.make_ca("bench e2e unrelated CA").write_pem(directory, "unrelated-ca.pem")


class TreeDaemon(DaemonProcess):
    """A DaemonProcess whose s2sfast comes from another tree (cwd and PYTHONPATH there)."""

    def __init__(self, tree: Path, *args: str) -> None:
        import subprocess
        import sys
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s2sfast", "run", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=paths.child_env(tree), cwd=tree,
        )  # fmt: skip
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout),
                             daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr),
                             daemon=True),
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()


def daemon_process(tree: Path | None, loop: str, *args: str) -> DaemonProcess:
    """``s2sfast run ARGS`` on *loop*, from this checkout or *tree* (--loop is only passed for
    uvloop, so a tree from before the option runs on asyncio)."""
    if loop != "asyncio":
        args = (*args, "--loop", loop)
    return TreeDaemon(tree, *args) if tree else DaemonProcess(*args)


class Daemons:
    """Two ``s2sfast run`` processes (a.test, b.test) on the event loop *loop* (s2sfast from
    *tree* when given: --baseline)."""

    kind = "daemon"

    def __init__(
        self, workdir: Path, loop: str = "asyncio", tree: Path | None = None,
        auth: str = "dialback",
    ) -> None:  # fmt: skip
        self.loop = loop
        self.tree = tree
        label = paths.tree_label(tree) if tree else ""
        self.name = f"s2sfast daemons ({loop})" + (f" @{label}" if tree else "")
        self.dir = workdir / (f"s2sfast-{loop}" + (f"-{label}" if tree else ""))
        self.dir.mkdir(parents=True, exist_ok=True)
        ca = certs.make_ca("bench e2e CA")
        cafile = ca.write_pem(self.dir, "ca.pem")
        self.s2s = {"a": free_port(), "b": free_port()}
        self.comp = {"a": free_port(), "b": free_port()}
        self.cfg = {}
        for side, other in (("a", "b"), ("b", "a")):
            cert = ca.issue([f"{side}.test"]).write_pem(self.dir, f"{side}.pem")
            self.cfg[side] = write_daemon_config(
                self.dir / f"{side}.toml",
                f"{side}.test",
                self.s2s[side],
                self.comp[side],
                {f"{other}.test": self.s2s[other]},
                cert,
                cafile_for(auth, cafile, self.dir),
            )
        self.procs: dict[str, DaemonProcess] = {}

    def start(self) -> None:
        for side in ("a", "b"):
            self.procs[side] = daemon_process(
                self.tree, self.loop, "--config", str(self.cfg[side]), "--log-level", "info"
            )
        for proc in self.procs.values():
            proc.wait_ready()

    def pids(self) -> list[int]:
        return [self.procs["a"].proc.pid, self.procs["b"].proc.pid]

    def template(self, size: int) -> bytes:
        return traffic.template("alice@a.test/r", "bob@b.test/r", size)

    async def open(self) -> tuple[traffic.RawXmpp, traffic.RawXmpp]:
        sender = await traffic.component(self.comp["a"], "a.test", PASSWORD)
        receiver = await traffic.component(self.comp["b"], "b.test", PASSWORD)
        return sender, receiver

    def log(self) -> str:
        return "\n".join(f"--- {s} ---\n{p.log()[-3000:]}" for s, p in self.procs.items())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


class Peers:
    """Two Prosody or two ejabberd servers from tests/interop/servers (Debian's packages)."""

    kind = "peer"

    def __init__(self, program: str, workdir: Path) -> None:
        import servers  # tests/interop/servers

        self.program = program
        cls = servers.SERVERS[program]
        self.name = {"prosody": "Prosody", "ejabberd": "ejabberd"}[program]
        self.dir = workdir / program
        c2s_a, s2s_a, c2s_b, s2s_b = servers.free_ports(4)
        common: dict[str, Any] = {"tls": "required", "log_level": "info"}
        self.a = cls(
            "a.test", self.dir / "a", remotes={"b.test": s2s_b}, c2s_port=c2s_a, s2s_port=s2s_a,
            **common,
        )  # fmt: skip
        self.b = cls(
            "b.test", self.dir / "b", remotes={"a.test": s2s_a}, c2s_port=c2s_b, s2s_port=s2s_b,
            **common,
        )  # fmt: skip

    @staticmethod
    def missing(program: str) -> str | None:
        try:
            import servers
        except ImportError as exc:  # the launchers are not in this checkout
            return f"tests/interop/servers is not importable ({exc})"
        return servers.server_missing(program)

    def start(self) -> None:
        self.a.start()
        self.b.start()
        self.a.adduser("alice", PASSWORD)
        self.b.adduser("bob", PASSWORD)

    def pids(self) -> list[int]:
        return [self.a.pid, self.b.pid]

    def template(self, size: int) -> bytes:
        return traffic.template(None, "bob@b.test/r", size)

    async def open(self) -> tuple[traffic.RawXmpp, traffic.RawXmpp]:
        sender = await traffic.c2s(self.a.c2s_port, "alice@a.test", PASSWORD)
        receiver = await traffic.c2s(self.b.c2s_port, "bob@b.test", PASSWORD)
        return sender, receiver

    def log(self) -> str:
        return "\n".join(f"--- {s.domain} ---\n{s.log()[-3000:]}" for s in (self.a, self.b))

    def stop(self) -> None:
        self.a.stop(wait=False)
        self.b.stop(wait=False)
        self.a.wait_stopped()
        self.b.wait_stopped()


def available_loops() -> list[str]:
    """asyncio, and uvloop when it is installed."""
    import importlib.util

    return ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def clean(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
