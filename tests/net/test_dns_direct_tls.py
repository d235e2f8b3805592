"""XEP-0368 in s2sfast.net.dns: ``_xmpps-server._tcp`` (Direct TLS) SRV records resolved beside
``_xmpp-server._tcp`` and ordered with them as one record set, against a real DNS server on
loopback (tests/dnsserver.py)."""

from __future__ import annotations

import random
import socket
from collections import Counter

import pytest
from dnsserver import DnsServer

from s2sfast.config import AddressOverride, OutgoingOptions, S2SOptions
from s2sfast.net.dns import (
    SRV_PREFIX,
    XMPPS_SRV_PREFIX,
    Candidate,
    DnsFailure,
    DomainNotFound,
    NoXmppService,
    Resolver,
    SrvRecord,
    order_srv,
)

SRV = SRV_PREFIX
SRVS = XMPPS_SRV_PREFIX


def opts(mode: str = "optional", *, port: int = 5269, address=()) -> S2SOptions:
    return S2SOptions(use_starttls=mode, outgoing=OutgoingOptions(port=port), address=address)


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


@pytest.fixture
async def resolver(dns_server: DnsServer):
    r = Resolver([dns_server.nameserver], timeout=1, retries=1, rng=random.Random(7))
    yield r
    await r.close()


def shape(cands: list[Candidate]) -> list[tuple[str, int, bool]]:
    return [(c.host, c.port, c.direct_tls) for c in cands]


async def test_both_names_asked_and_mixed_by_priority(dns_server, resolver):
    dns_server.add_srv(SRVS + "a.test", 5, 0, 5223, "tls.a.test")
    dns_server.add_srv(SRV + "a.test", 10, 0, 5269, "plain.a.test")
    dns_server.add_srv(SRVS + "a.test", 20, 0, 5270, "tls2.a.test")
    for host, ip in (("tls.a.test", "127.0.0.2"), ("plain.a.test", "127.0.0.3")):
        dns_server.add_a(host, ip)
    dns_server.add_a("tls2.a.test", "127.0.0.4")
    cands = await resolver.resolve("a.test", opts())
    assert shape(cands) == [
        ("tls.a.test", 5223, True),
        ("plain.a.test", 5269, False),
        ("tls2.a.test", 5270, True),
    ]
    assert cands[0] == Candidate(
        ip="127.0.0.2", port=5223, family=socket.AF_INET, host="tls.a.test", source="srv",
        direct_tls=True,
    )  # fmt: skip
    assert "Direct TLS" in str(cands[0]) and "Direct TLS" not in str(cands[1])
    assert cands[0].transport == "Direct TLS" and cands[1].transport == "STARTTLS"
    assert dns_server.count(SRVS + "a.test", "SRV") == 1
    assert dns_server.count(SRV + "a.test", "SRV") == 1


async def test_starttls_record_first_when_its_priority_is_lower(dns_server, resolver):
    dns_server.add_srv(SRV + "b.test", 1, 0, 5269, "xmpp.b.test")
    dns_server.add_srv(SRVS + "b.test", 2, 0, 5270, "xmpp.b.test")
    dns_server.add_a("xmpp.b.test", "127.0.0.1")
    cands = await resolver.resolve("b.test", opts())
    # the same address twice, once per transport: both are kept, in priority order
    assert shape(cands) == [("xmpp.b.test", 5269, False), ("xmpp.b.test", 5270, True)]


async def test_same_priority_mixes_the_two_kinds_by_weight(dns_server):
    dns_server.add_srv(SRVS + "w.test", 0, 75, 5270, "tls.w.test")
    dns_server.add_srv(SRV + "w.test", 0, 25, 5269, "plain.w.test")
    dns_server.add_a("tls.w.test", "127.0.0.2")
    dns_server.add_a("plain.w.test", "127.0.0.3")
    firsts: Counter[bool] = Counter()
    async with Resolver([dns_server.nameserver], timeout=1, rng=random.Random(3)) as r:
        for _ in range(200):
            cands = await r.resolve("w.test", opts())
            assert len(cands) == 2
            firsts[cands[0].direct_tls] += 1
    # expected about 150 / 50 (weights 75 / 25 of one record set), each within ~4 sd
    assert 125 < firsts[True] < 175
    assert 25 < firsts[False] < 75


def test_order_srv_treats_the_kinds_as_one_set():
    records = [
        SrvRecord(priority=1, weight=0, port=1, target="a", direct_tls=True),
        SrvRecord(priority=0, weight=0, port=2, target="b"),
        SrvRecord(priority=1, weight=0, port=3, target="c"),
        SrvRecord(priority=0, weight=0, port=4, target="d", direct_tls=True),
    ]
    seen = set()
    for seed in range(40):
        ordered = order_srv(records, random.Random(seed))
        assert {r.priority for r in ordered[:2]} == {0}
        seen.add(ordered[0].direct_tls)
    assert seen == {True, False}  # within a priority either kind may come first


async def test_use_starttls_false_never_asks_for_direct_tls(dns_server, resolver):
    dns_server.add_srv(SRVS + "c.test", 0, 0, 5270, "xmpp.c.test")
    dns_server.add_srv(SRV + "c.test", 10, 0, 5269, "xmpp.c.test")
    dns_server.add_a("xmpp.c.test", "127.0.0.1")
    cands = await resolver.resolve("c.test", opts("false"))
    assert shape(cands) == [("xmpp.c.test", 5269, False)]
    assert dns_server.count(SRVS + "c.test") == 0


async def test_direct_tls_only_domain(dns_server, resolver):
    dns_server.add_srv(SRVS + "d.test", 0, 0, 5270, "xmpp.d.test")
    dns_server.add_a("xmpp.d.test", "127.0.0.1")
    assert shape(await resolver.resolve("d.test", opts())) == [("xmpp.d.test", 5270, True)]
    assert dns_server.count("d.test") == 0  # records found: no A/AAAA fallback


async def test_xmpps_dot_means_no_direct_tls_and_no_a_fallback(dns_server, resolver):
    dns_server.add_srv(SRVS + "e.test", 0, 0, 0, ".")
    dns_server.add_a("e.test", "127.0.0.5")
    with pytest.raises(NoXmppService) as err:  # XEP-0368 section 5: MUST NOT fall back
        await resolver.resolve("e.test", opts(port=15269))
    assert "no Direct TLS" in str(err.value)
    assert dns_server.count("e.test", "A") == 0


async def test_xmpps_dot_leaves_the_starttls_records(dns_server, resolver):
    dns_server.add_srv(SRVS + "e2.test", 0, 0, 0, ".")
    dns_server.add_srv(SRV + "e2.test", 0, 0, 5269, "xmpp.e2.test")
    dns_server.add_a("xmpp.e2.test", "127.0.0.1")
    assert shape(await resolver.resolve("e2.test", opts())) == [("xmpp.e2.test", 5269, False)]


async def test_xmpp_dot_with_xmpps_records_uses_direct_tls(dns_server, resolver):
    dns_server.add_srv(SRV + "f.test", 0, 0, 0, ".")
    dns_server.add_srv(SRVS + "f.test", 0, 0, 5270, "xmpp.f.test")
    dns_server.add_a("xmpp.f.test", "127.0.0.1")
    assert shape(await resolver.resolve("f.test", opts())) == [("xmpp.f.test", 5270, True)]


async def test_xmpp_dot_without_xmpps_is_no_service(dns_server, resolver):
    dns_server.add_srv(SRV + "g.test", 0, 0, 0, ".")
    dns_server.add_a("g.test", "127.0.0.1")
    with pytest.raises(NoXmppService):
        await resolver.resolve("g.test", opts())


async def test_one_name_failing_leaves_the_other_records(dns_server, resolver):
    dns_server.set_rcode(SRVS + "h.test", "SERVFAIL")
    dns_server.add_srv(SRV + "h.test", 0, 0, 5269, "xmpp.h.test")
    dns_server.add_a("xmpp.h.test", "127.0.0.1")
    assert shape(await resolver.resolve("h.test", opts())) == [("xmpp.h.test", 5269, False)]
    dns_server.set_rcode(SRV + "i.test", "SERVFAIL")
    dns_server.add_srv(SRVS + "i.test", 0, 0, 5270, "xmpp.i.test")
    dns_server.add_a("xmpp.i.test", "127.0.0.1")
    assert shape(await resolver.resolve("i.test", opts())) == [("xmpp.i.test", 5270, True)]


async def test_a_failing_name_without_records_anywhere_does_not_fall_back(dns_server, resolver):
    dns_server.set_rcode(SRVS + "j.test", "SERVFAIL")
    dns_server.add_a("j.test", "127.0.0.1")  # no _xmpp-server record: would be the fallback
    with pytest.raises(DnsFailure) as err:
        await resolver.resolve("j.test", opts())
    assert SRVS + "j.test" in str(err.value)
    assert dns_server.count("j.test", "A") == 0


async def test_nxdomain_for_both_names_and_the_domain(dns_server, resolver):
    with pytest.raises(DomainNotFound):
        await resolver.resolve("nx.test", opts())
    assert dns_server.count(SRVS + "nx.test") == 1 and dns_server.count(SRV + "nx.test") == 1


async def test_address_override_with_tls_is_direct_tls(dns_server, resolver):
    s2s = opts(
        address=(
            AddressOverride(host="k.test", ip_address="127.0.0.9", port=5270, tls=True),
            AddressOverride(host="l.test", ip_address="127.0.0.8"),
        )
    )
    (k,) = await resolver.resolve("k.test", s2s)
    (l_,) = await resolver.resolve("l.test", s2s)
    assert (k.port, k.direct_tls, k.source) == (5270, True, "address")
    assert (l_.port, l_.direct_tls) == (5269, False)
    assert dns_server.queries == []
