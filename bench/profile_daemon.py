"""The deployed path, measured: two ``s2sfast run`` daemons, an XEP-0114 component on each.

``python3 bench/profile_daemon.py [--count 30000] [--py-spy] [--loop asyncio]`` starts daemon A
(a.test) and daemon B (b.test) as separate processes on loopback (TLS required with certificates
from tests/certs.py, dialback), connects component bot.a.test to A and bot.b.test to B, and
pushes *count* chat messages of ~200 bytes from bot.a.test to a user at bot.b.test. It prints
one JSON line and a table:

- msg/s: messages counted by component B over the time from the first write to the last read;
- CPU s per 10k: user+system seconds of both daemons (from /proc/PID/stat) per 10,000 messages;
- peak RSS of each daemon (VmHWM);
- p50/p99/p99.9 latency of a paced run at half the measured rate (bench/e2e's load client:
  send times in the bodies, arrival as the kernel received it on component B's socket);
- with ``--py-spy``: the top functions of each daemon by own samples and by inclusive samples
  (``py-spy record --format raw`` over the throughput run, then aggregated here).

Figures are for comparing revisions on the same machine, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT):  # run as a script, without an installed s2sfast
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from certs import make_ca  # noqa: E402
from daemon_helpers import DaemonProcess, RawComponent, free_port  # noqa: E402

from bench.e2e import traffic  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _config(
    tmp: Path, side: str, ports: dict[str, int], tls: tuple[str, str], extra: str = ""
) -> Path:
    other = "b" if side == "a" else "a"
    certfile, cafile = tls
    path = tmp / f"{side}.toml"
    path.write_text(
        f"""
[general]
  hosts = ["{side}.test"]
[[listen.s2s]]
  port = {ports["s2s_" + side]}
  ip_address = "127.0.0.1"
  tls.cacertfile = "{cafile}"
[[listen.service]]
  port = {ports["comp_" + side]}
  ip_address = "127.0.0.1"
  password = "pw-{side}"
[s2s]
  use_starttls = "required"
  certfile = "{certfile}"
  default_policy = "allow"
{extra}
  [[s2s.address]]
    host = "{other}.test"
    ip_address = "127.0.0.1"
    port = {ports["s2s_" + other]}
  [[s2s.address]]
    host = "bot.{other}.test"
    ip_address = "127.0.0.1"
    port = {ports["s2s_" + other]}
"""
    )
    return path


def _wait_listening(ports: list[int], daemons: dict[str, DaemonProcess]) -> None:
    """Until every port accepts (the daemons log at warning level: no ready line to wait for)."""
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                dead = [s for s, d in daemons.items() if d.proc.poll() is not None]
                if dead or time.monotonic() > deadline:
                    logs = "\n".join(daemons[s].log() for s in daemons)
                    raise RuntimeError(f"daemons not listening (exited: {dead}):\n{logs}") from None
                time.sleep(0.05)


def message(i: int) -> bytes:
    """A ~200-byte chat message (the throughput run)."""
    head = f"<message from='alice@bot.a.test' to='bob@bot.b.test' type='chat' id='{i}:0.0'>"
    body = "<body>" + ("lorem ipsum dolor sit amet " * 8)[: 200 - len(head) - 17] + "</body>"
    return (head + body + "</message>").encode()


class Counter:
    """Reads component B's socket and counts the messages."""

    def __init__(self, comp: RawComponent) -> None:
        self.comp = comp
        self.count = 0
        self.last = 0.0
        self.tail = b""

    async def run(self, until: int) -> None:
        reader = self.comp.reader
        while self.count < until:
            chunk = await reader.read(1 << 18)
            if not chunk:
                raise RuntimeError(f"component B's stream ended after {self.count} messages")
            now = time.perf_counter()
            data = self.tail + chunk
            cut = data.rfind(b"</message>")
            if cut < 0:
                self.tail = data
                continue
            done, self.tail = data[: cut + 10], data[cut + 10 :]
            n = done.count(b"</message>")
            self.count += n
            self.last = now


async def _components(ports: dict[str, int]) -> tuple[RawComponent, RawComponent]:
    a, ans_a = await RawComponent.connect(ports["comp_a"], "bot.a.test", "pw-a")
    b, ans_b = await RawComponent.connect(ports["comp_b"], "bot.b.test", "pw-b")
    assert ans_a.name == "handshake" and ans_b.name == "handshake", (ans_a, ans_b)
    return a, b


async def drive(
    ports: dict[str, int], count: int, pids: list[int], spy: Any, rate: float | None = None
) -> dict[str, Any]:
    comp_a, comp_b = await _components(ports)
    counter = Counter(comp_b)
    # warm-up: the S2S stream (TLS, dialback) is set up by the first message
    comp_a.send(message(0))
    await asyncio.wait_for(counter.run(1), 30)
    warm = counter.count
    msgs = [message(i) for i in range(1, count + 1)]
    cpu0 = [cpu_seconds(p) for p in pids]
    spies = spy() if spy else []
    reading = asyncio.ensure_future(counter.run(warm + count))
    t0 = time.perf_counter()
    for i in range(0, count, 200):
        comp_a.send(b"".join(msgs[i : i + 200]))
        await comp_a.writer.drain()
    await asyncio.wait_for(reading, 600)
    elapsed = counter.last - t0
    cpu1 = [cpu_seconds(p) for p in pids]
    for proc in spies:
        proc.send_signal(2)
    pace = rate
    rate = count / elapsed
    # latency at half the peak rate for ~3 s, with bench/e2e's load client (on fresh component
    # connections): each message written once due (1 ms ticks; 5 ms ticks made bursts of ~400
    # messages whose first one waited for the whole burst at every hop), stamped just before
    # its write, counted as arrived when the kernel received it on component B's socket
    half = rate / 2 if pace is None else pace
    n_lat = int(half * 3)
    comp_a.close()
    comp_b.close()
    sender = await traffic.component(ports["comp_a"], "bot.a.test", "pw-a")
    receiver = await traffic.component(ports["comp_b"], "bot.b.test", "pw-b")
    tmpl = traffic.template("alice@bot.a.test", "bob@bot.b.test", 200)
    try:
        paced = receiver.start_counting(1)
        await sender.paced(tmpl, 1, 1.0)
        await asyncio.wait_for(paced.done, 30)
        paced = receiver.start_counting(n_lat)
        await sender.paced(tmpl, n_lat, half)
        await asyncio.wait_for(paced.done, 120)
    finally:
        sender.close()
        receiver.close()
    lat = traffic.percentiles(paced.latencies)
    return {
        "messages": count,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(rate),
        "cpu_s_per_10k": {
            side: round((c1 - c0) / count * 10_000, 3)
            for side, c0, c1 in zip("ab", cpu0, cpu1, strict=True)
        },
        "cpu_s_per_10k_both": round((sum(cpu1) - sum(cpu0)) / count * 10_000, 3),
        "latency_rate": round(half),
        "p50_ms": round(lat["p50"], 2),
        "p99_ms": round(lat["p99"], 2),
        "p99.9_ms": round(lat["p99.9"], 2),
        "spies": spies,
    }


def top_functions(raw: Path, n: int = 12) -> dict[str, list[tuple[str, float]]]:
    """Own and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        total += k
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += k
        for frame in set(frames):
            incl[frame] += k

    def share(c: collections.Counter[str]) -> list[tuple[str, float]]:
        # frames on (nearly) every stack are the event loop itself: not informative
        rows = [(f, round(100 * k / total, 1)) for f, k in c.most_common() if k < 0.97 * total]
        return rows[:n]

    return {"samples": total, "own": share(own), "inclusive": share(incl)}  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--py-spy", action="store_true", help="profile both daemons")
    parser.add_argument(
        "--rate", type=float, help="msg/s of the latency run (default: half the measured peak)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--no-sm", action="store_true", help="[s2s] stream_management.enabled = false (XEP-0198)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="s2sfast-profile-"))
    ca = make_ca("profile CA")
    cafile = ca.write_pem(tmp, "ca.pem")
    ports = {k: free_port() for k in ("s2s_a", "s2s_b", "comp_a", "comp_b")}
    daemons: dict[str, DaemonProcess] = {}
    for side in "ab":
        leaf = ca.issue([f"{side}.test", f"bot.{side}.test"]).write_pem(tmp, f"{side}.pem")
        extra = "  stream_management.enabled = false" if args.no_sm else ""
        cfg = _config(tmp, side, ports, (leaf, cafile), extra)
        daemons[side] = DaemonProcess("--config", str(cfg), "--log-level", "warning")
    spy = None
    if args.py_spy:
        exe = shutil.which("py-spy")
        if exe is None:
            print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
            return 2

        def spy() -> list[subprocess.Popen[bytes]]:
            return [
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--format",
                        "raw",
                        "-r",
                        "200",
                        "-o",
                        str(tmp / f"spy-{side}.txt"),
                        "-p",
                        str(d.proc.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for side, d in daemons.items()
            ]

    try:
        _wait_listening([ports["comp_a"], ports["comp_b"]], daemons)
        pids = [daemons[s].proc.pid for s in "ab"]
        result = asyncio.run(drive(ports, args.count, pids, spy, args.rate))
        result["peak_rss_mib"] = {
            s: round(peak_rss_kib(d.proc.pid) / 1024, 1) for s, d in daemons.items()
        }
        procs = result.pop("spies")
        for proc in procs:
            proc.wait(30)
        if args.py_spy:
            result["py_spy"] = {s: top_functions(tmp / f"spy-{s}.txt") for s in "ab"}
        codes = {s: d.stop() for s, d in daemons.items()}
        result["exit_codes"] = codes
    finally:
        for d in daemons.values():
            d.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    print(
        f"\n{result['messages']} messages: {result['msg_per_s']:,} msg/s, "
        f"CPU {result['cpu_s_per_10k_both']} s per 10k (a {result['cpu_s_per_10k']['a']}, "
        f"b {result['cpu_s_per_10k']['b']}), p50 {result['p50_ms']} ms / p99 "
        f"{result['p99_ms']} ms / p99.9 {result['p99.9_ms']} ms at {result['latency_rate']:,} "
        f"msg/s, peak RSS "
        f"{result['peak_rss_mib']} MiB, exit {result['exit_codes']}"
    )
    for side, top in result.get("py_spy", {}).items():
        print(f"\ndaemon {side}: {top['samples']} samples; own:")
        for name, pct in top["own"]:
            print(f"  {pct:5.1f}%  {name}")
        print("inclusive:")
        for name, pct in top["inclusive"]:
            print(f"  {pct:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
