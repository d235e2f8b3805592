"""A real, tiny authoritative DNS server on loopback for tests (dnslib for the wire format).

Tests must never touch the machine's resolver, so everything that resolves names is pointed at one
of these. It answers from a zone the test builds (SRV, A, AAAA, CNAME; unknown names are
NXDOMAIN, known names without the asked type are NOERROR/empty), records every query it
receives (so tests can count retries *at the server*), and can be told to stop answering
(``blackhole = True``) to provoke resolver timeouts, or to answer late (``delay``).

It serves UDP and TCP on the same free port of 127.0.0.1 (c-ares uses one port for both), each in
a daemon thread, so a test's event loop stalling cannot stall the server and vice versa.

Usage as a pytest fixture (other test modules may import it)::

    from dnsserver import DnsServer, dns_server  # noqa: F401  (the fixture)

    async def test_x(dns_server):
        dns_server.add_srv("_xmpp-server._tcp.a.test", 0, 0, 5269, "xmpp.a.test")
        dns_server.add_a("xmpp.a.test", "127.0.0.1")
        resolver = Resolver(nameservers=[dns_server.nameserver], timeout=1, retries=1)
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, SRV, A, DNSError, DNSRecord

__all__ = ["DnsServer", "Query", "dns_server", "BlackholedPort", "closed_port"]

#: TTL for every answer; tests never rely on caching either way.
_TTL = 60


@dataclass(frozen=True, slots=True)
class Query:
    """One query the server received."""

    name: str  # lower case, no trailing dot
    qtype: str  # "SRV", "A", "AAAA", ...
    proto: str  # "udp" or "tcp"


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class DnsServer:
    """An authoritative DNS server for a test-defined zone on 127.0.0.1 (UDP and TCP)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError("test DNS server listens on loopback only")
        self.host = host
        #: when True, queries are recorded but never answered
        self.blackhole = False
        #: when True, UDP answers are sent empty with the TC bit (the client must retry over TCP)
        self.truncate_udp = False
        #: seconds to wait before sending each answer (a slow recursive resolver)
        self.delay = 0.0
        #: with ``delay``: the most UDP queries received and not yet answered at one time
        self.max_unanswered = 0
        self._late = 0
        #: when True, SRV answers carry the targets' A/AAAA records in the additional section
        self.glue = False
        self._records: dict[str, list[RR]] = {}
        self._rcodes: dict[str, int] = {}
        self._queries: list[Query] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._udp, self._tcp = self._bind()
        self.port: int = self._udp.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True, name="dns-udp"),
            threading.Thread(target=self._serve_tcp, daemon=True, name="dns-tcp"),
        ]
        for t in self._threads:
            t.start()

    # -- zone --------------------------------------------------------------------------------

    def add_srv(self, name: str, priority: int, weight: int, port: int, target: str) -> None:
        """Add ``name SRV priority weight port target`` (target "." = no service)."""
        self._add(name, RR(_norm(name) + ".", QTYPE.SRV, ttl=_TTL,
                           rdata=SRV(priority, weight, port, target)))  # fmt: skip

    def add_s2s_targets(self, domain: str, *records: tuple[str, int, int]) -> None:
        """SRV records for *domain*: (kind "xmpp" or "xmpps" for XEP-0368 Direct TLS,
        priority, port), all on one target at 127.0.0.1."""
        target = f"xmpp.{domain}"
        for kind, priority, port in records:
            prefix = "_xmpps-server._tcp." if kind == "xmpps" else "_xmpp-server._tcp."
            self.add_srv(prefix + domain, priority, 0, port, target)
        self.add_a(target, "127.0.0.1")

    def add_a(self, name: str, *ips: str) -> None:
        for ip in ips:
            self._add(name, RR(_norm(name) + ".", QTYPE.A, ttl=_TTL, rdata=A(ip)))

    def add_aaaa(self, name: str, *ips: str) -> None:
        for ip in ips:
            self._add(name, RR(_norm(name) + ".", QTYPE.AAAA, ttl=_TTL, rdata=AAAA(ip)))

    def add_cname(self, name: str, target: str) -> None:
        self._add(name, RR(_norm(name) + ".", QTYPE.CNAME, ttl=_TTL, rdata=CNAME(target)))

    def add_name(self, name: str) -> None:
        """Make *name* exist with no records (every query for it is NOERROR with no answer)."""
        with self._lock:
            self._records.setdefault(_norm(name), [])

    def set_rcode(self, name: str, rcode: str) -> None:
        """Answer every query for *name* with *rcode* ("SERVFAIL", "REFUSED", ...)."""
        with self._lock:
            self._rcodes[_norm(name)] = getattr(RCODE, rcode)

    def _add(self, name: str, rr: RR) -> None:
        with self._lock:
            self._records.setdefault(_norm(name), []).append(rr)

    # -- observations ------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """This server as a c-ares / :class:`s2sfast.net.dns.Resolver` nameserver entry."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def count(self, name: str | None = None, qtype: str | None = None) -> int:
        """How many queries arrived (optionally only for *name* and/or *qtype*)."""
        return sum(
            1
            for q in self.queries
            if (name is None or q.name == _norm(name)) and (qtype is None or q.qtype == qtype)
        )

    def clear(self) -> None:
        with self._lock:
            self._queries.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire --------------------------------------------------------------------------------

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no free port for both UDP and TCP on loopback")

    def _answer(self, data: bytes, proto: str) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None
        name = _norm(str(request.q.qname))
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        with self._lock:
            self._queries.append(Query(name, qtype, proto))
            if self.blackhole:
                return None
            rcode = self._rcodes.get(name)
            records = self._records.get(name)
            all_records = dict(self._records)
        reply = request.reply()
        reply.header.aa = 1
        if proto == "udp" and self.truncate_udp:
            reply.header.tc = 1
            return reply.pack()
        if rcode is not None:
            reply.header.rcode = rcode
        elif records is None:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            for rr in records:
                if rr.rtype == request.q.qtype or rr.rtype == QTYPE.CNAME:
                    reply.add_answer(rr)
                    if rr.rtype == QTYPE.CNAME:
                        target = _norm(str(rr.rdata.label))
                        for crr in all_records.get(target, []):
                            if crr.rtype == request.q.qtype:
                                reply.add_answer(crr)
                    elif rr.rtype == QTYPE.SRV and self.glue:
                        target = _norm(str(rr.rdata.target))
                        for grr in all_records.get(target, []):
                            if grr.rtype in (QTYPE.A, QTYPE.AAAA):
                                reply.add_ar(grr)
        return reply.pack()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._udp], [], [], 0.05)
            if not ready:
                continue
            try:
                data, addr = self._udp.recvfrom(65535)
            except OSError:
                continue
            reply = self._answer(data, "udp")
            if reply is None:
                continue
            if self.delay > 0:
                with self._lock:
                    self._late += 1
                    self.max_unanswered = max(self.max_unanswered, self._late)
                timer = threading.Timer(self.delay, self._send_late, (reply, addr))
                timer.daemon = True
                timer.start()
            else:
                self._udp.sendto(reply, addr)

    def _send_late(self, reply: bytes, addr: tuple) -> None:
        with self._lock:
            self._late -= 1
        if not self._stop.is_set():
            try:
                self._udp.sendto(reply, addr)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._tcp], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve_tcp_conn, args=(conn,), daemon=True).start()

    def _serve_tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65535)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    size = struct.unpack("!H", buf[:2])[0]
                    msg, buf = buf[2 : 2 + size], buf[2 + size :]
                    reply = self._answer(msg, "tcp")
                    if reply is not None:
                        if self.delay > 0:
                            self._stop.wait(self.delay)
                        conn.sendall(struct.pack("!H", len(reply)) + reply)


class BlackholedPort:
    """A loopback TCP port whose SYNs go unanswered, so connecting to it times out.

    A socket listening with backlog 0 whose accept queue already holds one connection (never
    accepted): Linux then drops further SYNs, and the client keeps retransmitting until its own
    timeout. Loopback only, no firewall rules. Use as a context manager; ``.port``, ``.host``.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError("loopback only")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._filler = socket.create_connection((host, self.port), timeout=5)

    def close(self) -> None:
        self._filler.close()
        self._listener.close()

    def __enter__(self) -> BlackholedPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A loopback TCP port nobody listens on (connecting is refused at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A fresh :class:`DnsServer` on 127.0.0.1 with an empty zone, closed after the test."""
    server = DnsServer()
    try:
        yield server
    finally:
        server.close()
