"""Every s2sfast ``use_starttls`` value against Prosody with S2S TLS required, optional and off.

Pairs that must federate do, in both directions (a Prosody user over c2s -> the Node handler, and
node.send -> the Prosody user), with TLS on the wire exactly when either side requires it or both
can; pairs that must not federate don't, and each side's stanza comes back as an error stanza.
"""

from __future__ import annotations

import asyncio

import pytest
from interop_c2s import local
from interop_flow import bob_to_node, error_of, is_message, node_to_bob, stanza_error
from interop_node import A, B, node_config
from interop_peer import completed_sessions, s2s_sessions

MODES = ("false", "optional", "required", "required_trusted")
PROSODY_TLS = ("required", "optional", "off")

# (s2sfast use_starttls, Prosody S2S_TLS) -> TLS on both streams, or None: must not federate
EXPECTED: dict[tuple[str, str], bool | None] = {
    ("false", "required"): None,  # Prosody insists on STARTTLS, s2sfast never does TLS
    ("false", "optional"): False,
    ("false", "off"): False,
    ("optional", "required"): True,
    ("optional", "optional"): True,  # both can: STARTTLS is taken up in both directions
    ("optional", "off"): False,
    ("required", "required"): True,
    ("required", "optional"): True,
    ("required", "off"): None,  # s2sfast insists, Prosody cannot
    ("required_trusted", "required"): True,
    ("required_trusted", "optional"): True,
    ("required_trusted", "off"): None,
}

# What each side says when they must not federate: (s2sfast's bounce text, Prosody's bounce text)
REFUSAL_TEXT = {
    ("false", "required"): (
        "b.test requires STARTTLS but use_starttls=false",
        "TLS negotiation failed",
    ),
    ("required", "off"): (
        "b.test does not offer STARTTLS but use_starttls=required",
        "policy-violation (STARTTLS is required before dialback (use_starttls=required))",
    ),
    ("required_trusted", "off"): (
        "b.test does not offer STARTTLS but use_starttls=required_trusted",
        "policy-violation (STARTTLS is required before dialback (use_starttls=required_trusted))",
    ),
}


async def _setup(prosody, s2sfast_node, c2s, ports, tls_certfile, mode, ptls, trust=True):
    (port,) = ports(1)
    peer = prosody(tls=ptls, remotes={A: port})
    cafile = str(peer.cert_path) if mode == "required_trusted" and trust else None
    config = node_config(
        port, mode=mode, certfile=tls_certfile(A), cafile=cafile, peer_port=peer.s2s_port
    )
    node = await s2sfast_node(config)
    bob = await c2s(peer, "bob")
    return peer, node, bob


@pytest.mark.parametrize("ptls", PROSODY_TLS)
@pytest.mark.parametrize("mode", MODES)
async def test_use_starttls_against_prosody(
    prosody, s2sfast_node, c2s, ports, tls_certfile, mode, ptls
):
    peer, node, bob = await _setup(prosody, s2sfast_node, c2s, ports, tls_certfile, mode, ptls)
    expected = EXPECTED[(mode, ptls)]
    if expected is None:
        await _refused_both_ways(peer, node, bob, *REFUSAL_TEXT[(mode, ptls)])
        return

    # Prosody originates (b.test -> a.test), s2sfast receives and verifies back
    got = await bob_to_node(bob, node, "p1", f"hello over {ptls}")
    assert (got.from_, got.to, got.type) == (bob.full_jid, f"carol@{A}/x", "chat")
    assert f"hello over {ptls}".encode() in got.raw
    # s2sfast originates (a.test -> b.test), Prosody dials back
    reply = await node_to_bob(node, bob, "s1", f"reply with {mode}")
    assert reply.get("from") == f"carol@{A}/x"
    assert [c.text for c in reply if local(c.tag) == "body"] == [f"reply with {mode}"]

    # TLS as seen by s2sfast: both streams with b.test, each authenticated for the pair
    conns = {c.direction: c for c in node.connections() if c.remote == B}
    assert set(conns) == {"in", "out"}
    for c in conns.values():
        assert c.tls is expected, c
        assert (A, B) in c.pairs and c.auth_method == "dialback"
    if mode == "required_trusted":
        for c in conns.values():
            assert c.peer_certificate.trusted and c.peer_certificate.name_matches, c
    # ... and as Prosody's log tells it ("Stream encrypted (TLSv1.3 ...)" per session)
    log = peer.log()
    incoming = completed_sessions(log, "in")
    outgoing = completed_sessions(log, "out")
    assert incoming and outgoing
    assert {s.completed[0] for s in incoming} == {(A, B)}
    assert {s.completed[0] for s in outgoing} == {(B, A)}
    assert {s.encrypted for s in incoming + outgoing} == {expected}


async def _refused_both_ways(peer, node, bob, node_reason: str, prosody_reason: str) -> None:
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
    # Prosody's bounce to bob: remote-server-timeout (wait), text quoting the failure
    assert back.get("type") == "error" and back.get("from") == f"carol@{A}/x"
    etype, cond, text = error_of(back)
    assert (etype, cond) == ("wait", "remote-server-timeout")
    assert text == f"Server-to-server connection failed: {prosody_reason}", text
    # nothing got through either way, and no stream is authenticated
    assert await node.inbox.nothing(lambda s: s.type != "error", 0.3)
    assert not [e for e in bob.received if is_message(e, "s1") and e.get("type") != "error"]
    assert all(not c.pairs for c in node.connections())
    log = peer.log()
    assert not completed_sessions(log, "in") and not completed_sessions(log, "out")


@pytest.mark.parametrize("ptls", ("required", "optional"))
async def test_required_trusted_refuses_prosodys_self_signed_certificate(
    prosody, s2sfast_node, c2s, ports, tls_certfile, ptls
):
    """Without a cacertfile that trusts it, Prosody's self-signed certificate is refused in both
    directions, and both senders learn why."""
    peer, node, bob = await _setup(
        prosody, s2sfast_node, c2s, ports, tls_certfile, "required_trusted", ptls, trust=False
    )
    await _refused_both_ways(
        peer,
        node,
        bob,
        "TLS handshake failed: CERTIFICATE_VERIFY_FAILED",
        "policy-violation (certificate of b.test rejected: the certificate is self-signed and "
        "not a trust anchor)",
    )
    # Prosody saw s2sfast abort the handshake on its certificate
    assert "tlsv1 alert unknown ca" in peer.log()


async def test_mutual_trust_prosody_offers_sasl_external_and_dialback_is_used(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """Prosody trusting s2sfast's CA (``s2s_ssl.cafile``) validates our certificate and offers
    SASL EXTERNAL beside dialback; s2sfast (required_trusted, pinning Prosody's certificate)
    authenticates with dialback, which Prosody still completes with a dial-back."""
    (port,) = ports(1)
    peer = prosody(
        tls="required", remotes={A: port}, extra_cfg=f's2s_ssl = {{ cafile = "{tls_ca_file}" }}'
    )
    config = node_config(
        port,
        mode="required_trusted",
        certfile=tls_certfile(A),
        cafile=str(peer.cert_path),
        peer_port=peer.s2s_port,
    )
    node = await s2sfast_node(config)
    bob = await c2s(peer, "bob")
    await bob_to_node(bob, node, "t1", "trusted both ways")
    await node_to_bob(node, bob, "t2", "and back")
    log = peer.log()
    assert "Offering SASL EXTERNAL" in log
    assert "<mechanism>EXTERNAL</mechanism>" in log
    sessions = completed_sessions(log, "in") + completed_sessions(log, "out")
    assert len(sessions) == 2
    for s in sessions:
        assert s.encrypted
        assert "certificate chain validation result: valid" in s.lines
        assert "certificate identity validation result: valid" in s.lines
    for c in node.connections():
        assert c.tls and c.auth_method == "dialback"
        assert c.peer_certificate.trusted and c.peer_certificate.name_matches


def _secure_domain_cfg(cafile: str) -> str:
    """Prosody insisting on a trusted certificate from a.test (``s2s_secure_domains``)."""
    return f's2s_secure_domains = {{ "{A}" }}\ns2s_ssl = {{ cafile = "{cafile}" }}'


async def test_prosody_requiring_a_trusted_certificate_federates_with_a_trusted_node(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    (port,) = ports(1)
    peer = prosody(tls="required", remotes={A: port}, extra_cfg=_secure_domain_cfg(tls_ca_file))
    node = await s2sfast_node(
        node_config(port, mode="required", certfile=tls_certfile(A), peer_port=peer.s2s_port)
    )
    bob = await c2s(peer, "bob")
    await bob_to_node(bob, node, "v1", "certificate checked")
    await node_to_bob(node, bob, "v2", "both ways")
    log = peer.log()
    assert "Forbidding insecure connection" not in log
    for s in completed_sessions(log, "in") + completed_sessions(log, "out"):
        assert "certificate chain validation result: valid" in s.lines


async def test_prosody_requiring_a_trusted_certificate_refuses_a_self_signed_node(
    prosody, s2sfast_node, c2s, ports, tls_ca_file, tmp_path
):
    """Prosody closes both streams with not-authorized "Your server's certificate is not
    trusted"; both senders get an error back."""
    import certs

    (port,) = ports(1)
    peer = prosody(tls="required", remotes={A: port}, extra_cfg=_secure_domain_cfg(tls_ca_file))
    certfile = certs.self_signed(A).write_pem(tmp_path)
    node = await s2sfast_node(
        node_config(port, mode="required", certfile=certfile, peer_port=peer.s2s_port)
    )
    bob = await c2s(peer, "bob")
    bob.send(f"<message to='carol@{A}/x' id='p1' type='chat'><body>hi</body></message>")
    await node.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='s1' type='chat'>"
        f"<body>hi</body></message>".encode()
    )
    bounce, back = await asyncio.gather(
        node.inbox.get(lambda s: s.id == "s1"),
        bob.wait_for(lambda e: is_message(e, "p1")),
    )
    etype, cond, text = stanza_error(bounce)
    assert (bounce.type, etype, cond) == ("error", "cancel", "remote-server-not-found")
    assert text == (
        "b.test sent stream error not-authorized (Your server's certificate is not trusted)"
    ), text
    assert error_of(back) == (
        "wait",
        "remote-server-timeout",
        "Server-to-server connection failed: Remote server's certificate is not trusted",
    )
    log = peer.log()
    assert log.count("Forbidding insecure connection to/from a.test") == 2  # s2sin and s2sout
    assert not completed_sessions(log, "in") and not completed_sessions(log, "out")


async def test_required_trusted_with_prosodys_certificate_from_a_trusted_ca(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file
):
    """A CA-issued certificate for b.test (not pinned: the chain is verified), both ways."""
    (port,) = ports(1)
    peer = prosody(
        tls="required",
        remotes={A: port},
        certificate=tls_ca.issue([B]),
        extra_cfg=f's2s_ssl = {{ cafile = "{tls_ca_file}" }}',
    )
    node = await s2sfast_node(
        node_config(
            port,
            mode="required_trusted",
            certfile=tls_certfile(A),
            cafile=tls_ca_file,
            peer_port=peer.s2s_port,
        )
    )
    bob = await c2s(peer, "bob")
    await bob_to_node(bob, node, "ca1", "chain verified")
    await node_to_bob(node, bob, "ca2", "both ways")
    conns = node.connections()
    assert {c.direction for c in conns} == {"in", "out"}
    for c in conns:
        assert c.peer_certificate.trusted and c.peer_certificate.names.dns_names == (B,)


async def test_required_trusted_refuses_a_certificate_naming_another_domain(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file
):
    """Prosody presents a trusted certificate for wrong.test: refused in both directions with the
    reason, sent as a proper stream error (after a stream header) that Prosody can read."""
    (port,) = ports(1)
    peer = prosody(tls="required", remotes={A: port}, certificate=tls_ca.issue(["wrong.test"]))
    node = await s2sfast_node(
        node_config(
            port,
            mode="required_trusted",
            certfile=tls_certfile(A),
            cafile=tls_ca_file,
            peer_port=peer.s2s_port,
        )
    )
    bob = await c2s(peer, "bob")
    reason = (
        "certificate of b.test rejected: the certificate does not name b.test "
        "(it names DNS:wrong.test)"
    )
    await _refused_both_ways(peer, node, bob, reason, f"policy-violation ({reason})")
    log = peer.log()
    # s2sfast's outgoing stream (Prosody's s2sin) is refused after TLS: the stream error must
    # follow a fresh stream header, or Prosody reads it as not-well-formed (unbound prefix)
    assert "Received invalid XML" not in log, [
        line for line in log.splitlines() if "invalid XML" in line
    ]
    incoming = [s for s in s2s_sessions(log).values() if s.direction == "in" and s.encrypted]
    assert incoming and any(
        t == f"Session closed by remote with error: policy-violation ({reason})"
        for s in incoming
        for t in s.lines
    ), [t for s in incoming for t in s.lines if "closed" in t]
