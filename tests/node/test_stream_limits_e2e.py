"""Stream limits (XEP-0478) between two real nodes on 127.0.0.1 with different
``max_stanza_size``: each announces its own, and neither sends the other a stanza above it - the
sender gets policy-violation (no ``by``: the limit is the peer's) and the stream stays up."""

from __future__ import annotations

from core_helpers import message, node_config, tls_spec

from s2sfast.protocol.errors import stanza_error_condition
from s2sfast.router import stanza_from_bytes
from s2sfast.server.probe import Probe

SMALL = 2000


def _big(frm, to, id, size=3 * SMALL):
    return message(frm, to, "x" * size, id=id)


def _assert_limit_bounce(bounce, id, peer, limit):
    assert bounce.id == id and bounce.type == "error"
    _, condition, text = stanza_error_condition(bounce.raw)
    assert condition == "policy-violation"
    assert f"{peer} accepts at most {limit} bytes" in text
    assert b" by=" not in bounce.raw.split(b"<error", 1)[1].split(b">", 1)[0]


async def test_each_side_keeps_below_the_limit_the_other_announced(federation):
    nodes = await federation(
        {
            "A": {"hosts": ["a.test"], "max_stanza_size": 100_000},
            "B": {"hosts": ["b.test"], "max_stanza_size": SMALL},
        }
    )
    a, b = nodes["A"], nodes["B"]
    # the first stanza waits for the stream, whose features bring B's limit: bounced at flush
    await a.send(_big("u@a.test", "v@b.test", "big1"))
    _assert_limit_bounce(await a.inbox.get(), "big1", "b.test", SMALL)
    await a.send(message("u@a.test", "v@b.test", "small", id="small1"))
    assert (await b.inbox.get()).id == "small1"
    (out,) = [s for s in a.router.streams if s.direction == "out"]
    assert out.machine.peer_limits.max_bytes == SMALL
    assert out.machine.peer_limits.idle_seconds is not None
    # the stream is established now: the direct path bounces too, and the stream stays up
    await a.send(_big("u@a.test", "v@b.test", "big2"))
    _assert_limit_bounce(await a.inbox.get(), "big2", "b.test", SMALL)
    await a.send(message("u@a.test", "v@b.test", "small", id="small2"))
    assert (await b.inbox.get()).id == "small2"
    assert out.writable and [s for s in a.router.streams if s.direction == "out"] == [out]
    # B -> A: A announced 100000, so B's 6000-byte stanza goes through
    await b.send(_big("v@b.test", "u@a.test", "big-ok"))
    got = await a.inbox.get()
    assert got.id == "big-ok" and got.type != "error"
    assert len(stanza_from_bytes(got.raw).raw) > SMALL


async def test_a_stanza_at_the_limit_still_goes(federation):
    nodes = await federation(
        {"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"], "max_stanza_size": SMALL}}
    )
    a, b = nodes["A"], nodes["B"]
    head = len(message("u@a.test", "v@b.test", "", id="edge"))
    await a.send(message("u@a.test", "v@b.test", "y" * (SMALL - head), id="edge"))
    assert len((await b.inbox.get()).raw) == SMALL
    await a.send(message("u@a.test", "v@b.test", "y" * (SMALL - head + 1), id="over"))
    _assert_limit_bounce(await a.inbox.get(), "over", "b.test", SMALL)


async def test_bidi_initiator_announces_its_limit_in_the_bidi_request(
    federation, tls_certfile, tls_ca_file
):
    """On a bidi stream B never sees A's features: A's limit travels in <bidi/>, and B keeps
    to it on the reverse direction."""

    def tls(host, **extra):
        mode = "required_trusted"
        return tls_spec(tls_certfile, tls_ca_file, host, mode=mode, bidi=True, **extra)

    nodes = await federation(
        {"A": tls("a.test", max_stanza_size=SMALL), "B": tls("b.test", max_stanza_size=100_000)}
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "hi", id="hi"))
    assert (await b.inbox.get()).id == "hi"
    (stream,) = b.router.streams
    assert stream.direction == "in" and stream.machine.peer_max_bytes == SMALL
    await b.send(_big("v@b.test", "u@a.test", "too-big"))
    _assert_limit_bounce(await b.inbox.get(), "too-big", "a.test", SMALL)
    await b.send(message("v@b.test", "u@a.test", "fits", id="fits"))
    assert (await a.inbox.get()).id == "fits"
    assert len(a.connections()) == 1 and len(b.connections()) == 1


async def test_probe_shows_the_limits_and_bidi_a_node_offers(federation, dns_server):
    nodes = await federation({"B": {"hosts": ["b.test"], "max_stanza_size": SMALL, "bidi": True}})
    probe = Probe(
        "b.test",
        local="a.test",
        config=node_config(["a.test"], port=0, addresses={"b.test": nodes["B"].port}),
        nameservers=[dns_server.nameserver],
    )
    await probe.run()
    (stream,) = [s for s in probe.steps if s.step == "stream"]
    assert "bidi (urn:xmpp:features:bidi)" in stream.detail
    assert f"limits (urn:xmpp:stream-limits:0) max-bytes={SMALL} idle-seconds=" in stream.detail


async def test_keepalives_stay_within_half_the_idle_time_the_peer_announced(federation):
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    b.idle_timeout = 50  # announced by the streams B accepts from now on
    await a.send(message("u@a.test", "v@b.test", "x", id="x"))
    assert (await b.inbox.get()).id == "x"
    (out,) = [s for s in a.router.streams if s.direction == "out"]
    assert out.machine.peer_limits.idle_seconds == 50
    assert out.keepalive == 25  # was 60: a whitespace keepalive at least every 25 s now
    await b.send(message("v@b.test", "u@a.test", "y", id="y"))
    assert (await a.inbox.get()).id == "y"
    (back,) = [s for s in b.router.streams if s.direction == "out"]
    assert back.keepalive == 60  # A announced an hour: B keeps its own, shorter period
