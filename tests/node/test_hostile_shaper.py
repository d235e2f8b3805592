"""The inbound shaper's token bucket (s2sfast.net.shaper) and the connection limiter
(s2sfast.limits): pure arithmetic, driven with explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2sfast.limits import (
    MAX_NEGOTIATING_PER_ADDRESS,
    PRE_AUTH_MAX_STANZA,
    ConnectionLimiter,
    pre_auth_limit,
)
from s2sfast.net.shaper import MIN_PAUSE, TokenBucket


def test_burst_passes_then_the_debt_sets_the_pause():
    bucket = TokenBucket(1000, now=0.0)
    assert bucket.consume(1000, 0.0) == 0.0  # one second's worth at once
    assert bucket.consume(500, 0.0) == pytest.approx(0.5)  # 500 bytes of debt at 1000 B/s
    # after the pause the debt is repaid and reading resumes
    assert bucket.available(0.5) == pytest.approx(0.0)
    assert bucket.consume(100, 0.6) == 0.0


def test_idle_time_refills_only_up_to_the_burst():
    bucket = TokenBucket(100, burst=300, now=0.0)
    bucket.consume(300, 0.0)
    assert bucket.available(100.0) == pytest.approx(300)
    assert bucket.consume(400, 100.0) == pytest.approx(1.0)


def test_invalid_rates_are_refused():
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(10, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(10).consume(-1, 0.0)


@given(
    rate=st.integers(100, 10**6),
    reads=st.lists(st.integers(1, 256 * 1024), min_size=1, max_size=60),
)
def test_a_reader_obeying_the_pauses_never_exceeds_rate_plus_burst(rate, reads):
    """Simulate a stream that reads only when told: bytes accepted by time t are at most
    burst + rate * t + one read (the read that went into debt)."""
    bucket = TokenBucket(rate, now=0.0)
    slack = MIN_PAUSE * rate + 1e-6  # pauses below MIN_PAUSE are skipped
    now = 0.0
    total = 0
    for n in reads:
        total += n
        assert total <= bucket.burst + rate * now + n + slack
        now += bucket.consume(n, now)
    # and the time spent is the lower bound the e2e shaper test relies on
    assert now >= (total - bucket.burst - max(reads) - slack) / rate


def test_pre_auth_limit_is_the_smaller_limit():
    assert pre_auth_limit(None) == PRE_AUTH_MAX_STANZA
    assert pre_auth_limit(10 * PRE_AUTH_MAX_STANZA) == PRE_AUTH_MAX_STANZA
    assert pre_auth_limit(1000) == 1000


def test_connection_limiter_caps_total_and_negotiating_per_address():
    limiter = ConnectionLimiter(max_connections=5, per_address=2)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    refusal = limiter.admit("192.0.2.1")
    assert refusal is not None and refusal.condition == "policy-violation"
    assert "192.0.2.1" in refusal.text
    # authenticating frees the address's negotiating slot, not the listener's
    limiter.authenticated("192.0.2.1")
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.2") is None
    assert limiter.admit("192.0.2.3") is None  # total 5
    refusal = limiter.admit("192.0.2.4")
    assert refusal is not None and refusal.condition == "resource-constraint"
    limiter.closed("192.0.2.3", was_authenticated=False)
    assert limiter.negotiating("192.0.2.3") == 0
    assert limiter.admit("192.0.2.4") is None


def test_connection_limiter_defaults():
    limiter = ConnectionLimiter(max_connections=None)
    for _ in range(MAX_NEGOTIATING_PER_ADDRESS):
        assert limiter.admit("198.51.100.7") is None
    assert limiter.admit("198.51.100.7") is not None
    assert limiter.admit("198.51.100.8") is None


# --- end to end: a real node with [[listen.s2s]] shaper ----------------------------------------

SHAPED_RATE = 256 * 1024  # bytes per second


async def test_shaper_caps_a_fast_sender_without_losing_anything(dns_server):
    """An authenticated peer writes 1 MiB of stanzas as fast as it can into a listener shaped
    to 256 KiB/s: every stanza arrives, in order, and it takes at least
    (bytes - burst - one read) / rate seconds (a lower bound on behaviour, not a speed test)."""
    import time

    from hostile_helpers import FakeServer, HostilePeer, authenticate_as, solo_node

    from s2sfast.net.shaper import DEFAULT_BURST_SECONDS

    fake = FakeServer("authoritative")
    await fake.start()
    listen = {"shaper": "s2s_shaper", "shaper_name": "slow", "max_rate": SHAPED_RATE}
    try:
        async with solo_node(
            dns_server, ["v.test"], listen=listen, addresses={"evil.test": fake.port}
        ) as node:
            peer = await HostilePeer.connect(node.port)
            await authenticate_as(peer, domain="evil.test", victim="v.test")
            pad = "y" * 4000
            stanzas = [
                f"<message from='m@evil.test' to='bob@v.test' id='s{i}'><body>{pad}</body>"
                "</message>"
                for i in range(256)
            ]
            data = "".join(stanzas).encode()
            start = time.monotonic()
            peer.send(data)
            await peer.drain()
            while len(node.inbox.seen) < len(stanzas):
                await node.inbox.get(timeout=30)
            elapsed = time.monotonic() - start
            assert [s.id for s in node.inbox.seen] == [f"s{i}" for i in range(256)]
            assert b"".join(s.raw for s in node.inbox.seen) == data  # nothing dropped/altered
            burst = SHAPED_RATE * DEFAULT_BURST_SECONDS
            largest_read = 256 * 1024  # asyncio's selector transport reads at most this much
            bound = (len(data) - burst - largest_read) / SHAPED_RATE
            assert elapsed >= bound, f"{len(data)} bytes in {elapsed:.2f} s: not shaped"
            await peer.close()
    finally:
        await fake.stop()
