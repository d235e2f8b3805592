"""Bidirectional S2S (XEP-0288), sans-IO: the elements, the incoming machine offering bidi and
telling the router when a pair's reverse direction is usable, the outgoing machine asking for
it and accepting the peer's stanzas for the inverse pair only; XEP-0198 on a bidi stream."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from lxml import etree
from machine_driver import MachineDriver, of, out

from s2sfast.config import S2SOptions, StreamManagementOptions
from s2sfast.framing import StreamFramer
from s2sfast.protocol.bidi import BidiRoute, offered, parse_request, request_bytes
from s2sfast.protocol.events import (
    Acked,
    Authenticated,
    ConnectionLost,
    Deliver,
    Drop,
    Handled,
    RestartStream,
    SendBytes,
    SetTimer,
    TimerFired,
    Unacked,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.incoming import IncomingMachine
from s2sfast.protocol.outgoing import OutgoingMachine, parse_features
from s2sfast.protocol.sm import ENABLE, ENABLED, REQUEST, ack_bytes
from s2sfast.protocol.stream_limits import StreamLimits

SECRET = "s"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
STARTTLS = f"<starttls xmlns='{TLS_NS}'/>".encode()
BIDI_FEATURE = b"<bidi xmlns='urn:xmpp:features:bidi'/>"
BIDI = b"<bidi xmlns='urn:xmpp:bidi'/>"


def header(frm="a.test", to="b.test", id=None):
    ident = f" id='{id}'" if id else ""
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        f"from='{frm}' to='{to}'{ident} version='1.0'>"
    ).encode()


def msg(i, frm="v@b.test", to="u@a.test"):
    return f"<message from='{frm}' to='{to}' id='m{i}'><body>{i}</body></message>".encode()


@dataclass
class Verdict:
    trusted: bool
    name_matches: bool
    reason: str | None = None


# --- the elements ------------------------------------------------------------------------------


def test_request_carries_our_limits_and_parses_back():
    assert request_bytes() == BIDI
    assert request_bytes(StreamLimits()) == BIDI
    raw = request_bytes(StreamLimits(max_bytes=10000, idle_seconds=1800))
    assert raw == (
        b"<bidi xmlns='urn:xmpp:bidi'><limits xmlns='urn:xmpp:stream-limits:0'>"
        b"<max-bytes>10000</max-bytes><idle-seconds>1800</idle-seconds></limits></bidi>"
    )
    assert parse_request(raw) == StreamLimits(max_bytes=10000, idle_seconds=1800)
    assert parse_request(BIDI) is None
    assert parse_request(b"<bidi") is None  # unreadable: a request without limits


def test_feature_is_read_from_the_features():
    assert offered(etree.fromstring(b"<f>" + BIDI_FEATURE + b"</f>"))
    assert not offered(etree.fromstring(b"<f><bidi xmlns='urn:xmpp:bidi'/></f>"))
    assert parse_features(b"<stream:features>" + BIDI_FEATURE + b"</stream:features>").bidi
    assert not parse_features(b"<stream:features/>").bidi


# --- incoming: offering bidi and routing the reverse direction -----------------------------------


class Peer(MachineDriver):
    """Our receiving side b.test; the test plays the initiating a.test."""

    def __init__(self, *, bidi=True, mode="false", verdict=None, sm=None, **options):
        opts = S2SOptions(
            use_starttls=mode,
            shared=SECRET,
            bidi=bidi,
            stream_management=sm or StreamManagementOptions(buffer_max=4, ack_freq=2),
            **options,
        )
        self.machine = IncomingMachine(
            hosts={"b.test", "b2.test"},
            options_for=lambda host: opts,
            policy_allows=lambda local, remote: True,
            tls_available=mode != "false",
            check_cert=lambda chain, domain: verdict,
            stream_id="sid1",
        )
        super().__init__()
        self.machine.start()

    def send(self, data):
        actions = super().send(data)
        if of(actions, RestartStream):
            self.framer = StreamFramer()
        return actions

    def dialback(self, local="b.test", remote="a.test", verdict="valid"):
        acts = self.send(f"<db:result from='{remote}' to='{local}'>key</db:result>".encode())
        (vk,) = of(acts, VerifyKey)
        return self.event(
            VerifyResult(
                receiving=vk.receiving,
                originating=vk.originating,
                stream_id=vk.stream_id,
                type=verdict,
            )
        )


def test_incoming_offers_bidi_only_when_configured():
    assert BIDI_FEATURE in out(Peer().send(header()))
    assert BIDI_FEATURE not in out(Peer(bidi=False).send(header()))


def test_incoming_offers_bidi_only_once_tls_is_no_longer_owed():
    p = Peer(mode="required")
    assert BIDI_FEATURE not in out(p.send(header()))  # STARTTLS must come first
    p.send(STARTTLS)
    p.tls_up()
    assert BIDI_FEATURE in out(p.send(header()))
    # optional TLS: offered before and after TLS (XEP-0288 section 2.1)
    assert BIDI_FEATURE in out(Peer(mode="optional").send(header()))


def test_reverse_route_only_after_the_pair_is_authenticated():
    p = Peer()
    p.send(header())
    assert p.send(BIDI) == [] and p.machine.bidi
    acts = p.send(b"<db:result from='a.test' to='b.test'>key</db:result>")
    assert not of(acts, BidiRoute)
    acts = p.event(
        VerifyResult(receiving="b.test", originating="a.test", stream_id="sid1", type="valid")
    )
    kinds = [type(a) for a in acts]
    assert kinds.index(Authenticated) < kinds.index(BidiRoute)
    assert of(acts, BidiRoute) == [BidiRoute(local="b.test", remote="a.test")]
    # a piggybacked pair (XEP-0220 multiplexing) gets its own route, each one once
    acts = p.dialback(local="b2.test", remote="a.test")
    assert of(acts, BidiRoute) == [BidiRoute(local="b2.test", remote="a.test")]
    assert not of(p.send(b" "), BidiRoute)
    # an invalid key authenticates nothing and routes nothing
    acts = p.dialback(local="b.test", remote="a2.test", verdict="invalid")
    assert not of(acts, BidiRoute)


def test_no_reverse_route_without_the_peers_request():
    p = Peer()
    p.send(header())
    assert not of(p.dialback(), BidiRoute) and not p.machine.bidi


def test_request_without_our_offer_or_after_authentication_is_ignored():
    p = Peer(bidi=False)
    p.send(header())
    assert of(p.send(BIDI), Drop) and not p.machine.bidi
    assert not of(p.dialback(), BidiRoute)
    q = Peer()
    q.send(header())
    q.dialback()
    assert of(q.send(BIDI), Drop) and not q.machine.bidi


def test_request_carries_the_peers_limits():
    p = Peer()
    p.send(header())
    p.send(request_bytes(StreamLimits(max_bytes=3000)))
    assert p.machine.peer_limits == StreamLimits(max_bytes=3000)
    assert p.machine.peer_max_bytes == 3000


def test_after_sasl_external_the_route_waits_for_the_restarted_stream():
    """XEP-0288's SASL example: the receiving server may send once the restarted stream is
    open (our new header and features out), never between <success/> and that header."""
    p = Peer(mode="required", verdict=Verdict(True, True), sasl_external=True)
    p.send(header())
    p.send(STARTTLS)
    p.tls_up()
    features = out(p.send(header()))
    assert BIDI_FEATURE in features and b"EXTERNAL" in features
    p.send(BIDI)
    auth = base64.b64encode(b"a.test").decode()
    sasl = "urn:ietf:params:xml:ns:xmpp-sasl"
    acts = p.send(f"<auth xmlns='{sasl}' mechanism='EXTERNAL'>{auth}</auth>".encode())
    assert of(acts, Authenticated) and not of(acts, BidiRoute)
    acts = p.send(header())
    assert BIDI_FEATURE not in out(acts)  # not offered again on the authenticated stream
    assert of(acts, BidiRoute) == [BidiRoute(local="b.test", remote="a.test")]
    assert isinstance(acts[0], SendBytes) and acts[0].data.startswith(b"<?xml")


def _bidi_with_sm(p):
    p.send(header())
    p.send(BIDI)
    p.dialback()
    assert out(p.send(ENABLE)) == ENABLED


def test_sm_counts_what_we_send_on_a_bidi_stream():
    p = Peer()
    _bidi_with_sm(p)
    m = p.machine
    acts = m.sent(msg(1))
    assert of(acts, SetTimer)[0].seconds > 0 and out(acts) == b""
    assert out(m.sent(msg(2))) == REQUEST  # ack_freq = 2
    m.sent(msg(3))
    m.sent(msg(4))
    assert m.window_full  # buffer_max = 4
    acts = p.send(b"<a xmlns='urn:xmpp:sm:3' h='3'/>")
    assert of(acts, Acked) == [Acked(count=3)] and list(m.sm_out.unacked) == [msg(4)]
    # authenticated: the timer asks for the ack instead of timing the stream out
    assert out(p.event(TimerFired())) == REQUEST and m.state == "OPEN"


def test_unacked_stanzas_are_handed_back_per_pair_when_the_stream_dies():
    p = Peer()
    _bidi_with_sm(p)
    p.dialback(local="b2.test", remote="a.test")
    m = p.machine
    for raw in (msg(1), msg(2, frm="x@b2.test"), msg(3)):
        m.sent(raw)
    p.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
    acts = p.event(ConnectionLost(reason="gone"))
    assert {(u.local, u.remote): u.raws for u in of(acts, Unacked)} == {
        ("b.test", "a.test"): (msg(3),),
        ("b2.test", "a.test"): (msg(2, frm="x@b2.test"),),
    }
    assert m.sm_out.unacked == type(m.sm_out.unacked)()


def test_closing_asks_for_the_last_ack():
    p = Peer()
    _bidi_with_sm(p)
    p.machine.sent(msg(1))
    # our final <a/> for what we received, then a request for the peer's last one
    assert out(p.machine.close("bye")) == ack_bytes(0) + REQUEST
    assert p.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>") == [Acked(count=1)]
    assert of(p.send(b"</stream:stream>"), Unacked) == []


def test_a_negotiating_stream_still_times_out():
    p = Peer()
    p.send(header())
    p.event(TimerFired())
    assert p.machine.state == "ERROR" and p.machine.error.condition == "connection-timeout"


# --- outgoing: asking for bidi and accepting the inverse pair -------------------------------------

FROM_B = header("b.test", "a.test", id="peer-id")
F_BIDI = (
    b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
    + BIDI_FEATURE
    + b"<sm xmlns='urn:xmpp:sm:3'/></stream:features>"
)
VALID = b"<db:result from='b.test' to='a.test' type='valid'/>"


class Server(MachineDriver):
    """Our originating side a.test; the test plays b.test."""

    def __init__(self, *, bidi=True, mode="false", limits=None):
        self.machine = OutgoingMachine(
            local="a.test",
            remote="b.test",
            use_starttls=mode,
            secret=SECRET,
            tls_available=mode != "false",
            sm=StreamManagementOptions(),
            bidi=bidi,
            limits=limits,
        )
        super().__init__()
        self.machine.start()


def test_outgoing_asks_for_bidi_before_dialback():
    s = Server(limits=StreamLimits(max_bytes=5000))
    s.send(FROM_B)
    data = out(s.send(F_BIDI))
    assert data.startswith(request_bytes(StreamLimits(max_bytes=5000)))
    assert b"<db:result" in data and s.machine.bidi


def test_outgoing_does_not_ask_unless_offered_and_wanted():
    s = Server(bidi=False)
    s.send(FROM_B)
    assert b"urn:xmpp:bidi" not in out(s.send(F_BIDI)) and not s.machine.bidi
    t = Server()
    t.send(FROM_B)
    plain = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    assert b"urn:xmpp:bidi" not in out(t.send(plain)) and not t.machine.bidi


def test_outgoing_asks_only_after_starttls():
    s = Server(mode="required")
    s.send(FROM_B)
    data = out(
        s.send(
            b"<stream:features><starttls xmlns='"
            + TLS_NS.encode()
            + b"'/>"
            + BIDI_FEATURE
            + b"</stream:features>"
        )
    )
    assert data == STARTTLS
    s.send(f"<proceed xmlns='{TLS_NS}'/>".encode())
    s.tls_up()
    s.send(FROM_B)
    assert out(s.send(F_BIDI)).startswith(BIDI)


def test_outgoing_delivers_only_the_inverse_pair_once_established():
    s = Server()
    s.send(FROM_B)
    s.send(F_BIDI)
    assert of(s.send(msg(0)), Drop)  # not before the stream is authenticated
    s.send(VALID)
    (d,) = of(s.send(msg(1)), Deliver)
    assert d.stanza.id == "m1" and d.seq is None
    for wrong in (msg(2, frm="v@b2.test"), msg(3, to="u@a2.test"), msg(4, frm="v@c.test")):
        acts = s.send(wrong)
        assert of(acts, Drop) and not of(acts, Deliver)
    jabber_client = b"<message xmlns='jabber:client' from='v@b.test' to='u@a.test'/>"
    assert of(s.send(jabber_client), Drop)


def test_outgoing_without_bidi_delivers_nothing():
    s = Server(bidi=False)
    s.send(FROM_B)
    s.send(F_BIDI)
    s.send(VALID)
    assert of(s.send(msg(1)), Drop)


def test_outgoing_acks_the_peers_stanzas_once_handled():
    s = Server()
    s.send(FROM_B)
    s.send(F_BIDI)
    assert out(s.send(VALID)) == ENABLE
    s.send(ENABLED)
    (d1,) = of(s.send(msg(1)), Deliver)
    (d2,) = of(s.send(msg(2)), Deliver)
    assert (d1.seq, d2.seq) == (1, 2)
    assert out(s.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == ack_bytes(0)
    s.event(Handled(seq=1))
    s.event(Handled(seq=2))
    assert out(s.send(b"<r xmlns='urn:xmpp:sm:3'/>")) == ack_bytes(2)
    # the peer closes: our last <a/> goes before our </stream:stream>
    assert out(s.send(b"</stream:stream>")).startswith(ack_bytes(2))


# --- outgoing: the peer's dialback requests on our bidi stream (XEP-0288 section 2.2) ----------


def _established(policy=None):
    s = Server()
    s.machine.policy_allows = policy
    s.send(FROM_B)
    s.send(F_BIDI)
    s.send(VALID)
    return s


def test_peer_authenticates_another_domain_on_our_bidi_stream():
    s = _established()
    assert of(s.send(msg(1, frm="v@b2.test")), Drop)  # not authenticated yet
    acts = s.send(b"<db:result from='b2.test' to='a.test'>k2</db:result>")
    assert of(acts, VerifyKey) == [
        VerifyKey(receiving="a.test", originating="b2.test", stream_id="peer-id", key="k2")
    ]
    assert s.machine.reverse_requests == 1
    acts = s.event(
        VerifyResult(receiving="a.test", originating="b2.test", stream_id="peer-id", type="valid")
    )
    assert out(acts) == b"<db:result from='a.test' to='b2.test' type='valid'/>"
    (d,) = of(s.send(msg(2, frm="v@b2.test")), Deliver)
    assert d.stanza.from_domain == "b2.test"
    assert of(s.send(msg(3, frm="v@b3.test")), Drop)


def test_peer_dialback_requests_answered_with_xep_0220_errors():
    s = _established(policy=lambda local, remote: remote != "denied.test")
    for request, condition in (
        (b"<db:result from='b2.test' to='other.test'>k</db:result>", b"item-not-found"),
        (b"<db:result from='b2.test' to='a.test'/>", b"bad-request"),
        (b"<db:result from='denied.test' to='a.test'>k</db:result>", b"policy-violation"),
    ):
        acts = s.send(request)
        assert not of(acts, VerifyKey)
        data = out(acts)
        assert b"type='error'" in data and condition in data
    assert s.machine.state == "ESTABLISHED"  # dialback errors leave the stream up
    s.send(b"<db:result from='b2.test' to='a.test'>k</db:result>")
    acts = s.event(
        VerifyResult(receiving="a.test", originating="b2.test", stream_id="peer-id", type="invalid")
    )
    assert b"type='invalid'" in out(acts)
    assert of(s.send(msg(4, frm="v@b2.test")), Drop)
    s.send(b"<db:result from='b4.test' to='a.test'>k</db:result>")
    acts = s.event(
        VerifyResult(receiving="a.test", originating="b4.test", stream_id="peer-id", type="error")
    )
    assert b"remote-server-not-found" in out(acts)
    # an answer nobody asked for changes nothing
    acts = s.event(
        VerifyResult(receiving="a.test", originating="b5.test", stream_id="peer-id", type="valid")
    )
    assert of(acts, Drop) and ("a.test", "b5.test") not in s.machine.reverse_pairs


def test_no_dialback_requests_without_bidi_or_before_authentication():
    s = Server(bidi=False)
    s.send(FROM_B)
    s.send(F_BIDI)
    s.send(VALID)
    assert of(s.send(b"<db:result from='b2.test' to='a.test'>k</db:result>"), Drop)
    t = Server()
    t.send(FROM_B)
    t.send(F_BIDI)
    acts = t.send(b"<db:result from='b2.test' to='a.test'>k</db:result>")
    assert of(acts, Drop) and not of(acts, VerifyKey)
