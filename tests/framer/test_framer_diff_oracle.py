"""The differential oracle itself (tests/framer_oracle.py), checked without the framer.

An oracle that accepted everything would make every differential test pass, so it gets its own
tests: it must reject each restricted-XML form and each well-formedness error with the right
RFC 6120 condition, tell truncation from definite errors, accept every generated stream, and
cut the exact bytes of each top-level element.
"""

from __future__ import annotations

import pytest
from framer_oracle import canon, judge
from framer_streams import mutated, streams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"to='b.test' from='a.test' version='1.0'>"
)
CLOSE = b"</stream:stream>"


def doc(body: bytes, header: bytes = HEADER) -> bytes:
    return header + body + CLOSE


def test_valid_stream_is_accepted_with_exact_raw_bytes():
    stanzas = [
        b"<message to='x@b.test' id='a&amp;b'>"
        b"<body>&lt;hi&gt; &#x1F600; caf\xc3\xa9</body></message>",
        b"<db:result from='a.test' to='b.test'>abc</db:result>",
        b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
        b"<presence/>",
        b"<message><body><![CDATA[<not markup> & ]]></body></message>",
    ]
    v = judge(doc(b" \n".join(stanzas) + b"\t"))
    assert v.accepted and not v.definite
    assert [e.raw for e in v.elements] == stanzas
    assert v.header.name == "stream"
    assert v.header.attrs == {"to": "b.test", "from": "a.test", "version": "1.0"}
    assert v.header.namespaces == {
        "": "jabber:server",
        "stream": "http://etherx.jabber.org/streams",
        "db": "jabber:server:dialback",
    }
    first = v.elements[0].element
    assert first.get("id") == "a&b" and first[0].text == "<hi> \U0001f600 café"
    assert v.elements[1].element.tag == "{jabber:server:dialback}result"
    assert v.elements[4].element[0].text == "<not markup> & "


@pytest.mark.parametrize(
    "body",
    [
        b"<message><!-- hi --></message>",
        b"<!-- between stanzas -->",
        b"<message><?pi data?></message>",
        b"<?xml version='1.0'?>",
        b"<message>&foo;</message>",
        b"<message a='&bar;'/>",
        b"<message>&nbsp;</message>",
    ],
)
def test_restricted_xml_in_the_stream(body):
    v = judge(doc(body))
    assert v.definite and v.condition == "restricted-xml", v.reason


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE stream:stream>" + HEADER + CLOSE,
        b"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY e 'x'>]>"
        + HEADER[21:]
        + b"<a>&e;</a>"
        + CLOSE,
        b"<?xml version='1.0'?><!-- c -->" + HEADER[21:] + CLOSE,
        b"<?xml version='1.0'?><?pi?>" + HEADER[21:] + CLOSE,
    ],
)
def test_restricted_xml_in_the_prolog(data):
    v = judge(data)
    assert v.definite and v.condition == "restricted-xml", v.reason


@pytest.mark.parametrize(
    "body",
    [
        b"<message></presence>",
        b"<message a='1' a='2'/>",
        b"<message a='1' a=\"1\"/>",
        b"<message a='<'/>",
        b"<message a=1/>",
        b"<message a/>",
        b"<1message/>",
        b"<p:message/>",
        b"<message p:a='1'/>",
        b"<message xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/>",
        b"<message xmlns:p='a b'/>",
        b"<message xmlns='urn:x p'/>",
        b"<message xmlns:p=':x'/>",
        b"<message>&#0;</message>",
        b"<message>&#xD800;</message>",
        b"<message>&#xFFFE;</message>",
        b"<message>&#x110000;</message>",
        b"<message>& amp;</message>",
        b"<message>&amp</message>",
        b"<message>]]></message>",
        b"<message>\x01</message>",
        b"<message a='\x0b'/>",
        b"<message>\xc0\xaf</message>",
        b"<message>\xed\xa0\x80</message>",
        b"<message>\xf4\x90\x80\x80</message>",
        b"<message>\xef\xbf\xbe</message>",
        b"<message>\xff</message>",
        b"<message>\xc3(</message>",
        b"text between stanzas",
        b"&#32;",
        b"<![CDATA[ ]]>",
        b"<message/></stream:stream><message/>",
    ],
)
def test_not_well_formed(body):
    v = judge(doc(body))
    assert v.definite and v.condition == "not-well-formed", v.reason


@pytest.mark.parametrize(
    "header",
    [
        HEADER.replace(b"<stream:stream", b"<stream:strem").replace(b"</stream:stream", b""),
        HEADER.replace(b"xmlns:stream='http://etherx.jabber.org/streams'", b"xmlns:stream='x'"),
        HEADER.replace(b"xmlns='jabber:server'", b"xmlns='jabber:client'"),
        HEADER.replace(b"xmlns='jabber:server' ", b""),
    ],
)
def test_invalid_namespace(header):
    data = header + (CLOSE if b"strem" not in header else b"</stream:strem>")
    v = judge(data)
    assert v.definite and v.condition == "invalid-namespace", v.reason


def test_default_namespace_is_a_parameter():
    data = doc(b"<message/>", HEADER.replace(b"jabber:server'", b"jabber:client'"))
    assert judge(data, default_ns="jabber:client").accepted
    assert judge(data).condition == "invalid-namespace"


def test_only_utf8_is_supported():
    decl = b"<?xml version='1.0' encoding='ISO-8859-1'?>"
    v = judge(doc(b"<a>\xe9</a>", decl + HEADER[21:]))
    assert v.definite and v.condition == "unsupported-encoding"
    assert judge(doc(b"", b"<?xml version='1.0' encoding='utf-8'?>" + HEADER[21:])).accepted


def test_xml_declaration_only_at_the_very_start():
    assert judge(b" " + doc(b"")).definite
    assert judge(doc(b"")[21:]).accepted  # no declaration at all is fine


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<?xm",
        HEADER[:50],
        HEADER,
        doc(b"<message><body>x</body></message>")[:-3],
        HEADER + b"<message><bo",
        HEADER + b"<message>\xf0\x9f\x98",
        HEADER + b"<message><![CDA",
        HEADER + b"<message>&am",
    ],
)
def test_truncation_is_not_a_definite_error(data):
    v = judge(data)
    assert not v.accepted and not v.definite, v.reason


@pytest.mark.parametrize(
    "rest, unfinished",
    [
        (b"<a/><bo", b"<bo"),
        (b"<a x='1' y='", b"<a x='1' y='"),
        (b"<a/>  ", b"  "),
        (b"<a>text", b"text"),
        (b"<a><![CDATA[x", b"<![CDATA[x"),
        (b"<a/>", b""),
    ],
)
def test_truncation_points_at_the_unfinished_token(rest, unfinished):
    data = HEADER + rest
    v = judge(data)
    assert not v.definite and not v.accepted
    assert data[v.tail :] == unfinished


def test_truncated_stream_reports_the_completed_elements():
    data = HEADER + b"<a/> <b>x</b><c><d/>"
    v = judge(data)
    assert not v.definite
    assert [e.element.tag for e in v.elements] == ["{jabber:server}a", "{jabber:server}b"]


def _reparse(raw: bytes, header_namespaces: dict[str, str]) -> tuple:
    decls = " ".join(
        f"xmlns{':' + p if p else ''}='{uri}'" for p, uri in header_namespaces.items()
    ).encode()
    wrapper = etree.fromstring(b"<w " + decls + b">" + raw + b"</w>")
    return canon(wrapper[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(closed=True))
def test_generated_streams_are_accepted(data):
    v = judge(data)
    assert v.accepted, (v.condition, v.reason, data)
    for elem in v.elements:
        assert _reparse(elem.raw, v.header.namespaces) == elem.tree


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(closed=False))
def test_generated_unclosed_streams_are_truncated(data):
    v = judge(data)
    assert not v.accepted and not v.definite, v.reason


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_never_crash_the_oracle_and_prefixes_stay_viable(data):
    base = data.draw(streams(closed=True))
    v = judge(data.draw(mutated(base)))
    assert v.accepted or v.definite or v.reason.startswith("truncated")
    cut = data.draw(st.integers(0, len(base) - 1))
    prefix = judge(base[:cut])
    assert not prefix.definite, (prefix.reason, base[:cut])
