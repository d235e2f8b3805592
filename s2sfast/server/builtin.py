"""Built-in answers for a local domain that no external component serves.

A federation node must not leave a remote server's iq unanswered (RFC 6120 section 8.2.3: every
iq get/set gets a result or an error), and operators need a way to see that federation works:
XEP-0199 ping, XEP-0030 disco#info and XEP-0092 version are answered for the bare domain; every
other iq get/set gets ``service-unavailable``; messages and presences are dropped with a log line
(there is no user to receive them). Replies are serialised for a stream whose default namespace
is ``jabber:server`` (or ``jabber:component:accept``): the top-level element carries no xmlns.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from lxml import etree

from s2sfast import __version__
from s2sfast.lograte import Tally
from s2sfast.protocol.errors import STANZA_CONDITIONS, STANZAS_NS
from s2sfast.protocol.jid import jid_domain

__all__ = [
    "PING_NS",
    "DISCO_INFO_NS",
    "VERSION_NS",
    "FEATURES",
    "answer",
    "error_reply",
]

PING_NS = "urn:xmpp:ping"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
VERSION_NS = "jabber:iq:version"
#: what disco#info advertises: exactly the namespaces answered here
FEATURES = (DISCO_INFO_NS, PING_NS, VERSION_NS)
#: XEP-0030 / the XMPP Registrar: a server identity
_IDENTITY = {"category": "server", "type": "im", "name": "s2sfast"}

_STREAM_NAMESPACES = {
    None: "jabber:server",
    "stream": "http://etherx.jabber.org/streams",
    "db": "jabber:server:dialback",
}
_CONTENT_NAMESPACES = frozenset({"jabber:server", "jabber:client", "jabber:component:accept"})

log = logging.getLogger("s2sfast.builtin")


class _HasRaw(Protocol):
    @property
    def raw(self) -> bytes: ...


def _parse(raw: bytes) -> etree._Element | None:
    """Parse a stanza's raw bytes, binding the namespaces it inherits from the stream header."""
    declared = " ".join(
        f'xmlns="{uri}"' if prefix is None else f'xmlns:{prefix}="{uri}"'
        for prefix, uri in _STREAM_NAMESPACES.items()
    )
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        wrapper = etree.fromstring(f"<w {declared}>".encode() + bytes(raw) + b"</w>", parser)
    except etree.XMLSyntaxError as exc:
        log.warning("builtin: cannot parse stanza (%s); dropped", exc)
        return None
    if len(wrapper) != 1:
        return None
    return wrapper[0]


def _local_name(element: etree._Element) -> tuple[str | None, str]:
    qname = etree.QName(element)
    return qname.namespace, qname.localname


def _reply_head(stanza: etree._Element, type_: str) -> etree._Element:
    """``<iq type=... id=... from=<its to> to=<its from>/>`` with no namespace of its own."""
    reply = etree.Element("iq")
    reply.set("type", type_)
    if stanza.get("id") is not None:
        reply.set("id", stanza.get("id"))
    reply.set("from", stanza.get("to", ""))
    reply.set("to", stanza.get("from", ""))
    return reply


def _serialise(element: etree._Element) -> bytes:
    return etree.tostring(element)


def error_reply(raw: bytes, condition: str, text: str | None = None) -> bytes | None:
    """An error stanza answering *raw* with an RFC 6120 stanza-error *condition*.

    Returns None when no error may be sent (the stanza is itself an error, or a result, or has no
    ``from`` to answer).

    Raises:
        ValueError: *condition* is not an RFC 6120 stanza-error condition.
    """
    if condition not in STANZA_CONDITIONS:
        raise ValueError(f"{condition!r} is not an RFC 6120 stanza-error condition")
    stanza = _parse(raw)
    if stanza is None:
        return None
    return _error(stanza, condition, text)


def _error(stanza: etree._Element, condition: str, text: str | None = None) -> bytes | None:
    _, name = _local_name(stanza)
    if stanza.get("type") in ("error", "result") or not stanza.get("from"):
        return None
    reply = etree.Element(name)
    if stanza.get("id") is not None:
        reply.set("id", stanza.get("id"))
    reply.set("type", "error")
    reply.set("from", stanza.get("to", ""))
    reply.set("to", stanza.get("from", ""))
    error = etree.SubElement(reply, "error", type=STANZA_CONDITIONS[condition])
    etree.SubElement(error, f"{{{STANZAS_NS}}}{condition}", nsmap={None: STANZAS_NS})
    if text:
        node = etree.SubElement(error, f"{{{STANZAS_NS}}}text", nsmap={None: STANZAS_NS})
        node.text = text
    return _serialise(reply)


def _answer_iq(stanza: etree._Element) -> bytes | None:
    if not stanza.get("from"):
        log.info("builtin: dropped <iq> without a from: nobody to answer")
        return None
    type_ = stanza.get("type")
    if type_ not in ("get", "set"):
        # results and errors are never answered (RFC 6120 8.2.3); a missing type is invalid
        if type_ is None:
            return _error(stanza, "bad-request", "iq without a type")
        return None
    children = [child for child in stanza if isinstance(child.tag, str)]
    if len(children) != 1:
        return _error(stanza, "bad-request", "an iq get/set carries exactly one child element")
    ns, name = _local_name(children[0])
    to = stanza.get("to", "")
    for_domain = "@" not in to and "/" not in to
    if type_ == "get" and for_domain:
        if ns == PING_NS and name == "ping":
            return _serialise(_reply_head(stanza, "result"))
        if ns == DISCO_INFO_NS and name == "query":
            if children[0].get("node") is not None:
                return _error(stanza, "item-not-found", "no disco node is served here")
            reply = _reply_head(stanza, "result")
            query = etree.SubElement(reply, f"{{{DISCO_INFO_NS}}}query", nsmap={None: ns})
            etree.SubElement(query, f"{{{DISCO_INFO_NS}}}identity", _IDENTITY)
            for feature in FEATURES:
                etree.SubElement(query, f"{{{DISCO_INFO_NS}}}feature", var=feature)
            return _serialise(reply)
        if ns == VERSION_NS and name == "query":
            reply = _reply_head(stanza, "result")
            query = etree.SubElement(reply, f"{{{VERSION_NS}}}query", nsmap={None: ns})
            etree.SubElement(query, f"{{{VERSION_NS}}}name").text = "s2sfast"
            etree.SubElement(query, f"{{{VERSION_NS}}}version").text = __version__
            return _serialise(reply)
    return _error(stanza, "service-unavailable")


def answer(stanza: bytes | _HasRaw) -> bytes | None:
    """The built-in reply to one inbound stanza addressed to a local domain.

    Args:
        stanza: the stanza's raw bytes, or a framer ``Stanza`` (its ``raw`` is used).

    Returns:
        The reply's bytes (to send back towards the stanza's ``from``), or None when nothing is
        to be sent (messages, presences, iq results and errors, unparseable input).
    """
    raw = stanza if isinstance(stanza, (bytes, bytearray, memoryview)) else stanza.raw
    element = _parse(bytes(raw))
    if element is None:
        return None
    ns, name = _local_name(element)
    if ns not in _CONTENT_NAMESPACES:
        log.info("builtin: dropped <%s xmlns=%r>: not a stanza", name, ns)
        return None
    if name == "iq":
        return _answer_iq(element)
    if _dropped.add((name, element.get("type"), jid_domain(element.get("to") or ""))):
        log.info(
            "builtin: dropped <%s type=%r> from %s to %s: no component serves that domain",
            name,
            element.get("type"),
            element.get("from"),
            element.get("to"),
        )
    else:
        log.debug(
            "builtin: dropped <%s type=%r> from %s to %s: no component serves that domain",
            name,
            element.get("type"),
            element.get("from"),
            element.get("to"),
        )
    return None


def _dropped_line(key: Any, count: int, seconds: float) -> None:
    name, type_, domain = key
    log.info(
        "builtin: dropped %d more <%s type=%r> to %s in %.1f s: no component serves that domain",
        count,
        name,
        type_,
        domain,
        seconds,
    )


#: one INFO line per (stanza kind, recipient) and second in a flood (each stanza at DEBUG)
_dropped = Tally(_dropped_line)
