"""XMPP records in a loopback DNS zone (tests/dnsserver.py's DnsServer), the only way the
harness's servers find their remote domains."""

from __future__ import annotations

from dnsserver import DnsServer

LOOPBACK = "127.0.0.1"

__all__ = ["DnsServer", "add_xmpp_domain"]


def add_xmpp_domain(zone: DnsServer, domain: str, port: int, srv_target: str = "ip") -> None:
    """Publish *domain*'s S2S service at 127.0.0.1:*port*: ``_xmpp-server._tcp.DOMAIN SRV``
    whose target is the IP literal (``srv_target="ip"``) or the domain itself (``"domain"``),
    and ``DOMAIN A 127.0.0.1``. Nothing for ``_xmpps-server`` (direct TLS): NXDOMAIN.
    ejabberd resolves a target *name* with libc (the machine's resolver): "ip" only for it."""
    if srv_target not in ("ip", "domain"):
        raise ValueError(f"srv_target must be 'ip' or 'domain', not {srv_target!r}")
    target = LOOPBACK if srv_target == "ip" else domain
    zone.add_srv(f"_xmpp-server._tcp.{domain}", 0, 0, port, target + ".")
    zone.add_a(domain, LOOPBACK)
