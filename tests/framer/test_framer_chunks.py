"""Chunk boundaries anywhere (inside UTF-8 sequences, names, references, CDATA markers, the
closing tag) give identical events and identical errors; cost stays linear in the input."""

from __future__ import annotations

import random

import pytest

from s2sfast.framing import Stanza, StreamClose, StreamFramer, StreamOpen
from s2sfast.protocol.errors import FramingError

STREAM = (
    "\ufeff<?xml version='1.0' encoding='UTF-8'?>\n"
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    " xmlns:db='jabber:server:dialback' to='b.test' from='a.test' id='x&amp;y' version='1.0'"
    " xml:lang='en'>"
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features> \n"
    "<db:result from='a.test' to='b.test'>0123abcdef</db:result>"
    "<message to='b\u00e6@b.test' from='a@a.test/\U0001f600' type='chat' id='m&#x263a;&lt;1'>"
    "<body>gr\u00fc\u00dfe \u2603 \u65e5\u672c\u8a9e \U0001f600 &lt;&amp;&gt;&quot;&apos;"
    " &#169; &#x1F600; ] ]] > </body>"
    "<x xmlns='urn:x' xmlns:p='urn:p' p:a='1' a='2'><p:y><![CDATA[<&]]]]></p:y></x>"
    "<n\u00e9\u00b7 xmlns='urn:n'/></message>\t"
    "<presence/>"
    "<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
    "</stream:stream \n> \n"
).encode()


def frame(chunks) -> list:
    f = StreamFramer(max_stanza_size=10_000)
    events = []
    for chunk in chunks:
        events.extend(f.feed(chunk))
    return events


def failure(chunks) -> tuple[str, int]:
    f = StreamFramer()
    with pytest.raises(FramingError) as exc:
        for chunk in chunks:
            f.feed(chunk)
    return exc.value.condition, exc.value.offset


WHOLE = frame([STREAM])


def test_reference_stream_frames_as_expected():
    kinds = [type(e) for e in WHOLE]
    assert kinds == [StreamOpen, Stanza, Stanza, Stanza, Stanza, Stanza, StreamClose]
    msg = WHOLE[3]
    assert (msg.to, msg.from_, msg.id) == ("b\u00e6@b.test", "a@a.test/\U0001f600", "m\u263a<1")
    assert WHOLE[0].attrs["id"] == "x&y"


def test_every_two_way_split_gives_identical_events():
    for i in range(len(STREAM) + 1):
        assert frame([STREAM[:i], STREAM[i:]]) == WHOLE, i


def test_one_byte_chunks_give_identical_events():
    assert frame([STREAM[i : i + 1] for i in range(len(STREAM))]) == WHOLE


def test_random_splits_give_identical_events():
    rnd = random.Random(7)
    for _ in range(300):
        cuts = sorted(rnd.sample(range(1, len(STREAM)), rnd.randint(1, 40)))
        bounds = [0, *cuts, len(STREAM)]
        chunks = [STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        assert frame(chunks) == WHOLE


def test_empty_chunks_change_nothing():
    chunks = []
    for i in range(len(STREAM)):
        chunks += [b"", STREAM[i : i + 1]]
    assert frame(chunks) == WHOLE


def test_stanza_raw_is_exact_across_chunks():
    raws = [e.raw for e in frame([STREAM[i : i + 3] for i in range(0, len(STREAM), 3)])[1:-1]]
    for raw in raws:
        assert raw in STREAM


BAD = [
    STREAM.replace(b"\xe2\x98\x83", b"\xe2\x98("),
    STREAM.replace(b"\xf0\x9f\x98\x80 &lt;", b"\xf0\x9f\x98 &lt;"),
    STREAM.replace(b"\xc3\xa6@", b"\xc3@"),
    STREAM.replace(b"&#169;", b"&#1;"),
    STREAM.replace(b"&quot;", b"&quote;"),
    STREAM.replace(b"<![CDATA[", b"<![CDATX["),
    STREAM.replace(b"</stream:stream", b"</stream:strean"),
    STREAM.replace(b"]]]]>", b"]]]]><!-- -->"),
    STREAM.replace(b"p:a='1'", b"q:a='1'"),
    STREAM.replace(b"a='2'", b"p:a='2'"),
]


@pytest.mark.parametrize("bad", BAD)
def test_errors_identical_under_any_split(bad):
    expected = failure([bad])
    for i in range(0, len(bad) + 1, 3):
        assert failure([bad[:i], bad[i:]]) == expected, i
    assert failure([bad[i : i + 1] for i in range(len(bad))]) == expected


@pytest.mark.slow
def test_ten_megabyte_stanza_in_one_byte_chunks_is_linear():
    """A quadratic framer (re-scanning buffered bytes per chunk) would not finish this."""
    head = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
    body = ("x\u00e9" * (10_000_000 // 3)).encode()
    raw = b"<message><body>" + body + b"</body></message>"
    f = StreamFramer()
    f.feed(head)
    feed = f.feed
    events = []
    for i in range(len(raw)):
        events += feed(raw[i : i + 1])
    assert len(events) == 1
    assert events[0].raw == raw
