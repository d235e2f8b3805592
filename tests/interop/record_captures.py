#!/usr/bin/env python3
"""Record the wire captures in tests/data/captures/ again, from real Prosody and ejabberd.

    python3 tests/interop/record_captures.py --out DIR [--scenario s1plain s3tls ...]

Every connection of a scenario goes through a recording TCP proxy on 127.0.0.1 (asyncio). The
proxy forwards bytes unchanged and writes, per accepted connection,
``NN-<scenario>-<initiator>-to-<acceptor>.c2a.xml`` (initiator to acceptor),
``.a2c.xml`` (acceptor to initiator) and ``.chunks`` (one ``dir@offset+len`` line per
``recv()`` the proxy got, in the order it got them: the TCP read boundaries and how the two
directions interleave). Past STARTTLS the files hold the raw TLS records.

Routing: each server's ``remotes`` (published by the harness as SRV/A records in a loopback DNS
zone of its own) send every remote domain to a proxy for that (server, remote) pair. So each
proxy knows which server initiated, and dialback back-connections are recorded too.

Scenarios (the numbering of tests/data/captures/README.md; NN counts accepted connections):

- ``s1plain`` (01..): Prosody a.test <-> Prosody b.test, S2S TLS off.
- ``s2plain`` (11..): Prosody b.test <-> ejabberd e.test, S2S TLS off on both.
- ``s3tls`` (21..): a.test <-> b.test, then b.test <-> e.test, STARTTLS required everywhere.
- ``s4fail`` (31..): c2s streams (the c2s port behind a proxy) of users sending to domains
  that cannot be reached: c.test (a proxy to a closed port) and x.test (ejabberd's s2s port,
  which does not serve it). Only the two c2s connections are recorded.

In s1-s3 a user on the initiating server sends three messages (ASCII; 4-byte UTF-8; entities),
a presence subscribe and an iq ping to the remote domain; the remote user answers with a message.
Prosody runs with ``network_settings = { read_timeout = 6 }`` (``--keepalive``) so that it sends
whitespace keepalives while the recorder lingers; the servers are then stopped, so the
stream-close bytes are part of the capture.

Servers are started through the interop harness (``servers`` package beside this file); this
script needs Prosody and ejabberd installed (see tests/interop/README.md). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent):  # run as a script: the harness and tests/ helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

__all__ = [
    "SCENARIOS",
    "Capture",
    "RecordingProxy",
    "Session",
    "compare",
    "equivalent",
    "load_chunks",
    "record",
    "steps",
    "tls_offset",
]

PASSWORD = "pw"
LOOPBACK = "127.0.0.1"
#: Prosody's read_timeout during recording: it sends a whitespace keepalive after this many
#: idle seconds (the default, 840 s, would leave none in the capture window)
KEEPALIVE = 6.0
#: seconds the streams stay open after the traffic, so keepalives are recorded
LINGER = 8.0
#: seconds to wait for every recorded connection to end after the servers stopped
DRAIN = 15.0
#: seconds a proxy holds one side's end of stream before passing it on: a server answers its
#: peer's ``</stream:stream>`` with its own, which a FIN arriving with the close would cut off
FIN_GRACE = 0.5
#: high-water mark of a proxy side's write buffer before the other side stops reading
_HIGH_WATER = 256 * 1024

SCENARIOS = ("s1plain", "s2plain", "s3tls", "s4fail")
_BASE = {"s1plain": 0, "s2plain": 10, "s3tls": 20, "s4fail": 30}


# --- the capture files ----------------------------------------------------------------------


class Capture:
    """One recorded TCP connection: ``STEM.c2a.xml``, ``STEM.a2c.xml`` and ``STEM.chunks``."""

    def __init__(self, out_dir: Path, stem: str) -> None:
        self.stem = stem
        self.paths = {d: out_dir / f"{stem}.{d}.xml" for d in ("c2a", "a2c")}
        self.chunks_path = out_dir / f"{stem}.chunks"
        self._files = {d: open(p, "wb") for d, p in self.paths.items()}  # noqa: SIM115
        self._size = {"c2a": 0, "a2c": 0}
        self.chunks: list[tuple[str, int, int]] = []

    def record(self, direction: str, data: bytes) -> None:
        f = self._files[direction]
        f.write(data)
        f.flush()
        self.chunks.append((direction, self._size[direction], len(data)))
        self._size[direction] += len(data)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self.chunks_path.write_text("".join(f"{d}@{o}+{n}\n" for d, o, n in self.chunks))


def load_chunks(path: Path) -> list[tuple[str, int, int]]:
    """A ``.chunks`` file as ``[(direction, offset, length), ...]`` in recorded order."""
    out = []
    for line in path.read_text().split():
        direction, rest = line.split("@")
        offset, length = rest.split("+")
        out.append((direction, int(offset), int(length)))
    return out


_STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
_PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


def tls_offset(data: bytes) -> int | None:
    """Where TLS starts in one direction of a capture: the first byte after ``<starttls/>``
    (initiator) or ``<proceed/>`` (acceptor) when a TLS handshake record (0x16 0x03) follows."""
    for marker in (_STARTTLS, _PROCEED):
        at = data.find(marker)
        if at >= 0:
            end = at + len(marker)
            if data[end : end + 2] == b"\x16\x03":
                return end
    return None


# --- the recording proxy --------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; *direction* names the bytes it receives."""

    def __init__(self, link: _Link, direction: str) -> None:
        self.link = link
        self.direction = direction
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.link.made(self)

    def data_received(self, data: bytes) -> None:
        self.link.data(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.link.eof(self)
        return True  # half-close: the other direction may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.link.gone(self)

    def pause_writing(self) -> None:
        self.link.other(self).pause_reading()

    def resume_writing(self) -> None:
        self.link.other(self).resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()


class _Link:
    """Initiator socket <-> acceptor socket, recording each recv() into a Capture."""

    def __init__(self, proxy: RecordingProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, "c2a")
        self.server = _Side(self, "a2c")
        self.capture: Capture | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def other(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def made(self, side: _Side) -> None:
        if side is self.client:
            side.pause_reading()  # until the acceptor is connected
            self.proxy.session.track(self, asyncio.create_task(self._connect()))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.server, LOOPBACK, self.proxy.upstream)
        except OSError:
            assert self.client.transport is not None
            self.client.transport.close()  # the initiator sees the connection closed
            return
        if self.proxy.record:
            self.capture = self.proxy.session.new_capture(self.proxy)
        self.client.resume_reading()

    def data(self, side: _Side, data: bytes) -> None:
        if self.capture is not None:
            self.capture.record(side.direction, data)
        dest = self.other(side).transport
        if dest is not None and not dest.is_closing():
            dest.write(data)

    def eof(self, side: _Side) -> None:
        if self.client.eof and self.server.eof:
            self._close_both()
        else:
            asyncio.get_running_loop().call_later(FIN_GRACE, self._half_close, side)

    def gone(self, side: _Side) -> None:
        """One socket closed: the other is still read to its end and gets a FIN after
        FIN_GRACE (a server's answer to its peer's close is part of the capture)."""
        other = self.other(side)
        if other.transport is None or other.lost:
            self._finish()
        elif other.eof:
            other.transport.close()
        else:
            asyncio.get_running_loop().call_later(FIN_GRACE, self._half_close, side)

    def _half_close(self, side: _Side) -> None:
        """Pass *side*'s end of stream on to the other socket."""
        dest = self.other(side).transport
        if dest is not None and not dest.is_closing() and dest.can_write_eof():
            dest.write_eof()

    def _close_both(self) -> None:
        for s in (self.client, self.server):
            if s.transport is not None and not s.transport.is_closing():
                s.transport.close()  # flushes what is buffered, then FIN

    def _finish(self) -> None:
        if not self.done.done():
            if self.capture is not None:
                self.capture.close()
            self.done.set_result(None)

    def abort(self) -> None:
        for s in (self.client, self.server):
            if s.transport is not None:
                s.transport.abort()
        self._finish()


class RecordingProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to *upstream*.

    Connections count as initiated by *initiator* towards *acceptor*; with ``record=False`` they
    are forwarded and not written (a route to a closed port).
    """

    def __init__(
        self, session: Session, initiator: str, acceptor: str, upstream: int, record: bool = True
    ) -> None:
        self.session = session
        self.initiator = initiator
        self.acceptor = acceptor
        self.upstream = upstream
        self.record = record
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RecordingProxy:
        loop = asyncio.get_running_loop()
        # a port from the harness, which then never hands it to a server of this run
        (port,) = _harness().free_ports(1)
        self._server = await loop.create_server(lambda: _Link(self).client, LOOPBACK, port)
        self.port = port
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class Session:
    """One scenario's recording: numbering, proxies, the connections in flight."""

    scenario: str
    out_dir: Path
    captures: list[Capture] = field(default_factory=list)
    proxies: list[RecordingProxy] = field(default_factory=list)
    _links: list[_Link] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def proxy(
        self, initiator: str, acceptor: str, upstream: int, record: bool = True
    ) -> RecordingProxy:
        p = await RecordingProxy(self, initiator, acceptor, upstream, record).start()
        self.proxies.append(p)
        return p

    def new_capture(self, proxy: RecordingProxy) -> Capture:
        number = _BASE[self.scenario] + len(self.captures) + 1
        stem = f"{number:02d}-{self.scenario}-{proxy.initiator}-to-{proxy.acceptor}"
        capture = Capture(self.out_dir, stem)
        self.captures.append(capture)
        return capture

    def track(self, link: _Link, task: asyncio.Task[None]) -> None:
        self._links.append(link)
        self._tasks.append(task)

    async def finish(self, timeout: float = DRAIN) -> None:
        """Stop listening and wait for every connection to end (abort what is left)."""
        for p in self.proxies:
            p.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pending = [link.done for link in self._links if not link.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for link in self._links:
            if not link.done.done():
                link.abort()


# --- servers and users ----------------------------------------------------------------------


def _harness() -> Any:
    import servers  # tests/interop/servers: the project's Prosody/ejabberd harness

    return servers


@dataclass
class _Cluster:
    """The servers of one scenario, started and stopped together."""

    work: Path
    keepalive: float
    servers: dict[str, Any] = field(default_factory=dict)

    def prosody(self, domain: str, tls: str) -> Any:
        cfg = f"network_settings = {{ read_timeout = {self.keepalive:g} }}"
        s = _harness().ProsodyServer(domain, self.work / domain, tls=tls, extra_config=cfg)
        self.servers[domain] = s
        return s

    def ejabberd(self, domain: str, tls: str) -> Any:
        s = _harness().EjabberdServer(domain, self.work / domain, tls=tls)
        self.servers[domain] = s
        return s

    @staticmethod
    def route(server: Any, domain: str, port: int) -> None:
        """*server* reaches *domain* at 127.0.0.1:*port* (SRV/A in its DNS zone at start)."""
        server.remotes[domain] = port

    async def start(self, users: dict[str, Iterable[str]]) -> None:
        for domain, s in self.servers.items():
            await asyncio.to_thread(s.start)
            for user in users.get(domain, ()):
                await asyncio.to_thread(s.adduser, user, PASSWORD)

    async def stop(self, order: Iterable[str]) -> None:
        """Stop the servers one after the other (their stream-close bytes are recorded)."""
        for domain in [*order, *(d for d in self.servers if d not in order)]:
            s = self.servers.pop(domain, None)
            if s is not None:
                await asyncio.to_thread(s.stop)

    def close(self) -> None:
        for s in self.servers.values():
            s.stop()
        self.servers.clear()


async def _login(server: Any, user: str, port: int | None = None) -> Any:
    from interop_c2s import C2SClient

    jid = f"{user}@{server.domain}"
    return await C2SClient.login(port or server.c2s_port, jid, PASSWORD, "raw")


def _traffic(remote_user: str, remote_domain: str) -> str:
    to = f"{remote_user}@{remote_domain}"
    return (
        f"<message to='{to}' type='chat' id='m1'><body>hello 1 plain ASCII</body></message>"
        f"<message to='{to}' type='chat' id='m2'><body>grüße ☃ 日本語 😀 café</body></message>"
        f"<message to='{to}' type='chat' id='m3'><body>a &lt; b &amp;&amp; c &gt; d "
        "&quot;q&quot; &apos;s&apos; &#x263A;</body></message>"
        f"<presence to='{to}' type='subscribe' id='s1'/>"
        f"<iq type='get' id='p1' to='{remote_domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
    )


def _is(kind: str, ident: str) -> Callable[[Any], bool]:
    return lambda el: el.tag.rsplit("}", 1)[-1] == kind and el.get("id") == ident


async def _exchange(sender: Any, receiver: Any, timeout: float = 30) -> None:
    """*sender* sends the standard traffic to *receiver*, who answers with message r1."""
    sender.send(_traffic(receiver.user, receiver.domain))
    for ident in ("m1", "m2", "m3"):
        await receiver.wait_for(_is("message", ident), timeout)
    await receiver.wait_for(_is("presence", "s1"), timeout)
    await sender.wait_for(_is("iq", "p1"), timeout)
    receiver.send(
        f"<message to='{sender.full_jid}' type='chat' id='r1'>"
        f"<body>reply from {receiver.domain} æøå</body></message>"
    )
    await sender.wait_for(_is("message", "r1"), timeout)


# --- scenarios ------------------------------------------------------------------------------


async def _federation(
    session: Session,
    cluster: _Cluster,
    pairs: list[tuple[str, str]],
    users: dict[str, str],
    linger: float,
    stop_order: list[str],
) -> None:
    """Per-pair proxies both ways, start, one exchange per pair, linger, stop."""
    for a, b in pairs:
        for src, dst in ((a, b), (b, a)):
            upstream = cluster.servers[dst].s2s_port
            proxy = await session.proxy(src, dst, upstream)
            cluster.route(cluster.servers[src], dst, proxy.port)
    await cluster.start({d: [u] for d, u in users.items()})
    clients = {d: await _login(cluster.servers[d], u) for d, u in users.items()}
    try:
        for a, b in pairs:
            await _exchange(clients[a], clients[b])
        await asyncio.sleep(linger)
    finally:
        for c in clients.values():
            await c.close()
    await cluster.stop(stop_order)


async def _s4fail(session: Session, cluster: _Cluster, linger: float) -> None:
    from dnsserver import closed_port

    a = cluster.prosody("a.test", "optional")
    e = cluster.ejabberd("e.test", "optional")
    dead = closed_port()
    for server in (a, e):  # c.test: accepted by a proxy whose upstream refuses
        proxy = await session.proxy(server.domain, "c.test", dead, record=False)
        cluster.route(server, "c.test", proxy.port)
    cluster.route(a, "x.test", e.s2s_port)  # ejabberd does not serve x.test: host-unknown
    await cluster.start({"a.test": ["alice"], "e.test": ["carol"]})
    for server, user, sends in (
        (
            a,
            "alice",
            "<message to='nobody@c.test' type='chat' id='f1'><body>to closed port</body></message>"
            "<message to='someone@x.test' type='chat' id='f2'><body>to host-unknown</body>"
            "</message><iq type='get' id='f3' to='x.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        ),
        (
            e,
            "carol",
            "<message to='nobody@c.test' type='chat' id='g1'><body>ejabberd to closed port"
            "</body></message>"
            "<iq type='get' id='g2' to='c.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        ),
    ):
        proxy = await session.proxy(f"{user}-c2s", server.domain, server.c2s_port)
        client = await _login(server, user, proxy.port)
        try:
            client.send(sends)
            idents = ("f1", "f2", "f3") if user == "alice" else ("g1", "g2")
            for ident in idents:
                await client.wait_for(lambda el, i=ident: el.get("id") == i, 60)
        finally:
            await client.close()
    await asyncio.sleep(min(linger, 1.0))
    await cluster.stop(["a.test", "e.test"])


async def _run(
    scenario: str,
    session: Session,
    cluster: _Cluster,
    linger: float,
    domains: set[str] | None,
) -> None:
    def keep(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [p for p in pairs if domains is None or set(p) <= domains]

    if scenario == "s1plain":
        cluster.prosody("a.test", "off")
        cluster.prosody("b.test", "off")
        users = {"a.test": "alice", "b.test": "bob"}
        await _federation(session, cluster, [("a.test", "b.test")], users, linger, ["a.test"])
    elif scenario == "s2plain":
        cluster.prosody("b.test", "off")
        cluster.ejabberd("e.test", "off")
        users = {"b.test": "bob", "e.test": "carol"}
        await _federation(session, cluster, [("b.test", "e.test")], users, linger, ["e.test"])
    elif scenario == "s3tls":
        pairs = keep([("a.test", "b.test"), ("b.test", "e.test")])
        names = {d for p in pairs for d in p}
        for d in sorted(names):
            if d == "e.test":
                cluster.ejabberd(d, "required")
            else:
                cluster.prosody(d, "required")
        users = {d: u for d, u in (("a.test", "alice"), ("b.test", "bob"), ("e.test", "carol"))}
        users = {d: u for d, u in users.items() if d in names}
        await _federation(session, cluster, pairs, users, linger, ["a.test", "e.test"])
    elif scenario == "s4fail":
        await _s4fail(session, cluster, linger)
    else:
        raise ValueError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")


async def record(
    scenario: str,
    out_dir: Path,
    work_dir: Path,
    *,
    linger: float = LINGER,
    keepalive: float = KEEPALIVE,
    domains: Iterable[str] | None = None,
) -> list[Capture]:
    """Record *scenario* into *out_dir* (servers' state under *work_dir*); the captures made.

    *domains* restricts a multi-pair scenario (s3tls) to the pairs among those domains.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    session = Session(scenario, out_dir)
    cluster = _Cluster(work_dir / scenario, keepalive)
    # fresh server state: a roster left by an earlier run changes what the servers send
    shutil.rmtree(cluster.work, ignore_errors=True)
    try:
        await _run(scenario, session, cluster, linger, set(domains) if domains else None)
    finally:
        await asyncio.to_thread(cluster.close)
        await session.finish()
    return session.captures


# --- structural comparison -------------------------------------------------------------------

_NS_NAMES = {
    "http://etherx.jabber.org/streams": "stream",
    "jabber:server:dialback": "db",
    "urn:ietf:params:xml:ns:xmpp-tls": "tls",
    "urn:ietf:params:xml:ns:xmpp-sasl": "sasl",
}


def _id_kind(value: str | None) -> str:
    if value is None:
        return "no-id"
    if value == "":
        return "id=''"
    return "id=decimal" if value.isdigit() else "id=uuid" if value.count("-") == 4 else "id=other"


def steps(data: bytes) -> tuple[list[str], list[str], list[str]]:
    """One direction of a capture as (negotiation steps, traffic, ending).

    Steps: stream opens (with the kind of id), features (child names sorted: Prosody's order
    varies), dialback/TLS/SASL elements with their type, c2s bind, where TLS starts. Traffic:
    the other stanzas. Ending: stream errors and closes (whether a server's answer to its
    peer's close made it onto the wire before the FIN is timing, not negotiation)."""
    import xml.etree.ElementTree as ET

    off = tls_offset(data)
    plain = data if off is None else data[:off]
    negotiation: list[str] = []
    traffic: list[str] = []
    ending: list[str] = []
    starts = [i for i in range(len(plain)) if plain.startswith(b"<?xml", i)] or [0]
    for a, b in zip(starts, [*starts[1:], len(plain)], strict=True):
        parser = ET.XMLPullParser(events=("start", "end"))
        parser.feed(plain[a:b])
        depth = 0
        for event, el in parser.read_events():
            ns, _, name = el.tag[1:].partition("}") if el.tag[0] == "{" else ("", "", el.tag)
            prefix = _NS_NAMES.get(ns)
            if event == "start":
                depth += 1
                if depth == 1:
                    negotiation.append(f"open {_id_kind(el.get('id'))}")
                continue
            depth -= 1
            if depth == 0:
                ending.append("close")
            elif depth == 1:
                if (prefix, name) == ("stream", "features"):
                    kids = sorted(c.tag.rsplit("}", 1)[-1] for c in el)
                    negotiation.append(f"features[{','.join(kids)}]")
                elif (prefix, name) == ("stream", "error"):
                    ending.append(f"error:{el[0].tag.rsplit('}', 1)[-1]}")
                elif prefix is not None:
                    kind = f"/{el.get('type')}" if el.get("type") else ""
                    negotiation.append(f"{prefix}:{name}{kind}")
                elif name == "iq" and any(c.tag.endswith("}bind") for c in el):
                    negotiation.append(f"bind/{el.get('type')}")
                else:
                    traffic.append(f"{name}/{el.get('type') or '-'}")
    if off is not None:
        negotiation.append("TLS")
    return negotiation, traffic, ending


def _stems(directory: Path) -> list[str]:
    return sorted({p.name[: -len(".c2a.xml")] for p in directory.glob("*.c2a.xml")})


def equivalent(baseline: Path, stem: str, recorded: Path) -> str | None:
    """The first connection in *recorded* of the same scenario and pair as *baseline*'s
    *stem* with the same negotiation steps in both directions (its stem), else None."""
    scenario_pair = stem.split("-", 1)[1]
    want = [steps((baseline / f"{stem}.{d}.xml").read_bytes())[0] for d in ("c2a", "a2c")]
    for cand in (s for s in _stems(recorded) if s.split("-", 1)[1] == scenario_pair):
        got = [steps((recorded / f"{cand}.{d}.xml").read_bytes())[0] for d in ("c2a", "a2c")]
        if got == want:
            return cand
    return None


def compare(baseline: Path, recorded: Path) -> list[str]:
    """For every baseline connection, the recorded one with the same negotiation steps; the
    report lines ("SAME ..." with the steps and other differences, or "DIFF ...")."""
    lines = []
    for stem in _stems(baseline):
        want = {d: steps((baseline / f"{stem}.{d}.xml").read_bytes()) for d in ("c2a", "a2c")}
        cand = equivalent(baseline, stem, recorded)
        if cand is None:
            lines.append(f"DIFF {stem}: no recorded connection with these steps")
            for d in ("c2a", "a2c"):
                lines.append(f"     {d}: {' '.join(want[d][0])}")
            continue
        got = {d: steps((recorded / f"{cand}.{d}.xml").read_bytes()) for d in ("c2a", "a2c")}
        lines.append(f"SAME {stem} ~ {cand}")
        for d in ("c2a", "a2c"):
            lines.append(f"     {d}: {' '.join(got[d][0])}")
            for i, what in ((1, "traffic"), (2, "ending")):
                if got[d][i] != want[d][i]:
                    lines.append(f"     {d} {what}: baseline {want[d][i]} / recorded {got[d][i]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the capture files")
    ap.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--linger", type=float, default=LINGER, help="seconds idle before the stop")
    ap.add_argument("--keepalive", type=float, default=KEEPALIVE, help="Prosody read_timeout")
    ap.add_argument("--work", type=Path, help="servers' state directory (default: a temp dir)")
    ap.add_argument(
        "--compare",
        type=Path,
        metavar="BASELINE",
        help="record nothing: compare the captures in --out with BASELINE's, step by step",
    )
    args = ap.parse_args(argv)
    if args.compare is not None:
        report = compare(args.compare, args.out)
        print("\n".join(report))
        return 1 if any(line.startswith("DIFF") for line in report) else 0
    work = args.work or Path(tempfile.mkdtemp(prefix="record-captures-"))
    try:
        for scenario in args.scenario:
            for old in args.out.glob(f"[{_BASE[scenario] // 10}]?-{scenario}-*"):
                old.unlink()
            captures = asyncio.run(
                record(scenario, args.out, work, linger=args.linger, keepalive=args.keepalive)
            )
            for c in captures:
                sizes = ", ".join(f"{d} {p.stat().st_size} B" for d, p in c.paths.items())
                print(f"{c.stem}: {sizes}, {len(c.chunks)} reads")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
