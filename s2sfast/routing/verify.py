"""Dialback verify brokering (XEP-0220): the receiving role's questions and their answers.

An incoming stream's machine asks (VerifyKey) whether a key is valid; the question goes over
our outbound stream to the authoritative server (or is answered here when that is us), and
the answer goes back to the incoming stream by its id, if it still exists.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from s2sfast.limits import MAX_PENDING_VERIFICATIONS
from s2sfast.protocol.dialback import key_matches
from s2sfast.protocol.events import VerifyKey, VerifyRequest, VerifyResult
from s2sfast.routing.links import OutboundLink

if TYPE_CHECKING:
    from s2sfast.router import Router

__all__ = ["VerifyBroker"]

log = logging.getLogger("s2sfast.router")


class VerifyBroker:
    """Carries verify requests from incoming streams to the authoritative server and back.

    Args:
        router: the owner: its inbound index, its links, its options.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        #: (stream id, receiving, originating) of VerifyKeys not answered yet, node-wide
        self._verifying: set[tuple[str, str, str]] = set()

    def verify(self, action: VerifyKey) -> None:
        """Receiving role: ask the authoritative server over our stream to it."""
        router = self.router
        if action.originating in router.local_domains:
            # we are the authoritative server ourselves: no connection to make
            secret = router.options_for(action.originating).shared
            valid = key_matches(
                secret, action.receiving, action.originating, action.stream_id, action.key
            )
            self.answer(
                action.receiving,
                action.originating,
                action.stream_id,
                "valid" if valid else "invalid",
                None,
            )
            return
        if router.closing or len(self._verifying) >= MAX_PENDING_VERIFICATIONS:
            why = "shutting down" if router.closing else "too many pending verifications"
            self.answer(action.receiving, action.originating, action.stream_id, "error", why)
            return
        self._verifying.add((action.stream_id, action.receiving, action.originating))
        req = VerifyRequest(
            receiving=action.receiving,
            originating=action.originating,
            stream_id=action.stream_id,
            key=action.key,
        )
        link = router.outbound.get((action.receiving, action.originating))
        if link is None:
            link = router.links.open(action.receiving, action.originating)
        if link.stream is not None:
            link.stream.feed_event(req)
        else:
            link.queue_verify(req)

    def answer(
        self, receiving: str, originating: str, stream_id: str, type_: str, text: str | None
    ) -> None:
        """The verdict for the incoming stream *stream_id* (``valid``, ``invalid``, ``error``)."""
        self._verifying.discard((stream_id, receiving, originating))
        inbound = self.router.inbound.get(stream_id)
        if inbound is None:
            log.info("verify answer for a stream that is gone (%s)", stream_id)
            return
        inbound.feed_event(
            VerifyResult(
                receiving=receiving,
                originating=originating,
                stream_id=stream_id,
                type=type_,
                text=text,
            )
        )

    def fail(self, link: OutboundLink, text: str | None) -> None:
        """*link* has no stream to ask over: its waiting requests are answered ``error``."""
        for req in link.take_verifies():
            self.answer(req.receiving, req.originating, req.stream_id, "error", text)
