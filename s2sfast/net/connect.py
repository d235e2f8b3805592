"""Open one TCP connection to the first candidate address that accepts it.

The outgoing side gets an ordered candidate list from :mod:`s2sfast.net.dns` and calls
:func:`connect_first`. Candidates are tried one after another (RFC 6120 section 3.2.1: in
order, the next only after the previous failed), each bounded by ``outgoing.connection_timeout``
milliseconds. Every failure is logged with its reason; when all fail, :class:`ConnectError`
carries them, and its ``condition`` tells the router how to bounce: ``remote-server-timeout``
when any attempt timed out (the peer may only be slow or overloaded), else
``remote-server-not-found`` (every address refused or is unreachable).

A Direct TLS candidate (XEP-0368: an ``_xmpps-server._tcp`` record or an address override with
``tls = true``) is connected to the same way; the protocol built for it is told so
(``direct_tls = True``) before asyncio calls its ``connection_made``, where it starts TLS
with the first byte. A Direct TLS port that refuses or times out is one more failed candidate,
and the next one (often the STARTTLS port) is tried.

A Direct TLS candidate can also fail after the TCP connection is up: its TLS handshake fails,
its certificate is refused, or it never opens an XMPP stream inside TLS. That is learnt by the
caller (:mod:`s2sfast.routing.links`), long after :func:`connect_first` returned; it resumes the
same walk through the candidates (XEP-0368 section 3, RFC 6120 section 3.2.1) by passing an
:class:`Attempt` as the candidates: :meth:`Attempt.failed` records why the connected one failed,
and the next :func:`connect_first` on the same Attempt goes on from the candidate after it, its
:class:`ConnectError` listing every failure of the attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from s2sfast.net.dns import Candidate

__all__ = ["Attempt", "ConnectError", "ConnectFailure", "connect_first", "failure_reason"]

log = logging.getLogger("s2sfast.connect")

#: "tls": a Direct TLS candidate accepted TCP, then failed before it opened an XMPP stream
Reason = Literal["refused", "timeout", "unreachable", "error", "tls"]

_UNREACHABLE = frozenset(
    {
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectFailure:
    """Why one candidate could not be connected to."""

    candidate: Candidate
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.candidate}: {self.reason} ({self.detail})"


class Attempt:
    """One attempt's walk through its candidates, in order, resumable.

    Iterating it yields the candidates not tried yet; :attr:`current` is the last one yielded
    (the one being connected to, or connected), :attr:`failures` what failed so far.

    Args:
        candidates: from :meth:`s2sfast.net.dns.Resolver.resolve`, in the order to try.
    """

    __slots__ = ("candidates", "current", "failures", "_next")

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        self.candidates = tuple(candidates)
        self.current: Candidate | None = None
        self.failures: list[ConnectFailure] = []
        self._next = 0

    def __iter__(self) -> Attempt:
        return self

    def __next__(self) -> Candidate:
        if self._next >= len(self.candidates):
            raise StopIteration
        self.current = self.candidates[self._next]
        self._next += 1
        return self.current

    @property
    def untried(self) -> int:
        """How many candidates are still to be tried."""
        return len(self.candidates) - self._next

    def failed(self, reason: Reason, detail: str) -> ConnectFailure:
        """Record that :attr:`current`, connected, failed anyway (a Direct TLS handshake).

        Returns:
            the recorded failure.
        Raises:
            ValueError: no candidate was tried yet.
        """
        if self.current is None:
            raise ValueError("no candidate was tried")
        failure = ConnectFailure(candidate=self.current, reason=reason, detail=detail)
        self.failures.append(failure)
        return failure


class ConnectError(Exception):
    """No candidate accepted a connection.

    Attributes:
        domain: the remote domain (may be empty when the caller did not say).
        failures: one :class:`ConnectFailure` per candidate tried, in order.
        timed_out: whether any attempt hit the connection timeout.
        condition: the RFC 6120 stanza-error condition to bounce with.
    """

    def __init__(self, domain: str, failures: Iterable[ConnectFailure]) -> None:
        self.domain = domain
        self.failures = tuple(failures)
        self.timed_out = any(f.reason == "timeout" for f in self.failures)
        self.condition = "remote-server-timeout" if self.timed_out else "remote-server-not-found"
        target = domain or "the remote server"
        if not self.failures:
            message = f"no address to connect to for {target}"
        else:
            message = f"could not connect to {target}: " + "; ".join(map(str, self.failures))
        super().__init__(message)


def failure_reason(exc: BaseException) -> Reason:
    """Classify a connection attempt's exception as refused / timeout / unreachable / error."""
    if isinstance(exc, TimeoutError):  # our bound (asyncio.timeout) or the kernel's ETIMEDOUT
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    return "error"


async def connect_first(
    candidates: Iterable[Candidate],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    timeout_ms: int | None,
    loop: asyncio.AbstractEventLoop | None = None,
    domain: str = "",
) -> tuple[asyncio.Transport, asyncio.BaseProtocol, Candidate]:
    """Connect to the first candidate that accepts, trying them in order.

    Args:
        candidates: from :meth:`s2sfast.dns.Resolver.resolve`, in the order to try; an
            :class:`Attempt` to resume a walk (its untried candidates; its failures, earlier
            and new, are the ConnectError's).
        protocol_factory: builds the asyncio protocol for the connection that succeeds
            (called once, only then). For a Direct TLS candidate the protocol must have a
            ``direct_tls`` attribute (an :class:`~s2sfast.net.stream.XmlStream`); it is set to
            True before ``connection_made``.
        timeout_ms: bound per candidate in milliseconds (``outgoing.connection_timeout``);
            None means no bound ("infinity").
        loop: the event loop (default: the running one).
        domain: the remote domain, for logs and the error message.
    Returns:
        (transport, protocol, the candidate that answered).
    Raises:
        ConnectError: every candidate failed (or there were none).
        ValueError: *timeout_ms* is not positive.
    """
    if timeout_ms is not None and timeout_ms <= 0:
        raise ValueError(f"connection timeout must be positive milliseconds, got {timeout_ms!r}")
    loop = loop or asyncio.get_running_loop()
    timeout = None if timeout_ms is None else timeout_ms / 1000
    failures = candidates.failures if isinstance(candidates, Attempt) else []
    for candidate in candidates:
        try:
            sock = await _connect_socket(loop, candidate, timeout)
        except OSError as exc:  # TimeoutError and ConnectionError are OSErrors
            reason = failure_reason(exc)
            if reason == "timeout" and not exc.args:
                detail = f"no answer within {timeout_ms} ms"
            else:
                detail = exc.strerror or str(exc) or type(exc).__name__
            failure = ConnectFailure(candidate=candidate, reason=reason, detail=detail)
            log.warning("connect to %s failed: %s", domain or candidate.host, failure)
            failures.append(failure)
            continue
        try:
            protocol = protocol_factory()
            if candidate.direct_tls:
                if not hasattr(protocol, "direct_tls"):
                    raise TypeError(f"{type(protocol).__name__} cannot speak Direct TLS")
                protocol.direct_tls = True  # type: ignore[attr-defined]
            transport, _ = await loop.create_connection(lambda p=protocol: p, sock=sock)
        except BaseException:
            sock.close()
            raise
        log.info("connected to %s via %s", domain or candidate.host, candidate)
        return transport, protocol, candidate
    raise ConnectError(domain, failures)


async def _connect_socket(
    loop: asyncio.AbstractEventLoop, candidate: Candidate, timeout: float | None
) -> socket.socket:
    """A connected non-blocking socket, or the OSError/TimeoutError of trying.

    The socket is made here (not by ``create_connection(host=...)``) so the address is used as
    given: no getaddrinfo, no second resolution that could disagree with ours.
    """
    sock = socket.socket(candidate.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP; without it
        # Nagle holds our stream header behind the unacknowledged TLS Finished until the
        # peer's delayed ACK (40 ms on Linux) on every new TLS stream
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (candidate.ip, candidate.port))
    except BaseException:
        sock.close()
        raise
    return sock
