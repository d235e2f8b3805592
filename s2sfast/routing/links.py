"""Outbound S2S links: one (local, remote) pair's stream and what waits for it.

A link is opened by the first stanza (or dialback verify request) for its pair. It resolves
the remote domain, connects, and hands the socket to an XmlStream running an OutgoingMachine;
until that stream has authenticated, stanzas wait in the link's bounded queue. A Direct TLS
candidate that connects but fails before the peer opens its stream (TLS handshake, certificate,
silence) is one more failed candidate: the next one is tried within the same attempt. A transient
failure retries after the remote domain's back-off, a permanent one bounces the queue; a
queued stanza that waited past the pending deadline bounces on its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from s2sfast.limits import MAX_SERVED_PAIRS, PENDING_HOLD_BYTES
from s2sfast.net.backoff import Backoff, PendingQueue
from s2sfast.net.connect import Attempt, ConnectError, connect_first
from s2sfast.net.dns import Candidate, ResolutionError
from s2sfast.net.peercert import own_certificate_problem
from s2sfast.net.stream import XmlStream
from s2sfast.net.writer import NONE_HELD
from s2sfast.protocol.events import AuthFailed, VerifyRequest
from s2sfast.protocol.outgoing import OutgoingMachine

if TYPE_CHECKING:
    from s2sfast.router import Router

__all__ = ["OutboundLink", "Links", "keep_peer_awake"]

log = logging.getLogger("s2sfast.router")


class OutboundLink:
    """One (local, remote) pair's outbound stream and what waits for it.

    While it has no stream its pending queue is the destination: past
    :data:`~s2sfast.limits.PENDING_HOLD_BYTES` (or its budget share, if smaller) the sources
    feeding it are held (not read, Node.send waiting) until the stream is up and the queue has
    gone out, or it bounced.

    Memory (one link per outbound stream, 10,000 per node): what only a link that waits needs
    (the held sources, the verify requests, the :attr:`done` future) is made on first use, and
    the connecting task is dropped once it finished.
    """

    __slots__ = (
        "holding",
        "_drained",
        "local",
        "remote",
        "stream",
        "queue",
        "verify_queue",
        "established",
        "outcome",
        "_done",
        "task",
        "retry_timer",
        "expiry_timer",
        "last_condition",
        "last_text",
    )

    def __init__(self, local: str, remote: str, queue: PendingQueue[bytes]) -> None:
        self.local = local
        self.remote = remote
        self.stream: XmlStream | None = None
        self.queue = queue
        #: dialback verify requests waiting for the stream (a list once one waits)
        self.verify_queue: list[VerifyRequest] | tuple[()] = ()
        self.established = False
        #: True once established, False once failed, None before (see :attr:`done`)
        self.outcome: bool | None = None
        self._done: asyncio.Future[bool] | None = None
        #: the resolving and connecting task, while it runs
        self.task: asyncio.Task[None] | None = None
        self.retry_timer: asyncio.TimerHandle | None = None
        self.expiry_timer: asyncio.TimerHandle | None = None
        #: why the last attempt failed: what expired stanzas bounce with
        self.last_condition = "remote-server-timeout"
        self.last_text: str | None = None
        #: sources held until the queue drains (a set once one is)
        self.holding: set[Any] = NONE_HELD
        self._drained: asyncio.Event | None = None

    @property
    def done(self) -> asyncio.Future[bool]:
        """Resolved when the link is established (True) or has failed (False); stop() waits
        on it (made when first asked for)."""
        fut = self._done
        if fut is None:
            fut = self._done = asyncio.get_event_loop().create_future()
            if self.outcome is not None:
                fut.set_result(self.outcome)
        return fut

    def finish(self, ok: bool) -> None:
        """The link is established (*ok*) or has failed: the first outcome is :attr:`done`'s."""
        if self.outcome is None:
            self.outcome = ok
            if self._done is not None and not self._done.done():
                self._done.set_result(ok)

    def queue_verify(self, req: VerifyRequest) -> None:
        """Keep a dialback verify request until the link has a stream."""
        if self.verify_queue:
            self.verify_queue.append(req)  # type: ignore[union-attr]
        else:
            self.verify_queue = [req]

    def take_verifies(self) -> list[VerifyRequest] | tuple[()]:
        """The verify requests that waited, removed."""
        queued, self.verify_queue = self.verify_queue, ()
        return queued

    @property
    def congested(self) -> bool:
        """The pending queue is past its hold mark: sources should wait."""
        queue = self.queue
        budget = queue.budget
        limit = budget.current_share if budget is not None else queue.max_bytes
        return queue.nbytes > min(limit // 2, PENDING_HOLD_BYTES)

    def hold_source(self, source: Any) -> None:
        if source is not None and source not in self.holding:
            if self.holding is NONE_HELD:
                self.holding = set()
            self.holding.add(source)
            source.held_by(self)

    def release_sources(self) -> None:
        if self._drained is not None:
            self._drained.set()
        if self.holding:
            holding = self.holding
            self.holding = NONE_HELD
            for source in holding:
                source.released_by(self)

    async def drained(self) -> None:
        """Wait until the queue has gone out (or bounced)."""
        if not self.congested:
            return
        if self._drained is None or self._drained.is_set():
            self._drained = asyncio.Event()
        await self._drained.wait()

    def task_done(self, task: asyncio.Task[None]) -> None:
        if self.task is task:
            self.task = None

    def cancel_timers(self) -> None:
        for handle in (self.retry_timer, self.expiry_timer):
            if handle is not None:
                handle.cancel()
        self.retry_timer = self.expiry_timer = None


def keep_peer_awake(stream: XmlStream) -> None:
    """XEP-0478: the peer may call a stream idle after its announced idle-seconds without
    traffic from us; keep our whitespace keepalives (when we send any) within half of it."""
    limits = stream.machine.peer_limits
    idle = limits.idle_seconds if limits is not None else None
    if idle and stream.keepalive and stream.keepalive > idle / 2:
        stream.keepalive = idle / 2


class Links:
    """Opens, retries and retires the router's outbound links (``router.outbound``).

    Args:
        router: the owner: its options, its bounces and events, its other collaborators.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        #: the router's (local, remote) -> OutboundLink table (the same dict)
        self.outbound = router.outbound
        #: remote domain -> reconnect back-off (outlives links)
        self._backoff: dict[str, Backoff] = {}
        #: (local, remote) pairs an outbound stream of ours has authenticated since start: a
        #: refusal of one of them is taken as the peer restarting, retried within the deadline
        self._served: set[tuple[str, str]] = set()
        #: link -> (its attempt, its stream) while that stream is a Direct TLS candidate that has
        #: not authenticated yet: its failure may move on to the attempt's next candidate
        self._probing: dict[OutboundLink, tuple[Attempt, XmlStream]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: bound once: every outgoing machine holds it (a bound method each would be 64 bytes)
        self._policy_allows = router.policy_allows

    def now(self) -> float:
        # the loop is looked up once: asyncio.get_event_loop() per stanza cost a quarter of
        # the routing time while stanzas queued behind a full XEP-0198 window
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_event_loop()
        return loop.time()

    def new(self, local: str, remote: str) -> OutboundLink:
        """A link for the pair with an empty queue, in the table, with no attempt started."""
        router = self.router
        queue: PendingQueue[bytes] = PendingQueue(
            max_stanzas=router.max_queue,
            deadline=router.pending_deadline,
            budget=router.pending_budget,
        )
        link = self.outbound[(local, remote)] = OutboundLink(local, remote, queue)
        return link

    def open(self, local: str, remote: str) -> OutboundLink:
        """A new link for the pair, already resolving and connecting."""
        link = self.new(local, remote)
        self._start_attempt(link)
        return link

    def _start_attempt(self, link: OutboundLink) -> None:
        link.retry_timer = None
        self._run(link)

    def _run(self, link: OutboundLink, attempt: Attempt | None = None) -> None:
        """Start *link*'s connecting task (dropped by the link once it finished: an idle
        link keeps no Task, coroutine or Context)."""
        task = link.task = asyncio.get_event_loop().create_task(self._connect(link, attempt))
        task.add_done_callback(link.task_done)

    async def _resolve(self, local: str, remote: str) -> list[Candidate]:
        """Where *remote*'s S2S service is: ``[s2s] address`` overrides, else DNS (SRV, A/AAAA).

        Raises:
            ResolutionError: the domain cannot be resolved (``condition`` says how to bounce).
        """
        router = self.router
        return await router.resolver.resolve(remote, router.options_for(local))

    async def _connect(self, link: OutboundLink, attempt: Attempt | None = None) -> None:
        """Resolve and open the TCP connection; the XmlStream takes over from there.

        Args:
            attempt: go on with this attempt's next candidates (its last connected one failed
                its Direct TLS handshake); None: resolve, and try the candidates from the first.
        """
        opts = self.router.options_for(link.local)
        try:
            walk = (
                attempt
                if attempt is not None
                else Attempt(await self._resolve(link.local, link.remote))
            )
            await connect_first(
                walk,
                lambda: self._outgoing_stream(link, walk),
                timeout_ms=opts.outgoing.connection_timeout,
                domain=link.remote,
            )
        except ResolutionError as exc:
            if exc.temporary:
                self.retry(link, exc.condition, str(exc))
            else:
                self.failed(link, exc.condition, str(exc))
        except ConnectError as exc:
            self.retry(link, exc.condition, str(exc))

    def _outgoing_stream(self, link: OutboundLink, attempt: Attempt | None = None) -> XmlStream:
        router = self.router
        opts = router.options_for(link.local)
        ctx = router.client_context(link.local)
        machine = OutgoingMachine(
            local=link.local,
            remote=link.remote,
            use_starttls=opts.use_starttls,
            secret=opts.shared,
            tls_available=ctx is not None,
            check_cert=router.cert_checker,
            state_timeout=router.state_timeout,
            sm=opts.stream_management,
            # XEP-0178: use EXTERNAL only when our certificate can prove link.local
            sasl_external=opts.sasl_external
            and own_certificate_problem(opts.certfile, link.local) is None,
            bidi=opts.bidi,
            limits=router.bidi.own_limits,
            policy_allows=self._policy_allows,
        )

        def attach(stream: XmlStream) -> None:
            stream.link = link
            if not router.bidi.serves(link):  # else an incoming bidi stream took the pair over
                link.stream = stream
            router.streams.add(stream)
            for req in link.take_verifies():
                stream.feed_event(req)

        stream = XmlStream(
            machine,
            router,
            direction="out",
            ssl_context=ctx,
            max_stanza_size=router.max_stanza_size,
            keepalive=router.keepalive,
            on_connected=attach,
            idle_timeout=router.idle_timeout,
            write_stall_timeout=router.write_stall,
            max_queue=router.max_fsm_queue,
        )
        if attempt is not None and attempt.current is not None and attempt.current.direct_tls:
            self._probing[link] = (attempt, stream)
        return stream

    def authenticated(self, stream: XmlStream, link: OutboundLink) -> None:
        """Our outbound *stream* for *link* authenticated: what waits for it goes out."""
        keep_peer_awake(stream)
        self._unprobe(link, stream)
        link.established = True
        if len(self._served) < MAX_SERVED_PAIRS:
            pair = (link.local, link.remote)
            for known in stream.authenticated:  # the stream's own tuple, not one more copy
                if known == pair:
                    pair = known
                    break
            self._served.add(pair)
        if link.expiry_timer is not None:
            link.expiry_timer.cancel()
            link.expiry_timer = None
        backoff = self._backoff.get(link.remote)
        if backoff is not None:
            backoff.reset()
        self.router.sm.flush(link)
        link.finish(True)

    def auth_failed(self, link: OutboundLink, action: AuthFailed) -> None:
        """*link*'s own stream was refused (or failed before it authenticated)."""
        text = action.text
        attempt = self._failed_candidate(link, action)
        if attempt is not None:
            if attempt.untried and not self.router.closing:
                failure = attempt.failures[-1]
                log.warning(
                    "connect to %s failed: %s; trying the next candidate", link.remote, failure
                )
                link.stream = None
                link.last_condition, link.last_text = action.condition, text
                self._run(link, attempt)
                return
            if len(attempt.failures) > 1:  # every candidate failed: say how each did, in order
                text = str(ConnectError(link.remote, attempt.failures))
        # a peer that accepted this very pair before and refuses it now is most likely
        # restarting (its components reconnect after it, so for a while it answers
        # host-unknown for their domains): queue, don't bounce, and try again after the
        # back-off; the pending deadline still bounds the wait
        known = (link.local, link.remote) in self._served
        if action.retry or known:
            self.retry(link, action.condition, text)
        else:
            self.failed(link, action.condition, text)

    def _failed_candidate(self, link: OutboundLink, action: AuthFailed) -> Attempt | None:
        """XEP-0368 section 3, RFC 6120 section 3.2.1: a Direct TLS candidate whose stream failed
        before the peer opened its XMPP stream (the TLS handshake failed or timed out, its
        certificate was refused, no stream header came) failed as a candidate, like one that
        refused TCP: recorded in its attempt, which the caller may resume. Nothing had been
        sent on it but TLS and our header (stanzas wait for authentication). A peer that opened
        its stream and then refused us answered as the server: that is not a candidate failure.

        Returns:
            the attempt the failure was recorded in, or None (not a candidate failure).
        """
        probe = self._probing.pop(link, None)
        if probe is None:
            return None
        attempt, stream = probe
        if stream is not link.stream or stream.authenticated or stream.machine.stream_id:
            return None
        reason = "timeout" if action.condition == "remote-server-timeout" else "tls"
        attempt.failed(reason, action.text or action.condition)
        return attempt

    def _unprobe(self, link: OutboundLink, stream: XmlStream | None = None) -> None:
        """*link*'s Direct TLS candidate (*stream*, or any) is no longer one that may fail over."""
        probe = self._probing.get(link)
        if probe is not None and (stream is None or probe[1] is stream):
            del self._probing[link]

    def failed(self, link: OutboundLink, condition: str, text: str | None) -> None:
        """A failure retrying cannot mend: bounce everything queued, forget the link."""
        log.warning("stream %s -> %s failed: %s", link.local, link.remote, text)
        self._unprobe(link)
        link.cancel_timers()
        link.stream = None
        if self.outbound.get((link.local, link.remote)) is link:
            del self.outbound[(link.local, link.remote)]
        for raw in link.queue.drain():
            self.router.bounce(raw, link.local, condition, text)
        link.release_sources()
        self.router.verifier.fail(link, text)
        link.finish(False)

    def retry(self, link: OutboundLink, condition: str, text: str | None) -> None:
        """A transient failure: keep the queue, try again after the domain's back-off."""
        router = self.router
        self._unprobe(link)
        link.stream = None
        link.last_condition, link.last_text = condition, text
        # a peer waiting for a dialback verdict cannot wait for our back-off
        router.verifier.fail(link, text)
        if (
            router.closing
            or not link.queue
            or self.outbound.get((link.local, link.remote)) is not link
        ):
            self.failed(link, condition, text)
            return
        backoff = self._backoff.get(link.remote)
        if backoff is None:
            max_delay = max(router.options_for(link.local).max_retry_delay, router.retry_initial)
            backoff = self._backoff[link.remote] = Backoff(max_delay, initial=router.retry_initial)
        delay = backoff.next_delay()
        log.warning(
            "stream %s -> %s failed (%s); retrying in %.1f s with %d stanza(s) queued",
            link.local,
            link.remote,
            text,
            delay,
            len(link.queue),
        )
        link.retry_timer = asyncio.get_event_loop().call_later(delay, self._retry, link)

    def _retry(self, link: OutboundLink) -> None:
        link.retry_timer = None
        if self.outbound.get((link.local, link.remote)) is not link:
            return
        if not link.queue:
            del self.outbound[(link.local, link.remote)]
            link.cancel_timers()
            link.finish(False)
            return
        self._start_attempt(link)

    def arm_expiry(self, link: OutboundLink) -> None:
        """Bounce *link*'s oldest queued stanza when it has waited the pending deadline."""
        if link.expiry_timer is not None:
            return
        when = link.queue.next_expiry()
        if when is not None:
            link.expiry_timer = asyncio.get_event_loop().call_at(when, self._expire, link)

    def _expire(self, link: OutboundLink) -> None:
        """Bounce the stanzas that waited longer than the pending deadline."""
        link.expiry_timer = None
        deadline = self.router.pending_deadline
        text = link.last_text or f"no stream to {link.remote} within {deadline:g} s"
        for raw in link.queue.expired(self.now()):
            self.router.bounce(raw, link.local, link.last_condition, text)
        if not link.congested:
            link.release_sources()
        self.arm_expiry(link)

    def closed(self, stream: XmlStream) -> None:
        """Our outbound *stream* is gone: what it never handed to its transport goes first on
        the pair's next stream (bounced if the peer had stopped reading)."""
        link = stream.link
        if link is not None:
            self._unprobe(link, stream)
        unsent = stream.take_unsent()
        if unsent and stream.deaf and link is not None:
            # the peer stopped reading: resending to it would only wait again
            for raw in unsent:
                self.router.bounce(
                    raw, link.local, "remote-server-timeout", "the peer stopped reading"
                )
            unsent = []
        if link is None or link.stream is not stream:
            if link is not None and unsent:
                self.requeue_unsent(link.local, link.remote, unsent)
            return
        if unsent:
            link.queue.push_front(unsent, self.now())
        if link.established and not link.queue:
            if self.outbound.get((link.local, link.remote)) is link:
                del self.outbound[(link.local, link.remote)]
            return
        self.retry(link, "remote-server-not-found", "the stream closed")

    def requeue_unsent(self, local: str, remote: str, raws: list[bytes]) -> None:
        """Stanzas a dead stream never handed to its transport (nothing of them reached the
        peer): first in line for the pair's next stream."""
        link = self.outbound.get((local, remote))
        if link is None:
            link = self.open(local, remote)
        link.queue.push_front(raws, self.now())
        self.arm_expiry(link)

    def close_all(self) -> None:
        """Shutdown: links with no stream yet stop trying and bounce what they hold."""
        for link in list(self.outbound.values()):
            link.cancel_timers()
            if link.stream is None:
                if link.task is not None:
                    link.task.cancel()
                self.failed(link, "service-unavailable", "the node is shutting down")
