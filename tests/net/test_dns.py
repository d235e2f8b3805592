"""s2sfast.net.dns against a real DNS server on loopback (tests/dnsserver.py), not the system's."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter

import pytest
from dnsserver import DnsServer
from hypothesis import given
from hypothesis import strategies as st

from s2sfast.config import AddressOverride, OutgoingOptions, S2SOptions
from s2sfast.net.dns import (
    Candidate,
    DnsFailure,
    DnsTimeout,
    DomainNotFound,
    NoXmppService,
    ResolutionError,
    Resolver,
    SrvRecord,
    order_srv,
)

SRV = "_xmpp-server._tcp."


def opts(*, port: int = 5269, ip_versions=(4, 6), address=()) -> S2SOptions:
    return S2SOptions(
        outgoing=OutgoingOptions(port=port, ip_versions=tuple(ip_versions)), address=address
    )


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


@pytest.fixture
async def resolver(dns_server: DnsServer):
    r = Resolver([dns_server.nameserver], timeout=1, retries=2, rng=random.Random(7))
    yield r
    await r.close()


def hosts(cands: list[Candidate]) -> list[str]:
    return [c.host for c in cands]


# -- SRV ------------------------------------------------------------------------------------


async def test_srv_candidates_follow_priority_then_resolve_each_target(dns_server, resolver):
    dns_server.add_srv(SRV + "a.test", 20, 0, 5270, "backup.a.test")
    dns_server.add_srv(SRV + "a.test", 10, 0, 5269, "main.a.test")
    dns_server.add_a("main.a.test", "127.0.0.2")
    dns_server.add_a("backup.a.test", "127.0.0.3")
    cands = await resolver.resolve("a.test", opts(port=1))
    assert cands == [
        Candidate(ip="127.0.0.2", port=5269, family=socket.AF_INET, host="main.a.test",
                  source="srv"),
        Candidate(ip="127.0.0.3", port=5270, family=socket.AF_INET, host="backup.a.test",
                  source="srv"),
    ]  # fmt: skip
    assert dns_server.count(SRV + "a.test", "SRV") == 1


async def test_lower_priority_always_first_whatever_the_weights(dns_server):
    dns_server.add_srv(SRV + "p.test", 1, 65535, 1, "heavy.p.test")
    dns_server.add_srv(SRV + "p.test", 0, 1, 2, "light.p.test")
    dns_server.add_a("heavy.p.test", "127.0.0.2")
    dns_server.add_a("light.p.test", "127.0.0.3")
    async with Resolver([dns_server.nameserver], timeout=1, rng=random.Random(1)) as r:
        for _ in range(50):
            assert hosts(await r.resolve("p.test", opts())) == ["light.p.test", "heavy.p.test"]


async def test_weights_pick_the_first_target_proportionally_through_dns(dns_server):
    for name, weight in (("w60", 60), ("w30", 30), ("w10", 10)):
        dns_server.add_srv(SRV + "w.test", 5, weight, 5269, f"{name}.w.test")
        dns_server.add_a(f"{name}.w.test", "127.0.0.1")
    dns_server.add_a("w30.w.test", "127.0.0.2")
    dns_server.add_a("w10.w.test", "127.0.0.3")
    firsts: Counter[str] = Counter()
    async with Resolver([dns_server.nameserver], timeout=1, rng=random.Random(42)) as r:
        for _ in range(300):
            cands = await r.resolve("w.test", opts())
            firsts[cands[0].host] += 1
            # same target, same address: deduplicated
            assert len(cands) == 3
    # expected (w + 1/3) / 101 * 300: about 179, 90 and 31 (each within ~3.5 sd)
    assert 150 < firsts["w60.w.test"] < 210
    assert 62 < firsts["w30.w.test"] < 118
    assert 12 < firsts["w10.w.test"] < 50


def test_order_srv_weight_statistics_with_seeded_rng():
    recs = [
        SrvRecord(priority=0, weight=w, port=1, target=t) for t, w in (("a", 1), ("b", 3), ("c", 6))
    ]
    rng = random.Random(2024)
    n = 20_000
    first = Counter(order_srv(recs, rng)[0].target for _ in range(n))
    # RFC 2782 draws from 0..sum inclusive: P(first=x) = (weight + P(x is arranged first,
    # taking the draw 0)) / (sum + 1), with a random arrangement: (w + 1/3) / 11
    assert abs(first["a"] / n - (1 + 1 / 3) / 11) < 0.012
    assert abs(first["b"] / n - (3 + 1 / 3) / 11) < 0.012
    assert abs(first["c"] / n - (6 + 1 / 3) / 11) < 0.012
    second_given_c = Counter(
        o[1].target for o in (order_srv(recs, rng) for _ in range(n)) if o[0].target == "c"
    )
    total = sum(second_given_c.values())  # remaining a(1), b(3): (1 + 1/2) / 5 and (3 + 1/2) / 5
    assert abs(second_given_c["a"] / total - 1.5 / 5) < 0.03


def test_order_srv_zero_weights_as_rfc_2782_says():
    rng = random.Random(99)
    n = 22_000
    zero_and_ten = [
        SrvRecord(priority=0, weight=10, port=1, target="ten"),
        SrvRecord(priority=0, weight=0, port=1, target="zero"),
    ]
    first = Counter(order_srv(zero_and_ten, rng)[0].target for _ in range(n))
    # weight-0 records go first in the running order and win only the draw 0: 1 in 11
    assert abs(first["zero"] / n - 1 / 11) < 0.01
    all_zero = [SrvRecord(priority=0, weight=0, port=1, target=t) for t in "xyz"]
    first = Counter(order_srv(all_zero, rng)[0].target for _ in range(n))
    for t in "xyz":  # all weights 0: uniform
        assert abs(first[t] / n - 1 / 3) < 0.02


def test_order_srv_keeps_every_record_once_and_is_reproducible():
    recs = [
        SrvRecord(priority=p, weight=w, port=i, target=f"t{i}")
        for i, (p, w) in enumerate([(2, 0), (1, 5), (1, 0), (0, 7), (2, 9), (1, 5)])
    ]
    a = order_srv(recs, random.Random(5))
    assert sorted(a, key=lambda r: r.port) == recs
    assert [r.priority for r in a] == sorted(r.priority for r in recs)
    assert a == order_srv(recs, random.Random(5))


# -- A/AAAA and ip_versions -----------------------------------------------------------------


def dual_stack(server: DnsServer, domain: str) -> None:
    server.add_srv(SRV + domain, 0, 0, 5269, "xmpp." + domain)
    server.add_a("xmpp." + domain, "127.0.0.1")
    server.add_aaaa("xmpp." + domain, "::1")


@pytest.mark.parametrize(
    "versions, expected",
    [
        ((4, 6), [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)]),
        ((6, 4), [("::1", socket.AF_INET6), ("127.0.0.1", socket.AF_INET)]),
        ((6,), [("::1", socket.AF_INET6)]),
        ((4,), [("127.0.0.1", socket.AF_INET)]),
    ],
)
async def test_ip_versions_order_and_filter_addresses(dns_server, resolver, versions, expected):
    dual_stack(dns_server, "d.test")
    cands = await resolver.resolve("d.test", opts(ip_versions=versions))
    assert [(c.ip, c.family) for c in cands] == expected
    asked = {q.qtype for q in dns_server.queries if q.name == "xmpp.d.test"}
    assert asked == {"A" if v == 4 else "AAAA" for v in versions}


async def test_no_srv_record_falls_back_to_the_domains_own_addresses(dns_server, resolver):
    dns_server.add_a("f.test", "127.0.0.5")
    dns_server.add_aaaa("f.test", "::1")
    cands = await resolver.resolve("F.test.", opts(port=15269, ip_versions=(6, 4)))
    assert cands == [
        Candidate(ip="::1", port=15269, family=socket.AF_INET6, host="f.test", source="fallback"),
        Candidate(ip="127.0.0.5", port=15269, family=socket.AF_INET, host="f.test",
                  source="fallback"),
    ]  # fmt: skip
    assert dns_server.count(SRV + "f.test", "SRV") == 1  # NXDOMAIN for the SRV name


async def test_empty_srv_answer_also_falls_back(dns_server, resolver):
    dns_server.add_name(SRV + "e.test")  # the name exists, but has no SRV record
    dns_server.add_a("e.test", "127.0.0.6")
    cands = await resolver.resolve("e.test", opts())
    assert [(c.ip, c.port, c.source) for c in cands] == [("127.0.0.6", 5269, "fallback")]


async def test_cname_for_a_target_is_followed(dns_server, resolver):
    dns_server.add_srv(SRV + "c.test", 0, 0, 5270, "alias.c.test")
    dns_server.add_cname("alias.c.test", "real.c.test")
    dns_server.add_a("real.c.test", "127.0.0.7")
    cands = await resolver.resolve("c.test", opts(ip_versions=(4,)))
    assert [(c.ip, c.port, c.host) for c in cands] == [("127.0.0.7", 5270, "alias.c.test")]


async def test_glue_in_the_additional_section_saves_address_queries(dns_server, resolver):
    dns_server.glue = True
    dual_stack(dns_server, "g.test")
    cands = await resolver.resolve("g.test", opts())
    assert [c.ip for c in cands] == ["127.0.0.1", "::1"]
    assert dns_server.count("xmpp.g.test") == 0


async def test_targets_without_addresses_are_skipped(dns_server, resolver):
    dns_server.add_srv(SRV + "s.test", 0, 0, 5269, "gone.s.test")
    dns_server.add_srv(SRV + "s.test", 1, 0, 5270, "here.s.test")
    dns_server.add_aaaa("here.s.test", "::1")
    cands = await resolver.resolve("s.test", opts())
    assert [(c.host, c.ip, c.port) for c in cands] == [("here.s.test", "::1", 5270)]


async def test_ip_literal_srv_target_is_used_as_is(dns_server, resolver):
    dns_server.add_srv(SRV + "lit.test", 0, 0, 25269, "127.0.0.9")
    cands = await resolver.resolve("lit.test", opts())
    assert [(c.ip, c.port) for c in cands] == [("127.0.0.9", 25269)]
    assert dns_server.count("127.0.0.9") == 0


# -- errors ---------------------------------------------------------------------------------


async def test_nxdomain_everywhere_is_domain_not_found(dns_server, resolver):
    with pytest.raises(DomainNotFound) as info:
        await resolver.resolve("nx.test", opts())
    err = info.value
    assert str(err) == "NXDOMAIN for _xmpp-server._tcp.nx.test and nx.test"
    assert err.condition == "remote-server-not-found" and not err.temporary
    assert err.domain == "nx.test"
    assert isinstance(err, ResolutionError)


async def test_srv_targets_that_do_not_exist_are_domain_not_found(dns_server, resolver):
    dns_server.add_srv(SRV + "t.test", 0, 0, 5269, "nowhere.t.test")
    with pytest.raises(DomainNotFound, match="nowhere.t.test"):
        await resolver.resolve("t.test", opts())
    assert dns_server.count("t.test") == 0  # SRV existed: no fallback to the domain itself


async def test_dot_target_means_no_service_and_no_fallback(dns_server, resolver):
    dns_server.add_srv(SRV + "none.test", 0, 0, 0, ".")
    dns_server.add_a("none.test", "127.0.0.1")  # must not be used
    with pytest.raises(NoXmppService) as info:
        await resolver.resolve("none.test", opts())
    assert info.value.condition == "remote-server-not-found"
    assert "offers no XMPP S2S service" in str(info.value)
    assert [(q.name, q.qtype) for q in dns_server.queries] == [(SRV + "none.test", "SRV")]


async def test_silent_dns_server_times_out_after_retries_counted_at_the_server(dns_server):
    dns_server.blackhole = True
    async with Resolver([dns_server.nameserver], timeout=0.3, retries=3) as r:
        with pytest.raises(DnsTimeout) as info:
            await r.resolve("slow.test", opts())
    err = info.value
    assert err.condition == "remote-server-timeout" and err.temporary
    assert "DNS timeout for _xmpp-server._tcp.slow.test (3 attempt(s) of 0.3 s)" == str(err)
    # exactly `retries` SRV queries reached the server, and no fallback A/AAAA query
    assert [(q.name, q.qtype) for q in dns_server.queries] == [(SRV + "slow.test", "SRV")] * 3


async def test_single_retry_means_single_query(dns_server):
    dns_server.blackhole = True
    async with Resolver([dns_server.nameserver], timeout=0.2, retries=1) as r:
        with pytest.raises(DnsTimeout):
            await r.resolve("slow.test", opts())
    assert dns_server.count() == 1


async def test_servfail_is_a_temporary_dns_failure(dns_server, resolver):
    dns_server.set_rcode(SRV + "broken.test", "SERVFAIL")
    with pytest.raises(DnsFailure) as info:
        await resolver.resolve("broken.test", opts())
    assert info.value.temporary and info.value.condition == "remote-server-not-found"
    assert "_xmpp-server._tcp.broken.test" in str(info.value)


async def test_unreachable_nameserver_fails_instead_of_using_another_resolver():
    # a loopback port nobody listens on: ICMP port unreachable, or a timeout; never a result
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Resolver([f"127.0.0.1:{port}"], timeout=0.3, retries=1) as r:
        with pytest.raises((DnsTimeout, DnsFailure)):
            await r.resolve("localhost", opts())


# -- address overrides ----------------------------------------------------------------------


async def test_address_override_bypasses_dns(dns_server, resolver):
    dual_stack(dns_server, "o.test")
    s2s = opts(
        port=6000,
        address=(
            AddressOverride(host="o.test", ip_address="127.0.0.8", port=7000),
            AddressOverride(host="p.test", ip_address="::1"),
        ),
    )
    assert await resolver.resolve("O.test", s2s) == [
        Candidate(ip="127.0.0.8", port=7000, family=socket.AF_INET, host="127.0.0.8",
                  source="address")
    ]  # fmt: skip
    assert await resolver.resolve("p.test", s2s) == [
        Candidate(ip="::1", port=6000, family=socket.AF_INET6, host="::1", source="address")
    ]
    assert dns_server.queries == []


async def test_address_override_for_another_domain_does_not_apply(dns_server, resolver):
    dual_stack(dns_server, "q.test")
    s2s = opts(address=(AddressOverride(host="other.test", ip_address="127.0.0.8"),))
    cands = await resolver.resolve("q.test", s2s)
    assert [c.source for c in cands] == ["srv", "srv"]


def test_resolver_rejects_meaningless_settings():
    with pytest.raises(ValueError, match="retries"):
        Resolver(["127.0.0.1:53"], retries=0)
    with pytest.raises(ValueError, match="timeout"):
        Resolver(["127.0.0.1:53"], timeout=0)


async def test_slow_but_working_server_answers_within_the_timeout_after_fast_answers(dns_server):
    """c-ares shortens a channel's timeout after fast answers (down to 250 ms); the resolver
    must still give a slow answer (here 0.6 s) its full dns.timeout, on every lookup."""
    for i in range(12):
        dns_server.add_a(f"h{i}.fast.test", "127.0.0.1")
    dns_server.add_a("slow.test", "127.0.0.9")
    async with Resolver([dns_server.nameserver], timeout=2, retries=1) as r:
        for i in range(12):
            await r.resolve(f"h{i}.fast.test", opts(ip_versions=(4,)))
        dns_server.clear()
        dns_server.delay = 0.6
        cands = await r.resolve("slow.test", opts(ip_versions=(4,)))
    assert [c.ip for c in cands] == ["127.0.0.9"]
    # one packet per question: nothing timed out and was resent
    assert [(q.name, q.qtype) for q in dns_server.queries] == [
        (SRV + "slow.test", "SRV"),
        ("slow.test", "A"),
    ]


async def test_every_lookup_asks_the_server(dns_server, resolver):
    """No cache in the resolver: a changed zone is seen at once (the system resolver caches)."""
    dns_server.add_a("m.test", "127.0.0.1")
    assert [c.ip for c in await resolver.resolve("m.test", opts(ip_versions=(4,)))] == ["127.0.0.1"]
    dns_server.add_srv(SRV + "m.test", 0, 0, 5999, "m.test")
    cands = await resolver.resolve("m.test", opts(ip_versions=(4,)))
    assert [(c.ip, c.port, c.source) for c in cands] == [("127.0.0.1", 5999, "srv")]


async def test_truncated_udp_answer_is_retried_over_tcp(dns_server, resolver):
    dns_server.truncate_udp = True
    for i in range(30):  # a big SRV set, as large domains publish
        dns_server.add_srv(SRV + "big.test", i // 10, 10, 5269 + i, f"n{i}.big.test")
        dns_server.add_a(f"n{i}.big.test", f"127.0.1.{i + 1}")
    cands = await resolver.resolve("big.test", opts(ip_versions=(4,)))
    assert len(cands) == 30
    assert {c.port - 5269 for c in cands[:10]} == set(range(10))  # priority 0 first
    assert {q.proto for q in dns_server.queries if q.qtype == "SRV"} == {"udp", "tcp"}


async def test_nameserver_on_ipv6_loopback():
    with DnsServer("::1") as server:
        server.add_aaaa("six.test", "::1")
        assert server.nameserver.startswith("[::1]:")
        async with Resolver([server.nameserver], timeout=1, retries=1) as r:
            cands = await r.resolve("six.test", opts(ip_versions=(6,)))
    assert [(c.ip, c.family, c.source) for c in cands] == [("::1", socket.AF_INET6, "fallback")]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 65535), st.integers(1, 65535)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 2**32),
)
def test_order_srv_is_a_priority_sorted_permutation(recs, seed):
    records = [
        SrvRecord(priority=p, weight=w, port=port, target=f"t{i}")
        for i, (p, w, port) in enumerate(recs)
    ]
    ordered = order_srv(records, random.Random(seed))
    assert sorted(ordered, key=lambda r: r.target) == sorted(records, key=lambda r: r.target)
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


async def test_queries_in_flight_are_bounded(dns_server):
    """A burst of lookups (a node restarting with many peers) keeps at most max_concurrent
    queries, and so c-ares channels and threads, in flight; the others wait their turn."""
    for i in range(8):
        dns_server.add_a(f"p{i}.test", "127.0.0.1")
    dns_server.delay = 0.05
    async with Resolver([dns_server.nameserver], timeout=5, retries=1, max_concurrent=2) as r:
        results = await asyncio.gather(
            *(r.resolve(f"p{i}.test", opts(ip_versions=(4,))) for i in range(8))
        )
    assert all([c.ip for c in cands] == ["127.0.0.1"] for cands in results)
    assert dns_server.count() == 16  # SRV + A for each
    assert dns_server.max_unanswered == 2


def test_resolver_rejects_zero_concurrency():
    with pytest.raises(ValueError, match="max_concurrent"):
        Resolver(["127.0.0.1:53"], max_concurrent=0)


@pytest.mark.parametrize("domain", ["a..b.test", "x" * 64 + ".test", "sp ace.test"])
async def test_invalid_dns_name_is_domain_not_found_without_a_query(dns_server, resolver, domain):
    with pytest.raises(DomainNotFound, match="not a valid DNS name") as info:
        await resolver.resolve(domain, opts())
    assert not info.value.temporary  # no point retrying
    assert dns_server.queries == []


async def test_srv_target_with_an_invalid_name_is_skipped(dns_server, resolver):
    dns_server.add_srv(SRV + "bt.test", 0, 0, 5269, "sp ace.bt.test")
    with pytest.raises(DomainNotFound, match="not a valid DNS name"):
        await resolver.resolve("bt.test", opts())
    dns_server.add_srv(SRV + "bt.test", 1, 0, 5270, "ok.bt.test")
    dns_server.add_a("ok.bt.test", "127.0.0.4")
    cands = await resolver.resolve("bt.test", opts())
    assert [(c.host, c.port) for c in cands] == [("ok.bt.test", 5270)]
    assert {q.name for q in dns_server.queries} == {SRV + "bt.test", "ok.bt.test"}


@pytest.mark.parametrize(
    "domain, versions, expected",
    [
        ("127.0.0.1", (4, 6), ("127.0.0.1", socket.AF_INET)),
        ("[::1]", (6,), ("::1", socket.AF_INET6)),
    ],
)
async def test_ip_literal_domain_needs_no_dns(dns_server, resolver, domain, versions, expected):
    cands = await resolver.resolve(domain, opts(port=5999, ip_versions=versions))
    assert [(c.ip, c.family, c.port, c.source) for c in cands] == [(*expected, 5999, "fallback")]
    assert dns_server.queries == []


async def test_ip_literal_domain_of_a_disabled_version(dns_server, resolver):
    with pytest.raises(DomainNotFound, match="disabled IP version"):
        await resolver.resolve("[::1]", opts(ip_versions=(4,)))


async def test_close_cancels_lookups_in_flight(dns_server):
    dns_server.blackhole = True
    r = Resolver([dns_server.nameserver], timeout=30, retries=3)
    task = asyncio.create_task(r.resolve("pending.test", opts()))
    while dns_server.count() == 0:
        await asyncio.sleep(0.01)
    await r.close()
    with pytest.raises(DnsFailure, match="_xmpp-server._tcp.pending.test"):
        await asyncio.wait_for(task, 5)  # ends now, not after 3 x 30 s
    assert dns_server.count() == 1
