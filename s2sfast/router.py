"""The node's one router: every stanza, from any source, is looked up once by its ``to`` domain.

Routes, in the order they are tried:
  - local routes registered by domain (:meth:`Router.add_route`: a connected XEP-0114
    component, anything with ``deliver(stanza) -> bool``);
  - the node's own domains (and whatever ``hosted`` accepts): the local handler (the library's
    ``on_stanza`` handlers, or the daemon's built-in answers);
  - any other domain: the (local, remote) pair's outbound S2S stream, queued while it connects,
    authenticates or backs off, bounced on failure.
Inbound streams are indexed by stream id; dialback verify requests are brokered between them.

The data plane stays raw: a stanza is the framer's Stanza (to/from and their domains read by
the framer) and its exact bytes are written to the next hop; nothing here builds an XML tree
except the bounces it makes. Every hop is bounded: a destination that is congested (a stream
or component whose peer reads slower than we write, or a pending queue past its mark) stops
its sources being read (``hold_source``) until it drains, and refuses past its bound, which
bounces the stanza with resource-constraint.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from s2sfast.config import Config, S2SOptions
from s2sfast.framing import Stanza, StreamFramer
from s2sfast.limits import MAX_PENDING_VERIFICATIONS, MAX_SERVED_PAIRS, PENDING_HOLD_BYTES
from s2sfast.net.backoff import (
    DEFAULT_INITIAL_DELAY,
    DEFAULT_PENDING_DEADLINE,
    DEFAULT_PENDING_MAX_STANZAS,
    Backoff,
    PendingBudget,
    PendingQueue,
    QueueFull,
)
from s2sfast.net.connect import ConnectError, connect_first
from s2sfast.net.dns import Candidate, ResolutionError, Resolver
from s2sfast.net.peercert import own_certificate_problem
from s2sfast.net.stream import WRITE_STALL_TIMEOUT, XmlStream
from s2sfast.protocol.bidi import BidiRoute
from s2sfast.protocol.dialback import key_matches
from s2sfast.protocol.errors import LocalStreamError, make_bounce
from s2sfast.protocol.events import (
    Acked,
    Authenticated,
    AuthFailed,
    Deliver,
    Drop,
    Handled,
    Unacked,
    VerifyAnswered,
    VerifyKey,
    VerifyRequest,
    VerifyResult,
)
from s2sfast.protocol.negotiation import stream_header
from s2sfast.protocol.outgoing import OutgoingMachine
from s2sfast.protocol.policy import Policy
from s2sfast.protocol.stream_limits import StreamLimits, over_limit_text

__all__ = ["Router", "OutboundLink", "stanza_from_bytes", "MAX_QUEUE"]

log = logging.getLogger("s2sfast.router")

#: stanzas held per (local, remote) pair while its stream connects, authenticates or backs off;
#: beyond this the sender gets resource-constraint (rationale in s2sfast.net.backoff)
MAX_QUEUE = DEFAULT_PENDING_MAX_STANZAS

_HEADER = stream_header(from_=None, to=None)


#: one framer per thread, already past a stream header, for stanza_from_bytes: a fresh framer
#: and header per call cost 1.9 us of Node.send's time, a reused one 0.26 us (timeit, 200 B)
_reusable = threading.local()


def stanza_from_bytes(raw: bytes) -> Stanza:
    """Frame one stanza's bytes (to read its to/from/type without building a tree).

    Raises:
        ValueError: *raw* is not exactly one complete stanza.
        FramingError: the framer refuses the bytes (not well-formed, restricted XML, ...).
    """
    framer = getattr(_reusable, "framer", None)
    if framer is None:
        framer = StreamFramer()
        framer.feed(_HEADER)
    _reusable.framer = None  # taken: a failure below leaves it out (its state is unknown)
    events = framer.feed(raw)
    if (
        len(events) != 1
        or not isinstance(events[0], Stanza)
        or (len(events[0].raw) != len(raw) and events[0].raw != raw.strip())
    ):
        raise ValueError("expected exactly one complete stanza")
    _reusable.framer = framer  # exactly one whole stanza: the framer is between stanzas again
    return events[0]


class OutboundLink:
    """One (local, remote) pair's outbound stream and what waits for it.

    While it has no stream its pending queue is the destination: past
    :data:`~s2sfast.limits.PENDING_HOLD_BYTES` (or its budget share, if smaller) the sources
    feeding it are held (not read, Node.send waiting) until the stream is up and the queue has
    gone out, or it bounced.
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
        "done",
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
        self.verify_queue: list[VerifyRequest] = []
        self.established = False
        #: resolved when the link is established or has failed (stop() waits on it)
        self.done: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.retry_timer: asyncio.TimerHandle | None = None
        self.expiry_timer: asyncio.TimerHandle | None = None
        #: why the last attempt failed: what expired stanzas bounce with
        self.last_condition = "remote-server-timeout"
        self.last_text: str | None = None
        self.holding: set[Any] = set()
        self._drained: asyncio.Event | None = None

    @property
    def congested(self) -> bool:
        """The pending queue is past its hold mark: sources should wait."""
        queue = self.queue
        budget = queue.budget
        limit = budget.current_share if budget is not None else queue.max_bytes
        return queue.nbytes > min(limit // 2, PENDING_HOLD_BYTES)

    def hold_source(self, source: Any) -> None:
        if source is not None and source not in self.holding:
            self.holding.add(source)
            source.held_by(self)

    def release_sources(self) -> None:
        if self._drained is not None:
            self._drained.set()
        if self.holding:
            holding = list(self.holding)
            self.holding.clear()
            for source in holding:
                source.released_by(self)

    async def drained(self) -> None:
        """Wait until the queue has gone out (or bounced)."""
        if not self.congested:
            return
        if self._drained is None or self._drained.is_set():
            self._drained = asyncio.Event()
        await self._drained.wait()

    def cancel_timers(self) -> None:
        for handle in (self.retry_timer, self.expiry_timer):
            if handle is not None:
                handle.cancel()
        self.retry_timer = self.expiry_timer = None


class Router:
    """Routes stanzas for a node and owns its streams (it is every XmlStream's owner).

    Args:
        config: the node's configuration.
        deliver: called with every stanza for a local domain (authorised inbound, or a bounce).
        client_context: (local domain) -> SSLContext for outgoing STARTTLS, or None.
        cert_checker: (chain, domain) -> PeerCertStatus, for outbound certificate checks.
        max_queue: per-pair queue bound.
        keepalive: seconds of silence before a whitespace keepalive on authenticated streams.
        state_timeout: seconds per negotiation step on outbound streams.
        resolver: DNS for remote domains (``[s2s] address`` overrides bypass it).
        retry_initial: the first reconnect delay (doubling up to ``[s2s] max_retry_delay``).
        pending_deadline: seconds a queued stanza waits for its stream before it bounces.
        pending_budget: bytes queued for all remote domains together (fair share each).
        max_fsm_queue: stanzas an outbound stream holds while its peer is not reading.
    """

    def __init__(
        self,
        config: Config,
        *,
        deliver: Callable[[Stanza], None],
        client_context: Callable[[str], ssl.SSLContext | None],
        cert_checker: Callable[[tuple[bytes, ...], str], Any] | None = None,
        max_queue: int = MAX_QUEUE,
        keepalive: float | None = 60.0,
        state_timeout: float | None = 5.0,
        max_stanza_size: int | None = None,
        resolver: Resolver | None = None,
        idle_timeout: float | None = None,
        write_stall: float = WRITE_STALL_TIMEOUT,
        retry_initial: float = DEFAULT_INITIAL_DELAY,
        pending_deadline: float = DEFAULT_PENDING_DEADLINE,
        pending_budget: PendingBudget | None = None,
        max_fsm_queue: int | None = None,
    ) -> None:
        self.config = config
        self.deliver = deliver
        self.client_context = client_context
        self.cert_checker = cert_checker
        self.max_queue = max_queue
        self.keepalive = keepalive
        self.state_timeout = state_timeout
        self.max_stanza_size = max_stanza_size
        self.resolver = resolver or Resolver.from_options(config.s2s.dns)
        self.retry_initial = retry_initial
        self.idle_timeout = idle_timeout
        self.write_stall = write_stall
        self.pending_deadline = pending_deadline
        #: remote domain -> reconnect back-off (outlives links)
        self._backoff: dict[str, Backoff] = {}
        #: (stream id, receiving, originating) of VerifyKeys not answered yet, node-wide
        self._verifying: set[tuple[str, str, str]] = set()
        #: observers of (kind, fields) outcome events (metrics); see Node.on_event
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        #: local domain -> the host whose [s2s] options it uses
        self.parent: dict[str, str] = {h.lower(): h for h in config.hosts}
        #: live set of local domains (incoming machines read it)
        self.local_domains: set[str] = set(self.parent)
        self.outbound: dict[tuple[str, str], OutboundLink] = {}
        self.inbound: dict[str, XmlStream] = {}
        self.streams: set[XmlStream] = set()
        self._policies: dict[int, Policy] = {}
        #: (local, remote) -> the policy's verdict, until the policy is reloaded
        self._allowed: dict[tuple[str, str], bool] = {}
        self.pending_budget = pending_budget or PendingBudget()
        self.max_fsm_queue = max_fsm_queue
        #: domain -> local route (a component connection): ``deliver(stanza) -> bool``
        self.routes: dict[str, Any] = {}
        #: more local domains than local_domains (the daemon: subdomains with no component)
        self.hosted: Callable[[str], bool] | None = None
        #: counters for routed stanzas (s2sfast.server.metrics.Metrics) or None
        self.metrics: Any = None
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: (local, remote) pairs an outbound stream of ours has authenticated since start: a
        #: refusal of one of them is taken as the peer restarting, retried within the deadline
        self._served: set[tuple[str, str]] = set()
        #: XEP-0198: senders waiting for an ack to open a stream's unacked window
        self._sm_waiters: dict[XmlStream, asyncio.Future[None]] = {}

    # --- configuration views -------------------------------------------------------------------

    def options_for(self, domain: str) -> S2SOptions:
        return self.config.s2s_for(self.parent.get(domain, domain))

    def policy_allows(self, local: str, remote: str) -> bool:
        allowed = self._allowed.get((local, remote))
        if allowed is None:
            if len(self._allowed) > 65536:
                self._allowed.clear()
            allowed = self._allowed[(local, remote)] = self._policy_allows(local, remote)
        return allowed

    def _policy_allows(self, local: str, remote: str) -> bool:
        opts = self.options_for(local)
        policy = self._policies.get(id(opts))
        if policy is None:
            policy = self._policies[id(opts)] = Policy.from_options(opts)
        return policy.allows(remote)

    def reload_policy(self, s2s: S2SOptions, host_s2s: dict[str, S2SOptions]) -> None:
        """Take default_policy/host_policy from *s2s* and *host_s2s*; nothing else changes.

        New stanzas and new dialback requests see the new policy; streams already
        authenticated stay up (a denied pair's next outbound stanza bounces).
        """

        def policies(old: S2SOptions, new: S2SOptions) -> S2SOptions:
            return replace(old, default_policy=new.default_policy, host_policy=new.host_policy)

        host = {h: policies(self.config.s2s_for(h), new) for h, new in host_s2s.items()}
        self.config = replace(
            self.config,
            s2s=policies(self.config.s2s, s2s),
            host_s2s={**self.config.host_s2s, **host},
        )
        self._policies.clear()
        self._allowed.clear()

    def add_local_domain(self, domain: str, parent: str) -> None:
        """Serve *domain* too, with the [s2s] options of local host *parent*."""
        domain = domain.lower()
        self.parent[domain] = self.parent.get(parent.lower(), parent)
        self.local_domains.add(domain)

    def remove_local_domain(self, domain: str) -> None:
        domain = domain.lower()
        if domain in self.config.hosts:
            raise ValueError(f"{domain} is a configured host")
        self.parent.pop(domain, None)
        self.local_domains.discard(domain)
        self._allowed.clear()

    def add_route(self, domain: str, destination: Any) -> None:
        """Stanzas to *domain* go to *destination* (``deliver(stanza) -> bool``)."""
        self.routes[domain.lower()] = destination

    def remove_route(self, domain: str, destination: Any) -> None:
        if self.routes.get(domain.lower()) is destination:
            del self.routes[domain.lower()]

    def is_local(self, domain: str) -> bool:
        """Whether *domain* is served here (a host, a component, a domain ``hosted`` accepts)."""
        return domain in self.routes or self._local_default(domain)

    def _local_default(self, domain: str) -> bool:
        """Whether the local handler serves *domain* (no route of its own)."""
        return domain in self.local_domains or (self.hosted is not None and self.hosted(domain))

    # --- sending -------------------------------------------------------------------------------

    def route(self, stanza: Stanza, source: Any = None) -> Any:
        """Route one framed stanza to its next hop, by the domain of its ``to``.

        Args:
            stanza: the framer's Stanza; its ``raw`` bytes are what leaves.
            source: what it was read from (a stream or component connection): held (not read)
                while the destination is congested. None for Node.send.

        Returns:
            The destination when it is congested (``await dest.drained()`` before sending
            more), else None.

        Raises:
            ValueError: bound for a remote domain but ``from`` is not at a local domain, or
                there is no ``to``.
        """
        domain = stanza.to_domain
        dest = self.routes.get(domain)
        if dest is not None:
            if not dest.deliver(stanza):
                why = f"{domain} is not taking stanzas (its queue is full or it is closing)"
                self.bounce(stanza.raw, domain, "resource-constraint", why)
                return None
            if dest.congested:
                dest.hold_source(source)
                return dest
            return None
        if domain in self.local_domains or (self.hosted is not None and self.hosted(domain)):
            self.deliver(stanza)
            return None
        return self._send_remote(stanza, source)

    def send(self, raw: bytes, stanza: Stanza) -> Any:
        """Route one stanza (raw bytes + its framed view) from a local domain (Node.send).

        Returns:
            The destination when it is congested (the caller waits for it to drain), else None.

        Raises:
            ValueError: ``from`` is not at a local domain, or ``to`` is missing.
        """
        if stanza.from_domain not in self.local_domains:
            raise ValueError(f"'from' {stanza.from_!r} is not at a local domain")
        if not stanza.to_domain:
            raise ValueError("the stanza has no 'to'")
        return self.route(stanza)

    def _send_remote(self, stanza: Stanza, source: Any) -> Any:
        local = stanza.from_domain
        remote = stanza.to_domain
        if local not in self.local_domains:
            raise ValueError(f"'from' {stanza.from_!r} is not at a local domain")
        if not remote:
            raise ValueError("the stanza has no 'to'")
        raw = stanza.raw
        metrics = self.metrics
        if metrics is not None:
            metrics.s2s_out(raw)
        if self.closing:
            self.bounce(raw, local, "service-unavailable", "the node is shutting down")
            return None
        if not self.policy_allows(local, remote):
            log.info("policy denies %s -> %s: bouncing", local, remote)
            self.bounce(raw, local, "service-unavailable", f"federation with {remote} is denied")
            return None
        link = self.outbound.get((local, remote))
        if link is not None and link.established and link.stream is not None:
            stream = link.stream
            if stream.writable:
                limit = stream.machine.peer_max_bytes
                if limit is not None and len(raw) > limit:
                    self._over_peer_limit(raw, local, remote, limit)
                    return None
                # XEP-0198 window full, or stanzas already wait for it: queue behind them
                if not link.queue and not stream.machine.window_full:
                    if not stream.write_stanza(raw):
                        self.bounce(
                            raw,
                            local,
                            "resource-constraint",
                            f"the stream to {remote} holds {stream.queued} stanzas already",
                        )
                        return None
                    if stream.congested:
                        stream.hold_source(source)
                        return stream
                    return None
            else:
                # closing (idle close, peer's </stream:stream>): a fresh stream takes over
                del self.outbound[(local, remote)]
                link.release_sources()
                link = None
        if link is None:
            link = self._open(local, remote)
        try:
            link.queue.push(raw, self._now())
        except QueueFull as exc:
            self.bounce(raw, local, exc.condition, f"stanzas to {remote} wait: {exc}")
            return None
        self._arm_expiry(link)
        if link.congested:
            link.hold_source(source)
            return link
        return None

    def bounce(
        self, raw: bytes, local: str, condition: str, text: str | None, *, by_us: bool = True
    ) -> None:
        """Return *raw* to its sender as an error stanza (when one is due), wherever it is.

        *by_us*: the error names *local* in ``by`` (False: the policy broken is the peer's).
        """
        try:
            data = make_bounce(raw, condition, text=text, by=local if by_us else None)
        except ValueError as exc:
            log.warning("cannot bounce a stanza: %s", exc)
            return
        if data is None:
            return
        self.emit("bounce", local=local, condition=condition)
        stanza = stanza_from_bytes(data)
        if self.metrics is not None and self.is_local(stanza.to_domain):
            self.metrics.s2s_in(stanza)
        try:
            self.route(stanza)
        except ValueError as exc:
            log.info("bounce to %s not routable: %s", stanza.to, exc)

    def emit(self, kind: str, **fields: Any) -> None:
        """Tell the observers about an outcome; an observer's failure is only logged."""
        for observer in self.observers:
            try:
                observer(kind, fields)
            except Exception:
                log.exception("event observer failed on %s", kind)

    # --- outbound links ------------------------------------------------------------------------

    def _now(self) -> float:
        # the loop is looked up once: asyncio.get_event_loop() per stanza cost a quarter of
        # the routing time while stanzas queued behind a full XEP-0198 window
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_event_loop()
        return loop.time()

    def _open(self, local: str, remote: str) -> OutboundLink:
        queue: PendingQueue[bytes] = PendingQueue(
            max_stanzas=self.max_queue, deadline=self.pending_deadline, budget=self.pending_budget
        )
        link = OutboundLink(local, remote, queue)
        self.outbound[(local, remote)] = link
        self._start_attempt(link)
        return link

    def _start_attempt(self, link: OutboundLink) -> None:
        link.retry_timer = None
        link.task = asyncio.get_event_loop().create_task(self._connect(link))

    async def _resolve(self, local: str, remote: str) -> list[Candidate]:
        """Where *remote*'s S2S service is: ``[s2s] address`` overrides, else DNS (SRV, A/AAAA).

        Raises:
            ResolutionError: the domain cannot be resolved (``condition`` says how to bounce).
        """
        return await self.resolver.resolve(remote, self.options_for(local))

    async def _connect(self, link: OutboundLink) -> None:
        """Resolve and open the TCP connection; the XmlStream takes over from there."""
        opts = self.options_for(link.local)
        try:
            candidates = await self._resolve(link.local, link.remote)
            await connect_first(
                candidates,
                lambda: self._outgoing_stream(link),
                timeout_ms=opts.outgoing.connection_timeout,
                domain=link.remote,
            )
        except ResolutionError as exc:
            if exc.temporary:
                self._link_retry(link, exc.condition, str(exc))
            else:
                self._link_failed(link, exc.condition, str(exc))
        except ConnectError as exc:
            self._link_retry(link, exc.condition, str(exc))

    def _outgoing_stream(self, link: OutboundLink) -> XmlStream:
        opts = self.options_for(link.local)
        ctx = self.client_context(link.local)
        machine = OutgoingMachine(
            local=link.local,
            remote=link.remote,
            use_starttls=opts.use_starttls,
            secret=opts.shared,
            tls_available=ctx is not None,
            check_cert=self.cert_checker,
            state_timeout=self.state_timeout,
            sm=opts.stream_management,
            # XEP-0178: use EXTERNAL only when our certificate can prove link.local
            sasl_external=opts.sasl_external
            and own_certificate_problem(opts.certfile, link.local) is None,
            bidi=opts.bidi,
            limits=self.own_limits,
            policy_allows=self.policy_allows,
        )

        def attach(stream: XmlStream) -> None:
            stream.link = link
            if not self._bidi_serves(link):  # else an incoming bidi stream took the pair over
                link.stream = stream
            self.streams.add(stream)
            for req in link.verify_queue:
                stream.feed_event(req)
            link.verify_queue.clear()

        return XmlStream(
            machine,
            self,
            direction="out",
            ssl_context=ctx,
            max_stanza_size=self.max_stanza_size,
            keepalive=self.keepalive,
            on_connected=attach,
            idle_timeout=self.idle_timeout,
            write_stall_timeout=self.write_stall,
            max_queue=self.max_fsm_queue,
        )

    def _link_failed(self, link: OutboundLink, condition: str, text: str | None) -> None:
        """A failure retrying cannot mend: bounce everything queued, forget the link."""
        log.warning("stream %s -> %s failed: %s", link.local, link.remote, text)
        link.cancel_timers()
        link.stream = None
        if self.outbound.get((link.local, link.remote)) is link:
            del self.outbound[(link.local, link.remote)]
        for raw in link.queue.drain():
            self.bounce(raw, link.local, condition, text)
        link.release_sources()
        self._fail_verifies(link, text)
        if not link.done.done():
            link.done.set_result(False)

    def _link_retry(self, link: OutboundLink, condition: str, text: str | None) -> None:
        """A transient failure: keep the queue, try again after the domain's back-off."""
        link.stream = None
        link.last_condition, link.last_text = condition, text
        # a peer waiting for a dialback verdict cannot wait for our back-off
        self._fail_verifies(link, text)
        if (
            self.closing
            or not link.queue
            or self.outbound.get((link.local, link.remote)) is not link
        ):
            self._link_failed(link, condition, text)
            return
        backoff = self._backoff.get(link.remote)
        if backoff is None:
            max_delay = max(self.options_for(link.local).max_retry_delay, self.retry_initial)
            backoff = self._backoff[link.remote] = Backoff(max_delay, initial=self.retry_initial)
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
            if not link.done.done():
                link.done.set_result(False)
            return
        self._start_attempt(link)

    def _arm_expiry(self, link: OutboundLink) -> None:
        if link.expiry_timer is not None:
            return
        when = link.queue.next_expiry()
        if when is not None:
            link.expiry_timer = asyncio.get_event_loop().call_at(when, self._expire, link)

    def _expire(self, link: OutboundLink) -> None:
        """Bounce the stanzas that waited longer than the pending deadline."""
        link.expiry_timer = None
        text = link.last_text or f"no stream to {link.remote} within {self.pending_deadline:g} s"
        for raw in link.queue.expired(self._now()):
            self.bounce(raw, link.local, link.last_condition, text)
        if not link.congested:
            link.release_sources()
        self._arm_expiry(link)

    def _fail_verifies(self, link: OutboundLink, text: str | None) -> None:
        for req in link.verify_queue:
            self._answer_verify(req.receiving, req.originating, req.stream_id, "error", text)
        link.verify_queue.clear()

    # --- XEP-0288 / XEP-0478 --------------------------------------------------------------------

    @property
    def own_limits(self) -> StreamLimits:
        """What we accept (XEP-0478), announced in our ``<bidi/>`` requests."""
        idle = self.idle_timeout
        return StreamLimits(
            max_bytes=self.max_stanza_size, idle_seconds=int(idle) if idle else None
        )

    def _bidi_serves(self, link: OutboundLink) -> bool:
        """Whether an incoming bidi stream (XEP-0288) is *link*'s established stream."""
        stream = link.stream
        return (
            link.established and stream is not None and stream.direction == "in" and stream.writable
        )

    def _bidi_route(self, stream: XmlStream, action: BidiRoute) -> None:
        """XEP-0288: incoming *stream* may now carry stanzas from action.local to
        action.remote. It becomes the pair's outbound stream unless an outbound stream of
        ours is established already; stanzas waiting for a connection go out on it now."""
        key = (action.local, action.remote)
        if self.closing or not self.policy_allows(*key):
            return
        link = self.outbound.get(key)
        if link is not None and link.stream is not None and link.stream.writable:
            # our own stream serves the pair, or will once it authenticates (it may be the one
            # verifying this very stream's dialback key; both sides retiring theirs would
            # leave none): the bidi stream is not needed for this pair
            return
        if link is None:
            queue: PendingQueue[bytes] = PendingQueue(
                max_stanzas=self.max_queue,
                deadline=self.pending_deadline,
                budget=self.pending_budget,
            )
            link = self.outbound[key] = OutboundLink(action.local, action.remote, queue)
        else:
            if link.retry_timer is not None:
                link.retry_timer.cancel()
                link.retry_timer = None
            if link.stream is None and link.task is not None and not link.task.done():
                link.task.cancel()  # still resolving or connecting: no second connection
        stream.link = link
        link.stream = stream
        link.established = True
        self._keep_peer_awake(stream)
        self.emit(
            "bidi-route", local=action.local, remote=action.remote, stream_id=stream.stream_id
        )
        self.sm_flush(link)
        if not link.done.done():
            link.done.set_result(True)

    @staticmethod
    def _keep_peer_awake(stream: XmlStream) -> None:
        """XEP-0478: the peer may call a stream idle after its announced idle-seconds without
        traffic from us; keep our whitespace keepalives (when we send any) within half of it."""
        limits = stream.machine.peer_limits
        idle = limits.idle_seconds if limits is not None else None
        if idle and stream.keepalive and stream.keepalive > idle / 2:
            stream.keepalive = idle / 2

    def _bidi_closed(self, stream: XmlStream, link: OutboundLink) -> None:
        """An incoming bidi stream that carried *link*'s stanzas is gone: what never left
        goes first on the pair's next stream, which we open only if something waits for it."""
        unsent = stream.take_unsent()
        if unsent and stream.deaf:
            for raw in unsent:
                self.bounce(raw, link.local, "remote-server-timeout", "the peer stopped reading")
            unsent = []
        if link.stream is not stream:
            if unsent:
                self._requeue_unsent(link.local, link.remote, unsent)
            return
        link.stream = None
        link.established = False  # the next stream must authenticate before it writes
        if unsent:
            link.queue.push_front(unsent, self._now())
        if link.queue:
            self._link_retry(link, "remote-server-not-found", "the bidirectional stream closed")
            return
        if self.outbound.get((link.local, link.remote)) is link:
            del self.outbound[(link.local, link.remote)]
        link.cancel_timers()
        link.release_sources()

    def _over_peer_limit(self, raw: bytes, local: str, remote: str, limit: int) -> None:
        """XEP-0478 section 4: a stanza above the peer's announced max-bytes is not sent (the
        peer would kill the stream); its sender gets policy-violation without ``by``."""
        log.info(
            "stanza of %d bytes to %s exceeds its limit of %d: bouncing", len(raw), remote, limit
        )
        self.bounce(
            raw, local, "policy-violation", over_limit_text(len(raw), limit, remote), by_us=False
        )

    def _within_peer_limit(self, raws: list[bytes], link: OutboundLink, limit: int) -> list[bytes]:
        if all(len(raw) <= limit for raw in raws):
            return raws
        out = []
        for raw in raws:
            if len(raw) > limit:
                self._over_peer_limit(raw, link.local, link.remote, limit)
            else:
                out.append(raw)
        return out

    # --- dialback brokering --------------------------------------------------------------------

    def _verify(self, action: VerifyKey) -> None:
        """Receiving role: ask the authoritative server over our stream to it."""
        if action.originating in self.local_domains:
            # we are the authoritative server ourselves: no connection to make
            secret = self.options_for(action.originating).shared
            valid = key_matches(
                secret, action.receiving, action.originating, action.stream_id, action.key
            )
            self._answer_verify(
                action.receiving,
                action.originating,
                action.stream_id,
                "valid" if valid else "invalid",
                None,
            )
            return
        if self.closing or len(self._verifying) >= MAX_PENDING_VERIFICATIONS:
            why = "shutting down" if self.closing else "too many pending verifications"
            self._answer_verify(
                action.receiving, action.originating, action.stream_id, "error", why
            )
            return
        self._verifying.add((action.stream_id, action.receiving, action.originating))
        req = VerifyRequest(
            receiving=action.receiving,
            originating=action.originating,
            stream_id=action.stream_id,
            key=action.key,
        )
        link = self.outbound.get((action.receiving, action.originating))
        if link is None:
            link = self._open(action.receiving, action.originating)
        if link.stream is not None:
            link.stream.feed_event(req)
        else:
            link.verify_queue.append(req)

    def _answer_verify(
        self, receiving: str, originating: str, stream_id: str, type_: str, text: str | None
    ) -> None:
        self._verifying.discard((stream_id, receiving, originating))
        inbound = self.inbound.get(stream_id)
        if inbound is None:
            log.info("verify answer for a stream that is gone (%s)", stream_id)
            return
        inbound.feed_event(
            VerifyResult(
                receiving=receiving,
                originating=originating,
                stream_id=stream_id,
                type=type_,
                text=text,
            )
        )

    # --- StreamOwner ---------------------------------------------------------------------------

    def incoming_connected(self, stream: XmlStream) -> None:
        limiter = stream.limiter
        if limiter is not None:
            address = self._address(stream)
            refusal = limiter.admit(address)
            if refusal is not None:
                log.warning("refusing S2S connection from %s: %s", address, refusal.text)
                stream.fail(LocalStreamError(refusal.condition, refusal.text))
                return
            stream.admitted = True
        self.streams.add(stream)
        self.inbound[stream.stream_id] = stream

    def stream_action(self, stream: XmlStream, action: Any) -> None:
        kind = type(action)
        if kind is Deliver:
            self.deliver_inbound(stream, action)
        elif kind is Acked:
            if stream.link is not None and stream.link.stream is stream:
                self.sm_flush(stream.link)
            if not self.sm_blocked(stream):
                self._sm_wake(stream)
        elif kind is Unacked:
            self.requeue(action.local, action.remote, action.raws, action.reason)
        elif kind is VerifyKey:
            # index under the id the key names (the id changes when TLS restarts the stream)
            self.inbound[action.stream_id] = stream
            self._verify(action)
        elif kind is VerifyAnswered:
            self._answer_verify(
                action.receiving, action.originating, action.stream_id, action.type, action.text
            )
        elif kind is Authenticated:
            self.emit(
                "stream-authenticated",
                direction=stream.direction,
                local=action.local,
                remote=action.remote,
                method=action.method,
                tls=stream.tls,
                stream_id=stream.stream_id,
            )
            link = stream.link
            if stream.direction == "out" and link is not None:
                self._keep_peer_awake(stream)
                link.established = True
                if len(self._served) < MAX_SERVED_PAIRS:
                    self._served.add((link.local, link.remote))
                if link.expiry_timer is not None:
                    link.expiry_timer.cancel()
                    link.expiry_timer = None
                backoff = self._backoff.get(link.remote)
                if backoff is not None:
                    backoff.reset()
                self.sm_flush(link)
                if not link.done.done():
                    link.done.set_result(True)
            elif stream.direction == "in":
                self.inbound[stream.stream_id] = stream
                if stream.admitted and len(stream.authenticated) == 1:
                    stream.limiter.authenticated(self._address(stream))
        elif kind is AuthFailed:
            self.emit(
                "auth-failed",
                local=action.local,
                remote=action.remote,
                condition=action.condition,
                text=action.text,
                retry=action.retry,
            )
            link = stream.link
            if link is not None and link.stream is stream:
                # a peer that accepted this very pair before and refuses it now is most likely
                # restarting (its components reconnect after it, so for a while it answers
                # host-unknown for their domains): queue, don't bounce, and try again after the
                # back-off; the pending deadline still bounds the wait
                known = (link.local, link.remote) in self._served
                if action.retry or known:
                    self._link_retry(link, action.condition, action.text)
                else:
                    self._link_failed(link, action.condition, action.text)
        elif kind is BidiRoute:
            self._bidi_route(stream, action)
        elif kind is Drop:
            log.info("dropped on %s: %s", stream.describe(), action.reason)
        else:  # pragma: no cover - a new action kind without routing is a bug
            raise TypeError(f"router cannot perform {kind.__name__}")

    # --- XEP-0198 (s2sfast.protocol.sm does the counting; these only move stanzas) ----------

    def deliver_inbound(self, stream: XmlStream, action: Deliver) -> None:
        """An authorised inbound stanza: to its local route (reading *stream* is held while
        that route is congested) or the local handler. A counted one (XEP-0198) is reported
        handled once it has left towards its next hop, or the handler (and the awaitable it
        returned) finished, so the ack covers only that."""
        stanza = action.stanza
        if self.metrics is not None:
            self.metrics.s2s_in(stanza)
        done = None
        dest = self.routes.get(stanza.to_domain)
        try:
            if dest is None and self._local_default(stanza.to_domain):
                done = self.deliver(stanza)
            else:
                busy = self.route(stanza, stream)
                if busy is not None and action.seq is not None:
                    # queued behind a congested next hop: handled once it drained to its
                    # transport, so the ack never covers a stanza still in our queue
                    done = asyncio.ensure_future(busy.drained())
        except ValueError as exc:  # the incoming machine lets only local domains through
            log.info("dropped on %s: %s", stream.describe(), exc)
        if action.seq is None:
            return
        handled = Handled(seq=action.seq)
        if done is None or not hasattr(done, "add_done_callback"):
            stream.feed_event(handled)
            return
        done.add_done_callback(lambda _f: stream.feed_event(handled))

    def sm_blocked(self, stream: XmlStream) -> bool:
        """Whether a sender should wait for acks before writing more to *stream*: half its
        unacked window is in flight (the other half absorbs senders already on their way)."""
        sm = getattr(stream.machine, "sm_out", None)
        return sm is not None and 2 * len(sm.unacked) >= sm.max_unacked and stream.writable

    async def sm_room(self, stream: XmlStream) -> None:
        """Wait until an ack opens *stream*'s window or the stream ends (XEP-0198 backpressure;
        a peer that stops acking is failed by its machine after SM_ACK_TIMEOUT)."""
        waiter = self._sm_waiters.get(stream)
        if waiter is None:
            waiter = self._sm_waiters[stream] = asyncio.get_event_loop().create_future()
        await asyncio.shield(waiter)

    def _sm_wake(self, stream: XmlStream) -> None:
        waiter = self._sm_waiters.pop(stream, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def sm_flush(self, link: OutboundLink) -> None:
        """Write what waits in *link*'s queue while its stream's unacked window has room."""
        stream = link.stream
        if stream is None or not link.queue or not stream.writable:
            return
        machine = stream.machine
        if machine.sm_out is None:
            batch = link.queue.drain()
        else:
            room = machine.sm_out.max_unacked - len(machine.sm_out.unacked)
            batch = link.queue.take(room) if room > 0 else []
        if machine.peer_max_bytes is not None:
            batch = self._within_peer_limit(batch, link, machine.peer_max_bytes)
        stream.write_stanzas(batch)
        if not link.queue:
            if link.expiry_timer is not None:
                link.expiry_timer.cancel()
                link.expiry_timer = None
            if stream.congested:
                # the sources go on waiting, now for the stream to drain
                for source in link.holding:
                    stream.hold_source(source)
            link.release_sources()

    def requeue(self, local: str, remote: str, raws: tuple[bytes, ...], reason: str) -> None:
        """A dead stream's unacknowledged stanzas: ahead of the pair's queue for its next
        stream (``[s2s] stream_management.resend = true``), else bounced to their senders."""
        opts = self.options_for(local).stream_management
        if not opts.resend or self.closing:
            why = "the node is shutting down" if self.closing else reason
            for raw in raws:
                self.bounce(
                    raw,
                    local,
                    "recipient-unavailable",
                    f"the stream to {remote} ended before {remote} acknowledged this stanza "
                    f"({why}); it may or may not have been delivered",
                )
            return
        link = self.outbound.get((local, remote))
        if link is None:
            link = self._open(local, remote)
        elif link.stream is None or not link.stream.writable:
            link.established = False  # the next stream must authenticate before it writes
        waiting = link.queue.drain()
        now = self._now()
        for raw in (*raws, *waiting):
            try:
                link.queue.push(raw, now)
            except QueueFull as exc:
                self.bounce(raw, local, exc.condition, f"stanzas to {remote} wait: {exc}")
        self.emit("sm-requeue", local=local, remote=remote, count=len(raws), reason=reason)
        if link.established and link.stream is not None and link.stream.writable:
            self.sm_flush(link)  # another stream to the domain is up: resend there now
        self._arm_expiry(link)

    @staticmethod
    def _address(stream: XmlStream) -> str:
        return str(stream.peername[0]) if stream.peername else "?"

    def stream_event(self, stream: XmlStream, kind: str, fields: dict[str, Any]) -> None:
        self.emit(kind, direction=stream.direction, stream_id=stream.stream_id, **fields)

    def stream_closed(self, stream: XmlStream) -> None:
        self.streams.discard(stream)
        self._sm_wake(stream)
        if stream.direction == "out" and getattr(stream.machine, "reverse_requests", 0):
            # XEP-0288: the peer's dialback requests on our stream indexed it for verify answers
            for key in [k for k, v in self.inbound.items() if v is stream]:
                del self.inbound[key]
        if stream.direction == "in":
            for key in [k for k, v in self.inbound.items() if v is stream]:
                del self.inbound[key]
            if stream.admitted:
                stream.admitted = False
                stream.limiter.closed(
                    self._address(stream), was_authenticated=bool(stream.authenticated)
                )
            if stream.link is not None:
                self._bidi_closed(stream, stream.link)
            return
        link = stream.link
        unsent = stream.take_unsent()
        if unsent and stream.deaf and link is not None:
            # the peer stopped reading: resending to it would only wait again
            for raw in unsent:
                self.bounce(raw, link.local, "remote-server-timeout", "the peer stopped reading")
            unsent = []
        if link is None or link.stream is not stream:
            if link is not None and unsent:
                self._requeue_unsent(link.local, link.remote, unsent)
            return
        if unsent:
            link.queue.push_front(unsent, self._now())
        if link.established and not link.queue:
            if self.outbound.get((link.local, link.remote)) is link:
                del self.outbound[(link.local, link.remote)]
            return
        self._link_retry(link, "remote-server-not-found", "the stream closed")

    def _requeue_unsent(self, local: str, remote: str, raws: list[bytes]) -> None:
        """Stanzas a dead stream never handed to its transport (nothing of them reached the
        peer): first in line for the pair's next stream."""
        link = self.outbound.get((local, remote))
        if link is None:
            link = self._open(local, remote)
        link.queue.push_front(raws, self._now())
        self._arm_expiry(link)

    # --- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Wait (up to *timeout*) for links still negotiating with stanzas queued."""
        waiting = [lk.done for lk in self.outbound.values() if lk.queue and not lk.done.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    async def close_all(self, timeout: float) -> None:
        """Close every stream cleanly, then abort whatever has not closed within *timeout*."""
        self.closing = True
        for link in list(self.outbound.values()):
            link.cancel_timers()
            if link.stream is None:
                if link.task is not None:
                    link.task.cancel()
                self._link_failed(link, "service-unavailable", "the node is shutting down")
        streams = list(self.streams)
        for stream in streams:
            try:  # each stream on its own: a peer that vanished must not stop the others
                stream.close("shutdown")
            except Exception as exc:
                log.warning("closing %s failed: %s", stream.describe(), exc)
                _abort_quietly(stream)
        pending = [s.closed for s in streams if not s.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        aborted = [s for s in streams if not s.closed.done()]
        for stream in aborted:
            _abort_quietly(stream)
        if aborted:
            # connection_lost comes a loop turn later: wait for it, so that what those streams
            # still held is requeued or bounced while the local routes (components) are open
            await asyncio.wait([s.closed for s in aborted], timeout=1.0)


def _abort_quietly(stream: XmlStream) -> None:
    try:
        stream.abort()
    except Exception as exc:
        log.warning("aborting %s failed: %s", stream.describe(), exc)
