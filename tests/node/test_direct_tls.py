"""Direct TLS (XEP-0368) end to end: real nodes on loopback finding each other through a real DNS
server (``_xmpps-server._tcp`` beside ``_xmpp-server._tcp``), TLS from the first byte with SNI
and ALPN ``xmpp-server``, no STARTTLS step, the mixed priority order with fallback, the
``[[listen.s2s]] tls.mode`` listener kinds, and certificates from a test CA (valid, expired,
wrong name, self-signed) under ``required_trusted`` on both transports."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Any

import pytest
from certs import self_signed, utcnow
from core_helpers import HEADER, authenticated_connection, message
from dnsserver import DnsServer, closed_port

from s2sfast.framing import Stanza, StreamFramer, StreamOpen
from s2sfast.net.dns import SRV_PREFIX, XMPPS_SRV_PREFIX

TLS_NS = b"urn:ietf:params:xml:ns:xmpp-tls"


@pytest.fixture
def dns(dns_server: DnsServer) -> DnsServer:
    return dns_server


# -- finding a Direct TLS peer --------------------------------------------------------------


async def test_peer_with_only_a_direct_tls_listener_is_found_via_xmpps_srv(
    dns, tls_mode_node, tls_certfile, tls_ca_file
):
    a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"), cafile=tls_ca_file)
    b = await tls_mode_node(
        ["b.test"], certfile=tls_certfile("b.test"), cafile=tls_ca_file, listeners=("tls",)
    )
    dns.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns.add_s2s_targets("b.test", ("xmpps", 0, b.ports["tls"]))
    await a.send(message("u@a.test", "v@b.test", "over Direct TLS", id="d1"))
    assert (await b.inbox.get()).id == "d1"
    out = authenticated_connection(a, "out")
    assert out.direct_tls and out.tls and out.peer_certificate.ok
    assert authenticated_connection(b, "in").direct_tls and authenticated_connection(b, "in").tls
    assert dns.count(XMPPS_SRV_PREFIX + "b.test", "SRV") >= 1
    assert dns.count(SRV_PREFIX + "b.test", "SRV") >= 1
    # the other way round: B's reply goes to a.test, which has only a STARTTLS record
    await b.send(message("v@b.test", "u@a.test", "back", id="d2"))
    assert (await a.inbox.get()).id == "d2"
    back = authenticated_connection(b, "out")
    assert back.tls and not back.direct_tls


async def test_xmpps_preferred_by_priority_falls_back_when_the_tls_port_refuses(
    dns, tls_mode_node, tls_certfile, tls_ca_file
):
    a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"), cafile=tls_ca_file)
    b = await tls_mode_node(["b.test"], certfile=tls_certfile("b.test"), cafile=tls_ca_file)
    dns.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns.add_s2s_targets("b.test", ("xmpps", 5, closed_port()), ("xmpp", 10, b.ports["starttls"]))
    await a.send(message("u@a.test", "v@b.test", "fallback", id="f1"))
    assert (await b.inbox.get()).id == "f1"
    out = authenticated_connection(a, "out")
    assert out.tls and not out.direct_tls


@pytest.mark.parametrize(
    ("xmpps_priority", "xmpp_priority", "direct"), [(5, 10, True), (10, 5, False)]
)
async def test_combined_priority_order_picks_the_transport(
    dns, tls_mode_node, tls_certfile, tls_ca_file, xmpps_priority, xmpp_priority, direct
):
    a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"), cafile=tls_ca_file)
    b = await tls_mode_node(
        ["b.test"],
        certfile=tls_certfile("b.test"),
        cafile=tls_ca_file,
        listeners=("starttls", "tls"),
    )
    dns.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns.add_s2s_targets(
        "b.test",
        ("xmpps", xmpps_priority, b.ports["tls"]),
        ("xmpp", xmpp_priority, b.ports["starttls"]),
    )
    await a.send(message("u@a.test", "v@b.test", "order", id="o1"))
    assert (await b.inbox.get()).id == "o1"
    assert authenticated_connection(a, "out").direct_tls is direct
    assert authenticated_connection(b, "in").direct_tls is direct


async def test_use_starttls_false_ignores_xmpps_records(dns, tls_mode_node, tls_certfile):
    a = await tls_mode_node(["a.test"], mode="false")
    b = await tls_mode_node(["b.test"], mode="optional", certfile=tls_certfile("b.test"))
    dns.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns.add_s2s_targets("b.test", ("xmpps", 0, closed_port()), ("xmpp", 10, b.ports["starttls"]))
    await a.send(message("u@a.test", "v@b.test", "plain", id="p1"))
    assert (await b.inbox.get()).id == "p1"
    assert not authenticated_connection(a, "out").tls
    assert dns.count(XMPPS_SRV_PREFIX + "b.test") == 0


# -- what the other end sees ----------------------------------------------------------------


async def test_server_sees_sni_alpn_and_a_stream_opened_inside_tls(
    dns, tls_mode_node, tls_ca, tls_certfile, tmp_path
):
    """A plain TLS server stands in for b.test's Direct TLS port and records the handshake."""
    seen: dict[str, Any] = {}
    got_bytes = asyncio.get_running_loop().create_future()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_ca.issue(["b.test"]).write_pem(tmp_path))
    server_ctx.set_alpn_protocols(["xmpp-server"])

    def sni(sslobj: Any, name: str | None, ctx: Any) -> None:
        seen["sni"] = name

    server_ctx.sni_callback = sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["alpn"] = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        data = await reader.read(4096)
        if not got_bytes.done():
            got_bytes.set_result(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        a = await tls_mode_node(["a.test"], certfile=tls_certfile("a.test"))
        dns.add_s2s_targets("b.test", ("xmpps", 0, port))
        await a.send(message("u@a.test", "v@b.test", "x", id="s1"))
        first = await asyncio.wait_for(got_bytes, 10)
    finally:
        server.close()
    assert seen == {"sni": "b.test", "alpn": "xmpp-server"}
    # the first application bytes are our stream header: no plaintext step, no STARTTLS
    assert first.startswith(b"<?xml") and b"to='b.test'" in first and TLS_NS not in first


class _TlsPeer:
    """A raw S2S initiator over Direct TLS (to look at what our listener offers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.events: list[Any] = []

    async def next(self, timeout: float = 5.0) -> Any:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("closed")
            self.events.extend(self.framer.feed(data))
        return self.events.pop(0)


async def test_direct_tls_listener_offers_no_starttls_and_selects_alpn(
    tls_mode_node, tls_certfile, tls_ca_file
):
    b = await tls_mode_node(
        ["b.test"], certfile=tls_certfile("b.test"), cafile=tls_ca_file, listeners=("tls",)
    )
    ctx = ssl.create_default_context(cafile=tls_ca_file)
    ctx.set_alpn_protocols(["xmpp-server"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", b.ports["tls"], ssl=ctx, server_hostname="b.test"
    )
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "xmpp-server"
        peer = _TlsPeer(reader, writer)
        writer.write(HEADER.format(frm="a.test", to="b.test").encode())
        assert isinstance(await peer.next(), StreamOpen)
        features = await peer.next()
        assert isinstance(features, Stanza) and features.name == "features"
        assert TLS_NS not in features.raw and b"urn:xmpp:features:dialback" in features.raw
    finally:
        writer.close()


async def test_plaintext_on_a_direct_tls_listener_is_refused(tls_mode_node, tls_certfile, caplog):
    b = await tls_mode_node(["b.test"], certfile=tls_certfile("b.test"), listeners=("tls",))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.ports["tls"])
    writer.write(HEADER.format(frm="a.test", to="b.test").encode())
    data = await asyncio.wait_for(reader.read(65536), 5)
    # whatever comes back is a TLS alert record at most, never an XMPP stream
    assert b"<stream" not in data
    assert await asyncio.wait_for(reader.read(65536), 5) == b""
    writer.close()
    assert "Direct TLS handshake failed" in caplog.text


async def test_starttls_required_listener_requires_starttls(tls_mode_node, tls_certfile, dns):
    b = await tls_mode_node(
        ["b.test"],
        mode="optional",
        certfile=tls_certfile("b.test"),
        listeners=("starttls_required",),
    )
    a = await tls_mode_node(["a.test"], mode="false")
    dns.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns.add_s2s_targets("b.test", ("xmpp", 0, b.ports["starttls_required"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.ports["starttls_required"])
    peer = _TlsPeer(reader, writer)
    writer.write(HEADER.format(frm="a.test", to="b.test").encode())
    await peer.next()
    features = await peer.next()
    assert b"<required/>" in features.raw
    writer.close()
    await a.send(message("u@a.test", "v@b.test", "no TLS", id="r1"))
    bounce = await a.inbox.get()
    assert bounce.id == "r1" and bounce.type == "error"
    assert b"requires STARTTLS" in bounce.raw
    assert await b.inbox.nothing(0.2)


# -- certificates: the same rules on both transports ----------------------------------------


@pytest.fixture
def cert_of_kind(tls_ca, tmp_path, tls_certfile):
    past = utcnow() - dt.timedelta(days=2)

    def make(kind: str, domain: str) -> str:
        if kind == "valid":
            return tls_certfile(domain)
        if kind == "expired":
            cert = tls_ca.issue([domain], not_before=past - dt.timedelta(days=30), not_after=past)
        elif kind == "wrong-name":
            cert = tls_ca.issue(["wrong.test"])
        else:
            cert = self_signed(domain)
        return cert.write_pem(tmp_path, f"{kind}-{domain}.pem")

    return make


#: what each pairing did, filled by the test below (printed with -s for the report's table)
PAIRINGS: dict[tuple[str, str, str], str] = {}


@pytest.mark.parametrize("kind", ["valid", "expired", "wrong-name", "self-signed"])
@pytest.mark.parametrize("judge", ["originating", "receiving"])
@pytest.mark.parametrize("transport", ["starttls", "direct-tls"])
async def test_required_trusted_judges_certificates_alike_on_both_transports(
    dns, tls_mode_node, tls_certfile, tls_ca_file, cert_of_kind, transport, judge, kind
):
    """*judge* is the side with ``required_trusted``; the other side presents a *kind* cert."""
    direct = transport == "direct-tls"
    a_cert = cert_of_kind(kind, "a.test") if judge == "receiving" else tls_certfile("a.test")
    b_cert = cert_of_kind(kind, "b.test") if judge == "originating" else tls_certfile("b.test")
    a = await tls_mode_node(
        ["a.test"],
        mode="required_trusted" if judge == "originating" else "optional",
        certfile=a_cert,
        cafile=tls_ca_file,
    )
    b = await tls_mode_node(
        ["b.test"],
        mode="required_trusted" if judge == "receiving" else "optional",
        certfile=b_cert,
        cafile=tls_ca_file,
        listeners=("tls",) if direct else ("starttls",),
    )
    dns.add_s2s_targets("a.test", ("xmpp", 0, a.ports["starttls"]))
    dns.add_s2s_targets(
        "b.test", ("xmpps" if direct else "xmpp", 0, b.ports["tls" if direct else "starttls"])
    )
    await a.send(message("u@a.test", "v@b.test", "cert", id="c1"))
    got = await a.inbox.get() if kind != "valid" else await b.inbox.get()
    if kind == "valid":
        assert got.id == "c1" and got.type == "chat"
        out = authenticated_connection(a, "out")
        assert out.tls and out.direct_tls is direct and out.peer_certificate.ok
        PAIRINGS[(transport, judge, kind)] = "federates"
        return
    assert got.id == "c1" and got.type == "error"
    text = got.raw.decode()
    PAIRINGS[(transport, judge, kind)] = text[text.find("<text") :][:160]
    assert await b.inbox.nothing(0.2)
    if judge == "originating" and kind == "wrong-name":
        assert "does not name b.test" in text
    elif judge == "originating":
        assert "handshake failed" in text and "CERTIFICATE_VERIFY_FAILED" in text
        assert ("Direct TLS handshake" in text) is direct
    else:
        assert "policy-violation" in text
