"""XEP-0198 glue for the router: s2sfast.protocol.sm does the counting; this only moves stanzas.

Senders wait while half a stream's unacked window is in flight; an ack lets the link's queue
out within the window; a dead stream's unacknowledged stanzas are resent on the pair's next
stream or bounced to their senders.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from s2sfast.net.backoff import QueueFull
from s2sfast.net.stream import XmlStream
from s2sfast.routing.links import OutboundLink

if TYPE_CHECKING:
    from s2sfast.router import Router

__all__ = ["SmGlue"]


class _Room:
    """A stream's unacked window as a destination to wait for (see SmGlue.room_for)."""

    __slots__ = ("glue", "stream")

    def __init__(self, glue: SmGlue, stream: XmlStream) -> None:
        self.glue = glue
        self.stream = stream

    async def drained(self) -> None:
        if self.glue.blocked(self.stream):
            await self.glue.room(self.stream)


class SmGlue:
    """Unacked windows, resends and their waiters, for the router's S2S streams.

    Args:
        router: the owner: its links, its options, its bounces and events.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        #: senders waiting for an ack to open a stream's unacked window
        self._waiters: dict[XmlStream, asyncio.Future[None]] = {}

    @staticmethod
    def blocked(stream: XmlStream) -> bool:
        """Whether a sender should wait for acks before writing more to *stream*: half its
        unacked window is in flight (the other half absorbs senders already on their way)."""
        sm = getattr(stream.machine, "sm_out", None)
        return sm is not None and 2 * len(sm.unacked) >= sm.max_unacked and stream.writable

    def room_for(self, stream: XmlStream) -> _Room:
        """What a sender awaits (``await r.drained()``) while *stream* is :meth:`blocked`: the
        router hands it back like a congested destination."""
        return _Room(self, stream)

    async def room(self, stream: XmlStream) -> None:
        """Wait until an ack opens *stream*'s window or the stream ends (XEP-0198 backpressure;
        a peer that stops acking is failed by its machine after SM_ACK_TIMEOUT)."""
        waiter = self._waiters.get(stream)
        if waiter is None:
            waiter = self._waiters[stream] = asyncio.get_event_loop().create_future()
        await asyncio.shield(waiter)

    def wake(self, stream: XmlStream) -> None:
        """Senders waiting on *stream* may go on (an ack came, or the stream ended)."""
        waiter = self._waiters.pop(stream, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def acked(self, stream: XmlStream) -> None:
        """The peer acked on *stream*: its link's queue goes out within the window."""
        link = stream.link
        if link is not None and link.stream is stream:
            self.flush(link)
        if not self.blocked(stream):
            self.wake(stream)

    def flush(self, link: OutboundLink) -> None:
        """Write what waits in *link*'s queue while its stream's unacked window has room."""
        stream = link.stream
        if stream is None or not link.queue or not stream.writable:
            return
        machine = stream.machine
        if machine.sm_out is None:
            batch = link.queue.drain()
        else:
            room = machine.sm_out.max_unacked - len(machine.sm_out.unacked)
            batch = link.queue.take(room) if room > 0 else []
        if machine.peer_max_bytes is not None:
            batch = self.router.bidi.within_peer_limit(batch, link, machine.peer_max_bytes)
        stream.write_stanzas(batch)
        if not link.queue:
            if link.expiry_timer is not None:
                link.expiry_timer.cancel()
                link.expiry_timer = None
            if stream.congested:
                # the sources go on waiting, now for the stream to drain
                for source in link.holding:
                    stream.hold_source(source)
            link.release_sources()

    def requeue(self, local: str, remote: str, raws: tuple[bytes, ...], reason: str) -> None:
        """A dead stream's unacknowledged stanzas: ahead of the pair's queue for its next
        stream (``[s2s] stream_management.resend = true``), else bounced to their senders."""
        router = self.router
        opts = router.options_for(local).stream_management
        if not opts.resend or router.closing:
            why = "the node is shutting down" if router.closing else reason
            for raw in raws:
                router.bounce(
                    raw,
                    local,
                    "recipient-unavailable",
                    f"the stream to {remote} ended before {remote} acknowledged this stanza "
                    f"({why}); it may or may not have been delivered",
                )
            return
        links = router.links
        link = router.outbound.get((local, remote))
        if link is None:
            link = links.open(local, remote)
        elif link.stream is None or not link.stream.writable:
            link.established = False  # the next stream must authenticate before it writes
        waiting = link.queue.drain()
        now = links.now()
        for raw in (*raws, *waiting):
            try:
                link.queue.push(raw, now)
            except QueueFull as exc:
                router.bounce(raw, local, exc.condition, f"stanzas to {remote} wait: {exc}")
        router.emit("sm-requeue", local=local, remote=remote, count=len(raws), reason=reason)
        if link.established and link.stream is not None and link.stream.writable:
            self.flush(link)  # another stream to the domain is up: resend there now
        links.arm_expiry(link)
