"""``s2sfast run``: a federation node as a process, with its XEP-0114 component bridge.

This is the thin layer users start: it loads the configuration (or the embedded defaults),
starts a :class:`~s2sfast.node.Node`, opens the ``[[listen.service]]`` component listeners
(and the ``[[listen.http]]`` Prometheus endpoint, see s2sfast.server.metrics), routes stanzas
between S2S, components and the built-in answers, and handles signals:
SIGINT/SIGTERM drain and exit 0, SIGHUP reloads the policy from the file without dropping streams.

Routing, by the domain of a stanza's ``to``:
  - a domain a connected component serves -> that component;
  - one of the node's hosts with no component -> the built-in answers (ping, disco, version);
  - a subdomain of a host with no component -> ``service-unavailable`` back to the sender;
  - anything else (only from components) -> out over S2S through the Node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from s2sfast.protocol.component import Route
from s2sfast.protocol.jid import jid_domain
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
#: seconds the shutdown waits for queued stanzas to leave before closing streams anyway
DRAIN_TIMEOUT = 10.0
#: event loops ``s2sfast run --loop`` can run on (uvloop: ``pip install 's2sfast[uvloop]'``)
LOOPS = ("asyncio", "uvloop")
#: the loop used without --loop (bench/e2e measures both; see bench/README.md)
DEFAULT_LOOP = "asyncio"


def is_hosted(hosts: tuple[str, ...], domain: str) -> bool:
    """A host of the node, or a subdomain of one (what a component may serve)."""
    domain = domain.lower()
    return any(domain == host or domain.endswith("." + host) for host in hosts)


class Daemon:
    """A Node plus its component listeners and the routing between them.

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
        #: remote domain -> queue of raw stanzas from components, sent in order by one task each
        self._outbound: dict[str, asyncio.Queue[tuple[bytes, str | None] | None]] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.node.on_stanza(self._from_s2s)
        await self.node.start()
        for server in self.servers:
            await server.start()
        for metrics_server in self.metric_servers:
            await metrics_server.start()

    async def stop(self) -> None:
        """Stop accepting, let queued stanzas leave, close every stream, stop the node."""
        for server in self.servers:
            await server.stop_accepting()
        for queue in self._outbound.values():
            queue.put_nowait(None)
        if self._pumps:
            await asyncio.wait(list(self._pumps.values()), timeout=DRAIN_TIMEOUT)
        for task in self._pumps.values():
            task.cancel()
        await self.node.stop()
        for server in self.servers:
            await server.close()
        for metrics_server in self.metric_servers:
            await metrics_server.close()
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
        else:
            self.node.remove_local_domain(domain)

    def _deliver_local(self, raw: bytes, to_domain: str, from_component: str | None) -> None:
        """Deliver *raw* to a component or the built-in answers; replies go back to the sender."""
        if self._to_component(to_domain, raw):
            return
        if to_domain in self.hosts:
            reply = builtin.answer(raw)
        else:
            log.info("no component serves %s: service-unavailable", to_domain)
            reply = builtin.error_reply(raw, "service-unavailable", f"no service at {to_domain}")
        if reply is not None:
            self._reply(reply, from_component)

    def _to_component(self, domain: str, raw: bytes) -> bool:
        conn = self.registry.get(domain)
        if conn is None or not conn.send(raw):
            return False
        if self.metrics is not None:
            self.metrics.component_stanzas.labels("out").inc()
        return True

    def _reply(self, reply: bytes, from_component: str | None) -> None:
        if from_component is not None:
            self._to_component(from_component, reply)
            return
        self._send_s2s(reply)

    def _from_s2s(self, stanza: Any) -> None:
        """The Node's handler: an inbound S2S stanza for a local domain."""
        if self.metrics is not None:
            self.metrics.s2s_in(stanza)
        domain = jid_domain(stanza.to)
        self._deliver_local(bytes(stanza.raw), domain, None)

    def _from_component(self, component: str, route: Route) -> None:
        if self.metrics is not None:
            self.metrics.component_stanzas.labels("in").inc()
        to_domain = jid_domain(route.to)
        if is_hosted(self.hosts, to_domain):
            self._deliver_local(route.raw, to_domain, component)
        else:
            self._send_s2s(route.raw, to_domain=to_domain, component=component)

    def _send_s2s(self, raw: bytes, *, to_domain: str = "", component: str | None = None) -> None:
        """Queue *raw* for the Node, in order per remote domain (*component*: who sent it)."""
        key = to_domain or "*"
        queue = self._outbound.get(key)
        if queue is None:
            queue = self._outbound[key] = asyncio.Queue()
            self._pumps[key] = asyncio.get_running_loop().create_task(self._pump(queue))
        queue.put_nowait((raw, component))

    async def _pump(self, queue: asyncio.Queue[tuple[bytes, str | None] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            raw, component = item
            try:
                await self.node.send(raw)
                if self.metrics is not None:
                    self.metrics.s2s_out(raw)
            except Exception as exc:  # the Node refused it: tell the sender, keep going
                log.warning("sending to S2S failed: %s", exc)
                # ValueError: not addressed from a local domain (check_from = false lets that in)
                condition = (
                    "not-allowed" if isinstance(exc, ValueError) else "internal-server-error"
                )
                reply = builtin.error_reply(raw, condition, str(exc))
                if reply is not None and component is not None:
                    self._reply(reply, component)


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
        await stop.wait()
        log.info("shutting down")
        await daemon.stop()
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
