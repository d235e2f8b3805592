"""Node: a federation node built from a Config - listeners, router, local stanza handlers.

The thin asyncio layer on top of the sans-IO machines: it opens ``[[listen.s2s]]`` sockets,
makes the TLS contexts, hands every authorised inbound stanza for a local domain to the
registered handler, and closes everything cleanly on :meth:`Node.stop`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from lxml import etree

from s2sfast.config import Config, ListenS2S, S2SOptions
from s2sfast.framing import Stanza
from s2sfast.limits import IDLE_TIMEOUT, ConnectionLimiter
from s2sfast.net.backoff import DEFAULT_INITIAL_DELAY, DEFAULT_PENDING_DEADLINE
from s2sfast.net.dns import Resolver
from s2sfast.net.stream import CLOSE_TIMEOUT, WRITE_STALL_TIMEOUT, XmlStream
from s2sfast.net.tls import make_client_context, make_server_context, verify_peer
from s2sfast.protocol.incoming import IncomingMachine
from s2sfast.protocol.stream_limits import StreamLimits
from s2sfast.router import MAX_QUEUE, Router, stanza_from_bytes

__all__ = ["Node", "ConnectionInfo"]

log = logging.getLogger("s2sfast.node")

Handler = Callable[[Stanza], None | Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """One stream as :meth:`Node.connections` reports it."""

    direction: str
    local: str | None
    remote: str | None
    #: (local, remote) pairs authenticated on the stream
    pairs: tuple[tuple[str, str], ...]
    tls: bool
    #: tls.PeerCertStatus of the last certificate check (None: not checked)
    peer_certificate: Any
    auth_method: str | None
    stream_id: str | None
    state: str
    peer_address: Any
    #: Direct TLS (XEP-0368) rather than plain TCP with or without STARTTLS
    direct_tls: bool = False
    #: bidirectional (XEP-0288): the stream carries stanzas both ways
    bidi: bool = False


class Node:
    """A federation node.

    Args:
        config: the effective configuration (see s2sfast.config.load_config).
        keepalive: seconds of write silence before a whitespace keepalive.
        max_queue: stanzas held per (local, remote) pair while its stream negotiates.
        resolver: DNS resolver for remote domains (default: from ``[s2s] dns``, the system's
            nameservers); it is closed by :meth:`stop`.
        retry_initial: first reconnect delay in seconds (doubles up to ``max_retry_delay``).
        pending_deadline: seconds a queued stanza waits for its stream before bouncing.
        idle_timeout: seconds without traffic before an authenticated stream is closed
            (connection-timeout): nothing from the peer (its whitespace keepalives count) and
            no stanza from us. None: never.
        write_stall: seconds a peer may leave our write buffer above the high-water mark
            without reading before its stream fails with resource-constraint.
    """

    def __init__(
        self,
        config: Config,
        *,
        keepalive: float | None = 60.0,
        max_queue: int = MAX_QUEUE,
        resolver: Resolver | None = None,
        retry_initial: float = DEFAULT_INITIAL_DELAY,
        pending_deadline: float = DEFAULT_PENDING_DEADLINE,
        idle_timeout: float | None = IDLE_TIMEOUT,
        write_stall: float = WRITE_STALL_TIMEOUT,
    ) -> None:
        self.config = config
        self.keepalive = keepalive
        self.max_queue = max_queue
        self.resolver = resolver
        self.retry_initial = retry_initial
        self.pending_deadline = pending_deadline
        self.idle_timeout = idle_timeout
        self.write_stall = write_stall
        #: one connection limiter per listener (max_connections, negotiating per address)
        self._limiters: dict[int, ConnectionLimiter] = {}
        #: per listener, what each of its incoming machines shares (the certificate check,
        #: the options, the policy, the announced limits): built once, not per connection
        self._incoming_parts: dict[tuple[int, float | None], tuple[Any, ...]] = {}
        self._handlers: list[Handler] = []
        self._observers: list[Callable[[str, dict[str, Any]], None]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._client_contexts: dict[int, ssl.SSLContext | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.router: Router | None = None
        listen = config.listen_s2s[0] if config.listen_s2s else None
        #: trust anchors for certificate checks (the first listener's tls.cacertfile)
        self.cafile = listen.tls.cacertfile if listen else None

    # --- public API ----------------------------------------------------------------------------

    def on_stanza(self, handler: Handler) -> Handler:
        """Register *handler* (sync or async) for stanzas addressed to local domains.

        It receives the framer's Stanza (``raw`` bytes, ``to``, ``from_``, ...): authorised
        inbound stanzas, and error stanzas bouncing back what we could not deliver.
        """
        self._handlers.append(handler)
        return handler

    def on_event(self, observer: Callable[[str, dict[str, Any]], None]) -> None:
        """Register *observer(kind, fields)* for outcomes, e.g. for metrics counters.

        Kinds: ``stream-authenticated`` (direction, local, remote, method, tls, stream_id),
        ``auth-failed`` (local, remote, condition, text, retry), ``tls-up`` (direction,
        stream_id, version, cipher), ``tls-failed`` (direction, stream_id, reason) and
        ``bounce`` (local, condition). Call it before or after :meth:`start`.
        """
        self._observers.append(observer)
        if self.router is not None and observer not in self.router.observers:
            self.router.observers.append(observer)

    async def start(self) -> None:
        """Open every ``[[listen.s2s]]`` listener (port 0 picks a free port).

        Raises:
            ConfigError: unusable TLS material.
            OSError: a listener cannot bind.
        """
        listen0 = self.config.listen_s2s[0] if self.config.listen_s2s else None
        self._incoming_parts.clear()  # (they hold the router's methods)
        self.router = Router(
            self.config,
            deliver=self._deliver,
            client_context=self._client_context,
            cert_checker=self._check_cert,
            max_queue=self.max_queue,
            keepalive=self.keepalive,
            state_timeout=(listen0.state_timeout / 1000) if listen0 else 5.0,
            max_stanza_size=listen0.max_stanza_size if listen0 else None,
            resolver=self.resolver,
            idle_timeout=self.idle_timeout,
            write_stall=self.write_stall,
            retry_initial=self.retry_initial,
            pending_deadline=self.pending_deadline,
            max_fsm_queue=self.config.max_fsm_queue,
        )
        self.resolver = self.router.resolver
        self.router.observers.extend(self._observers)
        loop = asyncio.get_running_loop()
        try:
            for listen in self.config.listen_s2s:
                ctx = make_server_context(self.config.s2s, listen, hosts=self.config.host_s2s)
                server = await loop.create_server(
                    lambda listen=listen, ctx=ctx: self._incoming_stream(listen, ctx),
                    listen.ip_address,
                    listen.port,
                    backlog=listen.backlog,
                )
                self._servers.append(server)
                log.info("listening for S2S on %s", server.sockets[0].getsockname()[:2])
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers.clear()
            raise

    def listen_addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listener, in config order."""
        out: list[tuple[str, int]] = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append((host, port))
        return out

    async def send(self, stanza: bytes | Any) -> None:
        """Route *stanza* (raw bytes or an lxml element) to its remote domain.

        ``from`` must be a local domain or a JID at one. Failures come back later as error
        stanzas through the on_stanza handlers.

        Raises:
            ValueError: not one stanza, ``from`` not local, or no ``to``.
            RuntimeError: the node is not started.
        """
        router = self.router
        if router is None:
            raise RuntimeError("Node.start() has not been awaited")
        if type(stanza) is bytes:  # the common case first
            raw = stanza
            framed = stanza_from_bytes(raw)
        elif isinstance(stanza, Stanza):
            raw = stanza.raw
            framed = stanza
        else:
            raw = stanza if isinstance(stanza, bytes | bytearray) else _serialise(stanza)
            raw = bytes(raw)
            framed = stanza_from_bytes(raw)
        dest = router.send(raw, framed)
        if dest is not None:
            # backpressure: the next hop takes stanzas slower than we are asked to send them,
            # or (XEP-0198) half the stream's unacked window is in flight
            await dest.drained()

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush queued stanzas (up to *timeout*), stop accepting, close every stream cleanly.

        Listeners stay open while queues drain: a peer authenticating our pending streams by
        dialback has to connect back to us.
        """
        if self.router is not None:
            await self.router.drain(timeout)
        for server in self._servers:
            server.close()
        if self.router is not None:
            await self.router.close_all(CLOSE_TIMEOUT + 1.0)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self.resolver is not None:
            await self.resolver.close()

    def connections(self) -> list[ConnectionInfo]:
        """Every live stream: direction, domains, TLS, certificate status, auth, stream id."""
        if self.router is None:
            return []
        out = []
        for s in sorted(self.router.streams, key=lambda s: (s.direction, s.stream_id or "")):
            m = s.machine
            remote = getattr(m, "remote", None) or getattr(m, "peer_from", None)
            out.append(
                ConnectionInfo(
                    direction=s.direction,
                    local=m.local,
                    remote=remote,
                    pairs=tuple(sorted(s.authenticated)),
                    tls=s.tls,
                    peer_certificate=m.peer_cert,
                    auth_method=s.auth_method,
                    stream_id=s.stream_id,
                    state=m.state,
                    peer_address=s.peername,
                    direct_tls=s.direct_tls,
                    bidi=m.bidi,
                )
            )
        return out

    def add_local_domain(self, domain: str, parent: str | None = None) -> None:
        """Serve *domain* too (e.g. a component's), using *parent* host's ``[s2s]`` options."""
        self._router().add_local_domain(domain, parent or self.config.hosts[0])

    def remove_local_domain(self, domain: str) -> None:
        self._router().remove_local_domain(domain)

    def reload_policy(
        self, s2s: Config | S2SOptions, host_s2s: dict[str, S2SOptions] | None = None
    ) -> None:
        """Apply new ``default_policy`` / ``host_policy`` (e.g. on SIGHUP).

        Pass a whole new Config, or its ``s2s`` and ``host_s2s``: only the policies are
        taken. New stanzas and dialback requests follow them at once; authenticated streams
        stay up, but a pair the new policy denies gets its next outbound stanza bounced and its
        next inbound db:result refused.
        """
        router = self._router()
        if isinstance(s2s, Config):
            s2s, host_s2s = s2s.s2s, s2s.host_s2s
        router.reload_policy(s2s, host_s2s or {})
        self.config = router.config

    # --- internals -----------------------------------------------------------------------------

    def _router(self) -> Router:
        if self.router is None:
            raise RuntimeError("Node.start() has not been awaited")
        return self.router

    def _incoming_stream(self, listen: ListenS2S, ctx: ssl.SSLContext | None) -> XmlStream:
        router = self._router()
        key = (id(listen), self.idle_timeout)
        parts = self._incoming_parts.get(key)
        if parts is None:
            parts = self._incoming_parts[key] = self._incoming_machine_parts(listen, router)
        check, options_for, policy_allows, limits, state_timeout = parts
        limiter = self._limiters.get(id(listen))
        if limiter is None:
            limiter = self._limiters[id(listen)] = ConnectionLimiter(listen.max_connections)
        machine = IncomingMachine(
            hosts=router.local_domains,
            options_for=options_for,
            policy_allows=policy_allows,
            tls_available=ctx is not None,
            check_cert=check,
            state_timeout=state_timeout,
            limits=limits,
        )
        stream = XmlStream(
            machine,
            router,
            direction="in",
            ssl_context=ctx,
            direct_tls=listen.tls.mode == "tls",
            max_stanza_size=listen.max_stanza_size,
            keepalive=self.keepalive,
            on_connected=router.incoming_connected,
            idle_timeout=self.idle_timeout,
            write_stall_timeout=self.write_stall,
            max_rate=listen.max_rate,
            max_queue=listen.max_fsm_queue or self.config.max_fsm_queue,
        )
        stream.limiter = limiter
        return stream

    def _incoming_machine_parts(self, listen: ListenS2S, router: Router) -> tuple[Any, ...]:
        cafile = listen.tls.cacertfile

        def check(chain: tuple[bytes, ...], domain: str) -> Any:
            return verify_peer(list(chain), domain, cafile=cafile)

        # XEP-0478: announce what this listener accepts and how long it lets a stream idle
        limits = StreamLimits(
            max_bytes=listen.max_stanza_size,
            idle_seconds=int(self.idle_timeout) if self.idle_timeout else None,
        )
        options_for = _listener_options(listen, router.options_for)
        # one float for the listener's machines, not one per connection
        return check, options_for, router.policy_allows, limits, listen.state_timeout / 1000

    def _client_context(self, local: str) -> ssl.SSLContext | None:
        opts = self._router().options_for(local)
        key = id(opts)
        if key not in self._client_contexts:
            self._client_contexts[key] = make_client_context(opts, cafile=self.cafile)
        return self._client_contexts[key]

    def _check_cert(self, chain: tuple[bytes, ...], domain: str) -> Any:
        return verify_peer(list(chain), domain, cafile=self.cafile)

    def _deliver(self, stanza: Stanza) -> asyncio.Future[Any] | None:
        """Hand *stanza* to every handler; returns what finishes when the async ones are done
        (XEP-0198 counts the stanza as handled then), or None when all were synchronous."""
        tasks = []
        for handler in self._handlers:
            try:
                result = handler(stanza)
            except Exception:
                log.exception("stanza handler failed")
                continue
            if result is not None and inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
                tasks.append(task)
        if not tasks:
            return None
        return tasks[0] if len(tasks) == 1 else asyncio.gather(*tasks, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stanza handler failed", exc_info=task.exception())


def _listener_options(
    listen: ListenS2S, options_for: Callable[[str], S2SOptions]
) -> Callable[[str], S2SOptions]:
    """The ``[s2s]`` options an incoming stream on *listen* follows: a ``tls.mode =
    "starttls_required"`` listener (MongooseIM 6.4) requires STARTTLS whatever
    ``use_starttls`` says ("required" unless it is "required_trusted" already)."""
    if listen.tls.mode != "starttls_required":
        return options_for
    cache: dict[int, tuple[S2SOptions, S2SOptions]] = {}

    def required(host: str) -> S2SOptions:
        opts = options_for(host)
        hit = cache.get(id(opts))
        if hit is None or hit[0] is not opts:
            mode = "required_trusted" if opts.use_starttls == "required_trusted" else "required"
            hit = cache[id(opts)] = (opts, replace(opts, use_starttls=mode))
        return hit[1]

    return required


def _serialise(element: Any) -> bytes:
    """An lxml element's bytes (control of namespaces is the caller's)."""
    return etree.tostring(element)
