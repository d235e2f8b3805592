"""Shutdown drains the components before it closes them: what a component sent (and what the
kernel still held of it, unread behind backpressure) is routed or bounced back to it while its
stream is open, then ``</stream:stream>``; a component that keeps sending and never closes is
cut at the bounds, and every stanza it sent is accounted for. One in-process Daemon (a.test)
with raw XEP-0114 components on loopback; ``Daemon.stop`` is what SIGTERM/SIGINT run."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import RawComponent, component_daemon, component_message

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from s2sfast.framing import StreamFramer  # noqa: E402
from s2sfast.protocol.component import (  # noqa: E402
    COMPONENT_NS,
    ComponentMachine,
    Route,
    Shutdown,
    handshake_digest,
)
from s2sfast.protocol.events import Close, SetTimer, TimerFired  # noqa: E402
from s2sfast.server.daemon import Daemon  # noqa: E402

_CONDITIONS = ("service-unavailable", "resource-constraint", "recipient-unavailable")


class Counting:
    """Reads one component's stream: messages delivered, bounces (by condition), and how the
    stream ended. With *answer_close* it answers the node's ``</stream:stream>`` with its own."""

    def __init__(self, comp: RawComponent, *, answer_close: bool = True) -> None:
        self.comp = comp
        self.answer_close = answer_close
        self.delivered: collections.Counter[str] = collections.Counter()
        self.bounced: collections.Counter[str] = collections.Counter()
        self.conditions: collections.Counter[str] = collections.Counter()
        self.after_close: list[Any] = []
        self.node_closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.end = ""

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _count(self, event: Any) -> None:
        kind = type(event).__name__
        if kind == "StreamClose":
            self.node_closed.set()
            if self.answer_close:
                self.comp.send(b"</stream:stream>")
            return
        if kind != "Stanza" or event.name != "message":
            return
        if self.node_closed.is_set():
            self.after_close.append(event)  # nothing may follow the node's close
        if event.type == "error":
            self.bounced[event.id] += 1
            raw = bytes(event.raw)
            for condition in _CONDITIONS:
                if f"<{condition} ".encode() in raw or f"<{condition}/>".encode() in raw:
                    self.conditions[condition] += 1
        else:
            self.delivered[event.id] += 1

    async def _run(self) -> None:
        comp = self.comp
        for event in comp.events:  # framed together with the handshake
            self._count(event)
        comp.events.clear()
        try:
            while True:
                chunk = await comp.reader.read(65536)
                if not chunk:
                    self.end = "close" if self.node_closed.is_set() else "eof"
                    return
                for event in comp.framer.feed(chunk):
                    self._count(event)
        except ConnectionResetError:
            self.end = "reset"


def _conn(daemon: Daemon, domain: str) -> Any:
    conn = daemon.registry.get(domain)
    assert conn is not None
    return conn


# --- the machine: CLOSING after our clean close (RFC 6120 4.4) ---------------------------------


def _open_machine(close_timeout: float = 2.0) -> tuple[ComponentMachine, StreamFramer]:
    machine = ComponentMachine(
        password="pw",
        is_hosted=lambda d: d.endswith("a.test"),
        is_taken=lambda d: False,
        stream_id="s1",
        close_timeout=close_timeout,
    )
    framer = StreamFramer(default_ns=COMPONENT_NS)
    machine.start()
    header = (
        "<stream:stream xmlns='jabber:component:accept' "
        "xmlns:stream='http://etherx.jabber.org/streams' to='bot.a.test'>"
        f"<handshake>{handshake_digest('s1', 'pw')}</handshake>"
    )
    for event in framer.feed(header.encode()):
        machine.receive(event)
    assert machine.state == "OPEN"
    return machine, framer


def _feed(machine: ComponentMachine, framer: StreamFramer, data: str) -> list[Any]:
    out: list[Any] = []
    for event in framer.feed(data.encode()):
        out.extend(machine.receive(event))
    return out


def test_after_our_close_the_component_may_still_send_until_its_own_close() -> None:
    machine, framer = _open_machine()
    actions = machine.receive(Shutdown(text="the node is shutting down"))
    assert actions == [
        SetTimer(seconds=2.0),
        Close(condition=None, text="the node is shutting down"),
    ]
    assert machine.state == "CLOSING" and machine.closed
    routed = _feed(machine, framer, "<message from='x@bot.a.test' to='y@b.test' id='late'/>")
    assert [type(a) for a in routed] == [Route] and routed[0].to == "y@b.test"
    assert machine.receive(Shutdown()) == []  # closing already: nothing more to send
    done = _feed(machine, framer, "</stream:stream>")
    assert machine.state == "CLOSED"
    assert done == [SetTimer(seconds=None), Close(condition=None, text="the component closed too")]


def test_a_component_that_never_answers_our_close_is_cut_at_the_timer() -> None:
    machine, _ = _open_machine(close_timeout=1.5)
    machine.receive(Shutdown())
    actions = machine.receive(TimerFired())
    assert machine.state == "CLOSED"
    close = actions[-1]
    assert isinstance(close, Close) and close.condition is None
    assert "within 1.5 s" in (close.text or "")


def test_a_bad_stanza_after_our_close_still_fails_the_stream() -> None:
    machine, framer = _open_machine()
    machine.receive(Shutdown())
    actions = _feed(machine, framer, "<message from='x@elsewhere.test' to='y@b.test'/>")
    assert machine.state == "ERROR"
    assert actions[-1] == Close(condition="invalid-from", text=actions[-1].text)


# --- a daemon on loopback -------------------------------------------------------------------


@pytest.mark.slow
async def test_stanzas_left_unread_behind_backpressure_are_routed_or_bounced(
    tmp_path: Path,
) -> None:
    """two.a.test stops reading, so the daemon stops reading one.a.test and one's last
    stanzas sit unread in the kernel. Daemon.stop (what SIGTERM runs) reads them all: each is
    delivered to two (which reads again meanwhile) or bounced to one with service-unavailable
    before one's stream closes; then both streams close cleanly."""
    daemon, port = await component_daemon(tmp_path, "  max_fsm_queue = 100")
    stopped = False
    try:
        one, _ = await RawComponent.connect(port, "one.a.test", "pw")
        two, _ = await RawComponent.connect(port, "two.a.test", "pw")
        src = _conn(daemon, "one.a.test")
        two.reader._transport.pause_reading()  # type: ignore[attr-defined]
        counting_one, counting_two = Counting(one), Counting(two)
        counting_one.start()
        sent = 0
        batch_size = 100
        for _ in range(400):  # up to 40,000 stanzas of ~1 KiB
            one.send(b"".join(component_message(sent + i, 900) for i in range(batch_size)))
            sent += batch_size
            try:
                await asyncio.wait_for(one.writer.drain(), 0.5)
            except TimeoutError:
                break  # the daemon stopped reading one: backpressure
        # a little more for the kernel (and one's own buffer) to hold
        for _ in range(5):
            one.send(b"".join(component_message(sent + i, 900) for i in range(batch_size)))
            sent += batch_size
        assert src.reading_paused, "the daemon never stopped reading the sender"

        stopping = asyncio.ensure_future(daemon.stop())
        await asyncio.sleep(0.5)
        two.reader._transport.resume_reading()  # type: ignore[attr-defined]
        counting_two.start()
        await asyncio.wait_for(stopping, 60)
        stopped = True
        for counting in (counting_one, counting_two):
            assert counting.task is not None
            await asyncio.wait_for(counting.task, 10)

        ids = [f"m{i}" for i in range(sent)]
        missing = [i for i in ids if not counting_two.delivered[i] and not counting_one.bounced[i]]
        both = [i for i in ids if counting_two.delivered[i] and counting_one.bounced[i]]
        twice = [i for i in ids if counting_two.delivered[i] > 1 or counting_one.bounced[i] > 1]
        figures = (
            f"sent {sent}, delivered {len(counting_two.delivered)}, "
            f"bounced {len(counting_one.bounced)} {dict(counting_one.conditions)}"
        )
        assert missing == [], f"{len(missing)} neither delivered nor bounced; {figures}"
        assert both == [] and twice == [], figures
        assert counting_one.conditions["service-unavailable"] > 0, figures
        assert set(counting_one.conditions) <= {"service-unavailable", "resource-constraint"}
        assert counting_one.after_close == [] and counting_two.after_close == []
        assert (counting_one.end, counting_two.end) == ("close", "close")
    finally:
        if not stopped:
            await daemon.stop()


@pytest.mark.slow
async def test_a_component_that_keeps_sending_and_never_closes_is_cut(tmp_path: Path) -> None:
    """one.a.test floods two.a.test (which reads nothing) through the whole shutdown and never
    answers the node's </stream:stream>: the drain ends at its bound, one is cut at the close
    timeout, and every stanza it sent is delivered, bounced back to it, or (only what crossed
    the node's </stream:stream> and could not be routed) counted by the node as unanswerable.
    two, which never reads, is cut before one closes, and what waited for it bounces to one."""
    daemon, port = await component_daemon(tmp_path, "  max_fsm_queue = 100")
    for server in daemon.servers:
        server._close_timeout = 1.0  # the machines below are made with it
    stopped = False
    try:
        one, _ = await RawComponent.connect(port, "one.a.test", "pw")
        two, _ = await RawComponent.connect(port, "two.a.test", "pw")
        two.reader._transport.pause_reading()  # type: ignore[attr-defined]
        conn_one = _conn(daemon, "one.a.test")
        counting_one = Counting(one, answer_close=False)
        counting_one.start()
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while not counting_one.node_closed.is_set() and counting_one.task is not None:
                if counting_one.task.done():
                    return
                one.send(b"".join(component_message(sent + i, 200) for i in range(20)))
                sent += 20
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(one.writer.drain(), 0.5)
                await asyncio.sleep(0.005)

        flooding = asyncio.ensure_future(flood())
        await asyncio.sleep(0.5)
        await asyncio.wait_for(daemon.stop(), 60)
        stopped = True
        await asyncio.wait_for(flooding, 10)
        assert counting_one.task is not None
        await asyncio.wait_for(counting_one.task, 10)
        # two reads at last: what the kernel still held for it was delivered before its cut
        delivered: collections.Counter[str] = collections.Counter()
        with contextlib.suppress(ConnectionError):
            two.reader._transport.resume_reading()  # type: ignore[attr-defined]
            while chunk := await asyncio.wait_for(two.reader.read(65536), 10):
                for event in two.framer.feed(chunk):
                    if getattr(event, "name", None) == "message" and event.type != "error":
                        delivered[event.id] += 1

        ids = [f"m{i}" for i in range(sent)]
        accounted = [i for i in ids if delivered[i] or counting_one.bounced[i]]
        late = conn_one._late_unanswered
        figures = (
            f"sent {sent}, delivered {len(delivered)}, bounced {len(counting_one.bounced)} "
            f"{dict(counting_one.conditions)}, unanswerable after the close {late}"
        )
        assert counting_one.node_closed.is_set(), figures
        assert counting_one.end in ("close", "reset"), counting_one.end
        assert counting_one.after_close == [], figures
        assert counting_one.conditions["service-unavailable"] > 0, figures
        # only the unanswered tail is not accounted for, and the node counted exactly those
        assert len(accounted) + late == sent, figures
        assert ids[: len(accounted)] == sorted(accounted, key=lambda i: int(i[1:])), figures
    finally:
        if not stopped:
            await daemon.stop()
