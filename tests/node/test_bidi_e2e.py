"""Bidirectional S2S (XEP-0288) between two real nodes on 127.0.0.1: with ``[s2s] bidi`` on
both sides and certificates that prove each domain (no dialback verify stream), one TCP
connection carries both directions; without it, two; delivery both ways; policy on the reverse
direction; the pair's next stanza opens a connection of its own when the bidi stream is gone."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from core_helpers import message, tls_spec
from dnsserver import closed_port

from s2sfast.protocol.dialback import make_key


async def _until(predicate, timeout=10.0):
    """Poll *predicate* (a hang guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def _tls(hosts, tls_certfile, tls_ca_file, **extra):
    return tls_spec(tls_certfile, tls_ca_file, *hosts, mode="required_trusted", **extra)


def _tcp(node):
    """The node's live TCP connections as (direction, pairs authenticated on it)."""
    return sorted((c.direction, c.pairs) for c in node.connections())


async def _exchange(a, b, n=5):
    """A sends n to B, then B sends n to A (B's stanzas can only use what A's opened)."""
    for i in range(n):
        await a.send(message("u@a.test", "v@b.test", f"{i}", id=f"ab{i}"))
    assert [(await b.inbox.get()).id for _ in range(n)] == [f"ab{i}" for i in range(n)]
    for i in range(n):
        await b.send(message("v@b.test", "u@a.test", f"{i}", id=f"ba{i}"))
    assert [(await a.inbox.get()).id for _ in range(n)] == [f"ba{i}" for i in range(n)]


@pytest.mark.parametrize("sasl_external", [False, True], ids=["dialback-cert", "sasl-external"])
async def test_one_connection_carries_both_directions(
    federation, tls_certfile, tls_ca_file, sasl_external
):
    nodes = await federation(
        {
            "A": _tls(
                ["a.test"], tls_certfile, tls_ca_file, bidi=True, sasl_external=sasl_external
            ),
            "B": _tls(
                ["b.test"], tls_certfile, tls_ca_file, bidi=True, sasl_external=sasl_external
            ),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b)
    assert _tcp(a) == [("out", (("a.test", "b.test"),))]
    assert _tcp(b) == [("in", (("b.test", "a.test"),))]
    (stream,) = b.router.streams
    assert stream.machine.bidi and b.router.outbound[("b.test", "a.test")].stream is stream
    (out,) = a.router.streams
    assert out.machine.bidi
    assert [c.bidi for c in a.connections() + b.connections()] == [True, True]
    # the originating side saw dialback answered at once; the receiving side checked the cert
    methods = ("sasl-external",) * 2 if sasl_external else ("dialback", "dialback-cert")
    assert (a.connections()[0].auth_method, b.connections()[0].auth_method) == methods


async def test_without_bidi_two_connections(federation, tls_certfile, tls_ca_file):
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(["b.test"], tls_certfile, tls_ca_file),  # B does not offer it
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b)
    assert _tcp(a) == [("in", (("a.test", "b.test"),)), ("out", (("a.test", "b.test"),))]
    assert _tcp(b) == [("in", (("b.test", "a.test"),)), ("out", (("b.test", "a.test"),))]
    assert not any(s.machine.bidi for s in a.router.streams)
    assert not any(c.bidi for c in a.connections() + b.connections())


async def test_bidi_over_plain_dialback_delivers_both_ways(federation):
    """No TLS: B verifies A's key over a stream of its own (XEP-0288: never on the stream the
    request came on), so there are two connections; both directions deliver and B's stanzas use
    whichever of its streams to A is up."""
    nodes = await federation(
        {"A": {"hosts": ["a.test"], "bidi": True}, "B": {"hosts": ["b.test"], "bidi": True}}
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b, n=20)
    assert len(a.connections()) == 2 and len(b.connections()) == 2


async def test_reverse_direction_only_for_the_authenticated_pair_and_policy(
    federation, tls_certfile, tls_ca_file
):
    """A serves a.test and a2.test; a.test's bidi stream lets B answer a.test only. B's policy
    denies a2.test: its stanza bounces with service-unavailable (no connection for it), and a
    stanza from b.test to a2.test smuggled onto the bidi stream is dropped by A."""
    nodes = await federation(
        {
            "A": _tls(["a.test", "a2.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(
                ["b.test"], tls_certfile, tls_ca_file, bidi=True, host_policy={"a2.test": "deny"}
            ),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b, n=1)
    await b.send(message("v@b.test", "w@a2.test", "no", id="denied"))
    bounce = await b.inbox.get()
    assert bounce.id == "denied" and bounce.type == "error"
    assert b"service-unavailable" in bounce.raw
    assert _tcp(b) == [("in", (("b.test", "a.test"),))]
    # B's incoming bidi stream writes a stanza for a pair A never authenticated on it
    (stream,) = b.router.streams
    stream.write_stanza(message("v@b.test", "w@a2.test", "smuggled", id="smuggled"))
    await b.send(message("v@b.test", "u@a.test", "after", id="after"))
    assert (await a.inbox.get()).id == "after"
    assert [s.id for s in a.inbox.seen].count("smuggled") == 0


async def test_a_closed_bidi_stream_gives_way_to_a_connection_of_our_own(
    federation, tls_certfile, tls_ca_file
):
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(["b.test"], tls_certfile, tls_ca_file, bidi=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b, n=1)
    (out,) = a.router.streams
    out.close("test closes the bidi stream")
    await _until(lambda: not a.router.streams and not b.router.streams)
    await b.send(message("v@b.test", "u@a.test", "again", id="again"))
    assert (await a.inbox.get()).id == "again"
    # B opened its own stream this time (and asked for bidi on it)
    assert [c.direction for c in b.connections()] == ["out"]
    assert [c.direction for c in a.connections()] == ["in"]
    await a.send(message("u@a.test", "v@b.test", "back", id="back"))
    assert (await b.inbox.get()).id == "back"
    assert len(a.connections()) == 1 and len(b.connections()) == 1


async def test_peer_authenticates_another_of_its_domains_on_our_bidi_stream(
    federation, tls_certfile, tls_ca_file
):
    """XEP-0288 section 2.2: B (the receiving server, here made to speak by the test) asks by
    dialback to send as b2.test on A's bidi stream; A verifies the key with b2.test's
    authoritative server over a connection of its own and answers on the bidi stream."""
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(["b.test", "b2.test"], tls_certfile, tls_ca_file, bidi=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b, n=1)
    (stream,) = b.router.streams
    (out,) = a.router.streams
    machine = out.machine
    stream.write(b"<db:result from='b2.test' to='a.test'>" + b"0" * 64 + b"</db:result>")
    await _until(lambda: machine.reverse_requests == 1 and not machine._reverse_pending)
    assert ("a.test", "b2.test") not in machine.reverse_pairs  # the wrong key was refused
    stream.write_stanza(message("v@b2.test", "u@a.test", "refused", id="refused"))
    key = make_key(b.config.s2s.shared, "a.test", "b2.test", stream.stream_id)
    stream.write(f"<db:result from='b2.test' to='a.test'>{key}</db:result>".encode())
    await _until(lambda: ("a.test", "b2.test") in machine.reverse_pairs)
    stream.write_stanza(message("v@b2.test", "u@a.test", "accepted", id="accepted"))
    assert (await a.inbox.get()).id == "accepted"
    assert "refused" not in [s.id for s in a.inbox.seen]


async def test_both_sides_opening_at_once_keep_their_own_streams(
    federation, tls_certfile, tls_ca_file
):
    """Each node sends before either stream is up: each has its own outbound stream
    negotiating when the other's bidi stream authenticates, keeps it, and ignores the offer."""
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(["b.test"], tls_certfile, tls_ca_file, bidi=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    for i in range(10):
        await a.send(message("u@a.test", "v@b.test", f"{i}", id=f"ab{i}"))
        await b.send(message("v@b.test", "u@a.test", f"{i}", id=f"ba{i}"))
    assert [(await b.inbox.get()).id for _ in range(10)] == [f"ab{i}" for i in range(10)]
    assert [(await a.inbox.get()).id for _ in range(10)] == [f"ba{i}" for i in range(10)]
    for node, pair in ((a, ("a.test", "b.test")), (b, ("b.test", "a.test"))):
        assert node.router.outbound[pair].stream.direction == "out"
        assert len(node.connections()) == 2


async def test_stanzas_on_a_dead_bidi_stream_go_out_on_our_own_next_stream(
    federation, tls_certfile, tls_ca_file
):
    """B writes 50 stanzas to A's bidi stream and the connection dies before they leave:
    XEP-0198 hands them back (or they were never sent) and B's own new stream delivers them."""
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(["b.test"], tls_certfile, tls_ca_file, bidi=True, retry_initial=0.05),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b, n=1)
    (stream,) = b.router.streams
    for i in range(50):
        await b.send(message("v@b.test", "u@a.test", f"{i}", id=f"lost{i}"))
    stream.abort()  # same loop turn: nothing of the burst has reached the socket
    got = {(await a.inbox.get()).id for _ in range(50)}
    while not got >= {f"lost{i}" for i in range(50)}:
        got.add((await a.inbox.get()).id)  # a resent duplicate may come first
    assert not any(s.type == "error" for s in b.inbox.seen)
    # B opened a stream of its own (A also reconnects: it resends its one unacked stanza)
    assert "out" in [c.direction for c in b.connections()]


async def test_a_reloaded_policy_applies_to_the_reverse_direction(
    federation, tls_certfile, tls_ca_file
):
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(["b.test"], tls_certfile, tls_ca_file, bidi=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await _exchange(a, b, n=1)
    assert b.router.outbound[("b.test", "a.test")].stream.direction == "in"
    b.reload_policy(replace(b.config.s2s, default_policy="deny"))
    await b.send(message("v@b.test", "u@a.test", "denied", id="denied"))
    bounce = await b.inbox.get()
    assert bounce.id == "denied" and b"service-unavailable" in bounce.raw
    assert await a.inbox.nothing(0.3)


async def test_stanzas_waiting_for_an_unreachable_peer_leave_on_its_bidi_stream(
    federation, tls_certfile, tls_ca_file
):
    """B cannot connect to A (A's port refuses B) and queues its stanzas, backing off; when
    A connects to B with bidi, B's queue goes out on A's stream at once."""
    nodes = await federation(
        {
            "A": _tls(["a.test"], tls_certfile, tls_ca_file, bidi=True),
            "B": _tls(
                ["b.test"],
                tls_certfile,
                tls_ca_file,
                bidi=True,
                addresses={"a.test": closed_port()},
                retry_initial=30.0,
                pending_deadline=60.0,
            ),
        }
    )
    a, b = nodes["A"], nodes["B"]
    for i in range(5):
        await b.send(message("v@b.test", "u@a.test", f"{i}", id=f"wait{i}"))
    link = b.router.outbound[("b.test", "a.test")]
    await _until(lambda: link.retry_timer is not None)  # the first attempt was refused
    assert len(link.queue) == 5 and link.stream is None
    await a.send(message("u@a.test", "v@b.test", "hello", id="hello"))
    assert (await b.inbox.get()).id == "hello"
    assert [(await a.inbox.get()).id for _ in range(5)] == [f"wait{i}" for i in range(5)]
    assert link.retry_timer is None and link.stream.direction == "in"
    assert not any(s.type == "error" for s in b.inbox.seen)
