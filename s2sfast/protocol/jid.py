"""Domain names as XMPP uses them: the domainpart of a JID, a cheap validity check, the
comparison form.

A leaf module (standard library only), so that policy, TLS name checks and the negotiation
machines share one definition without importing each other.
"""

from __future__ import annotations

__all__ = ["jid_domain", "valid_domain", "normalize_domain"]

#: RFC 1035 / RFC 7622 bound for a domainpart, in octets
_MAX_DOMAIN = 1023


def jid_domain(jid: str | None) -> str:
    """The domainpart of *jid* (lowercased), or ``""`` when there is none."""
    if not jid:
        return ""
    bare = jid.split("/", 1)[0]
    return bare.rsplit("@", 1)[-1].lower()


def valid_domain(domain: str | None) -> bool:
    """A cheap syntactic check for a domainpart (no '@', '/', spaces or control characters)."""
    if not domain or len(domain) > _MAX_DOMAIN:
        return False
    if any(c in domain for c in "@/ \t\r\n\"'<>&"):
        return False
    return not domain.startswith(".") and ".." not in domain


def normalize_domain(domain: str) -> str:
    """The comparison form of a domain: lower case, no trailing dot, IDNA A-labels."""
    name = domain.strip()
    if name.endswith("."):
        name = name[:-1]
    name = name.lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not a valid IDN: compare its lower-cased Unicode form
    return name
