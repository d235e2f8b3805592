"""Stream errors (RFC 6120 section 4.9.3) and stanza errors (section 8.3.3).

Every failure in s2sfast is an exception carrying an RFC 6120 condition, so the layer that
owns the socket can turn it into the right ``<stream:error/>`` without guessing. Errors come
in two directions, as in h11: :class:`RemoteStreamError` when the peer broke the protocol
(we answer with a stream error), :class:`LocalStreamError` when our own side was asked to do
something the protocol forbids.
"""

from __future__ import annotations

import copy as _copy
from xml.sax.saxutils import escape as _escape

from lxml import etree as _etree

__all__ = [
    "STREAM_NS",
    "STREAMS_NS",
    "STANZAS_NS",
    "STREAM_CONDITIONS",
    "STANZA_CONDITIONS",
    "StreamError",
    "LocalStreamError",
    "RemoteStreamError",
    "FramingError",
    "stream_error_bytes",
    "parse_stream_error",
    "SERVER_NS",
    "CLIENT_NS",
    "make_bounce",
    "stanza_error_condition",
]

STREAM_NS = "http://etherx.jabber.org/streams"
STREAMS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: RFC 6120 section 4.9.3: the defined stream-error conditions.
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

#: RFC 6120 section 8.3.3: stanza-error condition -> the error type the RFC pairs it with.
STANZA_CONDITIONS = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


class StreamError(Exception):
    """A stream-level failure with an RFC 6120 condition and an optional human text.

    Not raised directly: use :class:`RemoteStreamError` or :class:`LocalStreamError`.
    """

    condition: str
    text: str | None

    def __init__(self, condition: str, text: str | None = None) -> None:
        if type(self) is StreamError:
            raise TypeError("StreamError is abstract: raise RemoteStreamError or LocalStreamError")
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"{condition!r} is not an RFC 6120 stream-error condition")
        self.condition = condition
        self.text = text
        super().__init__(f"{condition}: {text}" if text else condition)


class RemoteStreamError(StreamError):
    """The peer violated the protocol; we answer with ``<stream:error/>`` and close."""


class LocalStreamError(StreamError):
    """Our own side tried something the protocol (or our configuration) forbids."""


class FramingError(RemoteStreamError):
    """Raised by the stream framer on bytes that are not a valid restricted-XML stream.

    Attributes:
        condition: the stream-error condition to send (``not-well-formed``, ``restricted-xml``,
            ``policy-violation``, ``invalid-namespace``, ``bad-format``, ...).
        text: what was wrong, for the ``<text/>`` element and the log.
        offset: the byte offset in the stream (since the framer was created) where it was found.
    """

    offset: int | None

    def __init__(self, condition: str, text: str | None = None, offset: int | None = None) -> None:
        super().__init__(condition, text)
        self.offset = offset


def stream_error_bytes(condition: str, text: str | None = None) -> bytes:
    """Serialise ``<stream:error>`` for *condition* (and *text*), without the closing tag.

    Raises:
        ValueError: *condition* is not an RFC 6120 stream-error condition.
    """
    if condition not in STREAM_CONDITIONS:
        raise ValueError(f"{condition!r} is not an RFC 6120 stream-error condition")
    body = f"<{condition} xmlns='{STREAMS_NS}'/>"
    if text:
        body += f"<text xmlns='{STREAMS_NS}'>{_escape(text)}</text>"
    return f"<stream:error>{body}</stream:error>".encode()


def parse_stream_error(raw: bytes) -> tuple[str, str | None] | None:
    """Read a peer's ``<stream:error/>``: its condition and ``<text/>`` (None when absent).

    Returns None when *raw* is not a well-formed element; ``undefined-condition`` when it names
    no condition.
    """
    try:
        wrapper = _etree.fromstring(_WRAP_OPEN + raw + _WRAP_CLOSE, _PARSER)
    except _etree.XMLSyntaxError:
        return None
    if len(wrapper) != 1:
        return None
    condition, text = "undefined-condition", None
    for child in wrapper[0]:
        qname = _etree.QName(child)
        if qname.namespace != STREAMS_NS:
            continue
        if qname.localname == "text":
            text = (child.text or "").strip() or None
        elif condition == "undefined-condition":
            condition = qname.localname
    return condition, text


# --- stanza errors and bounces (RFC 6120 section 8.3) ---------------------------------------

SERVER_NS = "jabber:server"
CLIENT_NS = "jabber:client"
_DIALBACK_NS = "jabber:server:dialback"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_STANZA_NAMES = frozenset({"message", "presence", "iq"})
_CONTENT_NS = (SERVER_NS, CLIENT_NS)

# The synthetic parent that gives a raw stanza the stream's namespace context. Its start tag
# is what lxml writes back first; everything between it and "</w>" is the stanza.
_WRAP_OPEN = (
    f"<w xmlns='{SERVER_NS}' xmlns:stream='{STREAM_NS}' xmlns:db='{_DIALBACK_NS}'>"
).encode()
_WRAP_CLOSE = b"</w>"
# Stanzas come from the framer (restricted XML already), but never resolve anything anyway.
_PARSER = _etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
)


def _parse_stanza(raw: bytes) -> _etree._Element:
    try:
        wrapper = _etree.fromstring(_WRAP_OPEN + raw + _WRAP_CLOSE, _PARSER)
    except _etree.XMLSyntaxError as e:
        raise ValueError(f"not a well-formed stanza: {e}") from None
    children = list(wrapper)
    if len(children) != 1 or (wrapper.text or "").strip() or (children[0].tail or "").strip():
        raise ValueError("expected exactly one top-level element")
    top = children[0]
    qname = _etree.QName(top)
    if qname.namespace not in _CONTENT_NS or qname.localname not in _STANZA_NAMES:
        raise ValueError(f"<{qname.localname}> in {qname.namespace!r} is not a stanza")
    return top


def _rebuild(src: _etree._Element, parent: _etree._Element, ns: str) -> _etree._Element:
    """Copy *src* under *parent* moving the stanza's content namespace *ns* to jabber:server.

    Elements inheriting the stanza namespace become jabber:server (written without a declaration
    under the wrapper); foreign subtrees (``<ping xmlns='urn:xmpp:ping'/>``, a forwarded
    ``jabber:client`` message inside ``urn:xmpp:forward:0``) are deep-copied untouched.
    """
    el = _etree.SubElement(parent, f"{{{SERVER_NS}}}{_etree.QName(src).localname}")
    for name, value in src.attrib.items():
        el.set(name, value)
    el.text = src.text
    for child in src:
        if not isinstance(child.tag, str):
            continue  # comments/PIs cannot occur in restricted XML; drop them if they do
        if _etree.QName(child).namespace == ns:
            new = _rebuild(child, el, ns)
        else:
            new = _copy.deepcopy(child)
            el.append(new)
        new.tail = child.tail
    return el


def _serialise_child(wrapper: _etree._Element) -> bytes:
    out = _etree.tostring(wrapper, encoding="utf-8", xml_declaration=False)
    start = out.index(b">") + 1
    if not out.endswith(_WRAP_CLOSE):
        raise AssertionError("lxml wrote an unexpected wrapper")  # cannot happen: we made it
    return out[start : -len(_WRAP_CLOSE)]


def make_bounce(
    raw: bytes,
    condition: str,
    *,
    text: str | None = None,
    by: str | None = None,
    lang: str = "en",
) -> bytes | None:
    """The error stanza that returns *raw* to its sender (RFC 6120 sections 8.3 and 8.3.3).

    ``to`` and ``from`` are swapped, ``type`` becomes ``error``, the original payload is kept and
    ``<error type=... [by=...]><condition/>[<text/>]</error>`` is appended, its type being the
    one RFC 6120 pairs with *condition*. The input may be written in the stream's default
    namespace (no ``xmlns``) or carry ``xmlns='jabber:server'`` / ``'jabber:client'``; the output
    is always in the default-namespace form (jabber:server, no declaration on the top element),
    ready to write into an S2S stream. Payload namespaces are preserved.

    Args:
        raw: one top-level ``<message/>``, ``<presence/>`` or ``<iq/>``.
        condition: a key of :data:`STANZA_CONDITIONS`.
        text: optional human text for ``<text/>``.
        by: optional ``by`` attribute (the entity that found the error, e.g. our domain).
        lang: ``xml:lang`` of the text.

    Returns:
        The bounce's bytes (UTF-8), or None when no bounce is due: the stanza is itself an
        error, or an iq result/error (RFC 6120 section 8.3.1 forbids answering those).

    Raises:
        ValueError: unknown condition, or *raw* is not one well-formed stanza.
    """
    try:
        err_type = STANZA_CONDITIONS[condition]
    except KeyError:
        raise ValueError(f"{condition!r} is not an RFC 6120 stanza-error condition") from None
    top = _parse_stanza(raw)
    stanza_type = top.get("type")
    if stanza_type == "error":
        return None
    if _etree.QName(top).localname == "iq" and stanza_type == "result":
        return None
    ns = _etree.QName(top).namespace
    wrapper = _etree.fromstring(_WRAP_OPEN + _WRAP_CLOSE, _PARSER)
    out = _rebuild(top, wrapper, ns)
    to, from_ = top.get("to"), top.get("from")
    for name, value in (("to", from_), ("from", to)):
        if value is None:
            out.attrib.pop(name, None)
        else:
            out.set(name, value)
    out.set("type", "error")
    error = _etree.SubElement(out, f"{{{SERVER_NS}}}error")
    error.set("type", err_type)
    if by:
        error.set("by", by)
    _etree.SubElement(error, f"{{{STANZAS_NS}}}{condition}", nsmap={None: STANZAS_NS})
    if text:
        text_el = _etree.SubElement(error, f"{{{STANZAS_NS}}}text", nsmap={None: STANZAS_NS})
        if lang:
            text_el.set(_XML_LANG, lang)
        text_el.text = text
    return _serialise_child(wrapper)


def stanza_error_condition(raw: bytes) -> tuple[str, str, str | None] | None:
    """``(type, condition, text)`` of an error stanza's ``<error/>``, or None if *raw* is not one.

    *type* is the ``<error type=...>`` value ("" when missing), *condition* the first
    ``urn:ietf:params:xml:ns:xmpp-stanzas`` child other than ``<text/>`` ("undefined-condition"
    when there is none), *text* the ``<text/>`` content.

    Raises:
        ValueError: *raw* is not one well-formed stanza.
    """
    top = _parse_stanza(raw)
    if top.get("type") != "error":
        return None
    ns = _etree.QName(top).namespace
    error = top.find(f"{{{ns}}}error")
    if error is None:
        return None
    condition: str | None = None
    text: str | None = None
    for child in error:
        if not isinstance(child.tag, str):
            continue
        q = _etree.QName(child)
        if q.namespace != STANZAS_NS:
            continue
        if q.localname == "text":
            text = child.text or ""
        elif condition is None:
            condition = q.localname
    return (error.get("type") or "", condition or "undefined-condition", text)
