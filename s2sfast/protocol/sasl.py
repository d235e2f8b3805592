"""SASL EXTERNAL on S2S streams (XEP-0178, RFC 6120 section 6): the few elements, sans-IO.

The receiving server offers EXTERNAL after TLS when the initiating server's certificate chains
to our trust anchors and names the domain its stream header claims (RFC 6125); the initiating
server authenticates with its domain as the authorization identity (base64 in the initial
response); ``<success/>`` restarts the stream over the same TLS session and the pair is
authenticated without dialback. ``<failure/>`` leaves the stream as it was: the initiating
server falls back to dialback when that was offered too (what Prosody and ejabberd do with each
other). Both directions are on by default (``[s2s] sasl_external``). Prosody 0.12 uses XEP-0198
on S2S streams only when they were authenticated this way.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from lxml import etree

__all__ = [
    "SASL_NS",
    "EXTERNAL",
    "MAX_ATTEMPTS",
    "SaslElement",
    "mechanisms_feature",
    "auth_bytes",
    "response_bytes",
    "challenge_bytes",
    "success_bytes",
    "failure_bytes",
    "parse_sasl",
    "parse_mechanisms",
]

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
EXTERNAL = "EXTERNAL"

#: RFC 6120 6.4.5: a receiving entity SHOULD allow "at least 2 and no more than 5" retries and
#: close the stream with policy-violation when they are used up; EXTERNAL's outcome does not
#: change between attempts (the certificate is the same), so the smallest budget: 1 + 2 retries.
MAX_ATTEMPTS = 3

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
#: an authzid is a domain (RFC 7622: at most 1023 octets); base64 of that with room to spare
_MAX_TEXT = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslElement:
    """A parsed ``<auth/>``, ``<response/>``, ``<abort/>``, ``<challenge/>``, ``<success/>``
    or ``<failure/>``.

    Attributes:
        name: the element's local name.
        mechanism: ``<auth mechanism=''>`` (None on the others).
        initial: whether an ``<auth/>`` carried an initial response (text, ``=`` for an empty
            one; RFC 6120 6.4.2). ``<response/>`` always counts as one.
        authzid: the decoded authorization identity of an ``<auth/>`` / ``<response/>`` (""
            for ``=`` or none), None when the text is not base64 of UTF-8.
        condition: the first child's local name on ``<failure/>``.
    """

    name: str
    mechanism: str | None = None
    initial: bool = False
    authzid: str | None = None
    condition: str | None = None


def mechanisms_feature() -> str:
    """The ``<mechanisms/>`` stream feature offering EXTERNAL only."""
    return f"<mechanisms xmlns='{SASL_NS}'><mechanism>{EXTERNAL}</mechanism></mechanisms>"


def _b64(authzid: str) -> str:
    return base64.b64encode(authzid.encode()).decode() if authzid else "="


def auth_bytes(authzid: str) -> bytes:
    """``<auth mechanism='EXTERNAL'>`` with *authzid* (our domain) as the initial response
    (XEP-0178 section 2, step 6; ``=`` when *authzid* is empty)."""
    return f"<auth xmlns='{SASL_NS}' mechanism='{EXTERNAL}'>{_b64(authzid)}</auth>".encode()


def response_bytes(authzid: str) -> bytes:
    """``<response/>`` to an empty ``<challenge/>`` (an ``<auth/>`` sent without initial
    response)."""
    return f"<response xmlns='{SASL_NS}'>{_b64(authzid)}</response>".encode()


def challenge_bytes() -> bytes:
    """The empty challenge that asks for the response an ``<auth/>`` left out."""
    return f"<challenge xmlns='{SASL_NS}'/>".encode()


def success_bytes() -> bytes:
    return f"<success xmlns='{SASL_NS}'/>".encode()


def failure_bytes(condition: str) -> bytes:
    """``<failure/>`` with a SASL *condition* (RFC 6120 6.5)."""
    return f"<failure xmlns='{SASL_NS}'><{condition}/></failure>".encode()


def _decode(text: str) -> str | None:
    if text == "=":
        return ""
    if len(text) > _MAX_TEXT:
        return None
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def parse_sasl(raw: bytes) -> SaslElement:
    """Parse a framed SASL element (control plane: lxml).

    A malformed element reads as a ``<failure/>`` without condition: an ``<auth/>`` that
    cannot be read is refused as such by the caller, never trusted.
    """
    try:
        el = etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError:
        return SaslElement(name="failure")
    name = etree.QName(el).localname
    text = (el.text or "").strip()
    if name == "auth":
        return SaslElement(
            name=name,
            mechanism=el.get("mechanism"),
            initial=bool(text),
            authzid=_decode(text) if text else "",
        )
    if name == "response":
        return SaslElement(name=name, initial=True, authzid=_decode(text) if text else "")
    condition = None
    if name == "failure" and len(el):
        condition = etree.QName(el[0]).localname
    return SaslElement(name=name, condition=condition)


def parse_mechanisms(features: etree._Element) -> frozenset[str]:
    """The SASL mechanism names a parsed ``<stream:features/>`` offers (upper case)."""
    return frozenset(
        (m.text or "").strip().upper()
        for m in features.iterfind(f"{{{SASL_NS}}}mechanisms/{{{SASL_NS}}}mechanism")
    )
