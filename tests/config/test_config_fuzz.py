"""Whatever TOML values an operator writes into the sections s2sfast reads, loading either
succeeds or raises ConfigError naming a dotted path: never another exception (no traceback)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from s2sfast.config import Config, ConfigError, config_from_dict

S2S_KEYS = [
    "default_policy", "host_policy", "use_starttls", "certfile", "shared", "address", "ciphers",
    "max_retry_delay", "outgoing", "dns", "unknown",
]  # fmt: skip
LISTEN_KEYS = [
    "port", "ip_address", "max_stanza_size", "shaper", "backlog", "max_connections",
    "state_timeout", "tls", "proto", "ip_version", "proxy_protocol", "num_acceptors",
    "hibernate_after", "unknown",
]  # fmt: skip
NESTED_KEYS = [
    "port", "ip_versions", "connection_timeout", "timeout", "retries", "host", "policy",
    "ip_address", "cacertfile", "verify_mode", "ciphers", "dhfile", "certfile", "acl", "value",
    "max_rate",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(["allow", "deny", "false", "optional", "none", "infinity", "::", "TLSv1.2"]),
    st.sampled_from(["127.0.0.1", "s2s_shaper", "fast", "all", "peer", "", "/nonexistent"]),
    st.text(max_size=8),
    st.integers(min_value=-3, max_value=70_000),
    st.booleans(),
    st.floats(allow_nan=True),
    st.just(dt.date(2024, 1, 1)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NESTED_KEYS), inner, max_size=3),
    ),
    max_leaves=8,
)


def sometimes(good, strategy=values):
    """Mostly a valid value, sometimes anything: errors then come from every option."""
    return st.one_of(st.just(good), st.just(good), strategy)


s2s_tables = st.fixed_dictionaries({}, optional={key: values for key in S2S_KEYS}).filter(
    lambda d: len(d) <= 4
)
listener_tables = st.fixed_dictionaries(
    {"port": sometimes(5269)},
    optional={key: values for key in LISTEN_KEYS if key != "port"},
).filter(lambda d: len(d) <= 5)


@settings(max_examples=400, deadline=None)
@given(
    s2s=s2s_tables,
    listeners=st.lists(listener_tables, max_size=2),
    access=st.dictionaries(st.sampled_from(["s2s_shaper", "fast"]), values, max_size=2),
    shaper=st.dictionaries(st.sampled_from(["fast", "none"]), values, max_size=2),
    hosts=sometimes(["localhost"]),
)
def test_any_values_give_a_config_or_a_config_error(s2s, listeners, access, shaper, hosts):
    data = {
        "general": {"hosts": hosts},
        "s2s": s2s,
        "listen": {"s2s": listeners},
        "access": access,
        "shaper": shaper,
        "host_config": [{"host": "localhost", "s2s": s2s}],
    }
    try:
        config = config_from_dict(data)
    except ConfigError as exc:
        assert exc.path
        assert str(exc).startswith(f"{exc.path}: ")
        assert exc.path.split(".")[0].split("[")[0] in {
            "general", "s2s", "listen", "access", "shaper", "host_config",
        }  # fmt: skip
    else:
        assert isinstance(config, Config)
