"""Server Dialback with Prosody and ejabberd in every role (plaintext, so the peers' debug logs
show the elements as sent; the TLS variants of the same exchange run in test_interop_tls.py).

- The peer originating: it sends db:result to s2sfast, s2sfast verifies back against the peer.
- s2sfast originating: the peer dials back to s2sfast, which answers db:verify as authoritative
  (Prosody on its own outgoing stream, ejabberd on a stream it opens for the verification).
- Wrong keys are refused in both directions, by s2sfast and by the peer.
"""

from __future__ import annotations

import asyncio
import re

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
from interop_raw import RawS2S

DB = "{jabber:server:dialback}"
STREAMS = "{http://etherx.jabber.org/streams}"
BAD_KEY = "0123456789abcdef" * 4


def _lines(log: str, *parts: str) -> list[str]:
    """Log lines containing every one of *parts*."""
    return [line for line in log.splitlines() if all(p in line for p in parts)]


async def _plain(peer, s2sfast_node, c2s, ports, server, **node_kw):
    """The peer (S2S TLS off, debug log) and s2sfast federating over plaintext."""
    (port,) = ports(1)
    srv = peer(tls="off", remotes={A: port}, log_level="debug")
    node = await s2sfast_node(node_config(port, peer_port=srv.s2s_port, **node_kw))
    bob = await c2s(srv, "bob")
    return srv, node, bob, port


async def test_peer_originates_and_s2sfast_verifies_back(peer, server, s2sfast_node, c2s, ports):
    srv, node, bob, _ = await _plain(peer, s2sfast_node, c2s, ports, server)
    got = await bob_to_node(bob, node, "d1", "dialback me")
    assert got.from_ == bob.full_jid
    out = await eventually(lambda: srv.completed_sessions("out"))
    assert [s.completed for s in out] == [[(B, A)]]
    # (ejabberd may also have a stream open to us that carries only its db:verify for the key
    # s2sfast piggybacked on its own verify stream: never authenticated, so no pairs)
    inbound = [c for c in node.connections() if c.direction == "in" and c.pairs]
    assert [(c.remote, c.pairs, c.auth_method) for c in inbound] == [(B, ((A, B),), "dialback")]
    log = srv.log()
    if server == "prosody":
        # Prosody (originating) sent its key in db:result ...
        assert any(t.startswith("Sending[s2sout_unauthed]: <db:result") for t in out[0].lines)
        # ... and s2sfast (receiving) asked Prosody with db:verify, which said valid
        assert any(
            "verified dialback key... it is valid" in t
            for s in srv.s2s_sessions().values()
            if s.direction == "in"
            for t in s.lines
        ), "s2sfast never verified Prosody's key back"
    else:
        # ejabberd sent its key in db:result, s2sfast asked it with db:verify: valid
        keys = [
            m.group(1)
            for line in _lines(log, "Send XML on stream", "<db:result", f"to='{A}'")
            if (m := re.search(r">([0-9a-f]+)</db:result>", line))
        ]
        asked = [line for k in keys for line in _lines(log, "Received XML on stream", k)]
        assert asked and all("<db:verify" in line for line in asked)
        stream_id = re.search(r"id='([^']+)'", asked[0]).group(1)
        assert _lines(log, "Send XML on stream", "<db:verify", "type='valid'", stream_id)
        assert f"Accepted outbound s2s dialback authentication {B} -> {A}" in log


async def test_s2sfast_originates_and_answers_db_verify(peer, server, s2sfast_node, c2s, ports):
    srv, node, bob, _ = await _plain(peer, s2sfast_node, c2s, ports, server)
    reply = await node_to_bob(node, bob, "d2", "authoritative")
    assert reply.get("from") == f"carol@{A}/x"
    inbound = await eventually(lambda: srv.completed_sessions("in"))
    assert [s.completed for s in inbound] == [[(A, B)]]
    out = [c for c in node.connections() if c.direction == "out"]
    assert [(c.remote, c.pairs, c.auth_method) for c in out] == [(B, ((A, B),), "dialback")]
    log = srv.log()
    if server == "prosody":
        m = next(
            re.search(r"asking a\.test if key ([0-9a-f]+) belongs to them", t)
            for t in inbound[0].lines
            if "asking a.test if key" in t
        )
        key = m.group(1)
        # Prosody dialed back to s2sfast (authoritative) with db:verify and got type='valid'
        outs = [s for s in srv.s2s_sessions().values() if s.direction == "out"]
        assert any("<db:verify" in t and "Sending" in t for s in outs for t in s.lines)
    else:
        (result,) = _lines(log, "Received XML on stream", "<db:result", f"from='{A}'")
        key = re.search(r">([0-9a-f]+)</db:result>", result).group(1)
        # ejabberd asked s2sfast with db:verify carrying that key, and got type='valid'
        (verify,) = _lines(log, "Send XML on stream", "<db:verify", key)
        stream_id = re.search(r"id='([^']+)'", verify).group(1)
        assert _lines(log, "Received XML on stream", "<db:verify", "type='valid'", stream_id)
    assert len(key) == 64  # XEP-0185: hex HMAC-SHA256


async def test_wrong_key_to_s2sfast_is_refused_after_asking_the_peer(
    peer, server, s2sfast_node, c2s, ports
):
    """A raw socket claims to be b.test with a made-up key: s2sfast asks b.test (the peer),
    which says invalid; s2sfast answers db:result type='invalid', closes, delivers nothing."""
    srv, node, bob, port = await _plain(peer, s2sfast_node, c2s, ports, server)
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
    # the peer, the authoritative server, was asked and said the key is not its own
    sent = "Sending[s2sin_unauthed]: <db:verify" if server == "prosody" else "Send XML on stream"
    assert await eventually(lambda: _lines(srv.log(), sent, "<db:verify", "type='invalid'")), (
        "the peer never answered invalid for the made-up key"
    )
    if server == "prosody":
        assert "Asked to verify a dialback key that was incorrect" in srv.log()
    else:  # it was asked about that very key
        assert _lines(srv.log(), "Received XML on stream", "<db:verify", BAD_KEY)
    # the impostor's stream never is authenticated, and it is gone once the impostor hangs up
    assert not [c for c in node.connections() if c.stream_id == raw.stream_id and c.pairs]
    await raw.close()
    for _ in range(150):
        if raw.stream_id not in [c.stream_id for c in node.connections()]:
            break
        await asyncio.sleep(0.1)
    assert raw.stream_id not in [c.stream_id for c in node.connections()]


async def test_wrong_key_to_the_peer_is_refused_after_asking_s2sfast(
    peer, server, s2sfast_node, c2s, ports
):
    """A raw socket claims to be a.test: the peer asks a.test (s2sfast) with db:verify,
    s2sfast says invalid, and the peer refuses the stream."""
    srv, node, bob, _ = await _plain(peer, s2sfast_node, c2s, ports, server)
    raw = await RawS2S.open(srv.s2s_port, frm=A, to=B)
    raw.send(f"<db:result from='{A}' to='{B}'>{BAD_KEY}</db:result>")
    answer = await raw.wait_for(lambda e: e.tag == DB + "result")
    assert (answer.get("from"), answer.get("to"), answer.get("type")) == (B, A, "invalid")
    raw.send(f"<message from='mallory@{A}' to='{bob.full_jid}' id='evil'><body>x</body></message>")
    assert await bob.nothing(lambda e: e.get("id") == "evil", 0.5)
    log = await eventually(lambda: (text := srv.log()) and raw.stream_id in text and text)
    # s2sfast, authoritative for a.test, said the key is not its own
    if server == "prosody":
        # Prosody answers with its stream id and keeps the stream open (no stream error)
        assert answer.get("id") == raw.stream_id
        (verdict,) = _lines(log, "Received[s2sout]: <verify", f"id='{raw.stream_id}'")
    else:
        (verdict,) = _lines(log, "Received XML on stream", "<db:verify", raw.stream_id)
    assert "type='invalid'" in verdict and "from='a.test'" in verdict
    await raw.close()


async def test_nodes_sharing_the_secret_are_one_domain_to_the_peer(
    peer, server, s2sfast_node, c2s, ports
):
    """A second s2sfast node for a.test with the same [s2s] shared: the peer dials back to the
    first (a.test's published port), which vouches for the second's key (XEP-0185 keys)."""
    srv, node, bob, _ = await _plain(peer, s2sfast_node, c2s, ports, server, shared="cluster")
    (port2,) = ports(1)
    twin = await s2sfast_node(node_config(port2, peer_port=srv.s2s_port, shared="cluster"))
    reply = await node_to_bob(twin, bob, "t1", "from the twin")
    assert reply.get("from") == f"carol@{A}/x"
    # the first node answered the peer's db:verify, the twin was never asked
    assert not [c for c in twin.connections() if c.direction == "in"]
    if server == "prosody":  # on Prosody's outgoing stream to a.test, which stays
        assert [c for c in node.connections() if c.direction == "in"]
    else:  # on a stream ejabberd opened to a.test (the first node's port) just for that
        assert await eventually(
            lambda: _lines(srv.log(), "Received XML on stream", "<db:verify", "type='valid'")
        )


async def test_node_with_another_secret_is_refused_by_the_peer(
    peer, server, s2sfast_node, c2s, ports
):
    """A node claiming a.test with a different [s2s] shared: a.test's real server says its key
    is invalid, the peer refuses, and the impostor's stanza comes back to it as an error."""
    srv, node, bob, _ = await _plain(peer, s2sfast_node, c2s, ports, server, shared="real")
    (port2,) = ports(1)
    impostor = await s2sfast_node(node_config(port2, peer_port=srv.s2s_port, shared="guessed"))
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
    # the peer asked the real a.test (the first node), which said invalid
    if server == "prosody":
        verdicts = _lines(srv.log(), "Received[s2sout]: <verify")
    else:
        verdicts = await eventually(
            lambda: _lines(srv.log(), "Received XML on stream", "<db:verify", "type='invalid'")
        )
    assert any("type='invalid'" in t for t in verdicts)


# Prosody only: ejabberd 23.01 sends every db:verify on a new outgoing stream opened for that
# verification, never on an authenticated one, so the scenario does not exist there.
@pytest.mark.parametrize("server", ["prosody"], indirect=True)
async def test_db_verify_on_an_authenticated_stream_does_not_time_it_out(
    peer, server, s2sfast_node, c2s, ports
):
    """Prosody carries its db:verify requests on its already authenticated outgoing stream. After
    s2sfast answers one there, that stream must stay up while idle: the negotiation timer
    (state_timeout) is for negotiation, not for authenticated streams."""
    srv, node, bob, _ = await _plain(peer, s2sfast_node, c2s, ports, server, state_timeout_ms=3000)
    await bob_to_node(bob, node, "k1", "Prosody's stream first")
    (inbound,) = [c for c in node.connections() if c.direction == "in"]
    await node_to_bob(node, bob, "k2", "now ours: Prosody dials back on its stream")
    assert any("<db:verify" in t for s in srv.completed_sessions("out") for t in s.lines), (
        "Prosody did not piggyback its db:verify"
    )
    await asyncio.sleep(6.5)  # over twice state_timeout (3 s), idle
    still = [c for c in node.connections() if c.stream_id == inbound.stream_id]
    assert still, "s2sfast closed Prosody's authenticated stream"
    assert "connection-timeout" not in srv.log()
    got = await bob_to_node(bob, node, "k3", "same stream")
    assert got.id == "k3"


UNREACHABLE = {
    "prosody": (
        "wait",
        "remote-server-timeout",
        "Server-to-server connection failed: dialback authentication failed",
    ),
    # ejabberd does not render the XEP-0220 error s2sfast sends (<error type='cancel'>
    # <remote-server-not-found/></error>, no text)
    "ejabberd": (
        "wait",
        "remote-server-timeout",
        "Authentication failed: Peer responded with error: unrecognized error",
    ),
}


async def test_unreachable_authoritative_server_gives_the_peer_a_dialback_error(
    peer, server, s2sfast_node, c2s, ports
):
    """s2sfast cannot reach b.test to verify the peer's key (its route to b.test is a closed
    port): it answers db:result type='error' at once, and the peer bounces bob's stanza."""
    port, closed = ports(2)
    srv = peer(tls="off", remotes={A: port}, log_level="debug")
    node = await s2sfast_node(node_config(port, peer_port=closed))
    bob = await c2s(srv, "bob")
    bob.send(f"<message to='carol@{A}/x' id='u1' type='chat'><body>hi</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "u1"))
    assert back.get("type") == "error"
    assert error_of(back) == UNREACHABLE[server]
    if server == "prosody":
        assert _lines(srv.log(), "Received[s2sout_unauthed]: <result", "type='error'")
    else:
        assert await eventually(
            lambda: _lines(srv.log(), "Received XML on stream", "<db:result", "type='error'")
        )
    assert await node.inbox.nothing(lambda s: s.id == "u1", 0.2)
