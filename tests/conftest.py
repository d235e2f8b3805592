"""Shared fixtures: test certificates (tests/certs.py), free loopback ports, node factories."""

from __future__ import annotations

import os
from typing import Any

import pytest
from certs import *  # noqa: F401,F403  (registers tls_ca, tls_ca_file, tls_certfile)
from core_helpers import Inbox, free_port, node_config, start_tls_mode_node
from dnsserver import dns_server  # noqa: F401  (fixture: a real DNS server on loopback)
from hypothesis import HealthCheck, settings

from s2sfast.net.dns import Resolver

# Property tests. "ci" is deterministic, so that a landing never depends on luck: the examples
# are derived from each test's source (derandomize), no example database carries failures from
# one run to the next, the timing-based health check cannot fail a loaded machine, and a failure
# prints its @reproduce_failure blob. "dev" explores new examples on every run. Tests that set
# max_examples keep theirs; both profiles leave timing to bench/ (deadline=None).
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev")
)


@pytest.fixture
async def tls_mode_node(dns_server):  # noqa: F811
    """Factory: ``await tls_mode_node(hosts, listeners=("starttls", "direct"), **node_config)``
    -> a started Node with one listener per ``tls.mode`` (``node.ports``: mode -> port),
    resolving through the loopback DNS server; all are stopped at the end of the test."""
    started: list[Any] = []

    async def make(
        hosts: list[str], *, listeners: tuple[str, ...] = ("starttls",), **config: Any
    ) -> Any:
        config.setdefault("mode", "optional")
        node = await start_tls_mode_node(
            hosts, dns_server.nameserver, listeners=listeners, **config
        )
        started.append(node)
        return node

    yield make
    for node in reversed(started):
        await node.stop(timeout=3)


@pytest.fixture
def free_ports():
    """Factory: ``free_ports(n)`` -> n distinct free loopback ports."""

    def make(n: int = 1) -> list[int]:
        ports: set[int] = set()
        while len(ports) < n:
            ports.add(free_port())
        return sorted(ports)

    return make


@pytest.fixture
async def federation(dns_server):  # noqa: F811
    """Factory building and starting several nodes that know each other's ports.

    ``nodes = await federation({"A": {"hosts": ["a.test"], ...}, "B": {...}})``; each spec
    takes node_config's keyword arguments plus ``addresses`` (extra/overriding domain -> port,
    or the name of another node), ``keepalive``, ``max_queue``, ``retry_initial`` and
    ``pending_deadline``. Every node gets ``.inbox`` (an Inbox handler) and ``.port``, and
    resolves names through the loopback DNS server (``dns_server``), never the machine's.
    All nodes are stopped at the end of the test.
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
            timing = {k: o.pop(k) for k in ("retry_initial", "pending_deadline") if k in o}
            addresses = {d: p for d, p in by_domain.items() if d not in hosts}
            for domain, where in o.pop("addresses", {}).items():
                # a node name routes the domain to that node's port; an int is a port
                addresses[domain] = ports[where] if isinstance(where, str) else where
            config = node_config(hosts, port=ports[name], addresses=addresses, **o)
            # never the machine's resolver: unknown domains get NXDOMAIN from the test server
            resolver = Resolver([dns_server.nameserver], timeout=1, retries=1)
            node = Node(
                config, keepalive=keepalive, max_queue=max_queue, resolver=resolver, **timing
            )
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
