"""Inbound traffic shaping for ``[[listen.s2s]] shaper`` (sans-IO).

MongooseIM's shaper limits the bytes per second a connection may send us, by not reading
from the socket for a while: backpressure through TCP, never dropped data. :class:`TokenBucket`
is the arithmetic: the stream reports bytes as they arrive with the current time, and gets back
how long to stop reading (``transport.pause_reading()``, then ``resume_reading()`` from
``loop.call_later``). It reads no clock and touches no transport.

Over any interval the bytes accepted are at most ``burst + rate * elapsed`` plus the one read
that pushed the bucket into debt; a sender faster than ``rate`` therefore needs at least
``(total - burst - largest_read) / rate`` seconds.
"""

from __future__ import annotations

__all__ = ["TokenBucket", "DEFAULT_BURST_SECONDS", "MIN_PAUSE"]

#: the bucket holds this many seconds of max_rate: a peer idle for a second may then send one
#: second's worth at full speed (MongooseIM's shaper likewise averages over about a second)
DEFAULT_BURST_SECONDS = 1.0

#: pauses shorter than this are not worth a timer (and keep the loop from spinning)
MIN_PAUSE = 0.001


class TokenBucket:
    """A token bucket in bytes: *rate* tokens per second, holding at most *burst*.

    Args:
        rate: bytes per second (``ListenS2S.max_rate``), > 0.
        burst: bucket size in bytes (default: one second of *rate*).
        now: the time the bucket starts full (any monotonic clock, seconds).

    Raises:
        ValueError: a rate or burst that is not positive.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, *, burst: float | None = None, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"shaper rate must be positive bytes per second, got {rate!r}")
        if burst is None:
            burst = rate * DEFAULT_BURST_SECONDS
        if burst <= 0:
            raise ValueError(f"shaper burst must be positive bytes, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def consume(self, nbytes: int, now: float) -> float:
        """Account for *nbytes* received at *now*; seconds to pause reading (0.0: keep going).

        The data is never refused: it has arrived and is processed; only the next read waits
        until the bucket is out of debt.
        """
        if nbytes < 0:
            raise ValueError("nbytes must not be negative")
        self._refill(now)
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        pause = -self._tokens / self.rate
        return pause if pause >= MIN_PAUSE else 0.0

    def available(self, now: float) -> float:
        """Tokens (bytes) available at *now*; negative while in debt."""
        self._refill(now)
        return self._tokens
