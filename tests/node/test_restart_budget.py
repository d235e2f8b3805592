"""Queue, don't bounce, across a peer restart: the pending budget is in bytes (node-wide, with a
fair share per domain), so thousands of stanzas sent while the peer is down wait for it."""

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
    for i in range(n):
        await a.send(message("u@a.test", "v@b.test", "x" * 120, id=f"r{i}"))
    await asyncio.sleep(0.5)  # a few refused reconnects

    again = Node(b.config, resolver=Resolver([dns_server.nameserver], timeout=1, retries=1))
    inbox = Inbox()
    again.on_stanza(inbox)
    await again.start()
    try:
        ids = [(await inbox.get(30)).id for _ in range(n)]
        assert ids == [f"r{i}" for i in range(n)]
        assert not [s for s in a.inbox.seen if s.type == "error"], "something bounced"
    finally:
        await again.stop(timeout=3)
