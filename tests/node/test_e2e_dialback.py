"""Dialback and policy end to end: real nodes, plus a hand-driven raw S2S peer on a socket."""

from __future__ import annotations

from core_helpers import HEADER, RawPeer, free_port, message

from s2sfast.framing import StreamClose, StreamOpen
from s2sfast.protocol.dialback import make_key


async def test_correct_keys_piggybacked_domains_and_spoofed_from(federation):
    nodes = await federation({"A": {"hosts": ["a.test", "a2.test"]}, "B": {"hosts": ["b.test"]}})
    secret = nodes["A"].config.s2s.shared
    peer = await RawPeer.connect(nodes["B"].port)
    stream_id = await peer.open("a.test", "b.test")
    # one stream, two originating domains: both keys made with A's secret, verified by A
    for domain in ("a.test", "a2.test"):
        key = make_key(secret, "b.test", domain, stream_id)
        peer.send(f"<db:result from='{domain}' to='b.test'>{key}</db:result>")
    answers = {}
    for _ in range(2):
        ev = await peer.next()
        assert ev.name == "result"
        answers[ev.to] = ev
    assert {ev.to for ev in answers.values()} == {"a.test", "a2.test"}
    assert all(b"type='valid'" in ev.raw for ev in answers.values())

    peer.send(message("u@a.test", "v@b.test", "one", id="p1"))
    peer.send(message("u@evil.test", "v@b.test", "spoofed", id="spoof"))
    peer.send(message("u@a2.test", "v@b.test", "two", id="p2"))
    got = [(await nodes["B"].inbox.get()).id for _ in range(2)]
    assert got == ["p1", "p2"]
    assert await nodes["B"].inbox.nothing(0.3)  # the spoofed one was dropped
    inbound = [c for c in nodes["B"].connections() if c.direction == "in" and c.local]
    assert any(set(c.pairs) == {("b.test", "a.test"), ("b.test", "a2.test")} for c in inbound)
    await peer.close()


async def test_wrong_key_is_rejected_and_stream_closed(federation):
    nodes = await federation({"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"]}})
    peer = await RawPeer.connect(nodes["B"].port)
    await peer.open("a.test", "b.test")
    peer.send("<db:result from='a.test' to='b.test'>" + "0" * 64 + "</db:result>")
    answer = await peer.next()
    assert answer.name == "result" and b"type='invalid'" in answer.raw
    error = await peer.next()
    assert error.name == "error" and b"not-authorized" in error.raw
    assert isinstance(await peer.next(), StreamClose)
    peer.send(message("u@a.test", "v@b.test", "after", id="late"))
    assert await nodes["B"].inbox.nothing(0.3)
    await peer.close()


async def test_impostor_node_with_another_secret_cannot_send(federation):
    # I claims a.test but B asks the real a.test (node A), whose secret differs
    nodes = await federation(
        {
            "A": {"hosts": ["a.test"]},
            "B": {"hosts": ["b.test"], "addresses": {"a.test": "A"}},
            "I": {"hosts": ["a.test"], "addresses": {"b.test": "B"}},
        }
    )
    await nodes["I"].send(message("mallory@a.test", "bob@b.test", "forged", id="f1"))
    bounce = await nodes["I"].inbox.get()
    assert bounce.id == "f1" and bounce.type == "error" and bounce.to == "mallory@a.test"
    assert await nodes["B"].inbox.nothing(0.3)
    # the real a.test still federates
    await nodes["A"].send(message("alice@a.test", "bob@b.test", "real", id="r1"))
    assert (await nodes["B"].inbox.get()).id == "r1"


async def test_unreachable_authoritative_server(federation):
    closed_port = free_port()  # nothing listens there
    nodes = await federation(
        {
            "A": {"hosts": ["a.test", "x.test"]},
            "B": {"hosts": ["b.test"], "addresses": {"x.test": closed_port}},
        }
    )
    await nodes["A"].send(message("u@x.test", "v@b.test", "x", id="x1"))
    bounce = await nodes["A"].inbox.get()
    assert bounce.id == "x1" and bounce.type == "error"
    assert b"remote-server-not-found" in bounce.raw
    assert await nodes["B"].inbox.nothing(0.2)


async def test_unreachable_authoritative_answered_with_error_to_raw_peer(federation):
    closed_port = free_port()
    nodes = await federation({"B": {"hosts": ["b.test"], "addresses": {"x.test": closed_port}}})
    peer = await RawPeer.connect(nodes["B"].port)
    await peer.open("x.test", "b.test")
    peer.send("<db:result from='x.test' to='b.test'>" + "1" * 64 + "</db:result>")
    answer = await peer.next()
    assert answer.name == "result" and b"type='error'" in answer.raw
    await peer.close()


async def test_policy_denies_outgoing(federation):
    nodes = await federation(
        {"A": {"hosts": ["a.test"], "host_policy": {"b.test": "deny"}}, "B": {"hosts": ["b.test"]}}
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "no", id="d1"))
    bounce = await nodes["A"].inbox.get()
    assert bounce.id == "d1" and b"<service-unavailable" in bounce.raw
    assert b'<error type="cancel"' in bounce.raw
    assert nodes["A"].connections() == []  # no connection was even attempted


async def test_policy_denies_incoming(federation):
    nodes = await federation(
        {"A": {"hosts": ["a.test"]}, "B": {"hosts": ["b.test"], "host_policy": {"a.test": "deny"}}}
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "no", id="d2"))
    bounce = await nodes["A"].inbox.get()
    assert bounce.id == "d2" and bounce.type == "error"
    assert b"service-unavailable" in bounce.raw
    assert await nodes["B"].inbox.nothing(0.2)


async def test_policy_denied_incoming_raw_peer_sees_error_result_and_stream_error(federation):
    nodes = await federation({"B": {"hosts": ["b.test"], "default_policy": "deny"}})
    peer = await RawPeer.connect(nodes["B"].port)
    await peer.open("a.test", "b.test")
    peer.send("<db:result from='a.test' to='b.test'>" + "1" * 64 + "</db:result>")
    answer = await peer.next()
    assert answer.name == "result" and b"type='error'" in answer.raw
    error = await peer.next()
    assert error.name == "error" and b"policy-violation" in error.raw
    await peer.close()


async def test_default_deny_with_allowed_host(federation):
    nodes = await federation(
        {
            "A": {
                "hosts": ["a.test"],
                "default_policy": "deny",
                "host_policy": {"b.test": "allow"},
            },
            "B": {"hosts": ["b.test"]},
            "C": {"hosts": ["c.test"]},
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "ok", id="ok"))
    assert (await nodes["B"].inbox.get()).id == "ok"
    await nodes["A"].send(message("u@a.test", "v@c.test", "no", id="no"))
    assert (await nodes["A"].inbox.get()).id == "no"


async def test_header_errors_on_the_wire(federation):
    nodes = await federation({"B": {"hosts": ["b.test"]}})
    peer = await RawPeer.connect(nodes["B"].port)
    peer.send(HEADER.format(frm="a.test", to="nope.test"))
    header = await peer.next()
    assert isinstance(header, StreamOpen) and header.attrs.get("id")
    error = await peer.next()
    assert error.name == "error" and b"host-unknown" in error.raw
    assert isinstance(await peer.next(), StreamClose)
    await peer.close()

    peer = await RawPeer.connect(nodes["B"].port)
    peer.send(HEADER.format(frm="a.test", to="b.test").replace(" to='b.test'", ""))
    await peer.next()
    error = await peer.next()
    assert b"improper-addressing" in error.raw
    await peer.close()


async def test_tls_client_hello_on_plain_stream_is_named(federation):
    nodes = await federation({"B": {"hosts": ["b.test"]}})
    peer = await RawPeer.connect(nodes["B"].port)
    peer.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32)
    header = await peer.next()
    assert isinstance(header, StreamOpen)
    error = await peer.next()
    assert error.name == "error" and b"TLS record on a plaintext stream" in error.raw
    await peer.close()


async def test_state_timeout_gives_connection_timeout(federation):
    nodes = await federation({"B": {"hosts": ["b.test"], "state_timeout_ms": 300}})
    peer = await RawPeer.connect(nodes["B"].port)
    await peer.open("a.test", "b.test")  # then say nothing
    error = await peer.next(timeout=5)
    assert error.name == "error" and b"connection-timeout" in error.raw
    assert isinstance(await peer.next(), StreamClose)
    await peer.close()


async def test_random_stream_ids(federation):
    nodes = await federation({"B": {"hosts": ["b.test"]}})
    ids = set()
    for _ in range(3):
        peer = await RawPeer.connect(nodes["B"].port)
        ids.add(await peer.open("a.test", "b.test"))
        await peer.close()
    assert len(ids) == 3 and all(len(i) >= 16 for i in ids)


async def test_claiming_one_of_our_own_domains(federation):
    # b2.test is B's own domain: B answers the key itself, without connecting anywhere
    nodes = await federation({"B": {"hosts": ["b.test", "b2.test"]}})
    secret = nodes["B"].config.s2s.shared
    peer = await RawPeer.connect(nodes["B"].port)
    stream_id = await peer.open("b2.test", "b.test")
    peer.send("<db:result from='b2.test' to='b.test'>" + "0" * 64 + "</db:result>")
    assert b"type='invalid'" in (await peer.next()).raw
    await peer.close()

    peer = await RawPeer.connect(nodes["B"].port)
    stream_id = await peer.open("b2.test", "b.test")
    key = make_key(secret, "b.test", "b2.test", stream_id)
    peer.send(f"<db:result from='b2.test' to='b.test'>{key}</db:result>")
    assert b"type='valid'" in (await peer.next()).raw
    assert [c for c in nodes["B"].connections() if c.direction == "out"] == []
    await peer.close()


async def test_closed_streams_leave_nothing_in_the_dialback_index(federation):
    """Verify answers find an inbound stream by its id (Router.inbound, one key per stream id
    it was indexed under); when the streams close, exactly their entries go."""
    from hostile_helpers import until

    nodes = await federation({"A": {"hosts": ["a.test", "a2.test"]}, "B": {"hosts": ["b.test"]}})
    a, b = nodes["A"], nodes["B"]
    for i, domain in enumerate(("a.test", "a2.test")):
        await a.send(message(f"u@{domain}", "v@b.test", "hi", id=f"a{i}"))
        await b.send(message("v@b.test", f"u@{domain}", "hi", id=f"b{i}"))
    assert sorted([(await b.inbox.get()).id for _ in range(2)]) == ["a0", "a1"]
    assert sorted([(await a.inbox.get()).id for _ in range(2)]) == ["b0", "b1"]
    for node in (a, b):
        live = {s for s in node.router.streams if s.direction == "in" and s.authenticated}
        assert live and set(node.router.inbound.values()) == live
        assert all(key in s.inbound_keys for key, s in node.router.inbound.items())
    await a.stop()
    assert await until(lambda: not b.router.streams)
    assert b.router.inbound == {} and a.router.inbound == {}
