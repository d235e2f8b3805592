"""XmlStream: one S2S TCP connection on asyncio, performing a negotiation machine's actions.

Bytes in go (through TLS when it is up) to the framer, framer events to the machine, and the
machine's actions come back here: bytes to write, STARTTLS, timers, close. Everything the
machine says about domains (VerifyKey, Authenticated, Deliver, ...) goes to the owner (router).

Its parts live beside it: TLS (an ``ssl.SSLObject`` between MemoryBIOs) in
:mod:`s2sfast.net.tls_layer`, XEP-0198's per-batch bookkeeping in :mod:`s2sfast.net.sm_hooks`,
the batched bounded write side in :mod:`s2sfast.net.writer`. A new framer starts after TLS and
on every stream restart.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from s2sfast.framing import StreamClose, StreamFramer
from s2sfast.limits import (
    MAX_QUEUE_BYTES,
    MAX_WRITE_BUFFER,
    WRITE_STALL_TIMEOUT,
    pre_auth_limit,
)
from s2sfast.net.shaper import TokenBucket
from s2sfast.net.sm_hooks import SmHooks
from s2sfast.net.tls_layer import TLS_IN_SLICE, TLS_OUT_SLICE, TLS_READ_SIZE, TlsLayer
from s2sfast.net.writer import _HIGH_WATER, _LOW_WATER, BufferedWriter, is_stanza
from s2sfast.protocol.errors import (
    FramingError,
    LocalStreamError,
    StreamError,
    stream_error_bytes,
)
from s2sfast.protocol.events import (
    Authenticated,
    Close,
    ConnectionLost,
    Deliver,
    RestartStream,
    SendBytes,
    SetTimer,
    StartTls,
    TimerFired,
)

__all__ = [
    "BufferedWriter",
    "XmlStream",
    "StreamOwner",
    "CLOSE_TIMEOUT",
    "TLS_READ_SIZE",
    "WRITE_STALL_TIMEOUT",
    "is_stanza",
]

log = logging.getLogger("s2sfast.stream")

#: seconds we wait for the peer's ``</stream:stream>`` after sending ours (RFC 6120 4.4)
CLOSE_TIMEOUT = 2.0


class StreamOwner(Protocol):
    """What a stream reports to (the router)."""

    def stream_action(self, stream: XmlStream, action: Any) -> None: ...

    def stream_closed(self, stream: XmlStream) -> None: ...

    def stream_event(self, stream: XmlStream, kind: str, fields: dict[str, Any]) -> None: ...


class XmlStream(TlsLayer, SmHooks, BufferedWriter):
    """One TCP connection carrying one XMPP S2S stream (incoming or outgoing).

    Args:
        machine: an IncomingMachine or OutgoingMachine.
        owner: receives domain-level actions and the close notification.
        direction: ``"in"`` or ``"out"``.
        ssl_context: the context STARTTLS uses (None: TLS impossible).
        max_stanza_size: the framer's limit (None: unlimited).
        keepalive: seconds of write silence before a whitespace keepalive (None: never).
        idle_timeout: seconds of read silence after which an authenticated stream is closed
            with connection-timeout (None: never); whitespace keepalives count as traffic.
        max_rate: inbound bytes per second (the listener's shaper; None: unlimited).
        max_write_buffer: hard cap on bytes queued for the peer (for writers that ignore
            backpressure); beyond it the stream fails with resource-constraint.
        write_stall_timeout: seconds above the high-water mark without the peer reading
            before the stream fails with resource-constraint.
        max_queue: stanzas our own queue holds while the peer is not reading
            (``max_fsm_queue``); past it :meth:`write_stanza` refuses and the router bounces.
        direct_tls: Direct TLS (XEP-0368): the MemoryBIO TLS handshake starts at
            connection_made (the machine asks for it) and the stream opens inside TLS. An
            outgoing stream learns it from :func:`s2sfast.net.connect.connect_first`.

    Memory (10,000 idle TLS streams per node): the fields are slots (59: 504 bytes, under
    pymalloc's 512-byte limit, so no malloc block), and what only a busy or closing stream
    needs (the ``closed`` future, the writer's queue structures) is made on first use; the
    TLS handshake's objects and the ``on_connected`` callback are not kept past their use.
    """

    __slots__ = (
        "machine",
        "owner",
        "_deliver",
        "direction",
        "ssl_context",
        "direct_tls",
        "alpn",
        "max_stanza_size",
        "keepalive",
        "idle_timeout",
        "max_write_buffer",
        "on_connected",
        "transport",
        "link",
        "limiter",
        "inbound_keys",
        "peername",
        "framer",
        "authenticated",
        "auth_method",
        "_loop",
        "_bucket",
        "_resume",
        "_last_activity",
        "_ssl",
        "_in_bio",
        "_out_bio",
        "_handshaking",
        "_sm",
        "_batching",
        "_kept",
        "_run_first",
        "_run_last",
        "_stranded",
        "_timer",
        "_ka_timer",
        "_close_timer",
        "_last_write",
        "_close_sent",
        "_peer_closed",
        "_lost",
        "_closed",
    )

    def __init__(
        self,
        machine: Any,
        owner: StreamOwner,
        *,
        direction: str,
        ssl_context: ssl.SSLContext | None = None,
        direct_tls: bool = False,
        max_stanza_size: int | None = None,
        keepalive: float | None = None,
        on_connected: Callable[[XmlStream], None] | None = None,
        idle_timeout: float | None = None,
        max_rate: int | None = None,
        max_write_buffer: int = 4 * MAX_WRITE_BUFFER,
        write_stall_timeout: float = WRITE_STALL_TIMEOUT,
        max_queue: int | None = None,
    ) -> None:
        self.machine = machine
        self.owner = owner
        #: the owner's entry for Deliver, looked up once (Router.deliver_inbound: no action
        #: dispatch per stanza); an owner without one gets it through stream_action. The
        #: class's function, called with the owner: a bound method would cost 64 bytes a stream
        self._deliver = getattr(type(owner), "deliver_inbound", None)
        self.direction = direction
        self.ssl_context = ssl_context
        #: Direct TLS (XEP-0368) rather than plain TCP (with or without STARTTLS)
        self.direct_tls = direct_tls
        #: the ALPN protocol the TLS handshake agreed on (None: none, or no TLS)
        self.alpn: str | None = None
        self.max_stanza_size = max_stanza_size
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.max_write_buffer = max_write_buffer
        #: called once, from connection_made (then dropped: it may be a closure)
        self.on_connected = on_connected
        self.transport: asyncio.Transport | None = None
        #: owner's bookkeeping (the router's outbound link; the listener's connection limiter,
        #: which the owner drops when it refuses the connection)
        self.link: Any = None
        self.limiter: Any = None
        #: the stream ids the owner indexed this stream under (Router.inbound: dialback
        #: verify answers find it by them), so that its close removes exactly those
        self.inbound_keys: tuple[str, ...] = ()
        self.peername: Any = None
        self.framer = self._new_framer()
        #: the (local, remote) pairs authenticated on this stream, in order (a tuple: most
        #: streams carry one pair, and a set costs 216 bytes)
        self.authenticated: tuple[tuple[str, str], ...] = ()
        self.auth_method: str | None = None
        self._loop = asyncio.get_event_loop()
        self._init_writer(
            max_queue=max_queue, max_queue_bytes=MAX_QUEUE_BYTES, stall_timeout=write_stall_timeout
        )
        self._bucket = TokenBucket(max_rate, now=self._loop.time()) if max_rate else None
        self._resume: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()
        self._ssl: ssl.SSLObject | None = None
        self._in_bio: ssl.MemoryBIO | None = None
        self._out_bio: ssl.MemoryBIO | None = None
        self._handshaking = False
        #: the machine speaks XEP-0198 (its data-path hooks: sm_out.keep, sent_batch, handled)
        self._sm = hasattr(machine, "sent")
        #: a _batch_end is scheduled (XEP-0198: stanzas were kept since the last one)
        self._batching = False
        #: XEP-0198: stanzas kept since the machine last decided on <r/> and its ack timer
        self._kept = 0
        #: XEP-0198: the run of inbound stanzas handled in order within this read, not yet
        #: told to the machine (_run_last 0: none; -1: not inside a read)
        self._run_first = 0
        self._run_last = -1
        #: once the peer stopped reading (see deaf): the stanzas it never got (None before)
        self._stranded: list[bytes] | tuple[()] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ka_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._last_write = self._last_activity
        self._close_sent = False
        self._peer_closed = False
        self._lost = False
        self._closed: asyncio.Future[None] | None = None

    @property
    def deaf(self) -> bool:
        """We failed the stream because the peer stopped reading (what waits for it bounces)."""
        return self._stranded is not None

    @property
    def _counted(self) -> bool:
        """XEP-0198 counts what this stream writes (the writer then keeps no record of it)."""
        return not self._track_recent

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the connection is lost (made when first asked for)."""
        fut = self._closed
        if fut is None:
            fut = self._closed = self._loop.create_future()
            if self._lost:
                fut.set_result(None)
        return fut

    # --- identity for logs and connections() ---------------------------------------------------

    @property
    def tls(self) -> bool:
        return self._ssl is not None and not self._handshaking

    @property
    def writable(self) -> bool:
        """Whether stanzas written now will still reach the peer."""
        return not (self._lost or self._close_sent or self.machine.closed)

    @property
    def stream_id(self) -> str | None:
        return getattr(self.machine, "stream_id", None)

    def describe(self) -> str:
        m = self.machine
        local = getattr(m, "local", None)
        remote = getattr(m, "remote", None) or getattr(m, "peer_from", None)
        return f"{self.direction} {local}<->{remote} id={self.stream_id}"

    def _new_framer(self) -> Any:
        # until a domain pair is authenticated an unknown peer gets a small element budget
        authenticated = bool(getattr(self, "authenticated", None))
        limit = self.max_stanza_size if authenticated else pre_auth_limit(self.max_stanza_size)
        return StreamFramer(max_stanza_size=limit)

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peername = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=_HIGH_WATER, low=_LOW_WATER
        )
        self._last_write = self._loop.time()
        on_connected = self.on_connected
        if on_connected is not None:
            self.on_connected = None
            on_connected(self)
        if self.machine.state in self.machine.FINAL:
            return  # refused by the owner (connection limits)
        if self.direct_tls:  # XEP-0368: TLS from the first byte, the machine asks for it
            self._perform(self.machine.start(direct_tls=True))
        else:
            self._perform(self.machine.start())
        if self._tick_interval():
            self._ka_timer = self._loop.call_later(self._tick_interval(), self._keepalive_tick)

    def data_received(self, data: bytes) -> None:
        if self._lost:
            return
        if self._close_sent and self.machine.state in self.machine.FINAL:
            return  # after our stream error: discard, the close timer ends the connection
        self._last_activity = now = self._loop.time()
        if self._bucket is not None:
            pause = self._bucket.consume(len(data), now)
            if pause and self.transport is not None and self._resume is None:
                self._shaped = True
                self._update_reading()
                self._resume = self._loop.call_later(pause, self._resume_reading)
        if self._ssl is None:
            self._feed(data)
            return
        assert self._in_bio is not None
        if len(data) > TLS_IN_SLICE:
            self._tls_received_sliced(data)
            return
        self._in_bio.write(data)
        if self._handshaking:
            self._handshake()
            if self._handshaking or self._ssl is None:
                return
        self._read_tls()

    # --- backpressure ---------------------------------------------------------------------------

    def _writer_open(self) -> bool:
        return not (self._lost or self._close_sent or self.transport is None)

    def _stalled(self) -> None:
        if self._lost:
            return
        self._stranded = self._never_sent() if self._track_recent else ()
        size = self.transport.get_write_buffer_size() if self.transport else 0
        log.warning("%s: peer stopped reading (%d bytes queued)", self.describe(), size)
        self._perform(
            self.machine.fail(
                LocalStreamError("resource-constraint", "the peer does not read its stream")
            )
        )
        self.abort()  # the error cannot get through a full pipe either
        self._wake_drained()

    def _resume_reading(self) -> None:
        self._resume = None
        self._shaped = False
        if not self._lost:
            self._update_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._writer_lost()
        for handle in (self._timer, self._ka_timer, self._close_timer, self._resume):
            if handle is not None:
                handle.cancel()
        if not self.machine.closed or self.machine.state == "CLOSING":
            reason = str(exc) if exc else "connection closed by peer"
            try:
                self._perform(self.machine.receive(ConnectionLost(reason=reason)))
            except StreamError:
                pass
        log.info("stream closed: %s", self.describe())
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self.owner.stream_closed(self)

    # --- input path ----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            events = self.framer.feed(data)
        except FramingError as exc:
            if not self.tls and data[:1] == b"\x16":
                exc = FramingError(
                    exc.condition, "TLS record on a plaintext stream (use STARTTLS)", exc.offset
                )
            log.warning("framing error on %s: %s", self.describe(), exc)
            self._fail(exc)
            return
        framer = self.framer
        machine = self.machine
        final = machine.FINAL
        self._run_last = 0  # XEP-0198: handled stanzas are told to the machine per run
        try:
            for event in events:
                if self._lost:
                    return
                if type(event) is StreamClose:
                    self._end_run()  # the machine's last <a/> covers what was handled
                    self._peer_closed = True
                    if self._close_sent:
                        self._shutdown()
                        return
                if machine.state in final:
                    return
                self._perform(machine.receive(event))
                if self.framer is not framer:
                    return  # STARTTLS: what follows is TLS, never XML
        finally:
            self._end_run()
            self._run_last = -1

    def fail(self, exc: StreamError) -> None:
        """Fail the stream with *exc*: our header if due, ``<stream:error/>``, close."""
        self._fail(exc)

    def _fail(self, exc: StreamError) -> None:
        if self.machine.state in self.machine.FINAL:
            self._shutdown()
            return
        self._perform(self.machine.fail(exc))

    def feed_event(self, event: Any) -> None:
        """Deliver a non-wire event (VerifyRequest, VerifyResult) to the machine."""
        if self._lost or self.machine.state in self.machine.FINAL:
            return
        self._perform(self.machine.receive(event))

    # --- actions -------------------------------------------------------------------------------

    def _perform(self, actions: list[Any]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Deliver:  # the data path first: one per inbound stanza
                if self._deliver is not None:
                    self._deliver(self.owner, self, action)
                else:
                    self.owner.stream_action(self, action)
            elif kind is SendBytes:
                self.write(action.data)
            elif kind is SetTimer:
                self._set_timer(action.seconds)
            elif kind is StartTls:
                self._start_tls(action)
            elif kind is RestartStream:
                self.framer = self._new_framer()  # SASL success: a new stream begins
            elif kind is Close:
                self._close(action)
            else:
                if kind is Authenticated:
                    if not self.authenticated:  # the configured limit from now on
                        self.framer.max_stanza_size = self.max_stanza_size
                    pair = (action.local, action.remote)
                    if pair not in self.authenticated:
                        own = getattr(self.machine, "authorised", None)
                        if not self.authenticated and type(own) is tuple and own == (pair,):
                            self.authenticated = own  # the machine's own (immutable) tuple
                        else:
                            self.authenticated += (pair,)
                    self.auth_method = action.method
                    log.info(
                        "stream authenticated (%s): %s %s->%s id=%s",
                        action.method,
                        self.direction,
                        action.remote if self.direction == "in" else action.local,
                        action.local if self.direction == "in" else action.remote,
                        self.stream_id,
                    )
                self.owner.stream_action(self, action)

    def _set_timer(self, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if seconds is not None and not self._lost:
            self._timer = self._loop.call_later(seconds, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._close_sent:
            self._shutdown()
            return
        self.feed_event(TimerFired())

    def _tick_interval(self) -> float | None:
        periods = [p for p in (self.keepalive, self.idle_timeout) if p]
        return min(periods) / 2 if periods else None

    def _keepalive_tick(self) -> None:
        """Housekeeping: whitespace keepalives out, idle authenticated streams closed."""
        self._ka_timer = None
        if self._lost or self._close_sent:
            return
        now = self._loop.time()
        # idle: nothing from the peer (its keepalives count) and no stanza of ours either, so a
        # busy outbound stream to a peer that never writes back (ejabberd) is not torn down
        idle = now - self._last_activity
        if self.idle_timeout and self.authenticated and idle > self.idle_timeout:
            self._fail(LocalStreamError("connection-timeout", f"idle for {self.idle_timeout:g} s"))
            return
        if self.keepalive and self.authenticated:
            if now - self._last_write >= self.keepalive:
                self.write(b" ")
        interval = self._tick_interval()
        if interval:
            self._ka_timer = self._loop.call_later(interval, self._keepalive_tick)

    def _close(self, action: Close) -> None:
        if action.condition:
            log.warning("stream error %s on %s: %s", action.condition, self.describe(), action.text)
        else:
            log.info("closing %s: %s", self.describe(), action.text)
        if not self._close_sent and not self._lost:
            data = b""
            if action.condition:
                data = stream_error_bytes(action.condition, action.text)
            self.write(data + b"</stream:stream>")
            self._close_sent = True
            if action.condition and self._ssl is None and self.transport is not None:
                # FIN right after the error: a peer still sending then reads it, never an RST
                self._flush(force=True)
                if self.transport.can_write_eof():
                    try:
                        self.transport.write_eof()
                    except OSError:
                        pass  # the peer is already gone (ENOTCONN): nothing left to tell it
        if self._peer_closed or self._handshaking:
            self._shutdown()
        elif self._close_timer is None and not self._lost:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._shutdown)

    def close(self, reason: str = "closing") -> None:
        """Close the stream cleanly (``</stream:stream>``, wait for the peer's, close TCP)."""
        if self._lost or self._close_sent:
            return
        if self.machine.state in self.machine.FINAL:
            self._shutdown()
            return
        if not self.authenticated and reason == "shutdown":
            # mid-negotiation peers learn why (RFC 6120 4.9.3.20)
            self._perform(self.machine.fail(LocalStreamError("system-shutdown", "node stopping")))
            return
        self._perform(self.machine.close(reason))

    def abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def _shutdown(self) -> None:
        """Flush what we have and close TCP (after a TLS close_notify when TLS is up)."""
        if self._lost or self.transport is None:
            return
        self._flush(force=True)
        if self._ssl is not None and not self._handshaking:
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._drain_bio()
        self.transport.close()

    # --- output path ---------------------------------------------------------------------------

    def write_stanza(self, raw: bytes) -> bool:
        """Queue one stanza for the peer (bounded: False when our queue is full or the stream
        is closing); the machine counts and keeps it (XEP-0198: until acknowledged)."""
        if self._lost or self._close_sent or self.transport is None:
            return False
        if self._wpaused and (
            len(self._wbuf) >= self.max_queue or self._wbuf_size >= self.max_queue_bytes
        ):
            return False
        sm = self.machine.sm_out if self._sm else None
        if sm is None:
            self._queue(raw)
        else:
            if not self._batching:  # the first of a batch (the rest only append)
                self._keep_batch()
            sm.keep(raw)
            self._queue(raw)
            self._kept += 1
            if self._kept >= sm.request_every:
                self._sm_sent()  # a long burst asks every ack_freq stanzas, as configured
        if self.on_stanza_sent is not None:
            self.on_stanza_sent(raw)
        return True

    def write_stanzas(self, raws: list[bytes]) -> None:
        """Write stanzas that were already accepted (a pending queue going out: not bounded
        again), each counted and kept by the machine (XEP-0198: until acknowledged; its
        ``<r/>`` and ack timer are performed here)."""
        if not raws or self._lost or self._close_sent:
            return
        sm = self.machine.sm_out if self._sm else None
        if sm is not None:
            self._keep_batch()
            sm.keep_all(raws)
            self._kept += len(raws)
        for raw in raws:
            self._queue(raw)

    def _flush(self, force: bool = False) -> None:
        if self._kept and (force or not self._wpaused):
            self._sm_sent()  # XEP-0198: a write that carries kept stanzas carries their <r/>
        super()._flush(force)

    def take_unsent(self) -> list[bytes]:
        """The stanzas that never left this process, removed: those in our own queue, and
        (after the peer went deaf) those still whole in the transport's buffer. None when
        XEP-0198 counted them (the machine hands back every unacknowledged one)."""
        if self._counted:
            self._wbuf = ()
            self._wbuf_size = 0
            return []
        stranded = self._stranded
        if stranded:
            self._stranded = ()  # (still deaf)
            return [*stranded, *super().take_unsent()]
        return super().take_unsent()

    def write(self, data: bytes) -> None:
        """Queue *data* (control bytes) for the peer; writes coalesce until the loop's next turn.

        Stanzas go through :meth:`write_stanza`, which is bounded.
        """
        if self._lost or self._close_sent or not data:
            return
        self._queue(data)

    def _unsent_bytes(self) -> int:
        # TLS record overhead is counted against us: only stanzas surely whole are claimed
        left = self.transport.get_write_buffer_size()
        return left - 64 * (left // 16384 + 1) if self._ssl is not None else left

    def _emit(self, data: bytes) -> None:
        if self._lost or self.transport is None:
            return
        self._last_write = now = self._loop.time()
        if data != b" ":  # our own stanzas are activity; our keepalives are not
            self._last_activity = now
        if self._ssl is None:
            self.transport.write(data)
            self._check_backlog()
            return
        if self._handshaking:
            log.error("dropping %d bytes written during the TLS handshake", len(data))
            return
        try:
            if len(data) <= TLS_OUT_SLICE:
                self._ssl.write(data)
                self._drain_bio()
            else:
                self._write_tls_sliced(data)
        except ssl.SSLError as exc:
            log.warning("TLS write failed on %s: %s", self.describe(), exc)
            self._abort_soon()
            return
        self._check_backlog()

    def _check_backlog(self) -> None:
        """A peer that does not read must not make us buffer without bound."""
        if self.transport is None or self._close_sent:
            return
        size = self.transport.get_write_buffer_size()
        if size > self.max_write_buffer:
            log.warning("%s: peer does not read (%d bytes queued)", self.describe(), size)
            self._perform(
                self.machine.fail(
                    LocalStreamError("resource-constraint", "the peer does not read its stream")
                )
            )
            self._abort_soon()  # the error cannot get through a full pipe either

    def _abort_soon(self) -> None:
        """Abort on the loop's next turn: a write may come from inside the transport's own
        write callback (``_write_ready`` -> ``resume_writing`` -> flush -> here). An abort
        there clears the buffer it is draining, and ``_write_ready`` then sees it empty on a
        closing transport and delivers ``connection_lost`` itself, before the one the abort
        scheduled (asyncio 3.11): the second call fails inside asyncio. A SIGTERM test
        bouncing megabytes to a peer that read too slowly hit it."""
        self._loop.call_soon(self.abort)
