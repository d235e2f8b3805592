"""Outgoing connections of real nodes found through a real DNS server on loopback (issue 5):
SRV, A/AAAA fallback, address overrides, and the bounce each failure gives the local sender."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import pytest
from core_helpers import Inbox, free_port, message, node_config
from dnsserver import BlackholedPort, DnsServer, closed_port
from lxml import etree

from s2sfast.config import AddressOverride, DnsOptions, OutgoingOptions
from s2sfast.net.dns import Resolver
from s2sfast.node import Node

SRV = "_xmpp-server._tcp."
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
#: fast clock for back-off in tests; production uses 1 s and 60 s
RETRY_INITIAL = 0.05
DEADLINE = 1.5


def bounce_of(stanza: Any) -> tuple[str, str, str]:
    """(id, error type, condition) of an error stanza delivered to a local handler."""
    el = etree.fromstring(stanza.raw)
    assert el.get("type") == "error", stanza.raw
    error = el.find("error")
    if error is None:
        error = el.find("{jabber:server}error")
    assert error is not None, stanza.raw
    conditions = [c for c in error if etree.QName(c).namespace == STANZAS_NS]
    assert conditions, stanza.raw
    return el.get("id"), error.get("type"), etree.QName(conditions[0]).localname


@pytest.fixture
def dns(dns_server: DnsServer) -> DnsServer:
    """The loopback DNS server every node of the test resolves through (conftest's)."""
    return dns_server


@pytest.fixture
async def make_node(dns: DnsServer):
    """Factory: a started Node for *hosts* resolving through the loopback DNS server."""
    started: list[Node] = []

    async def make(
        hosts: list[str],
        *,
        port: int | None = None,
        dns_timeout: float = 1.0,
        dns_retries: int = 1,
        ip_versions: tuple[int, ...] = (4, 6),
        outgoing_port: int = 5269,
        connection_timeout: int | None = 3000,
        addresses: dict[str, int] | None = None,
        shared: str | None = None,
        max_queue: int = 1000,
        state_timeout_ms: int = 5000,
        mode: str = "false",
        certfile: str | None = None,
        cafile: str | None = None,
    ) -> Node:
        config = node_config(
            hosts,
            port=port or free_port(),
            shared=shared,
            state_timeout_ms=state_timeout_ms,
            mode=mode,
            certfile=certfile,
            cafile=cafile,
        )
        s2s = replace(
            config.s2s,
            outgoing=OutgoingOptions(
                port=outgoing_port, ip_versions=ip_versions, connection_timeout=connection_timeout
            ),
            dns=DnsOptions(timeout=dns_timeout, retries=dns_retries),
            address=tuple(
                AddressOverride(host=h, ip_address="127.0.0.1", port=p)
                for h, p in (addresses or {}).items()
            ),
        )
        config = replace(config, s2s=s2s)
        resolver = Resolver.from_options(s2s.dns, [dns.nameserver])
        node = Node(
            config,
            resolver=resolver,
            retry_initial=RETRY_INITIAL,
            pending_deadline=DEADLINE,
            max_queue=max_queue,
        )
        node.inbox = Inbox()
        node.on_stanza(node.inbox)
        await node.start()
        node.port = node.listen_addresses()[0][1]
        started.append(node)
        return node

    yield make
    for node in reversed(started):
        await node.stop(timeout=3)


def publish(dns: DnsServer, domain: str, port: int, target: str | None = None) -> None:
    """SRV for *domain* -> *target* (default xmpp.<domain>) on *port*, target A 127.0.0.1."""
    target = target or f"xmpp.{domain}"
    dns.add_srv(SRV + domain, 0, 0, port, target)
    dns.add_a(target, "127.0.0.1")


# -- finding the peer ------------------------------------------------------------------------


async def test_srv_records_route_both_ways(dns, make_node):
    a = await make_node(["a.test"])
    b = await make_node(["b.test"])
    publish(dns, "a.test", a.port)
    publish(dns, "b.test", b.port)
    await a.send(message("u@a.test", "v@b.test", "via SRV", id="s1"))
    got = await b.inbox.get()
    assert got.id == "s1"
    # A looked up b.test's SRV and its target; B looked up a.test to verify dialback
    assert dns.count(SRV + "b.test", "SRV") >= 1
    assert dns.count("xmpp.b.test", "A") >= 1
    assert dns.count(SRV + "a.test", "SRV") >= 1


async def test_no_srv_falls_back_to_a_records_on_outgoing_port(dns, make_node):
    b_port = free_port()
    a = await make_node(["a.test"], outgoing_port=b_port)
    b = await make_node(["b.test"], port=b_port)
    publish(dns, "a.test", a.port)
    dns.add_a("b.test", "127.0.0.1")  # no SRV for b.test
    await a.send(message("u@a.test", "v@b.test", "via A", id="f1"))
    assert (await b.inbox.get()).id == "f1"
    assert dns.count("b.test", "A") >= 1


async def test_ipv6_first_falls_through_to_ipv4(dns, make_node):
    # ip_versions [6, 4]: ::1 is tried first (nobody listens there: refused), then 127.0.0.1
    a = await make_node(["a.test"], ip_versions=(6, 4))
    b = await make_node(["b.test"])
    publish(dns, "a.test", a.port)
    publish(dns, "b.test", b.port)
    dns.add_aaaa("xmpp.b.test", "::1")
    await a.send(message("u@a.test", "v@b.test", "six then four", id="64"))
    assert (await b.inbox.get()).id == "64"
    assert dns.count("xmpp.b.test", "AAAA") >= 1


async def test_address_override_beats_dns(dns, make_node):
    b = await make_node(["b.test"])
    a = await make_node(["a.test"], addresses={"b.test": b.port})
    publish(dns, "a.test", a.port)
    publish(dns, "b.test", closed_port())  # DNS would send A to a dead port
    await a.send(message("u@a.test", "v@b.test", "override", id="o1"))
    assert (await b.inbox.get()).id == "o1"
    assert dns.count(SRV + "b.test") == 0 and dns.count("xmpp.b.test") == 0


# -- bounces ---------------------------------------------------------------------------------


async def test_nxdomain_bounces_remote_server_not_found_at_once(dns, make_node):
    a = await make_node(["a.test"])
    await a.send(message("u@a.test", "v@nowhere.test", "lost", id="nx1"))
    assert bounce_of(await a.inbox.get(DEADLINE / 2)) == (
        "nx1",
        "cancel",
        "remote-server-not-found",
    )


async def test_dot_target_bounces_at_once_without_fallback(dns, make_node):
    a = await make_node(["a.test"])
    dns.add_srv(SRV + "noxmpp.test", 0, 0, 0, ".")
    dns.add_a("noxmpp.test", "127.0.0.1")
    await a.send(message("u@a.test", "v@noxmpp.test", "no service", id="dot"))
    bounce = bounce_of(await a.inbox.get(DEADLINE / 2))
    assert bounce == ("dot", "cancel", "remote-server-not-found")
    assert dns.count("noxmpp.test", "A") == 0


async def test_silent_dns_bounces_remote_server_timeout(dns, make_node):
    a = await make_node(["a.test"], dns_timeout=0.2, dns_retries=2)
    dns.blackhole = True
    await a.send(message("u@a.test", "v@slow.test", "dns down", id="t1"))
    assert bounce_of(await a.inbox.get(10)) == ("t1", "wait", "remote-server-timeout")
    # dns.retries SRV queries per lookup reached the server (lookups repeat during back-off),
    # and a silent server is no reason to fall back to A/AAAA
    assert dns.count(SRV + "slow.test", "SRV") >= 2
    assert {(q.name, q.qtype) for q in dns.queries} == {(SRV + "slow.test", "SRV")}


async def test_blackholed_port_bounces_remote_server_timeout(dns, make_node):
    a = await make_node(["a.test"], connection_timeout=200)
    with BlackholedPort() as hole:
        publish(dns, "hole.test", hole.port)
        await a.send(message("u@a.test", "v@hole.test", "into the void", id="h1"))
        assert bounce_of(await a.inbox.get(10)) == ("h1", "wait", "remote-server-timeout")


async def test_refused_everywhere_queues_then_bounces_not_found_at_the_deadline(dns, make_node):
    a = await make_node(["a.test"])
    publish(dns, "down.test", closed_port())
    await a.send(message("u@a.test", "v@down.test", "one", id="d1"))
    await a.send(message("u@a.test", "v@down.test", "two", id="d2"))
    # queued during back-off, not bounced at the first refusal
    assert await a.inbox.nothing(DEADLINE / 3)
    got = [bounce_of(await a.inbox.get(10)) for _ in range(2)]
    assert got == [
        ("d1", "cancel", "remote-server-not-found"),
        ("d2", "cancel", "remote-server-not-found"),
    ]
    assert dns.count(SRV + "down.test", "SRV") >= 2  # it retried


async def test_errors_and_iq_results_are_never_bounced(dns, make_node):
    a = await make_node(["a.test"])
    await a.send(
        b"<message from='u@a.test' to='v@nowhere.test' type='error' id='e1'>"
        b"<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"</error></message>"
    )
    await a.send(b"<iq from='a.test' to='nowhere.test' type='result' id='r1'/>")
    await a.send(message("u@a.test", "v@nowhere.test", "this one bounces", id="m1"))
    assert bounce_of(await a.inbox.get(5))[0] == "m1"
    assert await a.inbox.nothing(0.5)


async def test_peer_back_up_mid_backoff_gets_the_queued_stanzas(dns, make_node):
    b_port = free_port()
    shared = secrets.token_hex(10)
    a = await make_node(["a.test"])
    publish(dns, "a.test", a.port)
    publish(dns, "b.test", b_port)
    await a.send(message("u@a.test", "v@b.test", "wait for me", id="late"))
    # let a few attempts fail (refused), well before the deadline
    for _ in range(100):
        if dns.count(SRV + "b.test", "SRV") >= 2:
            break
        await asyncio.sleep(0.02)
    assert dns.count(SRV + "b.test", "SRV") >= 2
    b = await make_node(["b.test"], port=b_port, shared=shared)
    assert (await b.inbox.get(10)).id == "late"
    assert a.inbox.seen == []  # never bounced


async def test_ipv6_only_ignores_a_records(dns, make_node):
    b = await make_node(["b.test"])
    a = await make_node(["a.test"], ip_versions=(6,))
    publish(dns, "b.test", b.port)  # xmpp.b.test has only an A record
    await a.send(message("u@a.test", "v@b.test", "v6 only", id="v6"))
    bounce = bounce_of(await a.inbox.get(DEADLINE / 2))
    assert bounce == ("v6", "cancel", "remote-server-not-found")
    assert dns.count("xmpp.b.test", "AAAA") >= 1 and dns.count("xmpp.b.test", "A") == 0
    assert b.inbox.seen == []


async def test_full_queue_bounces_resource_constraint(dns, make_node):
    a = await make_node(["a.test"], max_queue=2)
    publish(dns, "down.test", closed_port())
    for i in range(3):
        await a.send(message("u@a.test", "v@down.test", "x", id=f"q{i}"))
    # the third did not fit while the domain is in back-off
    assert bounce_of(await a.inbox.get(DEADLINE / 2)) == ("q2", "wait", "resource-constraint")
    # the two queued ones bounce at the deadline, as the domain is still refusing
    assert [bounce_of(await a.inbox.get(10)) for _ in range(2)] == [
        ("q0", "cancel", "remote-server-not-found"),
        ("q1", "cancel", "remote-server-not-found"),
    ]


async def test_peer_that_accepts_but_never_negotiates_bounces_remote_server_timeout(dns, make_node):
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        a = await make_node(["a.test"], state_timeout_ms=300)
        publish(dns, "mute.test", server.sockets[0].getsockname()[1])
        await a.send(message("u@a.test", "v@mute.test", "anyone?", id="mu"))
        assert bounce_of(await a.inbox.get(10)) == ("mu", "wait", "remote-server-timeout")
        assert accepted  # TCP was up: it is the negotiation that timed out
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_tls_checks_the_domain_not_the_srv_target(dns, make_node, tls_certfile, tls_ca_file):
    """RFC 6120 13.7.2.1 / RFC 6125: the reference identity is the XMPP domain, so a certificate
    for b.test is right even though DNS sent us to host.elsewhere.test."""
    tls = dict(mode="required_trusted", cafile=tls_ca_file)
    a = await make_node(["a.test"], certfile=tls_certfile("a.test"), **tls)
    b = await make_node(["b.test"], certfile=tls_certfile("b.test"), **tls)
    publish(dns, "a.test", a.port, target="host.elsewhere.test")
    publish(dns, "b.test", b.port, target="host.elsewhere.test")
    await a.send(message("u@a.test", "v@b.test", "over TLS", id="tls1"))
    assert (await b.inbox.get()).id == "tls1"
    out = [c for c in a.connections() if c.direction == "out"]
    assert out and out[0].tls and out[0].peer_certificate.ok


async def test_tls_refuses_a_certificate_for_the_srv_target_only(
    dns, make_node, tls_certfile, tls_ca_file
):
    """The converse: a certificate naming only the SRV target does not prove b.test."""
    tls = dict(mode="required_trusted", cafile=tls_ca_file)
    a = await make_node(["a.test"], certfile=tls_certfile("a.test"), **tls)
    b = await make_node(["b.test"], certfile=tls_certfile("xmpp.b.test"), **tls)
    publish(dns, "a.test", a.port)
    publish(dns, "b.test", b.port)  # target xmpp.b.test, the name in B's certificate
    await a.send(message("u@a.test", "v@b.test", "should not go", id="tls2"))
    got = await a.inbox.get(10)
    assert bounce_of(got) == ("tls2", "cancel", "remote-server-not-found")
    assert b"does not name b.test" in got.raw  # rejected for the name, not for DNS
    assert b.inbox.seen == []
