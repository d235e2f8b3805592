"""Interop smoke test through the public API: ``from s2sfast import Node`` with the suite's
generic config helper (tests/core_helpers.py), federating with a real Prosody 0.12 and ejabberd
23.01 (Debian packages, started by the harness in ``servers/``). The peer authenticates our stream
by dialing back to our listener with db:verify, and we verify its key the same way, plaintext
and with STARTTLS required on both sides.
"""

from __future__ import annotations

import pytest
from core_helpers import free_port, message, node_config
from interop_c2s import text_of
from interop_flow import eventually

from s2sfast import Node

BODY = "hello from s2sfast ✓ <&>"


@pytest.mark.parametrize("ours, theirs", [("false", "off"), ("required", "required")])
async def test_peer_federates_both_ways(peer, c2s, tls_certfile, ours, theirs):
    port = free_port()
    srv = peer(tls=theirs, remotes={"a.test": port})
    node = Node(
        node_config(
            ["a.test"],
            port=port,
            addresses={"b.test": srv.s2s_port},
            mode=ours,
            certfile=tls_certfile("a.test"),
        )
    )
    received = []
    node.on_stanza(received.append)
    await node.start()
    try:
        bob = await c2s(srv, "bob", "raw")
        escaped = BODY.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        await node.send(message("alice@a.test/x", "bob@b.test/raw", escaped, id="i1"))
        got = await bob.wait_for(lambda e: e.get("id") == "i1", 20)
        assert text_of(got, "body") == BODY and got.get("type") != "error"

        bob.send(
            "<message to='alice@a.test/x' type='chat' id='r1'><body>reply æøå</body></message>"
        )
        reply = await eventually(lambda: next((s for s in received if s.id == "r1"), None), 20)
        assert reply is not None, received
        assert reply.from_ == "bob@b.test/raw" and "reply æøå".encode() in reply.raw
        conns = node.connections()
        assert {c.direction for c in conns} == {"in", "out"}
        assert all(c.tls == (ours != "false") for c in conns)
        assert all(c.auth_method == "dialback" for c in conns if c.pairs)
    finally:
        await node.stop(timeout=3)
