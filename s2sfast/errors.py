"""Stream errors (RFC 6120 section 4.9.3) and stanza errors (section 8.3.3).

Every failure in s2sfast is an exception carrying an RFC 6120 condition, so the layer that
owns the socket can turn it into the right ``<stream:error/>`` without guessing. Errors come
in two directions, as in h11: :class:`RemoteStreamError` when the peer broke the protocol
(we answer with a stream error), :class:`LocalStreamError` when our own side was asked to do
something the protocol forbids.
"""

from __future__ import annotations

from xml.sax.saxutils import escape as _escape

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
