"""Shutdown drain of a component connection (the mixin :class:`Draining`) and of a listener's
connections (:func:`drain_connections`); :mod:`s2sfast.server.component` uses both.

While the node stops, a component is read whatever had paused it (backpressure, the shaper):
each stanza it sends goes to its destination if that takes it at once, else it is bounced to
the component, whose stream is still open to carry the error. As a destination, a draining
component holds none of its sources either. After our ``</stream:stream>`` (RFC 6120 4.4) what
the component still sends goes on only to another component that takes it at once; nothing more
may be written to it, so the rest is counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from s2sfast.framing import Stanza

__all__ = ["DRAIN_CONDITION", "DRAIN_TEXT", "Draining", "drain_connections"]

log = logging.getLogger("s2sfast.component")

#: the bounce for a stanza a draining component sends that its destination cannot take at once.
#: RFC 6120 8.3.3.19 service-unavailable ("the server ... does not currently provide the
#: requested service") says what happened: this node stops routing. recipient-unavailable
#: (8.3.3.13) would claim the recipient is unavailable, which nobody here knows (and 8.3.3.13
#: forbids hinting at a recipient's availability); it stays reserved for XEP-0198 stanzas a
#: dead stream may or may not have delivered. The node's other shutdown bounces (stanzas
#: queued for S2S when it stops) already use service-unavailable, so a component sees one
#: condition for "not sent because the node stopped".
DRAIN_CONDITION = "service-unavailable"
DRAIN_TEXT = "the node is shutting down"


class Draining:
    """The shutdown drain of :class:`~s2sfast.server.component.ComponentConnection` (a mixin:
    it uses the connection's machine, transport, router and writer state)."""

    machine: Any
    transport: Any
    _loop: asyncio.AbstractEventLoop
    _draining: bool
    _drain_blocked: dict[str, Any]
    _drain_routed: int
    _drain_bounced: int
    _late_unanswered: int
    _last_in: float
    _held_by: Any
    _shaped: bool
    _in_server_ns: Any

    def begin_drain(self) -> None:
        """The node is stopping: read the component whatever paused it (backpressure, the
        shaper), route what it sends where that is taken at once, bounce the rest to it.

        As a destination it stops holding its sources too (S2S streams, other components):
        they are read again, so what their peers sent before the shutdown is handled before
        their streams close; what this component cannot take past its queue bounces to them
        (resource-constraint) instead of waiting unread in the kernel.
        """
        if self.machine.state != "OPEN" or self.transport is None or self._draining:
            return
        self._draining = True
        self._last_in = self._loop.time()
        self._held_by.clear()
        self._shaped = False
        self._update_reading()
        self.release_sources()

    def held_by(self, destination: Any) -> None:
        if self._draining:
            return  # draining: never stop reading (a congested destination means a bounce)
        super().held_by(destination)

    def hold_source(self, source: Any) -> None:
        if self._draining:
            return  # draining: our sources keep being read; past our queue they get bounces
        super().hold_source(source)

    async def quiet(self, quiet: float, deadline: float, caught_up: bool = False) -> bool:
        """Wait until the component has sent nothing for *quiet* seconds (and, with
        *caught_up*, has read what we wrote it down to the low-water mark), or its stream is no
        longer open; at most until loop time *deadline*. False when it had not."""
        loop = self._loop
        while self.machine.state == "OPEN" and self.transport is not None:
            now = loop.time()
            silent = now - self._last_in
            behind = caught_up and self.congested
            if silent >= quiet and not behind:
                return True
            if now >= deadline:
                return False
            wait = quiet - silent if silent < quiet else 0.05
            await asyncio.sleep(min(wait, deadline - now))
        return True

    def _route_draining(self, router: Any, stanza: Stanza) -> None:
        """Shutdown, stream still open: route *stanza* if its destination takes it without
        holding us (reading must go on), else bounce it to the component, which can still read
        the error."""
        domain = stanza.to_domain
        blocked = self._drain_blocked.get(domain) or router.routes.get(domain)
        if blocked is not None and blocked.congested:
            self._drain_bounced += 1
            router.bounce(stanza.raw, self.machine.domain or "?", DRAIN_CONDITION, DRAIN_TEXT)
            return
        try:
            dest = router.route(stanza, None)  # no source: nothing pauses our reading
        except ValueError as exc:
            self._refuse(stanza, exc)
            return
        self._drain_routed += 1
        if dest is not None:
            if len(self._drain_blocked) >= 1024:  # a bound, like the machine's domain cache
                self._drain_blocked.clear()
            self._drain_blocked[domain] = dest

    def _route_late(self, router: Any, stanza: Stanza) -> None:
        """After our ``</stream:stream>``: hand *stanza* to a connected component that takes it
        at once; anything else would need an answer to the component, which may no longer be
        written (RFC 6120 4.4), so it is only counted (and logged when the stream ends)."""
        dest = router.routes.get(stanza.to_domain)
        if dest is not None and dest is not self:
            if stanza.declares_ns:
                stanza = self._in_server_ns(stanza)
            if dest.deliver(stanza):
                self._drain_routed += 1
                return
        self._late_unanswered += 1
        log.debug(
            "component %s: stanza after our </stream:stream> not routable: %r",
            self.machine.domain,
            bytes(stanza.raw[:200]),
        )


def _backlog(conn: Any) -> int:
    """Bytes we owe *conn*: our queue and the transport's buffer (shrinks as it reads)."""
    transport = conn.transport
    return conn._wbuf_size + (transport.get_write_buffer_size() if transport is not None else 0)


async def drain_connections(
    connections: list[Any],
    quiet: float,
    timeout: float,
    *,
    caught_up: bool = False,
    stuck_only: bool = False,
) -> None:
    """Wait until every one of *connections* (draining) has been silent for *quiet* seconds
    (and, with *caught_up*, has read what we owe it), at most *timeout* seconds; with
    *caught_up*, cut the ones still behind (with *stuck_only*, only those that read nothing
    meanwhile: one still reading is left to the next drain). See ComponentServer.drain."""
    if not connections:
        return
    before = {id(c): _backlog(c) for c in connections} if stuck_only else {}
    deadline = asyncio.get_running_loop().time() + timeout
    results = await asyncio.gather(
        *(c.quiet(quiet, deadline, caught_up) for c in connections), return_exceptions=True
    )
    for conn, result in zip(connections, results, strict=True):
        if result is not False or conn.machine.state != "OPEN":
            continue
        if caught_up and conn.congested:
            if stuck_only and _backlog(conn) < before[id(conn)]:
                continue  # it reads, only slowly: the last drain gives it its time
            try:
                conn._cut("system-shutdown", "the component read too slowly at shutdown")
            except Exception as exc:
                log.warning("component stream %s: cannot close: %s", conn.machine.stream_id, exc)
        else:
            log.info(
                "component stream %s (%s): still sending after %g s of draining: closing it",
                conn.machine.stream_id,
                conn.machine.domain,
                timeout,
            )
