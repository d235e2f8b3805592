"""Federation policy: host_policy for the exact domain, else default_policy."""

from __future__ import annotations

import pytest

from s2sfast.config import HostPolicy, S2SOptions
from s2sfast.protocol.jid import normalize_domain
from s2sfast.protocol.policy import Policy


def test_default_allow_without_entries():
    policy = Policy.from_options(S2SOptions())
    assert policy.allows("example.com")
    assert policy.decision("example.com") == "allow"


def test_default_deny_without_entries():
    policy = Policy.from_options(S2SOptions(default_policy="deny"))
    assert not policy.allows("example.com")


def test_host_entry_beats_default_both_ways():
    s2s = S2SOptions(
        default_policy="deny",
        host_policy=(
            HostPolicy(host="friend.test", policy="allow"),
            HostPolicy(host="foe.test", policy="deny"),
        ),
    )
    policy = Policy.from_options(s2s)
    assert policy.allows("friend.test")
    assert not policy.allows("foe.test")
    assert not policy.allows("stranger.test")

    open_policy = Policy("allow", [("foe.test", "deny")])
    assert not open_policy.allows("foe.test")
    assert open_policy.allows("friend.test")


def test_exact_domain_only_no_subdomains_or_parents():
    policy = Policy("deny", [("example.com", "allow")])
    assert policy.allows("example.com")
    assert not policy.allows("muc.example.com")
    assert not policy.allows("com")
    assert not policy.allows("xexample.com")


@pytest.mark.parametrize(
    "spelling", ["EXAMPLE.com", "Example.Com.", " example.com", "example.com."]
)
def test_domains_compare_case_insensitively(spelling):
    assert not Policy("allow", [("example.com", "deny")]).allows(spelling)
    assert not Policy("allow", [(spelling, "deny")]).allows("example.com")


def test_unicode_domain_matches_its_a_label_form():
    policy = Policy("deny", [("bücher.example", "allow")])
    assert policy.allows("xn--bcher-kva.example")
    assert policy.allows("BÜCHER.example")
    assert normalize_domain("Bücher.Example.") == "xn--bcher-kva.example"


def test_later_entry_for_same_domain_wins():
    policy = Policy("allow", [("x.test", "deny"), ("X.test", "allow")])
    assert policy.allows("x.test")


def test_policy_is_immutable():
    policy = Policy("deny", {"a.test": "allow"})
    with pytest.raises(AttributeError):
        policy._default = "allow"
    with pytest.raises(AttributeError):
        policy.anything = 1
    with pytest.raises(TypeError):
        policy.hosts["b.test"] = "allow"
    assert not policy.allows("b.test")


def test_bad_decisions_are_refused():
    with pytest.raises(ValueError, match="default policy"):
        Policy("maybe")
    with pytest.raises(ValueError, match="a.test"):
        Policy("allow", [("a.test", "yes")])


def test_equality_and_hash():
    one = Policy("deny", [("A.test", "allow")])
    two = Policy.from_options(
        S2SOptions(default_policy="deny", host_policy=(HostPolicy(host="a.test", policy="allow"),))
    )
    assert one == two
    assert hash(one) == hash(two)
    assert one != Policy("allow", [("a.test", "allow")])
