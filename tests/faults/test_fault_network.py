"""Network faults between the daemons, made by a loopback TCP proxy on A's stream to B:
a TCP reset in the middle of a TLS record, and a peer that stops reading. Every stanza is
delivered or bounced; a stalled peer makes the sender feel backpressure, not the daemon grow."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from fault_harness import (  # noqa: E402
    IN_FLIGHT,
    RATE,
    RSS_LIMIT,
    SM_AND_OFF,
    SM_SETTINGS,
    N,
    SendStats,
    clean_exit,
    exit_codes,
    mib,
    report,
    running_pair,
    send_burst,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sm", list(SM_AND_OFF))
async def test_tcp_reset_in_the_middle_of_a_tls_record(tmp_path: Path, sm: str) -> None:
    prefix = f"rst{sm[3]}"
    async with running_pair(tmp_path, prefix, sm=SM_AND_OFF[sm], via_proxy=True) as (
        pair,
        a,
        b,
        ledger,
    ):
        proxy = pair.proxy
        assert proxy is not None
        stats = SendStats()
        sender = asyncio.create_task(send_burst(a, n=N, rate=RATE, stats=stats))
        await wait_until(lambda: len(b.delivered) >= N // 4, 60, "a quarter delivered")
        proxy.arm_reset()
        await wait_until(lambda: proxy.resets >= 1, 20, "the proxy reset the stream")
        # what the sender wrote after A could have seen the reset (IN_FLIGHT later)
        cut_at = stats.sent + int(RATE * IN_FLIGHT)
        await asyncio.wait_for(sender, 120)
        ledger.sent = stats.sent
        await ledger.settle(quiet=8.0, cap=90.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b = await pair.b.aterminate()
        record, length, kept = proxy.cuts[0]
        result = ledger.result(
            f"tcp-reset-mid-tls-record[{sm}]",
            queued=queued,
            cut=f"record {record} ({length} bytes) cut after {kept} bytes",
            connections=proxy.accepted,
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert 0 <= kept < length  # the reset came inside the record
        assert proxy.accepted >= 2, "A never reconnected after the reset"
        assert stats.sent == N, stats
        if sm == "sm-off":
            late = [i for i in ledger.missing_ids() if i >= cut_at]
            assert late == [], f"{len(late)} lost after the reset: {late[:20]}; {result.line()}"
        else:
            assert result.missing == 0, result.line()
        if SM_AND_OFF[sm].get("resend"):
            assert result.bounced == 0, result.line()
            assert result.delivered == N, result.line()
        assert (code_a, code_b) == (0, 0)
        assert clean_exit(pair.a) + clean_exit(pair.b) == []


#: how long the peer reads nothing while A's component keeps sending
STALL = float(os.environ.get("S2SFAST_FAULT_STALL", "10"))


@pytest.mark.parametrize("sm", list(SM_SETTINGS))
async def test_peer_that_stops_reading(tmp_path: Path, sm: str) -> None:
    """The proxy stops reading A's stream to B for STALL seconds while component A floods 1 KiB
    messages: A must not grow (RSS < 256 MiB) and its component must feel it (drain() blocks)
    or get bounces; when the peer reads again, every stanza is delivered or bounced."""
    prefix = f"stall{sm[3]}"
    async with running_pair(tmp_path, prefix, sm=SM_SETTINGS[sm], via_proxy=True) as (
        pair,
        a,
        b,
        ledger,
    ):
        proxy = pair.proxy
        assert proxy is not None
        stats = SendStats()
        loop = asyncio.get_running_loop()
        stop_flag: list[str] = []

        def stop() -> bool:
            return bool(stop_flag)

        sender = asyncio.create_task(
            send_burst(
                a, n=10_000_000, rate=20_000, pad=1000, stop=stop, stats=stats, deadline=STALL + 60
            )
        )
        await wait_until(lambda: len(b.delivered) >= 500, 60, "the flood reaching B")
        proxy.stall()
        sent_at_stall = stats.sent
        stall_end = loop.time() + STALL
        rss_a_stalled = 0
        while loop.time() < stall_end and not sender.done():
            rss_a_stalled = max(rss_a_stalled, pair.a.rss())
            if rss_a_stalled > RSS_LIMIT:
                break  # growing without bound: stop before the machine suffers
            await asyncio.sleep(0.05)
        felt = stats.longest_block_now(loop.time())
        sent_during_stall = stats.sent - sent_at_stall
        stop_flag.append("stall over")
        proxy.unstall()
        await asyncio.wait_for(sender, 90)
        ledger.sent = stats.sent
        await ledger.settle(quiet=8.0, cap=120.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b = await pair.b.aterminate()
        result = ledger.result(
            f"peer-stops-reading[{sm}]",
            queued=queued,
            sent_during_stall=sent_during_stall,
            longest_block_during_stall_s=round(felt, 1),
            rss_peak_mib={"a": mib(rss_a_stalled), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert rss_a_stalled < RSS_LIMIT, result.line()
        # backpressure felt by the sender, or bounces - never silent buffering
        assert felt >= 1.0 or result.bounced > 0, result.line()
        assert result.missing == 0, result.line()
        assert (code_a, code_b) == (0, 0)
        assert clean_exit(pair.a) + clean_exit(pair.b) == []


async def test_sigterm_while_the_peer_stops_reading(tmp_path: Path) -> None:
    """A gets SIGTERM while its stream to B is stalled with a backlog: A exits 0 without a
    traceback within its drain bound, closes its component stream cleanly, and bounces what it
    could not hand over; once the peer reads again, every stanza is delivered or bounced
    (delivered and bounced both, for what the stalled connection still carried, is counted)."""
    async with running_pair(tmp_path, "termstall", via_proxy=True) as (pair, a, b, ledger):
        proxy = pair.proxy
        assert proxy is not None
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
        await wait_until(lambda: len(b.delivered) >= 500, 60, "the flood reaching B")
        proxy.stall()
        await asyncio.sleep(3.0)
        stop_flag.append("sigterm")
        pair.a.process.signal(signal.SIGTERM)  # type: ignore[union-attr]
        await asyncio.wait_for(sender, 30)
        code_a = await pair.a.aterminate(timeout=60)
        how_a = pair.a.current.how
        await wait_until(lambda: not a.is_open(), 10, "A's component stream closed")
        proxy.unstall()
        ledger.sent = stats.sent
        await ledger.settle(quiet=6.0, cap=60.0)
        code_b = await pair.b.aterminate()
        result = ledger.result(
            "sigterm-while-peer-stops-reading",
            component_a_ends=a.ends,
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert (code_a, how_a) == (0, "sigterm"), pair.a.log()[-3000:]
        assert clean_exit(pair.a) == [], pair.a.log()[-3000:]
        assert len(a.ends) == 1 and a.ends[0].startswith("close"), a.ends
        assert result.missing == 0, result.line()
        assert code_b == 0 and clean_exit(pair.b) == []
