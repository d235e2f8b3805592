"""Fixtures for the interop suite: real Prosody and ejabberd peers serving b.test (the harness in
``servers/``) and an s2sfast Node serving a.test, all on 127.0.0.1.

Every test gets its own servers, with their state under its tmp_path and fresh loopback ports;
teardown kills them by PID. A test that needs a server that is not installed is skipped with the
reason and how to install it - or fails, when ``S2SFAST_REQUIRE_INTEROP=1`` (CI sets it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from interop_c2s import C2SClient
from interop_node import B, Inbox
from servers import SERVERS, ServerProcess, free_ports, need_server

from s2sfast.config import Config

PASSWORD = "pw"
#: the servers a scenario runs against when it applies to both
BOTH = ("prosody", "ejabberd")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture
def start_peer(tmp_path: Path):
    """Factory: ``start_peer("prosody" | "ejabberd", tls=..., remotes={"a.test": port})`` -> a
    started server for b.test (``domain=`` for another) with users bob and alice (password
    "pw"); other keywords go to the server class (``dns``, ``extra_config``, ``certificate``,
    ``cafile``, ...). Killed at teardown."""
    started: list[ServerProcess] = []

    def make(
        kind: str,
        tls: str = "required",
        remotes: dict[str, int] | None = None,
        users: tuple[str, ...] = ("bob", "alice"),
        domain: str = B,
        **kw: Any,
    ) -> ServerProcess:
        need_server(kind)
        server = SERVERS[kind](
            domain, tmp_path / f"{kind}-{domain}-{len(started)}", tls=tls, remotes=remotes, **kw
        )
        started.append(server)
        server.start()
        for user in users:
            server.adduser(user, PASSWORD)
        return server

    yield make
    for server in started:
        # SIGKILL by PID: the test is over and its state is thrown away, so an orderly
        # shutdown (ejabberd ~1 s of CPU, Prosody ~1.5 s) would only cost the next test time
        server.kill()


@pytest.fixture
def prosody(start_peer):
    """Factory: a started Prosody (see start_peer)."""
    return functools.partial(start_peer, "prosody")


@pytest.fixture
def ejabberd(start_peer):
    """Factory: a started ejabberd (see start_peer)."""
    return functools.partial(start_peer, "ejabberd")


@pytest.fixture(params=BOTH)
def server(request) -> str:
    """The peer server a scenario runs against: "prosody", then "ejabberd"."""
    return request.param


@pytest.fixture
def peer(start_peer, server):
    """Factory: a started server of the kind ``server`` names (see start_peer)."""
    return functools.partial(start_peer, server)


@pytest.fixture
async def s2sfast_node():
    """Factory: ``await s2sfast_node(config)`` -> a started Node with ``.inbox``; stopped at
    teardown."""
    from dnsserver import DnsServer

    from s2sfast.net.dns import Resolver
    from s2sfast.node import Node

    started: list[Node] = []
    zones: list[DnsServer] = []

    async def make(config: Config, **kw: Any) -> Node:
        if "resolver" not in kw:  # never the machine's resolver: an empty loopback zone
            zones.append(DnsServer())
            kw["resolver"] = Resolver([zones[-1].nameserver], timeout=1, retries=1)
        node = Node(config, **kw)
        node.inbox = Inbox()
        node.on_stanza(node.inbox)
        await node.start()
        started.append(node)
        return node

    yield make
    for node in reversed(started):
        await node.stop(timeout=3)
    for zone in zones:
        zone.close()


@pytest.fixture
async def c2s():
    """Factory: ``await c2s(server, "bob")`` -> a logged-in C2SClient; closed at teardown."""
    clients: list[C2SClient] = []

    async def make(peer: ServerProcess, user: str, resource: str = "r") -> C2SClient:
        c = await C2SClient.login(peer.c2s_port, f"{user}@{peer.domain}", PASSWORD, resource)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
def ports() -> Callable[[int], list[int]]:
    return free_ports
