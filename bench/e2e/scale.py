"""Scale: one ``s2sfast run`` daemon (d.test) holding many authenticated TLS streams.

A load generator in its own process (``python3 -m bench.e2e.scale gen ...``) runs a Node
serving h0.gen.test ... hN.gen.test (one ``*.gen.test`` certificate). One message from each
host opens that domain's stream to the daemon (TLS required). The daemon authenticates it by
dialback over its own stream back to that domain, which stays open too (2 streams per domain);
where both ends do bidirectional streams (XEP-0288) one connection carries both directions
(1 per domain). The warm-up shows which, and the domain count follows from the streams wanted.
A stream here is one of the daemon's TLS connections (its sockets in /proc/PID/fd). The
harness holds the daemon's XEP-0114 component (d.test) that receives the messages.

Measured (the daemon only, from /proc): VmRSS growth per stream while the streams are opened
and left idle (after a warm-up of the first domains), the time to authenticate NEW more streams
with all the others open, and the message rate over all domains. The file limit
(RLIMIT_NOFILE) is raised as far as the OS allows, for the daemon and the generator; when it is
the bound, the stream count is cut to fit and the result says so.

Generator commands (stdin, one per line): ``open A B`` (authenticate hA..hB-1, at most WINDOW
negotiating at once) -> ``opened SECONDS``; ``flood N`` (N messages round-robin over every
opened domain) -> ``sent FIRST_NS``; ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (a worker for another tree: --baseline)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e import paths, procstat, traffic
from bench.e2e.library import NO_DNS

paths.setup()

#: negotiating streams at once: below limits.MAX_NEGOTIATING_PER_ADDRESS (64) per address
WINDOW = 48
#: domains opened before the RSS baseline (TLS contexts, caches, code paths paid once)
WARMUP = 50
#: descriptors besides the streams (listeners, component, DNS, pipes, logs)
FD_MARGIN = 200


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- the generator process --------------------------------------------------------------------


async def generator(args: argparse.Namespace) -> None:
    from core_helpers import node_config

    from s2sfast.net.dns import Resolver
    from s2sfast.node import Node

    procstat.raise_nofile(args.nofile)
    hosts = [f"h{i}.gen.test" for i in range(args.domains)]
    config = node_config(
        hosts,
        port=args.port,
        addresses={"d.test": args.daemon_port},
        mode="required",
        certfile=args.cert,
        cafile=args.ca or None,
        state_timeout_ms=60000,
    )
    node = Node(
        config,
        keepalive=None,
        idle_timeout=None,
        # address overrides bypass DNS; nothing answers there, the machine's resolver is unused
        resolver=Resolver([NO_DNS], timeout=1, retries=1),
    )
    authenticated: set[str] = set()
    changed = asyncio.Event()

    def observe(kind: str, fields: dict[str, Any]) -> None:
        if kind == "stream-authenticated" and fields.get("direction") == "out":
            authenticated.add(fields["local"])
            changed.set()
        elif kind == "auth-failed":
            say(f"log auth-failed {fields}")

    node.on_event(observe)
    await node.start()
    say("ready")
    loop = asyncio.get_running_loop()
    opened: list[str] = []
    tmpl = (
        b"<message from='u@%s' to='c@d.test' type='chat' id='s%d'><body>#%d %d x</body></message>"
    )
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "open":
            todo = hosts[int(line[1]) : int(line[2])]
            t0 = time.perf_counter()
            pending: set[str] = set()
            i = 0
            deadline = time.monotonic() + args.timeout
            while i < len(todo) or pending:
                while i < len(todo) and len(pending) < WINDOW:
                    h = todo[i]
                    i += 1
                    pending.add(h)
                    await node.send(
                        f"<message from='u@{h}' to='c@d.test' type='chat'><body>open</body>"
                        "</message>".encode()
                    )
                changed.clear()  # before looking: a later authentication sets it again
                pending -= authenticated
                if pending:
                    try:
                        await asyncio.wait_for(changed.wait(), 1)
                    except TimeoutError:
                        pass
                    if time.monotonic() > deadline:
                        say(f"error {len(pending)} domains not authenticated in {args.timeout} s")
                        break
            opened.extend(todo)
            say(f"opened {time.perf_counter() - t0:.4f}")
        elif line[0] == "flood":
            n = int(line[1])
            names = [h.encode() for h in opened]
            first = time.monotonic_ns()
            for s in range(n):
                await node.send(tmpl % (names[s % len(names)], s, s, time.monotonic_ns()))
            say(f"sent {first}")
    await node.stop(timeout=10)


# --- the harness side ---------------------------------------------------------------------------


def run(
    workdir: Path, *, streams: int, new: int, messages: int, loop: str = "asyncio",
    tree: Path | None = None, auth: str = "dialback", verify_mode: str = "peer",
) -> dict[str, Any]:  # fmt: skip
    """Start the daemon and the generator (both s2sfast from *tree* when given: two commits
    of s2sfast need not agree on XEP-0198 and the like), open about *streams* streams, time
    *new* more, send *messages*, stop both; the result dict. *verify_mode* is the daemon
    listener's ``tls.verify_mode``: "peer" (the default: each inbound stream's peer is asked
    for its certificate; s2sfast frees OpenSSL's copy after the handshake) or "none" (not
    asked: dialback only, as with *auth* "dialback" anyway)."""
    return asyncio.run(_run(workdir, streams, new, messages, loop, tree, auth, verify_mode))


async def _run(
    workdir: Path, streams: int, new: int, messages: int, loop: str, tree: Path | None,
    auth: str, verify_mode: str,
) -> dict[str, Any]:  # fmt: skip
    import certs
    from daemon_helpers import free_port

    from bench.e2e.contenders import PASSWORD, cafile_for, daemon_process, write_daemon_config
    from bench.e2e.measure import Worker, _wait
    from bench.e2e.progress import Progress
    from bench.e2e.progress import say as note

    bound = None
    # one stream per domain (bidirectional streams) at most needs a domain per stream
    want = streams + new + FD_MARGIN
    soft, hard = procstat.raise_nofile(want)
    if soft < want:
        fit = max(2 * WARMUP, soft - FD_MARGIN - new)
        bound = (
            f"RLIMIT_NOFILE is {soft} (hard limit {hard}): {streams:,} streams need {want:,} "
            f"descriptors per process; cut to {fit:,}"
        )
        note(f"scale: {bound}")
        streams = fit
    label = paths.tree_label(tree) if tree else ""
    d = workdir / ("scale" + (f"-{label}" if tree else "") + f"-{verify_mode}")
    d.mkdir(parents=True, exist_ok=True)
    ca = certs.make_ca("bench e2e scale CA")
    cafile = ca.write_pem(d, "ca.pem")
    daemon_port, comp_port, gen_port = free_port(), free_port(), free_port()
    most = streams + new + WARMUP
    cfg = write_daemon_config(
        d / "d.toml", "d.test", daemon_port, comp_port,
        {f"h{i}.gen.test": gen_port for i in range(most)},
        ca.issue(["d.test"]).write_pem(d, "d.pem"), cafile_for(auth, cafile, d),
        state_timeout_ms=60000, verify_mode=None if verify_mode == "peer" else verify_mode,
    )  # fmt: skip
    note(f"scale: starting the daemon ({loop}) and the generator (up to {most:,} domains)")
    daemon = daemon_process(tree, loop, "--config", str(cfg), "--log-level", "info")
    gen = None
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: daemon.wait_for_log("running: hosts", 120)
        )
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the scale daemon exited: {daemon.log()[-2000:]}")
        pid = daemon.proc.pid
        receiver = await traffic.component(comp_port, "d.test", PASSWORD)
        receiver.start_counting(0)  # the stream-opening messages carry no marker
        gen = await Worker.start(
            "gen", d / "gen.log",
            "--domains", str(most), "--port", str(gen_port), "--daemon-port", str(daemon_port),
            "--cert", ca.issue(["*.gen.test"]).write_pem(d, "gen.pem"),
            "--ca", cafile if auth == "trusted" else "",
            "--nofile", str(want), module="bench.e2e.scale", tree=tree,
        )  # fmt: skip
        per_domain = 2  # until the warm-up shows it

        def sockets() -> int:
            return procstat.socket_count(pid) - base_sockets

        async def open_range(a: int, b: int, label: str) -> float:
            progress = Progress(label, b - a)
            await gen.send(f"open {a} {b}")
            line = ""
            before = sockets()
            while not line.startswith(("opened", "error")):
                try:
                    line = await gen.line(1.0)
                except TimeoutError:
                    progress.update(max(0, (sockets() - before) // per_domain))
                    continue
            if line.startswith("error"):
                raise RuntimeError(f"scale generator: {line}")
            progress.update(b - a)
            progress.finish()
            return float(line.split()[1])

        base_sockets = procstat.socket_count(pid)
        await open_range(0, WARMUP, "scale: warm-up domains")
        await asyncio.sleep(1.0)
        # the daemon's own stream back for dialback (2 per domain), or one bidirectional
        # stream (XEP-0288) carrying both directions (1 per domain)
        per_domain = max(1, round(sockets() / WARMUP))
        domains = max(WARMUP + 1, streams // per_domain)
        new_domains = max(1, new // per_domain)
        warm_sockets = sockets()
        rss_before = procstat.rss_kib(pid)
        open_seconds = await open_range(WARMUP, domains, "scale: open domains")
        await asyncio.sleep(2.0)  # let the last handshakes and dialback verifies settle
        rss_after = procstat.rss_kib(pid)
        sockets_idle = sockets()
        new_seconds = await open_range(
            domains, domains + new_domains, f"scale: {new_domains:,} new domains"
        )
        sockets_all = sockets()
        counter = receiver.start_counting(messages)
        progress = Progress("scale: messages, all open", messages)
        cpu0 = procstat.cpu_seconds(pid)
        await gen.send(f"flood {messages}")
        await _wait(counter, progress, 30)
        first = int(await gen.expect("sent", 120))
        cpu = procstat.cpu_seconds(pid) - cpu0
        seconds = max(1e-9, (counter.last_ns - first) / 1e9)
        progress.finish(f"{counter.count / seconds:,.0f} msg/s")
        result = {
            "loop": loop,
            "auth": auth,
            "verify_mode": verify_mode,
            "tree": label or "this checkout",
            "domains": domains,
            "streams_per_domain": per_domain,
            # streams = the daemon's TLS connections (sockets), each authenticated
            "streams": sockets_idle,
            "daemon_sockets": sockets_idle,
            "daemon_sockets_with_new": sockets_all,
            "nofile": f"{procstat.raise_nofile(0)[0]} (hard {hard})",
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "kib_per_stream": (rss_after - rss_before) / max(1, sockets_idle - warm_sockets),
            "open_seconds": open_seconds,
            "new_domains": new_domains,
            "new_streams": sockets_all - sockets_idle,
            "new_seconds": new_seconds,
            "messages": messages,
            "received": counter.count,
            "missing": counter.missing(),
            "msg_per_s": counter.count / seconds,
            "latency_ms": traffic.percentiles(counter.latencies),
            "cpu_s_per_10k": cpu / max(1, counter.count) * 10000,
            "peak_rss_kib": procstat.peak_rss_kib(pid),
            "bound": bound,
        }
        receiver.close()
        return result
    except BaseException:
        note(daemon.log()[-3000:])
        raise
    finally:
        if gen is not None:
            await gen.stop()
        await asyncio.get_running_loop().run_in_executor(None, daemon.stop)
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.e2e.scale")
    parser.add_argument("role", choices=("gen",))
    parser.add_argument("--domains", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--daemon-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--ca", default="", help="trust this CA (default: none: dialback)")
    parser.add_argument("--nofile", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    asyncio.run(generator(args))


if __name__ == "__main__":
    main()
