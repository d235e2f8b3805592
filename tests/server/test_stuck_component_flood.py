"""A component that stops reading, under a flood from the other node, on two `s2sfast run`
processes (a.test, b.test, plain S2S): the flood is pushed back to the sending component
(TCP backpressure end to end: B stops reading the S2S stream, A stops reading component A), both
daemons' RSS stays far below 256 MiB, and once B gives up on its stuck component what was
queued for it, and everything after, comes back to the sender as errors; SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from daemon_helpers import RawComponent
from test_daemon_federation import Pair

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
#: how long and how much the flood may run at most (the test is bounded in time and count)
FLOOD_SECONDS = 25.0
FLOOD_BYTES = 400 * MiB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_stuck_component_under_flood_stays_bounded_and_pushes_back(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.start()
    try:
        bot_a, answer = await RawComponent.connect(pair.comp["a"], "bot.a.test", "pw-a.test")
        assert answer.name == "handshake"
        bot_b, answer = await RawComponent.connect(pair.comp["b"], "bot.b.test", "pw-b.test")
        assert answer.name == "handshake"
        bot_b.writer.transport.pause_reading()  # B's component reads nothing from now on

        errors = 0

        async def count_errors() -> None:  # bot A reads what comes back (bounces)
            nonlocal errors
            while True:
                chunk = await bot_a.reader.read(1 << 18)
                if not chunk:
                    return
                errors += chunk.count(b" type='error'") + chunk.count(b' type="error"')

        reader = asyncio.ensure_future(count_errors())
        pad = "z" * 900
        batch = b"".join(
            f"<message from='f@bot.a.test' to='s@bot.b.test' id='{i}'><body>{pad}</body>"
            f"</message>".encode()
            for i in range(256)
        )
        pids = {side: d.proc.pid for side, d in pair.daemons.items()}
        peak = {side: rss(pid) for side, pid in pids.items()}
        sent = 0
        longest_block = 0.0
        blocked_before_errors = False
        start = time.monotonic()
        while time.monotonic() - start < FLOOD_SECONDS and sent < FLOOD_BYTES:
            bot_a.send(batch)
            sent += len(batch)
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(bot_a.writer.drain(), 5)
            except TimeoutError:
                pass
            waited = time.monotonic() - t0
            if waited > 1.0 and errors == 0:
                blocked_before_errors = True  # the flood is held back, nothing bounced yet
            longest_block = max(longest_block, waited)
            for side, pid in pids.items():
                peak[side] = max(peak[side], rss(pid))
        print(f"sent {sent / MiB:.0f} MiB, peak RSS {peak}, errors {errors}, block {longest_block}")
        assert blocked_before_errors, "the sender never felt backpressure"
        for side, value in peak.items():
            assert value < 256 * MiB, f"daemon {side} grew to {value / MiB:.0f} MiB"
        # B cut off its stuck component (COMPONENT_STALL_TIMEOUT) and bounced to the sender
        assert errors > 0, pair.daemons["b"].log()[-3000:] + pair.daemons["a"].log()[-3000:]
        assert "stuck" in pair.daemons["b"].log()
        reader.cancel()
        assert pair.stop() == {"a": 0, "b": 0}
        for side in ("a", "b"):
            assert "Traceback" not in pair.daemons[side].log()
        bot_a.close()
        bot_b.close()
    finally:
        pair.kill()
