"""XEP-0114 (Jabber Component Protocol), accept side: the sans-IO machine.

An external component (a bot, a gateway) opens ``<stream:stream xmlns='jabber:component:accept'
to='DOMAIN'>``, we answer with a header carrying a fresh stream id, it sends
``<handshake>hex(SHA1(id + password))</handshake>`` and we answer ``<handshake/>``. From then on
it serves DOMAIN: stanzas for DOMAIN go to it, and what it sends is routed on (over S2S).

Failures follow XEP-0114 and RFC 6120: a DOMAIN the node does not host (one of its hosts or a
subdomain of one) gets ``host-unknown``, a wrong handshake ``not-authorized``, a second
component for a served domain ``conflict`` (or, with ``conflict_behaviour = "kick_old"``, the old
one gets ``conflict``), a stanza whose ``from`` lies outside DOMAIN ``invalid-from`` (with
``check_from``).

Closing (RFC 6120 4.4): when the node closes a served stream cleanly (:class:`Shutdown` without a
condition) the machine sends ``</stream:stream>`` and moves to CLOSING, where it still takes the
component's stanzas (it may have been sending while our close was on its way) until the
component's own ``</stream:stream>``, or until ``close_timeout`` cuts the connection. Nothing
more may be written to the component after our close: what it sends then can be routed on, but
not answered.

:class:`ComponentMachine` does no I/O (events in, actions out, one transition table, sticky
errors); :mod:`s2sfast.server.component` performs its actions on asyncio.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from lxml import etree

from s2sfast.limits import COMPONENT_CLOSE_TIMEOUT
from s2sfast.protocol.errors import STREAM_NS, LocalStreamError, RemoteStreamError
from s2sfast.protocol.events import Action, Close, ConnectionLost, SendBytes, SetTimer
from s2sfast.protocol.jid import jid_domain, valid_domain
from s2sfast.protocol.negotiation import Machine

__all__ = [
    "COMPONENT_NS",
    "HANDSHAKE_TIMEOUT",
    "ComponentUp",
    "Route",
    "Shutdown",
    "ComponentMachine",
    "handshake_digest",
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
    """Whether the top-level start tag carries its own ``xmlns=`` (quote-aware scan).

    Only for bytes that did not come from the framer: a framed Stanza says so itself
    (``Stanza.declares_ns``), which is what the data path reads.
    """
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


def rebind_namespace(
    raw: bytes, from_ns: str | frozenset[str], to_ns: str, declares: bool | None = None
) -> bytes:
    """Move a stanza whose start tag declares ``xmlns=`` one of *from_ns* into *to_ns*.

    Stanzas that inherit the stream's default namespace (the usual case) are returned as they
    are: they change namespace simply by being written into the other stream. *declares* is
    the framer's ``Stanza.declares_ns`` when known (else the start tag is scanned); only a
    declaring stanza (rare) is rebuilt, with lxml.
    """
    if declares is None:
        declares = _start_tag_declares_default_ns(raw)
    if not declares:
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
        close_timeout: seconds, after our clean close, to wait for the component's
            ``</stream:stream>`` before the connection is cut (None: no timer).
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
        # our </stream:stream> is out; the component may still send until its own
        ("CLOSING", "Stanza"): "_on_stanza",
        ("CLOSING", "StreamClose"): "_on_peer_closed",
        ("CLOSING", "TimerFired"): "_on_close_timeout",
        ("CLOSING", "Shutdown"): "_ignore",
        ("CLOSING", "ConnectionLost"): "_on_lost",
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
        close_timeout: float | None = COMPONENT_CLOSE_TIMEOUT,
    ) -> None:
        super().__init__(state_timeout=state_timeout)
        self.close_timeout = close_timeout
        self._password = password
        self._is_hosted = is_hosted
        self._is_taken = is_taken
        self.check_from = check_from
        self.stream_id = stream_id or secrets.token_hex(8)
        #: the domain this stream asked for (set from the header, served after the handshake)
        self.domain: str | None = None
        #: domains already found valid on this stream (the same few repeat on every stanza)
        self._valid: set[str] = set()

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

    def check_stanza(self, event: Any) -> None:
        """Check one stanza the component sent on its OPEN stream (the data path calls this
        directly: no event dispatch or action per stanza). Its addressing comes from the
        framer's fields (``to_domain``/``from_domain`` when the event has them).

        Raises:
            RemoteStreamError: not a stanza, a wrong namespace, bad addressing, a foreign
                ``from`` (with check_from); the stream fails with that condition.
        """
        name = event.name
        if name not in _STANZA_NAMES:
            raise RemoteStreamError("unsupported-stanza-type", f"<{name}> is not a stanza")
        if event.ns not in _CONTENT_NS:
            raise RemoteStreamError(
                "invalid-namespace", f"<{name}> in {event.ns!r}, expected {COMPONENT_NS}"
            )
        to_domain = getattr(event, "to_domain", None)
        if to_domain is None:
            to_domain = jid_domain(event.to)
        valid = self._valid
        if to_domain not in valid:
            if not event.to or not valid_domain(to_domain):
                raise RemoteStreamError("improper-addressing", f"<{name}> without a valid 'to'")
            self._remember(to_domain)
        from_domain = getattr(event, "from_domain", None)
        if from_domain is None:
            from_domain = jid_domain(event.from_)
        if self.check_from and from_domain != self.domain:
            raise RemoteStreamError(
                "invalid-from",
                f"'from' {event.from_!r} is not in the component's domain {self.domain}",
            )
        if from_domain not in valid:
            if not event.from_ or not valid_domain(from_domain):
                raise RemoteStreamError("improper-addressing", f"<{name}> without a valid 'from'")
            self._remember(from_domain)

    def _remember(self, domain: str) -> None:
        if len(self._valid) >= 1024:  # a bound: a component addressing many domains
            self._valid.clear()
        self._valid.add(domain)

    def _on_stanza(self, event: Any) -> list[Action]:
        self.check_stanza(event)
        raw = rebind_namespace(
            bytes(event.raw), _CONTENT_NS, "jabber:server", getattr(event, "declares_ns", None)
        )
        return [Route(raw=raw, name=event.name, from_=event.from_ or "", to=event.to or "")]

    def _on_close(self, event: Any) -> list[Action]:
        return self._finish("the component closed its stream")

    def _on_shutdown(self, event: Shutdown) -> list[Action]:
        if event.condition is None and self.state == "OPEN":
            # RFC 6120 4.4: close our side, keep reading until the component closes its side
            self.state = "CLOSING"
            return [
                SetTimer(seconds=self.close_timeout),
                Close(condition=None, text=event.text or "closed by the node"),
            ]
        return self.fail(LocalStreamError(event.condition or "system-shutdown", event.text))

    def _on_peer_closed(self, event: Any) -> list[Action]:
        """CLOSING: the component answered our ``</stream:stream>``; the connection can go."""
        self.state = "CLOSED"
        return [SetTimer(seconds=None), Close(condition=None, text="the component closed too")]

    def _on_close_timeout(self, event: Any) -> list[Action]:
        """CLOSING: no ``</stream:stream>`` from the component in time; cut the connection."""
        self.state = "CLOSED"
        return [
            SetTimer(seconds=None),
            Close(
                condition=None,
                text=f"no </stream:stream> from the component within {self.close_timeout:g} s",
            ),
        ]

    def _on_lost(self, event: ConnectionLost) -> list[Action]:
        self.state = "CLOSED"
        return [SetTimer(seconds=None)]

    def _ignore(self, event: Any) -> list[Action]:
        return []
