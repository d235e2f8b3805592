"""Shared fixtures: test certificates (tests/certs.py), free loopback ports, node factories."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Iterable
from typing import Any

import pytest
from certs import *  # noqa: F401,F403  (registers tls_ca, tls_ca_file, tls_certfile)

from s2sfast.config import (
    AddressOverride,
    Config,
    HostPolicy,
    ListenS2S,
    ListenTls,
    OutgoingOptions,
    S2SOptions,
)

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_ports():
    """Factory: ``free_ports(n)`` -> n distinct free loopback ports."""

    def make(n: int = 1) -> list[int]:
        ports: set[int] = set()
        while len(ports) < n:
            ports.add(free_port())
        return sorted(ports)

    return make


def node_config(
    hosts: Iterable[str],
    *,
    port: int,
    addresses: dict[str, int] | None = None,
    mode: str = "false",
    certfile: str | None = None,
    cafile: str | None = None,
    shared: str | None = None,
    default_policy: str = "allow",
    host_policy: dict[str, str] | None = None,
    state_timeout_ms: int = 5000,
    max_stanza_size: int | None = None,
) -> Config:
    """A Config for one test node listening on 127.0.0.1:*port*; *addresses* maps remote
    domains to loopback ports ([s2s] address overrides)."""
    s2s = S2SOptions(
        default_policy=default_policy,
        host_policy=tuple(HostPolicy(host=h, policy=p) for h, p in (host_policy or {}).items()),
        use_starttls=mode,
        certfile=certfile,
        shared=shared or secrets.token_hex(10),
        address=tuple(
            AddressOverride(host=h, ip_address=LOOPBACK, port=p)
            for h, p in (addresses or {}).items()
        ),
        outgoing=OutgoingOptions(connection_timeout=3000),
    )
    return Config(
        hosts=tuple(hosts),
        listen_s2s=(
            ListenS2S(
                port=port,
                ip_address=LOOPBACK,
                state_timeout=state_timeout_ms,
                max_stanza_size=max_stanza_size,
                tls=ListenTls(cacertfile=cafile),
            ),
        ),
        s2s=s2s,
    )


class Inbox:
    """A stanza handler that queues what it gets; ``await inbox.get()`` waits for the next."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.seen: list[Any] = []

    def __call__(self, stanza: Any) -> None:
        self.seen.append(stanza)
        self.queue.put_nowait(stanza)

    async def get(self, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, wait: float = 0.5) -> bool:
        """True when nothing arrives within *wait* seconds."""
        try:
            await asyncio.wait_for(self.queue.get(), wait)
        except TimeoutError:
            return True
        return False


@pytest.fixture
async def federation():
    """Factory building and starting several nodes that know each other's ports.

    ``nodes = await federation({"A": {"hosts": ["a.test"], ...}, "B": {...}})``; each spec
    takes node_config's keyword arguments plus ``addresses`` (extra/overriding domain -> port),
    ``keepalive`` and ``max_queue``; an ``addresses`` value may name another node. Every node
    gets ``.inbox`` (an Inbox handler) and
    ``.port``. All nodes are stopped at the end of the test.
    """
    from s2sfast.node import Node

    started: list[Node] = []

    async def build(spec: dict[str, dict[str, Any]]) -> dict[str, Node]:
        ports = {name: free_port() for name in spec}
        by_domain = {d: ports[name] for name, o in spec.items() for d in o["hosts"]}
        nodes: dict[str, Node] = {}
        for name, options in spec.items():
            o = dict(options)
            hosts = o.pop("hosts")
            keepalive = o.pop("keepalive", 60.0)
            max_queue = o.pop("max_queue", 1000)
            addresses = {d: p for d, p in by_domain.items() if d not in hosts}
            for domain, where in o.pop("addresses", {}).items():
                # a node name routes the domain to that node's port; an int is a port
                addresses[domain] = ports[where] if isinstance(where, str) else where
            config = node_config(hosts, port=ports[name], addresses=addresses, **o)
            node = Node(config, keepalive=keepalive, max_queue=max_queue)
            node.inbox = Inbox()
            node.on_stanza(node.inbox)
            await node.start()
            node.port = node.listen_addresses()[0][1]
            started.append(node)
            nodes[name] = node
        return nodes

    yield build
    for node in reversed(started):
        await node.stop(timeout=3)


def message(frm: str, to: str, body: str, id: str = "m1") -> bytes:
    """A chat message's bytes (jabber:server default namespace, no xmlns on the element)."""
    return (
        f"<message from='{frm}' to='{to}' type='chat' id='{id}'><body>{body}</body></message>"
    ).encode()
