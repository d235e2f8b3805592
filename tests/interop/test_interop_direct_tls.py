"""Direct TLS (XEP-0368) against Prosody 0.12 (``s2s_direct_tls_ports``): both servers find each
other through ``_xmpps-server._tcp`` records in a loopback DNS zone and speak TLS from the first
byte, in both directions, with certificates from the test CA checked under required_trusted; and
the combined SRV order falls back to STARTTLS when the Direct TLS port refuses.

Prosody 0.12.3 opens ``s2s_direct_tls_ports`` (its ``s2s_direct_tls`` network service) and,
when it may encrypt, resolves ``_xmpps-server._tcp`` before ``_xmpp-server._tcp`` for its own
outgoing streams (mod_s2s). ejabberd 23.01 has no ``_xmpps-server`` lookup for outgoing S2S, so
it is not a peer here.
"""

from __future__ import annotations

from dataclasses import replace

from dnsserver import closed_port
from interop_flow import bob_to_node, eventually, node_to_bob
from interop_node import A, B, node_config

from s2sfast.net.dns import Resolver

LOOPBACK = "127.0.0.1"


def _srv(zone, kind: str, domain: str, priority: int, port: int) -> None:
    zone.add_srv(f"_{kind}._tcp.{domain}", priority, 0, port, LOOPBACK + ".")


def _direct_tls_node_config(port: int, tls_certfile, tls_ca_file):
    config = node_config(
        port, mode="required_trusted", certfile=tls_certfile(A), cafile=tls_ca_file
    )
    (listen,) = config.listen_s2s
    return replace(config, listen_s2s=(replace(listen, tls=replace(listen.tls, mode="tls")),))


async def test_both_directions_over_direct_tls_found_through_xmpps_records(
    prosody, s2sfast_node, c2s, ports, dns_server, tls_certfile, tls_ca, tls_ca_file
):
    node_port, peer_c2s, peer_s2s, peer_tls = ports(4)
    # only Direct TLS is published, both ways: neither side has an _xmpp-server record
    _srv(dns_server, "xmpps-server", A, 0, node_port)
    _srv(dns_server, "xmpps-server", B, 0, peer_tls)
    srv = prosody(
        tls="required",
        dns=dns_server,
        c2s_port=peer_c2s,
        s2s_port=peer_s2s,
        certificate=tls_ca.issue([B]),
        direct_tls_port=peer_tls,
    )
    node = await s2sfast_node(
        _direct_tls_node_config(node_port, tls_certfile, tls_ca_file),
        resolver=Resolver([dns_server.nameserver], timeout=2, retries=1),
    )
    bob = await c2s(srv, "bob")

    await node_to_bob(node, bob, "x1", "s2sfast -> Prosody over Direct TLS")
    await bob_to_node(bob, node, "x2", "Prosody -> s2sfast over Direct TLS")

    conns = [c for c in node.connections() if (A, B) in c.pairs]
    assert {c.direction for c in conns} == {"in", "out"}
    for c in conns:
        assert c.tls and c.direct_tls, c
    (out,) = [c for c in conns if c.direction == "out"]
    assert out.peer_certificate.ok  # required_trusted: Prosody's CA-issued certificate
    # Prosody's view: encrypted streams both ways, and it dialled our Direct TLS port
    assert await eventually(lambda: srv.completed_sessions("in") and srv.completed_sessions("out"))
    for s in srv.completed_sessions("in") + srv.completed_sessions("out"):
        # TLS came first: encrypted before any stream header, and no <starttls/> at all
        encrypted = next(i for i, line in enumerate(s.lines) if line.startswith("Stream encrypted"))
        header = next(
            i for i, line in enumerate(s.lines) if "<stream:stream" in line or "<?xml" in line
        )
        assert encrypted < header, s.lines
        assert not any("<starttls" in line or "<proceed" in line for line in s.lines), s.lines
    assert dns_server.count(f"_xmpps-server._tcp.{A}", "SRV") >= 1  # Prosody asked for it


async def test_a_refusing_direct_tls_port_falls_back_to_prosody_starttls(
    prosody, s2sfast_node, c2s, ports, dns_server, tls_certfile, tls_ca, tls_ca_file
):
    node_port, peer_c2s, peer_s2s = ports(3)
    _srv(dns_server, "xmpp-server", A, 0, node_port)
    _srv(dns_server, "xmpps-server", B, 0, closed_port())  # preferred, refuses
    _srv(dns_server, "xmpp-server", B, 10, peer_s2s)
    srv = prosody(
        tls="required",
        dns=dns_server,
        c2s_port=peer_c2s,
        s2s_port=peer_s2s,
        certificate=tls_ca.issue([B]),
    )
    config = node_config(
        node_port, mode="required_trusted", certfile=tls_certfile(A), cafile=tls_ca_file
    )
    node = await s2sfast_node(
        config, resolver=Resolver([dns_server.nameserver], timeout=2, retries=1)
    )
    bob = await c2s(srv, "bob")
    await node_to_bob(node, bob, "y1", "fell back to STARTTLS")
    (out,) = [c for c in node.connections() if c.direction == "out" and (A, B) in c.pairs]
    assert out.tls and not out.direct_tls and out.peer_certificate.ok
