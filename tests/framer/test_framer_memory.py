"""Memory the framer keeps between feeds: an idle stream holds no big partial-stanza buffer."""

from __future__ import annotations

from s2sfast.framing import StreamFramer

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
    b"to='b.test' from='a.test' version='1.0'>"
)


def _stanza(size: int) -> bytes:
    head = b"<message from='u@a.test' to='v@b.test'><body>"
    tail = b"</body></message>"
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_a_big_stanza_split_over_feeds_leaves_no_buffer_behind() -> None:
    f = StreamFramer()
    f.feed(HEADER)
    big = _stanza(40_000)
    f.feed(big[:30_000])
    assert f.buffer_capacity >= 30_000  # the incomplete stanza is held meanwhile
    events = f.feed(big[30_000:])
    assert [e.raw for e in events] == [big]
    assert f.buffer_capacity == 0


def test_the_buffer_goes_when_a_feed_ends_between_stanzas() -> None:
    f = StreamFramer()
    f.feed(HEADER)
    one, two = _stanza(3_000), _stanza(200)
    f.feed(one[:2_000])
    assert f.buffer_capacity >= 2_000
    events = f.feed(one[2_000:] + two)  # ends exactly after the second stanza
    assert [e.raw for e in events] == [one, two]
    assert f.buffer_capacity == 0


def test_a_partial_stanza_keeps_its_buffer_and_small_ones_stay_small() -> None:
    f = StreamFramer()
    f.feed(HEADER)
    one = _stanza(600)
    for i in range(0, len(one) - 100, 100):  # a small stanza trickling in
        assert f.feed(one[i : i + 100]) == []
        assert 0 < f.buffer_capacity <= 1024
    assert [e.raw for e in f.feed(one[len(one) - len(one) % 100 - 100 :])] == [one]
    assert f.buffer_capacity <= 1024


def test_the_start_tag_scratch_goes_between_stanzas_and_comes_back() -> None:
    f = StreamFramer()
    f.feed(HEADER)
    assert f.scratch_capacity == 0  # the header's attributes are read: nothing kept
    one = _stanza(300)
    head = one.index(b"<body>")
    f.feed(one[:20])  # inside the start tag: its attributes are being collected
    assert f.scratch_capacity > 0
    assert f.feed(one[20:head]) == []
    events = f.feed(one[head:] + one)
    assert [e.raw for e in events] == [one, one]
    assert [(e.to, e.from_) for e in events] == [("v@b.test", "u@a.test")] * 2
    assert f.scratch_capacity == 0
