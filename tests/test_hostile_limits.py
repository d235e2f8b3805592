"""Connection and stream limits against a running node (issue 8, item 1): max_connections per
listener, a per-address cap on negotiating connections, an idle timeout for authenticated
streams (keepalives count), and a bound on writes to a peer that does not read.

The defaults and their rationale are in s2sfast.limits.
"""

from __future__ import annotations

import asyncio

from hostile_helpers import (
    VICTIM,
    FakeServer,
    HostilePeer,
    MemoryProbe,
    MiB,
    authenticate_as,
    header,
    solo_node,
)

from s2sfast import limits


async def test_max_connections_refuses_the_extra_connection(dns_server):
    async with solo_node(dns_server, [VICTIM], listen={"max_connections": 4}) as node:
        peers = []
        for _ in range(4):
            peer = await HostilePeer.connect(node.port)
            await peer.open("evil.test", VICTIM)
            peers.append(peer)
        extra = await HostilePeer.connect(node.port)
        extra.send(header("evil.test", VICTIM))
        out = await extra.outcome(timeout=5)
        assert out.error == "resource-constraint", out.error
        assert out.eof
        # a slot frees up when a connection goes
        await peers.pop().close()
        await asyncio.sleep(0.2)
        again = await HostilePeer.connect(node.port)
        _, features = await again.open("evil.test", VICTIM)
        assert features.name == "features"
        for p in [*peers, again]:
            await p.close()


async def test_negotiating_connections_per_address_are_capped(dns_server):
    cap = limits.MAX_NEGOTIATING_PER_ADDRESS
    async with solo_node(dns_server, [VICTIM], state_timeout_ms=20_000) as node:
        peers = []
        for _ in range(cap):
            peer = await HostilePeer.connect(node.port)
            await peer.open("evil.test", VICTIM)  # header + features, then silence
            peers.append(peer)
        extra = await HostilePeer.connect(node.port)
        extra.send(header("evil.test", VICTIM))
        out = await extra.outcome(timeout=5)
        assert out.error == "policy-violation", out.error
        assert "127.0.0.1" in (out.text or "")
        for p in peers:
            await p.close()


async def test_idle_authenticated_stream_is_closed_but_keepalives_count(dns_server):
    fake = FakeServer("authoritative")
    await fake.start()
    try:
        async with solo_node(
            dns_server,
            [VICTIM],
            addresses={"evil.test": fake.port},
            node_options={"idle_timeout": 1.0},
        ) as node:
            silent = await HostilePeer.connect(node.port)
            await authenticate_as(silent, domain="evil.test", victim=VICTIM)
            chatty = await HostilePeer.connect(node.port)
            await authenticate_as(chatty, domain="evil.test", victim=VICTIM)
            for _ in range(12):  # 3 s of whitespace keepalives, one every 0.25 s
                chatty.send(b" ")
                await asyncio.sleep(0.25)
            out = await silent.outcome(timeout=5)
            assert out.error == "connection-timeout", out.error
            assert await chatty.silent_for(0.1), "a stream with keepalives was closed as idle"
            await chatty.close()
    finally:
        await fake.stop()


async def test_writes_to_a_peer_that_does_not_read_are_bounded(dns_server):
    """deaf.test accepts our dialback and then never reads: 32 MiB of stanzas for it must not
    pile up in memory; they bounce instead."""
    fake = FakeServer("deaf", "deaf.test")
    await fake.start()
    try:
        bounced: list[str] = []

        def count_bounces(stanza) -> None:  # keeps ids only: bounces carry the 4 KiB payload
            if stanza.type == "error":
                bounced.append(stanza.id)

        async with solo_node(
            dns_server, [VICTIM], addresses={"deaf.test": fake.port}, handler=count_bounces
        ) as node:
            # first the stream is up: later stanzas go straight to it, not to a queue
            await node.send(b"<message from='a@v.test' to='b@deaf.test' id='first'/>")

            def established() -> bool:
                return any(c.direction == "out" and c.pairs for c in node.connections())

            for _ in range(200):
                if established():
                    break
                await asyncio.sleep(0.05)
            assert established(), node.connections()
            pad = "z" * 4000
            n = 8 * 1024
            async with MemoryProbe() as mem:
                for i in range(n):
                    await node.send(
                        f"<message from='a@v.test' to='b@deaf.test' id='w{i}'>"
                        f"<body>{pad}</body></message>".encode()
                    )
                    if i % 256 == 0:
                        await asyncio.sleep(0)
                await asyncio.sleep(1.0)
            mem.assert_below(16 * MiB, "32 MiB of stanzas for a peer that does not read")
            assert bounced, "nothing bounced although the peer never read"
    finally:
        await fake.stop()
