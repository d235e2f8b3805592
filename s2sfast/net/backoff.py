"""Reconnect delays and the queue of stanzas waiting for a remote domain (sans-IO).

Neither class reads a clock or sleeps: the caller passes ``now`` (its event loop's monotonic
time) and schedules the delays it is given, so both are tested with plain numbers.

Why doubling with jitter: MongooseIM documents doubling retry delays but waits one random delay;
ejabberd bounces for a whole random window. Doubling from about a second reaches a peer quickly
after a blip and backs off from a long outage to ``[s2s] max_retry_delay``; random jitter keeps
the nodes of a restarted cluster (which all lost the peer at the same instant) from reconnecting
in lock-step.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from s2sfast.limits import PENDING_BUDGET, PENDING_MIN_SHARE

__all__ = [
    "DEFAULT_INITIAL_DELAY",
    "DEFAULT_JITTER",
    "DEFAULT_PENDING_DEADLINE",
    "DEFAULT_PENDING_MAX_STANZAS",
    "DEFAULT_PENDING_MAX_BYTES",
    "Backoff",
    "PendingBudget",
    "PendingQueue",
    "QueueFull",
]

#: seconds before the first retry: a dropped connection to a live peer comes back at once.
DEFAULT_INITIAL_DELAY = 1.0
#: each delay is drawn uniformly from (1 - jitter) * d to d, d the doubled delay ("equal
#: jitter"): the expected delay still doubles, and peers restarted together spread over half
#: of every interval instead of arriving in the same millisecond.
DEFAULT_JITTER = 0.5

#: seconds a stanza may wait for its domain's connection before it is bounced. One minute rides
#: out a peer restart (typically seconds) over about six reconnect attempts (1+2+4+8+16+32 s),
#: yet the sender learns within a minute that the stanza did not go out; the bounce is
#: remote-server-timeout / remote-server-not-found, so a client may resend later.
DEFAULT_PENDING_DEADLINE = 60.0
#: stanzas queued per remote domain. The bound that matters is in bytes (a node-wide
#: :class:`PendingBudget`, s2sfast.limits.PENDING_BUDGET, with a fair share per domain); the
#: count only caps the per-item overhead (~100 bytes each) of floods of tiny stanzas: 250,000
#: is ~10 s of a saturated link, so a peer restart of a few seconds at full rate queues whole.
DEFAULT_PENDING_MAX_STANZAS = 250_000
#: bytes queued per remote domain when no budget is shared: the node-wide budget.
DEFAULT_PENDING_MAX_BYTES = PENDING_BUDGET

T = TypeVar("T")


class Backoff:
    """Delays between reconnect attempts to one remote domain.

    ``next_delay()`` after each failed attempt returns about ``initial``, then twice that, and so
    on up to ``max_delay`` seconds, each randomised down by up to ``jitter``; ``reset()`` after a
    successful connection starts over.

    Args:
        max_delay: the cap in seconds (``[s2s] max_retry_delay``); no delay exceeds it.
        initial: the first delay in seconds before jitter.
        jitter: fraction in [0, 1): how far below the doubled value a delay may fall.
        rng: random source (seed it in tests).
    Raises:
        ValueError: a non-positive delay or a jitter outside [0, 1).
    """

    def __init__(
        self,
        max_delay: float,
        initial: float = DEFAULT_INITIAL_DELAY,
        jitter: float = DEFAULT_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if max_delay <= 0 or initial <= 0:
            raise ValueError(
                f"back-off delays must be positive (initial={initial}, max={max_delay})"
            )
        if not 0 <= jitter < 1:
            raise ValueError(f"back-off jitter must be in [0, 1), got {jitter}")
        self.max_delay = float(max_delay)
        self.initial = float(initial)
        self.jitter = float(jitter)
        self.rng = rng or random.Random()
        #: failed attempts since the last reset
        self.failures = 0

    def base_delay(self) -> float:
        """The next delay before jitter: ``initial * 2**failures``, capped at ``max_delay``."""
        if self.failures >= 64:  # 2**64 s is past any cap; avoid float overflow
            return self.max_delay
        return min(self.max_delay, self.initial * 2.0**self.failures)

    def next_delay(self) -> float:
        """Record one more failed attempt and return how long to wait before the next one."""
        base = self.base_delay()
        self.failures += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """A connection succeeded: the next failure waits about ``initial`` again."""
        self.failures = 0


class QueueFull(Exception):
    """A stanza could not be queued: the domain's queue is at its bound.

    The caller bounces it with ``condition`` (RFC 6120 section 8.3.3.18 ``resource-constraint``).
    """

    condition = "resource-constraint"


class PendingBudget:
    """Bytes queued for every remote domain of a node together, with a fair share per domain.

    A domain's queue may grow to ``max(total / domains waiting, min_share)`` bytes, and all of
    them together to ``total``: one dead domain cannot starve the others, and a domain alone
    may use the whole budget.

    Args:
        total: the node-wide bound in bytes.
        min_share: what one domain can always have (capped at *total*).
    """

    def __init__(self, total: int = PENDING_BUDGET, min_share: int = PENDING_MIN_SHARE) -> None:
        if total < 1 or min_share < 1:
            raise ValueError("the pending budget and its share must be positive")
        self.total = total
        self.min_share = min(min_share, total)
        #: bytes queued now, over every domain
        self.used = 0
        #: queues holding at least one item
        self.waiting = 0
        #: what one domain's queue may hold now (kept current: read for every stanza queued)
        self.current_share = total

    def share(self) -> int:
        """What one domain's queue may hold now."""
        return self.current_share

    def _waiting(self, delta: int) -> None:
        self.waiting += delta
        self.current_share = max(self.total // max(1, self.waiting), self.min_share)


def _default_size(item: object) -> int:
    raw = getattr(item, "raw", item)
    try:
        return len(raw)  # type: ignore[arg-type]
    except TypeError:
        return 0


#: an empty queue's items: every outbound link has a queue, empty once connected, and an empty
#: deque costs 624 bytes (10,000 streams per node); a deque is made by the first push
_NO_ITEMS: Any = ()


class PendingQueue(Generic[T]):
    """Stanzas waiting for one remote domain's connection, oldest first, bounded.

    Args:
        max_stanzas: how many stanzas it holds at most.
        max_bytes: how many bytes (per ``size``) it holds at most.
        deadline: seconds after which :meth:`expired` hands a stanza back for bouncing.
        size: how to measure an item (default: ``len(item.raw)`` or ``len(item)``).
        budget: the node-wide byte budget this queue shares (None: only *max_bytes*).
    """

    def __init__(
        self,
        *,
        max_stanzas: int = DEFAULT_PENDING_MAX_STANZAS,
        max_bytes: int = DEFAULT_PENDING_MAX_BYTES,
        deadline: float = DEFAULT_PENDING_DEADLINE,
        size: Callable[[T], int] = _default_size,
        budget: PendingBudget | None = None,
    ) -> None:
        if max_stanzas < 1 or max_bytes < 1 or deadline <= 0:
            raise ValueError("pending-queue bounds and deadline must be positive")
        self.max_stanzas = max_stanzas
        self.max_bytes = max_bytes
        self.deadline = float(deadline)
        self._size = size
        self._items: deque[tuple[float, int, T]] = _NO_ITEMS
        self._bytes = 0
        self.budget = budget

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes currently queued."""
        return self._bytes

    def push(self, item: T, now: float) -> None:
        """Queue *item*, stamped with *now* (the caller's monotonic clock).

        Raises:
            QueueFull: the queue is at ``max_stanzas`` or the item would pass ``max_bytes``.
            ValueError: *now* is earlier than the previous push (the clock must not go back).
        """
        if self._items and now < self._items[-1][0]:
            raise ValueError(f"time went backwards: {now} < {self._items[-1][0]}")
        size = self._size(item)
        if len(self._items) >= self.max_stanzas:
            raise QueueFull(f"pending queue full ({self.max_stanzas} stanzas)")
        if self._bytes + size > self.max_bytes:
            raise QueueFull(
                f"pending queue full ({self._bytes} + {size} bytes > {self.max_bytes} bytes)"
            )
        budget = self.budget
        if budget is not None:
            if budget.used + size > budget.total:
                raise QueueFull(f"the node's pending budget is full ({budget.total} bytes)")
            share = budget.current_share
            if self._bytes + size > share:
                raise QueueFull(f"this domain's share of the pending budget is full ({share} B)")
            if not self._items:
                budget._waiting(1)
            budget.used += size
        if self._items is _NO_ITEMS:
            self._items = deque()
        self._items.append((now, size, item))
        self._bytes += size

    def push_front(self, items: list[T], now: float) -> None:
        """Put *items* (oldest first) back at the head, unbounded: they were queued once already
        (a dead stream's unsent stanzas), stamped *now* so they get a full deadline again."""
        if not items:
            return
        if self._items:
            now = min(now, self._items[0][0])
        elif self.budget is not None:
            self.budget._waiting(1)
        if self._items is _NO_ITEMS:
            self._items = deque()
        for item in reversed(items):
            size = self._size(item)
            self._items.appendleft((now, size, item))
            self._bytes += size
            if self.budget is not None:
                self.budget.used += size

    def _forget(self, size: int) -> None:
        """Budget bookkeeping after items of *size* bytes left."""
        budget = self.budget
        if budget is not None:
            budget.used -= size
            if not self._items:
                budget._waiting(-1)

    def expired(self, now: float, deadline: float | None = None) -> list[T]:
        """Remove and return (oldest first) the items that have waited *deadline* seconds or more.

        Args:
            now: the caller's monotonic clock.
            deadline: defaults to the queue's ``deadline``.
        """
        limit = now - (self.deadline if deadline is None else deadline)
        out: list[T] = []
        gone = 0
        while self._items and self._items[0][0] <= limit:
            _, size, item = self._items.popleft()
            gone += size
            out.append(item)
        if out:
            if not self._items:
                self._items = _NO_ITEMS
            self._bytes -= gone
            self._forget(gone)
        return out

    def next_expiry(self, deadline: float | None = None) -> float | None:
        """When the oldest item expires (on the caller's clock), or None when empty."""
        if not self._items:
            return None
        return self._items[0][0] + (self.deadline if deadline is None else deadline)

    def take(self, count: int) -> list[T]:
        """Remove and return up to *count* items, oldest first (to send as a window opens)."""
        out: list[T] = []
        items = self._items
        gone = 0
        while items and len(out) < count:
            _, size, item = items.popleft()
            gone += size
            out.append(item)
        if out:
            if not items:
                self._items = _NO_ITEMS
            self._bytes -= gone
            self._forget(gone)
        return out

    def drain(self) -> list[T]:
        """Remove and return every item, oldest first (to send, or to bounce)."""
        out = [item for _, _, item in self._items]
        if out:
            self._items = _NO_ITEMS
            self._forget(self._bytes)
        self._bytes = 0
        return out
