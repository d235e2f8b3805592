"""Every s2sfast ``use_starttls`` value against Prosody and ejabberd with S2S TLS required,
optional and off.

Pairs that must federate do, in both directions (a user of the peer over c2s -> the Node
handler, and node.send -> that user), with TLS on the wire exactly when either side requires it
or both can; pairs that must not federate don't, and each side's stanza comes back as an error
stanza that says why.
"""

from __future__ import annotations

import asyncio

import pytest
from interop_c2s import local
from interop_flow import (
    bob_to_node,
    error_of,
    eventually,
    is_message,
    node_to_bob,
    stanza_error,
)
from interop_node import A, B, node_config

MODES = ("false", "optional", "required", "required_trusted")
PEER_TLS = ("required", "optional", "off")

# (s2sfast use_starttls, peer's S2S TLS) -> TLS on both streams, or None: must not federate.
# The same for Prosody (s2s_require_encryption / s2s_allow_encryption) and ejabberd
# (s2s_use_starttls).
EXPECTED: dict[tuple[str, str], bool | None] = {
    ("false", "required"): None,  # the peer insists on STARTTLS, s2sfast never does TLS
    ("false", "optional"): False,
    ("false", "off"): False,
    ("optional", "required"): True,
    ("optional", "optional"): True,  # both can: STARTTLS is taken up in both directions
    ("optional", "off"): False,
    ("required", "required"): True,
    ("required", "optional"): True,
    ("required", "off"): None,  # s2sfast insists, the peer cannot
    ("required_trusted", "required"): True,
    ("required_trusted", "optional"): True,
    ("required_trusted", "off"): None,
}

# What each side says when they must not federate: s2sfast's bounce text (the same whoever the
# peer is), then the peer's bounce to its user: (error type, condition, text)
NODE_REFUSAL = {
    ("false", "required"): "b.test requires STARTTLS but use_starttls=false",
    ("required", "off"): "b.test does not offer STARTTLS but use_starttls=required",
    ("required_trusted", "off"): (
        "b.test does not offer STARTTLS but use_starttls=required_trusted"
    ),
}


def _prosody_bounce(reason: str) -> tuple[str, str, str]:
    return ("wait", "remote-server-timeout", f"Server-to-server connection failed: {reason}")


def _ejabberd_bounce(reason: str, by: str = "local host") -> tuple[str, str, str]:
    return ("wait", "remote-server-timeout", f"Stream closed by {by}: {reason}")


PEER_REFUSAL = {
    ("prosody", "false", "required"): _prosody_bounce("TLS negotiation failed"),
    ("prosody", "required", "off"): _prosody_bounce(
        "policy-violation (STARTTLS is required before dialback (use_starttls=required))"
    ),
    ("prosody", "required_trusted", "off"): _prosody_bounce(
        "policy-violation (STARTTLS is required before dialback (use_starttls=required_trusted))"
    ),
    # ejabberd closes its own outgoing stream and quotes its reason
    ("ejabberd", "false", "required"): _ejabberd_bounce(
        "Use of STARTTLS required (policy-violation)"
    ),
    ("ejabberd", "required", "off"): _ejabberd_bounce(
        "STARTTLS is disabled in local configuration (unsupported-feature)"
    ),
    ("ejabberd", "required_trusted", "off"): _ejabberd_bounce(
        "STARTTLS is disabled in local configuration (unsupported-feature)"
    ),
}


async def _setup(peer, s2sfast_node, c2s, ports, tls_certfile, mode, ptls, trust=True):
    (port,) = ports(1)
    server = peer(tls=ptls, remotes={A: port})
    cafile = str(server.cert_path) if mode == "required_trusted" and trust else None
    config = node_config(
        port, mode=mode, certfile=tls_certfile(A), cafile=cafile, peer_port=server.s2s_port
    )
    node = await s2sfast_node(config)
    bob = await c2s(server, "bob")
    return server, node, bob


@pytest.mark.parametrize("ptls", PEER_TLS)
@pytest.mark.parametrize("mode", MODES)
async def test_use_starttls(peer, server, s2sfast_node, c2s, ports, tls_certfile, mode, ptls):
    srv, node, bob = await _setup(peer, s2sfast_node, c2s, ports, tls_certfile, mode, ptls)
    expected = EXPECTED[(mode, ptls)]
    if expected is None:
        await _refused_both_ways(
            srv, node, bob, NODE_REFUSAL[(mode, ptls)], PEER_REFUSAL[(server, mode, ptls)]
        )
        return

    # the peer originates (b.test -> a.test), s2sfast receives and verifies back
    got = await bob_to_node(bob, node, "p1", f"hello over {ptls}")
    assert (got.from_, got.to, got.type) == (bob.full_jid, f"carol@{A}/x", "chat")
    assert f"hello over {ptls}".encode() in got.raw
    # s2sfast originates (a.test -> b.test), the peer dials back
    reply = await node_to_bob(node, bob, "s1", f"reply with {mode}")
    assert reply.get("from") == f"carol@{A}/x"
    assert [c.text for c in reply if local(c.tag) == "body"] == [f"reply with {mode}"]

    # TLS as seen by s2sfast: both streams with b.test, each authenticated for the pair
    conns = {c.direction: c for c in node.connections() if c.remote == B and c.pairs}
    assert set(conns) == {"in", "out"}
    for c in conns.values():
        assert c.tls is expected, c
        assert (A, B) in c.pairs
    if mode == "required_trusted":
        for c in conns.values():
            assert c.peer_certificate.trusted and c.peer_certificate.name_matches, c
        # we trust the peer's certificate, so we offer SASL EXTERNAL and the peer takes it
        assert conns["in"].auth_method == "sasl-external"
    else:
        assert conns["in"].auth_method == "dialback"
    # the peer does not trust our certificate (no CA for it there): it offers no EXTERNAL
    assert conns["out"].auth_method == "dialback"
    # ... and as the peer's log tells it (Prosody: "Stream encrypted (TLSv1.3 ...)" per
    # session; ejabberd: the socket of "Accepted ... s2s dialback authentication" is tls|...)
    await eventually(lambda: srv.completed_sessions("in") and srv.completed_sessions("out"))
    incoming = srv.completed_sessions("in")
    outgoing = srv.completed_sessions("out")
    assert incoming and outgoing
    assert {s.completed[0] for s in incoming} == {(A, B)}
    assert {s.completed[0] for s in outgoing} == {(B, A)}
    assert {s.encrypted for s in incoming + outgoing} == {expected}


async def _refused_both_ways(srv, node, bob, node_reason: str, peer_error) -> None:
    """Both sides try at once; each gets its stanza back as an error, nothing is delivered."""
    bob.send(f"<message to='carol@{A}/x' id='p1' type='chat'><body>hi</body></message>")
    await node.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='s1' type='chat'>"
        f"<body>hi</body></message>".encode()
    )
    bounce, back = await asyncio.gather(
        node.inbox.get(lambda s: s.id == "s1"),
        bob.wait_for(lambda e: is_message(e, "p1")),
    )
    # s2sfast's bounce to its local sender: remote-server-not-found, cancel, with the reason
    assert (bounce.type, bounce.to, bounce.from_) == ("error", f"carol@{A}/x", bob.full_jid)
    assert stanza_error(bounce) == ("cancel", "remote-server-not-found", node_reason)
    # the peer's bounce to bob, quoting the failure
    assert back.get("type") == "error" and back.get("from") == f"carol@{A}/x"
    assert error_of(back) == peer_error
    # nothing got through either way, and no stream is authenticated
    assert await node.inbox.nothing(lambda s: s.type != "error", 0.3)
    assert not [e for e in bob.received if is_message(e, "s1") and e.get("type") != "error"]
    assert all(not c.pairs for c in node.connections())
    assert not srv.completed_sessions("in") and not srv.completed_sessions("out")


UNTRUSTED = {
    "prosody": (
        _prosody_bounce(
            "policy-violation (certificate of b.test rejected: the certificate is self-signed "
            "and not a trust anchor)"
        ),
        "tlsv1 alert unknown ca",  # Prosody saw s2sfast abort the handshake on its certificate
    ),
    "ejabberd": (
        _ejabberd_bounce(
            "certificate of b.test rejected: the certificate is self-signed and not a trust "
            "anchor (policy-violation)",
            by="peer",
        ),
        "tlsv1 alert unknown ca",
    ),
}


@pytest.mark.parametrize("ptls", ("required", "optional"))
async def test_required_trusted_refuses_a_self_signed_certificate(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, ptls
):
    """Without a cacertfile that trusts it, the peer's self-signed certificate is refused in
    both directions, and both senders learn why."""
    srv, node, bob = await _setup(
        peer, s2sfast_node, c2s, ports, tls_certfile, "required_trusted", ptls, trust=False
    )
    peer_error, peer_log = UNTRUSTED[server]
    await _refused_both_ways(
        srv, node, bob, "TLS handshake failed: CERTIFICATE_VERIFY_FAILED", peer_error
    )
    assert peer_log in srv.log()


async def test_mutual_trust_authenticates_with_sasl_external_both_ways(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """The peer trusting s2sfast's CA validates our certificate and offers SASL EXTERNAL, and
    s2sfast (required_trusted, pinning the peer's certificate) offers it too: both directions
    authenticate with EXTERNAL (XEP-0178), no dialback."""
    (port,) = ports(1)
    if server == "prosody":
        kw = {"extra_config": f's2s_ssl = {{ cafile = "{tls_ca_file}" }}'}
    else:
        kw = {"cafile": tls_ca_file}
    srv = peer(tls="required", remotes={A: port}, **kw)
    config = node_config(
        port,
        mode="required_trusted",
        certfile=tls_certfile(A),
        cafile=str(srv.cert_path),
        peer_port=srv.s2s_port,
    )
    node = await s2sfast_node(config)
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "t1", "trusted both ways")
    await node_to_bob(node, bob, "t2", "and back")
    conns = {c.direction: c for c in node.connections() if c.pairs}
    assert set(conns) == {"in", "out"}
    for c in conns.values():
        assert c.tls and c.auth_method == "sasl-external"
        assert c.peer_certificate.trusted and c.peer_certificate.name_matches
    await eventually(lambda: len(srv.completed_sessions("in") + srv.completed_sessions("out")) == 2)
    sessions = srv.completed_sessions("in") + srv.completed_sessions("out")
    assert len(sessions) == 2 and all(s.encrypted for s in sessions)
    log = srv.log()
    if server == "prosody":
        assert "Offering SASL EXTERNAL" in log
        for s in sessions:
            assert "certificate chain validation result: valid" in s.lines
            assert "certificate identity validation result: valid" in s.lines
    else:
        assert f"Accepted outbound s2s EXTERNAL authentication {B} -> {A}" in log
        assert f"Accepted inbound s2s EXTERNAL authentication {A} -> {B}" in log
    assert "dialback" not in " ".join(t for s in sessions for t in s.lines if "Accepted" in t)


async def test_a_ca_issued_peer_certificate_is_verified(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file
):
    """required_trusted with a CA-issued certificate for b.test (not pinned: the chain is
    verified), both ways."""
    (port,) = ports(1)
    srv = peer(tls="required", remotes={A: port}, certificate=tls_ca.issue([B]))
    node = await s2sfast_node(
        node_config(
            port,
            mode="required_trusted",
            certfile=tls_certfile(A),
            cafile=tls_ca_file,
            peer_port=srv.s2s_port,
        )
    )
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "ca1", "chain verified")
    await node_to_bob(node, bob, "ca2", "both ways")
    conns = node.connections()
    assert {c.direction for c in conns} == {"in", "out"}
    for c in conns:
        assert c.peer_certificate.trusted and c.peer_certificate.names.dns_names == (B,)


WRONG_NAME = (
    "certificate of b.test rejected: the certificate does not name b.test (it names DNS:wrong.test)"
)


async def test_required_trusted_refuses_a_certificate_naming_another_domain(
    peer, server, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file
):
    """The peer presents a trusted certificate for wrong.test: refused in both directions with
    the reason, sent as a proper stream error (after a stream header) the peer can read."""
    (port,) = ports(1)
    srv = peer(tls="required", remotes={A: port}, certificate=tls_ca.issue(["wrong.test"]))
    node = await s2sfast_node(
        node_config(
            port,
            mode="required_trusted",
            certfile=tls_certfile(A),
            cafile=tls_ca_file,
            peer_port=srv.s2s_port,
        )
    )
    bob = await c2s(srv, "bob")
    if server == "prosody":
        peer_error = _prosody_bounce(f"policy-violation ({WRONG_NAME})")
    else:
        peer_error = _ejabberd_bounce(f"{WRONG_NAME} (policy-violation)", by="peer")
    await _refused_both_ways(srv, node, bob, WRONG_NAME, peer_error)
    # s2sfast's outgoing stream (the peer's incoming one) is refused after TLS: the stream
    # error must follow a fresh stream header, or the peer reads it as not-well-formed
    log = await eventually(lambda: WRONG_NAME in (text := srv.log()) and text)
    assert log, srv.log()
    incoming = [s for s in srv.s2s_sessions().values() if s.direction == "in"]
    if server == "prosody":
        assert "Received invalid XML" not in log
        closed = f"Session closed by remote with error: policy-violation ({WRONG_NAME})"
    else:
        assert "not-well-formed" not in log
        closed = (
            "Closing inbound s2s connection a.test -> b.test: Stream closed by peer: "
            f"{WRONG_NAME} (policy-violation)"
        )
    assert any(t == closed for s in incoming for t in s.lines), [s.lines for s in incoming]


def _prosody_secure(cafile: str) -> dict[str, str]:
    """Prosody insisting on a trusted certificate from a.test (``s2s_secure_domains``)."""
    return {
        "extra_config": f's2s_secure_domains = {{ "{A}" }}\ns2s_ssl = {{ cafile = "{cafile}" }}'
    }


async def test_prosody_requiring_a_trusted_certificate_federates_with_a_trusted_node(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    (port,) = ports(1)
    srv = prosody(tls="required", remotes={A: port}, **_prosody_secure(tls_ca_file))
    node = await s2sfast_node(
        node_config(port, mode="required", certfile=tls_certfile(A), peer_port=srv.s2s_port)
    )
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "v1", "certificate checked")
    await node_to_bob(node, bob, "v2", "both ways")
    assert "Forbidding insecure connection" not in srv.log()
    for s in srv.completed_sessions("in") + srv.completed_sessions("out"):
        assert "certificate chain validation result: valid" in s.lines


async def test_prosody_requiring_a_trusted_certificate_refuses_a_self_signed_node(
    prosody, s2sfast_node, c2s, ports, tls_ca_file, tmp_path
):
    """Prosody closes both streams with not-authorized "Your server's certificate is not
    trusted"; both senders get an error back."""
    import certs

    (port,) = ports(1)
    srv = prosody(tls="required", remotes={A: port}, **_prosody_secure(tls_ca_file))
    certfile = certs.self_signed(A).write_pem(tmp_path)
    node = await s2sfast_node(
        node_config(port, mode="required", certfile=certfile, peer_port=srv.s2s_port)
    )
    bob = await c2s(srv, "bob")
    await _refused_both_ways(
        srv,
        node,
        bob,
        "b.test sent stream error not-authorized (Your server's certificate is not trusted)",
        _prosody_bounce("Remote server's certificate is not trusted"),
    )
    assert srv.log().count("Forbidding insecure connection to/from a.test") == 2


async def test_ejabberd_requiring_trusted_certificates_federates_by_sasl_external(
    ejabberd, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file
):
    """ejabberd 23.01 requires a trusted certificate by dropping dialback (its
    ``required_trusted`` means exactly that): peers must authenticate with SASL EXTERNAL. With
    each side trusting the other's CA, both directions do."""
    (port,) = ports(1)
    srv = ejabberd(
        tls="required",
        remotes={A: port},
        cafile=tls_ca_file,
        dialback=False,
        certificate=tls_ca.issue([B]),
    )
    node = await s2sfast_node(
        node_config(
            port,
            mode="required_trusted",
            certfile=tls_certfile(A),
            cafile=tls_ca_file,
            peer_port=srv.s2s_port,
        )
    )
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "x1", "certificates only")
    await node_to_bob(node, bob, "x2", "both ways")
    assert {c.direction: c.auth_method for c in node.connections() if c.pairs} == {
        "in": "sasl-external",
        "out": "sasl-external",
    }
    log = await eventually(
        lambda: (
            f"Accepted inbound s2s EXTERNAL authentication {A} -> {B}" in (text := srv.log())
            and text
        )
    )
    assert f"Accepted outbound s2s EXTERNAL authentication {B} -> {A}" in log


async def test_ejabberd_requiring_trusted_certificates_is_refused_what_we_cannot_verify(
    ejabberd, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """ejabberd without dialback trusts our certificate, but we cannot verify its self-signed
    one (use_starttls=required, no trust anchor for it): our stream to it authenticates with
    SASL EXTERNAL, while on its stream to us we offer no EXTERNAL and it has no dialback to fall
    back on, so its user's stanza bounces with the reason."""
    (port,) = ports(1)
    srv = ejabberd(tls="required", remotes={A: port}, cafile=tls_ca_file, dialback=False)
    node = await s2sfast_node(
        node_config(port, mode="required", certfile=tls_certfile(A), peer_port=srv.s2s_port)
    )
    bob = await c2s(srv, "bob")
    await node_to_bob(node, bob, "y1", "our direction works")
    (out,) = [c for c in node.connections() if c.direction == "out"]
    assert out.auth_method == "sasl-external" and not out.peer_certificate.trusted
    bob.send(f"<message to='carol@{A}/x' id='y2' type='chat'><body>theirs?</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "y2"))
    assert back.get("type") == "error"
    assert error_of(back) == (
        "wait",
        "remote-server-timeout",
        "Authentication failed: Peer provided no SASL mechanisms; most likely it doesn't "
        "accept our certificate",
    )
    assert await node.inbox.nothing(lambda s: s.id == "y2", 0.3)
    assert not [c for c in node.connections() if c.direction == "in" and c.pairs]
