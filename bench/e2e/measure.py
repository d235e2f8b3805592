"""One contender's measurement: warm-up, flood (throughput, latency, CPU, peak RSS), then a
paced run at half the measured peak rate (latency at moderate load)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.e2e import paths, procstat, traffic
from bench.e2e.progress import Progress


@dataclass
class Sizes:
    messages: int = 30000
    library_messages: int = 100000
    size: int = 200
    half_seconds: float = 5.0
    #: a light load: this many messages per second for low_seconds (latency when nothing queues)
    low_rate: float = 1000.0
    low_seconds: float = 3.0
    stall: float = 20.0
    #: "dialback": no certificate trusted; "trusted": a CA both ends trust (SASL EXTERNAL)
    auth: str = "dialback"
    #: py-spy profiles of the s2sfast processes during the flood go here (None: no profiling)
    profile: Path | None = None


def _profile(sizes: Sizes, name: str, pids: list[int]) -> list[Any]:
    """Start py-spy on each of *pids* (A, B) when profiling is on."""
    if sizes.profile is None:
        return []
    from bench.e2e.profile import Profiler

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    profilers = [
        Profiler(pid, sizes.profile / f"{slug}-{side}.txt")
        for pid, side in zip(pids, "ab", strict=True)
    ]
    time.sleep(1.0)  # py-spy needs a moment to attach before the flood starts
    return profilers


def _profiled(profilers: list[Any]) -> dict[str, Any]:
    return {side: p.stop() for side, p in zip("ab", profilers, strict=True)}


def _cpu(pids: list[int]) -> float:
    return sum(procstat.cpu_seconds(p) for p in pids)


async def _wait(counter: traffic.Counter, progress: Progress | None, stall: float) -> None:
    """Until every message arrived, or nothing new came for *stall* seconds."""
    loop = asyncio.get_running_loop()
    last, changed = -1, loop.time()
    while not counter.done.done():
        if progress is not None:
            progress.update(counter.count)
        if counter.count != last:
            last, changed = counter.count, loop.time()
        elif loop.time() - changed > stall:
            return
        await asyncio.wait([counter.done], timeout=0.2)
    if progress is not None:
        progress.update(counter.count)
    counter.done.result()  # a receiver that closed raises here


def _flood_result(
    n: int, counter: traffic.Counter, first_ns: int, cpu: float, pids: list[int]
) -> dict[str, Any]:
    seconds = max(1e-9, (counter.last_ns - first_ns) / 1e9)
    return {
        "messages": n,
        "received": counter.count,
        "missing": counter.missing(),
        "duplicates": counter.duplicates,
        "seconds": seconds,
        "msg_per_s": counter.count / seconds,
        "latency_ms": traffic.percentiles(counter.latencies),
        "cpu_s": cpu,
        "cpu_s_per_10k": cpu / max(1, counter.count) * 10000,
        "peak_rss_kib": [procstat.peak_rss_kib(p) for p in pids],
    }


async def measure_servers(contender: Any, sizes: Sizes) -> dict[str, Any]:
    """A server contender (already started): flood, then half the peak rate."""
    sender, receiver = await contender.open()
    tmpl = contender.template(sizes.size)
    pids = contender.pids()
    try:
        counter = receiver.start_counting(1)  # warm-up: S2S connect, TLS, dialback
        await sender.flood(tmpl, 1)
        await _wait(counter, None, 30)
        if counter.count != 1:
            raise RuntimeError(f"{contender.name}: the warm-up message did not arrive")
        n = sizes.messages
        counter = receiver.start_counting(n)
        progress = Progress(f"{contender.name}: flood", n)
        profilers = _profile(sizes, contender.name, pids) if contender.kind == "daemon" else []
        cpu0, client0 = _cpu(pids), time.process_time()
        flood = asyncio.ensure_future(sender.flood(tmpl, n))
        await _wait(counter, progress, sizes.stall)
        first = await flood
        cpu, client = _cpu(pids) - cpu0, time.process_time() - client0
        result = _flood_result(n, counter, first, cpu, pids)
        if profilers:
            result["profile"] = _profiled(profilers)
        # the load client's own CPU (this process): far below one core means it kept up
        result["client_cpu_s_per_10k"] = client / max(1, counter.count) * 10000
        result["client_cpu_share"] = client / result["seconds"]
        progress.finish(f"{result['msg_per_s']:,.0f} msg/s, {counter.missing()} missing")
        rate = result["msg_per_s"] / 2
        for key, label, r, secs in (
            ("half_peak", "half peak", rate, sizes.half_seconds),
            ("low_load", f"{sizes.low_rate:,.0f}/s", sizes.low_rate, sizes.low_seconds),
        ):
            result[key] = await _paced_servers(contender, sender, receiver, tmpl, label, r, secs,
                                               sizes)  # fmt: skip
        return result
    finally:
        sender.close()
        receiver.close()


async def _paced_servers(
    contender: Any, sender: Any, receiver: Any, tmpl: bytes, label: str, rate: float,
    seconds: float, sizes: Sizes,
) -> dict[str, Any]:  # fmt: skip
    m = max(200, int(rate * seconds))
    counter = receiver.start_counting(m)
    progress = Progress(f"{contender.name}: {label}", m)
    pids = contender.pids()
    before = _busy(pids)
    task = asyncio.ensure_future(sender.paced(tmpl, m, rate))
    await _wait(counter, progress, sizes.stall)
    await task
    progress.finish()
    result = _half_result(rate, m, counter.count, counter.missing(), counter.latencies)
    result.update(_busy_since(before, pids))
    result["client_send_lag_ms"] = traffic.percentiles(sender.send_lag, (50, 99, 100))
    # latency_ms counts a message as arrived when the kernel had it on the receiver's socket;
    # this, when the load client read it (its own wait for a CPU added)
    result["client_read_latency_ms"] = traffic.percentiles(counter.read_latencies)
    return result


def _busy(pids: list[int]) -> tuple[float, list[float], list[float]]:
    waits = [procstat.run_delay_seconds(p) for p in pids]
    # this client: the thread running the event loop (not the servers' log collectors)
    waits.append(procstat.run_delay_seconds(os.getpid(), main_thread=True))
    return time.monotonic(), [procstat.cpu_seconds(p) for p in pids], waits


def _busy_since(before: tuple[float, list[float], list[float]], pids: list[int]) -> dict[str, Any]:
    """The servers' CPU share and, for them and this client, the share of the time they were
    runnable but waited for a CPU (a busy machine: latency that is not theirs; a server's
    threads are summed, so a many-threaded one, like ejabberd's VM, may pass 100%)."""
    t0, cpu0, wait0 = before
    secs = max(1e-9, time.monotonic() - t0)
    now = _busy(pids)
    return {
        "server_cpu_share": [round((b - a) / secs, 3) for a, b in zip(cpu0, now[1], strict=True)],
        "cpu_wait_share": [round((b - a) / secs, 3) for a, b in zip(wait0, now[2], strict=True)],
    }


def _half_result(rate: float, m: int, received: int, missing: int, lat: Any) -> dict[str, Any]:
    return {
        "rate": rate,
        "messages": m,
        "received": received,
        "missing": missing,
        "latency_ms": lat if isinstance(lat, dict) else traffic.percentiles(lat),
    }


# --- the library path: two worker processes ---------------------------------------------------


class Worker:
    """``python3 -m MODULE ROLE ...`` (bench.e2e.library, bench.e2e.scale) driven over its
    stdin/stdout, one line per command and answer."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(
        cls, role: str, log: Path, *args: str, module: str = "bench.e2e.library",
        tree: Path | None = None,
    ) -> Worker:  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *paths.worker_argv(module, tree), role, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=open(log, "wb"), cwd=tree or paths.ROOT, env=paths.child_env(tree),
        )  # fmt: skip
        self = cls(proc, role)
        await self.expect("ready", 30)
        return self

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"library {self.name} worker exited ({await self.proc.wait()})")
        return raw.decode().strip()

    async def expect(self, word: str, timeout: float, progress: Progress | None = None) -> str:
        while True:
            line = await self.line(timeout)
            if line.startswith("progress ") and progress is not None:
                progress.update(int(line.split()[1]))
            if line.split(" ", 1)[0] == word:
                return line[len(word) + 1 :]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.send("quit")
                await asyncio.wait_for(self.proc.wait(), 15)
            except (TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await self.proc.wait()


async def measure_library(
    workdir: Path, loop: str, sizes: Sizes, tree: Path | None = None
) -> dict[str, Any]:
    """Node.send in process A -> B's on_stanza handler, one TLS stream; both on *loop*
    (s2sfast from *tree* when given)."""
    import certs
    from daemon_helpers import free_port

    suffix = f" @{paths.tree_label(tree)}" if tree else ""
    d = workdir / f"library-{loop}{suffix.replace(' @', '-')}"
    d.mkdir(parents=True, exist_ok=True)
    ca = certs.make_ca("bench e2e library CA")
    cafile = ca.write_pem(d, "ca.pem")
    port = {"a": free_port(), "b": free_port()}
    common = ["--size", str(sizes.size), "--loop", loop, "--stall", str(sizes.stall)]
    if sizes.auth == "trusted":
        common += ["--ca", cafile]

    def args(side: str, other: str) -> list[str]:
        cert = ca.issue([f"{side}.test"]).write_pem(d, f"{side}.pem")
        return ["--host", f"{side}.test", "--port", str(port[side]), "--peer", f"{other}.test",
                "--peer-port", str(port[other]), "--cert", cert, *common]  # fmt: skip

    recv = await Worker.start("recv", d / "b.log", *args("b", "a"), tree=tree)
    send = await Worker.start("send", d / "a.log", *args("a", "b"), tree=tree)
    name = f"s2sfast library ({loop}){suffix}"
    pids = [send.proc.pid, recv.proc.pid]
    try:
        await recv.send("expect 1")
        await recv.expect("ok", 10)
        await send.send("flood 1")
        await send.expect("sent", 60)
        warm = json.loads(await recv.expect("result", 60))
        if warm["received"] != 1:
            raise RuntimeError(f"{name}: the warm-up message did not arrive")
        n = sizes.library_messages
        progress = Progress(f"{name}: flood", n)
        await recv.send(f"expect {n}")
        await recv.expect("ok", 10)
        profilers = _profile(sizes, name, pids)
        cpu0 = _cpu(pids)
        await send.send(f"flood {n}")
        got = json.loads(await recv.expect("result", 600, progress))
        first = int(await send.expect("sent", 60))
        cpu = _cpu(pids) - cpu0
        profile = _profiled(profilers) if profilers else None
        seconds = max(1e-9, (got["last_ns"] - first) / 1e9)
        result = {
            "messages": n,
            "received": got["received"],
            "missing": got["missing"],
            "duplicates": got["duplicates"],
            "seconds": seconds,
            "msg_per_s": got["received"] / seconds,
            "latency_ms": got["latency_ms"],
            "cpu_s": cpu,
            "cpu_s_per_10k": cpu / max(1, got["received"]) * 10000,
            "peak_rss_kib": [procstat.peak_rss_kib(p) for p in pids],
        }
        if profile:
            result["profile"] = profile
        progress.finish(f"{result['msg_per_s']:,.0f} msg/s, {got['missing']} missing")
        for key, label, rate, secs in (
            ("half_peak", "half peak", result["msg_per_s"] / 2, sizes.half_seconds),
            ("low_load", f"{sizes.low_rate:,.0f}/s", sizes.low_rate, sizes.low_seconds),
        ):
            m = max(200, int(rate * secs))
            progress = Progress(f"{name}: {label}", m)
            await recv.send(f"expect {m}")
            await recv.expect("ok", 10)
            await send.send(f"paced {m} {rate:.1f}")
            got = json.loads(await recv.expect("result", 600, progress))
            await send.expect("sent", 60)
            progress.finish()
            result[key] = _half_result(rate, m, got["received"], got["missing"],
                                       got["latency_ms"])  # fmt: skip
        return result
    finally:
        await send.stop()
        await recv.stop()


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
