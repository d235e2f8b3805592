"""Federation with Prosody and ejabberd through real DNS: a loopback DNS server
(tests/dnsserver.py) serves SRV and A records for both domains; s2sfast's Resolver asks it (no
``[s2s] address``) and so does the peer (Prosody through libunbound, ejabberd through Erlang's
resolver)."""

from __future__ import annotations

import pytest
from interop_flow import bob_to_node, error_of, eventually, is_message, node_to_bob, stanza_error
from interop_node import A, B, node_config
from servers import add_xmpp_domain

from s2sfast.net.dns import Resolver

# the peer's bounce to its user for a domain DNS does not know
NXDOMAIN = {
    "prosody": (
        "cancel",
        "remote-server-not-found",
        "Server-to-server connection failed: NXDomain in A lookup",
    ),
}

#: ejabberd 23.01's resolver, read from its code (p1_xmpp 1.6.1, xmpp_stream_out): SRV records
#: come from Erlang's inet_res (the loopback zone, through ERL_INETRC), but addresses - of an SRV
#: target, or of the domain when there is no SRV record - from net:getaddrinfo, i.e. libc and
#: the machine's resolver, which these tests must never ask. An IP-literal target needs no
#: lookup, so ejabberd gets only those, and never a domain without an SRV record.
EJABBERD_ADDRESSES = (
    "ejabberd 23.01 (p1_xmpp 1.6.1) looks up addresses with libc getaddrinfo, the machine's "
    "resolver, which the tests never ask (only its SRV lookups use the loopback zone)"
)


def _resolver(zone) -> Resolver:
    return Resolver([zone.nameserver], timeout=2, retries=1)


# Not (ejabberd, domain): EJABBERD_ADDRESSES - the SRV target's name would go to the machine's
# resolver, which the tests never ask.
@pytest.mark.parametrize(
    ("server", "srv_target"),
    [("prosody", "ip"), ("prosody", "domain"), ("ejabberd", "ip")],
    indirect=["server"],
)
async def test_federation_through_srv_records(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, dns_server, srv_target
):
    node_port, peer_c2s, peer_s2s = ports(3)
    add_xmpp_domain(dns_server, A, node_port, srv_target)
    add_xmpp_domain(dns_server, B, peer_s2s, srv_target)
    srv = peer(tls="required", dns=dns_server, c2s_port=peer_c2s, s2s_port=peer_s2s)
    config = node_config(node_port, mode="required", certfile=tls_certfile(A), peer_port=None)
    assert config.s2s.address == ()
    node = await s2sfast_node(config, resolver=_resolver(dns_server))
    bob = await c2s(srv, "bob")

    got = await bob_to_node(bob, node, "d1", "via SRV")
    assert got.from_ == bob.full_jid
    reply = await node_to_bob(node, bob, "d2", "back via SRV")
    assert reply.get("from") == f"carol@{A}/x"
    assert {c.direction for c in node.connections() if (A, B) in c.pairs} == {"in", "out"}
    assert all(c.tls for c in node.connections())
    assert await eventually(lambda: srv.completed_sessions("in") and srv.completed_sessions("out"))
    # s2sfast asked for b.test's SRV record, the peer for a.test's; both looked for direct TLS
    # (XEP-0368, _xmpps-server: NXDOMAIN here) first
    assert dns_server.count(f"_xmpp-server._tcp.{B}", "SRV") >= 1
    assert dns_server.count(f"_xmpp-server._tcp.{A}", "SRV") >= 1
    assert dns_server.count(f"_xmpps-server._tcp.{A}", "SRV") >= 1
    if srv_target == "domain":  # the SRV target is a name: both then ask for its address
        assert dns_server.count(A, "A") >= 1 and dns_server.count(B, "A") >= 1
    else:  # an IP literal needs no lookup
        assert dns_server.count(A, "A") == 0


# Prosody only: EJABBERD_ADDRESSES - after the SRV NXDOMAIN ejabberd would ask the machine's
# resolver for nowhere.test.
@pytest.mark.parametrize("server", ["prosody"], indirect=True)
async def test_unknown_domain_in_dns_bounces_both_ways(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, dns_server
):
    """Neither side can find nowhere.test (NXDOMAIN): both senders get an error."""
    node_port, peer_c2s, peer_s2s = ports(3)
    add_xmpp_domain(dns_server, A, node_port)
    add_xmpp_domain(dns_server, B, peer_s2s)
    srv = peer(tls="optional", dns=dns_server, c2s_port=peer_c2s, s2s_port=peer_s2s)
    node = await s2sfast_node(
        node_config(node_port, mode="optional", certfile=tls_certfile(A), peer_port=None),
        resolver=_resolver(dns_server),
    )
    bob = await c2s(srv, "bob")
    await node.send(
        f"<message from='carol@{A}/x' to='x@nowhere.test' id='n1'><body>?</body></message>".encode()
    )
    bounce = await node.inbox.get(lambda s: s.id == "n1")
    assert (bounce.type, bounce.to) == ("error", f"carol@{A}/x")
    assert stanza_error(bounce) == (
        "cancel",
        "remote-server-not-found",
        "NXDOMAIN for _xmpp-server._tcp.nowhere.test and nowhere.test",
    )
    bob.send("<message to='x@nowhere.test' id='n2'><body>?</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "n2"))
    assert back.get("type") == "error"
    assert error_of(back) == NXDOMAIN[server]
    assert dns_server.count("_xmpp-server._tcp.nowhere.test", "SRV") >= 2  # both asked


async def test_production_like_dns_and_verified_certificates_both_ways(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file, dns_server
):
    """SRV records naming hosts, CA-issued certificates checked by both sides (s2sfast
    required_trusted; Prosody with s2s_secure_domains, ejabberd with s2s_cafile), TLS SNI from
    the resolved domain."""
    node_port, peer_c2s, peer_s2s = ports(3)
    target = "ip" if server == "ejabberd" else "domain"  # see EJABBERD_ADDRESSES
    add_xmpp_domain(dns_server, A, node_port, target)
    add_xmpp_domain(dns_server, B, peer_s2s, target)
    if server == "prosody":
        trust = {
            "extra_config": f's2s_secure_domains = {{ "{A}" }}\n'
            f's2s_ssl = {{ cafile = "{tls_ca_file}" }}'
        }
    else:
        trust = {"cafile": tls_ca_file}
    srv = peer(
        tls="required",
        dns=dns_server,
        c2s_port=peer_c2s,
        s2s_port=peer_s2s,
        certificate=tls_ca.issue([B]),
        **trust,
    )
    node = await s2sfast_node(
        node_config(
            node_port, mode="required_trusted", certfile=tls_certfile(A), cafile=tls_ca_file
        ),
        resolver=_resolver(dns_server),
    )
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "pl1", "production-like")
    await node_to_bob(node, bob, "pl2", "production-like back")
    for c in node.connections():
        assert c.tls and c.peer_certificate.trusted and c.peer_certificate.name_matches
    sessions = await eventually(
        lambda: len(s := srv.completed_sessions("in") + srv.completed_sessions("out")) == 2 and s
    )
    assert sessions and all(s.encrypted for s in sessions)
    log = srv.log()
    if server == "prosody":
        assert "Forbidding insecure connection" not in log
        for s in sessions:
            assert "certificate identity validation result: valid" in s.lines
    assert dns_server.count(f"_xmpp-server._tcp.{B}", "SRV") >= 1
