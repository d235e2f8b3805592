"""s2sfast.net.backoff: delays (seeded rng), the pending queue (fake clock), and a peer that comes
back mid back-off (real sockets on loopback, delays scaled down)."""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass

import pytest
from dnsserver import closed_port

from s2sfast.net.backoff import (
    DEFAULT_PENDING_DEADLINE,
    DEFAULT_PENDING_MAX_BYTES,
    DEFAULT_PENDING_MAX_STANZAS,
    Backoff,
    PendingQueue,
    QueueFull,
)
from s2sfast.net.connect import ConnectError, connect_first
from s2sfast.net.dns import Candidate

# -- Backoff --------------------------------------------------------------------------------


def test_without_jitter_delays_double_from_initial_to_the_cap():
    b = Backoff(max_delay=300, jitter=0)
    assert [b.next_delay() for _ in range(12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300
    ]  # fmt: skip
    assert b.failures == 12


def test_jittered_delays_stay_within_their_doubling_band_and_under_the_cap():
    b = Backoff(max_delay=300, rng=random.Random(1234))
    bases = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]
    delays = [b.next_delay() for _ in bases]
    for base, d in zip(bases, delays, strict=True):
        assert base / 2 <= d <= base
    assert max(delays) <= 300
    # seeded: reproducible, and actually random (not every delay at the band's top)
    again = Backoff(max_delay=300, rng=random.Random(1234))
    assert [again.next_delay() for _ in bases] == delays
    assert len({round(d / base, 6) for d, base in zip(delays, bases, strict=True)}) > 5


def test_restarted_cluster_nodes_do_not_retry_in_lock_step():
    nodes = [Backoff(max_delay=300, rng=random.Random(seed)) for seed in range(20)]
    first = [n.next_delay() for n in nodes]
    assert len({round(d, 3) for d in first}) == 20
    assert max(first) - min(first) > 0.25  # spread over the (0.5 s, 1 s] band
    for n in nodes:
        for _ in range(20):
            n.next_delay()
    at_cap = [n.next_delay() for n in nodes]
    assert all(150 <= d <= 300 for d in at_cap)
    assert max(at_cap) - min(at_cap) > 60


def test_reset_after_success_starts_over():
    b = Backoff(max_delay=60, initial=2, jitter=0.25, rng=random.Random(3))
    for _ in range(5):
        b.next_delay()
    assert b.base_delay() == 60
    b.reset()
    assert b.failures == 0
    assert 1.5 <= b.next_delay() <= 2


def test_cap_below_initial_and_very_long_outages():
    b = Backoff(max_delay=0.5, initial=1, jitter=0)
    assert [b.next_delay() for _ in range(3)] == [0.5, 0.5, 0.5]
    b = Backoff(max_delay=300, jitter=0)
    for _ in range(5000):
        assert b.next_delay() <= 300


@pytest.mark.parametrize(
    "kwargs", [dict(max_delay=0), dict(max_delay=10, initial=0), dict(max_delay=10, jitter=1)]
)
def test_backoff_rejects_meaningless_settings(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# -- PendingQueue ---------------------------------------------------------------------------


@dataclass
class FakeStanza:
    raw: bytes


def test_defaults_are_the_documented_ones():
    q: PendingQueue[bytes] = PendingQueue()
    assert (q.max_stanzas, q.max_bytes, q.deadline) == (
        DEFAULT_PENDING_MAX_STANZAS,
        DEFAULT_PENDING_MAX_BYTES,
        DEFAULT_PENDING_DEADLINE,
    )
    assert DEFAULT_PENDING_DEADLINE == 60.0


def test_queue_refuses_past_its_stanza_bound():
    q: PendingQueue[bytes] = PendingQueue(max_stanzas=3)
    for i in range(3):
        q.push(b"<message id='%d'/>" % i, now=10.0)
    with pytest.raises(QueueFull, match="3 stanzas") as info:
        q.push(b"<message id='4'/>", now=10.0)
    assert info.value.condition == "resource-constraint"
    assert len(q) == 3
    assert q.drain() == [b"<message id='0'/>", b"<message id='1'/>", b"<message id='2'/>"]
    q.push(b"<message id='5'/>", now=11.0)  # room again after draining
    assert len(q) == 1


def test_queue_refuses_past_its_byte_bound():
    q: PendingQueue[FakeStanza] = PendingQueue(max_bytes=100)
    q.push(FakeStanza(b"x" * 60), now=0)
    with pytest.raises(QueueFull, match="bytes"):
        q.push(FakeStanza(b"y" * 41), now=0)
    q.push(FakeStanza(b"z" * 40), now=0)
    assert q.nbytes == 100 and len(q) == 2
    with pytest.raises(QueueFull):  # a single stanza bigger than the bound never fits
        PendingQueue(max_bytes=10).push(b"x" * 11, now=0)


def test_expiry_with_a_fake_clock():
    q: PendingQueue[str] = PendingQueue(deadline=60)
    q.push("a", now=100.0)
    q.push("b", now=130.0)
    q.push("c", now=130.0)
    q.push("d", now=150.0)
    assert q.next_expiry() == 160.0
    assert q.expired(now=159.9) == []
    assert q.expired(now=160.0) == ["a"]
    assert q.next_expiry() == 190.0
    assert q.expired(now=200.0) == ["b", "c"]
    assert q.expired(now=200.0, deadline=50) == ["d"]  # an explicit deadline wins
    assert len(q) == 0 and q.nbytes == 0 and q.next_expiry() is None


def test_expired_items_free_their_bytes():
    q: PendingQueue[bytes] = PendingQueue(max_bytes=10, deadline=5)
    q.push(b"12345678", now=0)
    with pytest.raises(QueueFull):
        q.push(b"abc", now=1)
    assert q.expired(now=5) == [b"12345678"]
    q.push(b"abc", now=5)
    assert q.nbytes == 3


def test_queue_clock_must_not_go_backwards():
    q: PendingQueue[bytes] = PendingQueue()
    q.push(b"a", now=5)
    with pytest.raises(ValueError, match="backwards"):
        q.push(b"b", now=4)


# -- a peer that comes back up mid back-off -------------------------------------------------


async def test_peer_back_up_mid_backoff_connects_and_resets_the_delay():
    """Attempts fail (refused), the peer starts listening, the next attempt succeeds and the
    back-off starts over. Delays are real values scaled down 100x (a fast clock)."""
    port = closed_port()
    candidate = Candidate(
        ip="127.0.0.1", port=port, family=socket.AF_INET, host="peer.test", source="fallback"
    )
    backoff = Backoff(max_delay=300, rng=random.Random(11))
    scale = 0.01
    delays: list[float] = []
    failures: list[ConnectError] = []
    server: asyncio.Server | None = None
    accepted = asyncio.Event()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()
        writer.close()

    while True:
        try:
            transport, _, used = await connect_first(
                [candidate], asyncio.Protocol, timeout_ms=1000, domain="peer.test"
            )
        except ConnectError as exc:
            failures.append(exc)
            delay = backoff.next_delay()
            delays.append(delay)
            if len(failures) == 4:  # the peer comes back while we wait for attempt 5
                server = await asyncio.start_server(on_client, "127.0.0.1", port)
            await asyncio.sleep(delay * scale)
            continue
        backoff.reset()
        break
    try:
        await asyncio.wait_for(accepted.wait(), 5)
        assert used == candidate
        assert [f.failures[0].reason for f in failures] == ["refused"] * 4
        assert all(f.condition == "remote-server-not-found" for f in failures)
        for base, d in zip([1, 2, 4, 8], delays, strict=True):
            assert base / 2 <= d <= base
        # after the success, the next failure waits about a second again, not 16 s
        assert backoff.failures == 0
        assert 0.5 <= backoff.next_delay() <= 1
    finally:
        transport.close()
        assert server is not None
        server.close()
        await server.wait_closed()


def test_pending_budget_is_node_wide_with_a_fair_share_per_domain() -> None:
    from s2sfast.net.backoff import PendingBudget

    budget = PendingBudget(total=1000, min_share=300)
    a: PendingQueue[bytes] = PendingQueue(budget=budget)
    b: PendingQueue[bytes] = PendingQueue(budget=budget)
    a.push(b"x" * 600, 0.0)  # alone, a domain may take more than its later share
    assert (budget.used, budget.waiting, budget.share()) == (600, 1, 1000)
    b.push(b"y" * 300, 0.0)  # two waiting: each may hold max(1000 / 2, 300) = 500
    assert budget.share() == 500
    with pytest.raises(QueueFull):
        b.push(b"y" * 201, 0.0)  # past b's share
    with pytest.raises(QueueFull):
        a.push(b"x", 0.0)  # a is over the new share: it waits for its stream, queues no more
    assert [len(i) for i in a.drain()] == [600]
    assert (budget.used, budget.waiting, budget.share()) == (300, 1, 1000)
    b.push(b"z" * 700, 1.0)  # the whole budget is b's again
    with pytest.raises(QueueFull, match="node's pending budget"):
        a.push(b"x", 1.0)
    assert [len(i) for i in b.expired(62.0)] == [300, 700]
    assert (budget.used, budget.waiting) == (0, 0)
    # a dead stream's unsent stanzas go back first, even past the bounds (they were accepted)
    a.push(b"n" * 10, 2.0)
    a.push_front([b"o" * 990, b"p" * 5], 3.0)
    assert [i[:1] for i in a.take(3)] == [b"o", b"p", b"n"]
    assert (budget.used, budget.waiting) == (0, 0)
