"""A toolkit for hostile-peer tests: raw-socket attackers, fake remote servers, an honest
federation that must keep delivering during the attack, and a memory probe.

Everything runs on 127.0.0.1 with asyncio streams. A hostile peer says what a real node never
would; :meth:`HostilePeer.outcome` reports what a user would see on the wire afterwards (the
node's header, its ``<stream:error/>`` condition, ``</stream:stream>``, the TCP close).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from s2sfast.framing import FramingError, Stanza, StreamClose, StreamFramer, StreamOpen
from s2sfast.protocol.dialback import make_key

__all__ = [
    "LOOPBACK",
    "STREAMS_NS",
    "header",
    "WireOutcome",
    "HostilePeer",
    "FakeServer",
    "HonestTraffic",
    "MemoryProbe",
    "rss_bytes",
    "MiB",
    "solo_node",
    "until",
]

LOOPBACK = "127.0.0.1"
STREAM_NS = "http://etherx.jabber.org/streams"
STREAMS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
MiB = 1024 * 1024

#: how long a test waits for the node's answer to an attack: far above any state_timeout
#: the hostile tests configure, so it only bounds a hang, it measures nothing
WAIT = 20.0


async def until(predicate: Any, timeout: float = WAIT, step: float = 0.02) -> bool:
    """Poll *predicate* until it is true or *timeout* passes (a hang guard, not a timing
    assertion); returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return bool(predicate())
        await asyncio.sleep(step)
    return True


def header(
    frm: str | None, to: str | None, *, id: str | None = None, version: bool = True
) -> bytes:
    """An S2S stream header as an initiator (or, with *id*, a responder) writes it."""
    parts = [
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server'",
        " xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'",
    ]
    if frm:
        parts.append(f" from='{frm}'")
    if to:
        parts.append(f" to='{to}'")
    if id:
        parts.append(f" id='{id}'")
    if version:
        parts.append(" version='1.0'")
    parts.append(">")
    return "".join(parts).encode()


def _condition(raw: bytes) -> tuple[str | None, str | None]:
    """(condition, text) of a ``<stream:error>`` element's bytes, without trusting its form."""
    from lxml import etree

    wrapped = b"<w xmlns:stream='" + STREAM_NS.encode() + b"'>" + raw + b"</w>"
    root = etree.fromstring(wrapped, etree.XMLParser(resolve_entities=False, no_network=True))
    condition = text = None
    for child in root[0]:
        name = etree.QName(child)
        if name.namespace != STREAMS_NS:
            continue
        if name.localname == "text":
            text = child.text
        else:
            condition = name.localname
    return condition, text


@dataclass
class WireOutcome:
    """What the attacked node sent back, as seen on the wire."""

    #: every byte received (plaintext part only when TLS was attempted and failed)
    data: bytes = b""
    header: StreamOpen | None = None
    stanzas: list[Stanza] = field(default_factory=list)
    #: the ``<stream:error/>`` condition and text, when one came
    error: str | None = None
    text: str | None = None
    #: ``</stream:stream>`` arrived
    stream_closed: bool = False
    #: the TCP connection was closed (EOF or reset) by the node
    eof: bool = False
    #: our own parser refused the node's bytes (never expected)
    parse_error: str | None = None

    def named(self, name: str) -> list[Stanza]:
        return [s for s in self.stanzas if s.name == name]


class HostilePeer:
    """One raw TCP connection to the node under attack."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.out = WireOutcome()
        self.framer = StreamFramer()
        self._pending: list[Any] = []

    @classmethod
    async def connect(cls, port: int, host: str = LOOPBACK) -> HostilePeer:
        reader, writer = await asyncio.open_connection(host, port, limit=1 * MiB)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    # --- sending -------------------------------------------------------------------------------

    def send(self, data: bytes | str) -> bool:
        """Write *data*; False once the node has closed the connection."""
        if self.writer.is_closing():
            return False
        try:
            self.writer.write(data.encode() if isinstance(data, str) else data)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def drain(self) -> bool:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            return False
        return not self.writer.is_closing() and not self.out.eof

    async def trickle(self, data: bytes, chunk: int = 1, *, read: bool = True) -> int:
        """Send *data* in *chunk*-byte writes, yielding after each; returns bytes written
        before the node closed the connection. With *read*, the node's answer is read
        concurrently (as a real peer does) until it closes the connection."""
        reading = asyncio.ensure_future(self._read_until_eof(WAIT)) if read else None
        sent = 0
        for i in range(0, len(data), chunk):
            if self.out.eof or not self.send(data[i : i + chunk]):
                break
            sent += len(data[i : i + chunk])
            await asyncio.sleep(0)
            if i % (chunk * 256) == 0 and not await self.drain():
                break
        if reading is not None:
            await reading
        return sent

    async def flood(self, prefix: bytes, filler: bytes, total: int, block: int = 64 * 1024) -> int:
        """Send *prefix* then *filler* repeated up to *total* bytes (or until closed, while
        reading the node's answer concurrently); returns bytes accepted by our kernel."""
        reading = asyncio.ensure_future(self._read_until_eof(WAIT))
        sent = 0
        if self.send(prefix):
            sent = len(prefix)
        piece = (filler * (block // len(filler) + 1))[:block]
        while sent < total and not self.out.eof:
            if not self.send(piece) or not await self.drain():
                break
            sent += len(piece)
        await reading
        return sent

    # --- receiving -----------------------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        self.out.data += data
        if self.out.parse_error is not None:
            return
        try:
            events = self.framer.feed(data)
        except FramingError as exc:
            self.out.parse_error = f"{exc.condition}: {exc.text}"
            return
        for ev in events:
            self._pending.append(ev)
            if isinstance(ev, StreamOpen):
                self.out.header = ev
            elif isinstance(ev, StreamClose):
                self.out.stream_closed = True
            elif isinstance(ev, Stanza):
                self.out.stanzas.append(ev)
                if ev.name == "error" and ev.ns == STREAM_NS:
                    self.out.error, self.out.text = _condition(ev.raw)

    async def _read_once(self, timeout: float) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            self.out.eof = True
            return False
        self._take(data)
        return True

    async def _read_until_eof(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.out.eof:
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                await self._read_once(left)
            except TimeoutError:
                return

    async def next(self, timeout: float = WAIT) -> Any:
        """The node's next framed event (StreamOpen, Stanza or StreamClose).

        Raises:
            EOFError: the node closed the connection first.
        """
        while not self._pending:
            if self.out.eof or not await self._read_once(timeout):
                raise EOFError(f"node closed the connection; saw {self.out.data[-300:]!r}")
        return self._pending.pop(0)

    async def next_stanza(self, timeout: float = WAIT) -> Stanza:
        while True:
            ev = await self.next(timeout)
            if isinstance(ev, Stanza):
                return ev

    async def open(self, frm: str | None, to: str) -> tuple[StreamOpen, Stanza]:
        """Send a proper header; return the node's header and features."""
        self.send(header(frm, to))
        head = await self.next()
        assert isinstance(head, StreamOpen), head
        features = await self.next_stanza()
        assert features.name == "features", features.raw
        return head, features

    async def outcome(self, timeout: float = WAIT) -> WireOutcome:
        """Read until the node closes the connection (or *timeout*); what it said."""
        await self._read_until_eof(timeout)
        return self.out

    async def silent_for(self, seconds: float) -> bool:
        """True when the node sends nothing and keeps the connection for *seconds*."""
        before = len(self.out.data)
        with contextlib.suppress(TimeoutError):
            await self._read_until_eof(seconds)
        return len(self.out.data) == before and not self.out.eof

    # --- TLS -----------------------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade this connection (after ``<proceed/>``); a new framer starts."""
        await self.writer.start_tls(context, server_hostname=server_hostname)
        self.framer = StreamFramer()
        self._pending.clear()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


class _StopReading(Exception):
    """FakeServer("deaf") stops reading its connection."""


class FakeServer:
    """A hand-written remote S2S server on 127.0.0.1 that the node under attack connects to.

    *behaviour* decides what it does after the node's header:
    ``"mute"``: accept and never answer; ``"stall-dialback"``: header and features, then
    silence; ``"strip-tls"``: header and dialback-only features (a STARTTLS-stripping
    attacker); ``"authoritative"``: header and features, and ``type='valid'`` for every
    db:verify (the attacker controls the domain, so its keys are "valid").
    ``"deaf"``: header and features, ``type='valid'`` for the node's own db:result, then it
    never reads again (a peer that lets our writes pile up); ``"receiver"``: the same, but
    it keeps reading in silence.
    Everything the node sends is kept in :attr:`received`, per connection.
    """

    def __init__(self, behaviour: str, domain: str = "evil.test", *, backlog: int = 4096) -> None:
        self.behaviour = behaviour
        #: listen backlog: large, so a node opening a thousand verify links at once is not
        #: slowed down by SYN retransmits (which would look like the node's own time-outs)
        self.backlog = backlog
        self.domain = domain
        self.received: list[bytearray] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._closed = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0, backlog=self.backlog)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    @property
    def connections(self) -> int:
        return len(self.received)

    def everything(self) -> bytes:
        return b"".join(bytes(r) for r in self.received)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = bytearray()
        self.received.append(record)
        self._writers.append(writer)
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                record.extend(data)
                if self.behaviour == "mute":
                    continue
                for ev in framer.feed(data):
                    self._answer(ev, writer)
        except _StopReading:
            await self._closed.wait()
        except (ConnectionError, FramingError):
            pass
        finally:
            writer.close()

    def _answer(self, ev: Any, writer: asyncio.StreamWriter) -> None:
        if isinstance(ev, StreamOpen):
            writer.write(header(ev.attrs.get("to"), ev.attrs.get("from"), id="fake-stream-1"))
            feats = "<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
            writer.write(f"<stream:features>{feats}</stream:features>".encode())
        elif isinstance(ev, StreamClose):
            writer.write(b"</stream:stream>")
        elif (
            self.behaviour == "authoritative"
            and isinstance(ev, Stanza)
            and ev.name == "verify"
            and ev.type is None
        ):
            writer.write(
                f"<db:verify from='{ev.to}' to='{ev.from_}' id='{ev.id}' type='valid'/>".encode()
            )
        elif (
            self.behaviour in ("deaf", "receiver")
            and isinstance(ev, Stanza)
            and ev.name == "result"
            and ev.type is None
        ):
            # accept the node's dialback claim; "deaf" then never reads again, "receiver"
            # reads everything and never says another word (legal: nothing obliges it to)
            writer.write(f"<db:result from='{ev.to}' to='{ev.from_}' type='valid'/>".encode())
            if self.behaviour == "deaf":
                raise _StopReading

    async def stop(self) -> None:
        self._closed.set()
        if self.server is not None:
            self.server.close()
        for w in self._writers:
            w.close()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def authenticate_as(
    peer: HostilePeer, *, domain: str, victim: str, secret: str = "attacker-secret"
) -> str:
    """Dialback-authenticate *domain* (served by a FakeServer("authoritative")) to *victim*
    on *peer*'s stream; returns the node's stream id. The attacker really controls *domain*:
    this is how a hostile server gets an authenticated stream."""
    head, _features = await peer.open(domain, victim)
    stream_id = head.attrs["id"]
    key = make_key(secret, victim, domain, stream_id)
    peer.send(f"<db:result from='{domain}' to='{victim}'>{key}</db:result>")
    answer = await peer.next_stanza()
    assert answer.name == "result" and answer.type == "valid", answer.raw
    return stream_id


class HonestTraffic:
    """Numbered chat messages flowing both ways between two honest nodes during an attack.

    ``traffic.start()`` begins sending (one stanza per *interval* each way); ``await
    traffic.finish()`` stops, waits for every stanza and checks that each side received all
    of the other's, in order, none lost or duplicated, and that nothing bounced.
    """

    def __init__(
        self,
        a: Any,
        b: Any,
        *,
        a_domain: str,
        b_domain: str,
        interval: float = 0.01,
        tag: str = "honest",
    ) -> None:
        self.a, self.b = a, b
        self.a_domain, self.b_domain = a_domain, b_domain
        self.interval = interval
        self.tag = tag
        self.sent = {"ab": 0, "ba": 0}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _message(self, frm: str, to: str, way: str, n: int) -> bytes:
        return (
            f"<message from='alice@{frm}/r' to='bob@{to}' type='chat' id='{self.tag}-{way}-{n}'>"
            f"<body>{way} #{n}</body></message>"
        ).encode()

    def start(self) -> HonestTraffic:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            await self.a.send(self._message(self.a_domain, self.b_domain, "ab", n))
            await self.b.send(self._message(self.b_domain, self.a_domain, "ba", n))
            n += 1
            self.sent = {"ab": n, "ba": n}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def _ids(self, node: Any, way: str) -> list[str]:
        prefix = f"{self.tag}-{way}-"
        return [s.id for s in node.inbox.seen if s.id and s.id.startswith(prefix)]

    def _bounces(self, node: Any) -> list[bytes]:
        prefix = f"{self.tag}-"
        return [
            s.raw for s in node.inbox.seen if s.type == "error" and s.id and s.id.startswith(prefix)
        ]

    async def finish(self, timeout: float = 30.0, minimum: int = 5) -> int:
        """Stop sending; assert complete, ordered, duplicate-free delivery both ways.

        Returns the number of stanzas delivered each way. At least *minimum* stanzas each
        way are sent first (the traffic keeps going after a quick attack, too).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sent["ab"] < minimum and loop.time() < deadline and not self._task.done():
            await asyncio.sleep(self.interval)
        self._stop.set()
        assert self._task is not None
        await self._task
        want = {
            "ab": [f"{self.tag}-ab-{i}" for i in range(self.sent["ab"])],
            "ba": [f"{self.tag}-ba-{i}" for i in range(self.sent["ba"])],
        }
        while loop.time() < deadline:
            if (
                len(self._ids(self.b, "ab")) >= len(want["ab"])
                and len(self._ids(self.a, "ba")) >= len(want["ba"])
            ) or self._bounces(self.a) + self._bounces(self.b):
                break
            await asyncio.sleep(0.05)
        assert not self._bounces(self.a) + self._bounces(self.b), "honest stanzas bounced"
        assert self._ids(self.b, "ab") == want["ab"], "a -> b lost, reordered or duplicated"
        assert self._ids(self.a, "ba") == want["ba"], "b -> a lost, reordered or duplicated"
        assert self.sent["ab"] >= minimum, "the honest federation hardly ran"
        return self.sent["ab"]


def rss_bytes() -> int:
    """This process's resident set size (the node under attack runs in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class MemoryProbe:
    """Peak RSS growth of this process while an attack runs (sampled in the background).

    Bounds are generous (the point is "bounded", not "small"): an attack that makes the node
    hold what the attacker sends shows up as growth of the same order as the bytes sent.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start_rss = 0
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemoryProbe:
        gc.collect()
        self.start_rss = self.peak = rss_bytes()
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start_rss

    def assert_below(self, limit: int, what: str) -> None:
        assert self.growth < limit, (
            f"{what}: RSS grew by {self.growth / MiB:.1f} MiB (bound {limit / MiB:.0f} MiB)"
        )


# --- the arena: a victim node, an honest node, honest traffic between them ---------------------

VICTIM = "v.test"
HONEST = "h.test"
#: the victim's state_timeout in the hostile tests (ms): small so stalls end quickly
STATE_TIMEOUT_MS = 1500
#: the victim's max_stanza_size in the hostile tests (bytes)
MAX_STANZA = 16 * 1024
#: RSS growth allowed for a whole arena test: generous (two nodes, hundreds of honest
#: stanzas, pytest's log capture), but far below what holding an attacker's flood would cost
ARENA_MEMORY_BOUND = 48 * MiB


@dataclass
class Arena:
    """The node under attack (``victim``), its honest peer and the traffic between them."""

    victim: Any
    honest: Any
    traffic: HonestTraffic
    port: int
    #: RSS growth of the whole test (attack + honest traffic), sampled from the start
    memory: MemoryProbe | None = None

    @property
    def state_timeout(self) -> float:
        return self.victim.config.listen_s2s[0].state_timeout / 1000

    async def finish(self, bound: int = ARENA_MEMORY_BOUND) -> int:
        """End of the test: the honest federation delivered everything (see
        :meth:`HonestTraffic.finish`) and the process grew by less than *bound* bytes."""
        delivered = await self.traffic.finish()
        if self.memory is not None:
            await self.memory.__aexit__(None, None, None)
            self.memory.assert_below(bound, "attack and honest traffic together")
        return delivered


def arena_factory(federation: Any, tls_certfile: Any, tls_ca_file: str):
    """Build an :class:`Arena` with the ``federation`` fixture (see tests/conftest.py).

    ``await build(mode="false", addresses={domain: port}, max_stanza_size=MAX_STANZA,
    state_timeout_ms=STATE_TIMEOUT_MS)``: *addresses* routes attacker-controlled domains to
    :class:`FakeServer` ports. Honest traffic is flowing both ways when it returns.
    """

    async def build(
        *,
        mode: str = "false",
        addresses: dict[str, int] | None = None,
        max_stanza_size: int | None = MAX_STANZA,
        state_timeout_ms: int = STATE_TIMEOUT_MS,
        interval: float = 0.01,
    ) -> Arena:
        victim: dict[str, Any] = {
            "hosts": [VICTIM],
            "mode": mode,
            "state_timeout_ms": state_timeout_ms,
            "max_stanza_size": max_stanza_size,
            "addresses": dict(addresses or {}),
            "shared": "victim-secret",
        }
        honest: dict[str, Any] = {"hosts": [HONEST], "mode": mode}
        if mode != "false":
            victim.update(certfile=tls_certfile(VICTIM), cafile=tls_ca_file)
            honest.update(certfile=tls_certfile(HONEST), cafile=tls_ca_file)
        memory = MemoryProbe()
        await memory.__aenter__()
        nodes = await federation({"V": victim, "H": honest})
        traffic = HonestTraffic(
            nodes["V"], nodes["H"], a_domain=VICTIM, b_domain=HONEST, interval=interval
        ).start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline:  # both directions established before the attack
            if traffic._ids(nodes["H"], "ab") and traffic._ids(nodes["V"], "ba"):
                break
            await asyncio.sleep(0.02)
        return Arena(nodes["V"], nodes["H"], traffic, nodes["V"].port, memory)

    return build


@contextlib.asynccontextmanager
async def solo_node(
    dns_server: Any,
    hosts: list[str],
    *,
    listen: dict[str, Any] | None = None,
    node_options: dict[str, Any] | None = None,
    handler: Any = None,
    **config: Any,
):
    """One started Node (with ``.inbox`` and ``.port``) for tests that need listener options
    the ``federation`` fixture does not take (max_connections, shaper, ...).

    *listen* replaces fields of its ``[[listen.s2s]]``; *config* goes to node_config (plus
    ``connect_timeout_ms`` for ``[s2s] outgoing.connection_timeout``); *handler* replaces the
    Inbox (which keeps every stanza) as the stanza handler.
    """
    from dataclasses import replace

    from core_helpers import Inbox, free_port, node_config

    from s2sfast.net.dns import Resolver
    from s2sfast.node import Node

    connect_timeout_ms = config.pop("connect_timeout_ms", None)
    cfg = node_config(hosts, port=free_port(), **config)
    if connect_timeout_ms is not None:  # node_config's 3 s is short for 1,000 connects at once
        outgoing = replace(cfg.s2s.outgoing, connection_timeout=connect_timeout_ms)
        cfg = replace(cfg, s2s=replace(cfg.s2s, outgoing=outgoing))
    if listen:
        cfg = replace(cfg, listen_s2s=(replace(cfg.listen_s2s[0], **listen),))
    node = Node(
        cfg,
        resolver=Resolver([dns_server.nameserver], timeout=1, retries=1),
        **(node_options or {}),
    )
    node.inbox = handler or Inbox()
    node.on_stanza(node.inbox)
    await node.start()
    node.port = node.listen_addresses()[0][1]
    try:
        yield node
    finally:
        await node.stop(timeout=3)
