"""s2sfast.protocol.sm: XEP-0198 counters, the unacked queue, the request policy, wrap-around,
the handled prefix and handled-count-too-high, without sockets."""

from __future__ import annotations

import pytest
from lxml import etree

from s2sfast.protocol.errors import RemoteStreamError
from s2sfast.protocol.sm import (
    MODULUS,
    REQUEST,
    SM_NS,
    HandledCountTooHigh,
    SmInbound,
    SmOutbound,
    ack_bytes,
    failed_bytes,
    handled_count_too_high_bytes,
    parse_ack,
)


def raws(n, start=0):
    return [f"<message id='{i}'/>".encode() for i in range(start, start + n)]


def test_wire_elements():
    assert ack_bytes(5) == b"<a xmlns='urn:xmpp:sm:3' h='5'/>"
    assert ack_bytes(MODULUS + 3) == b"<a xmlns='urn:xmpp:sm:3' h='3'/>"
    assert REQUEST == b"<r xmlns='urn:xmpp:sm:3'/>"
    el = etree.fromstring(failed_bytes("unexpected-request"))
    assert el.tag == f"{{{SM_NS}}}failed"
    assert el[0].tag == "{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request"


@pytest.mark.parametrize("h", ["0", "7", "4294967295"])
def test_parse_ack(h):
    assert parse_ack(f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode()) == int(h)


@pytest.mark.parametrize(
    "raw, h",
    [
        (b'<a xmlns="urn:xmpp:sm:3" h="12"/>', 12),  # double quotes: the plain form too
        (b"<a h='3' xmlns='urn:xmpp:sm:3'/>", 3),  # other orders and forms: through lxml
        (b"<sm:a xmlns:sm='urn:xmpp:sm:3' h='4'/>", 4),
        (b"<a xmlns='urn:xmpp:sm:3' h='5'></a>", 5),
    ],
)
def test_parse_ack_forms(raw, h):
    assert parse_ack(raw) == h


@pytest.mark.parametrize(
    "raw",
    [
        b"<a xmlns='urn:xmpp:sm:3'/>",
        b"<a xmlns='urn:xmpp:sm:3' h='99999999999'/>",
        b"<a xmlns='urn:xmpp:sm:3' h='-1'/>",
        b"<a xmlns='urn:xmpp:sm:3' h='4294967296'/>",
        b"<a xmlns='urn:xmpp:sm:3' h='1e3'/>",
        b"<a xmlns='urn:xmpp:sm:3' h='\xd9\xa3'/>",  # an Arabic-Indic digit is not ASCII
        b"<a xmlns='urn:xmpp:sm:3' h='1'",
    ],
)
def test_parse_ack_refuses_bad_h(raw):
    with pytest.raises(RemoteStreamError) as err:
        parse_ack(raw)
    assert err.value.condition == "bad-format"


def test_outbound_counts_keeps_and_releases_in_order():
    sm = SmOutbound(request_every=3, max_unacked=10)
    asks = [sm.record(r) for r in raws(5)]
    assert asks == [False, False, True, True, True]  # every 3 since the last request
    sm.requested()
    assert sm.awaiting and sm.sent == 5 and len(sm.unacked) == 5
    assert sm.ack(2) == 2
    assert list(sm.unacked) == raws(3, start=2)
    assert not sm.awaiting
    assert sm.ack(2) == 0  # a repeated ack covers nothing new
    assert sm.ack(5) == 3 and not sm.unacked and sm.acked == 5
    assert [sm.record(r) for r in raws(3)] == [False, False, True]  # counted from requested()


def test_outbound_window_full_asks_for_an_ack():
    sm = SmOutbound(request_every=100, max_unacked=4)
    assert sm.request_every == 4  # never more than the window
    for r in raws(3):
        assert not sm.record(r)
    assert sm.record(b"<iq/>") and sm.window_full


@pytest.mark.parametrize(
    "h, sent",
    [(6, 5), (MODULUS - 1, 0)],  # too high; and one "below" 0, i.e. backwards
)
def test_ack_beyond_what_was_sent_is_handled_count_too_high(h, sent):
    sm = SmOutbound()
    for r in raws(sent):
        sm.record(r)
    with pytest.raises(HandledCountTooHigh) as err:
        sm.ack(h)
    exc = err.value
    assert exc.condition == "undefined-condition"
    assert (exc.h, exc.send_count) == (h, sent)
    assert len(sm.unacked) == sent  # nothing released on a bad ack
    el = etree.fromstring(
        b"<s xmlns:stream='http://etherx.jabber.org/streams'>"
        + handled_count_too_high_bytes(exc)
        + b"</s>"
    )[0]
    streams = "urn:ietf:params:xml:ns:xmpp-streams"
    assert el[0].tag == f"{{{streams}}}undefined-condition"
    app = el.find(f"{{{SM_NS}}}handled-count-too-high")
    assert app.get("h") == str(h) and app.get("send-count") == str(sent)


def test_outbound_counter_wraps_at_2_32():
    sm = SmOutbound(initial=MODULUS - 2, request_every=10)
    for r in raws(5):
        sm.record(r)
    assert sm.sent == MODULUS + 3
    assert sm.ack(MODULUS - 1) == 1  # before the wrap
    assert sm.ack(0) == 1  # the 2**32-th stanza: h wraps to 0
    assert sm.ack(3) == 3 and not sm.unacked
    with pytest.raises(HandledCountTooHigh) as err:
        sm.ack(4)
    assert err.value.send_count == 3  # reported modulo 2**32 too


def test_take_unacked_empties_the_queue():
    sm = SmOutbound()
    for r in raws(4):
        sm.record(r)
    sm.ack(1)
    assert sm.take_unacked() == raws(3, start=1)
    assert not sm.unacked


def test_inbound_h_is_the_handled_prefix_even_out_of_order():
    sm = SmInbound()
    seqs = [sm.receive() for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5] and sm.in_flight == 5
    assert sm.handled(2) is None and sm.h == 0  # 1 still in memory: not covered
    assert sm.handled(3) is None and sm.h == 0
    sm.handled(1)
    assert sm.h == 3 and sm.in_flight == 2
    sm.handled(3)  # twice: ignored
    sm.handled(99)  # never received: ignored
    assert sm.h == 3
    sm.handled(5)
    assert sm.h == 3
    sm.handled(4)
    assert sm.h == 5 and sm.in_flight == 0


def test_inbound_handled_in_order_and_never_beyond_what_was_received():
    sm = SmInbound()
    assert sm.handled(1) is None and sm.h == 0  # nothing received yet
    for _ in range(3):
        sm.receive()
    for seq in (1, 2, 3):
        sm.handled(seq)
    assert sm.h == 3 and sm.in_flight == 0
    assert sm.handled(4) is None and sm.h == 3  # the next number, but never received


def test_inbound_handled_run_is_handled_for_each():
    sm = SmInbound()
    for _ in range(10):
        sm.receive()
    assert sm.request() is None  # all 10 in flight: the ack is owed
    sm.handled(4)  # ahead of 1..3: kept aside
    assert sm.handled_run(1, 3) is None and sm.h == 4  # the run, then the one kept aside
    assert sm.handled_run(6, 8) is None and sm.h == 4  # behind 5, still in flight
    assert sm.handled_run(5, 5) is None and sm.h == 8
    assert sm.handled_run(9, 10) == ack_bytes(10)  # everything the <r/> asked about
    assert sm.in_flight == 0
    assert sm.handled_run(11, 12) is None and sm.h == 10  # never received: ignored


def test_inbound_request_answers_now_or_once_in_flight_stanzas_are_handled():
    sm = SmInbound()
    assert sm.request() == ack_bytes(0)
    a, b = sm.receive(), sm.receive()
    sm.handled(a)
    assert sm.request() is None  # b is still in memory: the ack waits for it
    late = sm.receive()  # received after the <r/>: not what the peer asked about
    assert sm.handled(b) == ack_bytes(2)
    assert sm.handled(late) is None  # no second ack without a request
    assert sm.final_ack() == ack_bytes(3)


def test_inbound_counter_wraps_at_2_32():
    sm = SmInbound(initial=MODULUS - 1)
    seqs = [sm.receive() for _ in range(3)]
    for s in seqs:
        sm.handled(s)
    assert sm.h == MODULUS + 2
    assert sm.request() == ack_bytes(2)


def test_bounds_must_be_positive():
    for kw in ({"max_unacked": 0}, {"request_every": 0}, {"request_after": 0}):
        with pytest.raises(ValueError):
            SmOutbound(**kw)
