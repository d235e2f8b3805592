"""The library path's two processes: ``python3 -m bench.e2e.library send|recv ...``.

``send`` runs a Node for a.test and, on command, ``await node.send()``s chat messages to
b.test; ``recv`` runs a Node for b.test whose ``on_stanza`` handler counts them and takes the
latency of every 8th from the send time in its body (parsing every one would charge the
handler's regular expression to the node's CPU figure: a fifth of B's samples in a py-spy
profile). One TLS stream (use_starttls required, dialback) between them. The harness talks to
each over stdin/stdout, one line per command:

    recv:  expect N         -> ok, then progress K ... and finally result {json}
    send:  flood N          -> sent FIRST_NS          (as fast as node.send() returns)
           paced N RATE     -> sent FIRST_NS          (RATE messages per second)
    both:  quit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (a worker for another tree: --baseline)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e import paths, traffic

paths.setup()

from core_helpers import node_config  # noqa: E402

from s2sfast.config import StreamManagementOptions  # noqa: E402
from s2sfast.net.dns import Resolver  # noqa: E402
from s2sfast.node import Node  # noqa: E402

#: a nameserver entry where nothing answers (port 9, discard): never queried, see main_async
NO_DNS = "127.0.0.1:9"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def report(counter: traffic.SampledCounter, stall: float) -> None:
    loop = asyncio.get_running_loop()
    last, changed = -1, loop.time()
    while not counter.done.done():
        if counter.count != last:
            last, changed = counter.count, loop.time()
            say(f"progress {last}")
        elif loop.time() - changed > stall:
            break
        await asyncio.wait([counter.done], timeout=0.5)
    result = {
        "received": counter.count,
        "missing": counter.missing(),
        "duplicates": counter.duplicates,
        "sampled": len(counter.latencies),
        "first_ns": counter.first_ns,
        "last_ns": counter.last_ns,
        "latency_ms": traffic.percentiles(counter.latencies),
    }
    say("result " + json.dumps(result))


async def main_async(args: argparse.Namespace) -> None:
    config = node_config(
        [args.host],
        port=args.port,
        addresses={args.peer: args.peer_port},
        mode="required",
        certfile=args.cert,
        cafile=args.ca or None,
        state_timeout_ms=30000,
        stream_management=StreamManagementOptions(enabled=not args.no_sm),
    )
    # [s2s] address overrides bypass DNS; a nameserver where nothing listens makes sure the
    # machine's resolver is never asked (a loopback DNS server's threads would share the GIL)
    resolver = Resolver([NO_DNS], timeout=1, retries=1)
    node = Node(config, keepalive=None, idle_timeout=None, resolver=resolver)
    state: dict[str, Any] = {"counter": None}

    def handler(stanza: Any) -> None:
        counter = state["counter"]
        if counter is not None:
            counter.add(stanza.raw)

    node.on_stanza(handler)
    await node.start()
    tmpl = traffic.template(f"alice@{args.host}/r", f"bob@{args.peer}/r", args.size)
    loop = asyncio.get_running_loop()
    say("ready")
    tasks = set()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "expect":
            state["counter"] = traffic.SampledCounter(int(line[1]))
            say("ok")
            task = loop.create_task(report(state["counter"], args.stall))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif line[0] == "flood":
            first = time.monotonic_ns()
            for i in range(int(line[1])):
                await node.send(tmpl % (i, i, time.monotonic_ns()))
            say(f"sent {first}")
        elif line[0] == "paced":
            count, rate = int(line[1]), float(line[2])
            start = loop.time()
            first = time.monotonic_ns()
            sent = 0
            while sent < count:
                due = min(count, int((loop.time() - start) * rate) + 1)
                while sent < due:
                    await node.send(tmpl % (sent, sent, time.monotonic_ns()))
                    sent += 1
                await asyncio.sleep(traffic.TICK)  # uvloop: a shorter sleep is a 0 ms spin
            say(f"sent {first}")
    await node.stop(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.e2e.library")
    parser.add_argument("role", choices=("send", "recv"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--peer-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--ca", default="", help="trust this CA (default: none: dialback)")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--stall", type=float, default=20.0)
    parser.add_argument("--no-sm", action="store_true", help="XEP-0198 off on this node")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
