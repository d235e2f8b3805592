"""Bidirectional streams (XEP-0288) and the peer's stream limits (XEP-0478) in the two
negotiation machines (sans-IO glue around bidi.py and stream_limits.py).

:class:`IncomingBidi` is the receiving server: it offers ``<bidi/>``, takes the peer's request
(and the limits inside it), tells the router with :class:`BidiRoute` when an authenticated
pair's reverse direction may use this stream, and hands back, per pair, what the peer never
acknowledged when the stream ends. :class:`OutgoingBidi` is the initiating server: it notes the
limits in the peer's features, asks for bidi once, accepts the peer's stanzas for the inverse
pair only, and serves the peer's dialback requests for its other domains (XEP-0288 section 2.2).

The classes are mixins of IncomingMachine / OutgoingMachine (they use the machine's attributes
and helpers); their handlers are named in each machine's transition table or stanza dispatch.
"""

from __future__ import annotations

import logging
from typing import Any

from s2sfast.framing import StreamFramer
from s2sfast.limits import MAX_PENDING_RESULTS_PER_STREAM
from s2sfast.protocol.bidi import BidiRoute, parse_request
from s2sfast.protocol.dialback import result_bytes
from s2sfast.protocol.events import (
    Action,
    Drop,
    SendBytes,
    Unacked,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.features import Features
from s2sfast.protocol.jid import valid_domain
from s2sfast.protocol.negotiation import DATA_STANZAS, SERVER_NS, Machine

__all__ = ["IncomingBidi", "OutgoingBidi"]

#: each machine's lines keep its own logger (docs/logs.md names them): IncomingBidi logs to
#: ``log``, OutgoingBidi to ``_log``
log = logging.getLogger("s2sfast.incoming")
_log = logging.getLogger("s2sfast.outgoing")


class IncomingBidi:
    """The receiving server's side of XEP-0288: the reverse direction on the accepted stream."""

    __slots__ = ()  # a mixin of IncomingMachine: its fields are the machine's slots

    def _receive_bidi(self, event: Any) -> list[Action]:
        """:meth:`receive` once the peer asked for bidi (installed on the instance then, so
        other streams keep the plain dispatch): also tell the router when a pair's reverse
        direction becomes usable, and hand back what the peer never acknowledged when the
        stream ends."""
        actions = Machine.receive(self, event)
        extra = self._bidi_release("the stream ended") if self.state in self.FINAL else None
        extra = extra or self._bidi_routes()
        if extra:
            return [*actions, *extra]
        return actions

    def _bidi_allowed(self) -> bool:
        """Offer bidi: ``[s2s] bidi`` is on, TLS is not still owed, nothing authenticated yet
        (XEP-0288 section 2.1: offered before and after TLS; requested before authentication)."""
        if self.bidi or self.authorised or self._tls_missing():
            return False
        host = self.local or next(iter(sorted(self.hosts)), "")
        return bool(host) and self.options_for(host).bidi

    def _on_bidi(self, st: Any) -> list[Action]:
        if not self._bidi_offered or self.authorised:
            why = "after authentication" if self.authorised else "without our offer"
            return [Drop(reason=f"<bidi/> request {why} ignored on {self.stream_id}", stanza=st)]
        self.bidi = True
        self.receive = self._receive_bidi  # type: ignore[method-assign]
        self.peer_limits = parse_request(st.raw)
        limits = self.peer_limits
        self.peer_max_bytes = limits.max_bytes if limits is not None else None
        log.info(
            "bidirectional stream requested by %s -> %s (XEP-0288) id=%s",
            self.peer_from,
            self.local,
            self.stream_id,
        )
        return []

    def _bidi_routes(self) -> list[Action]:
        """BidiRoute for each pair authenticated since the last call, once our (restarted)
        stream is open: never before the peer authenticated (XEP-0288 section 2.2)."""
        if len(self._routed) == len(self.authorised):
            return []
        if self.state != "OPEN" or not self.header_sent:
            return []
        actions: list[Action] = []
        for local, remote in sorted(set(self.authorised) - self._routed):
            if not self._routed:
                self._routed = set()  # the machine starts with an empty frozenset
            self._routed.add((local, remote))
            log.info(
                "bidi: %s -> %s now goes over incoming stream %s", local, remote, self.stream_id
            )
            actions.append(BidiRoute(local=local, remote=remote))
        return actions

    def _bidi_release(self, reason: str) -> list[Action]:
        """The stream is over: what we sent on it and the peer never acknowledged, per pair
        (once), for the router to resend or bounce."""
        sm = self.sm_out
        if sm is None or not sm.unacked or not self._routed:
            return []
        raws = sm.take_unacked()
        by_pair: dict[tuple[str, str], list[bytes]] = {}
        if len(self._routed) == 1:
            by_pair[next(iter(self._routed))] = raws
        else:
            framer = StreamFramer()
            framer.feed(
                b"<stream:stream xmlns='jabber:server' "
                b"xmlns:stream='http://etherx.jabber.org/streams'>"
            )
            for raw in raws:
                (st,) = framer.feed(raw)
                by_pair.setdefault((st.from_domain, st.to_domain), []).append(raw)
        log.warning(
            "bidi stream %s ended with %d unacknowledged stanza(s): %s",
            self.stream_id,
            len(raws),
            reason,
        )
        return [
            Unacked(local=local, remote=remote, raws=tuple(out), reason=reason)
            for (local, remote), out in by_pair.items()
        ]


class OutgoingBidi:
    """The initiating server's side of XEP-0288 and XEP-0478."""

    __slots__ = ()  # a mixin of OutgoingMachine: its fields are the machine's slots

    def _note_limits(self, features: Features | None) -> None:
        """The peer's limits hold until its next features (XEP-0478 section 4)."""
        if features is None:
            return
        self.peer_limits = features.limits
        self.peer_max_bytes = features.limits.max_bytes if features.limits is not None else None

    def _bidi_due(self, features: Features | None) -> bool:
        """Ask for bidi once: offered, wanted, and no authentication started yet."""
        if self.bidi or not self.bidi_wanted or features is None or not features.bidi:
            return False
        if self._sasl is not None:
            return False
        self.bidi = True
        _log.info("requesting a bidirectional stream %s -> %s (XEP-0288)", self.local, self.remote)
        return True

    def _reverse_allowed(self, st: Any) -> bool:
        """A stanza from the peer on our bidi stream: only for the inverse of our pair (what we
        authenticated: the peer sends from *remote* to *local*, XEP-0288 section 2.2)."""
        if st.name not in DATA_STANZAS or st.ns != SERVER_NS or st.to_domain != self.local:
            return False
        frm = st.from_domain
        return frm == self.remote or (self.local, frm) in self.reverse_pairs

    def _on_reverse_request(self, db: Any, st: Any) -> list[Action]:
        """XEP-0288 section 2.2: on a bidi stream the peer may authenticate another of its
        domains towards ours by dialback; we are the receiving server and ask that domain's
        authoritative server (never on this stream), answering with XEP-0220 errors."""
        if not self.bidi or self.state != "ESTABLISHED":
            return [Drop(reason="db:result request on an outbound stream", stanza=st)]
        local, originating = db.to.lower(), db.from_.lower()

        def error(condition: str) -> list[Action]:
            _log.info(
                "dialback request %s -> %s on bidi stream %s refused: %s",
                originating,
                local,
                self.stream_id,
                condition,
            )
            answer = result_bytes(
                from_=local or self.local, to=originating, type="error", error_condition=condition
            )
            return [SendBytes(data=answer)]

        if local != self.local:
            return error("item-not-found")  # XEP-0220 section 2.4: not a domain of ours here
        if not valid_domain(originating) or not db.key:
            return error("bad-request")
        if self.policy_allows is not None and not self.policy_allows(local, originating):
            return error("policy-violation")
        if originating in self._reverse_pending:
            return [Drop(reason=f"dialback request for {originating} already pending", stanza=st)]
        if len(self._reverse_pending) >= MAX_PENDING_RESULTS_PER_STREAM:
            return error("resource-constraint")
        if not self._reverse_pending:
            self._reverse_pending = set()  # the machine starts with an empty frozenset
        self._reverse_pending.add(originating)
        self.reverse_requests += 1
        return [
            VerifyKey(
                receiving=local,
                originating=originating,
                stream_id=self.stream_id or "",
                key=db.key,
            )
        ]

    def _on_reverse_verified(self, ev: VerifyResult) -> list[Action]:
        originating = ev.originating
        if (
            ev.stream_id != self.stream_id
            or ev.receiving != self.local
            or originating not in self._reverse_pending
        ):
            return [Drop(reason=f"unexpected verify result for {originating} on {ev.stream_id}")]
        self._reverse_pending.discard(originating)
        if ev.type == "valid":
            if not self.reverse_pairs:
                self.reverse_pairs = set()  # the machine starts with an empty frozenset
            self.reverse_pairs.add((self.local, originating))
            _log.info(
                "bidi: %s -> %s authenticated by dialback on our stream %s",
                originating,
                self.local,
                self.stream_id,
            )
            answer = result_bytes(from_=self.local, to=originating, type="valid")
        elif ev.type == "invalid":
            answer = result_bytes(from_=self.local, to=originating, type="invalid")
        else:
            answer = result_bytes(
                from_=self.local,
                to=originating,
                type="error",
                error_condition="remote-server-not-found",
            )
        return [SendBytes(data=answer)]
