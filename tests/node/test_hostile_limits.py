"""Connection and stream limits against a running node (issue 8, item 1): max_connections per
listener, a per-address cap on negotiating connections, an idle timeout for authenticated
streams (keepalives count), and a bound on writes to a peer that does not read.

The defaults and their rationale are in s2sfast.limits.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hostile_helpers import (
    VICTIM,
    FakeServer,
    HostilePeer,
    MemoryProbe,
    MiB,
    authenticate_as,
    header,
    solo_node,
    until,
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
            node_options={"idle_timeout": 2.0},
        ) as node:
            silent = await HostilePeer.connect(node.port)
            await authenticate_as(silent, domain="evil.test", victim=VICTIM)
            chatty = await HostilePeer.connect(node.port)
            await authenticate_as(chatty, domain="evil.test", victim=VICTIM)
            for _ in range(25):  # 5 s of whitespace keepalives, 10 per idle_timeout
                chatty.send(b" ")
                await asyncio.sleep(0.2)
            out = await silent.outcome()
            assert out.error == "connection-timeout", out.error
            assert await chatty.silent_for(0.1), "a stream with keepalives was closed as idle"
            await chatty.close()
    finally:
        await fake.stop()


async def test_writes_to_a_peer_that_does_not_read_are_bounded(dns_server):
    """deaf.test accepts our dialback and then never reads: 32 MiB of stanzas for it must not
    pile up in memory (senders wait: backpressure), and once the peer has not read for
    write_stall seconds its stream fails and what waits bounces."""
    fake = FakeServer("deaf", "deaf.test")
    await fake.start()
    try:
        bounced: list[str] = []

        def count_bounces(stanza) -> None:  # keeps ids only: bounces carry the 4 KiB payload
            if stanza.type == "error":
                bounced.append(stanza.id)

        async with solo_node(
            dns_server,
            [VICTIM],
            addresses={"deaf.test": fake.port},
            handler=count_bounces,
            node_options={"write_stall": 1.0},
        ) as node:
            # first the stream is up: later stanzas go straight to it, not to a queue
            await node.send(b"<message from='a@v.test' to='b@deaf.test' id='first'/>")

            def established() -> bool:
                return any(c.direction == "out" and c.pairs for c in node.connections())

            assert await until(established), node.connections()
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
                # the stall (write_stall = 1 s) fails the stream and what waits bounces; polled
                # with a hang guard, so a loaded machine's late timer cannot fail the test
                await until(lambda: bool(bounced), timeout=20.0)
            mem.assert_below(16 * MiB, "32 MiB of stanzas for a peer that does not read")
            assert bounced, "nothing bounced although the peer never read"
    finally:
        await fake.stop()


async def test_pending_dialback_claims_per_stream_boundary(dns_server):
    """MAX_PENDING_RESULTS_PER_STREAM claims may wait on one stream; one more is refused."""
    cap = limits.MAX_PENDING_RESULTS_PER_STREAM
    mute = FakeServer("mute", "mute.test")
    await mute.start()
    domains = [f"d{i}.mute.test" for i in range(cap + 1)]
    try:
        async with solo_node(
            dns_server,
            [VICTIM],
            addresses={d: mute.port for d in domains},
            state_timeout_ms=20_000,
        ) as node:
            peer = await HostilePeer.connect(node.port)
            await peer.open(domains[0], VICTIM)
            for d in domains[:cap]:
                peer.send(f"<db:result from='{d}' to='{VICTIM}'>{'ab' * 32}</db:result>")
            assert await peer.silent_for(0.5), "the node refused claims within the bound"
            peer.send(f"<db:result from='{domains[cap]}' to='{VICTIM}'>{'ab' * 32}</db:result>")
            out = await peer.outcome(timeout=10)
            assert out.error == "policy-violation", out.error
            assert str(cap) in (out.text or "")
    finally:
        await mute.stop()


async def test_piggybacked_claims_within_the_bound_all_succeed(dns_server):
    """An honest peer piggybacking MAX_PENDING_RESULTS_PER_STREAM domains on one stream,
    all at once, gets every one authorised."""
    cap = limits.MAX_PENDING_RESULTS_PER_STREAM
    auth = FakeServer("authoritative", "many.test")
    await auth.start()
    domains = [f"d{i}.many.test" for i in range(cap)]
    try:
        async with solo_node(
            dns_server, [VICTIM], addresses={d: auth.port for d in domains}
        ) as node:
            peer = await HostilePeer.connect(node.port)
            await peer.open(domains[0], VICTIM)
            for d in domains:
                peer.send(f"<db:result from='{d}' to='{VICTIM}'>{'ab' * 32}</db:result>")
            verdicts = {}
            while len(verdicts) < cap:
                st = await peer.next_stanza(timeout=10)
                if st.name == "result":
                    verdicts[st.to] = st.type
            assert verdicts == {d: "valid" for d in domains}
            for i, d in enumerate(domains):
                peer.send(f"<message from='u@{d}' to='bob@{VICTIM}' id='pb{i}'/>")
            for _ in range(cap):
                await node.inbox.get(timeout=10)
            assert sorted(s.id for s in node.inbox.seen) == sorted(f"pb{i}" for i in range(cap))
            await peer.close()
    finally:
        await auth.stop()


@pytest.mark.slow
async def test_pending_dialback_verifications_are_bounded_node_wide(dns_server):
    """Authenticated streams do not count as negotiating, so an attacker with a real domain
    can open many and park MAX_PENDING_RESULTS_PER_STREAM claims on each: beyond
    MAX_PENDING_VERIFICATIONS the node answers type='error' at once instead of opening more
    verify connections."""
    per = limits.MAX_PENDING_RESULTS_PER_STREAM
    streams = limits.MAX_PENDING_VERIFICATIONS // per + 2
    auth = FakeServer("authoritative", "evil.test")
    mute = FakeServer("mute", "mute.test")
    await auth.start()
    await mute.start()
    domains = [[f"d{s}-{i}.mute.test" for i in range(per)] for s in range(streams)]
    addresses = {d: mute.port for ds in domains for d in ds}
    addresses["evil.test"] = auth.port
    try:
        async with solo_node(
            dns_server,
            [VICTIM],
            addresses=addresses,
            state_timeout_ms=60_000,
            connect_timeout_ms=60_000,
        ) as node:
            async with MemoryProbe() as mem:
                peers = []
                for _ in range(streams):  # authenticated first: they then count as established
                    peer = await HostilePeer.connect(node.port)
                    await authenticate_as(peer, domain="evil.test", victim=VICTIM)
                    peers.append(peer)
                for peer, names in zip(peers, domains, strict=True):
                    for d in names:
                        peer.send(f"<db:result from='{d}' to='{VICTIM}'>{'ab' * 32}</db:result>")
                    await peer.drain()
                # claims beyond the bound (whichever streams the node read last) are answered
                # type='error' at once; the others wait on mute.test's silence (generous
                # connect and state time-outs: under load, nothing else may answer them)
                over = streams * per - limits.MAX_PENDING_VERIFICATIONS
                errors = links = 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while errors < over and loop.time() < deadline:
                    links = max(links, len(node.router.outbound))
                    for peer in peers:
                        with contextlib.suppress(TimeoutError):
                            while True:
                                st = await peer.next_stanza(timeout=0.01)
                                errors += st.name == "result" and st.type == "error"
                links = max(links, len(node.router.outbound))
            assert errors >= over, f"{errors} claims refused, {over} expected"
            # the bound itself: never more verify links than MAX_PENDING_VERIFICATIONS (+ the
            # link to evil.test that authenticated the streams)
            assert links <= limits.MAX_PENDING_VERIFICATIONS + 1, links
            mem.assert_below(64 * MiB, "node-wide pending verifications")
            for peer in peers:
                peer.abort()
    finally:
        await auth.stop()
        await mute.stop()


async def test_a_burst_to_an_honest_reading_peer_arrives_whole(federation):
    """The write bound must not hurt honest peers: 20,000 stanzas (~10 MB) sent as fast as
    the API allows reach the other node, in order, none lost, nothing bounced."""
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    await a.send(b"<message from='u@a.test' to='v@b.test' id='warm'/>")
    assert (await b.inbox.get()).id == "warm"
    pad = "q" * 400
    n = 20_000
    for i in range(n):
        body = f"<body>{pad}</body>"
        await a.send(f"<message from='u@a.test' to='v@b.test' id='b{i}'>{body}</message>".encode())
    for _ in range(n):
        await b.inbox.get(timeout=20)
    ids = [s.id for s in b.inbox.seen if s.id and s.id.startswith("b")]
    assert ids == [f"b{i}" for i in range(n)]
    assert not [s for s in a.inbox.seen if s.type == "error"], "stanzas bounced"


async def test_idle_timeout_spares_a_busy_outbound_stream_to_a_silent_peer(dns_server):
    """A receiving server owes us no bytes on our outbound stream (ejabberd sends none at
    all, see tests/data/captures): while we keep writing, the stream is not idle."""
    quiet = FakeServer("receiver", "quiet.test")
    await quiet.start()
    try:
        async with solo_node(
            dns_server,
            [VICTIM],
            addresses={"quiet.test": quiet.port},
            node_options={"idle_timeout": 2.0},
        ) as node:
            for i in range(25):  # 5 s of traffic, 10 stanzas per idle_timeout
                await node.send(f"<message from='a@v.test' to='b@quiet.test' id='q{i}'/>".encode())
                await asyncio.sleep(0.2)
            await until(lambda: b"id='q24'" in quiet.everything())
            seen = quiet.everything()
            assert all(f"id='q{i}'".encode() in seen for i in range(25))
            assert b"connection-timeout" not in seen, "a busy outbound stream was closed as idle"
            assert quiet.connections == 1
    finally:
        await quiet.stop()
