"""SIGKILL of the peer daemon in the middle of a burst, then its restart on the same ports
(issue 15, points 1 and 2): every stanza component A sent is delivered at B's component or
bounced back to A - none vanishes - and with XEP-0198 resend on, every one is delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from fault_harness import (  # noqa: E402
    IN_FLIGHT,
    RATE,
    SM_AND_OFF,
    SM_SETTINGS,
    N,
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


@pytest.mark.parametrize("sm", list(SM_AND_OFF))
async def test_sigkill_peer_mid_burst_then_restart(tmp_path: Path, sm: str) -> None:
    prefix = f"kill{sm[3]}"
    async with running_pair(tmp_path, prefix, sm=SM_AND_OFF[sm]) as (pair, a, b, ledger):
        stats = SendStats()
        sender = asyncio.create_task(send_burst(a, n=N, rate=RATE, stats=stats))
        # part way: a quarter of the burst has reached B's component
        await wait_until(lambda: len(b.delivered) >= N // 4, 60, "a quarter delivered")
        await asyncio.to_thread(pair.b.kill)
        # what the sender wrote after A could have seen the crash (IN_FLIGHT later)
        killed_at = stats.sent + int(RATE * IN_FLIGHT)
        await restart_with_component(pair.b, b)  # the same configuration: the same ports
        await asyncio.wait_for(sender, 120)
        ledger.sent = stats.sent
        await ledger.settle(quiet=8.0, cap=90.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b = await pair.b.aterminate()
        result = ledger.result(
            f"sigkill-peer-restart[{sm}]",
            queued=queued,
            killed_at=killed_at,
            sender=stats.stopped_by,
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert stats.sent == N, stats
        if sm == "sm-off":
            # without XEP-0198 what was written to the dead stream cannot be known (the kernel
            # took it); but nothing sent after the crash may vanish: not what waited for the
            # new stream, not what the sender wrote during the outage
            late = [i for i in ledger.missing_ids() if i >= killed_at]
            assert late == [], f"{len(late)} lost after the crash: {late[:20]}; {result.line()}"
        else:
            assert result.missing == 0, result.line()
        if SM_AND_OFF[sm].get("resend"):
            # queue and resend across the restart: nothing bounces, everything arrives
            assert result.bounced == 0, result.line()
            assert result.delivered == N, result.line()
        assert (code_a, code_b) == (0, 0)
        assert clean_exit(pair.a) + clean_exit(pair.b) == []


#: how long the restarted B runs before its component is back (components reconnect on their
#: own schedule, often seconds after the server they serve)
COMPONENT_LATE = 3.0


async def test_sigkill_peer_whose_component_reconnects_late(tmp_path: Path) -> None:
    """As above with resend on, but B's component connects COMPONENT_LATE seconds after B is
    back: A must keep what waits for the component's domain (queue, don't bounce) and deliver
    it all once the component is there."""
    prefix = "late"
    async with running_pair(tmp_path, prefix, sm=SM_SETTINGS["sm-resend"]) as (
        pair,
        a,
        b,
        ledger,
    ):
        stats = SendStats()
        sender = asyncio.create_task(send_burst(a, n=N, rate=RATE, stats=stats))
        await wait_until(lambda: len(b.delivered) >= N // 4, 60, "a quarter delivered")
        await asyncio.to_thread(pair.b.kill)
        await pair.b.astart()
        await asyncio.sleep(COMPONENT_LATE)
        await b.reconnect()
        await asyncio.wait_for(sender, 120)
        ledger.sent = stats.sent
        await ledger.settle(quiet=8.0, cap=90.0, queued=pair.queued)
        queued = pair.queued()
        code_a = await pair.a.aterminate()
        code_b = await pair.b.aterminate()
        result = ledger.result(
            "sigkill-peer-restart-component-late[sm-resend]",
            queued=queued,
            rss_peak_mib={"a": mib(pair.a.rss_peak), "b": mib(pair.b.rss_peak)},
            exits={"a": exit_codes(pair.a), "b": exit_codes(pair.b)},
        )
        report(result)

        assert stats.sent == N, stats
        assert result.missing == 0, result.line()
        assert result.bounced == 0, result.line()
        assert result.delivered == N, result.line()
        assert (code_a, code_b) == (0, 0)
        assert clean_exit(pair.a) + clean_exit(pair.b) == []
