"""Two-node runs for bench/test_node_bench.py: memory per stream and stanza throughput.

Each measurement runs in a fresh interpreter (``python3 bench/node_helpers.py memory|throughput
...`` prints one JSON line), so one mode's freed-but-kept heap cannot hide the next mode's
growth and RSS deltas start from the same place. Everything is on 127.0.0.1 with certificates
made by tests/certs.py and a loopback DNS server (tests/dnsserver.py), never the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT):  # run as a script too, without an installed s2sfast
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from certs import make_ca  # noqa: E402
from core_helpers import free_port, node_config  # noqa: E402
from dnsserver import DnsServer  # noqa: E402

from s2sfast.net.dns import Resolver  # noqa: E402
from s2sfast.node import Node  # noqa: E402

#: pairs opened at once: below limits.MAX_NEGOTIATING_PER_ADDRESS (64) per source address
WAVE = 50
#: the DESIGN.md target for one idle TLS stream
TARGET_KIB = 64


def rss_kib() -> int:
    """This process's resident set size (VmRSS) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def message(frm: str, to: str, i: int, size: int = 400) -> bytes:
    """A chat message of about *size* bytes (its body padded with text)."""
    head = f"<message from='{frm}' to='{to}' type='chat' id='m{i}'><body>"
    tail = "</body></message>"
    fill = max(0, size - len(head) - len(tail))
    text = f"message {i} lorem ipsum dolor sit amet " * (fill // 30 + 1)
    return (head + text[:fill] + tail).encode()


class Pair:
    """Node A (hosts *a_hosts*: hN.a.test, or a.test) and node B (b.test) on loopback ports."""

    def __init__(self, mode: str, a_hosts: list[str], directory: str) -> None:
        self.mode = mode
        self.a_hosts = a_hosts
        self.dns = DnsServer()
        ca = make_ca()
        cafile = ca.write_pem(directory)
        # one wildcard name: a certificate listing every host would grow with the pair count,
        # and every TLS stream keeps its peer's chain
        names = ["*.a.test"] if all(h.endswith(".a.test") for h in a_hosts) else a_hosts
        cert_a = ca.issue(names).write_pem(directory, "a.pem")
        cert_b = ca.issue(["b.test"]).write_pem(directory, "b.pem")
        port_a, port_b = free_port(), free_port()
        common: dict[str, Any] = {"mode": mode, "cafile": cafile, "state_timeout_ms": 30000}
        config_a = node_config(
            a_hosts, port=port_a, addresses={"b.test": port_b}, certfile=cert_a, **common
        )
        config_b = node_config(
            ["b.test"],
            port=port_b,
            addresses={h: port_a for h in a_hosts},
            certfile=cert_b,
            **common,
        )
        self.a = self._node(config_a)
        self.b = self._node(config_b)
        self.authenticated_out: set[tuple[str, str]] = set()
        self.a.on_event(self._event)
        self.received = 0
        self.target = 0
        self.all_in: asyncio.Future[None] | None = None
        self.b.on_stanza(self._count)

    def _node(self, config: Any) -> Node:
        resolver = Resolver([self.dns.nameserver], timeout=1, retries=1)
        return Node(config, keepalive=None, idle_timeout=None, resolver=resolver)

    def _event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "stream-authenticated" and fields["direction"] == "out":
            self.authenticated_out.add((fields["local"], fields["remote"]))
        if kind == "auth-failed":
            raise RuntimeError(f"authentication failed: {fields}")

    def _count(self, stanza: Any) -> None:
        self.received += 1
        if self.received >= self.target and self.all_in is not None and not self.all_in.done():
            self.all_in.set_result(None)

    async def start(self) -> None:
        await self.b.start()
        await self.a.start()

    async def stop(self) -> None:
        await self.a.stop(timeout=5)
        await self.b.stop(timeout=5)
        self.dns.close()

    async def open_streams(self, hosts: list[str], timeout: float = 60.0) -> None:
        """Authenticate (host, b.test) for every host, in waves of at most WAVE pairs."""
        for start in range(0, len(hosts), WAVE):
            wave = hosts[start : start + WAVE]
            for h in wave:
                # one stanza opens the stream; the count at B proves it arrived
                await self.a.send(message(f"u@{h}", "v@b.test", 0, size=120))
            deadline = time.monotonic() + timeout
            while not all((h, "b.test") in self.authenticated_out for h in wave):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"wave at {start} did not authenticate in {timeout} s")
                await asyncio.sleep(0.02)


def stream_count(pair: Pair) -> tuple[int, int]:
    """(stream ends on both nodes, of which TLS): each TCP connection counts twice."""
    conns = pair.a.connections() + pair.b.connections()
    return len(conns), sum(1 for c in conns if c.tls)


async def measure_memory(mode: str, pairs: int, warmup: int = 10) -> dict[str, Any]:
    """RSS growth while *pairs* (hN.a.test, b.test) streams are opened and left idle."""
    hosts = [f"h{i}.a.test" for i in range(warmup + pairs)]
    with tempfile.TemporaryDirectory() as directory:
        pair = Pair(mode, hosts, directory)
        await pair.start()
        try:
            # warm-up: code paths, TLS contexts and caches that every node pays once
            await pair.open_streams(hosts[:warmup])
            await asyncio.sleep(0.2)
            ends_before, _ = stream_count(pair)
            gc.collect()
            before = rss_kib()
            t0 = time.perf_counter()
            await pair.open_streams(hosts[warmup:])
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(0.5)  # verify links and handshakes settle
            gc.collect()
            after = rss_kib()
            ends_after, tls_ends = stream_count(pair)
            out = [c for c in pair.a.connections() if c.direction == "out"]
            if pair.received < warmup + pairs:
                raise RuntimeError(f"only {pair.received} of {warmup + pairs} stanzas arrived")
        finally:
            await pair.stop()
    streams = ends_after - ends_before
    return {
        "mode": mode,
        "pairs": pairs,
        "stream_ends": streams,
        "all_ends": ends_after,
        "tls_ends": tls_ends,
        "authenticated_out": len(pair.authenticated_out),
        "a_out_pairs": len({p for c in out for p in c.pairs}),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_stream": (after - before) / streams,
        "kib_per_pair": (after - before) / pairs,
        "open_seconds": elapsed,
    }


async def measure_node_throughput(mode: str, count: int) -> dict[str, Any]:
    """Messages/s from a.test to b.test over one authenticated stream, counted at B."""
    msgs = [message("u@a.test", "v@b.test", i) for i in range(count)]
    with tempfile.TemporaryDirectory() as directory:
        pair = Pair(mode, ["a.test"], directory)
        await pair.start()
        try:
            await pair.open_streams(["a.test"])
            while pair.received < 1:
                await asyncio.sleep(0.01)
            pair.received = 0
            pair.target = count
            pair.all_in = asyncio.get_running_loop().create_future()
            t0 = time.perf_counter()
            for raw in msgs:
                await pair.a.send(raw)
            await asyncio.wait_for(pair.all_in, 120)
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(0.1)  # nothing more may arrive: exactly *count*, no duplicates
            received = pair.received
            tls = [c.tls for c in pair.a.connections() if c.direction == "out"]
        finally:
            await pair.stop()
    return {
        "mode": mode,
        "messages": count,
        "received": received,
        "bytes": sum(map(len, msgs)),
        "seconds": elapsed,
        "tls": tls,
    }


def measure_etree_throughput(count: int) -> dict[str, Any]:
    """Baseline: the same messages read from loopback TCP and framed by XMLPullParser.

    The receive path of a minimal Python XMPP stack: recv, feed, count depth-1 ends, clear.
    """
    header = (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        b"xmlns:stream='http://etherx.jabber.org/streams' from='a.test' to='b.test' "
        b"version='1.0'>"
    )
    msgs = [message("u@a.test", "v@b.test", i) for i in range(count)]
    data = header + b"".join(msgs)
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()

    def send() -> None:
        with sender:
            sender.sendall(data)

    seen = depth = 0
    parser = ET.XMLPullParser(events=("start", "end"))
    root = None
    t0 = time.perf_counter()
    thread = threading.Thread(target=send)
    thread.start()
    with receiver:
        while seen < count:
            chunk = receiver.recv(65536)
            if not chunk:
                break
            parser.feed(chunk)
            for event, elem in parser.read_events():
                if event == "start":
                    if depth == 0:
                        root = elem
                    depth += 1
                else:
                    depth -= 1
                    if depth == 1:
                        seen += 1
                        root.clear()
    elapsed = time.perf_counter() - t0
    thread.join()
    if seen != count:
        raise RuntimeError(f"baseline framed {seen} of {count} messages")
    return {
        "mode": "etree",
        "messages": count,
        "received": seen,
        "bytes": len(data),
        "seconds": elapsed,
    }


def run_isolated(*args: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; return its JSON result."""
    import subprocess

    done = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["memory", "throughput", "etree"])
    parser.add_argument("--mode", default="required", help="use_starttls of both nodes")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args(argv)
    if args.what == "memory":
        result = asyncio.run(measure_memory(args.mode, args.pairs))
    elif args.what == "throughput":
        result = asyncio.run(measure_node_throughput(args.mode, args.messages))
    else:
        result = measure_etree_throughput(args.messages)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
