"""Server Dialback with Prosody in every role (plaintext, so Prosody's debug log shows the
elements as sent; the TLS variants of the same exchange run in test_interop_tls.py).

- Prosody originating: it sends db:result to s2sfast, s2sfast verifies back against Prosody.
- s2sfast originating: Prosody dials back to s2sfast, which answers db:verify as authoritative.
- Wrong keys are refused in both directions, by s2sfast and by Prosody.
"""

from __future__ import annotations

import asyncio
import re

from interop_c2s import local
from interop_flow import bob_to_node, error_of, is_message, node_to_bob, stanza_error
from interop_node import A, B, node_config
from interop_peer import completed_sessions, s2s_sessions
from interop_raw import RawS2S

DB = "{jabber:server:dialback}"
STREAMS = "{http://etherx.jabber.org/streams}"
BAD_KEY = "0123456789abcdef" * 4


def _sent(log: str, prefix: str) -> list[str]:
    """Lines where Prosody logged sending/receiving an element starting with *prefix*."""
    return [line for line in log.splitlines() if prefix in line]


async def _plain(prosody, s2sfast_node, c2s, ports, **node_kw):
    (port,) = ports(1)
    peer = prosody(tls="off", remotes={A: port})
    node = await s2sfast_node(node_config(port, peer_port=peer.s2s_port, **node_kw))
    bob = await c2s(peer, "bob")
    return peer, node, bob, port


async def test_prosody_originates_and_s2sfast_verifies_back(prosody, s2sfast_node, c2s, ports):
    peer, node, bob, _ = await _plain(prosody, s2sfast_node, c2s, ports)
    got = await bob_to_node(bob, node, "d1", "dialback me")
    assert got.from_ == bob.full_jid
    log = peer.log()
    sessions = s2s_sessions(log)
    out = [s for s in sessions.values() if s.direction == "out" and s.completed]
    assert [s.completed for s in out] == [[(B, A)]]
    # Prosody (originating) sent its key in db:result ...
    assert any(t.startswith("Sending[s2sout_unauthed]: <db:result") for t in out[0].lines)
    # ... and s2sfast (receiving) asked Prosody (authoritative) with db:verify, which said valid
    verified = [
        s
        for s in sessions.values()
        if s.direction == "in" and any("verified dialback key... it is valid" in t for t in s.lines)
    ]
    assert verified, "s2sfast never verified Prosody's key back"
    inbound = [c for c in node.connections() if c.direction == "in"]
    assert [(c.remote, c.pairs, c.auth_method) for c in inbound] == [(B, ((A, B),), "dialback")]


async def test_s2sfast_originates_and_answers_db_verify(prosody, s2sfast_node, c2s, ports):
    peer, node, bob, _ = await _plain(prosody, s2sfast_node, c2s, ports)
    reply = await node_to_bob(node, bob, "d2", "authoritative")
    assert reply.get("from") == f"carol@{A}/x"
    log = peer.log()
    sessions = s2s_sessions(log)
    inbound = [s for s in sessions.values() if s.direction == "in" and s.completed]
    assert [s.completed for s in inbound] == [[(A, B)]]
    m = next(
        re.search(r"asking a\.test if key ([0-9a-f]+) belongs to them", t)
        for t in inbound[0].lines
        if "asking a.test if key" in t
    )
    key = m.group(1)
    assert len(key) == 64  # XEP-0185: hex HMAC-SHA256
    # Prosody dialed back to s2sfast (authoritative) with db:verify and got type='valid'
    outs = [s for s in sessions.values() if s.direction == "out"]
    assert any("<db:verify" in t and "Sending" in t for s in outs for t in s.lines)
    out = [c for c in node.connections() if c.direction == "out"]
    assert [(c.remote, c.pairs, c.auth_method) for c in out] == [(B, ((A, B),), "dialback")]


async def test_wrong_key_to_s2sfast_is_refused_after_asking_prosody(
    prosody, s2sfast_node, c2s, ports
):
    """A raw socket claims to be b.test with a made-up key: s2sfast asks b.test (Prosody), which
    says invalid; s2sfast answers db:result type='invalid', closes, and delivers nothing."""
    peer, node, bob, port = await _plain(prosody, s2sfast_node, c2s, ports)
    raw = await RawS2S.open(port, frm=B, to=A)
    raw.send(f"<db:result from='{B}' to='{A}'>{BAD_KEY}</db:result>")
    answer = await raw.wait_for(lambda e: e.tag == DB + "result")
    assert (answer.get("from"), answer.get("to"), answer.get("type")) == (A, B, "invalid")
    raw.send(f"<message from='mallory@{B}' to='carol@{A}' id='evil'><body>x</body></message>")
    await raw.wait_closed()
    # then the stream closes with not-authorized
    err = raw.received[-1]
    assert err.tag == STREAMS + "error"
    assert [local(c.tag) for c in err][0] == "not-authorized"
    assert await node.inbox.nothing(lambda s: s.id == "evil", 0.5)
    # Prosody, the authoritative server, was asked and said the key is not its own
    log = peer.log()
    assert "Asked to verify a dialback key that was incorrect" in log
    assert _sent(log, "Sending[s2sin_unauthed]: <db:verify") and any(
        "type='invalid'" in t for t in _sent(log, "<db:verify")
    )
    # (Prosody's own outgoing stream, opened to carry its db:verify, is authenticated; the
    # impostor's stream never is, and it is gone once the impostor hangs up)
    assert not [c for c in node.connections() if c.stream_id == raw.stream_id and c.pairs]
    await raw.close()
    for _ in range(150):
        if raw.stream_id not in [c.stream_id for c in node.connections()]:
            break
        await asyncio.sleep(0.1)
    assert raw.stream_id not in [c.stream_id for c in node.connections()]


async def test_wrong_key_to_prosody_is_refused_after_asking_s2sfast(
    prosody, s2sfast_node, c2s, ports
):
    """A raw socket claims to be a.test: Prosody asks a.test (s2sfast) with db:verify, s2sfast
    says invalid, and Prosody refuses the stream."""
    peer, node, bob, _ = await _plain(prosody, s2sfast_node, c2s, ports)
    raw = await RawS2S.open(peer.s2s_port, frm=A, to=B)
    raw.send(f"<db:result from='{A}' to='{B}'>{BAD_KEY}</db:result>")
    answer = await raw.wait_for(lambda e: e.tag == DB + "result")
    # Prosody answers with its stream id and keeps the stream open (no stream error)
    assert (answer.get("from"), answer.get("to"), answer.get("type")) == (B, A, "invalid")
    assert answer.get("id") == raw.stream_id
    raw.send(f"<message from='mallory@{A}' to='{bob.full_jid}' id='evil'><body>x</body></message>")
    assert await bob.nothing(lambda e: e.get("id") == "evil", 0.5)
    log = peer.log()
    # s2sfast, authoritative for a.test, said the key is not its own
    (verdict,) = [
        t for t in _sent(log, "Received[s2sout]: <verify") if f"id='{raw.stream_id}'" in t
    ]
    assert "type='invalid'" in verdict and "from='a.test'" in verdict
    await raw.close()


async def test_nodes_sharing_the_secret_are_one_domain_to_prosody(
    prosody, s2sfast_node, c2s, ports
):
    """A second s2sfast node for a.test with the same [s2s] shared: Prosody dials back to the
    first (a.test's advertised port), which vouches for the second's key (XEP-0185 keys)."""
    peer, node, bob, _ = await _plain(prosody, s2sfast_node, c2s, ports, shared="cluster-secret")
    (port2,) = ports(1)
    twin = await s2sfast_node(node_config(port2, peer_port=peer.s2s_port, shared="cluster-secret"))
    reply = await node_to_bob(twin, bob, "t1", "from the twin")
    assert reply.get("from") == f"carol@{A}/x"
    # the first node answered Prosody's db:verify: it has an inbound stream, the twin has none
    assert [c for c in node.connections() if c.direction == "in"]
    assert not [c for c in twin.connections() if c.direction == "in"]


async def test_node_with_another_secret_is_refused_by_prosody(prosody, s2sfast_node, c2s, ports):
    """A node claiming a.test with a different [s2s] shared: a.test's real server says its key
    is invalid, Prosody refuses, and the impostor's stanza comes back to it as an error."""
    peer, node, bob, _ = await _plain(prosody, s2sfast_node, c2s, ports, shared="the-real-one")
    (port2,) = ports(1)
    impostor = await s2sfast_node(node_config(port2, peer_port=peer.s2s_port, shared="guessed"))
    await impostor.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='i1'>"
        f"<body>trust me</body></message>".encode()
    )
    bounce = await impostor.inbox.get(lambda s: s.id == "i1")
    assert (bounce.type, bounce.to) == ("error", f"carol@{A}/x")
    assert stanza_error(bounce) == (
        "cancel",
        "remote-server-not-found",
        "b.test rejected our dialback key",
    )
    assert await bob.nothing(lambda e: e.get("id") == "i1", 0.3)
    # Prosody asked the real a.test (the first node), which said invalid
    assert any("type='invalid'" in t for t in _sent(peer.log(), "Received[s2sout]: <verify"))


async def test_db_verify_on_an_authenticated_stream_does_not_time_it_out(
    prosody, s2sfast_node, c2s, ports
):
    """Prosody carries its db:verify requests on its already authenticated outgoing stream. After
    s2sfast answers one there, that stream must stay up while idle: the negotiation timer
    (state_timeout) is for negotiation, not for authenticated streams."""
    peer, node, bob, _ = await _plain(prosody, s2sfast_node, c2s, ports, state_timeout_ms=3000)
    await bob_to_node(bob, node, "k1", "Prosody's stream first")
    (inbound,) = [c for c in node.connections() if c.direction == "in"]
    await node_to_bob(node, bob, "k2", "now ours: Prosody dials back on its stream")
    assert any("<db:verify" in t for s in completed_sessions(peer.log(), "out") for t in s.lines), (
        "Prosody did not piggyback its db:verify"
    )
    await asyncio.sleep(6.5)  # over twice state_timeout (3 s), idle
    still = [c for c in node.connections() if c.stream_id == inbound.stream_id]
    assert still, "s2sfast closed Prosody's authenticated stream"
    assert "connection-timeout" not in peer.log()
    got = await bob_to_node(bob, node, "k3", "same stream")
    assert got.id == "k3"


async def test_unreachable_authoritative_server_gives_prosody_a_dialback_error(
    prosody, s2sfast_node, c2s, ports
):
    """s2sfast cannot reach b.test to verify Prosody's key (its route to b.test is a closed port):
    it answers db:result type='error' at once, and Prosody bounces bob's stanza."""
    port, closed = ports(2)
    peer = prosody(tls="off", remotes={A: port})
    node = await s2sfast_node(node_config(port, peer_port=closed))
    bob = await c2s(peer, "bob")
    bob.send(f"<message to='carol@{A}/x' id='u1' type='chat'><body>hi</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "u1"))
    assert back.get("type") == "error"
    assert error_of(back) == (
        "wait",
        "remote-server-timeout",
        "Server-to-server connection failed: dialback authentication failed",
    )
    assert any("type='error'" in t for t in _sent(peer.log(), "Received[s2sout_unauthed]: <result"))
    assert await node.inbox.nothing(lambda s: s.id == "u1", 0.2)
