"""Writes to one stream within one loop iteration leave together: under TLS in one transport
write and as few TLS records as the byte count allows (encrypted a record at a time, so the
MemoryBIO stays small); at low load a lone stanza still leaves at once, on the loop's next
turn. Two real nodes, TLS required, real peer."""

from __future__ import annotations

import asyncio
import math

from core_helpers import message, tls_spec


def _tls(hosts, tls_certfile, tls_ca_file):
    return tls_spec(tls_certfile, tls_ca_file, *hosts, mode="required_trusted")


class _Records:
    """Counts TLS records in what the stream hands to its transport (5-byte record headers)."""

    def __init__(self) -> None:
        self.pending = b""
        self.records = 0
        self.writes = 0

    def feed(self, data: bytes) -> None:
        self.writes += 1
        buf = self.pending + data
        pos = 0
        while len(buf) - pos >= 5:
            length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if len(buf) - pos < 5 + length:
                break
            self.records += 1
            pos += 5 + length
        self.pending = buf[pos:]


async def test_a_burst_leaves_in_one_tls_write_and_full_records(
    federation, tls_certfile, tls_ca_file
):
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file),
            "B": _tls(["b.test"], tls_certfile, tls_ca_file),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "warm", id="warm"))
    assert (await b.inbox.get()).id == "warm"
    stream = a.router.outbound[("a.test", "b.test")].stream
    assert stream.tls
    await asyncio.sleep(0.2)  # let the warm-up's acks and keepalive bookkeeping settle

    records = _Records()
    ssl_writes: list[int] = []
    real_ssl_write, real_write = stream._ssl.write, stream.transport.write

    def ssl_write(data: bytes) -> int:
        ssl_writes.append(len(data))
        return real_ssl_write(data)

    def transport_write(data: bytes) -> None:
        records.feed(bytes(data))
        real_write(data)

    stream._ssl.write = ssl_write
    stream.transport.write = transport_write
    n = 1000
    burst = [message("u@a.test", "v@b.test", "x" * 100, id=f"b{i}") for i in range(n)]
    for raw in burst:  # not congested: Node.send returns without yielding to the loop
        await a.send(raw)
    assert ssl_writes == [], "written before the loop's next turn"
    ids = [(await b.inbox.get()).id for _ in range(n)]
    assert ids == [f"b{i}" for i in range(n)]
    total = sum(map(len, burst))
    assert sum(ssl_writes) >= total and max(ssl_writes) <= 16384, ssl_writes
    # as few records as the byte count allows (16 KiB of plaintext each), plus one for a
    # stream-management request riding along
    assert records.records <= math.ceil(sum(ssl_writes) / 16384) + 1, records.records
    assert records.writes == 1

    # low load: a lone stanza is not held back waiting for company
    # (latency itself is measured in bench/profile_daemon.py, not asserted here)
    ssl_writes.clear()
    await a.send(message("u@a.test", "v@b.test", "alone", id="alone"))
    assert ssl_writes == []
    await asyncio.sleep(0)  # one turn of the loop: the flush runs
    assert len(ssl_writes) == 1
    assert (await b.inbox.get()).id == "alone"
