"""XEP-0114 component listener on asyncio: performs :class:`ComponentMachine`'s actions.

The sans-IO protocol (handshake, addressing checks, namespace rebinding) lives in
:mod:`s2sfast.protocol.component`; this module owns sockets, timers, the shaper and the
registry of which connected component serves which domain.

With a router (``ComponentServer.router``, the node's), a component connection is a route like
any other: stanzas it sends are checked (addressing from the framer's fields) and handed to
``router.route`` as the framer's Stanza, stanzas for its domain arrive through
:meth:`ComponentConnection.deliver`. Writes are batched per loop iteration and bounded
(``max_fsm_queue``); while the component does not read, the streams feeding it are not read
either, and a component stuck past ``stall_timeout`` is closed with resource-constraint and
what waited for it bounced.

Shutdown drains before it closes (:meth:`ComponentServer.begin_drain`, ``drain``, ``close``):
reading resumes whatever backpressure paused, every stanza read
is routed where its destination takes it at once and bounced to the component with
``service-unavailable`` where it does not (the stream is still open, so the error can reach
it), until the component falls silent; only then does ``</stream:stream>`` go out, and the
component's last stanzas are still read until its own close (RFC 6120 4.4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from s2sfast.config.service import ListenService
from s2sfast.framing import Stanza
from s2sfast.limits import (
    COMPONENT_CLOSE_TIMEOUT,
    COMPONENT_DRAIN_QUIET,
    COMPONENT_DRAIN_TIMEOUT,
    COMPONENT_STALL_TIMEOUT,
    HIGH_WATER,
    LOW_WATER,
    MAX_QUEUE_BYTES,
)
from s2sfast.net.writer import BufferedWriter
from s2sfast.protocol.component import (
    _CONTENT_NS,
    COMPONENT_NS,
    HANDSHAKE_TIMEOUT,
    ComponentMachine,
    ComponentUp,
    Route,
    Shutdown,
    rebind_namespace,
)
from s2sfast.protocol.errors import LocalStreamError, StreamError
from s2sfast.protocol.events import Action, Close, ConnectionLost, SendBytes, SetTimer, TimerFired
from s2sfast.server.component_drain import Draining, drain_connections

__all__ = ["ComponentRegistry", "ComponentConnection", "ComponentServer"]

log = logging.getLogger("s2sfast.component")


class ComponentRegistry:
    """Which connected component serves which domain (shared by all component listeners)."""

    def __init__(self) -> None:
        self._by_domain: dict[str, ComponentConnection] = {}

    def get(self, domain: str) -> ComponentConnection | None:
        return self._by_domain.get(domain.lower())

    def domains(self) -> tuple[str, ...]:
        return tuple(self._by_domain)

    def connections(self) -> tuple[ComponentConnection, ...]:
        return tuple(self._by_domain.values())

    def _register(self, domain: str, conn: ComponentConnection) -> ComponentConnection | None:
        old = self._by_domain.get(domain)
        self._by_domain[domain] = conn
        return old if old is not conn else None

    def _unregister(self, domain: str, conn: ComponentConnection) -> None:
        if self._by_domain.get(domain) is conn:
            del self._by_domain[domain]


#: (component domain, routed stanza) -> None; called for every stanza a component sends
OnRoute = Callable[[str, Route], None]
#: (domain, up) -> None; called when a component starts or stops serving a domain
OnChange = Callable[[str, bool], None]


class ComponentConnection(Draining, BufferedWriter):
    """One component's TCP connection: framer in, :class:`ComponentMachine`, bytes out."""

    def __init__(self, server: ComponentServer) -> None:
        self._server = server
        self.transport: Any = None
        self._framer: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._tokens = float(server.listen.max_rate or 0)
        self._last = 0.0
        self._paused = False
        #: shutdown: reading no longer pauses; stanzas are routed or bounced (begin_drain)
        self._draining = False
        #: while draining: destination domain -> the congested destination that took its last
        #: stanza (the next ones bounce until it drains)
        self._drain_blocked: dict[str, Any] = {}
        self._drain_routed = 0
        self._drain_bounced = 0
        #: stanzas that arrived after our </stream:stream> and that nothing could take
        self._late_unanswered = 0
        self._last_in = 0.0
        #: our </stream:stream> (or stream error) has been written: nothing more may follow it
        self._close_sent = False
        self.machine = server._new_machine()
        self._init_writer(
            max_queue=server.listen.max_fsm_queue or server.max_fsm_queue,
            max_queue_bytes=MAX_QUEUE_BYTES,
            stall_timeout=server.stall_timeout,
        )

    @property
    def _transport(self) -> Any:
        return self.transport

    @property
    def domain(self) -> str | None:
        return self.machine.domain if self.machine.state == "OPEN" else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from s2sfast.framing import StreamFramer

        # a stream transport, but not always an asyncio.Transport subclass (uvloop's are not)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        limit = self._server.listen.max_stanza_size
        self._framer = StreamFramer(max_stanza_size=limit, default_ns=COMPONENT_NS)
        self._last = asyncio.get_running_loop().time()
        self._server._connections.add(self)
        log.info("component stream %s from %s: connected", self.machine.stream_id, self._peer)
        self._perform(self.machine.start())

    def data_received(self, data: bytes) -> None:
        machine = self.machine
        if machine.state in machine.FINAL:
            return
        if self._draining:
            self._last_in = self._loop.time()
        else:
            self._shape(len(data))
        try:
            events = self._framer.feed(data)
        except StreamError as exc:
            self._perform(machine.fail(exc))
            return
        router = self._server.router
        for event in events:
            # OPEN is not closed: the common case skips the machine's closed property
            if router is not None and type(event) is Stanza and machine.state == "OPEN":
                # the data path: checked from the framer's fields, routed as the framed bytes
                try:
                    machine.check_stanza(event)
                except StreamError as exc:
                    self._perform(machine.fail(exc))
                    break
                self._route(router, event)
            elif router is not None and type(event) is Stanza and machine.state == "CLOSING":
                try:
                    machine.check_stanza(event)
                except StreamError as exc:
                    self._perform(machine.fail(exc))
                    break
                self._route_late(router, event)
            elif machine.state in machine.FINAL:
                break
            else:
                self._perform(machine.receive(event))

    def _route(self, router: Any, stanza: Stanza) -> None:
        metrics = self._server.metrics
        if metrics is not None:
            metrics.component_stanzas.labels("in").inc()
        if stanza.declares_ns:
            stanza = self._in_server_ns(stanza)
        if self._draining:
            self._route_draining(router, stanza)
            return
        try:
            router.route(stanza, self)
        except ValueError as exc:  # not from a local domain (check_from = false lets it in)
            self._refuse(stanza, exc)

    @staticmethod
    def _in_server_ns(stanza: Stanza) -> Stanza:
        """The rare stanza whose start tag declares its own namespace (``<message
        xmlns='jabber:client'>``), rebuilt with lxml into jabber:server and framed again (one
        place for the component's reading path and for what it sends after our close)."""
        from s2sfast.router import stanza_from_bytes

        return stanza_from_bytes(rebind_namespace(stanza.raw, _CONTENT_NS, "jabber:server", True))

    def _refuse(self, stanza: Stanza, exc: ValueError) -> None:
        """A stanza the component may not send: answered ``not-allowed``."""
        from s2sfast.server.builtin import error_reply

        log.warning("component %s: cannot route: %s", self.machine.domain, exc)
        reply = error_reply(stanza.raw, "not-allowed", str(exc))
        if reply is not None:
            self.write_stanza(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.machine.state not in self.machine.FINAL:
            reason = str(exc) if exc else "connection closed by the component"
            self._perform(self.machine.receive(ConnectionLost(reason=reason)))
            log.info(
                "component stream %s (%s): lost: %s",
                self.machine.stream_id,
                self.machine.domain or self._peer,
                reason,
            )
        if self._late_unanswered:
            log.warning(
                "component stream %s (%s): %d stanza(s) sent after our </stream:stream> "
                "could be neither routed nor bounced",
                self.machine.stream_id,
                self.machine.domain,
                self._late_unanswered,
            )
        self._cancel_timer()
        self._server._connections.discard(self)
        if self.machine.domain:
            self._server._down(self.machine.domain, self)
        self._writer_lost()
        self._bounce_unsent("the component disconnected")
        self.transport = None
        if not self._closed.done():
            self._closed.set_result(None)

    # the node's side

    def deliver(self, stanza: Any) -> bool:
        """Route target: write *stanza* to the component (bounded, batched per loop iteration).

        Returns False when it is not (or no longer) serving, or its queue is full.
        """
        if self.machine.state != "OPEN":
            return False
        raw = stanza.raw
        if stanza.declares_ns:  # rare: rebuilt with lxml into the component's namespace
            raw = rebind_namespace(raw, "jabber:server", COMPONENT_NS, True)
        if not self.write_stanza(raw):
            return False
        metrics = self._server.metrics
        if metrics is not None:
            metrics.component_stanzas.labels("out").inc()
        return True

    def send(self, raw: bytes) -> bool:
        """Write a stanza (bytes) to the component; False when it is not (or no longer) serving.

        Raises:
            ValueError: *raw* is not exactly one stanza.
        """
        from s2sfast.router import stanza_from_bytes

        return self.deliver(stanza_from_bytes(bytes(raw)))

    def _writer_open(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing() and not self.machine.closed

    def _emit(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _stalled(self) -> None:
        """The component has not read what we wrote for stall_timeout: close it, bounce."""
        self._cut(
            "resource-constraint", f"the component did not read for {self.write_stall_timeout:g} s"
        )

    def _cut(self, condition: str, text: str) -> None:
        """Close a component that does not read what we owe it: bounce what it never got
        (to senders still able to hear it), then the stream error, then abort."""
        if self.machine.closed or self.transport is None:
            return
        stranded = self._never_sent()
        log.warning(
            "component stream %s (%s): stuck, %d stanzas queued: closing",
            self.machine.stream_id,
            self.machine.domain,
            len(stranded) + self.queued,
        )
        self._bounce_unsent(text, stranded)
        self._perform(self.machine.fail(LocalStreamError(condition, text)))
        if self.transport is not None:
            self.transport.abort()  # the error cannot get through a full pipe either

    def _bounce_unsent(self, text: str, stranded: list[bytes] | None = None) -> None:
        """Bounce what never left for the component: our queue, and *stranded* (what was
        still whole in the transport's buffer when we gave up on it)."""
        unsent = (stranded or []) + self.take_unsent()
        router = self._server.router
        if not unsent or router is None:
            return
        domain = self.machine.domain or "?"
        log.info("component %s: bouncing %d queued stanza(s): %s", domain, len(unsent), text)
        for raw in unsent:
            router.bounce(raw, domain, "service-unavailable", text)

    def shutdown(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream: cleanly when *condition* is None, else with that stream error.

        A clean close sends ``</stream:stream>`` and keeps reading until the component's own
        (bounded by the machine's close_timeout); see :meth:`_route_late`.
        """
        if not self.machine.closed:
            self._perform(self.machine.receive(Shutdown(condition=condition, text=text)))

    async def wait_closed(self) -> None:
        await self._closed

    # internals

    def _shape(self, size: int) -> None:
        """A token bucket for [shaper] max_rate: pause reading while the component is over it."""
        rate = self._server.listen.max_rate
        if not rate or self._transport is None:
            return
        now = asyncio.get_running_loop().time()
        self._tokens = min(float(rate), self._tokens + (now - self._last) * rate) - size
        self._last = now
        if self._tokens < 0 and not self._paused:
            self._paused = self._shaped = True
            self._update_reading()
            asyncio.get_running_loop().call_later(-self._tokens / rate, self._resume)

    def _resume(self) -> None:
        self._paused = self._shaped = False
        self._update_reading()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self.machine.closed:
            self._perform(self.machine.receive(TimerFired()))

    def _perform(self, actions: list[Action] | list[Any]) -> None:
        for action in actions:
            if isinstance(action, SendBytes):
                transport = self.transport
                if transport is not None and not transport.is_closing():
                    self._queue(action.data)
            elif isinstance(action, SetTimer):
                self._cancel_timer()
                if action.seconds is not None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(action.seconds, self._on_timer)
            elif isinstance(action, ComponentUp):
                log.info(
                    "component stream %s from %s: authenticated, serving %s",
                    self.machine.stream_id,
                    self._peer,
                    action.domain,
                )
                self._server._up(action.domain, self)
            elif isinstance(action, Route):
                self._server._route(self.machine.domain or "", action)
            elif isinstance(action, Close):
                self._close(action)

    def _close(self, action: Close) -> None:
        transport = self._transport
        domain = self.machine.domain or "?"
        if self._draining and (self._drain_routed or self._drain_bounced):
            log.info(
                "component stream %s (%s): drained: %d stanza(s) routed, %d bounced",
                self.machine.stream_id,
                domain,
                self._drain_routed,
                self._drain_bounced,
            )
            self._drain_routed = self._drain_bounced = 0
        if action.condition:
            from s2sfast.protocol.errors import stream_error_bytes

            log.info(
                "component stream %s from %s (%s): closing with %s: %s",
                self.machine.stream_id,
                self._peer,
                domain,
                action.condition,
                action.text,
            )
            payload = stream_error_bytes(action.condition, action.text) + b"</stream:stream>"
        else:
            log.info(
                "component stream %s from %s (%s): closed: %s",
                self.machine.stream_id,
                self._peer,
                domain,
                action.text,
            )
            payload = b"</stream:stream>"
        if transport is not None and not transport.is_closing():
            if not self._close_sent:
                self._close_sent = True
                self._queue(payload)
            self._flush(force=True)
            if self.machine.state == "CLOSING":
                # RFC 6120 4.4: keep reading until the component closes (or the timer fires)
                self._held_by.clear()
                self._shaped = False
                self._update_reading()
            else:
                transport.close()
        if self.machine.domain and self.machine.state != "OPEN":
            self._server._down(self.machine.domain, self)


class ComponentServer:
    """One ``[[listen.service]]`` listener: accepts components and keeps the registry current.

    Args:
        listen: the listener's options.
        registry: shared by every component listener of the node (conflicts span them).
        is_hosted: domain -> whether the node hosts it (a host or a subdomain of one).
        on_route: called with (component domain, :class:`Route`) for each stanza a component sends.
        on_change: called with (domain, True/False) when a component starts/stops serving it.
        state_timeout: seconds for the header and the handshake.
        stall_timeout: seconds a component may leave its stream congested before it is closed.
        max_fsm_queue: stanzas queued per component when the listener does not say
            (``[general] max_fsm_queue``; None: s2sfast.limits.MAX_FSM_QUEUE).
        close_timeout: seconds a component has, after our ``</stream:stream>``, to send its
            own before the connection is cut.
    """

    def __init__(
        self,
        listen: ListenService,
        *,
        registry: ComponentRegistry,
        is_hosted: Callable[[str], bool],
        on_route: OnRoute,
        on_change: OnChange | None = None,
        state_timeout: float | None = HANDSHAKE_TIMEOUT,
        stall_timeout: float = COMPONENT_STALL_TIMEOUT,
        max_fsm_queue: int | None = None,
        close_timeout: float | None = COMPONENT_CLOSE_TIMEOUT,
    ) -> None:
        self.listen = listen
        self._close_timeout = close_timeout
        self.stall_timeout = stall_timeout
        self.max_fsm_queue = max_fsm_queue
        #: the node's router: stanzas go straight to it (None: through on_route, as Route)
        self.router: Any = None
        #: s2sfast.server.metrics.Metrics or None
        self.metrics: Any = None
        self.registry = registry
        self._is_hosted = is_hosted
        self._on_route = on_route
        self._on_change = on_change
        self._state_timeout = state_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[ComponentConnection] = set()

    async def start(self) -> None:
        """Bind and listen (``listen.port`` 0 picks a free port; see :attr:`addresses`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ComponentConnection(self),
            self.listen.ip_address,
            self.listen.port,
            backlog=self.listen.backlog,
        )
        for host, port in self.addresses:
            log.info("component listener on %s port %d", host, port)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop_accepting(self) -> None:
        """Close the listening sockets; the component connections stay (until :meth:`close`).

        ``Server.wait_closed`` is left to :meth:`close`: from Python 3.12.1 on it also waits
        for every connection the server accepted, which would hold the shutdown here until the
        components went away by themselves.
        """
        if self._server is not None:
            self._server.close()

    def begin_drain(self) -> None:
        """Shutdown, first step: stop accepting, and read every component whatever paused it,
        routing or bouncing what it sends (:meth:`ComponentConnection.begin_drain`)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            try:  # each connection on its own: one failure never stops the others
                conn.begin_drain()
            except Exception as exc:
                log.warning("component stream %s: cannot drain: %s", conn.machine.stream_id, exc)

    async def drain(
        self,
        quiet: float = COMPONENT_DRAIN_QUIET,
        timeout: float = COMPONENT_DRAIN_TIMEOUT,
        *,
        caught_up: bool = False,
        stuck_only: bool = False,
    ) -> None:
        """Wait until every draining component has sent nothing for *quiet* seconds (what it
        sent is read, and routed or bounced), at most *timeout* seconds.

        With *caught_up* (the last step before the streams close): also until each has read
        what we owe it (bounces, stanzas for it) down to the low-water mark; one still behind
        at *timeout* is cut (system-shutdown), what it never got bounced
        while every other component can still hear the bounce. With *stuck_only* (the daemon's
        drain before the S2S streams close) only one that read nothing meanwhile is cut.
        """
        await drain_connections(
            [c for c in self._connections if c._draining],
            quiet,
            timeout,
            caught_up=caught_up,
            stuck_only=stuck_only,
        )

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, drain (:meth:`begin_drain`, :meth:`drain` with *caught_up*), close
        every component stream with ``</stream:stream>``, read each until the component
        closes too (RFC 6120 4.4), and cut what is still open after *timeout* seconds
        (default: the machines' close_timeout, plus one for the last writes)."""
        self.begin_drain()
        await self.drain(caught_up=True)
        connections = list(self._connections)
        for conn in connections:
            try:  # each connection on its own: one failure never stops the others
                conn.shutdown(None, "the node is shutting down")
            except Exception as exc:
                log.warning("component stream %s: cannot close: %s", conn.machine.stream_id, exc)
        if timeout is None:
            timeout = (self._close_timeout or 0.0) + 1.0
        if connections:
            await asyncio.wait(
                [asyncio.ensure_future(c.wait_closed()) for c in connections], timeout=timeout
            )
        for conn in connections:
            if conn._transport is not None:
                conn._transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # called by connections

    def _new_machine(self) -> ComponentMachine:
        kick_old = self.listen.conflict_behaviour == "kick_old"
        return ComponentMachine(
            password=self.listen.password,
            is_hosted=self._is_hosted,
            is_taken=(lambda domain: False)
            if kick_old
            else (lambda domain: self.registry.get(domain) is not None),
            check_from=self.listen.check_from,
            state_timeout=self._state_timeout,
            close_timeout=self._close_timeout,
        )

    def _up(self, domain: str, conn: ComponentConnection) -> None:
        old = self.registry._register(domain, conn)
        if old is not None:
            old.shutdown("conflict", f"a newer component connected for {domain}")
        if self._on_change is not None:
            self._on_change(domain, True)
        if self.router is not None:
            self.router.add_route(domain, conn)

    def _down(self, domain: str, conn: ComponentConnection) -> None:
        if self.registry.get(domain) is conn:
            self.registry._unregister(domain, conn)
            if self.router is not None:
                self.router.remove_route(domain, conn)
            if self._on_change is not None:
                self._on_change(domain, False)

    def _route(self, domain: str, route: Route) -> None:
        self._on_route(domain, route)
