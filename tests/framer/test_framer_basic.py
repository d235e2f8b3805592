"""StreamFramer basics: header, stanzas and their routing fields, close, sticky errors, API."""

from __future__ import annotations

import pytest

from s2sfast.framing import Stanza, StreamClose, StreamFramer, StreamOpen
from s2sfast.protocol.errors import FramingError

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='b.test' from='a.test' version='1.0'"
    b" xml:lang='en' id='s&amp;1'>"
)


def feed_all(data: bytes, **kw) -> list:
    return StreamFramer(**kw).feed(data)


def test_header_becomes_stream_open_with_attrs_and_namespaces():
    (ev,) = feed_all(HEADER)
    assert isinstance(ev, StreamOpen)
    assert ev.name == "stream"
    assert ev.attrs == {
        "to": "b.test",
        "from": "a.test",
        "version": "1.0",
        "xml:lang": "en",
        "id": "s&1",
    }
    assert ev.namespaces == {
        "": "jabber:server",
        "stream": "http://etherx.jabber.org/streams",
        "db": "jabber:server:dialback",
    }


def test_stanza_fields_and_exact_raw_bytes():
    raw = (
        b"<message to='b@b.test' from=\"a@a.test/r\" type='chat' id='m&lt;1'"
        b" xml:lang='en'><body>hi &amp; bye</body></message>"
    )
    opened, st = feed_all(HEADER + raw)
    assert isinstance(st, Stanza)
    assert st.raw == raw
    assert (st.name, st.ns) == ("message", "jabber:server")
    assert (st.to, st.from_, st.type, st.id) == ("b@b.test", "a@a.test/r", "chat", "m<1")
    assert st.namespaces is opened.namespaces


def test_missing_routing_attributes_are_none():
    _, st = feed_all(HEADER + b"<presence/>")
    assert (st.to, st.from_, st.type, st.id) == (None, None, None, None)
    assert st.raw == b"<presence/>"


def test_prefixed_routing_attributes_are_not_routing_fields():
    _, st = feed_all(HEADER + b"<iq xmlns:x='urn:x' x:to='evil' to='good'/>")
    assert st.to == "good"


def test_dialback_element_namespace():
    _, st = feed_all(HEADER + b"<db:result to='b.test' from='a.test'>abc</db:result>")
    assert (st.name, st.ns) == ("result", "jabber:server:dialback")
    assert (st.to, st.from_) == ("b.test", "a.test")


def test_top_level_elements_in_other_namespaces():
    data = (
        HEADER
        + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
        + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    )
    _, features, starttls = feed_all(data)
    assert (features.name, features.ns) == ("features", "http://etherx.jabber.org/streams")
    assert (starttls.name, starttls.ns) == ("starttls", "urn:ietf:params:xml:ns:xmpp-tls")


def test_stanza_undeclaring_default_namespace_has_empty_ns():
    _, st = feed_all(HEADER + b"<x xmlns=''/>")
    assert st.ns == ""


def test_stream_close_and_whitespace_after_it():
    f = StreamFramer()
    events = f.feed(HEADER + b"<presence/> \n</stream:stream>  \r\n\t")
    assert [type(e) for e in events] == [StreamOpen, Stanza, StreamClose]
    assert f.closed
    assert f.feed(b"   ") == []


def test_data_after_close_is_not_well_formed():
    f = StreamFramer()
    f.feed(HEADER + b"</stream:stream>")
    with pytest.raises(FramingError) as exc:
        f.feed(b"<presence/>")
    assert exc.value.condition == "not-well-formed"


def test_empty_stream_root_opens_and_closes():
    data = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'/>"
    events = feed_all(data)
    assert [type(e) for e in events] == [StreamOpen, StreamClose]


def test_close_tag_with_whitespace_before_gt():
    events = feed_all(HEADER + b"</stream:stream \n>")
    assert isinstance(events[-1], StreamClose)


def test_close_tag_must_match_root_qname():
    with pytest.raises(FramingError) as exc:
        feed_all(HEADER + b"</stream:streams>")
    assert exc.value.condition == "not-well-formed"


def test_errors_are_sticky_with_same_condition():
    f = StreamFramer()
    with pytest.raises(FramingError) as first:
        f.feed(HEADER + b"<message><!-- c --></message>")
    with pytest.raises(FramingError) as again:
        f.feed(b"<presence/>")
    assert first.value.condition == again.value.condition == "restricted-xml"
    assert again.value.offset == first.value.offset


def test_error_discards_events_completed_in_the_same_feed():
    f = StreamFramer()
    with pytest.raises(FramingError):
        f.feed(HEADER + b"<presence/><a b='1' b='2'/>")
    with pytest.raises(FramingError):
        f.feed(b"")


def test_error_offset_points_at_offending_byte():
    data = HEADER + b"<message>\x01</message>"
    with pytest.raises(FramingError) as exc:
        feed_all(data)
    assert exc.value.offset == data.index(b"\x01")


def test_feed_accepts_bytearray_and_memoryview():
    raw = b"<presence to='x'/>"
    a = StreamFramer().feed(bytearray(HEADER + raw))
    b = StreamFramer().feed(memoryview(HEADER + raw))
    c = StreamFramer().feed(memoryview(b"xx" + HEADER + raw)[2:])
    assert a == b == c
    assert a[1].raw == raw


def test_feed_rejects_str():
    with pytest.raises(TypeError):
        StreamFramer().feed(HEADER.decode())


def test_feed_returns_empty_list_when_nothing_completes():
    f = StreamFramer()
    assert list(f.feed(b"<?xml version='1.0'?>")) == []
    assert list(f.feed(b"")) == []


def test_offset_counts_consumed_bytes():
    f = StreamFramer()
    f.feed(HEADER)
    f.feed(b"<presence/>")
    assert f.offset == len(HEADER) + len(b"<presence/>")


def test_stanza_constructible_from_python():
    st = Stanza(raw=b"<message/>", name="message", ns="jabber:server", to="a", id="1")
    assert (st.raw, st.name, st.ns, st.to, st.from_, st.type, st.id, st.namespaces) == (
        b"<message/>",
        "message",
        "jabber:server",
        "a",
        None,
        None,
        "1",
        None,
    )
    assert "message" in repr(st)


def test_events_are_readonly():
    _, st = feed_all(HEADER + b"<presence/>")
    with pytest.raises(AttributeError):
        st.to = "x"


def test_events_compare_by_value():
    a = feed_all(HEADER + b"<presence/></stream:stream>")
    b = feed_all(HEADER + b"<presence/></stream:stream>")
    assert a == b
    assert a[2] == StreamClose()
    assert repr(a[2]) == "StreamClose()"


@pytest.mark.parametrize("kw", [{"max_stanza_size": 0}, {"max_depth": 0}])
def test_invalid_limits_rejected(kw):
    with pytest.raises(ValueError):
        StreamFramer(**kw)


def test_client_namespace_framer():
    data = HEADER.replace(b"jabber:server'", b"jabber:client'")
    (ev,) = feed_all(data, default_ns="jabber:client")
    assert ev.namespaces[""] == "jabber:client"


def test_attribute_value_normalisation():
    raw = b"<message to='a\tb\nc\r\nd\re' id='&#9;&#10;&#13;' type='x \r\r\ny'/>"
    _, st = feed_all(HEADER + raw)
    assert (st.to, st.id, st.type) == ("a b c d e", "\t\n\r", "x   y")
    assert st.raw == raw


def test_attribute_value_normalisation_across_chunks():
    f = StreamFramer()
    f.feed(HEADER + b"<message to='a\r")
    (st,) = f.feed(b"\nb'/>")
    assert st.to == "a b"


def test_reinitialising_starts_a_new_stream():
    f = StreamFramer()
    with pytest.raises(FramingError):
        f.feed(HEADER + b"<message xmlns:x='urn:x'><x:a/><!-- -->")
    f.__init__()
    assert [type(e) for e in f.feed(HEADER + b"<presence/>")] == [StreamOpen, Stanza]
    assert f.offset == len(HEADER) + len(b"<presence/>")
