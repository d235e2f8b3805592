"""s2sfast.xml: parse_stanza applies the header's namespaces, stanza_from_bytes frames one
element, serialize writes s2s-ready bytes (no redundant jabber:server declaration, db: prefix)."""

from __future__ import annotations

import pytest
from lxml import etree

from s2sfast.framing import Stanza, StreamFramer
from s2sfast.protocol.errors import FramingError
from s2sfast.xml import (
    DIALBACK_NS,
    S2S_NAMESPACES,
    SERVER_NS,
    parse_stanza,
    serialize,
    stanza_from_bytes,
)

HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback'>"
)


def framed(raw: bytes) -> Stanza:
    _, st = StreamFramer().feed(HEADER + raw)
    return st


def test_parse_unprefixed_stanza_gets_default_namespace():
    el = parse_stanza(framed(b"<message to='b@b.test'><body>hi &amp; bye</body></message>"))
    assert el.tag == "{jabber:server}message"
    assert el[0].tag == "{jabber:server}body"
    assert el[0].text == "hi & bye"
    assert el.get("to") == "b@b.test"
    assert el.prefix is None


def test_parse_dialback_stanza_keeps_db_prefix():
    el = parse_stanza(framed(b"<db:result from='a.test' to='b.test'>k3y</db:result>"))
    assert el.tag == "{jabber:server:dialback}result"
    assert el.prefix == "db"
    assert el.text == "k3y"


def test_parse_element_declaring_its_own_namespace():
    el = parse_stanza(
        framed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>")
    )
    assert el.tag == "{urn:ietf:params:xml:ns:xmpp-tls}starttls"
    assert el[0].tag == "{urn:ietf:params:xml:ns:xmpp-tls}required"


@pytest.mark.parametrize("quote", ["'", '"'])
def test_parse_a_value_that_reads_like_a_declaration_is_only_a_value(quote):
    """Found by the framer's differential fuzzing: a start tag was searched for ``xmlns=``
    across its attribute values, so a peer's value could take a stanza out of jabber:server
    or leave the db prefix unbound (lxml then raised on a stanza the framer had accepted)."""
    other = '"' if quote == "'" else "'"
    fake = f" xmlns={other}{other} xmlns:db={other}{other} ".encode()
    q = quote.encode()
    el = parse_stanza(framed(b"<message x=" + q + fake + q + b" to='b@b.test'/>"))
    assert el.tag == "{jabber:server}message"
    assert el.get("x") == fake.decode()
    el = parse_stanza(framed(b"<db:result from='a.test' x=" + q + fake + q + b">k</db:result>"))
    assert el.tag == "{jabber:server:dialback}result"
    assert el.text == "k"


def test_parse_declarations_spelled_with_whitespace_around_the_equals():
    el = parse_stanza(framed(b"<ui\txmlns\n=\r\n''\tid='1'><a/></ui>"))
    assert el.tag == "ui"  # xmlns='' undeclares the stream's default namespace
    assert el[0].tag == "a"
    el = parse_stanza(framed(b"<db:verify xmlns:db = 'urn:other' id='x'/>"))
    assert el.tag == "{urn:other}verify"


def test_parse_stream_prefixed_element_and_unused_declarations_dropped():
    el = parse_stanza(
        framed(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")
    )
    assert el.tag == "{http://etherx.jabber.org/streams}features"
    assert el.nsmap == {"stream": "http://etherx.jabber.org/streams"}


def test_parse_uses_the_streams_own_namespaces():
    raw = b"<x:iq xmlns:y='urn:y' type='get'><y:q/></x:iq>"
    header = (
        b"<stream:stream xmlns='jabber:server' xmlns:x='urn:x'"
        b" xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    _, st = StreamFramer().feed(header + raw)
    el = parse_stanza(st)
    assert el.tag == "{urn:x}iq"
    assert el[0].tag == "{urn:y}q"


def test_parse_hand_built_stanza_assumes_s2s_namespaces():
    st = Stanza(raw=b"<presence type='probe'/>", name="presence", ns=SERVER_NS)
    assert parse_stanza(st).tag == "{jabber:server}presence"


def test_stanza_from_bytes_frames_one_element():
    st = stanza_from_bytes(b"<iq type='get' id='p1' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert (st.name, st.ns, st.type, st.id, st.to) == ("iq", SERVER_NS, "get", "p1", "b.test")
    assert st.namespaces == S2S_NAMESPACES


def test_stanza_from_bytes_dialback():
    st = stanza_from_bytes(b"<db:verify from='a' to='b' id='i'>k</db:verify>")
    assert (st.name, st.ns) == ("verify", DIALBACK_NS)


def test_stanza_from_bytes_with_other_namespaces():
    st = stanza_from_bytes(b"<message/>", {"": "jabber:client"})
    assert st.ns == "jabber:client"


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"<a/><b/>", b"<message>", b"text", b"<message></presence>", b"<!-- x -->"],
)
def test_stanza_from_bytes_rejects_anything_but_one_element(raw):
    with pytest.raises(FramingError):
        stanza_from_bytes(raw)


def test_stanza_from_bytes_error_offset_is_relative_to_raw():
    with pytest.raises(FramingError) as exc:
        stanza_from_bytes(b"<message>\x01</message>")
    assert exc.value.offset == 9


def test_serialize_server_element_without_default_declaration():
    el = etree.Element(f"{{{SERVER_NS}}}message", nsmap={None: SERVER_NS}, to="b@b.test")
    etree.SubElement(el, f"{{{SERVER_NS}}}body").text = "gr\u00fc\u00dfe <&>"
    data = serialize(el)
    assert (
        data
        == '<message to="b@b.test"><body>gr\u00fc\u00dfe &lt;&amp;&gt;</body></message>'.encode()
    )
    assert stanza_from_bytes(data).raw == data


def test_serialize_server_element_built_without_nsmap():
    el = etree.Element(f"{{{SERVER_NS}}}presence", type="probe")
    assert serialize(el) == b'<presence type="probe"/>'


def test_serialize_dialback_uses_db_prefix():
    el = etree.Element(f"{{{DIALBACK_NS}}}result", to="b.test")
    el.text = "key"
    data = serialize(el)
    assert data.startswith(b"<db:result ")
    st = stanza_from_bytes(data)
    assert (st.name, st.ns, st.to) == ("result", DIALBACK_NS, "b.test")


def test_serialize_keeps_children_namespaces_and_roundtrips():
    raw = (
        b"<iq type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'>"
        b"<feature var='urn:xmpp:ping'/></query></iq>"
    )
    el = parse_stanza(stanza_from_bytes(raw))
    data = serialize(el)
    assert b'xmlns="jabber:server"' not in data
    again = parse_stanza(stanza_from_bytes(data))
    assert etree.tostring(again) == etree.tostring(el)


def test_serialize_other_namespace_keeps_its_declaration():
    el = etree.Element("{urn:ietf:params:xml:ns:xmpp-tls}proceed")
    assert serialize(el) == b'<proceed xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>'


def test_serialize_never_writes_the_tail():
    el = etree.Element(f"{{{SERVER_NS}}}presence")
    el.tail = "junk"
    assert serialize(el) == b"<presence/>"


def test_serialize_stream_namespace_uses_stream_prefix():
    el = etree.Element("{http://etherx.jabber.org/streams}features")
    etree.SubElement(el, "{urn:xmpp:features:dialback}dialback")
    data = serialize(el)
    assert data.startswith(b"<stream:features")
    st = stanza_from_bytes(data)
    assert (st.name, st.ns) == ("features", "http://etherx.jabber.org/streams")
