"""Built-in answers for a local domain with no component: ping, disco#info, version, errors."""

from __future__ import annotations

import logging

import pytest
from lxml import etree

import s2sfast
from s2sfast.server.builtin import FEATURES, answer, error_reply

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def _reply(raw: bytes) -> etree._Element:
    out = answer(raw)
    assert out is not None, "expected a reply"
    # the reply is sent inside a jabber:server stream: it must parse with that default namespace
    wrapped = etree.fromstring(b"<w xmlns='jabber:server'>" + out + b"</w>")
    (element,) = wrapped
    assert not out.startswith(b"<iq xmlns"), "top-level element must inherit the stream namespace"
    return element


def _q(tag: str) -> str:
    return f"{{jabber:server}}{tag}"


def test_ping_to_the_domain_gets_an_empty_result() -> None:
    reply = _reply(
        b"<iq type='get' id='p1' from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    assert reply.tag == _q("iq")
    assert dict(reply.attrib) == {"type": "result", "id": "p1", "from": "a.test", "to": "b.test"}
    assert len(reply) == 0


def test_disco_info_lists_identity_and_exactly_the_answered_features() -> None:
    reply = _reply(
        b"<iq type='get' id='d1' from='u@b.test/r' to='a.test'>"
        b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    ns = "http://jabber.org/protocol/disco#info"
    assert reply.get("type") == "result" and reply.get("to") == "u@b.test/r"
    (query,) = reply
    assert query.tag == f"{{{ns}}}query"
    (identity,) = query.findall(f"{{{ns}}}identity")
    assert (identity.get("category"), identity.get("type")) == ("server", "im")
    features = [f.get("var") for f in query.findall(f"{{{ns}}}feature")]
    assert sorted(features) == sorted(FEATURES)
    assert "urn:xmpp:ping" in features and "jabber:iq:version" in features


def test_disco_info_for_a_node_is_item_not_found() -> None:
    reply = _reply(
        b"<iq type='get' id='d2' from='b.test' to='a.test'>"
        b"<query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>"
    )
    assert reply.get("type") == "error"
    assert reply.find(f"{_q('error')}/{{{STANZAS}}}item-not-found") is not None


def test_version_names_s2sfast_and_its_version() -> None:
    reply = _reply(
        b"<iq type='get' id='v1' from='b.test' to='a.test'><query xmlns='jabber:iq:version'/></iq>"
    )
    ns = "jabber:iq:version"
    assert reply.findtext(f"{{{ns}}}query/{{{ns}}}name") == "s2sfast"
    assert reply.findtext(f"{{{ns}}}query/{{{ns}}}version") == s2sfast.__version__


@pytest.mark.parametrize(
    "raw",
    [
        b"<iq type='get' id='x' from='b.test' to='a.test'><query xmlns='jabber:iq:roster'/></iq>",
        b"<iq type='set' id='x' from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        b"<iq type='get' id='x' from='b.test' to='u@a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        b"<iq type='get' id='x' from='b.test' to='a.test'>"
        b"<query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    ],
)
def test_other_iq_get_set_is_service_unavailable(raw: bytes) -> None:
    reply = _reply(raw)
    assert reply.get("type") == "error" and reply.get("id") == "x"
    assert (reply.get("from"), reply.get("to")) == (
        etree.fromstring(raw).get("to"),
        "b.test",
    )
    (error,) = reply.findall(_q("error"))
    assert error.get("type") == "cancel"
    assert error.find(f"{{{STANZAS}}}service-unavailable") is not None


def test_iq_with_two_children_is_bad_request() -> None:
    reply = _reply(
        b"<iq type='get' id='x' from='b.test' to='a.test'>"
        b"<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    assert reply.find(f"{_q('error')}/{{{STANZAS}}}bad-request") is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"<iq type='result' id='x' from='b.test' to='a.test'/>",
        b"<iq type='error' id='x' from='b.test' to='a.test'><error type='cancel'/></iq>",
        b"<iq type='get' id='x' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
    ],
)
def test_results_errors_and_unanswerable_iqs_get_nothing(raw: bytes) -> None:
    assert answer(raw) is None


def test_messages_and_presences_are_dropped_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="s2sfast.builtin")
    assert answer(b"<message from='u@b.test' to='a.test'><body>hi</body></message>") is None
    assert answer(b"<presence from='u@b.test' to='a.test'/>") is None
    lines = [r.getMessage() for r in caplog.records]
    assert any("<message" in line and "u@b.test" in line and "a.test" in line for line in lines)
    assert any("<presence" in line for line in lines)


def test_accepts_a_stanza_object_and_escapes_attributes() -> None:
    class Raw:
        raw = (
            b"<iq type='get' id='a&apos;&lt;b' from='b.test' to='a.test'>"
            b"<ping xmlns='urn:xmpp:ping'/></iq>"
        )

    out = answer(Raw())
    assert out is not None
    assert etree.fromstring(out).get("id") == "a'<b"


def test_error_reply_for_a_message() -> None:
    out = error_reply(
        b"<message id='m' from='u@b.test' to='x.a.test'><body/></message>",
        "remote-server-not-found",
        "nope",
    )
    assert out is not None
    element = etree.fromstring(b"<w xmlns='jabber:server'>" + out + b"</w>")[0]
    assert element.tag == _q("message") and element.get("type") == "error"
    assert element.get("to") == "u@b.test" and element.get("from") == "x.a.test"
    assert element.find(f"{_q('error')}/{{{STANZAS}}}remote-server-not-found") is not None
    assert element.findtext(f"{_q('error')}/{{{STANZAS}}}text") == "nope"
    assert error_reply(b"<message type='error' from='a' to='b'/>", "gone") is None
    with pytest.raises(ValueError):
        error_reply(b"<message from='a' to='b'/>", "no-such-condition")
