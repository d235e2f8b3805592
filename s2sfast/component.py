"""XEP-0114 (Jabber Component Protocol), accept side: the sans-IO machine and its asyncio server.

An external component (a bot, a gateway) opens ``<stream:stream xmlns='jabber:component:accept'
to='DOMAIN'>``, we answer with a header carrying a fresh stream id, it sends
``<handshake>hex(SHA1(id + password))</handshake>`` and we answer ``<handshake/>``. From then on
it serves DOMAIN: stanzas for DOMAIN go to it, and what it sends is routed on (over S2S).

Failures follow XEP-0114 and RFC 6120: a DOMAIN the node does not host (one of its hosts or a
subdomain of one) gets ``host-unknown``, a wrong handshake ``not-authorized``, a second
component for a served domain ``conflict`` (or, with ``conflict_behaviour = "kick_old"``, the old
one gets ``conflict``), a stanza whose ``from`` lies outside DOMAIN ``invalid-from`` (with
``check_from``).

:class:`ComponentMachine` does no I/O (events in, actions out, one transition table, sticky
errors); :class:`ComponentServer` and :class:`ComponentConnection` perform its actions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from lxml import etree

from s2sfast.config_service import ListenService
from s2sfast.errors import STREAM_NS, LocalStreamError, RemoteStreamError, StreamError
from s2sfast.events import Action, Close, ConnectionLost, SendBytes, SetTimer, TimerFired
from s2sfast.negotiation import Machine, jid_domain, valid_domain

__all__ = [
    "COMPONENT_NS",
    "HANDSHAKE_TIMEOUT",
    "ComponentUp",
    "Route",
    "Shutdown",
    "ComponentMachine",
    "handshake_digest",
    "ComponentRegistry",
    "ComponentConnection",
    "ComponentServer",
]

log = logging.getLogger("s2sfast.component")

COMPONENT_NS = "jabber:component:accept"
#: seconds a component has to send its header and then its handshake (Prosody and ejabberd
#: allow a similar few seconds); a silent connection must not hold a slot forever
HANDSHAKE_TIMEOUT = 10.0
_STANZA_NAMES = frozenset({"message", "presence", "iq"})
#: what a component's stanzas may be qualified by: its stream's namespace, or jabber:client
#: (slixmpp's use_jc_ns); both are moved into jabber:server before they leave over S2S
_CONTENT_NS = frozenset({COMPONENT_NS, "jabber:client"})


# --- actions the machine adds to events.py's ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentUp:
    """The handshake succeeded: this stream now serves *domain*."""

    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A stanza the component sent, to route on; *raw* inherits the receiving stream's namespace."""

    raw: bytes
    name: str
    from_: str
    to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    """Event: our side closes the stream (node shutdown, or a newer component took the domain).

    *condition* None closes cleanly with ``</stream:stream>``.
    """

    condition: str | None = None
    text: str | None = None


def handshake_digest(stream_id: str, password: str) -> str:
    """XEP-0114: lowercase hex of SHA-1 over the stream id followed by the shared secret."""
    return hashlib.sha1((stream_id + password).encode("utf-8")).hexdigest()


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


def _header(domain: str | None, stream_id: str) -> bytes:
    from_ = f" from='{_attr(domain)}'" if domain else ""
    return (
        f"<?xml version='1.0'?><stream:stream xmlns:stream='{STREAM_NS}' "
        f"xmlns='{COMPONENT_NS}'{from_} id='{stream_id}'>"
    ).encode()


def _start_tag_declares_default_ns(raw: bytes) -> bool:
    """Whether the top-level start tag carries its own ``xmlns=`` (quote-aware scan)."""
    quote = 0
    for index, byte in enumerate(raw):
        if quote:
            if byte == quote:
                quote = 0
        elif byte in (0x22, 0x27):
            quote = byte
        elif byte == 0x3E:  # '>'
            return b" xmlns=" in raw[:index].replace(b"\t", b" ").replace(b"\n", b" ")
    return False


def rebind_namespace(raw: bytes, from_ns: str | frozenset[str], to_ns: str) -> bytes:
    """Move a stanza whose start tag declares ``xmlns=`` one of *from_ns* into *to_ns*.

    Stanzas that inherit the stream's default namespace (the usual case) are returned as they
    are: they change namespace simply by being written into the other stream.
    """
    if not _start_tag_declares_default_ns(raw):
        return raw
    sources = frozenset({from_ns}) if isinstance(from_ns, str) else from_ns
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(raw, parser)
    for element in root.iter():
        if isinstance(element.tag, str) and etree.QName(element).namespace in sources:
            element.tag = f"{{{to_ns}}}{etree.QName(element).localname}"
    # a fresh top element declaring to_ns as the default, so nothing gets an ns0: prefix
    top = etree.Element(root.tag, attrib=dict(root.attrib), nsmap={None: to_ns})
    top.text = root.text
    top.extend(list(root))
    etree.cleanup_namespaces(top, top_nsmap={None: to_ns})
    return etree.tostring(top)


def _handshake_text(raw: bytes) -> str:
    try:
        element = etree.fromstring(
            f"<w xmlns='{COMPONENT_NS}'>".encode() + raw + b"</w>",
            etree.XMLParser(resolve_entities=False, no_network=True),
        )[0]
    except (etree.XMLSyntaxError, IndexError):
        raise RemoteStreamError("not-well-formed", "unparseable handshake") from None
    if len(element):
        raise RemoteStreamError("not-authorized", "the handshake carries child elements")
    return (element.text or "").strip()


class ComponentMachine(Machine):
    """The accept side of one component stream (sans-IO).

    Args:
        password: the listener's shared secret.
        is_hosted: domain -> whether the node hosts it (a host or a subdomain of one).
        is_taken: domain -> whether another component already serves it and this one must be
            refused with ``conflict`` (always False under ``kick_old``).
        check_from: verify that each stanza's ``from`` is in the component's domain.
        stream_id: the id to put in our header (random when not given).
        state_timeout: seconds for the header and the handshake (None: no timer).
    """

    role: ClassVar[str] = "component"
    TABLE: ClassVar[dict[tuple[str, str], str]] = {
        ("WAIT_HEADER", "StreamOpen"): "_on_open",
        ("WAIT_HEADER", "TimerFired"): "_timeout",
        ("WAIT_HANDSHAKE", "Stanza"): "_on_handshake",
        ("WAIT_HANDSHAKE", "TimerFired"): "_timeout",
        ("WAIT_HANDSHAKE", "StreamClose"): "_on_close",
        ("OPEN", "Stanza"): "_on_stanza",
        ("OPEN", "StreamClose"): "_on_close",
        ("OPEN", "TimerFired"): "_ignore",
        ("WAIT_HEADER", "Shutdown"): "_on_shutdown",
        ("WAIT_HANDSHAKE", "Shutdown"): "_on_shutdown",
        ("OPEN", "Shutdown"): "_on_shutdown",
        ("WAIT_HEADER", "ConnectionLost"): "_on_lost",
        ("WAIT_HANDSHAKE", "ConnectionLost"): "_on_lost",
        ("OPEN", "ConnectionLost"): "_on_lost",
    }

    def __init__(
        self,
        *,
        password: str,
        is_hosted: Callable[[str], bool],
        is_taken: Callable[[str], bool],
        check_from: bool = True,
        stream_id: str | None = None,
        state_timeout: float | None = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(state_timeout=state_timeout)
        self._password = password
        self._is_hosted = is_hosted
        self._is_taken = is_taken
        self.check_from = check_from
        self.stream_id = stream_id or secrets.token_hex(8)
        #: the domain this stream asked for (set from the header, served after the handshake)
        self.domain: str | None = None

    def start(self) -> list[Action]:
        """The connection is up: arm the header/handshake timer."""
        return [self._arm()]

    def outgoing(self, raw: bytes) -> list[Action]:
        """Bytes to write for a stanza routed to this component (nothing unless it is OPEN)."""
        if self.state != "OPEN":
            return []
        return [SendBytes(data=rebind_namespace(bytes(raw), "jabber:server", COMPONENT_NS))]

    # --- handlers --------------------------------------------------------------------------------

    def _error_header(self) -> list[Action]:
        self.header_sent = True
        return [SendBytes(data=_header(self.domain, self.stream_id))]

    def _on_open(self, event: Any) -> list[Action]:
        namespaces = dict(event.namespaces or {})
        name = event.name
        # the framer reports the local name; the prefix, if any, must be bound to the streams URI
        prefix, _, local = name.rpartition(":")
        stream_ok = (
            namespaces.get(prefix) == STREAM_NS if prefix else STREAM_NS in namespaces.values()
        )
        if local != "stream" or not stream_ok:
            raise RemoteStreamError(
                "invalid-namespace", f"stream element {name!r} is not {STREAM_NS}"
            )
        default = namespaces.get("", namespaces.get(None))
        if default != COMPONENT_NS:
            raise RemoteStreamError(
                "invalid-namespace", f"default namespace {default!r} is not {COMPONENT_NS}"
            )
        to = (dict(event.attrs).get("to") or "").strip().lower()
        if not to:
            raise RemoteStreamError("improper-addressing", "the stream header has no 'to'")
        if not valid_domain(to):
            raise RemoteStreamError("host-unknown", f"{to!r} is not a domain")
        if not self._is_hosted(to):
            raise RemoteStreamError(
                "host-unknown", f"{to} is neither a host of this node nor a subdomain of one"
            )
        self.domain = to
        self.state = "WAIT_HANDSHAKE"
        self.header_sent = True
        return [SendBytes(data=_header(to, self.stream_id)), self._arm()]

    def _on_handshake(self, event: Any) -> list[Action]:
        if event.name != "handshake" or event.ns != COMPONENT_NS:
            raise RemoteStreamError(
                "not-authorized", f"<{event.name}> before the handshake; authenticate first"
            )
        offered = _handshake_text(bytes(event.raw)).lower().encode("ascii", "replace")
        expected = handshake_digest(self.stream_id, self._password).encode("ascii")
        if not hmac.compare_digest(offered, expected):
            raise RemoteStreamError("not-authorized", "handshake does not match the password")
        assert self.domain is not None
        if self._is_taken(self.domain):
            raise RemoteStreamError("conflict", f"another component already serves {self.domain}")
        self.state = "OPEN"
        return [
            SetTimer(seconds=None),
            SendBytes(data=b"<handshake/>"),
            ComponentUp(domain=self.domain),
        ]

    def _on_stanza(self, event: Any) -> list[Action]:
        name = event.name
        if name not in _STANZA_NAMES:
            raise RemoteStreamError("unsupported-stanza-type", f"<{name}> is not a stanza")
        if event.ns not in _CONTENT_NS:
            raise RemoteStreamError(
                "invalid-namespace", f"<{name}> in {event.ns!r}, expected {COMPONENT_NS}"
            )
        from_ = event.from_ or ""
        to = event.to or ""
        if not to or not valid_domain(jid_domain(to)):
            raise RemoteStreamError("improper-addressing", f"<{name}> without a valid 'to'")
        if self.check_from and jid_domain(from_) != self.domain:
            raise RemoteStreamError(
                "invalid-from", f"'from' {from_!r} is not in the component's domain {self.domain}"
            )
        if not from_ or not valid_domain(jid_domain(from_)):
            raise RemoteStreamError("improper-addressing", f"<{name}> without a valid 'from'")
        raw = rebind_namespace(bytes(event.raw), _CONTENT_NS, "jabber:server")
        return [Route(raw=raw, name=name, from_=from_, to=to)]

    def _on_close(self, event: Any) -> list[Action]:
        return self._finish("the component closed its stream")

    def _on_shutdown(self, event: Shutdown) -> list[Action]:
        if event.condition is None and self.state == "OPEN":
            return self._finish(event.text or "closed by the node")
        return self.fail(LocalStreamError(event.condition or "system-shutdown", event.text))

    def _on_lost(self, event: ConnectionLost) -> list[Action]:
        self.state = "CLOSED"
        return [SetTimer(seconds=None)]

    def _ignore(self, event: Any) -> list[Action]:
        return []


# --- asyncio -------------------------------------------------------------------------------------


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


class ComponentConnection(asyncio.Protocol):
    """One component's TCP connection: framer in, :class:`ComponentMachine`, bytes out."""

    def __init__(self, server: ComponentServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._framer: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._closed = asyncio.get_running_loop().create_future()
        self._tokens = float(server.listen.max_rate or 0)
        self._last = 0.0
        self._paused = False
        self.machine = server._new_machine()

    @property
    def domain(self) -> str | None:
        return self.machine.domain if self.machine.state == "OPEN" else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from s2sfast.framing import StreamFramer

        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        limit = self._server.listen.max_stanza_size
        self._framer = StreamFramer(max_stanza_size=limit, default_ns=COMPONENT_NS)
        self._last = asyncio.get_running_loop().time()
        self._server._connections.add(self)
        log.info("component stream %s from %s: connected", self.machine.stream_id, self._peer)
        self._perform(self.machine.start())

    def data_received(self, data: bytes) -> None:
        if self.machine.closed:
            return
        self._shape(len(data))
        try:
            events = self._framer.feed(data)
        except StreamError as exc:
            self._perform(self.machine.fail(exc))
            return
        for event in events:
            if self.machine.closed:
                break
            self._perform(self.machine.receive(event))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.machine.closed:
            reason = str(exc) if exc else "connection closed by the component"
            self._perform(self.machine.receive(ConnectionLost(reason=reason)))
            log.info(
                "component stream %s (%s): lost: %s",
                self.machine.stream_id,
                self.machine.domain or self._peer,
                reason,
            )
        self._cancel_timer()
        self._server._connections.discard(self)
        if self.machine.domain:
            self._server._down(self.machine.domain, self)
        if not self._closed.done():
            self._closed.set_result(None)

    # the node's side

    def send(self, raw: bytes) -> bool:
        """Write a stanza to the component; False when it is not (or no longer) serving."""
        actions = self.machine.outgoing(raw)
        self._perform(actions)
        return bool(actions)

    def shutdown(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream: cleanly when *condition* is None, else with that stream error."""
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
            self._paused = True
            self._transport.pause_reading()
            asyncio.get_running_loop().call_later(-self._tokens / rate, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self.machine.closed:
            self._perform(self.machine.receive(TimerFired()))

    def _perform(self, actions: list[Action] | list[Any]) -> None:
        transport = self._transport
        for action in actions:
            if isinstance(action, SendBytes):
                if transport is not None and not transport.is_closing():
                    transport.write(action.data)
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
        if action.condition:
            from s2sfast.errors import stream_error_bytes

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
            transport.write(payload)
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
    ) -> None:
        self.listen = listen
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
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every component stream with ``</stream:stream>``, wait for them."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.shutdown(None, "the node is shutting down")
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
        )

    def _up(self, domain: str, conn: ComponentConnection) -> None:
        old = self.registry._register(domain, conn)
        if old is not None:
            old.shutdown("conflict", f"a newer component connected for {domain}")
        if self._on_change is not None:
            self._on_change(domain, True)

    def _down(self, domain: str, conn: ComponentConnection) -> None:
        if self.registry.get(domain) is conn:
            self.registry._unregister(domain, conn)
            if self._on_change is not None:
                self._on_change(domain, False)

    def _route(self, domain: str, route: Route) -> None:
        self._on_route(domain, route)
