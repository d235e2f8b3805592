"""Direct TLS (XEP-0368) failover end to end: a ``_xmpps-server`` target that accepts TCP but
whose TLS handshake fails (not TLS at all, a plaintext XMPP port, silence, a certificate naming
another domain) is one more failed candidate, and the next SRV target, of either kind, is tried
within the same attempt (XEP-0368 section 3, RFC 6120 section 3.2.1). Real nodes on loopback, a
real DNS server, certificates from the test CA."""

from __future__ import annotations

import asyncio
import logging

import pytest
from core_helpers import authenticated_connection, message
from dnsserver import closed_port

NEXT = "trying the next candidate"


class BadTlsPort:
    """A loopback TCP port that accepts connections and never completes a TLS handshake:
    ``garbage`` answers the ClientHello with an HTTP error and closes, ``silent`` reads and says
    nothing. ``accepted`` counts connections (the candidate was really tried)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> BadTlsPort:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        await reader.read(1)  # the ClientHello's first byte
        if self.kind == "garbage":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def bad_port():
    ports: list[BadTlsPort] = []

    async def make(kind: str = "garbage") -> BadTlsPort:
        port = await BadTlsPort(kind).start()
        ports.append(port)
        return port

    yield make
    for port in ports:
        port.close()


@pytest.mark.parametrize("first", ["garbage", "plaintext-xmpp", "silent", "wrong-name"])
async def test_failed_direct_tls_handshake_moves_on_to_the_next_xmpps_target(
    dns_server, tls_mode_node, bad_port, tls_certfile, tls_ca_file, caplog, first
):
    caplog.set_level(logging.WARNING)
    # the certificate case needs a judge: under required_trusted a name mismatch is fatal
    a = await tls_mode_node(
        ["a.test"],
        mode="required_trusted" if first == "wrong-name" else "optional",
        certfile=tls_certfile("a.test"),
        cafile=tls_ca_file,
        state_timeout_ms=400,  # bounds the silent port's handshake
    )
    b = await tls_mode_node(
        ["b.test"],
        certfile=tls_certfile("b.test"),
        cafile=tls_ca_file,
        listeners=("starttls", "tls"),
    )
    probe = None
    if first in ("garbage", "silent"):
        probe = await bad_port(first)
        bad = probe.port
    elif first == "plaintext-xmpp":
        bad = b.ports["starttls"]  # a STARTTLS port published as Direct TLS
    else:
        c = await tls_mode_node(
            ["c.test"], certfile=tls_certfile("c.test"), cafile=tls_ca_file, listeners=("tls",)
        )
        bad = c.ports["tls"]
    dns_server.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns_server.add_s2s_targets("b.test", ("xmpps", 5, bad), ("xmpps", 10, b.ports["tls"]))

    await a.send(message("u@a.test", "v@b.test", "second target", id="x1"))
    got = await b.inbox.get()
    assert got.id == "x1" and got.type == "chat"
    out = authenticated_connection(a, "out")
    assert out.direct_tls and out.tls and out.peer_address[1] == b.ports["tls"]
    assert probe is None or probe.accepted >= 1
    moved = [r.getMessage() for r in caplog.records if NEXT in r.getMessage()]
    assert moved and f":{bad}" in moved[0]
    if first == "silent":
        assert ": timeout (" in moved[0]
    elif first == "wrong-name":
        assert "does not name b.test" in moved[0]
    else:
        assert "Direct TLS handshake failed" in moved[0]
    assert await a.inbox.nothing(0.2)  # nothing bounced


async def test_failed_direct_tls_moves_on_to_a_starttls_target_in_the_shared_order(
    dns_server, tls_mode_node, bad_port, tls_certfile, tls_ca_file
):
    a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"), cafile=tls_ca_file)
    b = await tls_mode_node(
        ["b.test"],
        certfile=tls_certfile("b.test"),
        cafile=tls_ca_file,
        listeners=("starttls", "tls"),
    )
    garbage = await bad_port("garbage")
    dns_server.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns_server.add_s2s_targets(
        "b.test",
        ("xmpps", 5, garbage.port),
        ("xmpp", 10, b.ports["starttls"]),
        ("xmpps", 20, b.ports["tls"]),
    )
    await a.send(message("u@a.test", "v@b.test", "starttls next", id="s1"))
    assert (await b.inbox.get()).id == "s1"
    out = authenticated_connection(a, "out")
    assert out.tls and not out.direct_tls and out.peer_address[1] == b.ports["starttls"]
    assert garbage.accepted == 1


async def test_every_candidate_failing_bounces_with_each_reason_the_last_one_last(
    dns_server, tls_mode_node, bad_port, tls_certfile, tls_ca_file
):
    a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"), cafile=tls_ca_file)
    b = await tls_mode_node(["b.test"], certfile=tls_certfile("b.test"), cafile=tls_ca_file)
    first, last = await bad_port("garbage"), await bad_port("garbage")
    refused = closed_port()
    dns_server.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns_server.add_s2s_targets(
        "b.test",
        ("xmpps", 5, first.port),
        ("xmpps", 10, refused),
        ("xmpps", 20, last.port),
    )
    await a.send(message("u@a.test", "v@b.test", "nowhere", id="n1"))
    bounce = await a.inbox.get()
    assert bounce.id == "n1" and bounce.type == "error"
    text = bounce.raw.decode()
    # one attempt: each candidate once, in order, the final handshake failure last
    assert first.accepted == 1 and last.accepted == 1
    at = [text.find(f":{p}") for p in (first.port, refused, last.port)]
    assert -1 not in at and at == sorted(at), text
    assert "refused" in text[at[1] : at[2]]
    assert "Direct TLS handshake failed" in text[at[2] :]
    assert await b.inbox.nothing(0.2)


async def test_a_peer_that_opened_its_stream_and_refused_is_not_failed_over(
    dns_server, tls_mode_node, tls_certfile, tls_ca_file, caplog
):
    """c.test's Direct TLS port completes TLS and opens its stream, then refuses b.test
    (host-unknown): that is the server's answer, not a broken candidate; b.test's real port,
    next in order, is never tried and the stanza bounces."""
    caplog.set_level(logging.WARNING)
    a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"), cafile=tls_ca_file)
    b = await tls_mode_node(
        ["b.test"], certfile=tls_certfile("b.test"), cafile=tls_ca_file, listeners=("tls",)
    )
    c = await tls_mode_node(
        ["c.test"], certfile=tls_certfile("c.test"), cafile=tls_ca_file, listeners=("tls",)
    )
    dns_server.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns_server.add_s2s_targets(
        "b.test", ("xmpps", 5, c.ports["tls"]), ("xmpps", 10, b.ports["tls"])
    )
    await a.send(message("u@a.test", "v@b.test", "refused", id="r1"))
    bounce = await a.inbox.get()
    assert bounce.id == "r1" and bounce.type == "error"
    assert await b.inbox.nothing(0.2)
    assert not [c for c in b.connections() if c.direction == "in"]
    assert NEXT not in caplog.text
