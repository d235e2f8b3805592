"""XEP-0198 Stream Management in the two negotiation machines (sans-IO glue around sm.py).

:class:`SmStream` is what both machines do alike with the counters of s2sfast.protocol.sm:
count the stanzas written to the stream, hold them while the window is full, acknowledge what
the data path has handled, read the peer's last ``<a/>`` while closing, and close with
``<handled-count-too-high/>``. :class:`IncomingSm` and :class:`OutgoingSm` add each role's
part: the incoming stream offers ``<sm/>`` and answers ``<enable/>``; the outgoing stream sends
``<enable/>``, asks for acks on a timer and hands back what the peer never acknowledged.

The classes are mixins of IncomingMachine / OutgoingMachine: they read and set the machine's
attributes (``sm_in``, ``sm_out``, ``state``, ...) and their handlers are named in the
machine's transition table.
"""

from __future__ import annotations

import logging
from typing import Any

from s2sfast.limits import SM_ACK_TIMEOUT
from s2sfast.protocol.errors import LocalStreamError
from s2sfast.protocol.events import (
    Acked,
    Action,
    Close,
    Drop,
    Handled,
    SendBytes,
    SetTimer,
    Unacked,
)
from s2sfast.protocol.sm import (
    ENABLE,
    ENABLED,
    REQUEST,
    SM_NS,
    HandledCountTooHigh,
    SmInbound,
    SmOutbound,
    ack_bytes,
    failed_bytes,
    handled_count_too_high_bytes,
    parse_ack,
)

__all__ = ["SmStream", "IncomingSm", "OutgoingSm"]

#: each machine's lines keep its own logger (docs/logs.md names them): IncomingSm logs to
#: ``log``, OutgoingSm to ``_log``
log = logging.getLogger("s2sfast.incoming")
_log = logging.getLogger("s2sfast.outgoing")


class SmStream:
    """The XEP-0198 steps both machines share."""

    __slots__ = ()  # a mixin of both machines: its fields are the machine's slots

    sm_in: SmInbound | None
    sm_out: SmOutbound | None
    TABLE: Any
    state: str

    @property
    def window_full(self) -> bool:
        """Whether the unacked window is full: hold further stanzas until an ack (Acked)."""
        return self.sm_out is not None and self.sm_out.window_full

    def sent(self, raw: bytes) -> list[Action]:
        """A stanza was just written to this stream (the data path calls this directly: no
        event dispatch per stanza). With XEP-0198 on, it is counted and kept until acked.

        Returns:
            An ``<r/>`` when the request policy asks for one, and the ack timer when the
            unacked queue was empty.
        """
        sm = self.sm_out
        if sm is None:
            return []
        actions: list[Action] = []
        if sm.idle:
            sm.idle = False
            actions.append(SetTimer(seconds=sm.request_after))
        if sm.record(raw):
            sm.requested()
            actions.append(SendBytes(data=REQUEST))
        return actions

    def sent_batch(self) -> list[Action]:
        """The stanzas kept since the last call (``sm_out.keep(raw)`` for each one written:
        the stream's data path) are about to leave in one write. Asked once per batch rather
        than per stanza, so a burst carries one ``<r/>`` at its end.

        Returns:
            The ack timer when the unacked queue was empty before them, and an ``<r/>`` when
            the request policy asks for one (SmOutbound.request_due).
        """
        sm = self.sm_out
        if sm is None or not sm.unacked:
            return []
        actions: list[Action] = []
        if sm.idle:
            sm.idle = False
            actions.append(SetTimer(seconds=sm.request_after))
        if sm.request_due:
            sm.requested()
            actions.append(SendBytes(data=REQUEST))
        return actions

    def handled(self, seq: int) -> list[Action]:
        """Inbound stanza *seq* has been handled (the data path calls this directly, as it
        does :meth:`sent`: no Handled event dispatched per stanza); the same as
        ``receive(Handled(seq=seq))``, whose table row it checks.

        Returns:
            The ``<a/>`` owed to an earlier ``<r/>`` once it is due.
        """
        sm_in = self.sm_in
        if sm_in is not None and self.TABLE.get((self.state, "Handled")) == "_on_handled":
            ack = sm_in.handled(seq)
            return [SendBytes(data=ack)] if ack is not None else []
        return self.receive(Handled(seq=seq))  # type: ignore[attr-defined]

    def handled_run(self, first: int, last: int) -> list[Action]:
        """Inbound stanzas *first* .. *last* were handled, in that order: :meth:`handled` for
        each, counted at once (the stream reports a read's in-order run in one call)."""
        sm_in = self.sm_in
        if sm_in is not None and self.TABLE.get((self.state, "Handled")) == "_on_handled":
            ack = sm_in.handled_run(first, last)
            return [SendBytes(data=ack)] if ack is not None else []
        actions: list[Action] = []
        for seq in range(first, last + 1):
            if self.state in self.FINAL:  # type: ignore[attr-defined]
                break
            actions += self.handled(seq)
        return actions

    def _on_handled(self, ev: Handled) -> list[Action]:
        """A stanza we delivered from this stream has been handled: ack when due."""
        sm_in = self.sm_in
        ack = sm_in.handled(ev.seq) if sm_in is not None else None
        return [SendBytes(data=ack)] if ack is not None else []

    def _on_closing_stanza(self, st: Any) -> list[Action]:
        """While we close: the peer's last <a/> still counts (XEP-0198 section 4)."""
        if st.ns == SM_NS and st.name == "a" and self.sm_out is not None:
            return self._on_sm(st)
        return []

    def _on_sm(self, st: Any) -> list[Action]:
        raise NotImplementedError

    def _release_unacked(self, reason: str) -> list[Action]:
        """What a failing stream hands back before its close (the role decides)."""
        return []

    def _sm_fail(self, exc: HandledCountTooHigh) -> list[Action]:
        """XEP-0198 section 4: undefined-condition with <handled-count-too-high/>, then close."""
        self.error = exc
        self.state = "ERROR"
        return [
            SendBytes(data=handled_count_too_high_bytes(exc)),
            *self._release_unacked(exc.text or "handled-count-too-high"),
            SetTimer(seconds=None),
            Close(condition=None, text=f"stream error undefined-condition: {exc.text}"),
        ]


class IncomingSm(SmStream):
    """The receiving server's part: offer ``<sm/>``, answer ``<enable/>``, ``<r/>`` and
    ``<a/>`` (the latter for our stanzas on a bidi stream, XEP-0288)."""

    __slots__ = ()

    def _sm_allowed(self) -> bool:
        host = self.local or next(iter(sorted(self.hosts)), "")
        return bool(host) and self.options_for(host).stream_management.enabled

    def _on_sm(self, st: Any) -> list[Action]:
        name = st.name
        if name == "enable":
            if not self._sm_offered:
                return [SendBytes(data=failed_bytes("feature-not-implemented"))]
            if not self.authorised or self.sm_in is not None:
                # XEP-0198 section 3: only after authentication, and only once
                why = "already enabled" if self.sm_in is not None else "not authenticated yet"
                return [
                    SendBytes(data=failed_bytes("unexpected-request")),
                    Drop(reason=f"<enable/> refused on {self.stream_id}: {why}", stanza=st),
                ]
            opts = self.options_for(self.local or next(iter(self.authorised))[0])
            self.sm_in = SmInbound()
            self.sm_out = SmOutbound(
                max_unacked=opts.stream_management.buffer_max,
                request_every=opts.stream_management.ack_freq,
            )
            log.info("stream management enabled on incoming stream %s", self.stream_id)
            return [SendBytes(data=ENABLED)]
        if self.sm_in is None or self.sm_out is None:
            return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> before <enable/>", stanza=st)]
        if name == "r":
            ack = self.sm_in.request()
            return [SendBytes(data=ack)] if ack is not None else []
        if name == "a":
            try:
                count = self.sm_out.ack(parse_ack(st.raw))
            except HandledCountTooHigh as exc:
                return self._sm_fail(exc)
            return [Acked(count=count)] if count else []  # our bidi stanzas (XEP-0288)
        return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> is not used on S2S", stanza=st)]

    def _final_ack(self) -> list[Action]:
        """XEP-0198: our last <a/> goes out before our </stream:stream>."""
        if self.sm_in is None:
            return []
        return [SendBytes(data=self.sm_in.final_ack())]

    def _on_open_timer(self, ev: Any) -> list[Action]:
        """Negotiating: the step timed out. Authenticated (no step timer any more): our bidi
        stanzas wait for an ack, so ask (again)."""
        sm = self.sm_out
        if not self.authorised:
            return self._timeout(ev)
        if sm is None or not sm.unacked:
            return []
        sm.requested()
        return [SendBytes(data=REQUEST), SetTimer(seconds=sm.request_after)]


class OutgoingSm(SmStream):
    """The initiating server's part: ``<enable/>`` once authenticated, ``<r/>`` on a timer,
    the peer's acks, and what the peer never acknowledged handed back when the stream ends."""

    __slots__ = ()

    def _on_ack_timer(self, ev: Any) -> list[Action]:
        """Unacked output for request_after seconds: ask (again) and keep the timer going."""
        sm = self.sm_out
        if sm is None or not sm.unacked:
            return []
        self._sm_silent = self._sm_silent + 1 if sm.awaiting else 0
        if self._sm_silent * sm.request_after >= SM_ACK_TIMEOUT:
            raise LocalStreamError(
                "connection-timeout", f"no XEP-0198 ack from {self.remote} for {SM_ACK_TIMEOUT:g} s"
            )
        sm.requested()
        return [SendBytes(data=REQUEST), SetTimer(seconds=sm.request_after)]

    def _enable_sm(self) -> list[Action]:
        """After dialback succeeded (XEP-0198 section 3): <enable/> when the peer offered it.

        Stanzas written from now on are counted: the peer starts its count on reading
        <enable/>, so they need not wait for <enabled/>.
        """
        opts = self.sm_options
        if opts is None or not self.sm_offered:
            return []
        self.sm_out = SmOutbound(max_unacked=opts.buffer_max, request_every=opts.ack_freq)
        return [SendBytes(data=ENABLE)]

    def _on_sm(self, st: Any) -> list[Action]:
        name = st.name
        sm = self.sm_out
        if sm is None:
            return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> without <enable/>", stanza=st)]
        if name == "a":
            try:
                count = sm.ack(parse_ack(st.raw))
            except HandledCountTooHigh as exc:
                return self._sm_fail(exc)
            self._sm_silent = 0
            actions: list[Action] = [Acked(count=count)] if count else []
            if self.state == "ESTABLISHED":
                actions.append(SetTimer(seconds=sm.request_after if sm.unacked else None))
            return actions
        if name == "enabled":
            self.sm_in = SmInbound()
            _log.info("stream management enabled on %s -> %s", self.local, self.remote)
            return []
        if name == "failed":
            # the peer counts nothing: what we wrote is as good as on any plain stream
            count = len(sm.take_unacked())
            self.sm_out = None
            _log.info("%s refused stream management", self.remote)
            return [Acked(count=count), SetTimer(seconds=None)]
        if name == "r":
            sm_in = self.sm_in
            return [SendBytes(data=ack_bytes(sm_in.h if sm_in is not None else 0))]
        return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> is not used on S2S", stanza=st)]

    def _sm_release(self, reason: str) -> list[Action]:
        """The stream is over: hand back what the peer never acknowledged (once)."""
        sm, self.sm_out = self.sm_out, None
        if sm is None or not sm.unacked:
            return []
        raws = tuple(sm.take_unacked())
        _log.warning(
            "%s -> %s: stream ended with %d unacknowledged stanza(s): %s",
            self.local,
            self.remote,
            len(raws),
            reason,
        )
        return [Unacked(local=self.local, remote=self.remote, raws=raws, reason=reason)]

    _release_unacked = _sm_release

    def _bidi_final_ack(self) -> list[Action]:
        """XEP-0198 on a bidi stream: our last <a/> for the peer's stanzas before we close."""
        if not self.bidi or self.sm_in is None or self.state != "ESTABLISHED":
            return []
        return [SendBytes(data=self.sm_in.final_ack())]
