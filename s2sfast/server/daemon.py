"""``s2sfast run``: a federation node as a process, with its XEP-0114 component bridge.

This is the thin layer users start: it loads the configuration (or the embedded defaults),
starts a :class:`~s2sfast.node.Node`, opens the ``[[listen.service]]`` component listeners
(and the ``[[listen.http]]`` Prometheus endpoint, see s2sfast.server.metrics), routes stanzas
between S2S, components and the built-in answers, and handles signals:
SIGINT/SIGTERM drain and exit 0, SIGHUP reloads the policy from the file without dropping streams.

Routing is the Node's router's (s2sfast.router), one table for every route; the daemon only
wires its listeners to it. By the domain of a stanza's ``to``:
  - a domain a connected component serves -> that component (a route the listener registers);
  - one of the node's hosts with no component -> the built-in answers (ping, disco, version);
  - a subdomain of a host with no component -> ``service-unavailable`` back to the sender;
  - anything else (only from components) -> out over S2S.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2sfast.config import Config, ConfigError, load_config
from s2sfast.config.loglevel import DEFAULT_LOGLEVEL, LOGLEVELS, logging_level
from s2sfast.config.service import ListenService
from s2sfast.lograte import Tally
from s2sfast.protocol.component import Route
from s2sfast.server import builtin
from s2sfast.server.component import ComponentRegistry, ComponentServer
from s2sfast.server.defaults import (
    DEFAULT_COMPONENT_PORT,
    DEFAULT_S2S_PORT,
    default_data_dir,
    embedded_config,
)

__all__ = ["add_run_parser", "run", "run_command", "loop_factory", "Daemon", "EXIT_CONFIG"]

log = logging.getLogger("s2sfast.daemon")

#: exit status when the configuration cannot be used (same as check-config)
EXIT_CONFIG = 1
#: seconds the shutdown waits for queued stanzas to leave before closing streams anyway; with
#: the two component drains before it and the one after (COMPONENT_DRAIN_TIMEOUT each), the S2S
#: close (3 s) and the component close (COMPONENT_CLOSE_TIMEOUT + 1), 5 + 5 + 7 + 3 + 5 + 3 = 28 s,
#: inside the unit file's TimeoutStopSec of 30 s
DRAIN_TIMEOUT = 7.0
#: event loops ``s2sfast run --loop`` can run on (uvloop: ``pip install 's2sfast[uvloop]'``)
LOOPS = ("asyncio", "uvloop")
#: the loop used without --loop (bench/e2e measures both; see bench/README.md)
DEFAULT_LOOP = "asyncio"


def is_hosted(hosts: tuple[str, ...], domain: str) -> bool:
    """A host of the node, or a subdomain of one (what a component may serve)."""
    domain = domain.lower()
    return any(domain == host or domain.endswith("." + host) for host in hosts)


class Daemon:
    """A Node plus its component listeners, wired to the Node's router.

    Args:
        config: the node's configuration.
        listen_service: the component listeners to open.
        listen_prometheus: the Prometheus endpoints to serve (s2sfast.metrics.ListenPrometheus).
        node_factory: builds the Node (``s2sfast.node.Node`` by default).
    """

    def __init__(
        self,
        config: Config,
        listen_service: tuple[ListenService, ...],
        *,
        listen_prometheus: tuple[Any, ...] = (),
        node_factory: Callable[[Config], Any] | None = None,
    ) -> None:
        if node_factory is None:
            from s2sfast.node import Node

            node_factory = Node
        self.config = config
        self.node = node_factory(config)
        self.registry = ComponentRegistry()
        self.hosts = tuple(h.lower() for h in config.hosts)
        self.servers = [
            ComponentServer(
                svc,
                registry=self.registry,
                is_hosted=lambda d: is_hosted(self.hosts, d),
                on_route=self._from_component,
                on_change=self._component_changed,
                max_fsm_queue=config.max_fsm_queue,
            )
            for svc in listen_service
        ]
        self.metrics: Any = None
        self.metric_servers: list[Any] = []
        if listen_prometheus:
            from s2sfast.server.metrics import Metrics, MetricsServer

            self.metrics = Metrics(self.node, self.registry)
            self.node.on_event(self.metrics.observe)
            self.metric_servers = [MetricsServer(lp, self.metrics) for lp in listen_prometheus]
        self._hosted_cache: dict[str, bool] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.node.on_stanza(self._local)
        await self.node.start()
        router = self.node.router
        router.hosted = self._hosted
        router.metrics = self.metrics
        for server in self.servers:
            server.router = router
            server.metrics = self.metrics
            await server.start()
        for metrics_server in self.metric_servers:
            await metrics_server.start()

    async def stop(self) -> None:
        """Stop accepting, drain the components, let queued stanzas leave, close every stream.

        1. Components: no new ones; each is read again whatever paused it (backpressure from
           a stalled peer leaves its last stanzas unread in the kernel), and what it sends is
           routed where the destination takes it at once, else bounced to it
           (service-unavailable) while its stream is still open to carry the error; until
           each has been silent for COMPONENT_DRAIN_QUIET (at most COMPONENT_DRAIN_TIMEOUT).
        2. Inbound S2S streams are no longer read (their peers' stanzas wait in the kernel);
           components catch up with what we owe them (up to COMPONENT_DRAIN_TIMEOUT), one
           still behind that read nothing meanwhile (stuck; one reading slowly is left to step
           4) is cut and what it never got bounced, while the outbound S2S streams
           are open to carry the bounces to remote senders (a peer without XEP-0198 keeps
           nothing to resend).
        3. The node: S2S queues drain (up to DRAIN_TIMEOUT), its streams close, the inbound
           ones first (read again until the peer's ``</stream:stream>``: what arrives is routed
           or answered while the outbound streams still carry the errors), then the outbound
           ones; what they still hold is resent-or-bounced (XEP-0198) or bounced, to
           components still open and still read (what they send now bounces: the node no
           longer routes to S2S).
        4. Components again, all of them before any closes: silent, and caught up with what
           we owe them (up to COMPONENT_DRAIN_TIMEOUT); one still behind is cut, what it never
           got bounced to the others.
        5. Components: ``</stream:stream>``, read until theirs (COMPONENT_CLOSE_TIMEOUT).
        """
        servers = self.servers
        for server in servers:
            await _independently("stop accepting components", server.stop_accepting())
        for server in servers:
            await _independently("drain the component streams", _call(server.begin_drain))
        await asyncio.gather(
            *(_independently("drain the component streams", s.drain()) for s in servers)
        )
        if self.node.router is not None:
            await _independently("pause the S2S streams", _call(self.node.router.pause_inbound))
        await asyncio.gather(
            *(
                _independently(
                    "drain the component streams", s.drain(caught_up=True, stuck_only=True)
                )
                for s in servers
            )
        )
        await _independently("stop the node", self.node.stop(DRAIN_TIMEOUT))
        await asyncio.gather(
            *(
                _independently("drain the component streams", s.drain(caught_up=True))
                for s in servers
            )
        )
        await asyncio.gather(
            *(_independently("close the component streams", s.close()) for s in servers)
        )
        for metrics_server in self.metric_servers:
            await _independently("close the metrics endpoint", metrics_server.close())
        log.info("stopped")

    def reload(self, path: str) -> bool:
        """SIGHUP: re-read *path* and apply its default_policy / host_policy; False if invalid."""
        try:
            new = load_config(path)
        except (ConfigError, OSError) as exc:
            log.error("reload of %s failed, keeping the running policy: %s", path, exc)
            return False
        self.node.reload_policy(new)
        self.config = new
        log.info(
            "policy reloaded from %s: default_policy %s, %d host_policy entries",
            path,
            new.s2s.default_policy,
            len(new.s2s.host_policy),
        )
        return True

    # --- routing ---------------------------------------------------------------------------------

    def _component_changed(self, domain: str, up: bool) -> None:
        if domain in self.hosts:
            return  # the node serves its hosts anyway
        if up:
            parent = next(h for h in self.hosts if domain.endswith("." + h))
            self.node.add_local_domain(domain, parent)
        # when the component goes the domain stays local: stanzas still arriving for it get
        # service-unavailable from it, and that reply must be able to leave over S2S

    def _hosted(self, domain: str) -> bool:
        """is_hosted for the router, remembered per domain (asked for every stanza it routes
        to a domain that is neither a host nor a component's)."""
        known = self._hosted_cache.get(domain)
        if known is None:
            if len(self._hosted_cache) >= 4096:
                self._hosted_cache.clear()
            known = self._hosted_cache[domain] = is_hosted(self.hosts, domain)
        return known

    def _local(self, stanza: Any) -> None:
        """The router's local handler: stanzas for the node's own domains that no component
        serves get the built-in answers (a host) or service-unavailable (a subdomain); the
        reply is routed back to the sender, wherever it is."""
        domain = stanza.to_domain
        raw = stanza.raw
        if domain in self.hosts:
            reply = builtin.answer(raw)
        else:
            if _no_component.add(domain):
                log.info("no component serves %s: service-unavailable", domain)
            else:
                log.debug("no component serves %s: service-unavailable for %s", domain, stanza.id)
            reply = builtin.error_reply(raw, "service-unavailable", f"no service at {domain}")
        if reply is None:
            return
        from s2sfast.router import stanza_from_bytes

        try:
            self.node.router.route(stanza_from_bytes(reply))
        except ValueError as exc:
            log.info("reply to %s not routable: %s", stanza.from_, exc)

    def _from_component(self, component: str, route: Route) -> None:
        """Only without a router (never in a started daemon): route a component's stanza."""
        from s2sfast.router import stanza_from_bytes

        self.node.router.route(stanza_from_bytes(route.raw))


def _freeze_startup_objects() -> None:
    """Started: what exists now (modules, the configuration, TLS contexts, listeners: ~33,000
    objects) lives as long as the process, so it leaves the cyclic collector's view
    (``gc.freeze``). A full collection, when one comes (streams opening and closing make them;
    the stanza path allocates almost nothing the collector tracks), then scans only what came
    after: in a started daemon on a shared 2-CPU machine 5-33 ms before, 0.02-0.6 ms after, a
    pause every stanza in flight would have waited through."""
    gc.collect()
    gc.freeze()


def _no_component_line(domain: Any, count: int, seconds: float) -> None:
    log.info(
        "no component serves %s: service-unavailable for %d more stanza(s) in %.1f s",
        domain,
        count,
        seconds,
    )


#: one INFO line per unserved domain and second in a flood (each stanza at DEBUG)
_no_component = Tally(_no_component_line)


async def _call(function: Callable[[], Any]) -> None:
    """A synchronous shutdown step as an awaitable, for :func:`_independently`."""
    function()


async def _independently(what: str, step: Any) -> None:
    """One shutdown step; its failure is logged and never stops the steps after it."""
    try:
        await step
    except Exception as exc:
        log.warning("shutdown: cannot %s: %s", what, exc, exc_info=True)


# --- the command -----------------------------------------------------------------------------


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``s2sfast run`` on the ``s2sfast`` command's subparsers."""
    parser = subparsers.add_parser(
        "run",
        help="run a federation node (embedded defaults without --config)",
        description="Run an S2S federation node. Without --config it starts on embedded "
        "defaults: host localhost, S2S on 127.0.0.1:5269 (STARTTLS optional, a self-signed "
        "certificate made in the data directory), an XEP-0114 component listener on "
        "127.0.0.1:5347 with a random password printed on first start. SIGINT/SIGTERM drain "
        "and exit 0; SIGHUP reloads default_policy/host_policy from the file.",
    )
    parser.add_argument("--config", metavar="FILE", help="a MongooseIM mongooseim.toml")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help="where the embedded defaults keep their certificate and component password "
        "(default: $XDG_DATA_HOME/s2sfast or ~/.local/share/s2sfast)",
    )
    parser.add_argument(
        "--log-level",
        choices=tuple(LOGLEVELS),
        help="how much to log, MongooseIM's level names (default: the file's [general] "
        "loglevel, else warning; info on the embedded defaults)",
    )
    parser.add_argument(
        "--s2s-port",
        type=int,
        metavar="PORT",
        help=f"embedded defaults only: the S2S port (default {DEFAULT_S2S_PORT})",
    )
    parser.add_argument(
        "--component-port",
        type=int,
        metavar="PORT",
        help=f"embedded defaults only: the component port (default {DEFAULT_COMPONENT_PORT})",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=DEFAULT_LOOP,
        help=f"the event loop (default {DEFAULT_LOOP}; uvloop needs pip install 's2sfast[uvloop]')",
    )
    parser.set_defaults(func=run_command)
    return parser


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``--loop NAME`` (None: asyncio's own); ImportError when
    uvloop is asked for and not installed."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown event loop {name!r} (choose from {', '.join(LOOPS)})")


def run_command(args: argparse.Namespace) -> int:
    """``s2sfast run`` on the event loop ``--loop`` names."""
    try:
        factory = loop_factory(getattr(args, "loop", DEFAULT_LOOP))
    except ImportError as exc:
        print(
            f"s2sfast run: --loop {args.loop} is not available ({exc}); "
            "pip install 's2sfast[uvloop]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(args))


class _Held(logging.Handler):
    """Keeps the records logged before the level is known (while the configuration loads)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _hold_logging() -> _Held:
    """Route every record into a :class:`_Held` until :func:`_setup_logging` knows the level."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    held = _Held()
    root.addHandler(held)
    root.setLevel(1)
    return held


def _setup_logging(level: str, held: _Held | None = None) -> None:
    """Log to stderr at the MongooseIM level *level*; replay what *held* kept at that level."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging_level(level))
    root.addHandler(handler)
    root.setLevel(logging_level(level))
    for record in held.records if held else ():
        if record.levelno >= handler.level:
            handler.handle(record)


def _prometheus_listeners(config: Config, path: str) -> tuple[Any, ...]:
    """``[[listen.http]]`` Prometheus endpoints: from the Config when config.py keeps them."""
    if hasattr(config, "listen_prometheus"):
        return tuple(config.listen_prometheus)
    with open(path, "rb") as handle:
        raw = tomllib.load(handle)
    listen = raw.get("listen", {})
    if not isinstance(listen, dict) or not listen.get("http"):
        return ()
    from s2sfast.server.metrics import parse_listen_prometheus

    return parse_listen_prometheus(raw)


_Prepared = tuple[Config, tuple[ListenService, ...], tuple[Any, ...]]


def _prepare(args: argparse.Namespace) -> _Prepared | None:
    if args.config:
        if args.s2s_port is not None or args.component_port is not None:
            print(
                "s2sfast run: --s2s-port/--component-port apply to the embedded defaults only; "
                "set the ports in the configuration file",
                file=sys.stderr,
            )
            return None
        try:
            config = load_config(args.config)
            prometheus = _prometheus_listeners(config, args.config)
        except (ConfigError, OSError, tomllib.TOMLDecodeError) as exc:
            print(f"s2sfast: invalid configuration: {exc}", file=sys.stderr)
            return None
        return config, config.listen_service, prometheus
    data_dir = args.data_dir or default_data_dir()
    try:
        embedded = embedded_config(
            data_dir,
            s2s_port=DEFAULT_S2S_PORT if args.s2s_port is None else args.s2s_port,
            component_port=(
                DEFAULT_COMPONENT_PORT if args.component_port is None else args.component_port
            ),
        )
    except OSError as exc:
        print(f"s2sfast: cannot prepare the data directory {data_dir}: {exc}", file=sys.stderr)
        return None
    service = embedded.listen_service[0]
    log.info(
        "no --config: embedded defaults (host localhost, data directory %s, certificate %s%s)",
        data_dir,
        embedded.certfile,
        ", new" if embedded.certificate_created else "",
    )
    if embedded.password_created:
        print(
            f"component password for {service.ip_address}:{service.port}: {service.password}",
            flush=True,
        )
    else:
        log.info("component password: see %s", data_dir / "component-password")
    return embedded.config, embedded.listen_service, ()


async def run(args: argparse.Namespace) -> int:
    """``s2sfast run``: start, serve until SIGINT/SIGTERM, drain, return the exit code.

    The log level is ``--log-level`` when given, else the configuration's ``[general] loglevel``
    (what loading the file logs is held until then, and shown at that level).
    """
    held = _hold_logging()
    prepared = _prepare(args)
    if prepared is None:
        _setup_logging(args.log_level or DEFAULT_LOGLEVEL, held)
        return EXIT_CONFIG
    config, services, prometheus = prepared
    _setup_logging(args.log_level or config.loglevel, held)
    daemon = Daemon(config, services, listen_prometheus=prometheus)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.config:
        loop.add_signal_handler(signal.SIGHUP, daemon.reload, args.config)
    else:
        loop.add_signal_handler(
            signal.SIGHUP, log.warning, "SIGHUP: no --config file, nothing to reload"
        )
    try:
        try:
            await daemon.start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            with contextlib.suppress(Exception):
                await daemon.stop()
            return EXIT_CONFIG
        log.info("event loop: %s", type(loop).__module__.split(".")[0])
        log.info("running: hosts %s", ", ".join(config.hosts))
        _freeze_startup_objects()
        await stop.wait()
        log.info("shutting down")
        await daemon.stop()
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # a second SIGTERM/SIGINT while the process winds down must not turn exit 0 into a
        # death by signal (the handlers above are gone with the loop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
