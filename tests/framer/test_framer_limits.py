"""Limits: stanza size (policy-violation as soon as crossed, without buffering past it), nesting
depth, the bounded header and closing tag; whitespace keepalives are never limited."""

from __future__ import annotations

import pytest

from s2sfast.framing import Stanza, StreamClose, StreamFramer
from s2sfast.protocol.errors import FramingError

ROOT = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"


def open_framer(**kw) -> StreamFramer:
    f = StreamFramer(**kw)
    f.feed(ROOT)
    return f


def stanza_of_size(n: int) -> bytes:
    head, tail = b"<message><body>", b"</body></message>"
    return head + b"x" * (n - len(head) - len(tail)) + tail


def test_stanza_of_exactly_the_limit_accepted():
    raw = stanza_of_size(1000)
    (st,) = open_framer(max_stanza_size=1000).feed(raw)
    assert st.raw == raw


def test_stanza_one_byte_over_the_limit_rejected():
    with pytest.raises(FramingError) as exc:
        open_framer(max_stanza_size=1000).feed(stanza_of_size(1001))
    assert exc.value.condition == "policy-violation"


def test_limit_applies_per_stanza_not_per_stream():
    f = open_framer(max_stanza_size=100)
    events = f.feed(stanza_of_size(100) * 50 + b"  " + stanza_of_size(100))
    assert len(events) == 51


def test_oversized_stanza_rejected_as_soon_as_limit_crossed():
    f = open_framer(max_stanza_size=1000)
    f.feed(b"<message><body>")
    f.feed(b"x" * 900)  # 915 bytes so far: still fine
    with pytest.raises(FramingError) as exc:
        f.feed(b"x" * 100)  # crosses 1000 long before any end tag
    assert exc.value.condition == "policy-violation"
    assert exc.value.offset == len(ROOT) + 1000


def test_endless_stanza_in_small_chunks_stops_at_limit():
    f = open_framer(max_stanza_size=4096)
    f.feed(b"<message><body>")
    fed = 15
    with pytest.raises(FramingError) as exc:
        while fed < 10_000_000:
            f.feed(b"y" * 100)
            fed += 100
    assert exc.value.condition == "policy-violation"
    assert fed <= 4096 + 100  # stopped within one chunk of the limit


def test_endless_attribute_value_and_name_in_stanza():
    for start in (b"<message to='", b"<message a", b"<messag"):
        f = open_framer(max_stanza_size=500)
        with pytest.raises(FramingError) as exc:
            f.feed(start + b"a" * 600)
        assert exc.value.condition == "policy-violation"


def test_limit_crossed_inside_a_utf8_sequence():
    f = open_framer(max_stanza_size=200)
    with pytest.raises(FramingError) as exc:
        f.feed(b"<message>" + b"x" * 189 + "\u2603".encode())  # 201 bytes, cut at 200
    assert exc.value.condition == "policy-violation"


def test_unlimited_stanzas_when_none():
    raw = stanza_of_size(1_000_000)
    (st,) = open_framer().feed(raw)
    assert st.raw == raw


def test_endless_header_rejected_at_64k_by_default():
    f = StreamFramer()
    f.feed(ROOT[:-1])
    with pytest.raises(FramingError) as exc:
        for _ in range(100):
            f.feed(b" " * 1024)
    assert exc.value.condition == "policy-violation"
    assert exc.value.offset == 65536


@pytest.mark.parametrize(
    "start",
    [ROOT[:-1] + b" to='", ROOT[:-1] + b" a", b"<stream:str", b"<?xml version='1.0'", b"  "],
)
def test_endless_header_parts_rejected_at_the_stanza_limit(start):
    f = StreamFramer(max_stanza_size=1000)
    with pytest.raises(FramingError) as exc:
        f.feed(start + b"a" * 2000 if not start.isspace() else start * 1000)
    assert exc.value.condition == "policy-violation"


def test_header_of_exactly_the_limit_accepted():
    header = ROOT[:-1] + b" " * (300 - len(ROOT)) + b">"
    assert len(header) == 300
    assert len(StreamFramer(max_stanza_size=300).feed(header)) == 1
    with pytest.raises(FramingError):
        StreamFramer(max_stanza_size=299).feed(header)


def test_endless_closing_tag_is_bounded():
    f = open_framer()
    f.feed(b"</stream:stream")
    with pytest.raises(FramingError) as exc:
        for _ in range(100):
            f.feed(b" " * 1024)
    assert exc.value.condition == "policy-violation"


def test_whitespace_keepalives_are_never_limited():
    f = open_framer(max_stanza_size=100)
    for _ in range(2000):
        assert f.feed(b" " * 100) == []
    events = f.feed(b"\n<presence/></stream:stream>")
    assert [type(e) for e in events] == [Stanza, StreamClose]


def nested(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


def test_depth_up_to_max_accepted():
    f = open_framer(max_depth=5)
    (st,) = f.feed(b"<message>" + nested(4) + b"</message>")
    assert st.name == "message"


def test_depth_beyond_max_rejected():
    f = open_framer(max_depth=5)
    with pytest.raises(FramingError) as exc:
        f.feed(b"<message>" + b"<a>" * 5)
    assert exc.value.condition == "policy-violation"


def test_depth_counts_empty_elements():
    f = open_framer(max_depth=2)
    with pytest.raises(FramingError) as exc:
        f.feed(b"<message><a><b/></a></message>")
    assert exc.value.condition == "policy-violation"


def test_depth_limit_recovers_between_siblings():
    f = open_framer(max_depth=3)
    (st,) = f.feed(b"<m>" + b"<a><b/></a>" * 100 + b"</m>")
    assert st.name == "m"


def test_default_depth_is_64():
    f = open_framer()
    assert len(f.feed(nested(64))) == 1
    with pytest.raises(FramingError):
        f.feed(nested(65))


def test_too_many_namespace_declarations():
    decls = b"".join(b" xmlns:p%d='urn:%d'" % (i, i) for i in range(600))
    with pytest.raises(FramingError) as exc:
        open_framer().feed(b"<message" + decls + b"/>")
    assert exc.value.condition == "policy-violation"


def test_max_stanza_size_is_settable_from_the_next_stanza_on():
    f = open_framer(max_stanza_size=100)
    assert f.max_stanza_size == 100
    f.feed(b"<message><body>")
    f.max_stanza_size = 1000  # the element being read keeps its limit
    with pytest.raises(FramingError) as exc:
        f.feed(b"x" * 200)
    assert exc.value.condition == "policy-violation"

    f = open_framer(max_stanza_size=100)
    f.max_stanza_size = None
    assert f.max_stanza_size is None
    (st,) = f.feed(stanza_of_size(5000))
    assert len(st.raw) == 5000
    f.max_stanza_size = 200
    with pytest.raises(FramingError):
        f.feed(stanza_of_size(201))


def test_max_stanza_size_setter_validates():
    f = StreamFramer()
    with pytest.raises(ValueError):
        f.max_stanza_size = 0
