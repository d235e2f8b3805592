"""Stream Limits Advertisement (XEP-0478), sans-IO: the ``<limits/>`` element both ways.

The responding server announces, in its ``<stream:features/>``, the largest top-level element
it accepts (``<max-bytes/>``) and how long it lets the stream stay silent (``<idle-seconds/>``).
On a bidirectional stream (XEP-0288) the initiating server never sends features, so it puts the
same element inside its ``<bidi/>`` request. A sender that knows the peer's limit never writes a
larger stanza to that stream: the stanza bounces with ``policy-violation`` (no ``by``: the
policy is the peer's) and the stream stays up, instead of the peer killing it with a stream
error and every stanza behind it waiting for a reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "LIMITS_NS",
    "MAX_LIMIT_DIGITS",
    "StreamLimits",
    "limits_bytes",
    "parse_limits",
    "find_limits",
    "over_limit_text",
]

LIMITS_NS = "urn:xmpp:stream-limits:0"

#: a limit is a count of bytes or seconds; 18 digits is beyond any real one (and below 2**63),
#: so a longer text is not a limit and is ignored rather than turned into a huge int
MAX_LIMIT_DIGITS = 18


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamLimits:
    """One side's announced limits; None: not announced (no limit we know of)."""

    max_bytes: int | None = None
    idle_seconds: int | None = None

    @property
    def empty(self) -> bool:
        return self.max_bytes is None and self.idle_seconds is None


def limits_bytes(limits: StreamLimits | None) -> bytes:
    """``<limits xmlns='urn:xmpp:stream-limits:0'>...</limits>``, or b"" when nothing is
    announced (an unlimited ``max_stanza_size`` and no idle timeout)."""
    if limits is None or limits.empty:
        return b""
    parts = [f"<limits xmlns='{LIMITS_NS}'>"]
    if limits.max_bytes is not None:
        parts.append(f"<max-bytes>{int(limits.max_bytes)}</max-bytes>")
    if limits.idle_seconds is not None:
        parts.append(f"<idle-seconds>{int(limits.idle_seconds)}</idle-seconds>")
    parts.append("</limits>")
    return "".join(parts).encode()


def _count(element: Any, name: str) -> int | None:
    child = element.find(f"{{{LIMITS_NS}}}{name}")
    if child is None:
        return None
    text = (child.text or "").strip()
    if not text.isdigit() or not text.isascii() or len(text) > MAX_LIMIT_DIGITS:
        return None  # not a count: as if not announced
    value = int(text)
    return value if value > 0 else None


def parse_limits(element: Any) -> StreamLimits | None:
    """Read a ``<limits/>`` lxml element (namespace already checked by the caller).

    Returns:
        The announced limits, or None when neither is a positive integer.
    """
    limits = StreamLimits(
        max_bytes=_count(element, "max-bytes"), idle_seconds=_count(element, "idle-seconds")
    )
    return None if limits.empty else limits


def find_limits(parent: Any) -> StreamLimits | None:
    """The limits announced inside *parent* (``<stream:features/>`` or ``<bidi/>``), or None."""
    element = parent.find(f"{{{LIMITS_NS}}}limits")
    return None if element is None else parse_limits(element)


def over_limit_text(size: int, limit: int, peer: str) -> str:
    """The bounce text for a stanza of *size* bytes that *peer* announced it would refuse."""
    return (
        f"the stanza is {size} bytes and {peer} accepts at most {limit} bytes per stanza "
        "(its stream limits, XEP-0478)"
    )
