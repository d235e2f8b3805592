"""The daemon's data path on real sockets: batched writes, backpressure from a component that
does not read back to the component that sends, and a stuck component cut off with its queued
stanzas bounced. One in-process Daemon (a.test) with two raw XEP-0114 components on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import RawComponent, component_daemon, component_message

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from s2sfast.server.daemon import Daemon  # noqa: E402


async def _component(port: int, domain: str) -> RawComponent:
    comp, answer = await RawComponent.connect(port, domain, "pw")
    assert answer.name == "handshake", answer
    return comp


def _conn(daemon: Daemon, domain: str) -> Any:
    conn = daemon.registry.get(domain)
    assert conn is not None
    return conn


async def _read_messages(comp: RawComponent, count: int, timeout: float = 30.0) -> list[Any]:
    got: list[Any] = []
    while len(got) < count:
        event = await comp.next_event(timeout)
        assert event is not None, f"stream ended after {len(got)} of {count}"
        if getattr(event, "name", None) == "message":
            got.append(event)
    return got


async def test_stanzas_for_one_connection_leave_in_one_write_per_read(tmp_path: Path) -> None:
    """500 stanzas arriving in a few reads leave towards the other component in no more
    writes than there were reads: one transport.write per loop iteration, not per stanza."""
    daemon, port = await component_daemon(tmp_path)
    try:
        one = await _component(port, "one.a.test")
        two = await _component(port, "two.a.test")
        src, dst = _conn(daemon, "one.a.test"), _conn(daemon, "two.a.test")
        reads = writes = 0
        real_received, real_write = src.data_received, dst.transport.write

        def counting_received(data: bytes) -> None:
            nonlocal reads
            reads += 1
            real_received(data)

        def counting_write(data: bytes) -> None:
            nonlocal writes
            writes += 1
            real_write(data)

        src.data_received = counting_received
        dst.transport.write = counting_write
        n = 500
        one.send(b"".join(component_message(i) for i in range(n)))
        got = await _read_messages(two, n)
        assert [s.id for s in got] == [f"m{i}" for i in range(n)]
        assert 1 <= writes <= reads < n, (writes, reads)
        one.close()
        two.close()
    finally:
        await daemon.stop()


async def test_a_component_that_does_not_read_stops_the_sender_being_read(tmp_path: Path) -> None:
    """two.a.test reads nothing: the daemon holds at most max_fsm_queue stanzas for it and
    stops reading one.a.test (TCP pushes back on the sender), bounces nothing; once two reads
    again every stanza arrives, once and in order. (The bound must cover what one read of the
    sender carries, <= 256 KiB here: the rest of a read is routed after the source pauses.)"""
    daemon, port = await component_daemon(tmp_path, "  max_fsm_queue = 1000")
    try:
        one = await _component(port, "one.a.test")
        two = await _component(port, "two.a.test")
        src, dst = _conn(daemon, "one.a.test"), _conn(daemon, "two.a.test")
        two_reading = two.reader._transport  # type: ignore[attr-defined]
        two_reading.pause_reading()  # the component stops reading its socket
        sent = 0
        blocked = False
        batch = b"".join(component_message(i, 900) for i in range(100))
        for _ in range(400):  # up to 40,000 stanzas of ~1 KiB
            one.send(batch)
            sent += 100
            try:
                await asyncio.wait_for(one.writer.drain(), 0.5)
            except TimeoutError:
                blocked = True  # the daemon does not read us any more: backpressure
                break
        assert blocked, "the sender never felt backpressure"
        assert src.reading_paused and dst.congested
        assert dst.queued <= 1000
        two_reading.resume_reading()
        # every stanza the sender wrote arrives, once and in order, and nothing bounced
        reading = asyncio.ensure_future(_read_messages(two, sent))
        await asyncio.wait_for(one.writer.drain(), 30)
        got = await reading
        assert [s.id for s in got] == [f"m{i % 100}" for i in range(sent)]
        assert not any(getattr(e, "type", None) == "error" for e in one.events)
        one.close()
        two.close()
    finally:
        await daemon.stop()


async def test_a_stuck_component_is_closed_and_its_queue_bounced(tmp_path: Path) -> None:
    """Past the stall timeout a component that reads nothing gets resource-constraint and
    what waited for it bounces to the sender (service-unavailable)."""
    daemon, port = await component_daemon(tmp_path, "  max_fsm_queue = 50")
    for server in daemon.servers:
        server.stall_timeout = 0.5
    try:
        one = await _component(port, "one.a.test")
        two = await _component(port, "two.a.test")
        two.reader._transport.pause_reading()  # type: ignore[attr-defined]
        batch = b"".join(component_message(i, 4000) for i in range(50))
        for _ in range(40):  # 8 MiB, more than the socket buffers hold
            one.send(batch)
            try:
                await asyncio.wait_for(one.writer.drain(), 0.2)
            except TimeoutError:
                break
        errors: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not errors and loop.time() < deadline:
            event = await one.next_event(20)
            if getattr(event, "type", None) == "error":
                errors.append(event)
        assert errors and b"service-unavailable" in errors[0].raw
        assert daemon.registry.get("two.a.test") is None  # cut off
        one.close()
        two.close()
    finally:
        await daemon.stop()
