"""Stream life with Prosody: idle streams kept up by whitespace keepalives, a clean shutdown of
either side, and federation resuming when Prosody comes back."""

from __future__ import annotations

import asyncio

from interop_c2s import local
from interop_flow import bob_to_node, error_of, is_message, node_to_bob
from interop_node import A, B, node_config
from interop_peer import completed_sessions


async def _linked(
    prosody, s2sfast_node, c2s, ports, tls_certfile, *, extra_cfg="", keepalive=60.0, node_kw=None
):
    (port,) = ports(1)
    peer = prosody(tls="optional", remotes={A: port}, extra_cfg=extra_cfg)
    node = await s2sfast_node(
        node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=peer.s2s_port),
        keepalive=keepalive,
        **(node_kw or {}),
    )
    bob = await c2s(peer, "bob")
    await bob_to_node(bob, node, "l1", "link in")
    await node_to_bob(node, bob, "l2", "link out")
    return peer, node, bob


async def test_idle_streams_survive_whitespace_keepalives(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    """Prosody (read_timeout = 1 s) and s2sfast (keepalive = 0.5 s) both send single spaces on
    their idle streams; the streams stay up and keep carrying stanzas."""
    peer, node, bob = await _linked(
        prosody,
        s2sfast_node,
        c2s,
        ports,
        tls_certfile,
        extra_cfg="network_settings = { read_timeout = 1 }",
        keepalive=0.5,
    )
    before = {(c.direction, c.stream_id) for c in node.connections()}
    await asyncio.sleep(3)
    await bob_to_node(bob, node, "l3", "still here")
    await node_to_bob(node, bob, "l4", "me too")
    assert {(c.direction, c.stream_id) for c in node.connections()} == before
    log = peer.log()
    assert len(completed_sessions(log, "in")) == 1 and len(completed_sessions(log, "out")) == 1
    assert "closed" not in "".join(
        t for s in completed_sessions(log, "in") + completed_sessions(log, "out") for t in s.lines
    )


async def test_node_stop_closes_cleanly_and_prosody_bounces_afterwards(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    peer, node, bob = await _linked(prosody, s2sfast_node, c2s, ports, tls_certfile)
    await node.stop()
    assert node.connections() == []
    await asyncio.sleep(0.3)
    log = peer.log()
    # Prosody saw both streams end with a clean </stream:stream>, no stream error
    (s_in,) = completed_sessions(log, "in")
    (s_out,) = completed_sessions(log, "out")
    assert f"Incoming s2s stream {A}->{B} closed: stream closed" in s_in.lines
    assert f"Outgoing s2s stream {B}->{A} closed: stream closed" in s_out.lines
    assert "Session closed by remote with error" not in log
    # a.test is gone: bob's next stanza comes back as an error
    bob.send(f"<message to='carol@{A}/x' id='gone' type='chat'><body>?</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "gone"))
    assert back.get("type") == "error"
    assert error_of(back) == (
        "cancel",
        "remote-server-not-found",
        "Server-to-server connection failed: connection refused",
    )


async def test_prosody_restart_then_federation_resumes(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    peer, node, bob = await _linked(prosody, s2sfast_node, c2s, ports, tls_certfile)
    await bob.close()
    peer.stop()  # SIGTERM: Prosody closes its streams with <system-shutdown/>
    for _ in range(150):
        if not node.connections():
            break
        await asyncio.sleep(0.1)
    assert node.connections() == []
    peer.start()  # same ports, same certificate and users
    bob = await c2s(peer, "bob")
    await node_to_bob(node, bob, "r1", "after the restart")
    await bob_to_node(bob, node, "r2", "and back")
    assert {c.direction for c in node.connections() if (A, B) in c.pairs} == {"in", "out"}


async def test_node_restart_on_the_same_port_then_prosody_reconnects(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    """s2sfast goes away cleanly and comes back (a new secret: keys of the old run are void);
    Prosody opens fresh streams on the next stanza, in both directions."""
    (port,) = ports(1)
    peer = prosody(tls="optional", remotes={A: port})
    config = node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=peer.s2s_port)
    node = await s2sfast_node(config)
    bob = await c2s(peer, "bob")
    await bob_to_node(bob, node, "n1", "first run")
    await node_to_bob(node, bob, "n2", "first run")
    await node.stop()
    again = await s2sfast_node(
        node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=peer.s2s_port)
    )
    await bob_to_node(bob, again, "n3", "second run")
    await node_to_bob(again, bob, "n4", "second run")
    log = peer.log()
    assert len(completed_sessions(log, "in")) == 2 and len(completed_sessions(log, "out")) == 2


async def test_prosodys_keepalives_hold_off_s2sfasts_idle_timeout(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    """Prosody's single-space keepalives (every 1 s) are traffic: s2sfast's idle timeout (3 s)
    must not close its streams while they come (watched for 7 s)."""
    peer, node, bob = await _linked(
        prosody,
        s2sfast_node,
        c2s,
        ports,
        tls_certfile,
        extra_cfg="network_settings = { read_timeout = 1 }",
        node_kw={"idle_timeout": 3.0},
    )
    before = {(c.direction, c.stream_id) for c in node.connections()}
    await asyncio.sleep(7)
    assert {(c.direction, c.stream_id) for c in node.connections()} == before
    assert "connection-timeout" not in peer.log()


async def test_idle_streams_closed_by_s2sfast_reopen_without_losing_stanzas(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    """Without keepalives from Prosody, s2sfast closes the idle streams after idle_timeout with
    <connection-timeout/>; the next stanzas open fresh streams, both ways, and none is lost."""
    peer, node, bob = await _linked(
        prosody, s2sfast_node, c2s, ports, tls_certfile, node_kw={"idle_timeout": 1.0}
    )
    for _ in range(150):
        if not node.connections():
            break
        await asyncio.sleep(0.1)
    assert node.connections() == []
    log = peer.log()
    assert "Session closed by remote with error: connection-timeout" in log
    await bob_to_node(bob, node, "i1", "after the idle close")
    await node_to_bob(node, bob, "i2", "after the idle close")
    bounces = [e for e in bob.received if local(e.tag) == "message" and e.get("type") == "error"]
    assert not bounces and not [s for s in node.inbox.seen if s.type == "error"]


async def test_idle_timeout_spares_our_busy_outgoing_stream_to_prosody(
    prosody, s2sfast_node, c2s, ports, tls_certfile
):
    """Prosody never writes on a stream it only receives on (it reads all the time, so its
    read_timeout never fires and it sends no keepalive there). Our outgoing stream to it is
    busy, not idle: s2sfast's idle_timeout must not tear it down."""
    idle = 3.0
    peer, node, bob = await _linked(
        prosody, s2sfast_node, c2s, ports, tls_certfile, node_kw={"idle_timeout": idle}
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
    # Prosody's side of it (its s2sin) was never told connection-timeout; its own outgoing
    # stream to us carried nothing meanwhile, so s2sfast may close that one as idle
    (prosody_in,) = completed_sessions(peer.log(), "in")
    assert not [t for t in prosody_in.lines if "connection-timeout" in t]
