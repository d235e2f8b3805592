"""lxml helpers: a framed Stanza's raw bytes -> element, bytes -> Stanza, element -> S2S bytes.

The data plane forwards ``Stanza.raw`` untouched; only the control plane (dialback,
negotiation, bounces) needs a tree, and it gets one here. A stanza's raw bytes rely on the
namespace declarations of the stream header (``xmlns='jabber:server'``, ``xmlns:db=...``), so
parsing wraps them in an element that re-declares those.
"""

from __future__ import annotations

import re
from copy import deepcopy
from xml.sax.saxutils import quoteattr

from lxml import etree

from s2sfast.framing import Stanza, StreamFramer
from s2sfast.protocol.errors import FramingError

__all__ = [
    "SERVER_NS",
    "DIALBACK_NS",
    "S2S_NAMESPACES",
    "parse_stanza",
    "stanza_from_bytes",
    "serialize",
]

SERVER_NS = "jabber:server"
DIALBACK_NS = "jabber:server:dialback"
_STREAM_NS = "http://etherx.jabber.org/streams"
_SERVER_DECL = b' xmlns="jabber:server"'
# The prefix serialize() writes a top-level element's namespace with (None: unprefixed).
_PREFIXES = {DIALBACK_NS: "db", _STREAM_NS: "stream"}

#: The namespace declarations of an s2sfast stream header (prefix -> URI, '' = default).
S2S_NAMESPACES: dict[str, str] = {"": SERVER_NS, "db": DIALBACK_NS, "stream": _STREAM_NS}

# The framer has already checked the bytes; this parser only builds the tree, never
# resolves entities or touches the network.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, remove_comments=False, huge_tree=True
)


def _declarations(namespaces: dict[str, str]) -> str:
    parts = []
    for prefix, uri in namespaces.items():
        name = "xmlns" if prefix == "" else "xmlns:" + prefix
        parts.append(f" {name}={quoteattr(uri)}")
    return "".join(parts)


def _start_tag_end(raw: bytes) -> int:
    """Index of the '>' that ends the first start tag of *raw* (quotes respected)."""
    quote = 0
    for i in range(1, len(raw)):
        c = raw[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return i
    raise etree.XMLSyntaxError("raw has no complete start tag", None, 0, 0)


def parse_stanza(stanza: Stanza) -> etree._Element:
    """Parse a framed stanza into an lxml element with the header's namespaces applied.

    The inherited declarations the element does not make itself are added to its start tag
    before parsing, so prefixes stay as written (``db:result`` keeps ``db``, an unprefixed
    stanza stays in the default namespace); declarations it does not use are then dropped.

    Args:
        stanza: a Stanza from StreamFramer (or built by :func:`stanza_from_bytes`); when its
            ``namespaces`` is None, the usual s2s header namespaces are assumed.

    Returns:
        The element, the root of its own tree.

    Raises:
        lxml.etree.XMLSyntaxError: ``raw`` is not one well-formed element (only possible for
            a hand-built Stanza; framed ones were checked).
    """
    namespaces = stanza.namespaces if stanza.namespaces is not None else S2S_NAMESPACES
    raw = stanza.raw
    end = _start_tag_end(raw)
    tag = raw[:end]
    name_end = 1
    while name_end < end and raw[name_end] not in b" \t\r\n/":
        name_end += 1
    declared = _declared_prefixes(tag, name_end)
    inject = {prefix: uri for prefix, uri in namespaces.items() if prefix not in declared}
    data = raw[:name_end] + _declarations(inject).encode() + raw[name_end:]
    element = etree.fromstring(data, _PARSER)
    etree.cleanup_namespaces(element)
    return element


#: one attribute of a well-formed start tag: whitespace, name, '=', a quoted value
_ATTRIBUTE = re.compile(rb"""[ \t\r\n]+([^ \t\r\n=/>]+)[ \t\r\n]*=[ \t\r\n]*(?:"[^"]*"|'[^']*')""")


def _declared_prefixes(tag: bytes, pos: int) -> set[str]:
    """The prefixes ('' = default) the start tag *tag* declares, read from its attribute
    names one attribute after another from *pos* (after the element name): a value such as
    ``x=" xmlns:db=''"`` is a value, never a declaration (the framer checked the tag)."""
    declared: set[str] = set()
    match = _ATTRIBUTE.match
    while (m := match(tag, pos)) is not None:
        name = m.group(1)
        if name == b"xmlns":
            declared.add("")
        elif name.startswith(b"xmlns:"):
            declared.add(name[6:].decode("utf-8"))
        pos = m.end()
    return declared


def stanza_from_bytes(raw: bytes, namespaces: dict[str, str] | None = None) -> Stanza:
    """Frame one standalone top-level element, as if it had arrived on an s2s stream.

    Whitespace around the element is ignored (not part of the returned ``raw``).

    Args:
        raw: the element's bytes, written for a stream whose header declares *namespaces*.
        namespaces: the header's prefix -> URI declarations (default: jabber:server as the
            default namespace, ``db`` and ``stream`` prefixes).

    Returns:
        The Stanza the framer produces for it (``namespaces`` set to the header's dict).

    Raises:
        FramingError: *raw* is not exactly one acceptable element (offsets count from the
            start of *raw*).
    """
    if namespaces is None:
        namespaces = S2S_NAMESPACES
    ns = dict(namespaces)
    ns.setdefault("stream", _STREAM_NS)
    header = ("<stream:stream" + _declarations(ns) + ">").encode()
    framer = StreamFramer(default_ns=ns.get("", ""))
    framer.feed(header)
    try:
        events = framer.feed(raw)
        events += framer.feed(b"</stream:stream>")
    except FramingError as exc:
        offset = None if exc.offset is None else max(0, exc.offset - len(header))
        text = exc.text
        if offset is not None and offset >= len(raw):
            text = "raw ends inside an element"
            offset = len(raw)
        raise FramingError(exc.condition, text, offset) from None
    stanzas = [e for e in events if isinstance(e, Stanza)]
    if len(stanzas) != 1:
        raise FramingError(
            "not-well-formed", f"expected exactly one element, got {len(stanzas)}", 0
        )
    return stanzas[0]


def _renamespaced(element: etree._Element, prefix: str | None) -> etree._Element:
    """A copy of *element* whose own namespace uses *prefix* (None: the default namespace)."""
    uri = etree.QName(element).namespace
    copy = etree.Element(element.tag, attrib=dict(element.attrib), nsmap={prefix: uri})
    copy.text = element.text
    for child in element:
        copy.append(deepcopy(child))
    return copy


def serialize(element: etree._Element) -> bytes:
    """Write a top-level element for an s2s stream whose header declares jabber:server.

    A jabber:server element is written unprefixed without ``xmlns='jabber:server'`` (it
    inherits the stream's default namespace); a dialback element is written with the ``db:``
    prefix and a stream-namespace element with ``stream:`` (each keeping its own declaration,
    which is harmless and makes the bytes self-contained); an element in any other namespace
    is written unprefixed with its ``xmlns``. Children keep their namespaces. UTF-8, no XML
    declaration, never the tail. The element must be namespaced (an element in no namespace
    would be read as jabber:server on the stream).
    """
    uri = etree.QName(element).namespace
    prefix = _PREFIXES.get(uri)
    if uri is not None and element.prefix != prefix:
        element = _renamespaced(element, prefix)
    data = etree.tostring(element, encoding="utf-8", xml_declaration=False, with_tail=False)
    if uri == SERVER_NS:
        # lxml escapes '>' and '"' in attribute values, so the first '>' ends the start tag
        # and this text inside it can only be the namespace declaration.
        end = data.index(b">")
        at = data.find(_SERVER_DECL, 0, end)
        if at >= 0:
            data = data[:at] + data[at + len(_SERVER_DECL) :]
    return data
