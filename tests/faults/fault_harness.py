"""The fault suite's harness: real `s2sfast run` daemons, raw XEP-0114 components that count
every stanza, a loopback TCP proxy that resets or stalls, and a ledger that accounts for each.

A scenario sends N numbered messages (``id`` = ``<run>-<i>``) from component A (bot.a.test) to a
component or user at b.test and collects what arrives there and what comes back to A as a
bounce (``type='error'`` with the same id). :class:`Ledger` then sorts every id it sent into
delivered (duplicates counted apart), bounced, or missing - neither delivered nor bounced, the
figure issue 15 is about. Nothing here waits without a bound: every wait has a deadline.

Daemons run as child processes (``python -m s2sfast run --config``), so signals are real:
SIGKILL loses everything the process held, SIGTERM runs the shutdown path. The test's asyncio
loop runs the components; blocking waits on processes go through ``asyncio.to_thread``.

Set ``S2SFAST_FAULT_REPORT`` to a file name and every scenario appends its figures there as one
JSON line (the table in the issue's report is made from it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon_helpers import READY, DaemonProcess, RawComponent, free_port

#: a daemon past this resident size is growing without bound (issue 15's target)
RSS_LIMIT = 256 * 1024 * 1024
#: where the scenario figures go (one JSON object a line), when set
REPORT_ENV = "S2SFAST_FAULT_REPORT"

_CONDITION = re.compile(rb"<([a-z-]+)[^>]*xmlns=['\"]urn:ietf:params:xml:ns:xmpp-stanzas['\"]")


# --- daemons ------------------------------------------------------------------------------------


def rss_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of *pid* in bytes from /proc; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return rss, hwm


@dataclass
class Incarnation:
    """One run of a daemon process: how it ended and how large it grew."""

    pid: int
    rss_peak: int = 0
    exit_code: int | None = None
    how: str = "running"  # running | sigkill | sigterm | exited
    stderr: str = ""


class FaultDaemon:
    """One `s2sfast run --config FILE`, restartable on the same ports, its RSS sampled.

    A sampler thread reads /proc/<pid>/status every 20 ms while the process lives and keeps the
    peak (VmHWM too, which the kernel keeps exactly); :attr:`rss_peak` is the largest over all
    incarnations.
    """

    def __init__(self, name: str, config: Path) -> None:
        self.name = name
        self.config = config
        self.process: DaemonProcess | None = None
        self.runs: list[Incarnation] = []
        self._sampler: threading.Thread | None = None
        self._stop_sampling = threading.Event()

    @property
    def current(self) -> Incarnation:
        return self.runs[-1]

    @property
    def rss_peak(self) -> int:
        return max((r.rss_peak for r in self.runs), default=0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.proc.pid

    def rss(self) -> int:
        return rss_of(self.pid)[0] if self.alive() else 0

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def start(self) -> None:
        """Start a new incarnation and wait (bounded) until it logs that it runs."""
        assert not self.alive(), f"{self.name} still runs"
        self.process = DaemonProcess("--config", str(self.config))
        self.runs.append(Incarnation(pid=self.process.proc.pid))
        self._stop_sampling = threading.Event()
        self._sampler = threading.Thread(
            target=self._sample,
            args=(self.process, self.runs[-1], self._stop_sampling),
            daemon=True,
        )
        self._sampler.start()
        self.process.wait_for_log(re.escape(READY), timeout=30)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    @staticmethod
    def _sample(process: DaemonProcess, run: Incarnation, stop: threading.Event) -> None:
        while not stop.is_set() and process.proc.poll() is None:
            rss, hwm = rss_of(process.proc.pid)
            run.rss_peak = max(run.rss_peak, rss, hwm)
            stop.wait(0.02)

    def _ended(self, how: str, code: int) -> None:
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)
        run = self.current
        run.how, run.exit_code = how, code
        assert self.process is not None
        for thread in self.process._threads:
            thread.join(5)
        run.stderr = self.process.log()

    def kill(self) -> None:
        """SIGKILL: a crash. Waits for the process to be gone."""
        assert self.process is not None
        rss, hwm = rss_of(self.pid)
        self.current.rss_peak = max(self.current.rss_peak, rss, hwm)
        self.process.proc.send_signal(signal.SIGKILL)
        code = self.process.proc.wait(20)
        self._ended("sigkill", code)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (bounded: SIGKILL after *timeout*, reported as such)."""
        assert self.process is not None
        if self.process.proc.poll() is not None:
            self._ended("exited", self.process.proc.returncode)
            return self.process.proc.returncode
        rss, hwm = rss_of(self.pid)
        self.current.rss_peak = max(self.current.rss_peak, rss, hwm)
        self.process.proc.send_signal(signal.SIGTERM)
        try:
            code = self.process.proc.wait(timeout)
            self._ended("sigterm", code)
        except Exception:
            self.process.proc.kill()
            code = self.process.proc.wait(20)
            self._ended("sigterm-timeout-sigkill", code)
        return code

    async def aterminate(self, timeout: float = 30.0) -> int:
        return await asyncio.to_thread(self.terminate, timeout)

    def cleanup(self) -> None:
        """Whatever state the test left: make sure nothing of ours keeps running."""
        if self.alive():
            assert self.process is not None
            self.process.proc.kill()
            self.process.proc.wait(20)
            self._ended("cleanup-kill", self.process.proc.returncode)

    def log(self) -> str:
        """stderr of every incarnation, in order."""
        parts = []
        for i, run in enumerate(self.runs):
            text = run.stderr
            if run is self.current and self.process is not None and run.how == "running":
                text = self.process.log()
            parts.append(f"--- {self.name} run {i} (pid {run.pid}, {run.how}) ---\n{text}")
        return "\n".join(parts)

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        assert self.process is not None
        return self.process.wait_for_log(pattern, timeout)


def tcp_established(sock_name: tuple[str, int], peer_name: tuple[str, int]) -> bool:
    """Whether our loopback TCP socket *sock_name* -> *peer_name* is still ESTABLISHED, from
    /proc/net/tcp (a socket whose peer closed it is in CLOSE_WAIT, one reset is gone) - asked
    without reading from it, so a component that stops reading can still tell."""
    want_local = f"0100007F:{sock_name[1]:04X}"
    want_remote = f"0100007F:{peer_name[1]:04X}"
    with open("/proc/net/tcp") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 3 and fields[1] == want_local and fields[2] == want_remote:
                return fields[3] == "01"
    return False


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


# --- configuration --------------------------------------------------------------------------------


@dataclass
class TLSMaterial:
    cafile: str
    certfile: dict[str, str]


def make_tls(tmp: Path, domains: tuple[str, ...] = ("a.test", "b.test")) -> tuple[Any, TLSMaterial]:
    """A test CA and one leaf per domain (also valid for ``bot.<domain>``)."""
    import certs

    ca = certs.make_ca("fault suite CA")
    cafile = ca.write_pem(tmp, "ca.pem")
    files = {d: ca.issue([d, f"bot.{d}"]).write_pem(tmp, f"{d}.pem") for d in domains}
    return ca, TLSMaterial(cafile, files)


#: XEP-0198 settings a scenario runs with: None keeps the daemon's defaults
SM_SETTINGS: dict[str, dict[str, bool]] = {
    "sm-resend": {"enabled": True, "resend": True},
    "sm-bounce": {"enabled": True, "resend": False},
}
#: and without XEP-0198 (what a peer that does not offer it leaves us with)
SM_OFF: dict[str, bool] = {"enabled": False}
#: every setting a crash or reset scenario runs with: XEP-0198 both ways, and without it
SM_AND_OFF: dict[str, dict[str, bool]] = {**SM_SETTINGS, "sm-off": SM_OFF}

#: stanzas per burst and their rate (the issue's run: 20,000 at 8,000/s; smaller by default so
#: the suite stays short on a small machine - raise them with the environment)
N = int(os.environ.get("S2SFAST_FAULT_N", "6000"))
RATE = float(os.environ.get("S2SFAST_FAULT_RATE", "4000"))
#: without XEP-0198, stanzas the sender wrote up to this many seconds after the fault may have
#: gone into the dead stream before the daemon saw it die (what cannot be known); anything later
#: must be delivered or bounced
IN_FLIGHT = 0.2


def sm_configurable() -> bool:
    """Whether this s2sfast reads ``[s2s.stream_management]`` (issue 15 adds it)."""
    try:
        from s2sfast.config.loader import StreamManagementOptions  # noqa: F401
    except ImportError:
        return False
    return True


def write_config(
    path: Path,
    *,
    host: str,
    s2s_port: int,
    comp_port: int,
    peer: str,
    peer_port: int,
    tls: TLSMaterial,
    metrics_port: int | None = None,
    sm: dict[str, bool] | None = None,
    s2s_extra: str = "",
    general_extra: str = "",
) -> Path:
    """A MongooseIM-style TOML for one fault-suite daemon: TLS required and verified, one
    component listener (password ``pw-<host>``), *peer* and ``bot.<peer>`` at *peer_port*."""
    metrics = ""
    if metrics_port is not None:
        metrics = f"""
[[listen.http]]
  port = {metrics_port}
  ip_address = "127.0.0.1"
  [[listen.http.handlers.mongoose_prometheus_handler]]
    host = "_"
    path = "/metrics"
"""
    sm_table = ""
    if sm is not None and sm_configurable():
        sm_table = "  [s2s.stream_management]\n" + "".join(
            f"    {k} = {str(v).lower()}\n" for k, v in sm.items()
        )
    path.write_text(
        f"""
[general]
  hosts = ["{host}"]
{general_extra}
[[listen.s2s]]
  port = {s2s_port}
  ip_address = "127.0.0.1"
  tls.cacertfile = "{tls.cafile}"
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "pw-{host}"
{metrics}
[s2s]
  use_starttls = "required_trusted"
  certfile = "{tls.certfile[host]}"
  default_policy = "allow"
  max_retry_delay = 4
{s2s_extra}
{sm_table}
  [[s2s.address]]
    host = "{peer}"
    ip_address = "127.0.0.1"
    port = {peer_port}
  [[s2s.address]]
    host = "bot.{peer}"
    ip_address = "127.0.0.1"
    port = {peer_port}
"""
    )
    return path


class FaultPair:
    """Daemon A (a.test) and daemon B (b.test), both requiring verified TLS, each with a
    component listener and a Prometheus endpoint. ``via_proxy=True`` routes A's outbound
    stream to b.test through a :class:`TcpProxy` (``pair.proxy``); B reaches A directly."""

    def __init__(
        self,
        tmp: Path,
        *,
        sm: dict[str, bool] | None = None,
        via_proxy: bool = False,
        s2s_extra: str = "",
        general_extra: str = "",
    ) -> None:
        self.tmp = tmp
        self.ca, self.tls = make_tls(tmp)
        self.s2s = {"a": free_port(), "b": free_port()}
        self.comp = {"a": free_port(), "b": free_port()}
        self.metrics = {"a": free_port(), "b": free_port()}
        self.proxy: TcpProxy | None = None
        a_sees_b = self.s2s["b"]
        if via_proxy:
            self.proxy = TcpProxy(self.s2s["b"])
            a_sees_b = self.proxy.port
        self.daemons: dict[str, FaultDaemon] = {}
        for side, other, peer_port in (("a", "b", a_sees_b), ("b", "a", self.s2s["a"])):
            cfg = write_config(
                tmp / f"{side}.toml",
                host=f"{side}.test",
                s2s_port=self.s2s[side],
                comp_port=self.comp[side],
                peer=f"{other}.test",
                peer_port=peer_port,
                tls=self.tls,
                metrics_port=self.metrics[side],
                sm=sm,
                s2s_extra=s2s_extra,
                general_extra=general_extra,
            )
            self.daemons[side] = FaultDaemon(side, cfg)

    @property
    def a(self) -> FaultDaemon:
        return self.daemons["a"]

    @property
    def b(self) -> FaultDaemon:
        return self.daemons["b"]

    async def start(self) -> None:
        if self.proxy is not None:
            self.proxy.start()
        await asyncio.gather(self.a.astart(), self.b.astart())

    def cleanup(self) -> None:
        for daemon in self.daemons.values():
            daemon.cleanup()
        if self.proxy is not None:
            self.proxy.close()

    def queued(self, side: str = "a") -> int | None:
        return scrape_queue_depth(self.metrics[side])

    def logs(self) -> str:
        return "\n".join(d.log() for d in self.daemons.values())


def scrape_queue_depth(port: int) -> int | None:
    """Sum of ``s2sfast_queue_depth`` (stanzas waiting for an outbound stream) from a daemon's
    Prometheus endpoint; None when it cannot be asked (the daemon is down)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith("s2sfast_queue_depth"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# --- components ---------------------------------------------------------------------------------


class CountingComponent:
    """A raw XEP-0114 component whose reader counts messages by id.

    ``delivered[id]``: messages of any type but error; ``bounced[id]``: type='error', with
    their conditions in ``conditions``. :meth:`pause`/:meth:`resume` stop and restart reading
    (a component that stops reading: TCP pushes back on the daemon). :meth:`reconnect` opens
    a new stream (after its daemon restarted), keeping the counts.
    """

    def __init__(self, port: int, domain: str, password: str, prefix: str) -> None:
        self.port = port
        self.domain = domain
        self.password = password
        self.prefix = prefix
        self.comp: RawComponent | None = None
        self.delivered: collections.Counter[str] = collections.Counter()
        self.bounced: collections.Counter[str] = collections.Counter()
        self.conditions: collections.Counter[str] = collections.Counter()
        self.other = 0
        self.stream_errors: list[bytes] = []
        self.ends: list[str] = []  # how each stream ended: "close", "eof", "reset", ...
        self.bytes_in = 0
        #: the last bytes read (a stanza cut by the daemon's close shows here)
        self.tail = b""
        self._reading = asyncio.Event()
        self._reading.set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> None:
        comp, answer = await asyncio.wait_for(
            RawComponent.connect(self.port, self.domain, self.password), timeout
        )
        assert answer is not None and answer.name == "handshake", answer
        self.comp = comp
        for event in comp.events:  # anything framed with the handshake
            self._count(event)
        comp.events.clear()
        self.connected.set()
        self._task = asyncio.get_running_loop().create_task(self._read(comp))

    async def reconnect(self, deadline: float = 30.0) -> None:
        """Connect again until the daemon accepts (bounded by *deadline* seconds)."""
        end = time.monotonic() + deadline
        while True:
            try:
                await self.connect(timeout=5.0)
                return
            except (TimeoutError, OSError, AssertionError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.01)

    def _count(self, event: Any) -> None:
        name = type(event).__name__
        if name == "StreamClose":
            return
        if name != "Stanza":
            return
        if event.name in ("stream:error", "error"):
            self.stream_errors.append(bytes(event.raw))
            return
        mid = event.id
        if event.name != "message" or not mid or not mid.startswith(self.prefix):
            self.other += 1
            return
        if event.type == "error":
            self.bounced[mid] += 1
            match = _CONDITION.search(bytes(event.raw))
            self.conditions[match.group(1).decode() if match else "?"] += 1
        else:
            self.delivered[mid] += 1

    async def _read(self, comp: RawComponent) -> None:
        how = "eof"
        try:
            while True:
                await self._reading.wait()
                chunk = await comp.reader.read(65536)
                if not chunk:
                    break
                self.bytes_in += len(chunk)
                self.tail = (self.tail + chunk)[-200:]
                for event in comp.framer.feed(chunk):
                    if type(event).__name__ == "StreamClose":
                        how = "close"
                        # answer the close (RFC 6120 4.4) so the daemon can finish cleanly
                        with contextlib.suppress(Exception):
                            comp.writer.write(b"</stream:stream>")
                    self._count(event)
        except ConnectionResetError:
            # after a </stream:stream>: the daemon closed without waiting for ours
            how = "close+reset" if how == "close" else "reset"
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        except Exception as exc:  # a framing error from the daemon is a finding too
            how = f"error: {exc!r}"
        finally:
            self.ends.append(how)
            self.connected.clear()
            with contextlib.suppress(Exception):
                comp.writer.close()

    def pause(self) -> None:
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    @property
    def writer(self) -> asyncio.StreamWriter:
        assert self.comp is not None
        return self.comp.writer

    def established(self) -> bool:
        """The TCP connection is up as far as the kernel knows (works while paused)."""
        if self.comp is None:
            return False
        transport = self.comp.writer.transport
        return tcp_established(
            transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        )

    def is_open(self) -> bool:
        return (
            self.comp is not None
            and self.connected.is_set()
            and not self.comp.writer.transport.is_closing()
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.comp is not None:
            with contextlib.suppress(Exception):
                self.comp.writer.close()


def message(prefix: str, i: int, frm: str, to: str, pad: int = 0) -> bytes:
    body = f"n{i}" + ("x" * pad if pad else "")
    return (
        f"<message id='{prefix}-{i}' from='{frm}' to='{to}' type='chat'>"
        f"<body>{body}</body></message>"
    ).encode()


@dataclass
class SendStats:
    sent: int = 0
    bytes: int = 0
    #: seconds spent waiting in drain() (the daemon not reading: backpressure felt)
    blocked: float = 0.0
    longest_block: float = 0.0
    #: loop time the drain() in progress started (None: not waiting)
    blocking_since: float | None = None
    stopped_by: str = ""

    def longest_block_now(self, now: float) -> float:
        """The longest drain() wait so far, counting the one in progress."""
        current = now - self.blocking_since if self.blocking_since is not None else 0.0
        return max(self.longest_block, current)


async def send_burst(
    comp: CountingComponent,
    *,
    n: int,
    rate: float,
    frm: str = "sender@bot.a.test",
    to: str = "rcpt@bot.b.test",
    pad: int = 0,
    stop: Callable[[], bool] = lambda: False,
    stats: SendStats | None = None,
    deadline: float = 120.0,
) -> SendStats:
    """Write *n* numbered messages at about *rate* a second, honouring TCP backpressure
    (``drain()``). Stops early when *stop()* turns true, the stream closes, or *deadline*
    seconds pass; ``stats.sent`` is what was handed to the socket."""
    stats = stats or SendStats()
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + deadline
    tick = 0.005
    while stats.sent < n:
        if stop():
            stats.stopped_by = "stop"
            break
        if not comp.is_open():
            stats.stopped_by = "closed"
            break
        now = loop.time()
        if now > end:
            stats.stopped_by = "deadline"
            break
        # at most 20 ms worth at once, and no debt after a wait: a sender held back by
        # backpressure resumes at its rate, it does not dump everything it "owes"
        due = min(n, int((now - start) * rate) + 1, stats.sent + max(1, int(rate * 0.02)))
        if (now - start) * rate - stats.sent > rate * 0.1:
            start = now - stats.sent / rate
        if due <= stats.sent:
            await asyncio.sleep(tick)
            continue
        chunk = b"".join(message(comp.prefix, i, frm, to, pad) for i in range(stats.sent, due))
        comp.writer.write(chunk)
        stats.bytes += len(chunk)
        stats.sent = due
        t0 = stats.blocking_since = loop.time()
        try:
            await asyncio.wait_for(comp.writer.drain(), max(0.1, end - t0))
        except (TimeoutError, ConnectionError):
            stats.stopped_by = "drain-failed"
            break
        finally:
            stats.blocking_since = None
            waited = loop.time() - t0
            if waited > 0.05:
                stats.blocked += waited
                stats.longest_block = max(stats.longest_block, waited)
    if not stats.stopped_by:
        stats.stopped_by = "done"
    return stats


# --- accounting ---------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    sent: int
    delivered: int
    duplicates: int
    bounced: int
    both: int
    missing: int
    queued: int | None
    conditions: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"[fault] {self.scenario}: sent {self.sent}, delivered {self.delivered} "
            f"(+{self.duplicates} duplicates), bounced {self.bounced} "
            f"(of which also delivered {self.both}), missing {self.missing}, "
            f"queued {self.queued}, conditions {self.conditions}, {self.extra}"
        )


class Ledger:
    """Every id a scenario sent, and where each ended up."""

    def __init__(self, prefix: str, sender: CountingComponent, receivers: list[Any]) -> None:
        self.prefix = prefix
        self.sender = sender
        #: objects with a ``delivered`` Counter (components, C2S counters)
        self.receivers = receivers
        self.sent = 0

    def delivered(self) -> collections.Counter[str]:
        if len(self.receivers) == 1:
            return self.receivers[0].delivered
        total: collections.Counter[str] = collections.Counter()
        for r in self.receivers:
            total.update(r.delivered)
        return total

    def accounted(self) -> int:
        """Distinct ids delivered or bounced (the components count only this run's ids)."""
        return len(self.delivered().keys() | self.sender.bounced.keys())

    async def settle(
        self,
        *,
        quiet: float = 6.0,
        cap: float = 90.0,
        queued: Callable[[], int | None] | None = None,
    ) -> None:
        """Wait until every sent stanza is delivered or bounced, or nothing changed for *quiet*
        seconds while nothing is queued, or *cap* seconds passed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + cap
        last = (-1, -1)
        changed = loop.time()
        while loop.time() < end:
            progress = (sum(self.delivered().values()), sum(self.sender.bounced.values()))
            if self.accounted() >= self.sent:
                return
            if progress != last:
                last, changed = progress, loop.time()
            elif loop.time() - changed > quiet:
                q = queued() if queued is not None else None
                if not q:
                    return
            await asyncio.sleep(0.1)

    def missing_ids(self) -> list[int]:
        delivered = self.delivered()
        bounced = self.sender.bounced
        return [
            i
            for i in range(self.sent)
            if not delivered[f"{self.prefix}-{i}"] and not bounced[f"{self.prefix}-{i}"]
        ]

    def result(self, scenario: str, queued: int | None = None, **extra: Any) -> Result:
        missing = self.missing_ids()
        if missing:
            extra = {**extra, "missing_ranges": ranges(missing)[:12]}
        delivered = self.delivered()
        bounced = self.sender.bounced
        ids = [f"{self.prefix}-{i}" for i in range(self.sent)]
        return Result(
            scenario=scenario,
            sent=self.sent,
            delivered=sum(1 for i in ids if delivered[i]),
            duplicates=sum(max(0, delivered[i] - 1) for i in ids),
            bounced=sum(1 for i in ids if bounced[i]),
            both=sum(1 for i in ids if delivered[i] and bounced[i]),
            missing=sum(1 for i in ids if not delivered[i] and not bounced[i]),
            queued=queued,
            conditions=dict(self.sender.conditions),
            extra=extra,
        )


def ranges(ids: list[int]) -> list[str]:
    """[1, 2, 3, 7] -> ["1-3", "7"]: where the missing stanzas sit in the burst."""
    out: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return out


def report(result: Result) -> None:
    """Print the figures (pytest shows them with -s or on failure) and append them to the
    report file when ``S2SFAST_FAULT_REPORT`` names one."""
    print(result.line())
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(result.__dict__, default=str) + "\n")


# --- a loopback TCP proxy that resets or stalls -------------------------------------------------

_TLS_HANDSHAKE, _TLS_APPDATA = 0x16, 0x17


class _Pipe:
    """One direction of a proxied connection."""

    def __init__(self, src: socket.socket, dst: socket.socket, name: str) -> None:
        self.src, self.dst, self.name = src, dst, name
        self.buf = bytearray()
        self.eof = False
        self.shut = False
        self.total = 0
        # TLS record tracking (only for the client -> server direction)
        self.plain = True
        self.hdr = bytearray()
        self.left = 0  # bytes of the current record's body still to come
        self.rtype = 0
        self.records = 0


class _Conn:
    def __init__(self, client: socket.socket, server: socket.socket, index: int) -> None:
        self.index = index
        self.up = _Pipe(client, server, "up")  # daemon A -> daemon B
        self.down = _Pipe(server, client, "down")  # B -> A
        self.stalled = False
        self.cut_armed = False
        self.reset_after_flush = False
        self.closed = False
        self.cut_at: tuple[int, int, int] | None = None  # (record no., body length, bytes kept)


class TcpProxy:
    """A loopback TCP proxy (one thread, non-blocking sockets, a selector) in front of
    *target_port*.

    :meth:`arm_reset` makes each live connection forward only half of the next TLS
    application-data record from A to B and then reset both sides (SO_LINGER 0: an RST, no
    FIN) - a TCP reset in the middle of a TLS record. :meth:`stall` stops reading from A on the
    live connections (the peer stops reading; A's writes back up in its kernel, then its
    process); :meth:`unstall` reads again. New connections are forwarded normally.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port or 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.conns: list[_Conn] = []
        self.accepted = 0
        self.resets = 0
        self.cuts: list[tuple[int, int, int]] = []
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            for conn in self.conns:
                self._close_conn(conn, reset=False)
        self.listener.close()

    # control (from the test's thread)

    def arm_reset(self) -> None:
        with self._lock:
            for conn in self.conns:
                if not conn.closed:
                    conn.cut_armed = True

    def stall(self) -> None:
        with self._lock:
            for conn in self.conns:
                conn.stalled = True

    def unstall(self) -> None:
        with self._lock:
            for conn in self.conns:
                conn.stalled = False

    def live(self) -> int:
        with self._lock:
            return sum(1 for c in self.conns if not c.closed)

    # the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._accept()
                for conn in list(self.conns):
                    if not conn.closed:
                        self._service(conn)
            time.sleep(0.0005)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                _rst(client)
                continue
            for sock in (client, server):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            self.conns.append(_Conn(client, server, self.accepted))

    def _service(self, conn: _Conn) -> None:
        for pipe in (conn.up, conn.down):
            if conn.closed:
                return
            reading = not pipe.eof and len(pipe.buf) < (1 << 18)
            if pipe is conn.up and (conn.stalled or conn.reset_after_flush):
                reading = False
            if reading:
                try:
                    data = pipe.src.recv(65536)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    self._close_conn(conn, reset=True)
                    return
                if data is not None:
                    if not data:
                        pipe.eof = True
                    else:
                        self._take(conn, pipe, data)
            if pipe.buf:
                try:
                    n = pipe.dst.send(pipe.buf)
                    del pipe.buf[:n]
                    pipe.total += n
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._close_conn(conn, reset=True)
                    return
            if pipe.eof and not pipe.buf and not pipe.shut:
                pipe.shut = True
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)
        if conn.reset_after_flush and not conn.up.buf:
            self.resets += 1
            self._close_conn(conn, reset=True)
        elif conn.up.shut and conn.down.shut:
            self._close_conn(conn, reset=False)

    def _take(self, conn: _Conn, pipe: _Pipe, data: bytes) -> None:
        """Queue *data* for the other side; on the A -> B pipe follow the TLS records and cut
        the first application-data record after arming."""
        if pipe is conn.down:
            pipe.buf += data
            return
        if pipe.plain:
            if data[:1] == bytes([_TLS_HANDSHAKE]) and data[1:2] == b"\x03":
                pipe.plain = False  # the ClientHello after <proceed/>: records from here on
            else:
                pipe.buf += data
                return
        pos = 0
        while pos < len(data):
            if pipe.left == 0:
                need = 5 - len(pipe.hdr)
                part = data[pos : pos + need]
                pipe.hdr += part
                pipe.buf += part
                pos += len(part)
                if len(pipe.hdr) == 5:
                    pipe.rtype = pipe.hdr[0]
                    pipe.left = struct.unpack("!H", bytes(pipe.hdr[3:5]))[0]
                    pipe.hdr.clear()
                    pipe.records += 1
                    if conn.cut_armed and pipe.rtype == _TLS_APPDATA and pipe.left >= 2:
                        keep = pipe.left // 2
                        avail = data[pos : pos + keep]
                        if len(avail) < keep:
                            # the half we keep spans reads: keep what we have, cut at the
                            # next read (still inside this record)
                            keep = len(avail)
                        pipe.buf += avail
                        conn.cut_at = (pipe.records, pipe.left, keep)
                        self.cuts.append(conn.cut_at)
                        conn.cut_armed = False
                        conn.reset_after_flush = True
                        return
                continue
            part = data[pos : pos + pipe.left]
            pipe.buf += part
            pipe.left -= len(part)
            pos += len(part)

    def _close_conn(self, conn: _Conn, *, reset: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for sock in (conn.up.src, conn.up.dst):
            if reset:
                _rst(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


def _rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends an RST and drops what it has not sent."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


# --- small helpers ------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *predicate* every 10 ms; AssertionError naming *what* after *timeout* seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def mib(n: int) -> float:
    return round(n / (1024 * 1024), 1)


@contextlib.asynccontextmanager
async def running_pair(tmp: Path, prefix: str, **pair_options: Any):  # type: ignore[no-untyped-def]
    """Start a :class:`FaultPair` and connect component A (the sender, bot.a.test) and
    component B (the receiver, bot.b.test); yields (pair, a, b, ledger). On the way out the
    components close and every process still running is killed; the daemons' logs are printed
    (pytest shows them when the test fails)."""
    pair = FaultPair(tmp, **pair_options)
    a = CountingComponent(pair.comp["a"], "bot.a.test", "pw-a.test", prefix)
    b = CountingComponent(pair.comp["b"], "bot.b.test", "pw-b.test", prefix)
    try:
        await pair.start()
        await a.connect()
        await b.connect()
        yield pair, a, b, Ledger(prefix, a, [b])
    finally:
        await a.close()
        await b.close()
        pair.cleanup()
        for name, daemon in pair.daemons.items():
            (tmp / f"{name}.log").write_text(daemon.log())
        print(f"daemon logs: {tmp}/a.log, {tmp}/b.log; the last lines:")
        print(pair.logs()[-20000:])


async def restart_with_component(daemon: FaultDaemon, comp: CountingComponent) -> None:
    """Start *daemon* again and have *comp* connect the moment its listener takes it (trying
    every 10 ms from before the start): the window in which the daemon runs without its
    component - stanzas for the component's domain are refused then - stays a few ms wide."""
    task = asyncio.get_running_loop().create_task(comp.reconnect(deadline=60.0))
    try:
        await daemon.astart()
    finally:
        await asyncio.wait_for(task, 60)


def clean_exit(daemon: FaultDaemon) -> list[str]:
    """What is wrong with how *daemon*'s SIGTERMed incarnations ended (empty: all exited 0
    without a traceback)."""
    problems = []
    for i, run in enumerate(daemon.runs):
        if run.how.startswith("sigterm") or run.how == "exited":
            if run.exit_code != 0 or run.how != "sigterm":
                problems.append(f"{daemon.name} run {i}: {run.how}, exit status {run.exit_code}")
        if has_traceback(run.stderr):
            problems.append(f"{daemon.name} run {i}: traceback in stderr")
    return problems


def exit_codes(daemon: FaultDaemon) -> list[str]:
    return [f"{r.how}:{r.exit_code}" for r in daemon.runs]
