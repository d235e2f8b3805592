"""Time to first delivered stanza for a new domain pair: dialback vs XEP-0344 vs SASL EXTERNAL.

    python3 bench/auth_paths.py [--trials 40] [--rtt-ms 0 20] [--json out.json]

Two Nodes in this process (A serves hN.a.test, B serves hN.b.test; wildcard certificates from
a test CA trusted both ways; ``use_starttls = "required"``) talk through a TCP proxy per
direction on loopback. Each trial sends one stanza from a domain pair that has never spoken
(hN.a.test -> hN.b.test) and measures the time from ``Node.send`` to B's handler. The proxies
count the TCP connections each trial opens and the round trips on each (a round trip: bytes one
way, then bytes back; the TCP handshake counts as one), and can add a one-way delay of RTT/2 to
every chunk (and RTT before the first byte reaches the server: SYN, SYN-ACK, data) to show what
the saved round trips are worth on a real network. Modes:

- ``dialback``: ``sasl_external = false``, ``dialback_cert_auth = false`` (MongooseIM's way):
  B checks A's key over a second connection it opens to A (the verify stream);
- ``xep0344``: ``sasl_external = false``, ``dialback_cert_auth = true``: B answers the
  db:result at once because A's certificate names hN.a.test; one connection;
- ``sasl``: ``sasl_external = true``: SASL EXTERNAL, then the stream restarts; one connection.

Prints a table (median and p90 ms, connections, round trips, and the ratio to dialback) and
optionally writes the figures as JSON.
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
from dataclasses import replace
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

LOOPBACK = "127.0.0.1"
MODES = {
    "dialback": {"sasl_external": False, "dialback_cert_auth": False},
    "xep0344": {"sasl_external": False, "dialback_cert_auth": True},
    "sasl": {"sasl_external": True, "dialback_cert_auth": True},
}


class DelayProxy:
    """A TCP proxy on loopback to *target*: forwards every chunk after *delay* seconds (one
    way), and records, per accepted connection, the direction of each chunk in order."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        #: one list per connection: "c" (client to server) / "s" chunks, in arrival order
        self.connections: list[list[str]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        flights: list[str] = []
        self.connections.append(flights)
        if self.delay:  # SYN + SYN-ACK before the client's first byte can leave
            await asyncio.sleep(2 * self.delay)
        try:
            sr, sw = await asyncio.open_connection(LOOPBACK, self.target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(
            self._pipe(cr, sw, flights, "c"),
            self._pipe(sr, cw, flights, "s"),
            return_exceptions=True,
        )

    async def _pipe(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, flights: list[str], tag: str
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await r.read(65536):
                flights.append(tag)
                if self.delay:
                    loop.call_later(self.delay, _write, w, data)
                else:
                    w.write(data)
        finally:
            if self.delay:
                loop.call_later(self.delay, w.close)
            else:
                w.close()


def _write(w: asyncio.StreamWriter, data: bytes) -> None:
    if not w.is_closing():
        w.write(data)


def round_trips(flights: list[str]) -> int:
    """The TCP handshake plus every client flight answered by the server."""
    trips, last = 1, None
    for tag in flights:
        if tag == "s" and last == "c":
            trips += 1
        last = tag
    return trips


async def run_mode(
    mode: str, trials: int, rtt_ms: float, directory: str, *, proxy: bool = True
) -> dict[str, Any]:
    dns = DnsServer()
    ca = make_ca()
    cafile = ca.write_pem(directory)
    cert_a = ca.issue(["*.a.test"]).write_pem(directory, "a.pem")
    cert_b = ca.issue(["*.b.test"]).write_pem(directory, "b.pem")
    port_a, port_b = free_port(), free_port()
    delay = rtt_ms / 2000
    # A's connections go to B through proxy_b, B's to A through proxy_a
    proxy_b, proxy_a = DelayProxy(port_b, delay), DelayProxy(port_a, delay)
    await proxy_a.start()
    await proxy_b.start()
    via_a, via_b = (proxy_a.port, proxy_b.port) if proxy else (port_a, port_b)
    hosts_a = [f"h{i}.a.test" for i in range(trials + 1)]
    hosts_b = [f"h{i}.b.test" for i in range(trials + 1)]
    common: dict[str, Any] = {"mode": "required", "cafile": cafile, "state_timeout_ms": 30000}
    config_a = node_config(
        hosts_a, port=port_a, addresses=dict.fromkeys(hosts_b, via_b), certfile=cert_a, **common
    )
    config_b = node_config(
        hosts_b, port=port_b, addresses=dict.fromkeys(hosts_a, via_a), certfile=cert_b, **common
    )
    options = MODES[mode]
    nodes = []
    for config in (config_b, config_a):
        config = replace(config, s2s=replace(config.s2s, **options))
        resolver = Resolver([dns.nameserver], timeout=1, retries=1)
        nodes.append(Node(config, keepalive=None, idle_timeout=None, resolver=resolver))
    b, a = nodes
    arrived: dict[str, asyncio.Future[float]] = {}

    def received(stanza: Any) -> None:
        fut = arrived.get(stanza.id)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    b.on_stanza(received)
    methods: set[str] = set()
    a.on_event(lambda kind, f: methods.add(f["method"]) if kind == "stream-authenticated" else None)
    await b.start()
    await a.start()
    times, conns, trips = [], [], []
    try:
        for i in range(trials + 1):  # trial 0 warms up (imports, first handshakes)
            before = (len(proxy_a.connections), len(proxy_b.connections))
            ident = f"t{i}"
            fut = arrived[ident] = asyncio.get_running_loop().create_future()
            raw = f"<message from='u@h{i}.a.test' to='v@h{i}.b.test' id='{ident}'><body/></message>"
            start = time.perf_counter()
            await a.send(raw.encode())
            end = await asyncio.wait_for(fut, 30)
            await asyncio.sleep(max(0.05, 3 * delay))  # let the verify stream's tail settle
            new = proxy_a.connections[before[0] :] + proxy_b.connections[before[1] :]
            if i == 0:
                continue
            times.append((end - start) * 1000)
            conns.append(len(new))
            trips.append(sum(round_trips(f) for f in new))
    finally:
        await a.stop(timeout=5)
        await b.stop(timeout=5)
        await proxy_a.stop()
        await proxy_b.stop()
        dns.close()
    times.sort()
    return {
        "mode": mode,
        "rtt_ms": rtt_ms,
        "trials": trials,
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "min_ms": times[0],
        "connections": statistics.median(conns),
        "round_trips": statistics.median(trips),
        "methods": sorted(methods),
    }


async def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 20.0])
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    # the nodes' own log (e.g. XEP-0198 stanzas in flight at stop) is not what is measured
    logging.getLogger("s2sfast").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for rtt in args.rtt_ms:
            for mode in MODES:
                rows.append(await run_mode(mode, args.trials, rtt, directory))
    print(
        f"{'mode':9} {'rtt ms':>6} {'median ms':>10} {'p90 ms':>8} {'conns':>6} {'round trips':>12}"
        f" {'saved ms':>9} {'dialback/this':>14}  methods"
    )
    for row in rows:
        base = next(r for r in rows if r["rtt_ms"] == row["rtt_ms"] and r["mode"] == "dialback")
        row["saved_ms"] = base["median_ms"] - row["median_ms"]
        row["saved_round_trips"] = base["round_trips"] - row["round_trips"]
        row["ratio_vs_dialback"] = base["median_ms"] / row["median_ms"]
        print(
            f"{row['mode']:9} {row['rtt_ms']:6.0f} {row['median_ms']:10.2f} {row['p90_ms']:8.2f}"
            f" {row['connections']:6.0f} {row['round_trips']:12.0f} {row['saved_ms']:9.2f}"
            f" {row['ratio_vs_dialback']:14.2f}  {','.join(row['methods'])}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    asyncio.run(main())
