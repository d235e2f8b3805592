"""Bidirectional S2S streams (XEP-0288), sans-IO: the feature, the request, the reverse route.

One TCP connection carries stanzas both ways. The receiving server offers
``<bidi xmlns='urn:xmpp:features:bidi'/>`` (after TLS when TLS is used); the initiating server
answers with ``<bidi xmlns='urn:xmpp:bidi'/>`` before SASL or dialback (carrying its own stream
limits, XEP-0478, since it never sends features). From then on:

- the receiving server may send, on the stream it accepted, stanzas *from* a domain it serves
  *to* a domain the peer authenticated on that stream (the inverse of each authenticated pair:
  the stream header's ``to`` -> ``from`` after SASL EXTERNAL, the inverse of each dialback
  request's pair), never before that authentication (XEP-0288 section 2.2);
- the initiating server accepts stanzas on its outbound stream for exactly those pairs.

The incoming machine says when a pair's reverse direction is usable with :class:`BidiRoute`;
the router then uses that stream for stanzas from *local* to *remote* instead of opening a
second connection (and opens one again when the stream ends with stanzas still to send).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree

from s2sfast.protocol.stream_limits import StreamLimits, find_limits, limits_bytes

__all__ = [
    "BIDI_NS",
    "BIDI_FEATURE_NS",
    "FEATURE",
    "BidiRoute",
    "request_bytes",
    "parse_request",
    "offered",
]

BIDI_NS = "urn:xmpp:bidi"
BIDI_FEATURE_NS = "urn:xmpp:features:bidi"

#: the stream feature (inside ``<stream:features/>``)
FEATURE = f"<bidi xmlns='{BIDI_FEATURE_NS}'/>".encode()

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BidiRoute:
    """Action: this (incoming) stream may now carry stanzas from *local* to *remote*."""

    local: str
    remote: str


def request_bytes(limits: StreamLimits | None = None) -> bytes:
    """The initiating server's ``<bidi xmlns='urn:xmpp:bidi'/>``, with our limits inside when
    we announce any (XEP-0478 section 3.2)."""
    inner = limits_bytes(limits)
    if not inner:
        return f"<bidi xmlns='{BIDI_NS}'/>".encode()
    return f"<bidi xmlns='{BIDI_NS}'>".encode() + inner + b"</bidi>"


def parse_request(raw: bytes) -> StreamLimits | None:
    """The limits a ``<bidi xmlns='urn:xmpp:bidi'>`` request announces (None: none, or the
    element is not readable: a bidi request needs no content to count).

    The framer has already checked *raw* is one well-formed element in BIDI_NS.
    """
    try:
        element = etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError:
        return None
    return find_limits(element)


def offered(features: Any) -> bool:
    """Whether a parsed ``<stream:features/>`` (lxml element) offers bidi."""
    return features.find(f"{{{BIDI_FEATURE_NS}}}bidi") is not None
