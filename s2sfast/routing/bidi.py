"""XEP-0288 and XEP-0478 for the router's links.

An incoming bidirectional stream may carry our stanzas for a (local, remote) pair: it then
serves as that pair's outbound stream until it closes. A peer's announced limits (XEP-0478)
bound what we send it: a stanza above its max-bytes bounces instead of killing the stream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from s2sfast.lograte import Tally
from s2sfast.net.stream import XmlStream
from s2sfast.protocol.bidi import BidiRoute
from s2sfast.protocol.stream_limits import StreamLimits, over_limit_text
from s2sfast.routing.links import OutboundLink, keep_peer_awake

if TYPE_CHECKING:
    from s2sfast.router import Router

__all__ = ["BidiLinks"]

log = logging.getLogger("s2sfast.router")


def _over_limit_line(key: Any, count: int, seconds: float) -> None:
    remote, limit = key
    log.info(
        "%d more stanza(s) to %s exceeded its limit of %d in %.1f s: bounced",
        count,
        remote,
        limit,
        seconds,
    )


#: one INFO line per peer and second when a flood exceeds its max-bytes (each at DEBUG)
_over_limit = Tally(_over_limit_line)


class BidiLinks:
    """Lets incoming bidi streams serve the router's links, and applies peers' limits.

    Args:
        router: the owner: its link table, its bounces and events, its other collaborators.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self._own_limits: StreamLimits | None = None

    @property
    def own_limits(self) -> StreamLimits:
        """What we accept (XEP-0478), announced in our ``<bidi/>`` requests (one object for
        every outgoing machine while the router's figures stay the same)."""
        router = self.router
        idle = router.idle_timeout
        limits = StreamLimits(
            max_bytes=router.max_stanza_size, idle_seconds=int(idle) if idle else None
        )
        cached = self._own_limits
        if cached is None or cached != limits:
            cached = self._own_limits = limits
        return cached

    @staticmethod
    def serves(link: OutboundLink) -> bool:
        """Whether an incoming bidi stream (XEP-0288) is *link*'s established stream."""
        stream = link.stream
        return (
            link.established and stream is not None and stream.direction == "in" and stream.writable
        )

    def route(self, stream: XmlStream, action: BidiRoute) -> None:
        """XEP-0288: incoming *stream* may now carry stanzas from action.local to
        action.remote. It becomes the pair's outbound stream unless an outbound stream of
        ours is established already; stanzas waiting for a connection go out on it now."""
        router = self.router
        key = (action.local, action.remote)
        if router.closing or not router.policy_allows(*key):
            return
        link = router.outbound.get(key)
        if link is not None and link.stream is not None and link.stream.writable:
            # our own stream serves the pair, or will once it authenticates (it may be the one
            # verifying this very stream's dialback key; both sides retiring theirs would
            # leave none): the bidi stream is not needed for this pair
            return
        if link is None:
            link = router.links.new(action.local, action.remote)
        else:
            if link.retry_timer is not None:
                link.retry_timer.cancel()
                link.retry_timer = None
            if link.stream is None and link.task is not None and not link.task.done():
                link.task.cancel()  # still resolving or connecting: no second connection
        stream.link = link
        link.stream = stream
        link.established = True
        keep_peer_awake(stream)
        router.emit(
            "bidi-route", local=action.local, remote=action.remote, stream_id=stream.stream_id
        )
        router.sm.flush(link)
        link.finish(True)

    def closed(self, stream: XmlStream, link: OutboundLink) -> None:
        """An incoming bidi stream that carried *link*'s stanzas is gone: what never left
        goes first on the pair's next stream, which we open only if something waits for it."""
        router = self.router
        unsent = stream.take_unsent()
        if unsent and stream.deaf:
            for raw in unsent:
                router.bounce(raw, link.local, "remote-server-timeout", "the peer stopped reading")
            unsent = []
        if link.stream is not stream:
            if unsent:
                router.links.requeue_unsent(link.local, link.remote, unsent)
            return
        link.stream = None
        link.established = False  # the next stream must authenticate before it writes
        if unsent:
            link.queue.push_front(unsent, router.links.now())
        if link.queue:
            router.links.retry(link, "remote-server-not-found", "the bidirectional stream closed")
            return
        if router.outbound.get((link.local, link.remote)) is link:
            del router.outbound[(link.local, link.remote)]
        link.cancel_timers()
        link.release_sources()

    def over_peer_limit(self, raw: bytes, local: str, remote: str, limit: int) -> None:
        """XEP-0478 section 4: a stanza above the peer's announced max-bytes is not sent (the
        peer would kill the stream); its sender gets policy-violation without ``by``."""
        if _over_limit.add((remote, limit)):
            log.info(
                "stanza of %d bytes to %s exceeds its limit of %d: bouncing",
                len(raw),
                remote,
                limit,
            )
        else:
            log.debug(
                "stanza of %d bytes to %s exceeds its limit of %d: bouncing",
                len(raw),
                remote,
                limit,
            )
        self.router.bounce(
            raw, local, "policy-violation", over_limit_text(len(raw), limit, remote), by_us=False
        )

    def within_peer_limit(self, raws: list[bytes], link: OutboundLink, limit: int) -> list[bytes]:
        """*raws* without those above the peer's max-bytes (bounced)."""
        if all(len(raw) <= limit for raw in raws):
            return raws
        out = []
        for raw in raws:
            if len(raw) > limit:
                self.over_peer_limit(raw, link.local, link.remote, limit)
            else:
                out.append(raw)
        return out
