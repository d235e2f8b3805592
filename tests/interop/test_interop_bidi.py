"""Bidirectional S2S (XEP-0288) against Prosody 0.12's mod_s2s_bidi (in Prosody's core modules
since 0.12, opt-in: the host's ``modules_enabled`` gets ``"s2s_bidi"``).

What Prosody does (its mod_s2s_bidi.lua and mod_s2s.lua): as the receiving server it offers
``<bidi xmlns='urn:xmpp:features:bidi'/>`` to an unauthenticated incoming stream (once it is
encrypted, unless ``s2s_require_encryption`` is off) and, after a ``<bidi/>`` request and
authentication, makes that stream its outbound route to the peer; as the originating server it
asks for bidi when offered and accepts the peer's stanzas on its outbound stream. Dialback makes
Prosody verify our key over a connection of its own (XEP-0288 forbids verifying on the stream
the request came on), so one TCP connection for both directions needs SASL EXTERNAL: here both
sides trust the other's certificate. Skipped without Prosody; failing then when
S2SFAST_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

from dataclasses import replace

from interop_flow import bob_to_node, eventually, node_to_bob
from interop_node import A, B, node_config

#: mod_s2s_bidi loaded for b.test (Prosody's config refuses a second global modules_enabled,
#: so the host gets the template's list plus "s2s_bidi")
BIDI_HOST = f"""
VirtualHost "{B}"
\tmodules_enabled = {{
\t\t"roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix"; "s2s_bidi";
\t}}
"""


async def _setup(prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file, *, sasl, bidi=True):
    """Prosody (mod_s2s_bidi when *bidi*) and a node with ``[s2s] bidi``, not yet linked.
    *sasl*: certificates trusted both ways, so both sides authenticate with SASL EXTERNAL."""
    (port,) = ports(1)
    extra = (BIDI_HOST if bidi else "") + (
        f's2s_ssl = {{ cafile = "{tls_ca_file}" }}\n' if sasl else ""
    )
    srv = prosody(tls="optional", remotes={A: port}, extra_config=extra)
    config = node_config(
        port,
        mode="optional",
        certfile=tls_certfile(A),
        cafile=str(srv.cert_path) if sasl else None,
        peer_port=srv.s2s_port,
    )
    config = replace(config, s2s=replace(config.s2s, bidi=True, sasl_external=sasl))
    node = await s2sfast_node(config)
    bob = await c2s(srv, "bob")
    return srv, node, bob


def _directions(node):
    return sorted(c.direction for c in node.connections())


async def _both_ways(node, bob, n=20):
    for i in range(n):
        await node_to_bob(node, bob, f"o{i}", f"out {i}")
        await bob_to_node(bob, node, f"i{i}", f"in {i}")


async def test_we_open_prosody_answers_on_the_same_connection(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    srv, node, bob = await _setup(
        prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file, sasl=True
    )
    await node_to_bob(node, bob, "first", "we open the connection")
    await bob_to_node(bob, node, "reply", "Prosody answers on it")
    await _both_ways(node, bob)
    assert _directions(node) == ["out"]
    (conn,) = node.connections()
    assert conn.auth_method == "sasl-external" and conn.tls
    (stream,) = node.router.streams
    assert stream.machine.bidi
    log = srv.log()
    assert "Requested bidirectional stream" in log
    assert "Setting up to handle route from b.test to a.test" in log


async def test_prosody_opens_we_answer_on_the_same_connection(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    srv, node, bob = await _setup(
        prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file, sasl=True
    )
    await bob_to_node(bob, node, "first", "Prosody opens the connection")
    await eventually(lambda: node.router.outbound.get((A, B)) is not None)
    await node_to_bob(node, bob, "reply", "we answer on it")
    await _both_ways(node, bob)
    assert _directions(node) == ["in"]
    (stream,) = node.router.streams
    assert stream.machine.bidi and node.router.outbound[(A, B)].stream is stream
    assert "Requesting bidirectional stream" in srv.log()


async def test_dialback_with_bidi_delivers_both_ways(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    """Without certificates both trust, dialback: Prosody verifies our key over its own
    connection to us, which also carries its stanzas; everything arrives either way."""
    srv, node, bob = await _setup(
        prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file, sasl=False
    )
    await node_to_bob(node, bob, "first", "dialback")
    await bob_to_node(bob, node, "reply", "dialback back")
    await _both_ways(node, bob)
    authenticated = [c for c in node.connections() if c.pairs]
    assert {c.auth_method for c in authenticated} == {"dialback"}
    print(f"dialback with bidi: our connections {_directions(node)}")


async def test_prosody_without_mod_s2s_bidi_gets_two_connections(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file
):
    srv, node, bob = await _setup(
        prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca_file, sasl=True, bidi=False
    )
    await node_to_bob(node, bob, "first", "no bidi")
    await bob_to_node(bob, node, "reply", "no bidi back")
    assert _directions(node) == ["in", "out"]
    assert not any(s.machine.bidi for s in node.router.streams)
    assert "bidirectional" not in srv.log()


async def test_ejabberd_without_xep_0288_ignores_our_offer(ejabberd, s2sfast_node, c2s, ports):
    """ejabberd 23.01 has no XEP-0288: it neither asks for bidi on our offer nor offers it,
    so each direction gets its own connection and everything arrives (our stream features
    also carry the XEP-0478 limits it does not know)."""
    (port,) = ports(1)
    srv = ejabberd(tls="optional", remotes={A: port})
    config = node_config(port, peer_port=srv.s2s_port)
    node = await s2sfast_node(replace(config, s2s=replace(config.s2s, bidi=True)))
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "first", "ejabberd opens")
    await node_to_bob(node, bob, "reply", "we open our own")
    await _both_ways(node, bob, n=5)
    assert _directions(node) == ["in", "out"]
    assert not any(s.machine.bidi for s in node.router.streams)
