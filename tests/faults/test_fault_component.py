"""A component that stops reading (issue 15, point 3): component A floods 1 KiB messages to
bot.b.test while B's component reads nothing. B must not grow without bound (RSS < 256 MiB);
the pressure reaches the sender (its writes block) or the stanzas bounce; and when the
component reads again (or has been disconnected), every stanza is delivered or bounced."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from fault_harness import (  # noqa: E402
    RSS_LIMIT,
    SM_AND_OFF,
    SendStats,
    clean_exit,
    exit_codes,
    mib,
    report,
    restart_with_component,
    running_pair,
    send_burst,
    wait_until,
)

pytestmark = pytest.mark.slow

#: seconds of flooding against the stuck component, and the most it sends (bytes)
FLOOD = float(os.environ.get("S2SFAST_FAULT_FLOOD", "20"))
FLOOD_BYTES = 600 * 1024 * 1024


async def test_component_that_stops_reading(tmp_path: Path) -> None:
    async with running_pair(tmp_path, "stuck") as (pair, a, b, ledger):
        b.pause()  # B's component reads nothing from here on
        stats = SendStats()
        loop = asyncio.get_running_loop()
        stop_flag: list[str] = []
        sender = asyncio.create_task(
            send_burst(
                a,
                n=10_000_000,
                rate=50_000,
                pad=1000,
                stop=lambda: bool(stop_flag),
                stats=stats,
                deadline=FLOOD + 60,
            )
        )
        start = loop.time()
        end = start + FLOOD
        peak = {"a": 0, "b": 0}
        released: float | None = None
        while loop.time() < end and not sender.done():
            peak["a"] = max(peak["a"], pair.a.rss())
            peak["b"] = max(peak["b"], pair.b.rss())
            if max(peak.values()) > RSS_LIMIT or stats.bytes > FLOOD_BYTES:
                break  # growing without bound: stop before the machine suffers
            held_back = stats.longest_block >= 5.0 and stats.blocking_since is None
            if released is None and held_back:
                # the sender was held back for long and moves again: B let the stuck component
                # go (its stanzas bounce now). Two more seconds of that, then enough
                released = loop.time()
            if released is not None and loop.time() - released > 2.0:
                break
            await asyncio.sleep(0.05)
        felt = stats.longest_block_now(loop.time())
        flooded = stats.sent
        flooded_bytes = stats.bytes
        stop_flag.append("flood over")
        b.resume()
        await asyncio.wait_for(sender, 90)
        ledger.sent = stats.sent
        await ledger.settle(quiet=8.0, cap=90.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b = await pair.b.aterminate()
        result = ledger.result(
            "component-stops-reading",
            queued=queued,
            flooded=flooded,
            flooded_mib=mib(flooded_bytes),
            longest_block_s=round(felt, 1),
            rss_peak_mib={"a": mib(peak["a"]), "b": mib(peak["b"])},
            component_b_ends=b.ends,
            sender_released_after_s=None if released is None else round(released - start, 1),
            stream_errors=[e[:120] for e in b.stream_errors],
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert peak["b"] < RSS_LIMIT and peak["a"] < RSS_LIMIT, result.line()
        assert felt >= 1.0 or result.bounced > 0, result.line()
        assert result.missing == 0, result.line()
        assert (code_a, code_b) == (0, 0)
        assert clean_exit(pair.a) + clean_exit(pair.b) == []


@pytest.mark.parametrize("sm", list(SM_AND_OFF))
async def test_sigterm_while_the_component_is_stuck(tmp_path: Path, sm: str) -> None:
    """B gets SIGTERM while its component has read nothing for a few seconds of flood: B exits
    0 without a traceback; the component reads what reached its socket, B starts again, and
    every stanza is delivered or bounced to A - none vanishes with B's buffers. Without
    XEP-0198 (sm-off) A keeps nothing for a resend: what B still holds for the component, and
    what A wrote before it read B's close, must be bounced to A while B's S2S streams are still
    open to carry the errors. Here A's sender is blocked until B's stall timeout has cut the
    component, then B gets SIGTERM."""
    await sigterm_while_stuck(tmp_path, sm, before_the_stall_cut=False)


async def test_sigterm_before_the_stuck_component_is_cut(tmp_path: Path) -> None:
    """As above without XEP-0198, but SIGTERM comes while the component is still connected and
    stuck (before COMPONENT_STALL_TIMEOUT): the shutdown cuts it and bounces its queue before
    the S2S streams close."""
    await sigterm_while_stuck(tmp_path, "sm-off", before_the_stall_cut=True)


async def sigterm_while_stuck(tmp_path: Path, sm: str, *, before_the_stall_cut: bool) -> None:
    prefix = f"term{'early' if before_the_stall_cut else 'stuck'}{sm[3]}"
    async with running_pair(tmp_path, prefix, sm=SM_AND_OFF[sm]) as (pair, a, b, ledger):
        b.pause()
        stats = SendStats()
        stop_flag: list[str] = []
        sender = asyncio.create_task(
            send_burst(
                a,
                n=10_000_000,
                rate=20_000,
                pad=1000,
                stop=lambda: bool(stop_flag),
                stats=stats,
                deadline=60,
            )
        )
        await asyncio.sleep(5.0)
        stop_flag.append("sigterm")
        if not before_the_stall_cut:
            await asyncio.wait_for(sender, 30)
        code_b = await pair.b.aterminate(timeout=60)
        how_b = pair.b.current.how
        if before_the_stall_cut:  # B's shutdown cut the component, not its stall timeout
            log_b = pair.b.log()
            assert "did not read for" not in log_b, log_b[-3000:]
            assert "read too slowly at shutdown" in log_b, log_b[-3000:]
        b.resume()  # what reached the component's socket before B went
        await wait_until(lambda: not b.is_open(), 30, "the old component stream read to its end")
        # then B runs again: what A still holds for it goes there
        await restart_with_component(pair.b, b)
        await asyncio.wait_for(sender, 60)
        ledger.sent = stats.sent
        await ledger.settle(quiet=6.0, cap=60.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b2 = await pair.b.aterminate()
        result = ledger.result(
            f"sigterm-{'before-cut' if before_the_stall_cut else 'while-component-stuck'}-{sm}",
            queued=queued,
            component_b_ends=b.ends,
            component_b_tail=b.tail[-120:],
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert (code_b, how_b) == (0, "sigterm"), pair.b.log()[-3000:]
        assert clean_exit(pair.b) == [], pair.b.log()[-3000:]
        assert result.missing == 0, result.line()
        assert (code_a, code_b2) == (0, 0)
        assert clean_exit(pair.a) + clean_exit(pair.b) == []
