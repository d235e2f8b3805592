"""Events into and actions out of the negotiation machines (incoming.py, outgoing.py).

The framer's ``StreamOpen`` / ``Stanza`` / ``StreamClose`` are events too; the ones below are what
the asyncio layer (stream.py, router.py) reports or performs. All are frozen, slotted and
keyword-only, in the h11 manner: small values, never subclassed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    # events
    "TlsUp",
    "TimerFired",
    "ConnectionLost",
    "VerifyRequest",
    "VerifyResult",
    "Handled",
    # actions
    "SendBytes",
    "StartTls",
    "SetTimer",
    "VerifyKey",
    "VerifyAnswered",
    "Authenticated",
    "AuthFailed",
    "Deliver",
    "Drop",
    "Close",
    "Acked",
    "Unacked",
    "RestartStream",
    "Action",
]


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsUp:
    """The TLS handshake finished; *chain* is the peer's certificate chain (DER, leaf first)."""

    chain: tuple[bytes, ...] = ()
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    """The state timer armed by the last :class:`SetTimer` expired."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost:
    """The TCP connection is gone (or never came up); *reason* is for the log and bounces.

    *retry* is False when reconnecting cannot help soon (a failed TLS handshake).
    """

    reason: str = "connection lost"
    retry: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyRequest:
    """Ask the peer (authoritative for *originating*) whether *key* is valid (receiving role).

    Fed into an outgoing machine whose local domain is *receiving* and remote is *originating*.
    """

    receiving: str
    originating: str
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """The authoritative server's verdict for a key we received on stream *stream_id*.

    *type* is ``valid``, ``invalid`` or ``error``; *text* explains errors in the log.
    """

    receiving: str
    originating: str
    stream_id: str
    type: str
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Handled:
    """XEP-0198: the inbound stanza numbered *seq* (see :class:`Deliver`) has left this process
    towards its next hop (written out, or handed to a local handler) or was answered with an
    error; the stream's ``h`` may now cover it."""

    seq: int


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBytes:
    """Write *data* to the peer (through TLS when it is up)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTls:
    """Start the TLS handshake now; every byte after it is TLS, and the framer restarts."""

    server_side: bool
    server_hostname: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    """(Re)arm the negotiation-step timer for *seconds*; ``None`` cancels it."""

    seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyKey:
    """Receiving role: ask *originating*'s authoritative server about *key* on *stream_id*."""

    receiving: str
    originating: str
    stream_id: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyAnswered:
    """The authoritative server answered one of our db:verify requests (matched, pending)."""

    receiving: str
    originating: str
    stream_id: str
    type: str
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    """The (local, remote) domain pair may now exchange stanzas on this stream."""

    local: str
    remote: str
    direction: str
    method: str = "dialback"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFailed:
    """Outgoing: the stream cannot carry stanzas for (local, remote); bounce with *condition*.

    *retry*: a transient failure (time-out, connection lost, peer restarting), worth another
    attempt after back-off; otherwise (dialback refused, TLS or policy mismatch) bounce now.
    """

    local: str
    remote: str
    condition: str
    text: str | None = None
    retry: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """An authorised inbound stanza for a local domain (the framer's Stanza, raw bytes kept).

    *seq*: with XEP-0198 on, the stanza's number; feed :class:`Handled` back once it is handled.
    """

    stanza: Any
    seq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """A stanza or element ignored on purpose; *reason* goes to the log."""

    reason: str
    stanza: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """Close the stream: ``<stream:error>`` for *condition* (if any), then ``</stream:stream>``.

    *text* is the stream error's text (or, without a condition, the log reason).
    """

    condition: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Acked:
    """XEP-0198: the peer acknowledged *count* more stanzas (the unacked window has room)."""

    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unacked:
    """XEP-0198: the outbound stream for (local, remote) is over and these stanzas we sent on it
    were never acknowledged: resend them on the next stream or bounce them (the owner's
    ``stream_management.resend``). *reason* says how the stream ended."""

    local: str
    remote: str
    raws: tuple[bytes, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartStream:
    """The stream restarts without TLS changing (after SASL success, RFC 6120 6.4.6): what
    follows is a new stream, read by a new framer."""


Action = (
    SendBytes
    | StartTls
    | SetTimer
    | VerifyKey
    | VerifyAnswered
    | Authenticated
    | AuthFailed
    | Deliver
    | Drop
    | Close
    | Acked
    | Unacked
    | RestartStream
)
