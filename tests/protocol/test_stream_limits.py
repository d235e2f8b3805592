"""XEP-0478 stream limits, sans-IO: the element both ways, what the machines announce and read."""

from __future__ import annotations

import pytest
from lxml import etree
from machine_driver import MachineDriver, out

from s2sfast.config import S2SOptions
from s2sfast.protocol.incoming import IncomingMachine
from s2sfast.protocol.outgoing import OutgoingMachine, parse_features
from s2sfast.protocol.stream_limits import (
    LIMITS_NS,
    StreamLimits,
    find_limits,
    limits_bytes,
    over_limit_text,
    parse_limits,
)

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


def _element(xml: bytes):
    return etree.fromstring(xml)


def test_limits_element_round_trips():
    limits = StreamLimits(max_bytes=10000, idle_seconds=1800)
    data = limits_bytes(limits)
    assert data == (
        b"<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>10000</max-bytes>"
        b"<idle-seconds>1800</idle-seconds></limits>"
    )
    assert parse_limits(_element(data)) == limits


def test_only_what_is_known_is_announced():
    assert limits_bytes(StreamLimits(max_bytes=None, idle_seconds=60)) == (
        b"<limits xmlns='urn:xmpp:stream-limits:0'><idle-seconds>60</idle-seconds></limits>"
    )
    assert limits_bytes(StreamLimits()) == b""
    assert limits_bytes(None) == b""


@pytest.mark.parametrize(
    "inner, expected",
    [
        (b"<max-bytes> 4096 </max-bytes>", StreamLimits(max_bytes=4096)),
        (
            b"<max-bytes>-5</max-bytes><idle-seconds>30</idle-seconds>",
            StreamLimits(idle_seconds=30),
        ),
        (b"<max-bytes>0</max-bytes>", None),
        (b"<max-bytes>lots</max-bytes>", None),
        (b"<max-bytes>" + b"9" * 19 + b"</max-bytes>", None),  # not a real count
        (b"<max-bytes>\xd9\xa3</max-bytes>", None),  # a non-ASCII digit
        (b"", None),
        (b"<max-bytes xmlns='other'>10</max-bytes>", None),
    ],
)
def test_what_is_not_a_positive_count_is_not_a_limit(inner, expected):
    xml = b"<limits xmlns='" + LIMITS_NS.encode() + b"'>" + inner + b"</limits>"
    assert parse_limits(_element(xml)) == expected


def test_find_limits_in_features_and_elsewhere():
    features = _element(
        b"<features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        b"<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>512</max-bytes></limits></features>"
    )
    assert find_limits(features) == StreamLimits(max_bytes=512)
    assert find_limits(_element(b"<features/>")) is None


def test_bounce_text_names_the_limit_and_the_peer():
    text = over_limit_text(70000, 65536, "b.test")
    assert "70000" in text and "65536" in text and "b.test" in text


# --- the machines --------------------------------------------------------------------------------


class Receiving(MachineDriver):
    def __init__(self, limits):
        opts = S2SOptions(shared="s")
        self.machine = IncomingMachine(
            hosts={"b.test"},
            options_for=lambda host: opts,
            policy_allows=lambda local, remote: True,
            limits=limits,
        )
        super().__init__()
        self.machine.start()


def test_incoming_features_announce_our_limits():
    data = Receiving(StreamLimits(max_bytes=65536, idle_seconds=600)).send(TO_B)
    assert (
        b"<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>65536</max-bytes>"
        b"<idle-seconds>600</idle-seconds></limits>" in out(data)
    )
    # an unlimited listener without idle timeout has nothing to announce
    assert b"stream-limits" not in out(Receiving(StreamLimits()).send(TO_B))
    assert b"stream-limits" not in out(Receiving(None).send(TO_B))


def test_parse_features_reads_the_limits():
    features = parse_features(
        b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
        b"<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>2000</max-bytes>"
        b"<idle-seconds>90</idle-seconds></limits></stream:features>"
    )
    assert features.limits == StreamLimits(max_bytes=2000, idle_seconds=90)
    assert parse_features(b"<stream:features/>").limits is None


def test_outgoing_machine_keeps_the_peers_latest_limits():
    class Originating(MachineDriver):
        def __init__(self):
            self.machine = OutgoingMachine(local="a.test", remote="b.test", secret="s")
            super().__init__()
            self.machine.start()

    o = Originating()
    assert o.machine.peer_max_bytes is None
    o.send(FROM_B)
    o.send(
        b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
        b"<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>2000</max-bytes></limits>"
        b"</stream:features>"
    )
    assert o.machine.peer_limits == StreamLimits(max_bytes=2000)
    assert o.machine.peer_max_bytes == 2000
