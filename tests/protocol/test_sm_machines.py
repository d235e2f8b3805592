"""The XEP-0198 parts of the incoming and outgoing machines, sans-IO: <sm/> offered and enabled
only after authentication, <r/>/<a/>, acks only for handled stanzas, handed-back unacked stanzas
when the stream dies, handled-count-too-high."""

from __future__ import annotations

from machine_driver import MachineDriver, of, out

from s2sfast.config import S2SOptions, StreamManagementOptions
from s2sfast.protocol.events import (
    Acked,
    Close,
    ConnectionLost,
    Deliver,
    Drop,
    Handled,
    SetTimer,
    TimerFired,
    Unacked,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.incoming import IncomingMachine
from s2sfast.protocol.outgoing import OutgoingMachine
from s2sfast.protocol.sm import ENABLE, ENABLED, REQUEST, ack_bytes

SECRET = "s"
TO_B = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='a.test' to='b.test' version='1.0'>"
)
FROM_B = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='b.test' to='a.test' id='peer-id' version='1.0'>"
)
F_SM = (
    b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
    b"<sm xmlns='urn:xmpp:sm:3'/></stream:features>"
)
F_PLAIN = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
VALID = b"<db:result from='b.test' to='a.test' type='valid'/>"


def msg(i, frm="u@a.test", to="v@b.test"):
    return f"<message from='{frm}' to='{to}' id='m{i}'><body>{i}</body></message>".encode()


# --- incoming (we receive, count, and ack) -----------------------------------------------------


class Peer(MachineDriver):
    def __init__(self, sm=None):
        opts = S2SOptions(shared=SECRET, stream_management=sm or StreamManagementOptions())
        self.machine = IncomingMachine(
            hosts={"b.test"},
            options_for=lambda host: opts,
            policy_allows=lambda local, remote: True,
            stream_id="sid1",
        )
        super().__init__()
        self.machine.start()

    def open(self):
        return out(self.send(TO_B))

    def authenticate(self):
        (vk,) = of(self.send(b"<db:result from='a.test' to='b.test'>k</db:result>"), VerifyKey)
        return self.event(
            VerifyResult(
                receiving=vk.receiving,
                originating=vk.originating,
                stream_id=vk.stream_id,
                type="valid",
            )
        )


def test_incoming_offers_sm_and_refuses_enable_before_authentication():
    p = Peer()
    assert b"<sm xmlns='urn:xmpp:sm:3'/>" in p.open()
    acts = p.send(ENABLE)
    assert b"<unexpected-request" in out(acts) and p.machine.sm_in is None
    p.authenticate()
    assert out(p.send(ENABLE)) == ENABLED
    assert b"<unexpected-request" in out(p.send(ENABLE))  # only once


def test_incoming_without_sm_does_not_offer_it():
    p = Peer(StreamManagementOptions(enabled=False))
    assert b"urn:xmpp:sm:3" not in p.open()
    p.authenticate()
    assert b"<feature-not-implemented" in out(p.send(ENABLE))
    assert p.machine.sm_in is None


def test_incoming_acks_only_handled_stanzas():
    p = Peer()
    p.open()
    p.authenticate()
    p.send(ENABLE)
    delivers = of(p.send(msg(1, "u@a.test", "v@b.test") + msg(2, "u@a.test", "v@b.test")), Deliver)
    assert [d.seq for d in delivers] == [1, 2]
    assert out(p.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == b""  # both still in our memory
    assert out(p.event(Handled(seq=2))) == b""  # 1 is not handled: 2 cannot be covered
    assert out(p.event(Handled(seq=1))) == ack_bytes(2)  # the ack owed to the <r/>
    assert out(p.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == ack_bytes(2)
    # a stanza for a pair not authorised on this stream is dropped, i.e. handled
    acts = p.send(msg(3, "u@c.test", "v@b.test"))
    assert of(acts, Drop) and not of(acts, Deliver)
    assert out(p.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == ack_bytes(3)
    # the peer closes: our last <a/> goes before our </stream:stream>
    acts = p.send(b"</stream:stream>")
    assert out(acts) == ack_bytes(3) and of(acts, Close)


def test_incoming_handled_hook_is_the_handled_event_without_dispatch():
    p = Peer()
    p.open()
    p.authenticate()
    p.send(ENABLE)
    p.send(msg(1) + msg(2) + msg(3))
    assert out(p.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == b""
    assert p.machine.handled(2) == [] and p.machine.handled(3) == []  # 1 still in memory
    assert out(p.machine.handled(1)) == ack_bytes(3)  # the ack owed to the <r/>
    assert p.machine.handled(1) == [] and p.machine.handled(9) == []  # twice; never received
    p.machine.close("bye")
    assert p.machine.handled(4) == []  # closing: the table ignores Handled
    assert p.machine.sm_in.h == 3


def test_incoming_handled_run_is_a_handled_hook_per_stanza():
    p = Peer()
    p.open()
    p.authenticate()
    p.send(ENABLE)
    p.send(msg(1) + msg(2) + msg(3) + b"<r xmlns='urn:xmpp:sm:3'/>")
    assert out(p.machine.handled_run(1, 3)) == ack_bytes(3)
    p.send(msg(4))
    p.machine.close("bye")
    assert p.machine.handled_run(4, 4) == []  # closing: the table ignores Handled


def test_incoming_handled_hook_before_the_stream_is_open_is_an_error():
    p = Peer()
    acts = p.machine.handled(1)  # WAIT_HEADER has no Handled row: as receive(Handled(seq=1))
    assert of(acts, Close) and p.machine.state == "ERROR"


def test_incoming_ack_of_stanzas_we_never_sent_is_handled_count_too_high():
    p = Peer()
    p.open()
    p.authenticate()
    p.send(ENABLE)
    acts = p.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
    data = out(acts)
    assert b"<undefined-condition" in data and b"<handled-count-too-high" in data
    assert b"h='1' send-count='0'" in data
    assert of(acts, Close) and p.machine.state == "ERROR"


# --- outgoing (we send, keep, request, and release) --------------------------------------------


class Server(MachineDriver):
    def __init__(self, sm=None):
        self.machine = OutgoingMachine(
            local="a.test",
            remote="b.test",
            secret=SECRET,
            sm=sm or StreamManagementOptions(ack_freq=3, buffer_max=5),
        )
        super().__init__()
        self.machine.start()

    def establish(self, features=F_SM):
        self.send(FROM_B)
        self.send(features)
        return self.send(VALID)

    def write(self, *nums):
        acts = []
        for i in nums:
            acts += self.machine.sent(msg(i))
        return acts


def test_outgoing_enables_after_dialback_when_offered():
    s = Server()
    acts = s.establish()
    assert out(acts) == ENABLE
    assert s.machine.sm_out is not None and s.machine.sm_in is None
    assert s.send(b"<enabled xmlns='urn:xmpp:sm:3'/>") == []
    assert s.machine.sm_in is not None


def test_outgoing_does_not_enable_unless_offered_or_configured():
    s = Server()
    assert out(s.establish(F_PLAIN)) == b""
    assert s.machine.sm_out is None and s.write(1) == []
    off = Server(StreamManagementOptions(enabled=False))
    assert out(off.establish()) == b""
    assert off.machine.sm_out is None


def test_outgoing_requests_acks_and_releases_acked_stanzas():
    s = Server()
    s.establish()
    acts = s.write(1)
    assert of(acts, SetTimer)[0].seconds > 0  # the ack timer starts with the first unacked
    acts = s.write(2, 3)
    assert out(acts) == REQUEST  # every ack_freq = 3 stanzas
    assert s.machine.window_full is False
    s.write(4, 5)
    assert s.machine.window_full  # buffer_max = 5
    acts = s.send(b"<a xmlns='urn:xmpp:sm:3' h='4'/>")
    assert of(acts, Acked)[0].count == 4
    assert list(s.machine.sm_out.unacked) == [msg(5)]
    assert of(acts, SetTimer)[0].seconds > 0  # still one unacked
    # the timer asks again while something is unacked
    assert out(s.event(TimerFired())) == REQUEST
    acts = s.send(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")
    assert of(acts, SetTimer)[0].seconds is None and not s.machine.sm_out.unacked
    assert out(s.event(TimerFired())) == b""


def test_outgoing_asks_once_per_write_batch():
    s = Server(StreamManagementOptions(ack_freq=3, buffer_max=10))
    s.establish()
    sm = s.machine.sm_out
    assert s.machine.sent_batch() == []  # nothing kept
    sm.keep(msg(1))
    acts = s.machine.sent_batch()
    assert of(acts, SetTimer)[0].seconds > 0 and out(acts) == b""  # the timer, no <r/> yet
    for i in range(2, 9):  # a burst of 7: one <r/> at its end, not two
        sm.keep(msg(i))
    acts = s.machine.sent_batch()
    assert out(acts) == REQUEST and not of(acts, SetTimer)  # the timer runs already
    assert sm.sent == 8 and sm.awaiting
    sm.keep_all([msg(9), msg(10)])
    assert out(s.machine.sent_batch()) == REQUEST  # the window is full: ask at once
    assert of(s.send(b"<a xmlns='urn:xmpp:sm:3' h='10'/>"), SetTimer)[0].seconds is None
    sm.keep(msg(11))  # the queue was empty: the timer starts again
    assert of(s.machine.sent_batch(), SetTimer)[0].seconds > 0


def test_outgoing_answers_the_peers_request():
    s = Server()
    s.establish()
    s.send(b"<enabled xmlns='urn:xmpp:sm:3'/>")
    assert out(s.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == ack_bytes(0)


def test_outgoing_hands_back_unacked_stanzas_when_the_stream_dies():
    s = Server()
    s.establish()
    s.write(1, 2, 3)
    s.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
    acts = s.event(ConnectionLost(reason="reset"))
    (un,) = of(acts, Unacked)
    assert (un.local, un.remote, un.raws, un.reason) == (
        "a.test",
        "b.test",
        (msg(2), msg(3)),
        "reset",
    )


def test_outgoing_peer_close_hands_back_after_its_last_ack():
    s = Server()
    s.establish()
    s.write(1, 2)
    acts = s.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/></stream:stream>")
    assert of(acts, Unacked)[0].raws == (msg(2),)


def test_outgoing_our_close_asks_for_a_last_ack_and_counts_it():
    s = Server()
    s.establish()
    s.write(1, 2)
    acts = s.machine.close("idle")
    assert out(acts) == REQUEST and of(acts, Close)
    assert of(s.send(b"<a xmlns='urn:xmpp:sm:3' h='2'/>"), Acked)[0].count == 2
    assert not of(s.event(ConnectionLost(reason="closed")), Unacked)  # all acked


def test_outgoing_failed_enable_stops_counting():
    s = Server()
    s.establish()
    s.write(1)
    acts = s.send(
        b"<failed xmlns='urn:xmpp:sm:3'>"
        b"<unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    )
    assert of(acts, Acked)[0].count == 1
    assert s.machine.sm_out is None and s.write(2) == []
    assert not of(s.event(ConnectionLost(reason="x")), Unacked)


def test_outgoing_bad_ack_is_a_stream_error_and_hands_back_the_stanzas():
    s = Server()
    s.establish()
    s.write(1)
    acts = s.send(b"<a xmlns='urn:xmpp:sm:3' h='2'/>")
    assert b"<handled-count-too-high xmlns='urn:xmpp:sm:3' h='2' send-count='1'/>" in out(acts)
    assert of(acts, Unacked)[0].raws == (msg(1),)
    assert of(acts, Close) and s.machine.state == "ERROR"


def test_outgoing_fails_a_peer_that_never_acks():
    s = Server(StreamManagementOptions(ack_freq=100))
    s.establish()
    s.write(1)
    acts = []
    for _ in range(100):
        acts = s.event(TimerFired())
        if of(acts, Close):
            break
    assert of(acts, Close)[0].condition == "connection-timeout"
    assert of(acts, Unacked)[0].raws == (msg(1),)
