"""The load client: raw XMPP connections (an XEP-0114 component, a c2s user with SASL PLAIN)
that send chat messages carrying a sequence number and a send time, and count what arrives.

It is deliberately small and does no XML parsing on the hot path: a sender writes prepared
bytes in batches (honouring the transport's flow control), a receiver finds ``<body>#SEQ NS``
markers with one regular expression per chunk. The same code drives every contender, so the
client costs the same everywhere. Send times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC is
one clock for the whole machine, so a receiver in another process can subtract them), taken
just before the write. A receiver counts a message as arrived when the kernel received it on
the receiver's socket (SO_TIMESTAMPNS, Linux), not when this process got round to reading it:
the latency is the servers' (and the loopback's), not the load client's wait for a CPU.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import struct
import sys
import time
from array import array
from typing import Any

STREAMS_NS = "http://etherx.jabber.org/streams"
#: the marker at the start of every message body: sequence number and send time
MARK = re.compile(rb"<body>#(\d+) (\d+) ")
END = b"</message>"
#: messages per write when flooding
BATCH = 64
#: the paced sender's shortest sleep (seconds): messages due within it leave in one write.
#: Not shorter: uvloop's timers count whole milliseconds, and a shorter sleep there is a 0 ms
#: timer, so the sender spun (337,000 turns a second, a whole CPU taken from the servers under
#: test on a 2-CPU machine, at 1,000 messages/s as at 70,000)
TICK = 0.001
#: bytes per read of a counting receiver (what asyncio's socket transport reads per call)
READ_SIZE = 256 * 1024
#: Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; the socket module does not name it): every read
#: comes with the time (CLOCK_REALTIME, struct timespec) the kernel received its last segment
SO_TIMESTAMPNS = 35 if sys.platform == "linux" else None
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


def template(frm: str | None, to: str, size: int) -> bytes:
    """A ``%``-template (seq, seq, time) of a chat message of about *size* bytes on the wire
    (measured with a 5-digit sequence number)."""
    attrs = f" from='{frm}'" if frm else ""
    head = f"<message{attrs} to='{to}' type='chat' id='m%d'><body>#%d %d "
    tail = "</body></message>"
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 20
    fill = 8
    while True:
        tmpl = (head + filler[:fill] + tail).encode()
        if len(tmpl % (12345, 12345, time.monotonic_ns())) >= size or fill >= len(filler):
            return tmpl
        fill += 1


def percentiles(values: array, points: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles of *values* (nanoseconds) in milliseconds."""
    if not values:
        return {f"p{p:g}": float("nan") for p in points}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        out[f"p{p:g}"] = ordered[rank] / 1e6
    return out


class Counter:
    """What a receiver saw: distinct sequence numbers, latencies, first and last arrival."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.seen = bytearray(expect)
        self.count = 0
        self.duplicates = 0
        self.foreign = 0
        self.latencies = array("q")
        #: arrival as this process read it (later than the kernel's when the client waited)
        self.read_latencies = array("q")
        self.first_ns = 0
        self.last_ns = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, chunk: bytes | memoryview, now: int, read_ns: int = 0) -> None:
        """Count the messages in *chunk*, arrived at *now* (the kernel's time, monotonic ns)
        and read by this process at *read_ns* (0: same as *now*)."""
        read_ns = read_ns or now
        for m in MARK.finditer(chunk):
            seq = int(m[1])
            if seq >= self.expect:
                self.foreign += 1
                continue
            if self.seen[seq]:
                self.duplicates += 1
                continue
            self.seen[seq] = 1
            self.count += 1
            sent = int(m[2])
            self.latencies.append(now - sent)
            self.read_latencies.append(read_ns - sent)
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        if self.count >= self.expect and not self.done.done():
            self.done.set_result(None)

    def missing(self) -> int:
        return self.expect - self.count


class SampledCounter(Counter):
    """A Counter for an in-process handler (the library path): every stanza is counted, one
    in SAMPLE is parsed for its sequence number and latency, so the handler costs little."""

    SAMPLE = 8

    def add(self, raw: bytes | memoryview, now: int = 0) -> None:  # type: ignore[override]
        self.last_ns = now = time.monotonic_ns()
        self.count = n = self.count + 1
        if n % self.SAMPLE == 0 or n >= self.expect:
            m = MARK.search(raw)
            if m is not None:
                seq = int(m[1])
                if seq < self.expect and self.seen[seq]:
                    self.duplicates += 1
                elif seq < self.expect:
                    self.seen[seq] = 1
                    self.latencies.append(now - int(m[2]))
            if n >= self.expect and not self.done.done():
                self.done.set_result(None)
        if not self.first_ns:
            self.first_ns = now


class RawXmpp(asyncio.Protocol):
    """One raw client connection: a setup phase (``expect`` a pattern in what arrived) and then
    a counting phase (``counter``) for chat messages."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.counter: Counter | None = None
        self._waiter: tuple[re.Pattern[bytes], asyncio.Future[re.Match[bytes]]] | None = None
        self._writable: asyncio.Future[None] | None = None
        #: the last paced run's lateness per write, nanoseconds (see :meth:`paced`)
        self.send_lag = array("q")
        #: while counting (Linux): our own non-blocking reader of the connection (a duplicate
        #: of its descriptor, the transport's reading paused), with kernel arrival times
        self._sock: socket.socket | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        counter = self.counter
        if counter is None:
            self.buf += data
            if self._waiter is not None:
                self._check()
            return
        self._count(counter, data, time.monotonic_ns(), 0)

    def _count(self, counter: Counter, data: bytes, now: int, read_ns: int) -> None:
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(END)
        if cut < 0:
            self.buf = buf
            return
        cut += len(END)
        self.buf = buf[cut:]
        counter.add(memoryview(buf)[:cut], now, read_ns)

    def _readable(self) -> None:
        """Our own read while counting: the data and the kernel's arrival time."""
        assert self._sock is not None and self.counter is not None
        try:
            data, ancillary, _, _ = self._sock.recvmsg(READ_SIZE, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_reading()
            self.connection_lost(exc)
            return
        read_ns = time.monotonic_ns()
        if not data:
            self._stop_reading()
            self.connection_lost(None)
            return
        arrived = read_ns
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                # CLOCK_REALTIME -> CLOCK_MONOTONIC, the offset read now (no clock step between)
                arrived = min(read_ns, sec * 1_000_000_000 + nsec - (time.time_ns() - read_ns))
        self._count(self.counter, data, arrived, read_ns)

    def _stamp_arrivals(self) -> None:
        """From now on read the connection ourselves, with the kernel's arrival times."""
        if self._sock is not None or SO_TIMESTAMPNS is None or self.transport is None:
            return
        raw = self.transport.get_extra_info("socket")
        if raw is None:
            return
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.transport.pause_reading()
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _stop_reading(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._waiter is not None and not self._waiter[1].done():
            self._waiter[1].set_exception(ConnectionError(f"closed: {self.buf[-300:]!r}"))
        if self.counter is not None and not self.counter.done.done():
            self.counter.done.set_exception(ConnectionError("receiver connection closed"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionError("sender connection closed"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- setup ---------------------------------------------------------------------------------

    def _check(self) -> None:
        assert self._waiter is not None
        pattern, fut = self._waiter
        m = pattern.search(self.buf)
        if m and not fut.done():
            self.buf = self.buf[m.end() :]
            self._waiter = None
            fut.set_result(m)

    async def expect(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        fut: asyncio.Future[re.Match[bytes]] = asyncio.get_running_loop().create_future()
        self._waiter = (re.compile(pattern, re.S), fut)
        self._check()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no {pattern!r} within {timeout} s; got {self.buf[-300:]!r}"
            ) from None

    def write(self, data: bytes | str) -> None:
        assert self.transport is not None
        self.transport.write(data.encode() if isinstance(data, str) else data)

    def start_counting(self, expect: int) -> Counter:
        self.buf = b""
        self.counter = Counter(expect)
        self._stamp_arrivals()
        return self.counter

    def close(self) -> None:
        self._stop_reading()
        if self.transport is not None:
            self.transport.close()

    # --- sending -------------------------------------------------------------------------------

    async def flood(self, tmpl: bytes, count: int, progress: Any = None) -> int:
        """Write *count* messages as fast as the connection takes them; the first send time."""
        first = time.monotonic_ns()
        i = 0
        while i < count:
            k = min(BATCH, count - i)
            now = time.monotonic_ns()
            self.write(b"".join([tmpl % (s, s, now) for s in range(i, i + k)]))
            i += k
            if self._writable is not None:
                await self._writable
            elif i % (BATCH * 16) == 0:
                await asyncio.sleep(0)  # let the receiver read
        return first

    async def paced(self, tmpl: bytes, count: int, rate: float) -> int:
        """Write *count* messages at *rate* per second; the first send time.

        Each message is written once due (message k at k / *rate* seconds), the ones due within
        one :data:`TICK` together. A message carries the time of its write, so how late the
        client itself was (a loop turn that ran long, a CPU it did not get) is not counted as
        latency; it is kept in :attr:`send_lag` instead (nanoseconds a write came after its
        first message was due), to show that the client kept up."""
        start = time.monotonic_ns()
        interval = 1e9 / rate
        self.send_lag = lag = array("q")
        sent = 0
        while sent < count:
            now = time.monotonic_ns()
            due = min(count, int((now - start) / interval) + 1)
            if due > sent:
                lag.append(now - start - int(sent * interval))
                self.write(b"".join([tmpl % (s, s, now) for s in range(sent, due)]))
                sent = due
            if self._writable is not None:
                await self._writable
            if sent < count:
                wait = (start + sent * interval - time.monotonic_ns()) / 1e9
                await asyncio.sleep(max(TICK, wait))
        return start


async def open_raw(port: int) -> RawXmpp:
    _, proto = await asyncio.get_running_loop().create_connection(RawXmpp, "127.0.0.1", port)
    return proto


async def component(port: int, domain: str, password: str) -> RawXmpp:
    """An XEP-0114 component connection for *domain*, handshake done."""
    c = await open_raw(port)
    c.write(
        f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{STREAMS_NS}' to='{domain}'>"
    )
    m = await c.expect(rb"<stream:stream\s[^>]*?\bid=['\"]([^'\"]+)['\"][^>]*>")
    digest = hashlib.sha1(m[1] + password.encode()).hexdigest()
    c.write(f"<handshake>{digest}</handshake>")
    await c.expect(rb"<handshake\s*/>|<handshake>\s*</handshake>|(<stream:error.*)")
    return c


async def c2s(port: int, jid: str, password: str, resource: str = "r") -> RawXmpp:
    """A c2s user logged in with SASL PLAIN (no TLS: loopback), resource bound, presence sent."""
    user, domain = jid.split("@")
    c = await open_raw(port)
    header = (
        f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
        f"xmlns='jabber:client' xmlns:stream='{STREAMS_NS}'>"
    )
    c.write(header)
    await c.expect(rb"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    c.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    m = await c.expect(rb"<(success|failure)\b.*?(/>|</success>|</failure>)")
    if m[1] != b"success":
        raise RuntimeError(f"SASL PLAIN failed for {jid}: {m[0]!r}")
    c.write(header)
    await c.expect(rb"</stream:features>")
    c.write(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        f"<resource>{resource}</resource></bind></iq>"
    )
    m = await c.expect(rb"<iq\b[^>]*\bid=['\"]bind1['\"][^>]*>.*?</iq>|<iq\b[^>]*bind1[^>]*/>")
    if b"result" not in m[0]:
        raise RuntimeError(f"bind failed for {jid}: {m[0]!r}")
    c.write("<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    await c.expect(rb"<iq\b[^>]*\bid=['\"]sess1['\"][^>]*?(/>|>.*?</iq>)")
    c.write("<presence/>")
    return c
