"""Log lines for events that come in floods (bounces): the first at once, then counts.

A flood of stanzas to a domain nobody serves, or that the policy denies, bounces each one; a
log line each (~100,000 a second) costs more than the bounces and drowns every other line.
:class:`Tally` keeps the first occurrence per key as it is, and sums the rest into one line
per key per :data:`~s2sfast.limits.BOUNCE_LOG_INTERVAL` seconds. Each occurrence still goes to
DEBUG at the call site.

The call sites keep their own ``log.info("...")`` calls with constant format strings (which
tests/docs checks against docs/logs.md): the tally only decides when, and with which count,
they are called::

    _no_component = Tally(lambda domain, count, seconds: log.info(
        "no component serves %s: service-unavailable for %d more stanza(s) in %.1f s",
        domain, count, seconds))
    if _no_component.add(domain):
        log.info("no component serves %s: service-unavailable", domain)

The first :meth:`Tally.add` for a key returns True (log this one, in full, now); the following
ones return False and are counted, and each interval that counted any ends with
``emit(key, count, seconds)``; a key quiet for a whole interval is forgotten, so its next
occurrence is again logged at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from s2sfast.limits import BOUNCE_LOG_INTERVAL

__all__ = ["MAX_KEYS", "Tally"]

#: keys counted at once; past it the counts are reported early and the table starts afresh, so
#: a flood to many distinct domains costs at most this many entries (and lines per interval)
MAX_KEYS = 1024


class Tally:
    """Counts occurrences per key and reports them through *emit*, rate-limited.

    Args:
        emit: called with (key, count, seconds) for the occurrences an interval counted
            after the first (which :meth:`add` leaves to its caller).
        interval: seconds per report and key.

    Without a running event loop (a synchronous caller) every occurrence is logged at once.
    """

    def __init__(
        self,
        emit: Callable[[Hashable, int, float], None],
        interval: float = BOUNCE_LOG_INTERVAL,
    ) -> None:
        self._emit = emit
        self.interval = interval
        #: key -> occurrences since its last report (a key is present while its interval runs)
        self._counts: dict[Hashable, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        #: the loop the counts and the timer belong to (a module-level tally outlives loops)
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, key: Hashable) -> bool:
        """One occurrence of *key*; True when the caller should log it now (the first of its
        key in a while), False when it was counted for the next report."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        if loop is not self._loop:  # a new loop: what the old one counted is gone with it
            self._loop, self._counts, self._timer = loop, {}, None
        counts = self._counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + 1
            return False
        if len(counts) >= MAX_KEYS:
            self.flush()
        counts[key] = 0
        if self._timer is None:
            self._started = loop.time()
            self._timer = loop.call_later(self.interval, self._tick)
        return True

    def _tick(self) -> None:
        """The interval ended: report each key's count; a key that had any stays counted for
        another interval (a steady flood is one line per interval), the others are dropped."""
        self._timer = None
        loop = asyncio.get_running_loop()
        seconds = loop.time() - self._started
        counts = self._counts
        busy = {key: count for key, count in counts.items() if count}
        self._counts = dict.fromkeys(busy, 0)
        for key, count in busy.items():
            self._emit(key, count, seconds)
        if busy:
            self._started = loop.time()
            self._timer = loop.call_later(self.interval, self._tick)

    def flush(self) -> None:
        """Report what was counted and start afresh (the next occurrence of a key is again
        logged at once)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        try:
            seconds = asyncio.get_running_loop().time() - self._started
        except RuntimeError:
            seconds = self.interval
        for key, count in counts.items():
            if count:
                self._emit(key, count, seconds)
