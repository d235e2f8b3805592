"""What the incoming and outgoing negotiation machines share: dispatch, sticky errors, headers.

Each machine owns one transition table ``{(state, event type name): method name}``; a missing
entry is a protocol error that names the role, state and event. The rules here stay
role-agnostic (h11's habit): header validation, stream-header bytes, JID domains.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from s2sfast.protocol.errors import STREAM_NS, LocalStreamError, RemoteStreamError, StreamError
from s2sfast.protocol.events import Action, Close, SendBytes, SetTimer

__all__ = [
    "SERVER_NS",
    "TLS_NS",
    "DATA_STANZAS",
    "new_stream_id",
    "Machine",
    "CertChecker",
    "stream_header",
    "check_header_namespaces",
    "check_version",
]

log = logging.getLogger("s2sfast.negotiation")

SERVER_NS = "jabber:server"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
#: the stanzas that carry data (RFC 6120 8): everything else on a stream is negotiation
DATA_STANZAS = frozenset({"message", "presence", "iq"})


def new_stream_id() -> str:
    """A fresh, unguessable stream id (128 random bits)."""
    return secrets.token_hex(16)


class PeerStatus(Protocol):
    """The face of tls.PeerCertStatus the machines use."""

    trusted: bool
    name_matches: bool
    reason: str | None


#: (chain DER leaf first, domain) -> verdict; the TLS module does the RFC 6125 work
CertChecker = Callable[[tuple[bytes, ...], str], Any]


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


def stream_header(
    *, from_: str | None, to: str | None, id: str | None = None, version: bool = True
) -> bytes:
    """Our ``<stream:stream>`` opening tag (with the XML declaration)."""
    parts = [
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server'",
        " xmlns:stream='http://etherx.jabber.org/streams'",
        " xmlns:db='jabber:server:dialback'",
    ]
    if from_:
        parts.append(f" from='{_attr(from_)}'")
    if to:
        parts.append(f" to='{_attr(to)}'")
    if id:
        parts.append(f" id='{_attr(id)}'")
    if version:
        parts.append(" version='1.0'")
    parts.append(">")
    return "".join(parts).encode()


def _ns_of(name: str, namespaces: dict) -> str | None:
    prefix = name.split(":", 1)[0] if ":" in name else ""
    if prefix:
        return namespaces.get(prefix)
    return namespaces.get("", namespaces.get(None))


def check_header_namespaces(open_event: Any) -> None:
    """The stream element must be {streams}stream with default namespace jabber:server.

    Raises:
        RemoteStreamError: ``invalid-namespace``.
    """
    name = open_event.name
    namespaces = dict(open_event.namespaces or {})
    local = name.rsplit(":", 1)[-1]
    # The framer reports the local name and has already checked the root's namespace; a
    # prefixed name (another producer of StreamOpen) is checked here.
    if local != "stream" or (":" in name and _ns_of(name, namespaces) != STREAM_NS):
        raise RemoteStreamError("invalid-namespace", f"stream element {name!r} is not {STREAM_NS}")
    default = namespaces.get("", namespaces.get(None))
    if default != SERVER_NS:
        raise RemoteStreamError(
            "invalid-namespace", f"default namespace {default!r} is not {SERVER_NS}"
        )


def check_version(version: str | None) -> bool:
    """True for an XMPP 1.x stream, False for a pre-1.0 peer (no version attribute).

    Raises:
        RemoteStreamError: ``unsupported-version`` for a major version other than 1.
    """
    if version is None:
        return False
    major, _, minor = version.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise RemoteStreamError("unsupported-version", f"malformed version {version!r}")
    if int(major) != 1:
        raise RemoteStreamError("unsupported-version", f"version {version} is not supported")
    return True


class Machine:
    """Base for the two negotiation machines: table dispatch and the sticky error state.

    Subclasses set ``role``, ``TABLE`` and ``state``, and implement handlers that return
    lists of actions. :meth:`receive` is the only entry point for events.
    """

    role: ClassVar[str] = "?"
    TABLE: ClassVar[dict[tuple[str, str], str]] = {}
    #: states where the machine accepts nothing more
    FINAL: ClassVar[frozenset[str]] = frozenset({"CLOSED", "ERROR"})

    # one machine per stream, 10,000 streams per node: the machines and their mixins are
    # slotted (a subclass lists its own fields, and "__dict__" for the rare dynamic one)
    __slots__ = ("state", "state_timeout", "error", "header_sent")

    def __init__(self, *, state_timeout: float | None) -> None:
        self.state = "WAIT_HEADER"
        self.state_timeout = state_timeout
        self.error: StreamError | None = None
        #: whether our stream header has gone out (errors need one first)
        self.header_sent = False

    @property
    def closed(self) -> bool:
        return self.state in self.FINAL or self.state == "CLOSING"

    def receive(self, event: Any) -> list[Action]:
        """Feed one event; returns the actions to perform, in order.

        A protocol violation does not raise: the machine queues ``<stream:error/>`` (as a
        :class:`Close` action) and becomes sticky-failed. Feeding a failed machine raises.

        Raises:
            LocalStreamError: the machine is closed or failed already.
        """
        if self.state in self.FINAL:
            raise LocalStreamError(
                "internal-server-error",
                f"{self.role} machine is {self.state} and refuses {type(event).__name__}",
            )
        kind = type(event).__name__
        method = self.TABLE.get((self.state, kind))
        try:
            if method is None:
                raise RemoteStreamError(
                    self._unexpected_condition(event),
                    f"{self.role} stream: {kind}"
                    f"{self._describe(event)} is not allowed in state {self.state}",
                )
            return getattr(self, method)(event)
        except StreamError as exc:
            return self.fail(exc)

    def fail(self, exc: StreamError) -> list[Action]:
        """Queue the stream error for *exc* (our header first if needed) and go sticky."""
        actions: list[Action] = []
        if self.state in self.FINAL:
            return actions
        if not self.header_sent:
            actions.extend(self._error_header())
        actions.extend(self._on_failure(exc))
        self.error = exc
        self.state = "ERROR"
        actions.append(SetTimer(seconds=None))
        actions.append(Close(condition=exc.condition, text=exc.text))
        return actions

    # --- hooks ---------------------------------------------------------------------------------

    def _error_header(self) -> list[Action]:
        self.header_sent = True
        return [SendBytes(data=stream_header(from_=None, to=None))]

    def _on_failure(self, exc: StreamError) -> list[Action]:
        """Extra actions a subclass owes its owner when the stream fails."""
        return []

    def _unexpected_condition(self, event: Any) -> str:
        return (
            "unsupported-stanza-type" if type(event).__name__ == "Stanza" else "undefined-condition"
        )

    @staticmethod
    def _describe(event: Any) -> str:
        name = getattr(event, "name", None)
        ns = getattr(event, "ns", None)
        if name and ns:
            return f" <{name} xmlns='{ns}'>"
        return ""

    def _arm(self) -> SetTimer:
        return SetTimer(seconds=self.state_timeout)

    def _timeout(self, event: Any) -> list[Action]:
        raise RemoteStreamError(
            "connection-timeout", f"no progress within {self.state_timeout} s in {self.state}"
        )

    def _ignore(self, event: Any) -> list[Action]:
        """For table entries whose event needs no answer in that state."""
        return []

    def _finish(self, reason: str) -> list[Action]:
        """A clean close: ``</stream:stream>`` without an error."""
        self.state = "CLOSED"
        return [SetTimer(seconds=None), Close(condition=None, text=reason)]
