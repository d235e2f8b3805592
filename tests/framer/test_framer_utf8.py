"""UTF-8 and XML Char checks: invalid, overlong, surrogate and truncated sequences, forbidden
control characters and non-characters are not-well-formed wherever they appear."""

from __future__ import annotations

import pytest

from s2sfast.framing import StreamFramer
from s2sfast.protocol.errors import FramingError

ROOT = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"

BAD_SEQUENCES = [
    b"\x80",  # lone continuation byte
    b"\xbf",
    b"\xc0\xaf",  # overlong '/'
    b"\xc1\xbf",  # overlong
    b"\xe0\x80\xaf",  # overlong 3-byte
    b"\xe0\x9f\xbf",  # overlong 3-byte (boundary)
    b"\xf0\x80\x80\xaf",  # overlong 4-byte
    b"\xf0\x8f\xbf\xbf",  # overlong 4-byte (boundary)
    b"\xed\xa0\x80",  # surrogate U+D800
    b"\xed\xbf\xbf",  # surrogate U+DFFF
    b"\xf4\x90\x80\x80",  # U+110000
    b"\xf5\x80\x80\x80",  # invalid lead
    b"\xff",
    b"\xfe",
    b"\xc3(",  # bad continuation
    b"\xe2\x82(",  # bad third byte
    b"\xf0\x9f\x98(",  # bad fourth byte
    b"\xc3",  # truncated by the markup that follows
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xef\xbf\xbe",  # U+FFFE
    b"\xef\xbf\xbf",  # U+FFFF
]
FORBIDDEN_CONTROLS = [bytes([c]) for c in range(0x20) if c not in (9, 10, 13)]


def condition(data: bytes) -> str:
    with pytest.raises(FramingError) as exc:
        StreamFramer().feed(data)
    return exc.value.condition


@pytest.mark.parametrize("seq", BAD_SEQUENCES + FORBIDDEN_CONTROLS)
def test_bad_bytes_in_text(seq):
    assert condition(ROOT + b"<message><body>a" + seq + b"</body></message>") == ("not-well-formed")


@pytest.mark.parametrize("seq", BAD_SEQUENCES + FORBIDDEN_CONTROLS)
def test_bad_bytes_in_attribute_value(seq):
    assert condition(ROOT + b"<message to='a" + seq + b"'/>") == "not-well-formed"


@pytest.mark.parametrize("seq", BAD_SEQUENCES + FORBIDDEN_CONTROLS)
def test_bad_bytes_in_cdata(seq):
    data = ROOT + b"<message><body><![CDATA[a" + seq + b"]]></body></message>"
    assert condition(data) == "not-well-formed"


@pytest.mark.parametrize("seq", BAD_SEQUENCES)
def test_bad_bytes_in_names(seq):
    assert condition(ROOT + b"<mess" + seq + b"age/>") == "not-well-formed"
    assert condition(ROOT + b"<message a" + seq + b"='1'/>") == "not-well-formed"


@pytest.mark.parametrize("seq", BAD_SEQUENCES[:8] + FORBIDDEN_CONTROLS[:3])
def test_bad_bytes_in_header(seq):
    assert condition(ROOT[:-1] + b" to='b" + seq + b"'>") == "not-well-formed"


def test_bad_bytes_between_stanzas():
    assert condition(ROOT + b"\xc2\xa0<presence/>") == "not-well-formed"


def test_valid_utf8_everywhere_accepted():
    body = "gr\u00fc\u00dfe \u2603 \u65e5\u672c\u8a9e \U0001f600 caf\u00e9 \ufffd \U0010fffd"
    raw = (
        f"<message to='\u00e6\u00f8\u00e5@b.test' id='\U0001f600'><body>{body}</body>"
        f"<x xmlns='urn:x' a='\u2603'><![CDATA[\U0001f600]]></x></message>"
    ).encode()
    events = StreamFramer().feed(ROOT + raw)
    st = events[1]
    assert st.raw == raw
    assert (st.to, st.id) == ("\u00e6\u00f8\u00e5@b.test", "\U0001f600")


def test_allowed_whitespace_controls_and_del():
    raw = b"<message id='\t\n\r\x7f'><body>\t\n\r\x7f\xc2\x80\xc2\x9f</body></message>"
    events = StreamFramer().feed(ROOT + raw)
    assert events[1].raw == raw
    assert events[1].id == "   \x7f"  # attribute-value normalisation
