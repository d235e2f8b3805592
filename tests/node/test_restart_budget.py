"""Queue, don't bounce, across a peer restart: the pending budget is in bytes (node-wide, with a
fair share per domain); past a hold mark the sender waits; every stanza sent while the peer
is down is delivered once it is back, none bounced."""

from __future__ import annotations

import asyncio

from core_helpers import Inbox, message

from s2sfast.net.dns import Resolver
from s2sfast.node import Node


async def test_stanzas_sent_while_the_peer_restarts_are_delivered_not_bounced(
    federation, dns_server
):
    nodes = await federation(
        {
            "A": {"hosts": ["a.test"], "max_queue": 250_000, "retry_initial": 0.2},
            "B": {"hosts": ["b.test"]},
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "warm", id="warm"))
    assert (await b.inbox.get()).id == "warm"
    await b.stop(timeout=3)

    # 10,000 stanzas (~2 MB) while b.test is down: the old per-domain bounds (1,000 stanzas,
    # 1 MiB) bounced most of them within milliseconds
    n = 10_000
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for i in range(n):
            await a.send(message("u@a.test", "v@b.test", "x" * 120, id=f"r{i}"))
            sent += 1

    sending = asyncio.ensure_future(sender())
    await asyncio.sleep(0.5)  # a few refused reconnects
    # past PENDING_HOLD_BYTES (1 MiB) the sender waits instead of queueing more
    assert 0 < sent < n and not sending.done()
    held = sent

    again = Node(b.config, resolver=Resolver([dns_server.nameserver], timeout=1, retries=1))
    inbox = Inbox()
    again.on_stanza(inbox)
    await again.start()
    try:
        ids = [(await inbox.get(30)).id for _ in range(n)]
        await asyncio.wait_for(sending, 30)
        assert ids == [f"r{i}" for i in range(n)]
        assert not [s for s in a.inbox.seen if s.type == "error"], "something bounced"
        assert held > 1000  # more than the old per-domain bound queued without a bounce
    finally:
        sending.cancel()
        await again.stop(timeout=3)
