"""Fixtures for the Prosody interop suite: a Prosody peer (b.test) and an s2sfast Node (a.test).

Every test gets its own Prosody in a PEER_DIR under its tmp_path, on fresh loopback ports, and
the fixture stops it (by the PID the shared script recorded) when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from interop_c2s import C2SClient
from interop_node import B, Inbox
from interop_peer import Prosody, free_ports, missing_reason

from s2sfast.config import Config

PASSWORD = "pw"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = missing_reason()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.interop)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"interop: {reason}"))


@pytest.fixture
def prosody(tmp_path: Path):
    """Factory: ``prosody(tls="optional", remotes={"a.test": port})`` -> a started Prosody
    serving b.test with users bob and alice (password "pw"); stopped at teardown."""
    started: list[Prosody] = []

    def make(
        tls: str = "required",
        remotes: dict[str, int] | None = None,
        users: tuple[str, ...] = ("bob", "alice"),
        **kw: Any,
    ) -> Prosody:
        p = Prosody(B, tmp_path / f"prosody-{len(started)}", remotes or {}, tls=tls, **kw)
        started.append(p)
        p.start()
        for user in users:
            p.adduser(user, PASSWORD)
        return p

    yield make
    for p in started:
        p.stop()


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
