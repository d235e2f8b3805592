"""SASL EXTERNAL on S2S streams (XEP-0178, RFC 6120 section 6): the few elements, sans-IO.

The receiving server offers EXTERNAL after TLS when the initiating server's certificate verifies
for the domain its stream header claims; the initiating server authenticates with its domain as
the authorization identity; success restarts the stream (no TLS change). s2sfast uses it only
when ``[s2s] sasl_external`` is on (dialback otherwise); Prosody 0.12 enables XEP-0198 on S2S
streams only when they are authenticated this way.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from lxml import etree

__all__ = ["SASL_NS", "SaslElement", "auth_bytes", "success_bytes", "failure_bytes", "parse_sasl"]

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
#: an authzid is a domain (RFC 7622: at most 1023 octets); base64 of that with room to spare
_MAX_TEXT = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslElement:
    """A parsed ``<auth/>``, ``<success/>`` or ``<failure/>``.

    Attributes:
        name: the element's local name.
        mechanism: ``<auth mechanism=''>`` (None on the others).
        authzid: ``<auth/>``'s decoded authorization identity ("" for ``=`` or no text), None
            when the text is not valid base64 / UTF-8.
        condition: the first child's local name on ``<failure/>``.
    """

    name: str
    mechanism: str | None = None
    authzid: str | None = None
    condition: str | None = None


def auth_bytes(authzid: str) -> bytes:
    """``<auth mechanism='EXTERNAL'>`` naming *authzid* (our domain)."""
    text = base64.b64encode(authzid.encode()).decode() if authzid else "="
    return f"<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{text}</auth>".encode()


def success_bytes() -> bytes:
    return f"<success xmlns='{SASL_NS}'/>".encode()


def failure_bytes(condition: str) -> bytes:
    """``<failure/>`` with a SASL *condition* (RFC 6120 6.5)."""
    return f"<failure xmlns='{SASL_NS}'><{condition}/></failure>".encode()


def parse_sasl(raw: bytes) -> SaslElement:
    """Parse a framed SASL element (control plane: lxml).

    A malformed element reads as a ``<failure/>`` without condition (an ``<auth/>`` that
    cannot be read is refused as such by the caller, never trusted).
    """
    try:
        el = etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError:
        return SaslElement(name="failure")
    name = etree.QName(el).localname
    if name == "auth":
        text = (el.text or "").strip()
        authzid: str | None
        if text in ("", "="):
            authzid = ""
        elif len(text) > _MAX_TEXT:
            authzid = None
        else:
            try:
                authzid = base64.b64decode(text, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                authzid = None
        return SaslElement(name=name, mechanism=el.get("mechanism"), authzid=authzid)
    condition = None
    if name == "failure" and len(el):
        condition = etree.QName(el[0]).localname
    return SaslElement(name=name, condition=condition)
