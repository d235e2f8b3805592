"""router.stanza_from_bytes (Node.send's framing of raw bytes) with its reused framer: a refused
input never leaks into the next call, and every call sees exactly one whole stanza."""

from __future__ import annotations

import pytest

from s2sfast.protocol.errors import FramingError
from s2sfast.router import stanza_from_bytes

GOOD = b"<message from='bot@a.test' to='alice@b.test' id='m1'><body>hi</body></message>"


@pytest.mark.parametrize(
    "bad",
    [b"<a/><b", b"<a", b"<a/><b/>", b"", b"  ", b"<message to='x'>"],
)
def test_not_exactly_one_whole_stanza_is_refused_and_the_next_call_is_unaffected(bad):
    with pytest.raises(ValueError):
        stanza_from_bytes(bad)
    stanza = stanza_from_bytes(GOOD)
    assert (stanza.name, stanza.to, stanza.from_, stanza.id) == (
        "message",
        "alice@b.test",
        "bot@a.test",
        "m1",
    )
    assert stanza.raw == GOOD


@pytest.mark.parametrize(
    "bad", [b"junk", b"<a><b></a>", b"<!-- c --><a/>", b"<a>&foo;</a>", b"</message>"]
)
def test_bytes_the_framer_refuses_raise_framing_error_and_do_not_poison_it(bad):
    with pytest.raises(FramingError):
        stanza_from_bytes(bad)
    assert stanza_from_bytes(GOOD).raw == GOOD


def test_surrounding_whitespace_is_allowed_and_left_out_of_raw():
    assert stanza_from_bytes(b"\n  <iq type='get' to='b.test' from='a.test' id='1'/>  \n").raw == (
        b"<iq type='get' to='b.test' from='a.test' id='1'/>"
    )


def test_many_calls_in_a_row_each_frame_their_own_stanza():
    for i in range(1000):
        raw = f"<message to='u{i}@b.test' from='a.test' id='{i}'/>".encode()
        stanza = stanza_from_bytes(raw)
        assert (stanza.to, stanza.id, stanza.raw) == (f"u{i}@b.test", str(i), raw)
