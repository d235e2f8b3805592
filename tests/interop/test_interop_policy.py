"""``host_policy`` deny for Prosody's domain blocks federation both ways with the documented errors:
outgoing stanzas bounce with service-unavailable (cancel) before any connection is made; Prosody's
db:result is answered with a policy-violation error and the stream closes with a stream error,
so Prosody bounces its user's stanza."""

from __future__ import annotations

import pytest
from interop_flow import error_of, is_message, stanza_error
from interop_node import A, B, node_config
from interop_peer import completed_sessions


@pytest.mark.parametrize("how", ["host_policy", "default_policy"])
async def test_denied_prosody_domain_is_blocked_both_ways(prosody, s2sfast_node, c2s, ports, how):
    (port,) = ports(1)
    peer = prosody(tls="off", remotes={A: port})
    if how == "host_policy":
        policy = {"host_policy": {B: "deny", "elsewhere.test": "allow"}}
    else:
        policy = {"default_policy": "deny", "host_policy": {"elsewhere.test": "allow"}}
    node = await s2sfast_node(node_config(port, peer_port=peer.s2s_port, **policy))
    bob = await c2s(peer, "bob")

    # outgoing: bounced at once, no connection to Prosody at all
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

    # incoming: Prosody's db:result is refused with policy-violation; bob gets an error back
    bob.send(f"<message to='carol@{A}/x' id='p1' type='chat'><body>knock</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "p1"))
    assert (back.get("type"), back.get("from")) == ("error", f"carol@{A}/x")
    assert error_of(back) == (
        "wait",
        "remote-server-timeout",
        "Server-to-server connection failed: dialback authentication failed",
    )
    log = peer.log()
    # what Prosody saw: <db:result type='error'> (policy-violation inside), then the stream error
    assert any(
        "Received[s2sout_unauthed]: <result" in line and "type='error'" in line
        for line in log.splitlines()
    )
    assert (
        "Session closed by remote with error: policy-violation "
        f"({B} is not allowed to federate with {A} (policy))"
    ) in log
    assert await node.inbox.nothing(lambda s: s.type != "error", 0.3)
    assert not completed_sessions(log, "in") and not completed_sessions(log, "out")
    assert "Incoming s2s received" not in log  # s2sfast never opened a stream to Prosody
    assert all(not c.pairs for c in node.connections())
