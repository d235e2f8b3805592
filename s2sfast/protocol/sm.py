"""XEP-0198 Stream Management on S2S streams (sans-IO): counters, the unacked queue, acks.

Both halves of XEP-0198 for one stream, without any I/O or clock:

- :class:`SmOutbound` is what we send: every stanza written after ``<enable/>`` is counted and
  kept (raw bytes) until the peer's ``<a h=''/>`` covers it, so a dead stream's stanzas can be
  resent on the next stream or bounced, never lost in silence. It also decides when to ask for
  an ack (``<r/>``): after every *request_every* stanzas, or when the owner's timer (armed for
  *request_after* seconds while anything is unacked) fires.
- :class:`SmInbound` is what we receive: each inbound stanza gets a sequence number and counts
  as handled only when the data path says it has left this process towards its next hop (or was
  answered with an error). ``h`` is the longest handled prefix, so an ack never covers a stanza
  that is still only in our memory, even when stanzas finish out of order.

Counters are unbounded Python integers inside; the wire carries them modulo 2**32 (XEP-0198
section 4: ``h`` wraps to 0 after 2**32 - 1). A peer's ``h`` is read relative to the last one it
sent, so the wrap needs no special case.

For S2S, the initiating (originating) server sends ``<enable/>`` on its own stream once dialback
or SASL has authenticated it (XEP-0198 section 3: not before authentication; with dialback the
receiving server's ``<sm/>`` feature arrives before it, in the only features there are); stream
resumption is not used on S2S (neither Prosody nor ejabberd offers it there).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from lxml import etree

from s2sfast.limits import SM_ACK_AFTER, SM_ACK_EVERY, SM_MAX_UNACKED
from s2sfast.protocol.errors import STANZAS_NS, STREAMS_NS, RemoteStreamError

__all__ = [
    "SM_NS",
    "MODULUS",
    "FEATURE",
    "ENABLE",
    "ENABLED",
    "REQUEST",
    "ack_bytes",
    "failed_bytes",
    "parse_ack",
    "HandledCountTooHigh",
    "handled_count_too_high_bytes",
    "SmOutbound",
    "SmInbound",
]

SM_NS = "urn:xmpp:sm:3"
#: XEP-0198 section 4: h is an unsigned 32-bit counter that wraps to zero
MODULUS = 1 << 32

#: the stream feature (inside ``<stream:features/>``)
FEATURE = f"<sm xmlns='{SM_NS}'/>".encode()
ENABLE = f"<enable xmlns='{SM_NS}'/>".encode()
ENABLED = f"<enabled xmlns='{SM_NS}'/>".encode()
REQUEST = f"<r xmlns='{SM_NS}'/>".encode()

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def ack_bytes(h: int) -> bytes:
    """``<a h=''/>`` for the handled count *h* (any non-negative int; sent modulo 2**32)."""
    return f"<a xmlns='{SM_NS}' h='{h % MODULUS}'/>".encode()


def failed_bytes(condition: str = "unexpected-request") -> bytes:
    """``<failed/>`` with a stanza-error *condition* (XEP-0198 section 3)."""
    return f"<failed xmlns='{SM_NS}'><{condition} xmlns='{STANZAS_NS}'/></failed>".encode()


#: the ``<a/>`` every implementation we know writes (s2sfast, Prosody, ejabberd): read without
#: a parser; any other form (more attributes, a prefix, spaces) goes through lxml
_PLAIN_ACK = re.compile(rb"<a xmlns=(['\"])urn:xmpp:sm:3\1 h=(['\"])([0-9]{1,10})\2 ?/>")


def parse_ack(raw: bytes) -> int:
    """The ``h`` of a framed ``<a/>`` element.

    Raises:
        RemoteStreamError: ``bad-format`` when it is malformed or ``h`` is not a 32-bit
            unsigned integer.
    """
    plain = _PLAIN_ACK.fullmatch(raw)
    if plain is not None and int(plain[3]) < MODULUS:
        return int(plain[3])
    try:
        el = etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise RemoteStreamError("bad-format", f"malformed <a/>: {exc}") from exc
    value = el.get("h")
    if value is None or not value.isascii() or not value.isdigit() or int(value) >= MODULUS:
        raise RemoteStreamError("bad-format", f"<a/> with an invalid 'h' ({value!r})")
    return int(value)


class HandledCountTooHigh(RemoteStreamError):
    """The peer acknowledged stanzas we never sent (XEP-0198 section 4).

    The stream error is ``undefined-condition`` with a ``<handled-count-too-high/>`` child
    carrying the peer's ``h`` and our ``send-count`` (see :func:`handled_count_too_high_bytes`).
    """

    def __init__(self, h: int, send_count: int) -> None:
        self.h = h
        self.send_count = send_count % MODULUS
        super().__init__(
            "undefined-condition",
            f"you acknowledged {h} stanzas, but only {self.send_count} were sent",
        )


def handled_count_too_high_bytes(exc: HandledCountTooHigh) -> bytes:
    """The whole ``<stream:error/>`` for *exc* (without ``</stream:stream>``)."""
    text = (exc.text or "").replace("&", "&amp;").replace("<", "&lt;")
    return (
        f"<stream:error><undefined-condition xmlns='{STREAMS_NS}'/>"
        f"<handled-count-too-high xmlns='{SM_NS}' h='{exc.h}' send-count='{exc.send_count}'/>"
        f"<text xmlns='{STREAMS_NS}'>{text}</text></stream:error>"
    ).encode()


#: :attr:`SmOutbound.unacked` while nothing awaits an ack: an empty deque costs 624 bytes, and
#: an idle stream (10,000 per node) has nothing unacknowledged
_NONE_KEPT: Any = ()


class SmOutbound:
    """Stanzas we sent after ``<enable/>``: counted, kept until acknowledged.

    The count is the queue itself (:attr:`sent` is ``acked + len(unacked)``), so keeping a
    stanza is one deque append; the request policy is asked once per write batch
    (:attr:`request_due`), not per stanza.

    Args:
        max_unacked: how many unacknowledged stanzas the stream may have; :attr:`window_full`
            tells the router to hold further stanzas in its own (bounded) queue meanwhile.
        request_every: ask for an ack (``<r/>``) after this many stanzas since the last ask.
        request_after: seconds of unacknowledged output before the owner's timer asks anyway
            (the machine arms the timer; this class only reports the value).
        initial: the counter's starting value (0 on a new stream; tests use it to cross 2**32).
    """

    __slots__ = (
        "max_unacked",
        "request_every",
        "request_after",
        "unacked",
        "acked",
        "_requested_at",
        "awaiting",
        "idle",
    )

    def __init__(
        self,
        *,
        max_unacked: int = SM_MAX_UNACKED,
        request_every: int = SM_ACK_EVERY,
        request_after: float = SM_ACK_AFTER,
        initial: int = 0,
    ) -> None:
        if max_unacked < 1 or request_every < 1 or request_after <= 0:
            raise ValueError("stream-management bounds must be positive")
        self.max_unacked = max_unacked
        self.request_every = min(request_every, max_unacked)
        self.request_after = request_after
        #: raw stanzas sent and not yet acknowledged, oldest first (a deque while there are
        #: any, the empty tuple when there are none)
        self.unacked: deque[bytes] = _NONE_KEPT
        #: stanzas the peer has acknowledged (unbounded)
        self.acked = initial
        #: :attr:`sent` when the last ``<r/>`` went out
        self._requested_at = initial
        #: an <r/> is out and its <a/> has not come back
        self.awaiting = False
        #: the unacked queue was empty when the ack timer was last decided: the owner arms the
        #: timer when stanzas are kept again (and sets this False)
        self.idle = True

    @property
    def sent(self) -> int:
        """Stanzas sent since ``<enable/>`` (unbounded; the wire value is this modulo 2**32)."""
        return self.acked + len(self.unacked)

    @property
    def window_full(self) -> bool:
        """Whether :attr:`max_unacked` stanzas await their ack (hold new ones back)."""
        return len(self.unacked) >= self.max_unacked

    @property
    def request_due(self) -> bool:
        """Whether an ack should be requested now: *request_every* stanzas since the last
        ``<r/>``, or the window is full."""
        n = len(self.unacked)
        return self.acked + n - self._requested_at >= self.request_every or n >= self.max_unacked

    def keep(self, raw: bytes) -> None:
        """Count and keep one stanza just written to the stream (the request policy is asked
        separately, once per batch: :attr:`request_due`)."""
        unacked = self.unacked
        if unacked is _NONE_KEPT:
            unacked = self.unacked = deque()
        unacked.append(raw)

    def keep_all(self, raws: list[bytes]) -> None:
        """:meth:`keep` for each of *raws*, in order."""
        unacked = self.unacked
        if unacked is _NONE_KEPT:
            unacked = self.unacked = deque()
        unacked.extend(raws)

    def record(self, raw: bytes) -> bool:
        """Count and keep one stanza just written to the stream.

        Returns:
            True when an ack should be requested now (send :data:`REQUEST`, then call
            :meth:`requested`).
        """
        self.keep(raw)
        return self.request_due

    def requested(self) -> None:
        """An ``<r/>`` went out."""
        self.awaiting = True
        self._requested_at = self.acked + len(self.unacked)

    def ack(self, h: int) -> int:
        """Apply the peer's ``<a h=''/>`` (*h* as on the wire, modulo 2**32).

        Returns:
            How many stanzas this ack newly covers (removed from :attr:`unacked`).

        Raises:
            HandledCountTooHigh: *h* covers stanzas we never sent (or goes backwards, which
                modulo 2**32 is the same thing).
        """
        newly = (h - self.acked) % MODULUS
        unacked = self.unacked
        if newly > len(unacked):
            raise HandledCountTooHigh(h, self.sent)
        if newly == len(unacked):
            self.unacked = _NONE_KEPT  # all acknowledged: the deque goes
            self.idle = True
        else:
            popleft = unacked.popleft
            for _ in range(newly):
                popleft()
        self.acked += newly
        self.awaiting = False
        return newly

    def take_unacked(self) -> list[bytes]:
        """Remove and return every unacknowledged stanza, oldest first (the stream is dead)."""
        out = list(self.unacked)
        self.unacked = _NONE_KEPT
        self.idle = True
        return out


class SmInbound:
    """Stanzas we received after ``<enable/>`` (or ``<enabled/>``) and whether each is handled.

    Each received stanza gets a sequence number (1, 2, ...); :meth:`handled` marks one done, in
    any order. :attr:`h` is the number of the last stanza of the longest handled prefix. The
    stanzas in flight are ``h + 1 .. received``: two counters, plus a set only while some
    finish ahead of an earlier one.

    Args:
        initial: the counter's starting value (0 on a new stream; tests use it to cross 2**32).
    """

    __slots__ = ("received", "h", "_done", "_owed")

    def __init__(self, *, initial: int = 0) -> None:
        #: stanzas received (unbounded)
        self.received = initial
        #: handled prefix (unbounded; the wire value is this modulo 2**32)
        self.h = initial
        #: handled sequence numbers above h + 1, waiting for an earlier one to finish (None:
        #: none, the common case of stanzas handled in order)
        self._done: set[int] | None = None
        #: an ack is owed once h reaches this (an <r/> arrived while stanzas were in flight)
        self._owed: int | None = None

    @property
    def in_flight(self) -> int:
        """Stanzas received but not yet handled."""
        return self.received - self.h - (len(self._done) if self._done else 0)

    def receive(self) -> int:
        """Count one inbound stanza; returns its sequence number for :meth:`handled`."""
        self.received += 1
        return self.received

    def handled(self, seq: int) -> bytes | None:
        """Stanza *seq* left this process (or was answered with an error).

        Returns:
            The ``<a/>`` owed to an earlier ``<r/>`` once everything before that request is
            handled, else None.
        """
        h = self.h
        if seq != h + 1 or seq > self.received:
            # ahead of an earlier one: kept aside; unknown or already counted: ignored (acks
            # never move backwards or twice)
            if h < seq <= self.received:
                if self._done is None:
                    self._done = set()
                self._done.add(seq)
            return None
        done = self._done
        if done:
            while seq + 1 in done:
                seq += 1
                done.discard(seq)
            if not done:
                self._done = None
        self.h = seq
        owed = self._owed
        if owed is not None and seq >= owed:
            self._owed = None
            return ack_bytes(seq)
        return None

    def handled_run(self, first: int, last: int) -> bytes | None:
        """Stanzas *first* .. *last* were handled, in that order: the same as :meth:`handled`
        for each of them (the data path reports a read's worth at once).

        Returns:
            As :meth:`handled`: the ``<a/>`` owed to an earlier ``<r/>``, once it is due.
        """
        done = self._done
        if first == self.h + 1 and last <= self.received and not (done and min(done) <= last):
            self.h = last - 1
            return self.handled(last)
        ack = None
        for seq in range(first, last + 1):  # behind a stanza still in flight, or odd input
            ack = self.handled(seq) or ack
        return ack

    def request(self) -> bytes | None:
        """The peer sent ``<r/>``: the ``<a/>`` to send now, or None if it is owed later.

        Answering at once when every stanza received so far is handled; otherwise when those
        are (see :meth:`handled`), so the ack covers everything the peer asked about.
        """
        if self.h == self.received:
            self._owed = None
            return ack_bytes(self.h)
        self._owed = self.received
        return None

    def final_ack(self) -> bytes:
        """The ``<a/>`` sent before our ``</stream:stream>`` (only what is handled)."""
        self._owed = None
        return ack_bytes(self.h)
