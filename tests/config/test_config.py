"""The MongooseIM 6.3 TOML options s2sfast reads: every value read, every default, every rejection.

Files that need certificates (certfile, cacertfile, dhfile, STARTTLS rules) and cipher strings
are in test_config_tls.py; the ``s2sfast`` command is in test_cli.py.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import pytest

from s2sfast.config import (
    AddressOverride,
    Config,
    ConfigError,
    DnsOptions,
    HostPolicy,
    ListenS2S,
    ListenTls,
    OutgoingOptions,
    S2SOptions,
    config_from_dict,
    config_to_dict,
    load_config,
)

BASE: dict[str, Any] = {"general": {"hosts": ["localhost"]}}


def doc(**sections: Any) -> dict[str, Any]:
    """A minimal valid document plus *sections* (deep-copied, so tests cannot share state)."""
    data = copy.deepcopy(BASE)
    data.update(copy.deepcopy(sections))
    return data


def s2s(**options: Any) -> Config:
    return config_from_dict(doc(s2s=options))


def listener(**options: Any) -> ListenS2S:
    options.setdefault("port", 5269)
    return config_from_dict(doc(listen={"s2s": [options]})).listen_s2s[0]


def rejects(data: dict[str, Any], path: str, *fragments: str) -> str:
    """Assert *data* is refused with a message naming *path* (and each fragment)."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert info.value.path == path, message
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- [general]


def test_hosts_are_read_in_order():
    config = config_from_dict({"general": {"hosts": ["b.example", "a.example"]}})
    assert config.hosts == ("b.example", "a.example")
    assert config.source is None


def test_hosts_are_lower_cased_as_mongooseim_nodeprep_does():
    data = doc(host_config=[{"host": "Example.COM", "s2s": {"default_policy": "deny"}}])
    data["general"]["hosts"] = ["LocalHost", "example.com"]
    config = config_from_dict(data)
    assert config.hosts == ("localhost", "example.com")
    assert config.s2s_for("example.com").default_policy == "deny"


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({}, "general.hosts", "missing"),
        ({"general": {"hosts": ["a", "A"]}}, "general.hosts[1]", "duplicate"),
        ({"general": {"hosts": ["user@a"]}}, "general.hosts[0]", 'got "user@a"'),
        ({"general": {"hosts": ["a b"]}}, "general.hosts[0]", "without spaces"),
        ({"general": {}}, "general.hosts", "missing"),
        ({"general": {"hosts": []}}, "general.hosts", "got []"),
        ({"general": {"hosts": "localhost"}}, "general.hosts", 'got "localhost"'),
        ({"general": {"hosts": ["a", "a"]}}, "general.hosts[1]", "duplicate"),
        ({"general": {"hosts": ["a", ""]}}, "general.hosts[1]", 'got ""'),
        ({"general": {"hosts": ["a", 5]}}, "general.hosts[1]", "got 5"),
        ({"general": "x"}, "general", "expected a table"),
    ],
)
def test_hosts_rejections(data, path, fragment):
    rejects(data, path, fragment)


# ----------------------------------------------------------------------------- [s2s] defaults


def test_s2s_defaults_match_the_reference():
    opts = config_from_dict(doc()).s2s
    assert opts.default_policy == "allow"
    assert opts.host_policy == ()
    assert opts.use_starttls == "false"
    assert opts.certfile is None
    assert opts.address == ()
    assert opts.ciphers == "TLSv1.2:TLSv1.3"
    assert opts.max_retry_delay == 300
    assert opts.outgoing == OutgoingOptions(
        port=5269, ip_versions=(4, 6), connection_timeout=10_000
    )
    assert opts.dns == DnsOptions(timeout=10, retries=2)


def test_shared_defaults_to_20_random_hex_characters_made_per_load():
    first = config_from_dict(doc())
    second = config_from_dict(doc())
    assert re.fullmatch(r"[0-9a-f]{20}", first.s2s.shared)
    assert first.shared_generated
    assert first.s2s.shared != second.s2s.shared


def test_shared_is_read():
    config = s2s(shared="82gc8b23ct7824")
    assert config.s2s.shared == "82gc8b23ct7824"
    assert not config.shared_generated


# ----------------------------------------------------------------------------- [s2s] values read


@pytest.mark.parametrize(
    ("options", "attribute", "expected"),
    [
        ({"default_policy": "deny"}, "default_policy", "deny"),
        ({"default_policy": "allow"}, "default_policy", "allow"),
        ({"max_retry_delay": 30}, "max_retry_delay", 30),
        ({"ciphers": "TLSv1.2"}, "ciphers", "TLSv1.2"),
    ],
)
def test_s2s_scalars_are_read(options, attribute, expected):
    assert getattr(s2s(**options).s2s, attribute) == expected


def test_host_policy_is_read_in_order():
    policies = [
        {"host": "good.example", "policy": "allow"},
        {"host": "bad.example", "policy": "deny"},
    ]
    assert s2s(host_policy=policies).s2s.host_policy == (
        HostPolicy(host="good.example", policy="allow"),
        HostPolicy(host="bad.example", policy="deny"),
    )


def test_address_is_read_with_optional_port():
    entries = [
        {"host": "fed1", "ip_address": "127.0.0.1"},
        {"host": "fed2", "ip_address": "::1", "port": 8765},
    ]
    assert s2s(address=entries).s2s.address == (
        AddressOverride(host="fed1", ip_address="127.0.0.1", port=None),
        AddressOverride(host="fed2", ip_address="::1", port=8765),
    )


def test_outgoing_and_dns_are_read():
    opts = s2s(
        outgoing={"port": 5299, "ip_versions": [6, 4], "connection_timeout": 4_000},
        dns={"timeout": 30, "retries": 1},
    ).s2s
    assert opts.outgoing == OutgoingOptions(port=5299, ip_versions=(6, 4), connection_timeout=4000)
    assert opts.dns == DnsOptions(timeout=30, retries=1)


def test_outgoing_sub_options_default_individually():
    opts = s2s(outgoing={"ip_versions": [6]}, dns={"retries": 5}).s2s
    assert opts.outgoing == OutgoingOptions(port=5269, ip_versions=(6,), connection_timeout=10_000)
    assert opts.dns == DnsOptions(timeout=10, retries=5)


def test_connection_timeout_infinity():
    assert s2s(outgoing={"connection_timeout": "infinity"}).s2s.outgoing.connection_timeout is None


@pytest.mark.parametrize("value", ["false", "optional", "required", "required_trusted"])
def test_use_starttls_false_is_read(value):
    if value == "false":
        assert s2s(use_starttls=value).s2s.use_starttls == "false"
    else:  # needs files: test_config_tls.py covers the other three values
        rejects(doc(s2s={"use_starttls": value}), "s2s.certfile", "missing")


# ----------------------------------------------------------------------------- [s2s] rejections


@pytest.mark.parametrize(
    ("options", "path", "fragment"),
    [
        ({"bogus": 1}, "s2s.bogus", "unknown option"),
        ({"outgoing": {"tls": {}}}, "s2s.outgoing.tls", "unknown option"),
        ({"dns": {"servers": []}}, "s2s.dns.servers", "unknown option"),
        ({"default_policy": "maybe"}, "s2s.default_policy", '"allow", "deny"'),
        ({"default_policy": True}, "s2s.default_policy", "got true"),
        ({"use_starttls": "yes"}, "s2s.use_starttls", '"required_trusted"'),
        ({"use_starttls": False}, "s2s.use_starttls", "TOML boolean"),
        ({"use_starttls": "true"}, "s2s.use_starttls", 'got "true"'),
        ({"shared": ""}, "s2s.shared", "non-empty"),
        ({"shared": 5}, "s2s.shared", "got 5"),
        ({"certfile": 3}, "s2s.certfile", "got 3"),
        ({"ciphers": 1}, "s2s.ciphers", "got 1"),
        ({"max_retry_delay": 0}, "s2s.max_retry_delay", "positive integer"),
        ({"max_retry_delay": -5}, "s2s.max_retry_delay", "got -5"),
        ({"max_retry_delay": "300"}, "s2s.max_retry_delay", 'got "300"'),
        ({"max_retry_delay": 1.5}, "s2s.max_retry_delay", "got 1.5"),
        ({"outgoing": 5}, "s2s.outgoing", "a table"),
        ({"outgoing": {"port": 0}}, "s2s.outgoing.port", "1 to 65535"),
        ({"outgoing": {"port": 65536}}, "s2s.outgoing.port", "got 65536"),
        ({"outgoing": {"port": "5269"}}, "s2s.outgoing.port", 'got "5269"'),
        ({"outgoing": {"ip_versions": []}}, "s2s.outgoing.ip_versions", "non-empty"),
        ({"outgoing": {"ip_versions": [4, 4]}}, "s2s.outgoing.ip_versions", "at most once"),
        ({"outgoing": {"ip_versions": [5]}}, "s2s.outgoing.ip_versions", "got [5]"),
        ({"outgoing": {"ip_versions": ["4"]}}, "s2s.outgoing.ip_versions", 'got ["4"]'),
        ({"outgoing": {"ip_versions": 4}}, "s2s.outgoing.ip_versions", "got 4"),
        ({"outgoing": {"connection_timeout": 0}}, "s2s.outgoing.connection_timeout", "infinity"),
        ({"outgoing": {"connection_timeout": -1}}, "s2s.outgoing.connection_timeout", "got -1"),
        ({"outgoing": {"connection_timeout": "never"}}, "s2s.outgoing.connection_timeout", "never"),
        ({"dns": {"timeout": 0}}, "s2s.dns.timeout", "positive integer"),
        ({"dns": {"timeout": "infinity"}}, "s2s.dns.timeout", "positive integer"),
        ({"dns": {"retries": 0}}, "s2s.dns.retries", "positive integer"),
        ({"dns": {"retries": True}}, "s2s.dns.retries", "got true"),
    ],
)
def test_s2s_rejections(options, path, fragment):
    rejects(doc(s2s=options), path, fragment)


@pytest.mark.parametrize(
    ("entries", "path", "fragment"),
    [
        ([{"host": "a"}], "s2s.host_policy[0].policy", "missing"),
        ([{"policy": "allow"}], "s2s.host_policy[0].host", "missing"),
        (
            [{"host": "a", "policy": "allow"}, {"host": "b", "policy": "block"}],
            "s2s.host_policy[1].policy",
            'got "block"',
        ),
        ([{"host": "", "policy": "allow"}], "s2s.host_policy[0].host", 'got ""'),
        (
            [{"host": "a", "policy": "allow"}, {"host": "a", "policy": "deny"}],
            "s2s.host_policy[1].host",
            "duplicate of s2s.host_policy[0]",
        ),
        (
            [{"host": "a", "policy": "allow", "port": 1}],
            "s2s.host_policy[0].port",
            "unknown option",
        ),
        (["a"], "s2s.host_policy[0]", "a table"),
        ({"host": "a", "policy": "allow"}, "s2s.host_policy", "array"),
    ],
)
def test_host_policy_rejections(entries, path, fragment):
    rejects(doc(s2s={"host_policy": entries}), path, fragment)


@pytest.mark.parametrize(
    ("entries", "path", "fragment"),
    [
        ([{"ip_address": "127.0.0.1"}], "s2s.address[0].host", "missing"),
        ([{"host": "a"}], "s2s.address[0].ip_address", "missing"),
        (
            [{"host": "a", "ip_address": "localhost"}],
            "s2s.address[0].ip_address",
            'got "localhost"',
        ),
        ([{"host": "a", "ip_address": "300.1.1.1"}], "s2s.address[0].ip_address", "IP address"),
        ([{"host": "a", "ip_address": 127}], "s2s.address[0].ip_address", "got 127"),
        ([{"host": "a", "ip_address": "::1", "port": 0}], "s2s.address[0].port", "1 to 65535"),
        ([{"host": "a", "ip_address": "::1", "port": 70000}], "s2s.address[0].port", "got 70000"),
        (
            [{"host": "a", "ip_address": "::1"}, {"host": "a", "ip_address": "::2"}],
            "s2s.address[1].host",
            "duplicate of s2s.address[0]",
        ),
        (
            [{"host": "a", "ip_address": "::1", "weight": 1}],
            "s2s.address[0].weight",
            "unknown option",
        ),
    ],
)
def test_address_rejections(entries, path, fragment):
    rejects(doc(s2s={"address": entries}), path, fragment)


# ----------------------------------------------------------------------------- [[listen.s2s]]


def test_listener_defaults():
    lst = listener(port=5269)
    assert lst == ListenS2S(
        port=5269,
        ip_address="0.0.0.0",
        max_stanza_size=None,
        shaper="none",
        max_rate=None,
        backlog=1024,
        max_connections=None,
        state_timeout=5000,
        tls=ListenTls(),
        shaper_name=None,
    )


def test_no_listener_means_outgoing_only():
    assert config_from_dict(doc()).listen_s2s == ()


@pytest.mark.parametrize(
    ("options", "attribute", "expected"),
    [
        ({"ip_address": "::"}, "ip_address", "::"),
        ({"ip_address": "127.0.0.1"}, "ip_address", "127.0.0.1"),
        ({"ip_address": "::1"}, "ip_address", "::1"),
        ({"ip_version": 6}, "ip_address", "::"),
        ({"ip_version": 4}, "ip_address", "0.0.0.0"),
        ({"max_stanza_size": 131072}, "max_stanza_size", 131072),
        ({"max_stanza_size": "infinity"}, "max_stanza_size", None),
        ({"backlog": 10}, "backlog", 10),
        ({"backlog": 0}, "backlog", 0),
        ({"max_connections": 100}, "max_connections", 100),
        ({"max_connections": "infinity"}, "max_connections", None),
        ({"state_timeout": 10_000}, "state_timeout", 10_000),
        ({"shaper": "none"}, "max_rate", None),
    ],
)
def test_listener_values_are_read(options, attribute, expected):
    assert getattr(listener(**options), attribute) == expected


def test_listener_tls_verify_mode_is_read():
    assert listener(tls={"verify_mode": "none"}).tls.verify_mode == "none"
    assert listener(tls={"verify_mode": "peer"}).tls.verify_mode == "peer"


def test_mongooseim_only_listener_options_are_accepted_and_logged(caplog):
    options = {"port": 5269, "proto": "tcp", "num_acceptors": 10, "hibernate_after": 0}
    options["proxy_protocol"] = False
    options["tls"] = {"protocol_options": ["no_sslv2"]}
    with caplog.at_level(logging.INFO, logger="s2sfast.config"):
        config = config_from_dict(doc(listen={"s2s": [options]}))
    assert config.listen_s2s[0].port == 5269
    [line] = [r.getMessage() for r in caplog.records if r.name == "s2sfast.config"]
    assert "listen.s2s[0].num_acceptors" in line
    assert "listen.s2s[0].hibernate_after" in line
    assert "listen.s2s[0].tls.protocol_options" in line


def test_several_listeners():
    items = [{"port": 5269}, {"port": 5269, "ip_address": "::1"}, {"port": 5270}]
    config = config_from_dict(doc(listen={"s2s": items}))
    assert [(x.ip_address, x.port) for x in config.listen_s2s] == [
        ("0.0.0.0", 5269),
        ("::1", 5269),
        ("0.0.0.0", 5270),
    ]


def test_port_zero_only_when_allowed():
    data = doc(listen={"s2s": [{"port": 0}, {"port": 0}]})
    rejects(data, "listen.s2s[0].port", "1 to 65535")
    config = config_from_dict(data, allow_port_zero=True)
    assert [x.port for x in config.listen_s2s] == [0, 0]


@pytest.mark.parametrize(
    ("options", "path", "fragment"),
    [
        ({}, "listen.s2s[0].port", "missing"),
        ({"port": 0}, "listen.s2s[0].port", "got 0"),
        ({"port": 65536}, "listen.s2s[0].port", "1 to 65535"),
        ({"port": "5269"}, "listen.s2s[0].port", 'got "5269"'),
        ({"port": 1, "access": "c2s"}, "listen.s2s[0].access", "unknown option"),
        ({"port": 1, "reuse_port": True}, "listen.s2s[0].reuse_port", "unknown option"),
        ({"port": 1, "ip_address": "any"}, "listen.s2s[0].ip_address", 'got "any"'),
        ({"port": 1, "ip_address": "::1", "ip_version": 4}, "listen.s2s[0].ip_version", "got 4"),
        ({"port": 1, "ip_version": 5}, "listen.s2s[0].ip_version", "4 or 6"),
        ({"port": 1, "proto": "udp"}, "listen.s2s[0].proto", '"tcp"'),
        ({"port": 1, "proxy_protocol": True}, "listen.s2s[0].proxy_protocol", "got true"),
        ({"port": 1, "num_acceptors": 0}, "listen.s2s[0].num_acceptors", "positive"),
        ({"port": 1, "hibernate_after": -1}, "listen.s2s[0].hibernate_after", "non-negative"),
        ({"port": 1, "max_stanza_size": 0}, "listen.s2s[0].max_stanza_size", '"infinity"'),
        ({"port": 1, "max_stanza_size": "big"}, "listen.s2s[0].max_stanza_size", 'got "big"'),
        ({"port": 1, "backlog": -1}, "listen.s2s[0].backlog", "non-negative"),
        ({"port": 1, "max_connections": 0}, "listen.s2s[0].max_connections", "got 0"),
        ({"port": 1, "state_timeout": 0}, "listen.s2s[0].state_timeout", "positive integer"),
        ({"port": 1, "state_timeout": "5s"}, "listen.s2s[0].state_timeout", 'got "5s"'),
        ({"port": 1, "shaper": ""}, "listen.s2s[0].shaper", '"none"'),
        ({"port": 1, "tls": {"mode": "ssl"}}, "listen.s2s[0].tls.mode", '"starttls_required"'),
        (
            {"port": 1, "tls": {"verify_mode": "selfsigned_peer"}},
            "listen.s2s[0].tls.verify_mode",
            "fast_tls",
        ),
        (
            {"port": 1, "tls": {"verify_mode": "always"}},
            "listen.s2s[0].tls.verify_mode",
            '"peer", "none"',
        ),
        (
            {"port": 1, "tls": {"protocol_options": [""]}},
            "listen.s2s[0].tls.protocol_options[0]",
            "non-empty",
        ),
        ({"port": 1, "tls": "yes"}, "listen.s2s[0].tls", "a table"),
    ],
)
def test_listener_rejections(options, path, fragment):
    rejects(doc(listen={"s2s": [options]}), path, fragment)


def test_listener_must_be_an_array_of_tables():
    rejects(doc(listen={"s2s": {"port": 5269}}), "listen.s2s", "array of tables")


def test_duplicate_listening_address_is_rejected():
    items = [{"port": 5269}, {"port": 5269, "ip_address": "0.0.0.0"}]
    rejects(doc(listen={"s2s": items}), "listen.s2s[1].port", "already used by listen.s2s[0]")


def test_s2s_and_service_listeners_cannot_share_an_address():
    data = doc(
        listen={
            "s2s": [{"port": 5269, "ip_address": "127.0.0.1"}],
            "service": [{"port": 5269, "ip_address": "127.0.0.1", "password": "secret"}],
        }
    )
    rejects(data, "listen.service[0].port", "already used by listen.s2s[0]")


# ----------------------------------------------------------------------------- shapers


SHAPERS = {
    "shaper": {"normal": {"max_rate": 1000}, "fast": {"max_rate": 50_000}},
    "access": {
        "s2s_shaper": [{"acl": "all", "value": "fast"}],
        "c2s_shaper": [{"acl": "admin", "value": "none"}, {"acl": "all", "value": "normal"}],
        "unshaped": [{"acl": "all", "value": "none"}],
        "admins_only": [{"acl": "admin", "value": "fast"}],
        "denied": [{"acl": "all", "value": "deny"}],
        "to_nowhere": [{"acl": "all", "value": "turbo"}],
        "numeric": [{"acl": "all", "value": 10}],
        "broken": [{"acl": "all"}],
        "no_acl": [{"value": "fast"}],
    },
}


def shaped(rule: str) -> ListenS2S:
    data = doc(listen={"s2s": [{"port": 5269, "shaper": rule}]}, **SHAPERS)
    return config_from_dict(data).listen_s2s[0]


def test_shaper_resolves_through_access_to_max_rate():
    lst = shaped("s2s_shaper")
    assert (lst.shaper, lst.shaper_name, lst.max_rate) == ("s2s_shaper", "fast", 50_000)


def test_shaper_uses_the_clause_that_matches_all():
    lst = shaped("c2s_shaper")
    assert (lst.shaper_name, lst.max_rate) == ("normal", 1000)


@pytest.mark.parametrize("rule", ["unshaped", "admins_only", "denied"])
def test_shaper_rules_that_give_servers_no_shaper(rule):
    lst = shaped(rule)
    assert (lst.shaper, lst.shaper_name, lst.max_rate) == (rule, None, None)


@pytest.mark.parametrize(
    ("rule", "path", "fragment"),
    [
        ("nope", "listen.s2s[0].shaper", "unknown rule"),
        ("to_nowhere", "access.to_nowhere[0].value", "unknown shaper"),
        ("numeric", "access.numeric[0].value", "got 10"),
        ("broken", "access.broken[0].value", "missing"),
        ("no_acl", "access.no_acl[0].acl", "missing"),
    ],
)
def test_shaper_rejections(rule, path, fragment):
    rejects(doc(listen={"s2s": [{"port": 5269, "shaper": rule}]}, **SHAPERS), path, fragment)


@pytest.mark.parametrize(
    ("table", "path", "fragment"),
    [
        ({}, "shaper.fast.max_rate", "missing"),
        ({"max_rate": 0}, "shaper.fast.max_rate", "positive integer"),
        ({"max_rate": "fast"}, "shaper.fast.max_rate", 'got "fast"'),
        ({"max_rate": 10, "burst": 5}, "shaper.fast.burst", "unknown option"),
    ],
)
def test_shaper_table_rejections(table, path, fragment):
    data = doc(
        listen={"s2s": [{"port": 5269, "shaper": "s2s_shaper"}]},
        shaper={"fast": table},
        access={"s2s_shaper": [{"acl": "all", "value": "fast"}]},
    )
    rejects(data, path, fragment)


def test_shaper_without_access_section():
    rejects(doc(listen={"s2s": [{"port": 5269, "shaper": "s2s_shaper"}]}), "listen.s2s[0].shaper")


# ----------------------------------------------------------------------------- [[host_config]]


def test_host_config_s2s_replaces_the_global_section_as_mongooseim_does():
    data = doc(
        general={"hosts": ["localhost", "example.com"]},
        s2s={
            "default_policy": "deny",
            "host_policy": [{"host": "friend.example", "policy": "allow"}],
            "shared": "global secret",
            "outgoing": {"port": 5270, "connection_timeout": 3000},
        },
        host_config=[
            {
                "host": "example.com",
                "s2s": {"default_policy": "allow", "outgoing": {"ip_versions": [6]}},
                "auth": {"anonymous": {}},
            }
        ],
    )
    config = config_from_dict(data)
    local = config.s2s_for("localhost")
    other = config.s2s_for("example.com")
    assert local is config.s2s and local.default_policy == "deny"
    assert local.outgoing == OutgoingOptions(port=5270, ip_versions=(4, 6), connection_timeout=3000)
    # What the host table does not name takes the documented default, not the global value...
    assert other.default_policy == "allow"
    assert other.host_policy == ()
    assert other.outgoing == OutgoingOptions(port=5269, ip_versions=(6,), connection_timeout=10_000)
    # ...except the dialback secret, which one node keeps for all its hosts.
    assert other.shared == "global secret"


def test_host_config_without_s2s_uses_global():
    data = doc(host_config=[{"host": "localhost", "modules": {"mod_ping": {}}}])
    config = config_from_dict(data)
    assert config.host_s2s == {}
    assert config.s2s_for("localhost") is config.s2s


def test_host_config_shares_the_generated_secret():
    data = doc(host_config=[{"host": "localhost", "s2s": {"default_policy": "deny"}}])
    config = config_from_dict(data)
    assert config.s2s_for("localhost").shared == config.s2s.shared


def test_host_config_for_a_dynamic_host_type_is_ignored():
    data = doc(host_config=[{"host_type": "dynamic", "s2s": {"default_policy": "deny"}}])
    assert config_from_dict(data).host_s2s == {}


@pytest.mark.parametrize(
    ("entries", "path", "fragment"),
    [
        ([{"host": "elsewhere", "s2s": {}}], "host_config[0].host", "general.hosts: localhost"),
        ([{"s2s": {}}], "host_config[0]", "exactly one of host or host_type"),
        ([{"host": "localhost"}, {"host": "localhost"}], "host_config[1].host", "duplicate"),
        (
            [{"host": "localhost", "s2s": {"use_starttls": "on"}}],
            "host_config[0].s2s.use_starttls",
            'got "on"',
        ),
        (
            [{"host": "localhost", "s2s": {"outgoing": {"ip_versions": [4, 6, 4]}}}],
            "host_config[0].s2s.outgoing.ip_versions",
            "at most once",
        ),
        (
            [{"host": "localhost", "s2s": {"host_policy": [{"host": "x", "policy": "no"}]}}],
            "host_config[0].s2s.host_policy[0].policy",
            'got "no"',
        ),
        (
            [{"host": "localhost", "s2s": {"use_starttls": "required"}}],
            "host_config[0].s2s.certfile",
            "missing",
        ),
        ({"host": "localhost"}, "host_config", "array of tables"),
    ],
)
def test_host_config_rejections(entries, path, fragment):
    rejects(doc(host_config=entries), path, fragment)


# ----------------------------------------------------------------------------- other sections


def test_other_sections_are_ignored_with_one_info_line(caplog):
    data = doc(
        listen={"c2s": [{"port": 5222}], "http": [{"port": 5280}], "s2s": [{"port": 5269}]},
        auth={"internal": {}},
        modules={"mod_disco": {}},
        acl={"local": [{}]},
        outgoing_pools={"rdbms": {}},
    )
    data["general"]["language"] = "en"
    data["general"]["loglevel"] = "warning"  # read: s2sfast run logs at that level
    with caplog.at_level(logging.INFO, logger="s2sfast.config"):
        config_from_dict(data, source="my.toml")
    lines = [r for r in caplog.records if r.name == "s2sfast.config"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    text = lines[0].getMessage()
    assert text.startswith("my.toml: ")
    for name in ("auth", "modules", "acl", "outgoing_pools", "listen.c2s", "listen.http"):
        assert name in text
    assert "general.language" in text
    assert "general.loglevel" not in text and "listen.s2s" not in text


def test_nothing_ignored_means_no_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="s2sfast.config"):
        config_from_dict(doc(s2s={"default_policy": "deny"}))
    assert [r for r in caplog.records if r.name == "s2sfast.config"] == []


# ----------------------------------------------------------------------------- files


def write(tmp_path, text: str) -> str:
    path = tmp_path / "mongooseim.toml"
    path.write_text(text)
    return str(path)


def test_load_config_reads_toml_syntax(tmp_path):
    path = write(
        tmp_path,
        """
[general]
  hosts = ["localhost"]

[[listen.s2s]]
  port = 5269
  max_stanza_size = 131_072

[s2s]
  default_policy = "deny"
  outgoing.port = 5299
  outgoing.connection_timeout = 4_000
  outgoing.ip_versions = [6, 4]
  dns.timeout = 30
  dns.retries = 1
  shared = "shared secret"
  max_retry_delay = 30

  [[s2s.host_policy]]
    host = "fed1"
    policy = "allow"

  [[s2s.address]]
    host = "fed2"
    ip_address = "127.0.0.1"
    port = 8765
""",
    )
    config = load_config(path)
    assert config.source == path
    assert config.listen_s2s[0].max_stanza_size == 131072
    assert config.s2s == S2SOptions(
        default_policy="deny",
        host_policy=(HostPolicy(host="fed1", policy="allow"),),
        shared="shared secret",
        address=(AddressOverride(host="fed2", ip_address="127.0.0.1", port=8765),),
        max_retry_delay=30,
        outgoing=OutgoingOptions(port=5299, ip_versions=(6, 4), connection_timeout=4000),
        dns=DnsOptions(timeout=30, retries=1),
    )


def test_toml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, '[general]\nhosts = ["a"]\n\n[s2s]\ndefault_policy = deny\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: TOML syntax error")
    assert "line 5" in str(info.value)


def test_toml_error_at_end_of_file_names_the_line(tmp_path):
    path = write(tmp_path, '[general]\nhosts = ["a"]\nx = [')
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[general]\nhosts = ["\xff"]\n')
    with pytest.raises(ConfigError, match="line 2: the file is not UTF-8"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.toml")


def test_file_errors_start_with_the_file_and_keep_the_path(tmp_path):
    path = write(tmp_path, '[general]\nhosts = ["a"]\n[s2s]\noutgoing.ip_versions = [4, 7]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == "s2s.outgoing.ip_versions"
    assert str(info.value) == (
        f"{path}: s2s.outgoing.ip_versions: got [4, 7], expected a non-empty array of the "
        "integers 4 and/or 6, each at most once"
    )


# ----------------------------------------------------------------------------- to a dict


def test_config_to_dict_has_every_default_keyed_like_the_toml():
    config = config_from_dict(doc(listen={"s2s": [{"port": 5269}]}, s2s={"shared": "s"}))
    assert config_to_dict(config) == {
        "general": {"hosts": ["localhost"], "loglevel": "warning", "max_fsm_queue": 10_000},
        "listen": {
            "s2s": [
                {
                    "port": 5269,
                    "ip_address": "0.0.0.0",
                    "max_stanza_size": "infinity",
                    "shaper": "none",
                    "backlog": 1024,
                    "max_connections": "infinity",
                    "state_timeout": 5000,
                    "tls": {
                        "mode": "starttls",
                        "cacertfile": None,
                        "verify_mode": None,
                        "ciphers": None,
                        "dhfile": None,
                        "certfile": None,
                    },
                }
            ]
        },
        "s2s": {
            "default_policy": "allow",
            "host_policy": [],
            "use_starttls": "false",
            "certfile": None,
            "shared": "s",
            "address": [],
            "ciphers": "TLSv1.2:TLSv1.3",
            "max_retry_delay": 300,
            "outgoing": {"port": 5269, "ip_versions": [4, 6], "connection_timeout": 10000},
            "dns": {"timeout": 10, "retries": 2},
            "sasl_external": True,
            "dialback_cert_auth": True,
            "bidi": False,
            "stream_management": {
                "enabled": True,
                "resend": True,
                "buffer_max": 5000,
                "ack_freq": 100,
            },
        },
        "host_config": [],
    }


def test_config_to_dict_round_trips_through_config_from_dict():
    data = doc(
        general={"hosts": ["localhost", "example.com"]},
        listen={"s2s": [{"port": 5269, "max_stanza_size": 65536, "ip_address": "::"}]},
        s2s={
            "default_policy": "deny",
            "host_policy": [{"host": "a.example", "policy": "allow"}],
            "address": [{"host": "b.example", "ip_address": "::1", "port": 5270}],
            "outgoing": {"connection_timeout": "infinity"},
            "shared": "x",
        },
        host_config=[{"host": "example.com", "s2s": {"default_policy": "allow"}}],
    )
    config = config_from_dict(data)
    out = config_to_dict(config)
    assert out["s2s"]["outgoing"]["connection_timeout"] == "infinity"
    again = copy.deepcopy(out)
    for lst in again["listen"]["s2s"]:
        lst["tls"] = {k: v for k, v in lst["tls"].items() if v is not None}
    for opts in [again["s2s"]] + [h["s2s"] for h in again["host_config"]]:
        del opts["certfile"]
        opts["address"] = [{k: v for k, v in a.items() if v is not None} for a in opts["address"]]
    assert config_from_dict(again) == config
