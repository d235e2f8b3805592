"""Memory per idle TLS stream: a deterministic bound on the Python heap each one keeps.

Two Nodes in this process, real TLS on loopback (certificates from tests/certs.py, a loopback
DNS server), dialback, XEP-0198 on. After a warm-up (code paths, caches, TLS contexts paid
once), ``tracemalloc`` compares the Python heap before and after opening more authenticated
(hN.a.test, b.test) pairs and leaving them idle. What it counts is allocation sizes, not time
or RSS, so the figure is stable from run to run; OpenSSL's own per-connection state (about
15.5 KiB per end, allocated by libssl with malloc) is outside it (what s2sfast frees there,
MemoryBIO buffers and the peer's certificates, tests/net/test_membio.py and
test_peer_release.py check).

The bound (docs: issue 14, 24 KiB per stream in all) has a ~20% margin over the measured
figure: about 5.9 KB per stream end here after the issue-14 trims of the routing and protocol
objects (8.1 KB at aa15fc9 before them, 8.9 KB at 4f5c527, 16.2 KB at bb70a43 before the
per-stream slots and lazy writer structures); crossing it means something new is kept per idle
stream.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

from certs import make_ca
from core_helpers import free_port, node_config, tls_spec
from dnsserver import DnsServer

from s2sfast.net.dns import Resolver
from s2sfast.node import Node

#: Python heap per idle authenticated TLS stream end (each TCP connection has two)
MAX_BYTES_PER_END = 7 * 1024
WARMUP = 4
PAIRS = 24


async def _open(a: Node, hosts: list[str], authenticated: set[str]) -> None:
    for h in hosts:
        raw = f"<message from='u@{h}' to='v@b.test' type='chat'><body>x</body></message>"
        await a.send(raw.encode())
    deadline = time.monotonic() + 30
    while not set(hosts) <= authenticated:
        assert time.monotonic() < deadline, f"not authenticated: {set(hosts) - authenticated}"
        await asyncio.sleep(0.02)


async def test_an_idle_tls_stream_keeps_a_bounded_python_heap(tmp_path: Any) -> None:
    hosts = [f"h{i}.a.test" for i in range(WARMUP + PAIRS)]
    dns = DnsServer()
    ca = make_ca()
    cafile = ca.write_pem(str(tmp_path))
    cert_a = ca.issue(["*.a.test"]).write_pem(str(tmp_path), "a.pem")
    cert_b = ca.issue(["b.test"]).write_pem(str(tmp_path), "b.pem")
    port_a, port_b = free_port(), free_port()
    common: dict[str, Any] = {"mode": "required", "cafile": cafile, "state_timeout_ms": 30000}
    resolver = Resolver([dns.nameserver], timeout=1, retries=1)
    a = Node(
        node_config(hosts, port=port_a, addresses={"b.test": port_b}, certfile=cert_a, **common),
        keepalive=None,
        idle_timeout=None,
        resolver=resolver,
    )
    b = Node(
        node_config(
            ["b.test"], port=port_b, addresses=dict.fromkeys(hosts, port_a), certfile=cert_b,
            **common,
        ),
        keepalive=None,
        idle_timeout=None,
        resolver=Resolver([dns.nameserver], timeout=1, retries=1),
    )  # fmt: skip
    received: list[Any] = []
    b.on_stanza(received.append)
    authenticated: set[str] = set()

    def observe(kind: str, fields: dict[str, Any]) -> None:
        if kind == "stream-authenticated" and fields["direction"] == "out":
            authenticated.add(fields["local"])

    a.on_event(observe)
    await b.start()
    await a.start()
    try:
        await _open(a, hosts[:WARMUP], authenticated)
        await asyncio.sleep(0.3)
        ends_before = len(a.connections()) + len(b.connections())
        gc.collect()
        tracemalloc.start(1)
        try:
            before = tracemalloc.take_snapshot()
            await _open(a, hosts[WARMUP:], authenticated)
            await asyncio.sleep(0.5)  # the last handshakes and dialback verifies settle
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        conns = a.connections() + b.connections()
        ends = len(conns) - ends_before
        assert ends >= 2 * PAIRS  # each pair: A's stream and B's end of it (plus dialback's)
        assert all(c.tls for c in conns)
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
        grown = sum(s.size_diff for s in diff)
        per_end = grown / ends
        assert per_end <= MAX_BYTES_PER_END, (
            f"{per_end:,.0f} bytes of Python heap per idle TLS stream end ({ends} ends)"
        )
        assert len(received) == WARMUP + PAIRS
    finally:
        await a.stop(timeout=5)
        await b.stop(timeout=5)
        dns.close()


class _BioSpy:
    """Stands in for a stream's MemoryBIO (the SSLObject keeps the real one) and records the
    largest slice the stream wrote into it or read out of it."""

    def __init__(self, bio: Any) -> None:
        self.bio = bio
        self.biggest = 0

    def write(self, data: Any) -> int:
        self.biggest = max(self.biggest, len(data))
        return self.bio.write(data)

    def read(self, *n: int) -> bytes:
        out = self.bio.read(*n)
        self.biggest = max(self.biggest, len(out))
        return out

    @property
    def pending(self) -> int:
        return self.bio.pending


async def test_a_big_burst_keeps_the_memory_bios_small(federation, tls_certfile, tls_ca_file):
    """A MemoryBIO's buffer never shrinks, so the stream feeds it small slices: after a burst of
    ~180 KB each way through the BIOs, neither end ever put more than one slice (in) or one
    TLS record (out) into one of them, and every stanza arrived intact and in order."""
    from s2sfast.net.stream import TLS_IN_SLICE, TLS_OUT_SLICE

    nodes = await federation(
        {
            "A": tls_spec(tls_certfile, tls_ca_file, "a.test"),
            "B": tls_spec(tls_certfile, tls_ca_file, "b.test"),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(b"<message from='u@a.test' to='v@b.test' id='warm'><body>w</body></message>")
    assert (await b.inbox.get()).id == "warm"
    out = a.router.outbound[("a.test", "b.test")].stream
    (inbound,) = [s for s in b.router.streams if s.direction == "in" and s.authenticated]
    assert out.tls and inbound.tls
    out._out_bio = out_spy = _BioSpy(out._out_bio)
    inbound._in_bio = in_spy = _BioSpy(inbound._in_bio)
    n = 1200
    for i in range(n):
        raw = f"<message from='u@a.test' to='v@b.test' id='b{i}'><body>{'x' * 100}</body></message>"
        await a.send(raw.encode())
    assert [(await b.inbox.get()).id for _ in range(n)] == [f"b{i}" for i in range(n)]
    assert 0 < in_spy.biggest <= TLS_IN_SLICE
    # one record: 16 KiB of plaintext plus its header, nonce and tag
    assert TLS_OUT_SLICE <= out_spy.biggest <= TLS_OUT_SLICE + 64
