"""Fixtures for the Prosody interop suite: a Prosody peer (b.test) and an s2sfast Node (a.test).

Every test gets its own Prosody in a PEER_DIR under its tmp_path, on fresh loopback ports, and
the fixture stops it (by the PID the shared script recorded) when the test ends.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from interop_c2s import C2SClient
from interop_node import B, Inbox
from interop_peer import Prosody, free_ports, missing_reason

from s2sfast.config import Config

PASSWORD = "pw"
#: seconds a background stop may take (the script itself escalates to SIGKILL after 5 s)
_STOP_WAIT = 15


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = missing_reason()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.interop)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"interop: {reason}"))


#: Prosody instances being stopped in the background (waited for at the end of the session)
_STOPPING: list[subprocess.Popen[bytes]] = []


@pytest.fixture(scope="session", autouse=True)
def _prosody_stops_finish():
    """Every Prosody stopped by a test's teardown has exited before the session ends."""
    yield
    for proc in _STOPPING:
        try:
            proc.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def prosody(tmp_path: Path):
    """Factory: ``prosody(tls="optional", remotes={"a.test": port})`` -> a started Prosody
    serving b.test with users bob and alice (password "pw"); stopped at teardown.
    ``certificate=`` (a tests/certs.py IssuedCert) replaces its self-signed certificate;
    ``domain=`` serves another domain than b.test."""
    started: list[Prosody] = []

    def make(
        tls: str = "required",
        remotes: dict[str, int] | None = None,
        users: tuple[str, ...] = ("bob", "alice"),
        certificate: Any = None,
        domain: str = B,
        **kw: Any,
    ) -> Prosody:
        p = Prosody(domain, tmp_path / f"prosody-{len(started)}", remotes or {}, tls=tls, **kw)
        if certificate is not None:  # a tests/certs.py IssuedCert
            p.install_certificate(certificate.cert_pem(), certificate.key_pem())
        started.append(p)
        p.start()
        for user in users:
            p.adduser(user, PASSWORD)
        return p

    yield make
    for p in started:
        proc = p.stop_nowait()  # SIGTERM now; the script waits for the exit in the background
        if proc is not None:
            _STOPPING.append(proc)


@pytest.fixture
async def s2sfast_node():
    """Factory: ``await s2sfast_node(config)`` -> a started Node with ``.inbox``; stopped at
    teardown."""
    from s2sfast.node import Node

    started: list[Node] = []

    async def make(config: Config, **kw: Any) -> Node:
        node = Node(config, **kw)
        node.inbox = Inbox()
        node.on_stanza(node.inbox)
        await node.start()
        started.append(node)
        return node

    yield make
    for node in reversed(started):
        await node.stop(timeout=3)


@pytest.fixture
async def c2s():
    """Factory: ``await c2s(prosody, "bob")`` -> a logged-in C2SClient; closed at teardown."""
    clients: list[C2SClient] = []

    async def make(peer: Prosody, user: str, resource: str = "r") -> C2SClient:
        c = await C2SClient.login(peer.c2s_port, f"{user}@{peer.domain}", PASSWORD, resource)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
def ports() -> Callable[[int], list[int]]:
    return free_ports
