"""The Direct TLS configuration in MongooseIM 6.4's names: ``[[listen.s2s]] tls.mode`` ("tls",
"starttls" (default), "starttls_required") and ``[s2s] address`` entries' ``tls`` flag."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from s2sfast.config import ConfigError, config_from_dict, config_to_dict


def load(text: str) -> Any:
    return config_from_dict(tomllib.loads(text))


BASE = """
[general]
  hosts = ["a.test"]
"""


@pytest.mark.parametrize("mode", ["tls", "starttls", "starttls_required"])
def test_listener_tls_mode_is_read(mode, tls_certfile):
    config = load(
        BASE
        + f"""
[[listen.s2s]]
  port = 5269
  tls.mode = "{mode}"
  tls.verify_mode = "none"
[s2s]
  use_starttls = "optional"
  certfile = "{tls_certfile("a.test")}"
"""
    )
    assert config.listen_s2s[0].tls.mode == mode
    assert config_to_dict(config)["listen"]["s2s"][0]["tls"]["mode"] == mode


def test_listener_tls_mode_defaults_to_starttls():
    config = load(BASE + "[[listen.s2s]]\n  port = 5269\n")
    assert config.listen_s2s[0].tls.mode == "starttls"


def test_listener_tls_mode_rejects_other_values():
    with pytest.raises(ConfigError) as err:
        load(BASE + '[[listen.s2s]]\n  port = 5269\n  tls.mode = "ssl"\n')
    assert err.value.path == "listen.s2s[0].tls.mode"
    assert '"starttls_required"' in str(err.value)


@pytest.mark.parametrize("mode", ["tls", "starttls_required"])
def test_a_tls_listener_needs_tls_enabled_in_s2s(mode):
    with pytest.raises(ConfigError) as err:
        load(BASE + f'[[listen.s2s]]\n  port = 5269\n  tls.mode = "{mode}"\n')
    assert err.value.path == "listen.s2s[0].tls.mode"
    assert "use_starttls" in str(err.value)


def test_address_tls_flag(tls_certfile):
    config = load(
        BASE
        + f"""
[s2s]
  use_starttls = "optional"
  certfile = "{tls_certfile("a.test")}"
  address = [
    {{host = "b.test", ip_address = "127.0.0.1", port = 5270, tls = true}},
    {{host = "c.test", ip_address = "127.0.0.1"}},
  ]
"""
    )
    b, c = config.s2s.address
    assert (b.port, b.tls) == (5270, True)
    assert (c.port, c.tls) == (None, False)
    assert config_to_dict(config)["s2s"]["address"][0]["tls"] is True


def test_address_tls_must_be_a_boolean():
    with pytest.raises(ConfigError) as err:
        load(BASE + '[s2s]\n  address = [{host = "b.test", ip_address = "::1", tls = "yes"}]\n')
    assert err.value.path == "s2s.address[0].tls"


def test_check_config_summary_names_the_listener_kind(tls_certfile):
    from s2sfast.server.cli import summary

    config = load(
        BASE
        + f"""
[[listen.s2s]]
  port = 5269
  tls.verify_mode = "none"
[[listen.s2s]]
  port = 5270
  tls.mode = "tls"
  tls.verify_mode = "none"
[s2s]
  use_starttls = "optional"
  certfile = "{tls_certfile("a.test")}"
"""
    )
    lines = [line for line in summary(config).splitlines() if line.startswith("listen.s2s:")]
    assert ":5269," in lines[0] and "Direct TLS" not in lines[0]
    assert ":5270, Direct TLS," in lines[1]


def test_a_direct_tls_address_needs_tls():
    with pytest.raises(ConfigError) as err:
        load(BASE + '[s2s]\n  address = [{host = "b.test", ip_address = "::1", tls = true}]\n')
    assert err.value.path == "s2s.address[0].tls"
    assert "use_starttls" in str(err.value)
