"""Transient outbound failures: stanzas wait (bounded by the pending deadline) while the stream
is retried with back-off, and reach a peer that comes up in the meantime."""

from __future__ import annotations

import asyncio

from core_helpers import Inbox, free_port, message, node_config

from s2sfast import Node
from s2sfast.net.dns import Resolver


async def test_peer_that_comes_up_mid_backoff_gets_the_queued_stanzas(federation, dns_server):
    b_port = free_port()  # nobody listens there yet
    nodes = await federation(
        {"A": {"hosts": ["a.test"], "addresses": {"b.test": b_port}, "retry_initial": 0.1}}
    )
    a = nodes["A"]
    await a.send(message("u@a.test", "v@b.test", "early", id="e1"))
    await asyncio.sleep(0.3)  # at least one refused attempt, now backing off
    assert await a.inbox.nothing(0.05)  # nothing bounced: still queued
    b = Node(
        node_config(["b.test"], port=b_port, addresses={"a.test": a.port}),
        resolver=Resolver([dns_server.nameserver], timeout=1, retries=1),
    )
    b.inbox = Inbox()
    b.on_stanza(b.inbox)
    await b.start()
    try:
        assert (await b.inbox.get()).id == "e1"
    finally:
        await b.stop(timeout=3)


async def test_closed_port_bounces_at_the_pending_deadline(federation):
    nodes = await federation(
        {
            "A": {
                "hosts": ["a.test"],
                "addresses": {"b.test": free_port()},
                "retry_initial": 0.05,
                "pending_deadline": 0.6,
            }
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "lost", id="l1"))
    assert await nodes["A"].inbox.nothing(0.3)  # still queued while it retries
    bounce = await nodes["A"].inbox.get(timeout=5)
    assert bounce.id == "l1" and bounce.type == "error"
    assert b"remote-server-not-found" in bounce.raw and b"could not connect" in bounce.raw


async def test_nxdomain_bounces_at_once(federation):
    nodes = await federation({"A": {"hosts": ["a.test"], "pending_deadline": 30}})
    await nodes["A"].send(message("u@a.test", "v@unknown.test", "x", id="n1"))
    bounce = await nodes["A"].inbox.get(timeout=5)
    assert bounce.id == "n1" and b"remote-server-not-found" in bounce.raw
