"""Bounce floods are logged as counts, not a line per stanza: s2sfast.lograte.Tally on its own,
and the daemon's "no component serves" line under a flood from a real component on loopback."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from daemon_helpers import RawComponent, component_daemon

from s2sfast.lograte import MAX_KEYS, Tally


async def test_the_first_occurrence_is_logged_the_rest_counted_per_interval() -> None:
    reports: list[tuple[object, int, float]] = []
    tally = Tally(lambda key, count, seconds: reports.append((key, count, seconds)), 0.05)
    first = [tally.add("a.test") for _ in range(10_000)]
    assert first[0] is True and not any(first[1:])
    assert tally.add("b.test") is True  # another key has its own first line
    await asyncio.sleep(0.1)
    assert [(k, c) for k, c, _ in reports] == [("a.test", 9_999)]
    assert reports[0][2] > 0
    # a steady flood over several intervals: every occurrence is either logged at once or
    # counted in exactly one report, and the lines are a few, not one per occurrence
    reports.clear()
    logged_now = 0
    for _ in range(8):
        logged_now += sum(tally.add("a.test") for _ in range(500))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.15)
    assert logged_now + sum(count for _, count, _ in reports) == 8 * 500
    assert logged_now + len(reports) <= 2 * 8  # at most a line and a report per batch
    # quiet for whole intervals: forgotten, the next one is logged at once again
    assert tally.add("a.test") is True


async def test_many_keys_are_bounded() -> None:
    reports: list[tuple[object, int, float]] = []
    tally = Tally(lambda key, count, seconds: reports.append((key, count, seconds)), 10.0)
    for key in range(MAX_KEYS):
        tally.add(key)
        tally.add(key)
    assert reports == []
    tally.add("one more")  # the table is full: the counts are reported early
    assert len(reports) == MAX_KEYS and all(count == 1 for _, count, _ in reports)
    tally.flush()


def test_without_a_loop_every_occurrence_is_logged() -> None:
    tally = Tally(lambda key, count, seconds: None)
    assert all(tally.add("a.test") for _ in range(3))


pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")


async def test_a_flood_to_an_unserved_subdomain_logs_a_few_info_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 stanzas to nobody.a.test (no component serves it): each is answered
    service-unavailable, and logged at DEBUG; INFO has the first and a count."""
    daemon, port = await component_daemon(tmp_path)
    caplog.set_level(logging.DEBUG, logger="s2sfast.daemon")
    try:
        comp, _ = await RawComponent.connect(port, "bot.a.test", "pw")
        n = 2_000
        comp.send(
            b"".join(
                f"<message from='x@bot.a.test' to='y@nobody.a.test' id='m{i}'/>".encode()
                for i in range(n)
            )
        )
        errors = 0
        while errors < n:
            event = await comp.next_event(20)
            assert event is not None
            if getattr(event, "type", None) == "error":
                errors += 1
        await asyncio.sleep(1.3)  # the interval's count is reported
        lines = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "s2sfast.daemon" and "no component serves nobody.a.test" in r.getMessage()
        ]
        info = [m for level, m in lines if level == logging.INFO]
        debug = [m for level, m in lines if level == logging.DEBUG]
        assert info[0] == "no component serves nobody.a.test: service-unavailable"
        assert len(info) <= 4, info
        counted = sum(int(m.split(" for ")[1].split()[0]) for m in info[1:])
        assert counted == n - 1 == len(debug), (info, len(debug))
        comp.close()
    finally:
        await daemon.stop()
