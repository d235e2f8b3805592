"""SIGTERM under load and after faults (issue 15, point 4): the daemon exits 0 with no
traceback, and every stanza of a burst is delivered or bounced."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from daemon_helpers import ROOT, free_port  # noqa: E402
from fault_harness import (  # noqa: E402
    RATE,
    SM_SETTINGS,
    N,
    SendStats,
    clean_exit,
    exit_codes,
    has_traceback,
    mib,
    report,
    restart_with_component,
    running_pair,
    send_burst,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sm", list(SM_SETTINGS))
async def test_sigterm_peer_during_burst_then_restart(tmp_path: Path, sm: str) -> None:
    """B gets SIGTERM a quarter into the burst and starts again: B exits 0 without a
    traceback, and every stanza is delivered (resend) or delivered/bounced (bounce)."""
    prefix = f"termb{sm[3]}"
    async with running_pair(tmp_path, prefix, sm=SM_SETTINGS[sm]) as (pair, a, b, ledger):
        stats = SendStats()
        sender = asyncio.create_task(send_burst(a, n=N, rate=RATE, stats=stats))
        await wait_until(lambda: len(b.delivered) >= N // 4, 60, "a quarter delivered")
        code_b_term = await pair.b.aterminate()
        await wait_until(lambda: not b.is_open(), 10, "B's component stream closed")
        await restart_with_component(pair.b, b)
        await asyncio.wait_for(sender, 120)
        ledger.sent = stats.sent
        await ledger.settle(quiet=8.0, cap=90.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b = await pair.b.aterminate()
        result = ledger.result(
            f"sigterm-peer-during-burst[{sm}]",
            queued=queued,
            component_b_ends=b.ends,
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert code_b_term == 0, pair.b.log()[-3000:]
        assert clean_exit(pair.b) == [], pair.b.log()[-3000:]
        assert b.ends[0].startswith("close"), b.ends  # B closed its component stream cleanly
        assert result.missing == 0, result.line()
        if SM_SETTINGS[sm]["resend"]:
            assert result.bounced == 0, result.line()
            assert result.delivered == N, result.line()
        assert (code_a, code_b) == (0, 0)
        assert clean_exit(pair.a) == []


async def test_sigterm_sender_during_burst(tmp_path: Path) -> None:
    """A gets SIGTERM a quarter into the burst (its component stops writing at that moment):
    A exits 0 without a traceback, closes its component stream cleanly, and each stanza the
    component wrote was delivered at B or bounced back before the stream closed."""
    async with running_pair(tmp_path, "terma") as (pair, a, b, ledger):
        stats = SendStats()
        stop_flag: list[str] = []
        sender = asyncio.create_task(
            send_burst(a, n=N, rate=RATE, stats=stats, stop=lambda: bool(stop_flag))
        )
        await wait_until(lambda: len(b.delivered) >= N // 4, 60, "a quarter delivered")
        stop_flag.append("sigterm")
        pair.a.process.signal(signal.SIGTERM)  # type: ignore[union-attr]
        await asyncio.wait_for(sender, 30)
        code_a = await pair.a.aterminate(timeout=40)
        await wait_until(lambda: not a.is_open(), 10, "A's component stream closed")
        ledger.sent = stats.sent
        await ledger.settle(quiet=5.0, cap=30.0)
        code_b = await pair.b.aterminate()
        result = ledger.result(
            "sigterm-sender-during-burst",
            component_a_ends=a.ends,
            sender=stats.stopped_by,
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert code_a == 0, pair.a.log()[-3000:]
        assert clean_exit(pair.a) == [], pair.a.log()[-3000:]
        assert len(a.ends) == 1 and a.ends[0].startswith("close"), a.ends
        assert result.missing == 0, result.line()
        assert code_b == 0 and clean_exit(pair.b) == []


# --- SIGTERM after a client connected to the S2S port and vanished ------------------------------

_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"to='localhost' from='vanished.test' version='1.0'>"
)


def _vanish(port: int, how: str) -> None:
    """Connect to the S2S port, maybe open a stream, and go away.

    ``fin``/``rst``: connect and close (FIN) or reset (SO_LINGER 0). ``header-fin``: open a
    stream and close at once: the node's answer then meets a closed socket, whose kernel resets
    the connection after the node has seen the FIN. ``header-rst``: open a stream, let the node
    answer, reset."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if how.startswith("header"):
        sock.sendall(_HEADER)
        if how == "header-rst":
            time.sleep(0.02)
    if how.endswith("rst"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["at-once", "50ms"])
@pytest.mark.parametrize("how", ["fin", "rst", "header-fin", "header-rst"])
def test_sigterm_after_a_client_vanished(tmp_path: Path, how: str, delay: float) -> None:
    """`s2sfast run` on embedded defaults; clients connect to the S2S port and go away;
    SIGTERM *delay* later: exit status 0, no traceback (the crash of the issue's point 4:
    before the fix, ``header-fin`` with SIGTERM at once crashed 3 runs in 4 with ENOTCONN
    from ``transport.write_eof()``). Three rounds each, since the crash depends on timing."""
    outcomes = []
    for round_ in range(3):
        s2s_port, comp_port = free_port(), free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "s2sfast", "run", "--data-dir", str(tmp_path / "data"),
             "--s2s-port", str(s2s_port), "--component-port", str(comp_port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:  # until the S2S port listens
                try:
                    socket.create_connection(("127.0.0.1", s2s_port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "the daemon never listened"
                    time.sleep(0.05)
            time.sleep(0.2)
            for _ in range(3):
                _vanish(s2s_port, how)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        outcomes.append((round_, proc.returncode, has_traceback(err), err[-2500:]))
    bad = [o for o in outcomes if o[1] != 0 or o[2]]
    exits = [o[1] for o in outcomes]
    print(f"[fault] sigterm-after-client-vanished[{how}-{delay}]: exits {exits}")
    assert bad == [], "\n".join(f"round {r}: exit {c}\n{e}" for r, c, _, e in bad)
