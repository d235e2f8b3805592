"""SASL EXTERNAL (XEP-0178) and dialback answered at once (XEP-0344) against Prosody 0.12 and
ejabberd 23.01, both directions, with certificates trusted one way, both ways, or neither.

What the peers do (read from their logs in these runs):
- Prosody 0.12 (mod_saslauth, mod_s2s_auth_certs) offers EXTERNAL on its incoming streams
  when our certificate validates against ``s2s_ssl.cafile`` and names a.test, and uses it on its
  outgoing streams when we offer it; otherwise dialback.
- ejabberd 23.01 offers EXTERNAL on its incoming streams and uses it on its outgoing streams
  when offered; a certificate it does not trust gets ``<failure/>``, and it falls back to
  dialback when mod_s2s_dialback is loaded; with ``dialback=False`` (its ``required_trusted``)
  only EXTERNAL gets in.
s2sfast (``[s2s] sasl_external`` and ``dialback_cert_auth`` on, their defaults) offers EXTERNAL
only for a certificate it trusts, uses it when offered, falls back to dialback otherwise, and
answers a db:result at once when the peer's certificate proves the domain. Skipped without the
servers; failing then under S2SFAST_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from interop_flow import bob_to_node, eventually, node_to_bob, stanza_error
from interop_node import A, B, node_config


def _with(config, **s2s):
    return replace(config, s2s=replace(config.s2s, **s2s))


def _peer_trusting(peer, server, port, tls_ca_file, *, trust_us=True, **kw):
    """A started peer for b.test with A at *port*; *trust_us*: it trusts the test CA that
    issued our certificate."""
    if trust_us:
        if server == "prosody":
            kw["extra_config"] = f's2s_ssl = {{ cafile = "{tls_ca_file}" }}'
        else:
            kw["cafile"] = tls_ca_file
    return peer(tls="required", remotes={A: port}, log_level="debug", **kw)


def _methods(node):
    return {c.direction: c.auth_method for c in node.connections() if c.pairs}


async def _both_ways(node, bob, tag):
    await bob_to_node(bob, node, f"{tag}-in", "to s2sfast")
    await node_to_bob(node, bob, f"{tag}-out", "from s2sfast")


#: what the peer's log says when it accepts our EXTERNAL / when ours was accepted
PEER_ACCEPTED_OURS = {
    "prosody": "Accepting SASL EXTERNAL identity from a.test",
    "ejabberd": "Accepted inbound s2s EXTERNAL authentication a.test -> b.test",
}
PEER_USED_EXTERNAL = {
    "prosody": "SASL EXTERNAL with a.test succeeded",
    "ejabberd": "Accepted outbound s2s EXTERNAL authentication b.test -> a.test",
}


@pytest.mark.parametrize(
    "we_trust, they_trust, expected",
    [
        (True, True, {"in": "sasl-external", "out": "sasl-external"}),
        (True, False, {"in": "sasl-external", "out": "dialback"}),
        (False, True, {"in": "dialback", "out": "sasl-external"}),
        (False, False, {"in": "dialback", "out": "dialback"}),
    ],
    ids=["mutual", "we-trust-them", "they-trust-us", "neither"],
)
async def test_pairing(
    peer,
    server,
    s2sfast_node,
    c2s,
    ports,
    tls_certfile,
    tls_ca_file,
    we_trust,
    they_trust,
    expected,
):
    """Who trusts whose certificate decides each direction: EXTERNAL where the receiving
    side trusts the originating side's certificate, dialback (with its verify round trip)
    elsewhere; both directions always federate."""
    (port,) = ports(1)
    srv = _peer_trusting(peer, server, port, tls_ca_file, trust_us=they_trust)
    node = await s2sfast_node(
        node_config(
            port,
            mode="required",
            certfile=tls_certfile(A),
            cafile=str(srv.cert_path) if we_trust else None,
            peer_port=srv.s2s_port,
        )
    )
    bob = await c2s(srv, "bob")
    await _both_ways(node, bob, "p")
    (out,) = [s for s in node.router.streams if s.direction == "out"]
    print(
        f"{server} we_trust={we_trust} they_trust={they_trust}: {_methods(node)}"
        f" (our EXTERNAL refused: {out.machine.sasl_failure};"
        f" XEP-0198 offered to us: {out.machine.sm_offered})"
    )
    assert _methods(node) == expected
    # ejabberd offers EXTERNAL even to a certificate it does not trust and answers <failure/>:
    # we fell back to dialback on the same stream; Prosody does not offer it then
    assert (out.machine.sasl_failure is not None) == (server == "ejabberd" and not they_trust)
    if expected["out"] == "sasl-external":
        assert await eventually(lambda: PEER_ACCEPTED_OURS[server] in srv.log())
    if expected["in"] == "sasl-external":
        assert await eventually(lambda: PEER_USED_EXTERNAL[server] in srv.log())
    log = srv.log()
    if not they_trust:
        assert PEER_ACCEPTED_OURS[server] not in log


async def test_ejabberd_required_trusted_federates_with_external(
    ejabberd, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """ejabberd 23.01 without dialback (its required_trusted) lets only SASL EXTERNAL in:
    with certificates trusted both ways s2sfast now federates with it, both directions."""
    (port,) = ports(1)
    srv = ejabberd(
        tls="required", remotes={A: port}, cafile=tls_ca_file, dialback=False, log_level="debug"
    )
    node = await s2sfast_node(
        node_config(
            port,
            mode="required_trusted",
            certfile=tls_certfile(A),
            cafile=str(srv.cert_path),
            peer_port=srv.s2s_port,
        )
    )
    bob = await c2s(srv, "bob")
    await _both_ways(node, bob, "rt")
    assert _methods(node) == {"in": "sasl-external", "out": "sasl-external"}
    # ejabberd offered no dialback at all (our own features, which it logs as received, do)
    sent = [line for line in srv.log().splitlines() if "Send XML on stream" in line]
    assert not [line for line in sent if "urn:xmpp:features:dialback" in line]


async def test_policy_deny_on_the_external_path(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """s2sfast denies b.test (host_policy) although its certificate is trusted: the peer's
    EXTERNAL gets <failure/> and a policy-violation stream error, bob's message comes back
    as an error, nothing reaches the node; ours to bob bounces locally."""
    (port,) = ports(1)
    srv = _peer_trusting(peer, server, port, tls_ca_file)
    config = node_config(
        port,
        mode="required",
        certfile=tls_certfile(A),
        cafile=str(srv.cert_path),
        peer_port=srv.s2s_port,
        host_policy={B: "deny"},
    )
    node = await s2sfast_node(config)
    bob = await c2s(srv, "bob")
    bob.send(f"<message to='carol@{A}/x' id='deny1' type='chat'><body>x</body></message>")
    err = await bob.wait_for(lambda e: e.get("id") == "deny1" and e.get("type") == "error")
    assert err is not None
    assert await node.inbox.nothing(wait=0.5)
    assert not [c for c in node.connections() if c.pairs]
    log = srv.log()
    assert "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>" in log or (
        await eventually(lambda: "not-authorized" in srv.log())
    )
    await node.send(f"<message from='carol@{A}/x' to='bob@{B}/r' id='deny2' type='chat'/>".encode())
    bounce = await node.inbox.get(lambda s: s.id == "deny2")
    assert stanza_error(bounce)[1] is not None


async def test_dialback_answered_at_once_for_a_trusted_peer(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """XEP-0344 with a real peer: s2sfast does not offer EXTERNAL (sasl_external = false) but
    trusts the peer's certificate, so the peer's db:result is answered valid at once: the
    node opens no verify stream back to b.test."""
    (port,) = ports(1)
    srv = _peer_trusting(peer, server, port, tls_ca_file, trust_us=False)
    config = node_config(
        port,
        mode="required",
        certfile=tls_certfile(A),
        cafile=str(srv.cert_path),
        peer_port=srv.s2s_port,
    )
    node = await s2sfast_node(_with(config, sasl_external=False))
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "x1", "no verify stream")
    assert [(c.direction, c.auth_method) for c in node.connections()] == [("in", "dialback-cert")]
    assert "db:verify" not in srv.log()


async def test_external_both_ways_over_direct_tls_with_prosody(
    prosody, s2sfast_node, c2s, ports, dns_server, tls_certfile, tls_ca, tls_ca_file
):
    """Direct TLS (XEP-0368) both ways, certificates from the test CA trusted both ways:
    EXTERNAL authenticates both streams just as after STARTTLS."""
    from dataclasses import replace as _replace

    from s2sfast.net.dns import Resolver

    node_port, peer_c2s, peer_s2s, peer_tls = ports(4)
    for domain, port in ((A, node_port), (B, peer_tls)):
        dns_server.add_srv(f"_xmpps-server._tcp.{domain}", 0, 0, port, "127.0.0.1.")
    srv = prosody(
        tls="required",
        dns=dns_server,
        c2s_port=peer_c2s,
        s2s_port=peer_s2s,
        certificate=tls_ca.issue([B]),
        direct_tls_port=peer_tls,
        # the Direct TLS port has its own TLS settings (s2s_ssl does not reach it)
        extra_config=f's2s_ssl = {{ cafile = "{tls_ca_file}" }}\n'
        f's2s_direct_tls_ssl = {{ cafile = "{tls_ca_file}" }}',
    )
    config = node_config(
        node_port, mode="required_trusted", certfile=tls_certfile(A), cafile=tls_ca_file
    )
    (listen,) = config.listen_s2s
    config = _replace(config, listen_s2s=(_replace(listen, tls=_replace(listen.tls, mode="tls")),))
    node = await s2sfast_node(
        config, resolver=Resolver([dns_server.nameserver], timeout=2, retries=1)
    )
    bob = await c2s(srv, "bob")
    await _both_ways(node, bob, "dt")
    conns = [c for c in node.connections() if c.pairs]
    assert {(c.direction, c.auth_method, c.direct_tls) for c in conns} == {
        ("in", "sasl-external", True),
        ("out", "sasl-external", True),
    }
    assert await eventually(lambda: PEER_ACCEPTED_OURS["prosody"] in srv.log())
    assert PEER_USED_EXTERNAL["prosody"] in srv.log()


async def test_our_expired_certificate_is_not_offered_to_ejabberd(
    ejabberd, s2sfast_node, c2s, ports, tls_ca, tls_ca_file, tmp_path
):
    """ejabberd offers EXTERNAL whatever it thinks of our certificate; ours has expired, so
    we do not try it (no <auth/> it would refuse) and authenticate with dialback at once."""
    import datetime as dt

    from certs import utcnow

    past = utcnow() - dt.timedelta(days=2)
    expired = tls_ca.issue([A], not_before=past - dt.timedelta(days=30), not_after=past).write_pem(
        tmp_path, "expired-a.pem"
    )
    (port,) = ports(1)
    srv = ejabberd(tls="required", remotes={A: port}, cafile=tls_ca_file, log_level="debug")
    node = await s2sfast_node(
        node_config(
            port, mode="required", certfile=expired, cafile=tls_ca_file, peer_port=srv.s2s_port
        )
    )
    bob = await c2s(srv, "bob")
    await node_to_bob(node, bob, "e1", "dialback, no EXTERNAL attempt")
    (out,) = [s for s in node.router.streams if s.direction == "out"]
    assert _methods(node)["out"] == "dialback"
    assert out.machine.sasl_failure is None
    # ejabberd's features to us offered EXTERNAL; no <auth/> of ours ever reached it
    offer = (
        'Send XML on stream = <<"<stream:features><mechanisms '
        "xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>"
    )
    assert await eventually(lambda: offer in srv.log())
    received = [line for line in srv.log().splitlines() if "Received XML on stream" in line]
    assert not [line for line in received if "xmpp-sasl' mechanism='EXTERNAL'" in line]
