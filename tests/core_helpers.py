"""Helpers for s2sfast's end-to-end tests: loopback ports, node configs, an inbox handler,
a hand-driven raw S2S peer and a recording TCP proxy. Imported by tests/conftest.py and by the
test modules (``from core_helpers import ...``)."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Iterable
from typing import Any

from s2sfast.config import (
    AddressOverride,
    Config,
    HostPolicy,
    ListenS2S,
    ListenTls,
    OutgoingOptions,
    S2SOptions,
    StreamManagementOptions,
)
from s2sfast.framing import Stanza, StreamFramer, StreamOpen

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def node_config(
    hosts: Iterable[str],
    *,
    port: int,
    addresses: dict[str, int] | None = None,
    mode: str = "false",
    certfile: str | None = None,
    cafile: str | None = None,
    shared: str | None = None,
    default_policy: str = "allow",
    host_policy: dict[str, str] | None = None,
    state_timeout_ms: int = 5000,
    max_stanza_size: int | None = None,
    stream_management: StreamManagementOptions | None = None,
    sasl_external: bool = False,
    dialback_cert_auth: bool = True,
    bidi: bool = False,
) -> Config:
    """A Config for one test node listening on 127.0.0.1:*port*; *addresses* maps remote
    domains to loopback ports ([s2s] address overrides)."""
    s2s = S2SOptions(
        default_policy=default_policy,
        host_policy=tuple(HostPolicy(host=h, policy=p) for h, p in (host_policy or {}).items()),
        use_starttls=mode,
        certfile=certfile,
        shared=shared or secrets.token_hex(10),
        address=tuple(
            AddressOverride(host=h, ip_address=LOOPBACK, port=p)
            for h, p in (addresses or {}).items()
        ),
        outgoing=OutgoingOptions(connection_timeout=3000),
        stream_management=stream_management or StreamManagementOptions(),
        sasl_external=sasl_external,
        dialback_cert_auth=dialback_cert_auth,
        bidi=bidi,
    )
    return Config(
        hosts=tuple(hosts),
        listen_s2s=(
            ListenS2S(
                port=port,
                ip_address=LOOPBACK,
                state_timeout=state_timeout_ms,
                max_stanza_size=max_stanza_size,
                tls=ListenTls(cacertfile=cafile),
            ),
        ),
        s2s=s2s,
    )


def tls_spec(
    tls_certfile: Any, tls_ca_file: str, *hosts: str, mode: str = "required", **extra: Any
) -> dict[str, Any]:
    """A ``federation`` node spec for *hosts* with TLS *mode*, one certificate naming them all
    (from the ``tls_certfile`` fixture), the CA every test certificate chains to, and *extra*
    spec keys."""
    return {
        "hosts": list(hosts),
        "mode": mode,
        "certfile": tls_certfile(*hosts),
        "cafile": tls_ca_file,
        **extra,
    }


def authenticated_connection(node: Any, direction: str) -> Any:
    """The node's one authenticated connection in *direction* ("in" or "out")."""
    (conn,) = [c for c in node.connections() if c.direction == direction and c.pairs]
    return conn


async def start_tls_mode_node(
    hosts: list[str], nameserver: Any, *, listeners: tuple[str, ...], **config_kwargs: Any
) -> Any:
    """A started Node for *hosts* (``node_config`` with *config_kwargs*) with one listener per
    ``tls.mode`` in *listeners*, resolving through the loopback DNS server at *nameserver*;
    ``node.inbox`` collects its stanzas and ``node.ports`` maps each mode to its bound port."""
    from dataclasses import replace

    from s2sfast.net.dns import Resolver
    from s2sfast.node import Node

    config = node_config(hosts, port=free_port(), **config_kwargs)
    first = config.listen_s2s[0]
    config = replace(
        config,
        listen_s2s=tuple(
            replace(first, port=free_port(), tls=replace(first.tls, mode=m)) for m in listeners
        ),
    )
    node = Node(
        config,
        resolver=Resolver([nameserver], timeout=1, retries=1),
        retry_initial=0.05,
        pending_deadline=3.0,
    )
    node.inbox = Inbox()  # type: ignore[attr-defined]
    node.on_stanza(node.inbox)  # type: ignore[attr-defined]
    await node.start()
    node.ports = {  # type: ignore[attr-defined]
        m: addr[1] for m, addr in zip(listeners, node.listen_addresses(), strict=True)
    }
    return node


class Inbox:
    """A stanza handler that queues what it gets; ``await inbox.get()`` waits for the next."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.seen: list[Any] = []

    def __call__(self, stanza: Any) -> None:
        self.seen.append(stanza)
        self.queue.put_nowait(stanza)

    async def get(self, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, wait: float = 0.5) -> bool:
        """True when nothing arrives within *wait* seconds."""
        try:
            await asyncio.wait_for(self.queue.get(), wait)
        except TimeoutError:
            return True
        return False


def message(frm: str, to: str, body: str, id: str = "m1") -> bytes:
    """A chat message's bytes (jabber:server default namespace, no xmlns on the element)."""
    return (
        f"<message from='{frm}' to='{to}' type='chat' id='{id}'><body>{body}</body></message>"
    ).encode()


HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    "from='{frm}' to='{to}' version='1.0'>"
)


class RawPeer:
    """A minimal S2S initiator written out by hand, to say things our Node never would."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.events: list = []
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def next(self, timeout: float = 5.0):
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                self.closed = True
                raise EOFError("peer closed the connection")
            self.events.extend(self.framer.feed(data))
        return self.events.pop(0)

    async def open(self, frm: str, to: str) -> str:
        """Send our header; return the peer's stream id after reading header and features."""
        self.send(HEADER.format(frm=frm, to=to))
        header = await self.next()
        assert isinstance(header, StreamOpen)
        features = await self.next()
        assert isinstance(features, Stanza) and features.name == "features"
        return header.attrs["id"]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to *target_port* (set before the first
    connection arrives) and records both directions."""

    def __init__(self) -> None:
        self.target_port: int | None = None
        self.c2a = bytearray()  # initiator -> acceptor
        self.a2c = bytearray()
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)

        async def pump(src, dst, record: bytearray) -> None:
            try:
                while data := await src.read(65536):
                    record.extend(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        self.tasks += [
            asyncio.ensure_future(pump(reader, up_writer, self.c2a)),
            asyncio.ensure_future(pump(up_reader, writer, self.a2c)),
        ]

    async def stop(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
