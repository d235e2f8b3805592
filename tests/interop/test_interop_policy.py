"""``host_policy`` deny for the peer's domain blocks federation both ways with the documented
errors: outgoing stanzas bounce with service-unavailable (cancel) before any connection is made;
the peer's db:result is answered with a policy-violation error and the stream closes with a
stream error, so the peer (Prosody or ejabberd) bounces its user's stanza."""

from __future__ import annotations

import pytest
from interop_flow import error_of, eventually, is_message, stanza_error
from interop_node import A, B, node_config
from servers import LOOPBACK

POLICY_TEXT = f"{B} is not allowed to federate with {A} (policy)"
# the peer's bounce to its user, and what it logs about s2sfast's stream error
PEER = {
    "prosody": (
        (
            "wait",
            "remote-server-timeout",
            "Server-to-server connection failed: dialback authentication failed",
        ),
        f"Session closed by remote with error: policy-violation ({POLICY_TEXT})",
    ),
    "ejabberd": (
        (
            "wait",
            "remote-server-timeout",
            "Authentication failed: Peer responded with error: unrecognized error",
        ),
        # ejabberd gives up on the db:result error and logs no stream error: the element as
        # received (debug log) carries it
        f"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{POLICY_TEXT}</text></stream:error>",
    ),
}


@pytest.mark.parametrize("how", ["host_policy", "default_policy"])
async def test_denied_peer_domain_is_blocked_both_ways(peer, server, s2sfast_node, c2s, ports, how):
    (port,) = ports(1)
    srv = peer(tls="off", remotes={A: port}, log_level="debug")
    if how == "host_policy":
        policy = {"host_policy": {B: "deny", "elsewhere.test": "allow"}}
    else:
        policy = {"default_policy": "deny", "host_policy": {"elsewhere.test": "allow"}}
    node = await s2sfast_node(node_config(port, peer_port=srv.s2s_port, **policy))
    bob = await c2s(srv, "bob")

    # outgoing: bounced at once, no connection to the peer at all
    await node.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='s1' type='chat'>"
        f"<body>blocked</body></message>".encode()
    )
    bounce = await node.inbox.get(lambda s: s.id == "s1")
    assert (bounce.type, bounce.to, bounce.from_) == ("error", f"carol@{A}/x", bob.full_jid)
    assert stanza_error(bounce) == (
        "cancel",
        "service-unavailable",
        f"federation with {B} is denied",
    )

    # incoming: the peer's db:result is refused with policy-violation; bob gets an error back
    bob.send(f"<message to='carol@{A}/x' id='p1' type='chat'><body>knock</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "p1"))
    assert (back.get("type"), back.get("from")) == ("error", f"carol@{A}/x")
    bounce_to_bob, closed = PEER[server]
    assert error_of(back) == bounce_to_bob
    # what the peer saw: <db:result type='error'> (policy-violation inside), then the stream
    # error with s2sfast's reason
    log = await eventually(lambda: (text := srv.log()) and closed in text and text)
    assert closed in srv.log()
    received = "Received[s2sout_unauthed]: <result" if server == "prosody" else "Received XML"
    assert [
        line
        for line in log.splitlines()
        if received in line and "result" in line
        if "type='error'" in line
    ]
    assert await node.inbox.nothing(lambda s: s.type != "error", 0.3)
    assert not srv.completed_sessions("in") and not srv.completed_sessions("out")
    assert all(not c.pairs for c in node.connections())
    # s2sfast never opened a stream to the peer
    assert not [c for c in node.connections() if c.direction == "out"]
    if server == "prosody":
        assert "Incoming s2s received" not in log
    else:  # "(<0.476.0>) Accepted connection 127.0.0.1:34458 -> 127.0.0.1:<listener port>"
        accepted = [line for line in log.splitlines() if "Accepted connection" in line]
        assert accepted  # bob's c2s connection, at least: the check below can see lines
        assert not [line for line in accepted if line.endswith(f"-> {LOOPBACK}:{srv.s2s_port}")]
