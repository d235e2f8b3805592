"""Prometheus metrics for ``s2sfast run``, served the way MongooseIM serves them.

MongooseIM exposes Prometheus through an HTTP listener with a ``mongoose_prometheus_handler``::

    [[listen.http]]
      port = 9091
      ip_address = "127.0.0.1"
      [[listen.http.handlers.mongoose_prometheus_handler]]
        host = "_"
        path = "/metrics"

:func:`parse_listen_prometheus` reads exactly that (other HTTP handlers are not s2sfast's job and
are ignored). :class:`Metrics` keeps its own registry (not prometheus_client's global one, so
two nodes in one process do not mix), counts what the daemon routes, and reads the Node's
streams and queues at scrape time; :class:`MetricsServer` answers ``GET path`` on asyncio
(no thread touches the node's state).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from s2sfast.config import ConfigError

__all__ = ["ListenPrometheus", "parse_listen_prometheus", "Metrics", "MetricsServer"]

log = logging.getLogger("s2sfast.metrics")

_HANDLER = "mongoose_prometheus_handler"
#: bytes of request head we read before answering 431; a scrape request is a few hundred
_MAX_REQUEST_HEAD = 16 * 1024
#: seconds a client has to send its request head
_REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenPrometheus:
    """One ``[[listen.http]]`` listener with a ``mongoose_prometheus_handler``."""

    port: int
    ip_address: str = "0.0.0.0"
    #: the handler's ``host`` ("_" = any Host header)
    host: str = "_"
    path: str = "/metrics"


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def parse_listen_prometheus(raw: Mapping[str, Any]) -> tuple[ListenPrometheus, ...]:
    """Every ``[[listen.http]]`` carrying ``[[listen.http.handlers.mongoose_prometheus_handler]]``.

    Raises:
        ConfigError: naming the dotted path (``listen.http[0].port``) of an invalid option.
    """
    listen = raw.get("listen", {})
    items = listen.get("http", []) if isinstance(listen, Mapping) else []
    if not isinstance(items, list):
        raise _fail("listen.http", "expected an array of tables ([[listen.http]])")
    out: list[ListenPrometheus] = []
    for i, item in enumerate(items):
        base = f"listen.http[{i}]"
        if not isinstance(item, Mapping):
            raise _fail(base, f"expected a table, got {item!r}")
        handlers = item.get("handlers", {})
        if not isinstance(handlers, Mapping):
            raise _fail(f"{base}.handlers", "expected a table of handler arrays")
        prom = handlers.get(_HANDLER, [])
        if not prom:
            continue
        if not isinstance(prom, list):
            raise _fail(f"{base}.handlers.{_HANDLER}", "expected an array of tables")
        port = item.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise _fail(f"{base}.port", f"expected a port number, got {port!r}")
        address = item.get("ip_address", "0.0.0.0")
        try:
            ipaddress.ip_address(address)
        except (ValueError, TypeError):
            raise _fail(f"{base}.ip_address", f"expected an IP address, got {address!r}") from None
        for j, handler in enumerate(prom):
            hpath = f"{base}.handlers.{_HANDLER}[{j}]"
            if not isinstance(handler, Mapping):
                raise _fail(hpath, f"expected a table, got {handler!r}")
            host = handler.get("host", "_")
            path = handler.get("path", "/metrics")
            if not isinstance(host, str) or not host:
                raise _fail(f"{hpath}.host", f'expected a host name or "_", got {host!r}')
            if not isinstance(path, str) or not path.startswith("/"):
                raise _fail(f"{hpath}.path", f"expected a path starting with '/', got {path!r}")
            out.append(ListenPrometheus(port=port, ip_address=address, host=host, path=path))
    return tuple(out)


class _NodeCollector(Collector):
    """Reads the node's live streams, queues and components when Prometheus scrapes."""

    def __init__(self, node: Any, registry_of_components: Any) -> None:
        self._node = node
        self._components = registry_of_components

    def collect(self) -> Any:
        conns = GaugeMetricFamily(
            "s2sfast_connections",
            "S2S streams now open, by direction, negotiation state, TLS and authentication",
            labels=["direction", "state", "tls", "auth"],
        )
        infos = list(self._node.connections())
        counts: dict[tuple[str, str, str, str], int] = {}
        for info in infos:
            key = (
                str(info.direction),
                str(info.state).lower(),
                "yes" if info.tls else "no",
                info.auth_method or "none",
            )
            counts[key] = counts.get(key, 0) + 1
        for labels, value in sorted(counts.items()):
            conns.add_metric(list(labels), value)
        yield conns

        verdicts = GaugeMetricFamily(
            "s2sfast_tls_peer_certificates",
            "open S2S streams by the RFC 6125 verdict on the peer's certificate",
            labels=["verdict"],
        )
        tally: dict[str, int] = {}
        for info in self._node.connections():
            tally[_verdict(info.peer_certificate)] = (
                tally.get(_verdict(info.peer_certificate), 0) + 1
            )
        for verdict, value in sorted(tally.items()):
            verdicts.add_metric([verdict], value)
        yield verdicts

        depth = GaugeMetricFamily(
            "s2sfast_queue_depth",
            "stanzas queued for a remote domain while its outbound stream negotiates",
            labels=["local", "remote"],
        )
        router = getattr(self._node, "router", None)
        for (local, remote), link in sorted(getattr(router, "outbound", {}).items()):
            depth.add_metric([local, remote], len(getattr(link, "queue", ())))
        yield depth

        comps = GaugeMetricFamily(
            "s2sfast_components_connected", "XEP-0114 components serving a domain now"
        )
        comps.add_metric([], len(self._components.domains()))
        yield comps


def _verdict(status: Any) -> str:
    if status is None:
        return "not-checked"
    if status.trusted and status.name_matches:
        return "trusted"
    return "untrusted" if not status.trusted else "name-mismatch"


class Metrics:
    """The daemon's metrics: counters it bumps as it routes, gauges read from the node."""

    def __init__(self, node: Any, components: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stanzas = Counter(
            "s2sfast_stanzas",
            "stanzas through S2S: in = received for a local domain, "
            "out = handed to the router for a remote one",
            ["direction", "kind"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "s2sfast_stanza_bytes",
            "bytes of stanzas through S2S, by direction",
            ["direction"],
            registry=self.registry,
        )
        self.errors = Counter(
            "s2sfast_error_stanzas",
            "error stanzas delivered to local domains (the node's bounces and remote errors), "
            "by RFC 6120 stanza-error condition",
            ["condition"],
            registry=self.registry,
        )
        self.bounces = Counter(
            "s2sfast_bounces",
            "stanzas the node bounced back to a local sender, by stanza-error condition",
            ["condition"],
            registry=self.registry,
        )
        self.auth = Counter(
            "s2sfast_stream_auth",
            "S2S authentication outcomes: authenticated (by method and TLS) or failed "
            "(by condition; retry says whether the link will be retried)",
            ["direction", "outcome", "method", "tls", "condition", "retry"],
            registry=self.registry,
        )
        self.tls = Counter(
            "s2sfast_tls_handshakes",
            "STARTTLS handshakes on S2S streams: up (by protocol version) or failed",
            ["direction", "outcome", "version"],
            registry=self.registry,
        )
        self.component_stanzas = Counter(
            "s2sfast_component_stanzas",
            "stanzas between the node and its components (in: from a component)",
            ["direction"],
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(node, components))

    def observe(self, kind: str, fields: dict[str, Any]) -> None:
        """The Node's outcome events (``Node.on_event``) -> counters."""
        get = fields.get
        if kind == "bounce":
            self.bounces.labels(str(get("condition") or "undefined-condition")).inc()
        elif kind == "stream-authenticated":
            self.auth.labels(
                str(get("direction") or "?"),
                "authenticated",
                str(get("method") or "?"),
                "yes" if get("tls") else "no",
                "",
                "",
            ).inc()
        elif kind == "auth-failed":
            self.auth.labels(
                str(get("direction") or "out"),
                "failed",
                "",
                "",
                str(get("condition") or "undefined-condition"),
                "yes" if get("retry") else "no",
            ).inc()
        elif kind == "tls-up":
            self.tls.labels(str(get("direction") or "?"), "up", str(get("version") or "?")).inc()
        elif kind == "tls-failed":
            self.tls.labels(str(get("direction") or "?"), "failed", "").inc()

    def s2s_in(self, stanza: Any) -> None:
        raw = stanza.raw
        self.stanzas.labels("in", stanza.name).inc()
        self.bytes.labels("in").inc(len(raw))
        if stanza.type == "error":
            self.errors.labels(_error_condition(raw)).inc()

    def s2s_out(self, raw: bytes) -> None:
        self.stanzas.labels("out", _name_of(raw)).inc()
        self.bytes.labels("out").inc(len(raw))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _name_of(raw: bytes) -> str:
    end = 1
    while end < len(raw) and raw[end : end + 1] not in (b" ", b">", b"/", b"\t", b"\n", b"\r"):
        end += 1
    return raw[1:end].decode("ascii", "replace").rsplit(":", 1)[-1]


def _error_condition(raw: bytes) -> str:
    marker = b"urn:ietf:params:xml:ns:xmpp-stanzas"
    index = raw.find(marker)
    if index < 0:
        return "undefined-condition"
    start = raw.rfind(b"<", 0, index)
    name = _name_of(raw[start:]) if start >= 0 else ""
    return name or "undefined-condition"


class MetricsServer:
    """A minimal HTTP/1.1 endpoint: ``GET <path>`` -> the Prometheus text format, else 404."""

    def __init__(self, listen: ListenPrometheus, metrics: Metrics) -> None:
        self.listen = listen
        self.metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.listen.ip_address, self.listen.port
        )
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("prometheus metrics on http://%s:%d%s", host, port, self.listen.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        if len(head) > _MAX_REQUEST_HEAD:
            await self._respond(writer, 431, b"request head too large\n", "text/plain")
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            await self._respond(writer, 405, b"only GET\n", "text/plain")
            return
        target = parts[1].split(b"?", 1)[0].decode("ascii", "replace")
        if target != self.listen.path:
            await self._respond(writer, 404, b"not found\n", "text/plain")
            return
        body = self.metrics.render()
        await self._respond(
            writer, 200, body if parts[0] == b"GET" else b"", CONTENT_TYPE_LATEST, length=len(body)
        )

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        length: int | None = None,
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
