"""XEP-0198 between two real nodes on 127.0.0.1: enabled on the streams of both directions,
acks that empty the unacked queues, and a stream killed mid-burst that loses nothing - every
stanza is delivered (resend on: duplicates counted) or bounced to its sender (resend off)."""

from __future__ import annotations

import asyncio

import pytest
from core_helpers import message, tls_spec

from s2sfast.config import StreamManagementOptions
from s2sfast.protocol.sm import REQUEST
from s2sfast.router import stanza_from_bytes


def _out(node, remote):
    """The node's outbound stream to *remote* (its machine)."""
    (stream,) = [
        s for s in node.router.streams if s.direction == "out" and s.machine.remote == remote
    ]
    return stream


def _ins(node):
    return [s for s in node.router.streams if s.direction == "in"]


async def _until(predicate, timeout=10.0):
    """Poll *predicate* (a hang guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_sm_is_enabled_on_both_streams_and_acks_empty_the_queues(federation):
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    for i in range(250):
        await a.send(message("u@a.test", "v@b.test", f"ab{i}", id=f"ab{i}"))
        await b.send(message("v@b.test", "u@a.test", f"ba{i}", id=f"ba{i}"))
    assert [(await b.inbox.get()).id for _ in range(250)] == [f"ab{i}" for i in range(250)]
    assert [(await a.inbox.get()).id for _ in range(250)] == [f"ba{i}" for i in range(250)]
    for node, remote in ((a, "b.test"), (b, "a.test")):
        machine = _out(node, remote).machine
        assert machine.sm_in is not None  # the peer answered <enable/> with <enabled/>
        # every stanza was acknowledged (the ack timer asks for the last partial interval)
        await _until(lambda m=machine: not m.sm_out.unacked)
        assert machine.sm_out.sent == machine.sm_out.acked == 250
    for node in (a, b):
        (inbound,) = _ins(node)
        assert inbound.machine.sm_in.received == inbound.machine.sm_in.h == 250


async def _warm_pair(federation):
    """A (a.test) and B (b.test) with one stanza delivered and acknowledged: A's outbound
    stream to B and its XEP-0198 state, nothing in flight."""
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "warm", id="warm"))
    assert (await b.inbox.get()).id == "warm"
    stream = _out(a, "b.test")
    sm = stream.machine.sm_out
    await _until(lambda: not sm.unacked)
    return a, b, stream, sm


async def test_a_burst_asks_for_acks_as_it_goes(federation):
    """A burst written without the loop turning (Node.send does not yield while nothing is
    congested) carries an <r/> every ack_freq stanzas and with each write past the high-water
    mark, not one at its end: the peer's acks come back while the sender goes on."""
    a, b, stream, sm = await _warm_pair(federation)
    written: list[bytes] = []
    real_write = stream.transport.write

    def transport_write(data):
        written.append(bytes(data))
        real_write(data)

    stream.transport.write = transport_write
    n = 1000  # ~120 KB: below the high-water mark, so one write once the loop turns
    for i in range(n):
        await a.send(message("u@a.test", "v@b.test", "x" * 40, id=f"b{i}"))
    assert written == []  # nothing left before the loop's next turn
    assert [(await b.inbox.get()).id for _ in range(n)] == [f"b{i}" for i in range(n)]
    await _until(lambda: not sm.unacked)
    assert sm.acked == n + 1
    assert not stream.tls  # plaintext on the wire: its <r/>s can be counted
    wire = b"".join(written)
    asks = wire.count(REQUEST)
    assert asks >= n // sm.request_every, asks  # not one per burst
    assert wire.index(REQUEST) < wire.index(b"id='b100'")  # the first within the first 101


async def test_stanzas_and_close_in_one_read_are_all_acknowledged(federation):
    """B counts a read's handled stanzas at once (one run per read), but before it takes the
    peer's </stream:stream>: its final <a/> covers every stanza of that read, so A resends
    nothing (no duplicates at B) when stanzas, <r/> and the close arrive together."""
    a, b, stream, sm = await _warm_pair(federation)
    requeued = []
    a.on_event(lambda kind, f: requeued.append(f) if kind == "sm-requeue" else None)
    n = 150
    for i in range(n):
        await a.send(message("u@a.test", "v@b.test", "c", id=f"c{i}"))
    stream.close("test")  # same loop turn: stanzas, <r/>s and </stream:stream> in one write
    assert [(await b.inbox.get()).id for _ in range(n)] == [f"c{i}" for i in range(n)]
    await _until(lambda: stream.closed.done())
    assert sm.acked == n + 1 and not requeued
    (inbound,) = _ins(b) or [None]
    assert inbound is None or inbound.machine.sm_in.h == n + 1
    await asyncio.sleep(0.1)
    assert await b.inbox.nothing(0.2)  # nothing came twice


async def test_a_peer_without_sm_gets_plain_streams(federation):
    off = StreamManagementOptions(enabled=False)
    nodes = await federation(
        {"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"], "stream_management": off}}
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "x", id="x"))
    await b.send(message("v@b.test", "u@a.test", "y", id="y"))
    assert (await b.inbox.get()).id == "x" and (await a.inbox.get()).id == "y"
    # B does not offer <sm/>, so A does not enable it; B does not enable it on its own stream
    assert _out(a, "b.test").machine.sm_out is None
    assert _out(b, "a.test").machine.sm_out is None
    assert all(s.machine.sm_in is None for s in _ins(a) + _ins(b))


def _ids(stanzas):
    return [s.id for s in stanzas]


async def _kill_mid_burst(
    federation, *, resend: bool, n: int = 3000, kill_at: int = 1000, tls: tuple = ()
):
    """A sends *n* numbered messages to B; B's inbound stream is aborted (TCP reset) right
    after its handler got *kill_at* of them. *tls*: (certfile factory, CA file) for TLS
    required on both sides (the reset then cuts TLS records). Returns (delivered, bounced)."""
    sm = StreamManagementOptions(resend=resend)
    opts = {"max_queue": 10 * n, "retry_initial": 0.05, "stream_management": sm}
    spec = {"A": {"hosts": ["a.test"], **opts}, "B": {"hosts": ["b.test"]}}
    if tls:
        certfile, cafile = tls
        for name, host in (("A", "a.test"), ("B", "b.test")):
            spec[name].update(mode="required", certfile=certfile(host), cafile=cafile)
    nodes = await federation(spec)
    a, b = nodes["A"], nodes["B"]
    killed = []

    def killer(stanza):
        if len(b.inbox.seen) >= kill_at and not killed:
            (victim,) = _ins(b)
            killed.append(victim.machine.sm_in.h)
            victim.transport.abort()  # RST: what was written to it and not acked is in doubt

    b.on_stanza(killer)
    for i in range(n):
        await a.send(message("u@a.test", "v@b.test", "z" * 100, id=f"k{i}"))
        if i % 50 == 49:
            await asyncio.sleep(0.002)  # a paced sender (~25,000/s): acks flow meanwhile
    want = {f"k{i}" for i in range(n)}

    def accounted():
        bounced = {s.id for s in a.inbox.seen if s.type == "error"}
        return want <= set(_ids(b.inbox.seen)) | bounced

    await _until(accounted, timeout=30)
    assert killed, "the stream was never killed"
    delivered = [i for i in _ids(b.inbox.seen) if i in want]
    bounced = [s for s in a.inbox.seen if s.type == "error"]
    return delivered, bounced


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_killed_stream_mid_burst_resends_everything_unacknowledged(
    federation, tls, tls_certfile, tls_ca_file
):
    tls_files = (tls_certfile, tls_ca_file) if tls else ()
    delivered, bounced = await _kill_mid_burst(federation, resend=True, tls=tls_files)
    assert bounced == []  # resend on: nothing bounced, nothing lost
    assert set(delivered) == {f"k{i}" for i in range(3000)}
    duplicates = len(delivered) - len(set(delivered))
    # only stanzas B handled whose ack died with the stream come twice: what was in flight
    print(f"resend: 3000 sent, {len(set(delivered))} delivered, {duplicates} duplicates")
    assert duplicates <= 1000 + 1000  # at most those B had when killed (plus one read batch)


async def test_killed_stream_mid_burst_bounces_everything_unacknowledged(federation):
    delivered, bounced = await _kill_mid_burst(federation, resend=False)
    assert bounced, "the unacknowledged stanzas must come back"
    bounced_ids = [b.id for b in bounced]
    for error in bounced:
        assert b"recipient-unavailable" in error.raw
        assert error.from_ == "v@b.test" and error.to == "u@a.test"
    assert len(bounced_ids) == len(set(bounced_ids))  # each bounced once
    assert set(delivered) | set(bounced_ids) == {f"k{i}" for i in range(3000)}
    assert len(delivered) == len(set(delivered))  # no resend: nothing twice
    both = set(delivered) & set(bounced_ids)  # handled by B, ack lost with the stream
    print(
        f"bounce: 3000 sent, {len(set(delivered))} delivered, {len(bounced_ids)} bounced, "
        f"{len(both)} of them delivered too"
    )


async def test_ack_waits_for_an_async_handler(federation):
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    release = asyncio.Event()

    async def slow(stanza):
        await release.wait()

    b.on_stanza(slow)
    await a.send(message("u@a.test", "v@b.test", "held", id="held"))
    assert (await b.inbox.get()).id == "held"
    out = _out(a, "b.test").machine
    await asyncio.sleep(1.5)  # past the ack timer: A asked, B owes the ack
    assert out.sm_out.sent == 1 and len(out.sm_out.unacked) == 1
    release.set()
    await _until(lambda: not out.sm_out.unacked)
    assert out.sm_out.acked == 1


async def test_node_send_waits_while_half_the_window_is_unacknowledged(federation):
    """Node.send returns at once until half of XEP-0198's unacked window is in flight, then
    waits for an ack (here B's handler holds every stanza, so no ack comes until it lets go)."""
    sm = StreamManagementOptions(buffer_max=20, ack_freq=5)
    nodes = await federation(
        {"A": {"hosts": ["a.test"], "stream_management": sm}, "B": {"hosts": ["b.test"]}}
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "warm", id="warm"))
    assert (await b.inbox.get()).id == "warm"
    out = _out(a, "b.test").machine
    await _until(lambda: not out.sm_out.unacked)
    release = asyncio.Event()

    async def slow(stanza):
        await release.wait()

    b.on_stanza(slow)
    sent = []

    async def sender():
        for i in range(50):
            await a.send(message("u@a.test", "v@b.test", "w", id=f"w{i}"))
            sent.append(i)

    task = asyncio.ensure_future(sender())
    await _until(lambda: len(out.sm_out.unacked) >= 10)
    await asyncio.sleep(0.3)
    # the 10th stanza is out (half of 20) and its Node.send waits for an ack
    assert not task.done() and len(out.sm_out.unacked) == 10 and len(sent) == 9
    release.set()
    await asyncio.wait_for(task, 10)
    ids = [(await b.inbox.get()).id for _ in range(50)]
    assert ids == [f"w{i}" for i in range(50)]


@pytest.mark.parametrize("h", [b"2", b"4294967295"])
async def test_an_ack_for_stanzas_never_sent_is_a_stream_error(federation, h):
    """B (a raw peer here) acknowledges more than A sent: XEP-0198's handled-count-too-high."""
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a = nodes["A"]
    await a.send(message("u@a.test", "v@b.test", "one", id="one"))
    assert (await nodes["B"].inbox.get()).id == "one"
    stream = _out(a, "b.test")
    stream.data_received(b"<a xmlns='urn:xmpp:sm:3' h='" + h + b"'/>")
    assert stream.machine.state == "ERROR"
    assert stream.machine.error.condition == "undefined-condition"
    # the stanza that was in doubt goes out again on a new stream (resend is the default)
    got = await nodes["B"].inbox.get()
    assert got.id == "one"
    assert stanza_from_bytes(got.raw).id == "one"


def _tls(host, tls_certfile, tls_ca_file, **extra):
    return tls_spec(tls_certfile, tls_ca_file, host, **extra)


async def test_sasl_external_both_ways_then_sm(federation, tls_certfile, tls_ca_file):
    """Certificates trusted both ways and sasl_external on: both streams authenticate with
    SASL EXTERNAL (a stream restart after <success/>), then enable XEP-0198 as after dialback."""
    nodes = await federation(
        {
            "A": _tls("a.test", tls_certfile, tls_ca_file, sasl_external=True),
            "B": _tls("b.test", tls_certfile, tls_ca_file, sasl_external=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    for i in range(20):
        await a.send(message("u@a.test", "v@b.test", f"{i}", id=f"ab{i}"))
        await b.send(message("v@b.test", "u@a.test", f"{i}", id=f"ba{i}"))
    assert [(await b.inbox.get()).id for _ in range(20)] == [f"ab{i}" for i in range(20)]
    assert [(await a.inbox.get()).id for _ in range(20)] == [f"ba{i}" for i in range(20)]
    for node, remote in ((a, "b.test"), (b, "a.test")):
        conns = node.connections()
        assert {(c.direction, c.auth_method, c.tls) for c in conns} == {
            ("in", "sasl-external", True),
            ("out", "sasl-external", True),
        }
        machine = _out(node, remote).machine
        await _until(lambda m=machine: not m.sm_out.unacked)
        assert machine.sm_out.acked == 20 and machine.sm_in is not None


async def test_sasl_external_needs_both_sides(federation, tls_certfile, tls_ca_file):
    """Only A wants SASL EXTERNAL: B does not offer it, so dialback authenticates."""
    nodes = await federation(
        {
            "A": _tls("a.test", tls_certfile, tls_ca_file, sasl_external=True),
            "B": _tls("b.test", tls_certfile, tls_ca_file),
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "x", id="x"))
    assert (await nodes["B"].inbox.get()).id == "x"
    assert {c.auth_method for c in nodes["A"].connections()} == {"dialback"}


async def test_stop_right_after_a_burst_loses_nothing(federation):
    """Node.stop() closes the stream with stanzas unacknowledged: the peer's last <a/> (sent
    before its </stream:stream>) settles them; whatever it does not cover bounces."""
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "first", id="first"))
    assert (await b.inbox.get()).id == "first"
    n = 2000
    for i in range(n):
        await a.send(message("u@a.test", "v@b.test", "s", id=f"s{i}"))
    machine = _out(a, "b.test").machine
    in_doubt = len(machine.sm_out.unacked)
    await a.stop(timeout=3)
    delivered = set(_ids(b.inbox.seen)) - {"first"}
    bounced = {s.id for s in a.inbox.seen if s.type == "error"}
    assert delivered | bounced == {f"s{i}" for i in range(n)}
    assert not (delivered & bounced)  # the final ack covered everything B handled
    print(f"stop: {n} sent, {in_doubt} unacked at stop, {len(bounced)} bounced")


async def test_peer_crash_and_restart_mid_burst_delivers_everything(federation, dns_server):
    """B 'crashes' (every connection reset, its listener gone, nothing closed cleanly) a
    third of the way through A's burst and a new B starts on the same port 0.3 s later:
    with resend on, every stanza reaches one of the two B's; duplicates are only the ones
    the first B handled without its ack getting back."""
    from core_helpers import Inbox

    from s2sfast.net.dns import Resolver
    from s2sfast.node import Node

    opts = {"max_queue": 50_000, "retry_initial": 0.05}
    nodes = await federation({"A": {"hosts": ["a.test"], **opts}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    requeued = []
    a.on_event(lambda kind, f: requeued.append(f["count"]) if kind == "sm-requeue" else None)
    n, crash_at = 3000, 1000
    b2 = None
    try:
        for i in range(n):
            if i == crash_at:
                for server in b._servers:
                    server.close()
                for stream in list(b.router.streams):
                    stream.abort()
                await asyncio.sleep(0.3)
                b2 = Node(b.config, resolver=Resolver([dns_server.nameserver], timeout=1))
                b2.inbox = Inbox()
                b2.on_stanza(b2.inbox)
                await b2.start()
            await a.send(message("u@a.test", "v@b.test", "c", id=f"c{i}"))
            if i % 50 == 17:
                await asyncio.sleep(0.002)
        want = {f"c{i}" for i in range(n)}

        def got():
            return [s.id for s in b.inbox.seen + b2.inbox.seen if s.id in want]

        await _until(lambda: set(got()) == want, timeout=30)
        assert not [s for s in a.inbox.seen if s.type == "error"]
        dup = len(got()) - len(want)
        print(
            f"crash+restart: {n} sent, {len(set(got()))} delivered, {dup} duplicates, "
            f"{sum(requeued)} resent"
        )
        assert len(b.inbox.seen) < n  # the crash did cut the burst
        assert dup <= sum(requeued)  # a duplicate is only ever a resent stanza
    finally:
        if b2 is not None:
            await b2.stop(timeout=3)


class _SlowHop:
    """A local route (like a component whose socket is full): takes stanzas into its queue and
    stays congested until released; what XEP-0198 must not acknowledge early."""

    def __init__(self) -> None:
        self.queued: list = []
        self._drained = asyncio.Event()

    def deliver(self, stanza) -> bool:
        self.queued.append(stanza)
        return True

    @property
    def congested(self) -> bool:
        return not self._drained.is_set()

    async def drained(self) -> None:
        await self._drained.wait()

    def hold_source(self, source) -> None:
        pass  # the real hops stop reading the source; not what this test is about

    def release(self) -> None:
        self._drained.set()


async def test_no_ack_for_a_stanza_queued_behind_a_congested_hop(federation):
    nodes = await federation(
        {"A": {"hosts": ["a.test"], "addresses": {"comp.b.test": "B"}}, "B": {"hosts": ["b.test"]}}
    )
    a, b = nodes["A"], nodes["B"]
    hop = _SlowHop()
    b.add_local_domain("comp.b.test", "b.test")
    b.router.add_route("comp.b.test", hop)
    await a.send(message("u@a.test", "x@comp.b.test", "queued", id="q"))
    await _until(lambda: hop.queued)
    out = _out(a, "comp.b.test").machine
    await asyncio.sleep(1.5)  # past A's ack timer: A asked, B answers only for what left
    assert len(out.sm_out.unacked) == 1
    hop.release()  # the hop wrote it out
    await _until(lambda: not out.sm_out.unacked)
