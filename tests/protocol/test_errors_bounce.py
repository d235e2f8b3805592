"""Bounces (RFC 6120 section 8.3): make_bounce and stanza_error_condition on real wire stanzas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from s2sfast.protocol.errors import (
    STANZA_CONDITIONS,
    STANZAS_NS,
    make_bounce,
    stanza_error_condition,
)

#: the committed captures (a missing file fails the test that reads it)
CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"
SERVER = "jabber:server"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

_STANZA = re.compile(
    rb"<(?P<a>message|presence|iq)\b[^>]*?/>|<(?P<b>message|presence|iq)\b[^>]*[^/]>.*?</(?P=b)>",
    re.S,
)


def capture_stanzas(name: str, *, end: int | None = None) -> list[bytes]:
    """The top-level stanzas of a capture file, as the exact bytes on the wire."""
    data = (CAPTURES / name).read_bytes()[:end]
    return [m.group(0) for m in _STANZA.finditer(data)]


def in_stream(raw: bytes, default_ns: str = SERVER) -> etree._Element:
    """Parse *raw* as a stream child would be: inside a parent declaring the default namespace."""
    wrapper = etree.fromstring(b"<w xmlns='" + default_ns.encode() + b"'>" + raw + b"</w>")
    (top,) = wrapper
    return top


def local(el: etree._Element) -> str:
    return etree.QName(el).localname


def test_capture_messages_bounce_with_payload_and_swapped_addresses():
    stanzas = capture_stanzas("01-s1plain-a.test-to-b.test.c2a.xml")
    messages = [s for s in stanzas if s.startswith(b"<message")]
    assert len(messages) == 3
    for raw in messages:
        original = in_stream(raw)
        out = make_bounce(raw, "remote-server-not-found", by="a.test")
        assert out is not None
        # Default-namespace form: no namespace declaration on the top element.
        assert re.match(rb"<message [^>]*>", out)
        assert b"xmlns=" not in re.match(rb"<message [^>]*>", out).group(0)
        bounce = in_stream(out)
        assert etree.QName(bounce).namespace == SERVER
        assert bounce.get("to") == original.get("from") == "alice@a.test/raw"
        assert bounce.get("from") == original.get("to") == "bob@b.test"
        assert bounce.get("type") == "error"
        assert bounce.get("id") == original.get("id")
        assert bounce.get(XML_LANG) == "en"
        body = bounce.find(f"{{{SERVER}}}body")
        assert body is not None and body.text == original.find(f"{{{SERVER}}}body").text
        error = bounce[-1]
        assert local(error) == "error" and etree.QName(error).namespace == SERVER
        assert error.get("type") == "cancel" and error.get("by") == "a.test"
        assert [etree.QName(c).text for c in error] == [f"{{{STANZAS_NS}}}remote-server-not-found"]


def test_utf8_body_stays_raw_utf8():
    raw = next(s for s in capture_stanzas("01-s1plain-a.test-to-b.test.c2a.xml") if b"id='m2'" in s)
    body = "grüße ☃ 日本語 😀 café"
    assert body.encode() in raw
    out = make_bounce(raw, "remote-server-timeout", text="Server-to-server connection failed")
    assert body.encode() in out  # not turned into character references
    assert in_stream(out).find(f"{{{SERVER}}}body").text == body


def test_escaped_text_round_trips():
    raw = next(s for s in capture_stanzas("01-s1plain-a.test-to-b.test.c2a.xml") if b"id='m3'" in s)
    out = make_bounce(raw, "service-unavailable")
    assert in_stream(out).find(f"{{{SERVER}}}body").text == "a < b && c > d \"q\" 's' ☺"


def test_presence_and_iq_from_capture():
    stanzas = capture_stanzas("01-s1plain-a.test-to-b.test.c2a.xml")
    presence = next(s for s in stanzas if s.startswith(b"<presence"))
    iq = next(s for s in stanzas if s.startswith(b"<iq"))

    out = in_stream(make_bounce(presence, "remote-server-timeout"))
    assert local(out) == "presence" and out.get("type") == "error"
    assert out.get("to") == "alice@a.test" and out.get("from") == "bob@b.test"
    assert out[-1].get("type") == "wait"

    out = in_stream(make_bounce(iq, "remote-server-not-found", by="a.test"))
    assert local(out) == "iq" and out.get("type") == "error" and out.get("id") == "p1"
    ping = out.find("{urn:xmpp:ping}ping")
    assert ping is not None  # the original payload, in its own namespace
    assert out[-1].get("type") == "cancel"


def test_no_bounce_for_iq_result_from_capture():
    stanzas = capture_stanzas("11-s2plain-b.test-to-e.test.c2a.xml")
    results = [s for s in stanzas if s.startswith(b"<iq") and b"type='result'" in s]
    assert results
    for raw in results:
        assert make_bounce(raw, "remote-server-not-found") is None


def test_no_bounce_for_real_error_stanzas_and_their_conditions():
    # ejabberd's bounces to carol, in a jabber:client stream (scenario 4).
    stanzas = capture_stanzas("32-s4fail-carol-c2s-to-e.test.a2c.xml")
    errors = [s for s in stanzas if b"type='error'" in s.split(b">", 1)[0]]
    assert len(errors) >= 2
    for raw in errors:
        assert make_bounce(raw, "remote-server-not-found") is None
        assert stanza_error_condition(raw) == (
            "wait",
            "remote-server-timeout",
            "Connection failed: connection closed",
        )
    # Prosody's bounce: by='a.test', no text.
    stanzas = capture_stanzas("31-s4fail-alice-c2s-to-a.test.a2c.xml")
    found = [stanza_error_condition(s) for s in stanzas]
    assert ("cancel", "remote-server-not-found", None) in found
    assert (
        "wait",
        "remote-server-timeout",
        "Server-to-server connection failed: host-unknown",
    ) in found


def test_stanza_error_condition_of_non_errors_is_none():
    for raw in capture_stanzas("01-s1plain-a.test-to-b.test.c2a.xml"):
        assert stanza_error_condition(raw) is None


def test_bounce_of_bounce_is_none_and_conditions_read_back():
    raw = b"<message to='b@b.test' from='a@a.test' id='x'><body>hi</body></message>"
    out = make_bounce(raw, "resource-constraint", text="queue full", by="a.test", lang="fr")
    assert make_bounce(out, "remote-server-not-found") is None
    assert stanza_error_condition(out) == ("wait", "resource-constraint", "queue full")
    text = in_stream(out)[-1][-1]
    assert local(text) == "text" and text.get(XML_LANG) == "fr"


@pytest.mark.parametrize("condition", sorted(STANZA_CONDITIONS))
def test_every_condition_gets_its_rfc_type(condition):
    out = make_bounce(
        b"<iq type='get' id='1' to='b.test' from='a.test'><q xmlns='x'/></iq>", condition
    )
    error = in_stream(out)[-1]
    assert error.get("type") == STANZA_CONDITIONS[condition]
    assert etree.QName(error[0]).text == f"{{{STANZAS_NS}}}{condition}"
    assert stanza_error_condition(out)[:2] == (STANZA_CONDITIONS[condition], condition)


@pytest.mark.parametrize("ns", ["jabber:server", "jabber:client"])
def test_explicit_namespace_input_comes_out_in_default_form(ns):
    raw = (
        f"<message xmlns='{ns}' to='b@b.test' from='a@a.test/r' type='chat'>"
        "<body>out</body>"
        "<forwarded xmlns='urn:xmpp:forward:0'>"
        "<message xmlns='jabber:client' to='x@y.test'><body>in</body></message>"
        "</forwarded></message>"
    ).encode()
    out = make_bounce(raw, "service-unavailable")
    assert out.startswith(b'<message to="a@a.test/r" from="b@b.test" type="error">')
    bounce = in_stream(out)
    assert etree.QName(bounce).namespace == SERVER
    assert bounce.find(f"{{{SERVER}}}body").text == "out"
    # The forwarded copy keeps its own jabber:client namespace.
    inner = bounce.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message")
    assert inner is not None and inner.find("{jabber:client}body").text == "in"
    # And a jabber:client stream reads the same output as jabber:client content.
    assert etree.QName(in_stream(out, "jabber:client")).namespace == "jabber:client"


def test_prefixed_payload_keeps_its_namespace():
    raw = b"<message xmlns:foo='urn:foo' to='b@b.test' from='a@a.test'><foo:bar a='1'/></message>"
    bar = in_stream(make_bounce(raw, "item-not-found")).find("{urn:foo}bar")
    assert bar is not None and bar.get("a") == "1"


def test_missing_from_gives_bounce_without_to():
    out = in_stream(make_bounce(b"<message to='b@b.test'><body>x</body></message>", "gone"))
    assert out.get("to") is None and out.get("from") == "b@b.test"


def test_message_without_type_becomes_error_and_text_is_escaped():
    out = make_bounce(
        b"<message to='b@b.test' from='a@a.test'/>", "not-allowed", text="<no> & 'never'"
    )
    assert stanza_error_condition(out) == ("cancel", "not-allowed", "<no> & 'never'")
    assert b"&lt;no&gt; &amp;" in out


@pytest.mark.parametrize(
    "raw",
    [
        b"<db:result from='a.test' to='b.test'>k</db:result>",
        b"<message to='b'>",
        b"<message/><message/>",
        b"<foo xmlns='urn:x'/>",
        b"text<message/>",
    ],
)
def test_non_stanzas_are_refused(raw):
    with pytest.raises(ValueError):
        make_bounce(raw, "service-unavailable")


def test_unknown_condition_is_refused():
    with pytest.raises(ValueError, match="stanza-error condition"):
        make_bounce(b"<message to='b@b.test' from='a@a.test'/>", "host-unknown")


# --- properties --------------------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="\x00\x0b\x0c\ufffe\uffff",
        min_codepoint=0x09,
    ).filter(lambda c: c in "\t\n\r" or ord(c) >= 0x20),
    max_size=12,
)
_NAME = st.sampled_from(["body", "x", "ping", "data", "item", "subject", "thread"])
_NS = st.sampled_from([None, "urn:x", "urn:xmpp:ping", "jabber:x:oob"])


@st.composite
def _payload(draw, depth=0):
    el = etree.Element(draw(_NAME))
    ns = draw(_NS)
    if ns:
        el = etree.Element(f"{{{ns}}}{draw(_NAME)}", nsmap={None: ns})
    for key in draw(st.lists(st.sampled_from(["a", "b", "id"]), unique=True, max_size=2)):
        el.set(key, draw(_TEXT))
    el.text = draw(_TEXT) or None
    if depth < 2:
        for child in draw(st.lists(_payload(depth=depth + 1), max_size=2)):
            el.append(child)
            child.tail = draw(_TEXT) or None
    return el


def _c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n")


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["message", "presence", "iq"]),
    stanza_type=st.sampled_from([None, "chat", "get", "set", "subscribe", "result", "error"]),
    payload=st.lists(_payload(), max_size=3),
    condition=st.sampled_from(sorted(STANZA_CONDITIONS)),
    text=st.none() | _TEXT,
)
def test_bounce_keeps_any_payload(kind, stanza_type, payload, condition, text):
    top = etree.Element(f"{{{SERVER}}}{kind}", nsmap={None: SERVER})
    top.set("to", "b@b.test")
    top.set("from", "a@a.test/r")
    if stanza_type:
        top.set("type", stanza_type)
    for el in payload:
        top.append(el)
    # The stream's default-namespace form: drop the declaration from the top element.
    raw = etree.tostring(top).replace(b' xmlns="jabber:server"', b"", 1)
    out = make_bounce(raw, condition, text=text, by="b.test")
    if stanza_type == "error" or (kind == "iq" and stanza_type == "result"):
        assert out is None
        return
    original, bounce = in_stream(raw), in_stream(out)
    assert (bounce.get("to"), bounce.get("from"), bounce.get("type")) == (
        "a@a.test/r",
        "b@b.test",
        "error",
    )
    assert [_c14n(c) for c in bounce[:-1]] == [_c14n(c) for c in original]
    assert stanza_error_condition(out) == (
        STANZA_CONDITIONS[condition],
        condition,
        (text or None) and text,
    )
