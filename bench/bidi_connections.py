"""Connections and handshakes per domain pair, with and without bidirectional streams (XEP-0288).

    python3 bench/bidi_connections.py [--pairs 20] [--json out.json]

Two Nodes in this process: A serves hN.a.test, B serves hN.b.test (one certificate per node
from a test CA both trust, ``use_starttls = "required"`` unless the mode is plain). Every
connection goes through a counting TCP proxy on loopback, one per node, so what is counted is
what reached a listener. For each pair, hN.a.test sends one stanza to hN.b.test and, once it
has arrived, hN.b.test answers; then the next pair. Counted per pair:

- connections: TCP connections accepted (both nodes' proxies together);
- TLS: TLS handshakes completed (``tls-up`` on the accepting side);
- streams: streams that authenticated a domain pair (``stream-authenticated``, accepting side);
- ms: wall time for the pair's two stanzas (informative only: one run on a shared machine).

Modes (``[s2s]`` options on both nodes; bidi off, then on):

- ``xep0344``: TLS, certificates trusted both ways, dialback answered at once (no verify stream);
- ``sasl``: TLS, SASL EXTERNAL;
- ``dialback``: no TLS, dialback with its verify stream. XEP-0288 forbids verifying a key on the
  stream that asked, so the receiving server connects back anyway and bidi saves nothing here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT):  # run as a script too, without an installed s2sfast
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from certs import make_ca  # noqa: E402
from core_helpers import LOOPBACK, free_port, node_config  # noqa: E402
from dnsserver import DnsServer  # noqa: E402

from s2sfast.net.dns import Resolver  # noqa: E402
from s2sfast.node import Node  # noqa: E402

MODES = {
    "xep0344": {"mode": "required", "sasl_external": False, "dialback_cert_auth": True},
    "sasl": {"mode": "required", "sasl_external": True, "dialback_cert_auth": True},
    "dialback": {"mode": "false", "sasl_external": False, "dialback_cert_auth": False},
}


class CountingProxy:
    """Forwards every connection on a loopback port to *target*; counts the connections."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()


class Counter:
    """The accepting side's view of one node's events."""

    def __init__(self) -> None:
        self.tls = 0
        self.streams: set[str] = set()

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if fields.get("direction") != "in":
            return
        if kind == "tls-up":
            self.tls += 1
        elif kind == "stream-authenticated":
            self.streams.add(fields["stream_id"])


async def run(mode: str, bidi: bool, pairs: int, directory: str) -> dict[str, Any]:
    dns = DnsServer()
    ca = make_ca()
    cafile = ca.write_pem(directory)
    a_hosts = [f"h{i}.a.test" for i in range(pairs)]
    b_hosts = [f"h{i}.b.test" for i in range(pairs)]
    cert_a = ca.issue(a_hosts).write_pem(directory, "a.pem")
    cert_b = ca.issue(b_hosts).write_pem(directory, "b.pem")
    port_a, port_b = free_port(), free_port()
    proxy_a, proxy_b = CountingProxy(port_a), CountingProxy(port_b)
    via_a, via_b = await proxy_a.start(), await proxy_b.start()
    options = dict(MODES[mode], cafile=cafile, bidi=bidi)
    config_a = node_config(
        a_hosts, port=port_a, addresses={h: via_b for h in b_hosts}, certfile=cert_a, **options
    )
    config_b = node_config(
        b_hosts, port=port_b, addresses={h: via_a for h in a_hosts}, certfile=cert_b, **options
    )
    nodes = []
    counters = []
    inboxes: list[asyncio.Queue[Any]] = []
    for config in (config_a, config_b):
        node = Node(
            config,
            keepalive=None,
            idle_timeout=None,
            resolver=Resolver([dns.nameserver], timeout=1, retries=1),
        )
        counter = Counter()
        node.on_event(counter)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        node.on_stanza(inbox.put_nowait)
        await node.start()
        nodes.append(node)
        counters.append(counter)
        inboxes.append(inbox)
    a, b = nodes
    times = []
    try:
        for i in range(pairs):
            start = time.perf_counter()
            await a.send(_message(a_hosts[i], b_hosts[i], f"ab{i}"))
            got = await asyncio.wait_for(inboxes[1].get(), 20)
            assert got.id == f"ab{i}" and got.type != "error", got.raw
            await b.send(_message(b_hosts[i], a_hosts[i], f"ba{i}"))
            got = await asyncio.wait_for(inboxes[0].get(), 20)
            assert got.id == f"ba{i}" and got.type != "error", got.raw
            times.append((time.perf_counter() - start) * 1000)
        live = len(a.connections()) + len(b.connections())
    finally:
        for node in nodes:
            await node.stop(timeout=2)
        await proxy_a.stop()
        await proxy_b.stop()
        dns.close()
    connections = proxy_a.accepted + proxy_b.accepted
    return {
        "mode": mode,
        "bidi": bidi,
        "pairs": pairs,
        "connections": connections,
        "tls_handshakes": sum(c.tls for c in counters),
        "authenticated_streams": sum(len(c.streams) for c in counters),
        # both nodes list every connection: each live connection is counted twice
        "live_connections": live // 2,
        "median_ms": statistics.median(times),
    }


def _message(frm: str, to: str, id: str) -> bytes:
    body = "<body>x</body>"
    return f"<message from='u@{frm}' to='v@{to}' type='chat' id='{id}'>{body}</message>".encode()


async def main_async(pairs: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for mode in MODES:
            for bidi in (False, True):
                sub = Path(directory) / f"{mode}-{bidi}"
                sub.mkdir()
                rows.append(await run(mode, bidi, pairs, str(sub)))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<9} {'bidi':<5} {'conn/pair':>9} {'TLS/pair':>9} {'streams/pair':>12} "
        f"{'live/pair':>9} {'ms/pair':>8}  vs bidi off"
    )
    lines = [head, "-" * len(head)]
    off = {r["mode"]: r for r in rows if not r["bidi"]}
    for r in rows:
        n = r["pairs"]
        base = off[r["mode"]]
        ratio = r["connections"] / base["connections"] if base["connections"] else float("nan")
        lines.append(
            f"{r['mode']:<9} {('on' if r['bidi'] else 'off'):<5} {r['connections'] / n:>9.2f} "
            f"{r['tls_handshakes'] / n:>9.2f} {r['authenticated_streams'] / n:>12.2f} "
            f"{r['live_connections'] / n:>9.2f} {r['median_ms']:>8.1f}  "
            f"connections x{ratio:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="domain pairs per run")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    logging.getLogger("s2sfast").setLevel(logging.ERROR)  # stop() logs every closed stream
    rows = asyncio.run(main_async(args.pairs))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
