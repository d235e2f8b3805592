"""Well-formedness and namespace rules: every violation is not-well-formed (or invalid-namespace
for a wrong stream root / content namespace)."""

from __future__ import annotations

import pytest

from s2sfast.framing import Stanza, StreamFramer
from s2sfast.protocol.errors import FramingError

ROOT = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback'>"
)


def condition(data: bytes, **kw) -> str:
    with pytest.raises(FramingError) as exc:
        StreamFramer(**kw).feed(data)
    return exc.value.condition


def stanzas(data: bytes) -> list:
    return [e for e in StreamFramer().feed(ROOT + data) if isinstance(e, Stanza)]


@pytest.mark.parametrize(
    "bad",
    [
        b"<message></presence>",
        b"<message><body></message></body>",
        b"<message><body></body></messag>",
        b"<message><body></body></messagex>",
        b"<message></message >x</message>",
        b"</message>",
        b"<message><a></b></message>",
        b"<db:result></result>",
        b"<db:result></db:resul>",
    ],
)
def test_tag_balance(bad):
    assert condition(ROOT + bad) == "not-well-formed"


@pytest.mark.parametrize(
    "bad",
    [
        b"<message to=x/>",
        b"<message to='x\"/><presence/>",
        b"<message to='x'from='y'/>",
        b"<message to/>",
        b"<message to='a' = 'b'/>",
        b"<message =''/>",
        b"<message to=='a'/>",
        b"<message / >",
        b"<message/ >",
        b"<message to='a'/ >",
        b"< message/>",
        b"<message <body/>/>",
        b"<message to='a'x>",
    ],
)
def test_attribute_syntax_and_quoting(bad):
    assert condition(ROOT + bad) == "not-well-formed"


def test_attribute_syntax_variants_accepted():
    (st,) = stanzas(b"<message to = \"a'b\"\n\tfrom\t=\t'c\"d' ></message >")
    assert (st.to, st.from_) == ("a'b", 'c"d')


@pytest.mark.parametrize(
    "bad",
    [
        b"<message to='a' to='a'/>",
        b"<message id='a' type='b' id='c'/>",
        b"<message xmlns:a='u' xmlns:a='u'/>",
        b"<message xmlns:a='u' xmlns:b='u' a:x='1' b:x='2'/>",
        b"<message xml:lang='en' xml:lang='de'/>",
    ],
)
def test_duplicate_attributes(bad):
    assert condition(ROOT + bad) == "not-well-formed"


def test_many_attributes_duplicate_found():
    attrs = b"".join(b" a%d='x'" % i for i in range(40))
    assert len(stanzas(b"<message" + attrs + b"/>")) == 1
    assert condition(ROOT + b"<message" + attrs + b" a17='y'/>") == "not-well-formed"


def test_same_local_name_different_namespaces_accepted():
    assert len(stanzas(b"<message xmlns:a='u' xmlns:b='v' a:x='1' b:x='2' x='3'/>")) == 1


def test_lt_in_attribute_value():
    assert condition(ROOT + b"<message to='a<b'/>") == "not-well-formed"


def test_gt_in_attribute_value_accepted():
    (st,) = stanzas(b"<message to='a>b'/>")
    assert st.to == "a>b"


@pytest.mark.parametrize(
    "bad",
    [
        b"<1message/>",
        b"<-message/>",
        b"<.message/>",
        b"<message a$b='1'/>",
        b"<message 1a='1'/>",
        b"<:message/>",
        b"<message:/>",
        b"<a:b:c xmlns:a='u'/>",
        b"<message :a='1'/>",
        b"<message a:='1'/>",
        b"<a:-b xmlns:a='u'/>",
        b"<\xc3\x97x/>",  # U+00D7 is not a NameStartChar
        b"<x\xcd\xbe/>",  # U+037E is not a NameChar
    ],
)
def test_bad_names(bad):
    assert condition(ROOT + bad) == "not-well-formed"


def test_non_ascii_names_accepted():
    (st,) = stanzas(
        "<n\u00e9\u00b7\u0300 xmlns='urn:x' \u4e2d\u6587='1'></n\u00e9\u00b7\u0300>".encode()
    )
    assert st.name == "n\u00e9\u00b7\u0300"


@pytest.mark.parametrize(
    "bad",
    [
        b"<x:message/>",
        b"<message x:to='a'/>",
        b"<message><x:body/></message>",
        b"<message><body x:lang='en'/></message>",
        b"<message><a xmlns:x='u'/><x:b/></message>",
    ],
)
def test_unbound_prefixes(bad):
    assert condition(ROOT + bad) == "not-well-formed"


def test_prefix_bound_on_same_tag_and_scoping():
    (st,) = stanzas(b"<x:m xmlns:x='urn:x' x:a='1'><x:b/><y:c xmlns:y='urn:y'/></x:m>")
    assert (st.name, st.ns) == ("m", "urn:x")


def test_xml_prefix_is_always_bound():
    (st,) = stanzas(b"<message xml:lang='en'><body xml:lang='de'/></message>")
    assert st.name == "message"


@pytest.mark.parametrize(
    "bad",
    [
        b"<message xmlns:a=''/>",
        b"<message xmlns:xml='urn:other'/>",
        b"<message xmlns:a='http://www.w3.org/XML/1998/namespace'/>",
        b"<message xmlns:xmlns='urn:x'/>",
        b"<message xmlns:a='http://www.w3.org/2000/xmlns/'/>",
        b"<message xmlns='http://www.w3.org/2000/xmlns/'/>",
        b"<message xmlns='http://www.w3.org/XML/1998/namespace'/>",
        b"<xmlns:message/>",
    ],
)
def test_namespace_declaration_rules(bad):
    assert condition(ROOT + bad) == "not-well-formed"


def test_xml_prefix_may_be_declared_to_its_namespace():
    assert len(stanzas(b"<message xmlns:xml='http://www.w3.org/XML/1998/namespace'/>")) == 1


@pytest.mark.parametrize(
    "bad",
    [
        b"<message><body>&#0;</body></message>",
        b"<message><body>&#x1;</body></message>",
        b"<message><body>&#xFFFE;</body></message>",
        b"<message><body>&#xffff;</body></message>",
        b"<message><body>&#xD800;</body></message>",
        b"<message><body>&#x110000;</body></message>",
        b"<message><body>&#99999999999999999999;</body></message>",
        b"<message id='&#x8;'/>",
        b"<message><body>&#;</body></message>",
        b"<message><body>&#x;</body></message>",
        b"<message><body>&#12a;</body></message>",
        b"<message><body>&#xg;</body></message>",
        b"<message><body>&amp</body></message>",
        b"<message><body>& amp;</body></message>",
        b"<message><body>&;</body></message>",
    ],
)
def test_bad_references(bad):
    assert condition(ROOT + bad) == "not-well-formed"


def test_allowed_char_refs():
    (st,) = stanzas(b"<message id='&#9;&#xA;&#13;&#x20;&#xD7FF;&#xE000;&#xFFFD;&#x10FFFF;'/>")
    assert st.id == "\t\n\r \ud7ff\ue000\ufffd\U0010ffff"


@pytest.mark.parametrize("bad", [b"]]>", b"a]]>b", b"]]]>"])
def test_cdata_end_in_text(bad):
    assert condition(ROOT + b"<message><body>" + bad + b"</body></message>") == ("not-well-formed")


def test_brackets_and_gt_in_text_accepted():
    assert len(stanzas(b"<message><body>] ]> ]x]> >]</body></message>")) == 1


@pytest.mark.parametrize("text", [b"hello", b"&#32;", b"&amp;", b"\xc2\xa0"])
def test_text_between_stanzas(text):
    assert condition(ROOT + b"<presence/>" + text + b"<presence/>") == "not-well-formed"


def test_whitespace_between_stanzas_ignored():
    got = stanzas(b" \n\r\t<presence/>  \n <presence/>\n")
    assert [s.raw for s in got] == [b"<presence/>", b"<presence/>"]


def test_text_before_header():
    assert condition(b"hello" + ROOT) == "not-well-formed"


@pytest.mark.parametrize(
    "root",
    [
        b"<stream xmlns='jabber:server'>",
        b"<stream:stream xmlns='jabber:server' xmlns:stream='urn:not-streams'>",
        b"<stream:features xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
        b"<s:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:s='urn:x'>",
    ],
)
def test_wrong_stream_root_is_invalid_namespace(root):
    assert condition(root) == "invalid-namespace"


def test_stream_root_with_any_prefix_for_streams_namespace_accepted():
    root = b"<s:stream xmlns='jabber:server' xmlns:s='http://etherx.jabber.org/streams'>"
    (ev,) = StreamFramer().feed(root)
    assert ev.namespaces["s"] == "http://etherx.jabber.org/streams"


def test_unbound_stream_prefix_is_not_well_formed():
    assert condition(b"<stream:stream xmlns='jabber:server'>") == "not-well-formed"


def test_other_default_namespace_is_invalid_namespace():
    root = ROOT.replace(b"'jabber:server'", b"'jabber:client'")
    assert condition(root) == "invalid-namespace"
    assert condition(ROOT, default_ns="jabber:component:accept") == "invalid-namespace"


def test_missing_default_namespace_is_invalid_namespace():
    root = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
    assert condition(root) == "invalid-namespace"
    (ev,) = StreamFramer(default_ns="").feed(root)
    assert ev.namespaces == {"stream": "http://etherx.jabber.org/streams"}


def test_stanza_in_other_namespace_than_default_accepted():
    (st,) = stanzas(b"<message xmlns='jabber:client'/>")
    assert st.ns == "jabber:client"


@pytest.mark.parametrize(
    "uri",
    [
        b"urn:x:w Mq",
        b":x:ns2",
        b"1a:b",
        b"urn:\xc3\xa9",
        b"a%zz",
        b"a#b#c",
        b"urn:[x]",
        b"http://a:/p",
        b"a{b}",
        b"a|b",
        b"urn:x&#10;y",
    ],
)
def test_namespace_name_must_be_a_uri_reference(uri):
    assert condition(ROOT + b"<message xmlns:p='" + uri + b"'/>") == "not-well-formed"
    assert condition(ROOT + b"<message xmlns='" + uri + b"'/>") == "not-well-formed"


@pytest.mark.parametrize(
    "uri",
    [
        b"urn:x",
        b"x",
        b"//a",
        b"./a",
        b"#x",
        b"?x",
        b"http://[::1]:5222/p?q#f[1]",
        b"mailto:a@b",
        b"a%41b",
        b"http://jabber.org/protocol/disco#info",
    ],
)
def test_uri_reference_namespace_names_accepted(uri):
    assert len(stanzas(b"<message xmlns:p='" + uri + b"' xmlns='" + uri + b"'/>")) == 1
