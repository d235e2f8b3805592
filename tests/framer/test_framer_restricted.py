"""Restricted XML (RFC 6120 section 11.1): the XML declaration, PIs, comments, DTDs, entities."""

from __future__ import annotations

import pytest

from s2sfast.framing import Stanza, StreamFramer, StreamOpen
from s2sfast.protocol.errors import FramingError

ROOT = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' to='b.test' version='1.0'>"
)


def condition(data: bytes) -> str:
    with pytest.raises(FramingError) as exc:
        StreamFramer().feed(data)
    return exc.value.condition


def opens(data: bytes) -> bool:
    events = StreamFramer().feed(data)
    return len(events) == 1 and isinstance(events[0], StreamOpen)


@pytest.mark.parametrize(
    "decl",
    [
        b"<?xml version='1.0'?>",
        b'<?xml version="1.0"?>',
        b"<?xml version='1.0' encoding='UTF-8'?>",
        b"<?xml version='1.0' encoding='utf-8'?>",
        b"<?xml version='1.0' encoding=\"Utf-8\" standalone='yes'?>",
        b"<?xml version='1.0' standalone='no' ?>",
        b"<?xml\tversion = '1.0'\n?>",
    ],
)
def test_xml_declaration_at_start_accepted(decl):
    assert opens(decl + ROOT)


def test_no_declaration_and_leading_whitespace_accepted():
    assert opens(ROOT)
    assert opens(b"\n  " + ROOT)


def test_utf8_bom_at_start_accepted():
    assert opens(b"\xef\xbb\xbf<?xml version='1.0'?>" + ROOT)
    assert opens(b"\xef\xbb\xbf" + ROOT)


def test_bom_not_at_start_is_not_well_formed():
    assert condition(b" \xef\xbb\xbf" + ROOT) == "not-well-formed"


@pytest.mark.parametrize("enc", [b"ISO-8859-1", b"UTF-16", b"us-ascii", b"UTF8"])
def test_other_encodings_unsupported(enc):
    assert condition(b"<?xml version='1.0' encoding='" + enc + b"'?>" + ROOT) == (
        "unsupported-encoding"
    )


@pytest.mark.parametrize("start", [b"\xff\xfe<\x00", b"\xfe\xff\x00<", b"\x00<\x00s"])
def test_utf16_stream_unsupported(start):
    assert condition(start) == "unsupported-encoding"


@pytest.mark.parametrize(
    "decl",
    [
        b"<?xml?>",
        b"<?xml version='2.0'?>",
        b"<?xml version='1.0' encoding='UTF-8' version='1.0'?>",
        b"<?xml encoding='UTF-8' version='1.0'?>",
        b"<?xml version='1.0' standalone='maybe'?>",
        b"<?xml version='1.0>",
        b"<?xml version=1.0?>",
    ],
)
def test_malformed_declaration_not_well_formed(decl):
    assert condition(decl + ROOT) == "not-well-formed"


def test_declaration_after_whitespace_is_restricted():
    assert condition(b" <?xml version='1.0'?>" + ROOT) == "restricted-xml"


def test_second_declaration_is_restricted():
    assert condition(b"<?xml version='1.0'?><?xml version='1.0'?>" + ROOT) == "restricted-xml"


def test_declaration_inside_stream_is_restricted():
    assert condition(ROOT + b"<?xml version='1.0'?>") == "restricted-xml"


@pytest.mark.parametrize(
    "where",
    [
        b"<?pi data?>" + ROOT,
        b"<?xml-stylesheet href='a'?>" + ROOT,
        ROOT + b"<?pi data?>",
        ROOT + b"<message><?pi data?></message>",
    ],
)
def test_processing_instructions_restricted(where):
    assert condition(where) == "restricted-xml"


@pytest.mark.parametrize(
    "where",
    [
        b"<!-- hi -->" + ROOT,
        ROOT + b"<!-- keepalive -->",
        ROOT + b"<message><body>a<!-- x -->b</body></message>",
    ],
)
def test_comments_restricted(where):
    assert condition(where) == "restricted-xml"


@pytest.mark.parametrize(
    "where",
    [
        b"<!DOCTYPE stream>" + ROOT,
        b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>" + ROOT,
        ROOT + b"<message><!DOCTYPE x></message>",
    ],
)
def test_doctype_restricted(where):
    assert condition(where) == "restricted-xml"


@pytest.mark.parametrize("ref", [b"&nbsp;", b"&a;", b"&ltx;", b"&LT;", b"&\xc3\xa9;"])
def test_entities_other_than_predefined_restricted(ref):
    assert condition(ROOT + b"<message><body>" + ref + b"</body></message>") == ("restricted-xml")
    assert condition(ROOT + b"<message id='" + ref + b"'/>") == "restricted-xml"


def test_predefined_entities_and_char_refs_unescaped():
    raw = b"<message id='&lt;&gt;&amp;&apos;&quot;&#65;&#x263a;&#X41;'/>"
    with pytest.raises(FramingError):  # &#X is not a character reference: x must be lower case
        StreamFramer().feed(ROOT + raw)
    raw = b"<message id='&lt;&gt;&amp;&apos;&quot;&#65;&#x263a;&#x263A;&#0065;'/>"
    _, st = StreamFramer().feed(ROOT + raw)
    assert isinstance(st, Stanza)
    assert st.id == "<>&'\"A\u263a\u263aA"
    assert st.raw == raw


@pytest.mark.parametrize("bad", [b"<!-x>", b"<!DOCTYP>", b"<!foo>", b"<![CDATX[x]]>"])
def test_anything_after_lt_bang_but_cdata_is_restricted(bad):
    assert condition(ROOT + b"<message>" + bad + b"</message>") == "restricted-xml"


@pytest.mark.parametrize("start", [b"<!", b"<!D", b"<!-", b"<![CDATX"])
def test_markup_declaration_rejected_before_it_is_complete(start):
    f = StreamFramer()
    f.feed(ROOT + b"<message>")
    if start == b"<!":
        assert f.feed(start) == []  # may still become a CDATA section
        return
    with pytest.raises(FramingError) as exc:
        f.feed(start)
    assert exc.value.condition == "restricted-xml"


@pytest.mark.parametrize("bad", [b"\x01", b"\x00", b"\xff", b"\xc3("])
def test_bad_bytes_in_an_unfinished_declaration_rejected_at_once(bad):
    with pytest.raises(FramingError) as exc:
        StreamFramer().feed(b"<?xml version='1.0'" + bad)
    assert exc.value.condition == "not-well-formed"


def test_cdata_accepted_in_content():
    raw = b"<message><body><![CDATA[<b>&amp; ]] ] > ]]></body></message>"
    _, st = StreamFramer().feed(ROOT + raw)
    assert st.raw == raw


def test_cdata_between_stanzas_not_well_formed():
    assert condition(ROOT + b"<![CDATA[ ]]>") == "not-well-formed"


def test_cdata_before_root_not_well_formed():
    assert condition(b"<![CDATA[x]]>" + ROOT) == "not-well-formed"
