"""Stream life with Prosody and ejabberd: idle streams kept up by whitespace keepalives, a clean
shutdown of either side, and federation resuming when the peer comes back."""

from __future__ import annotations

import asyncio

import pytest
from interop_c2s import local
from interop_flow import bob_to_node, error_of, eventually, is_message, node_to_bob
from interop_node import A, B, node_config

#: Prosody sends a single space on a stream idle for read_timeout seconds (default 840)
PROSODY_KEEPALIVE = "network_settings = { read_timeout = 1 }"


async def _linked(
    peer, s2sfast_node, c2s, ports, tls_certfile, *, keepalive=60.0, node_kw=None, **peer_kw
):
    (port,) = ports(1)
    srv = peer(tls="optional", remotes={A: port}, **peer_kw)
    node = await s2sfast_node(
        node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=srv.s2s_port),
        keepalive=keepalive,
        **(node_kw or {}),
    )
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "l1", "link in")
    await node_to_bob(node, bob, "l2", "link out")
    return srv, node, bob


async def test_idle_streams_survive_whitespace_keepalives(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """s2sfast (keepalive = 0.5 s) sends single spaces on its idle streams, and so does Prosody
    (read_timeout = 1 s); the streams stay up and keep carrying stanzas."""
    kw = {"extra_config": PROSODY_KEEPALIVE} if server == "prosody" else {}
    srv, node, bob = await _linked(
        peer, s2sfast_node, c2s, ports, tls_certfile, keepalive=0.5, **kw
    )
    before = {(c.direction, c.stream_id) for c in node.connections() if c.pairs}
    await asyncio.sleep(3)
    await bob_to_node(bob, node, "l3", "still here")
    await node_to_bob(node, bob, "l4", "me too")
    assert {(c.direction, c.stream_id) for c in node.connections() if c.pairs} == before
    sessions = srv.completed_sessions("in") + srv.completed_sessions("out")
    assert len(srv.completed_sessions("in")) == 1 and len(srv.completed_sessions("out")) == 1
    assert not [t for s in sessions for t in s.lines if "los" in t]  # closed / Closing


# how the peer logs s2sfast's clean close of both streams, and bounces to a.test afterwards
CLEAN_CLOSE = {
    "prosody": (
        [
            f"Incoming s2s stream {A}->{B} closed: stream closed",
            f"Outgoing s2s stream {B}->{A} closed: stream closed",
        ],
        (
            "cancel",
            "remote-server-not-found",
            "Server-to-server connection failed: connection refused",
        ),
    ),
    # ejabberd's words for a stream the peer ended with </stream:stream> (its debug log shows
    # it received; a c2s client closing cleanly gets the same words)
    "ejabberd": (
        [
            f"Closing inbound s2s connection {A} -> {B}: Stream reset by peer",
            f"Closing outbound s2s connection {B} -> {A}: Stream reset by peer",
        ],
        ("wait", "remote-server-timeout", "Connection failed: connection refused"),
    ),
}


async def test_node_stop_closes_cleanly_and_the_peer_bounces_afterwards(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    srv, node, bob = await _linked(peer, s2sfast_node, c2s, ports, tls_certfile, log_level="debug")
    await node.stop()
    assert node.connections() == []
    lines, after = CLEAN_CLOSE[server]
    # the peer saw both streams end with a clean </stream:stream>, no stream error
    assert await eventually(
        lambda: all(
            any(x in t for s in srv.s2s_sessions().values() for t in s.lines) for x in lines
        )
    ), [s.lines[-1] for s in srv.s2s_sessions().values()]
    assert "Session closed by remote with error" not in srv.log()  # Prosody
    assert "Stream closed by peer" not in srv.log()  # ejabberd: no stream error either
    if server == "ejabberd":
        assert 'Received XML on stream = <<"</stream:stream>">>' in srv.log()
    # a.test is gone: bob's next stanza comes back as an error
    bob.send(f"<message to='carol@{A}/x' id='gone' type='chat'><body>?</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "gone"))
    assert back.get("type") == "error"
    assert error_of(back) == after


async def test_peer_restart_then_federation_resumes(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    srv, node, bob = await _linked(peer, s2sfast_node, c2s, ports, tls_certfile)
    await bob.close()
    srv.stop()  # SIGTERM: the peer closes its streams (Prosody: <system-shutdown/>)
    for _ in range(150):
        if not node.connections():
            break
        await asyncio.sleep(0.1)
    assert node.connections() == []
    srv.start()  # same ports, same certificate and users
    bob = await c2s(srv, "bob")
    await node_to_bob(node, bob, "r1", "after the restart")
    await bob_to_node(bob, node, "r2", "and back")
    assert {c.direction for c in node.connections() if (A, B) in c.pairs} == {"in", "out"}


async def test_node_restart_on_the_same_port_then_the_peer_reconnects(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """s2sfast goes away cleanly and comes back (a new secret: keys of the old run are void);
    the peer opens fresh streams on the next stanza, in both directions."""
    (port,) = ports(1)
    srv = peer(tls="optional", remotes={A: port})
    config = node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=srv.s2s_port)
    node = await s2sfast_node(config)
    bob = await c2s(srv, "bob")
    await bob_to_node(bob, node, "n1", "first run")
    await node_to_bob(node, bob, "n2", "first run")
    await node.stop()
    again = await s2sfast_node(
        node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=srv.s2s_port)
    )
    await bob_to_node(bob, again, "n3", "second run")
    await node_to_bob(again, bob, "n4", "second run")
    assert await eventually(
        lambda: len(srv.completed_sessions("in")) == 2 and len(srv.completed_sessions("out")) == 2
    ), srv.s2s_sessions()


# Prosody only: ejabberd 23.01 sends no whitespace keepalives on S2S streams (no option for it);
# the scenario is Prosody's read_timeout.
@pytest.mark.parametrize("server", ["prosody"], indirect=True)
async def test_prosodys_keepalives_hold_off_s2sfasts_idle_timeout(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """Prosody's single-space keepalives (every 1 s) are traffic: s2sfast's idle timeout (3 s)
    must not close its streams while they come (watched for 7 s)."""
    srv, node, bob = await _linked(
        peer,
        s2sfast_node,
        c2s,
        ports,
        tls_certfile,
        extra_config=PROSODY_KEEPALIVE,
        node_kw={"idle_timeout": 3.0},
    )
    before = {(c.direction, c.stream_id) for c in node.connections() if c.pairs}
    await asyncio.sleep(7)
    assert {(c.direction, c.stream_id) for c in node.connections() if c.pairs} == before
    assert "connection-timeout" not in srv.log()


IDLE_CLOSED = {
    "prosody": "Session closed by remote with error: connection-timeout",
    "ejabberd": "Stream closed by peer: idle for 1 s (connection-timeout)",
}


async def test_idle_streams_closed_by_s2sfast_reopen_without_losing_stanzas(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """Without keepalives from the peer, s2sfast closes the idle streams after idle_timeout with
    <connection-timeout/>; the next stanzas open fresh streams, both ways, and none is lost."""
    srv, node, bob = await _linked(
        peer, s2sfast_node, c2s, ports, tls_certfile, node_kw={"idle_timeout": 1.0}
    )
    for _ in range(150):
        if not node.connections():
            break
        await asyncio.sleep(0.1)
    assert node.connections() == []
    assert await eventually(lambda: IDLE_CLOSED[server] in srv.log()), [
        line for line in srv.log().splitlines() if "los" in line
    ]
    await bob_to_node(bob, node, "i1", "after the idle close")
    await node_to_bob(node, bob, "i2", "after the idle close")
    bounces = [e for e in bob.received if local(e.tag) == "message" and e.get("type") == "error"]
    assert not bounces and not [s for s in node.inbox.seen if s.type == "error"]


async def test_idle_timeout_spares_our_busy_outgoing_stream(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """The peer never writes on a stream it only receives on (Prosody reads all the time, so
    its read_timeout never fires there; ejabberd sends no keepalives). Our outgoing stream to
    it is busy, not idle: s2sfast's idle_timeout must not tear it down."""
    idle = 3.0
    srv, node, bob = await _linked(
        peer, s2sfast_node, c2s, ports, tls_certfile, node_kw={"idle_timeout": idle}
    )
    (out,) = [c for c in node.connections() if c.direction == "out"]
    loop = asyncio.get_running_loop()
    sent_at = []
    for i in range(30):  # a stanza every 0.25 s for 7.5 s: 2.5 x idle_timeout, gaps 12x shorter
        await node.send(
            f"<message from='carol@{A}/x' to='{bob.full_jid}' id='busy{i}' type='chat'>"
            f"<body>still sending</body></message>".encode()
        )
        sent_at.append(loop.time())
        await asyncio.sleep(0.25)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert max(gaps) < idle, f"the test itself stalled {max(gaps):.1f} s (premise: busy stream)"
    for i in range(30):
        await bob.wait_for(lambda e, i=i: is_message(e, f"busy{i}"))
    assert out.stream_id in [c.stream_id for c in node.connections() if c.direction == "out"]
    # the peer's side of it (its incoming stream) was never told connection-timeout; its own
    # outgoing stream to us carried nothing meanwhile, so s2sfast may close that one as idle
    (peer_in,) = srv.completed_sessions("in")
    assert not [t for t in peer_in.lines if "connection-timeout" in t]
