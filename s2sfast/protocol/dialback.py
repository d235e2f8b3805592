"""Server Dialback (XEP-0220) keys, elements and pending verifications.

Pure functions and small bookkeeping only: no I/O. The key follows XEP-0185 so that nodes
sharing ``[s2s] shared`` verify each other's keys::

    key = hex(HMAC-SHA256(key=hex(SHA256(secret)), msg=receiving + ' ' + originating + ' ' + id))

Keys are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from lxml import etree

from s2sfast.protocol.errors import RemoteStreamError

__all__ = [
    "DIALBACK_NS",
    "DIALBACK_FEATURE_NS",
    "make_key",
    "key_matches",
    "DialbackElement",
    "parse_dialback",
    "read_dialback",
    "result_bytes",
    "verify_bytes",
    "PendingVerifications",
]

DIALBACK_NS = "jabber:server:dialback"
DIALBACK_FEATURE_NS = "urn:xmpp:features:dialback"
_STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: db:result / db:verify carry a 64-hex-digit key; anything much larger is not a key.
MAX_KEY_LENGTH = 1024


def make_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """The XEP-0185 dialback key for *originating* -> *receiving* on stream *stream_id*.

    Returns:
        64 lowercase hex digits.
    """
    hashed_secret = hashlib.sha256(secret.encode()).hexdigest().encode()
    msg = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(hashed_secret, msg, hashlib.sha256).hexdigest()


def key_matches(
    secret: str, receiving: str, originating: str, stream_id: str, key: str | None
) -> bool:
    """Whether *key* is the key we would have generated, compared in constant time."""
    if not key:
        return False
    expected = make_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode(), key.strip().encode(errors="replace"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DialbackElement:
    """A parsed ``<db:result/>`` or ``<db:verify/>``.

    Attributes:
        kind: ``"result"`` or ``"verify"``.
        from_, to: the domains (attributes, may be empty when the peer omitted them).
        id: the stream id attribute (``None`` when absent; ejabberd omits it on answers).
        type: ``None`` for a request, else ``valid`` / ``invalid`` / ``error``.
        key: the text content (``None`` for empty answers).
        error_condition: the stanza-error condition inside a ``type='error'`` answer.
    """

    kind: str
    from_: str
    to: str
    id: str | None
    type: str | None
    key: str | None
    error_condition: str | None = None


def parse_dialback(raw: bytes) -> DialbackElement:
    """Parse a framed ``db:result`` / ``db:verify`` element (control plane: lxml is fine here).

    Raises:
        ValueError: not a dialback element, or malformed.
    """
    # The framer hands us the element as it appeared on the wire; the db prefix was declared on
    # the stream header, so wrap it in an element that declares the usual prefixes.
    wrapped = (
        b"<w xmlns='jabber:server' xmlns:db='jabber:server:dialback'"
        b" xmlns:stream='http://etherx.jabber.org/streams'>" + raw + b"</w>"
    )
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(wrapped, parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"malformed dialback element: {exc}") from exc
    if len(root) != 1:
        raise ValueError("expected exactly one dialback element")
    el = root[0]
    qname = etree.QName(el)
    if qname.namespace != DIALBACK_NS or qname.localname not in ("result", "verify"):
        raise ValueError(f"not a dialback element: {{{qname.namespace}}}{qname.localname}")
    key = (el.text or "").strip() or None
    if key is not None and len(key) > MAX_KEY_LENGTH:
        raise ValueError("dialback key too long")
    condition = None
    for child in el.iter(f"{{{_STANZAS_NS}}}*"):
        name = etree.QName(child).localname
        if name != "text":
            condition = name
            break
    return DialbackElement(
        kind=qname.localname,
        from_=el.get("from", ""),
        to=el.get("to", ""),
        id=el.get("id"),
        type=el.get("type"),
        key=key,
        error_condition=condition,
    )


def read_dialback(raw: bytes) -> DialbackElement:
    """:func:`parse_dialback` for a machine reading the peer's element.

    Raises:
        RemoteStreamError: ``bad-format`` when it is malformed.
    """
    try:
        return parse_dialback(raw)
    except ValueError as exc:
        raise RemoteStreamError("bad-format", str(exc)) from exc


def _quoteattr(value: str) -> str:
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
    return f"'{escaped}'"


def _element(
    kind: str,
    *,
    from_: str,
    to: str,
    id: str | None = None,
    type: str | None = None,
    key: str | None = None,
    error_condition: str | None = None,
) -> bytes:
    attrs = f" from={_quoteattr(from_)} to={_quoteattr(to)}"
    if id is not None:
        attrs += f" id={_quoteattr(id)}"
    if type is not None:
        attrs += f" type={_quoteattr(type)}"
    if error_condition is not None:
        body = f"<error type='cancel'><{error_condition} xmlns='{_STANZAS_NS}'/></error>"
    else:
        body = key or ""
    if not body:
        return f"<db:{kind}{attrs}/>".encode()
    return f"<db:{kind}{attrs}>{body}</db:{kind}>".encode()


def result_bytes(
    *,
    from_: str,
    to: str,
    key: str | None = None,
    type: str | None = None,
    error_condition: str | None = None,
) -> bytes:
    """``<db:result/>``: a request (with *key*) or an answer (with *type*)."""
    return _element(
        "result", from_=from_, to=to, type=type, key=key, error_condition=error_condition
    )


def verify_bytes(
    *,
    from_: str,
    to: str,
    id: str,
    key: str | None = None,
    type: str | None = None,
    error_condition: str | None = None,
) -> bytes:
    """``<db:verify/>``: a request (with *key*) or an answer (with *type*)."""
    return _element(
        "verify", from_=from_, to=to, id=id, type=type, key=key, error_condition=error_condition
    )


class PendingVerifications:
    """db:verify requests we sent and have not had answered yet.

    An answer is accepted only when its (from, to, id) matches a request: ``from`` is the
    authoritative (originating) domain we asked, ``to`` is our receiving domain, ``id`` the
    stream id the key was generated for. Anything else is dropped by the caller.
    """

    __slots__ = ("_pending",)

    #: bounded so a peer cannot make us remember unlimited requests
    MAX_PENDING = 1000

    def __init__(self) -> None:
        self._pending: set[tuple[str, str, str]] = set()

    def add(self, *, originating: str, receiving: str, stream_id: str) -> None:
        """Remember that we asked *originating*'s server about a key on *stream_id*.

        Raises:
            OverflowError: too many requests outstanding.
        """
        if len(self._pending) >= self.MAX_PENDING:
            raise OverflowError("too many pending dialback verifications")
        self._pending.add((originating, receiving, stream_id))

    def take(self, *, from_: str, to: str, stream_id: str | None) -> bool:
        """Consume the request an answer (from, to, id) refers to; False if there is none."""
        if stream_id is None:
            return False
        entry = (from_, to, stream_id)
        if entry in self._pending:
            self._pending.discard(entry)
            return True
        return False

    def drain(self) -> list[tuple[str, str, str]]:
        """Remove and return every outstanding (originating, receiving, stream_id)."""
        items = sorted(self._pending)
        self._pending.clear()
        return items

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, item: object) -> bool:
        return item in self._pending
