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

The Router keeps the routing table and the forwarding path; its collaborators in
:mod:`s2sfast.routing` each do one job: ``links`` (outbound link lifecycle), ``bidi``
(XEP-0288 links, XEP-0478 limits), ``verifier`` (dialback verify brokering) and ``sm``
(XEP-0198 glue).
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
from s2sfast.lograte import Tally
from s2sfast.net.backoff import (
    DEFAULT_INITIAL_DELAY,
    DEFAULT_PENDING_DEADLINE,
    DEFAULT_PENDING_MAX_STANZAS,
    PendingBudget,
    QueueFull,
)
from s2sfast.net.dns import Resolver
from s2sfast.net.stream import WRITE_STALL_TIMEOUT, XmlStream
from s2sfast.protocol.bidi import BidiRoute
from s2sfast.protocol.errors import LocalStreamError, make_bounce
from s2sfast.protocol.events import (
    Acked,
    Authenticated,
    AuthFailed,
    Deliver,
    Drop,
    Unacked,
    VerifyAnswered,
    VerifyKey,
)
from s2sfast.protocol.negotiation import stream_header
from s2sfast.protocol.policy import Policy
from s2sfast.routing.bidi import BidiLinks
from s2sfast.routing.links import Links, OutboundLink
from s2sfast.routing.sm import SmGlue
from s2sfast.routing.verify import VerifyBroker

__all__ = ["Router", "OutboundLink", "stanza_from_bytes", "MAX_QUEUE"]

log = logging.getLogger("s2sfast.router")


def _denied_line(pair: Any, count: int, seconds: float) -> None:
    log.info("policy denies %s -> %s: bounced %d more in %.1f s", *pair, count, seconds)


def _unroutable_line(domain: Any, count: int, seconds: float) -> None:
    log.info("%d more bounce(s) to %s not routable in %.1f s", count, domain, seconds)


#: floods of bounces: one INFO line per pair (domain) and second, each stanza at DEBUG
_denied = Tally(_denied_line)
_unroutable = Tally(_unroutable_line)

#: stanzas held per (local, remote) pair while its stream connects, authenticates or backs off;
#: beyond this the sender gets resource-constraint (rationale in s2sfast.net.backoff)
MAX_QUEUE = DEFAULT_PENDING_MAX_STANZAS

_HEADER = stream_header(from_=None, to=None)
#: what holds the inbound streams unread during the shutdown (Router.pause_inbound)
_SHUTDOWN_HOLD = "shutdown"


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
        framer = _reusable.framer = StreamFramer()
        framer.feed(_HEADER)
    try:
        events = framer.feed(raw)
    except BaseException:
        _reusable.framer = None  # a refused input: the framer's state is unknown, drop it
        raise
    if (
        len(events) != 1
        or not isinstance(events[0], Stanza)
        or (len(events[0].raw) != len(raw) and events[0].raw != raw.strip())
    ):
        _reusable.framer = None  # not between stanzas (a partial one, or more than one)
        raise ValueError("expected exactly one complete stanza")
    return events[0]


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
        #: (local, remote) -> the policy's verdict, until the policy is reloaded; a local
        #: domain whose policy has no host entries has one verdict for every remote domain,
        #: kept by local domain (no key per pair: a tuple and a slot per stream, issue 14)
        self._allowed: dict[tuple[str, str], bool] = {}
        self._allowed_from: dict[str, bool] = {}
        self.pending_budget = pending_budget or PendingBudget()
        self.max_fsm_queue = max_fsm_queue
        #: domain -> local route (a component connection): ``deliver(stanza) -> bool``
        self.routes: dict[str, Any] = {}
        #: more local domains than local_domains (the daemon: subdomains with no component)
        self.hosted: Callable[[str], bool] | None = None
        #: counters for routed stanzas (s2sfast.server.metrics.Metrics) or None
        self.metrics: Any = None
        self.closing = False
        #: the collaborators, one job each (s2sfast.routing)
        self.links = Links(self)
        self.bidi = BidiLinks(self)
        self.verifier = VerifyBroker(self)
        self.sm = SmGlue(self)
        # bound once: the queueing path calls these per stanza with no extra attribute hop
        self._open = self.links.open
        self._now = self.links.now
        self._arm_expiry = self.links.arm_expiry
        #: XEP-0198: whether a sender should wait before writing to a stream (Node.send, per
        #: stanza), and the wait (see s2sfast.routing.sm)
        self.sm_blocked = self.sm.blocked
        self.sm_room = self.sm.room
        #: write what waits in a link's queue within its stream's unacked window
        self.sm_flush = self.sm.flush
        #: a dead stream's unacknowledged stanzas: resent on the pair's next stream, or bounced
        self.requeue = self.sm.requeue

    # --- configuration views -------------------------------------------------------------------

    def options_for(self, domain: str) -> S2SOptions:
        return self.config.s2s_for(self.parent.get(domain, domain))

    def policy_allows(self, local: str, remote: str) -> bool:
        allowed = self._allowed_from.get(local)
        if allowed is None:
            allowed = self._allowed.get((local, remote))
            if allowed is None:
                allowed = self._policy_allows(local, remote)
        return allowed

    def _policy_allows(self, local: str, remote: str) -> bool:
        """Ask the policy, and remember its verdict (by local domain when it is uniform)."""
        opts = self.options_for(local)
        policy = self._policies.get(id(opts))
        if policy is None:
            policy = self._policies[id(opts)] = Policy.from_options(opts)
        allowed = policy.allows(remote)
        cache: dict[Any, bool] = self._allowed_from if policy.uniform else self._allowed
        if len(cache) > 65536:
            cache.clear()
        cache[local if policy.uniform else (local, remote)] = allowed
        return allowed

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
        self._allowed_from.clear()

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
        self._allowed_from.clear()

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
            The destination when it is congested (the caller waits for it to drain), or with
            XEP-0198 the stream's unacked window while half of it is in flight, else None.

        Raises:
            ValueError: ``from`` is not at a local domain, or ``to`` is missing.
        """
        if stanza.from_domain not in self.local_domains:
            raise ValueError(f"'from' {stanza.from_!r} is not at a local domain")
        remote = stanza.to_domain
        if not remote:
            raise ValueError("the stanza has no 'to'")
        if (
            remote in self.routes
            or remote in self.local_domains
            or (self.hosted is not None and self.hosted(remote))
        ):
            return self.route(stanza)
        return self._send_remote(stanza, None, for_node=True)

    def _send_remote(self, stanza: Stanza, source: Any, for_node: bool = False) -> Any:
        """*for_node*: the caller is Node.send, which also waits (the returned object's
        ``drained()``) while XEP-0198's window is half in flight."""
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
        pair = (local, remote)
        allowed = self._allowed_from.get(local)  # (policy_allows' first lookup, inline)
        if allowed is None:
            allowed = self.policy_allows(local, remote)
        if not allowed:
            if _denied.add((local, remote)):
                log.info("policy denies %s -> %s: bouncing", local, remote)
            else:
                log.debug("policy denies %s -> %s: bouncing", local, remote)
            self.bounce(raw, local, "service-unavailable", f"federation with {remote} is denied")
            return None
        link = self.outbound.get(pair)
        if link is not None and link.established and link.stream is not None:
            stream = link.stream
            if stream.writable:
                machine = stream.machine
                limit = machine.peer_max_bytes
                if limit is not None and len(raw) > limit:
                    self.bidi.over_peer_limit(raw, local, remote, limit)
                    return None
                # XEP-0198 window full, or stanzas already wait for it: queue behind them
                sm = machine.sm_out
                if not link.queue and (sm is None or len(sm.unacked) < sm.max_unacked):
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
                    if for_node and sm is not None and 2 * len(sm.unacked) >= sm.max_unacked:
                        # XEP-0198: half the window in flight, Node.send waits for an ack
                        return self.sm.room_for(stream)
                    return None
            else:
                # closing (idle close, peer's </stream:stream>): a fresh stream takes over
                del self.outbound[(local, remote)]
                link.release_sources()
                link = None
        if link is None:
            # the configured host's own string when it is one (not the stanza's copy): the
            # link, its machine and its stream keep one object for it (issue 14)
            host = self.parent.get(local)
            link = self._open(host if host == local else local, remote)
        try:
            link.queue.push(raw, self._now())
        except QueueFull as exc:
            self.bounce(raw, local, exc.condition, f"stanzas to {remote} wait: {exc}")
            return None
        self._arm_expiry(link)
        if link.congested:
            link.hold_source(source)
            return link
        if for_node and link.stream is not None and self.sm_blocked(link.stream):
            return self.sm.room_for(link.stream)  # queued behind XEP-0198's window
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
            if _unroutable.add(stanza.to_domain):
                log.info("bounce to %s not routable: %s", stanza.to, exc)
            else:
                log.debug("bounce to %s not routable: %s", stanza.to, exc)

    def emit(self, kind: str, **fields: Any) -> None:
        """Tell the observers about an outcome; an observer's failure is only logged."""
        for observer in self.observers:
            try:
                observer(kind, fields)
            except Exception:
                log.exception("event observer failed on %s", kind)

    # --- StreamOwner ---------------------------------------------------------------------------

    def incoming_connected(self, stream: XmlStream) -> None:
        limiter = stream.limiter
        if limiter is not None:
            address = self._address(stream)
            refusal = limiter.admit(address)
            if refusal is not None:
                stream.limiter = None  # not admitted: nothing to tell the limiter at the close
                log.warning("refusing S2S connection from %s: %s", address, refusal.text)
                stream.fail(LocalStreamError(refusal.condition, refusal.text))
                return
        # (not indexed in inbound yet: verify answers are for the id its VerifyKey names,
        # which TLS changes; the id of the connection's first stream would stay as a key)
        self.streams.add(stream)

    def stream_action(self, stream: XmlStream, action: Any) -> None:
        kind = type(action)
        if kind is Deliver:
            self.deliver_inbound(stream, action)
        elif kind is Acked:
            self.sm.acked(stream)
        elif kind is Unacked:
            self.requeue(action.local, action.remote, action.raws, action.reason)
        elif kind is VerifyKey:
            # index under the id the key names (the id changes when TLS restarts the stream)
            self._index_inbound(stream, action.stream_id)
            self.verifier.verify(action)
        elif kind is VerifyAnswered:
            self.verifier.answer(
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
                self.links.authenticated(stream, link)
            elif stream.direction == "in":
                self._index_inbound(stream, stream.stream_id)
                if stream.limiter is not None and len(stream.authenticated) == 1:
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
                self.links.auth_failed(link, action)
        elif kind is BidiRoute:
            self.bidi.route(stream, action)
        elif kind is Drop:
            log.info("dropped on %s: %s", stream.describe(), action.reason)
        else:  # pragma: no cover - a new action kind without routing is a bug
            raise TypeError(f"router cannot perform {kind.__name__}")

    def deliver_inbound(self, stream: XmlStream, action: Deliver) -> None:
        """An authorised inbound stanza: to its local route (reading *stream* is held while
        that route is congested) or the local handler. A counted one (XEP-0198) is reported
        handled once it has left towards its next hop, or the handler (and the awaitable it
        returned) finished, so the ack covers only that."""
        stanza = action.stanza
        if self.metrics is not None:
            self.metrics.s2s_in(stanza)
        done = None
        domain = stanza.to_domain
        try:
            if domain not in self.routes and (
                domain in self.local_domains or self._local_default(domain)
            ):
                done = self.deliver(stanza)
            else:
                busy = self.route(stanza, stream)
                if busy is not None and action.seq is not None:
                    # queued behind a congested next hop: handled once it drained to its
                    # transport, so the ack never covers a stanza still in our queue
                    done = asyncio.ensure_future(busy.drained())
        except ValueError as exc:  # the incoming machine lets only local domains through
            log.info("dropped on %s: %s", stream.describe(), exc)
        seq = action.seq
        if seq is None:
            return
        if done is None or not hasattr(done, "add_done_callback"):
            stream.handled(seq)  # XEP-0198 (no Handled event per stanza: s2sfast.net.stream)
            return
        done.add_done_callback(lambda _f: stream.handled(seq))

    @staticmethod
    def _address(stream: XmlStream) -> str:
        return str(stream.peername[0]) if stream.peername else "?"

    def stream_event(self, stream: XmlStream, kind: str, fields: dict[str, Any]) -> None:
        self.emit(kind, direction=stream.direction, stream_id=stream.stream_id, **fields)

    def _index_inbound(self, stream: XmlStream, key: str | None) -> None:
        """Let dialback verify answers find *stream* by the stream id *key*."""
        if key is None:
            return
        self.inbound[key] = stream
        if key not in stream.inbound_keys:
            stream.inbound_keys = (*stream.inbound_keys, key)

    def stream_closed(self, stream: XmlStream) -> None:
        self.streams.discard(stream)
        self.sm.wake(stream)
        # (XEP-0288: an outbound stream too, where the peer's dialback requests indexed it)
        for key in stream.inbound_keys:
            if self.inbound.get(key) is stream:
                del self.inbound[key]
        stream.inbound_keys = ()
        if stream.direction == "in":
            limiter = stream.limiter
            if limiter is not None:  # admitted (the limiter counts it until now)
                stream.limiter = None
                limiter.closed(self._address(stream), was_authenticated=bool(stream.authenticated))
            if stream.link is not None:
                self.bidi.closed(stream, stream.link)
            return
        self.links.closed(stream)

    # --- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Wait (up to *timeout*) for links still negotiating with stanzas queued."""
        waiting = [lk.done for lk in self.outbound.values() if lk.queue and lk.outcome is None]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    def pause_inbound(self) -> None:
        """Shutdown: stop reading the inbound streams (their peers' stanzas wait in the kernel,
        TCP pushes back), so that the components can catch up, or be cut and their queues
        bounced, while the outbound streams still carry the bounces. :meth:`close_all` reads
        them again to close them."""
        for stream in self.streams:
            if stream.direction == "in":
                stream.held_by(_SHUTDOWN_HOLD)

    async def close_all(self, timeout: float) -> None:
        """Close every stream cleanly, then abort whatever has not closed within *timeout*.

        Inbound streams first (read again if :meth:`pause_inbound` paused them), up to half
        of *timeout*: what their peers sent before their ``</stream:stream>`` is routed while the
        outbound streams are still open, so that its errors (a component that is gone, one
        past its queue) still reach the senders; without XEP-0198 nobody else would tell them.
        Then the outbound streams and the links that never got one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        inbound = [s for s in self.streams if s.direction == "in"]
        for stream in inbound:
            stream.released_by(_SHUTDOWN_HOLD)
        await self._close_streams(inbound, timeout / 2)
        self.closing = True
        self.links.close_all()
        await self._close_streams(list(self.streams), max(deadline - loop.time(), timeout / 2))

    async def _close_streams(self, streams: list[XmlStream], timeout: float) -> None:
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
