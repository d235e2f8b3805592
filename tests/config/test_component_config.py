"""[[listen.service]] parsing: MongooseIM 6.3 syntax and defaults, errors naming dotted paths."""

from __future__ import annotations

import tomllib

import pytest

from s2sfast.config import ConfigError
from s2sfast.config.service import ListenService, parse_listen_service


def _parse(text: str) -> tuple[ListenService, ...]:
    return parse_listen_service(tomllib.loads(text))


def test_no_service_section_gives_no_listener() -> None:
    assert _parse('[general]\nhosts = ["a.test"]\n') == ()


def test_minimal_listener_takes_mongooseim_defaults() -> None:
    (svc,) = _parse('[[listen.service]]\nport = 8888\npassword = "secret"\n')
    assert svc == ListenService(port=8888, password="secret")
    assert svc.ip_address == "0.0.0.0"
    assert svc.ip_version == 4
    assert svc.access == "all"
    assert svc.shaper_rule == "none" and svc.max_rate is None
    assert svc.check_from is True
    assert svc.hidden_components is False
    assert svc.conflict_behaviour == "disconnect"
    assert svc.backlog == 1024
    assert svc.max_stanza_size is None


def test_full_listener_and_shaper_resolution() -> None:
    (svc,) = _parse(
        """
[[listen.service]]
  port = 5347
  ip_address = "::1"
  password = "pw"
  shaper_rule = "fast"
  check_from = false
  hidden_components = true
  conflict_behaviour = "kick_old"
  max_stanza_size = 65536
  backlog = 10
  num_acceptors = 10
[shaper.fast]
  max_rate = 50_000
"""
    )
    assert svc.ip_address == "::1" and svc.ip_version == 6
    assert svc.max_rate == 50_000 and svc.shaper_rule == "fast"
    assert svc.check_from is False and svc.hidden_components is True
    assert svc.conflict_behaviour == "kick_old"
    assert svc.max_stanza_size == 65536 and svc.backlog == 10


def test_ip_version_6_without_address_binds_all_v6() -> None:
    (svc,) = _parse('[[listen.service]]\nport = 1\npassword = "p"\nip_version = 6\n')
    assert svc.ip_address == "::" and svc.ip_version == 6


def test_several_listeners_keep_file_order() -> None:
    svcs = _parse(
        '[[listen.service]]\nport = 1\npassword = "a"\n'
        '[[listen.service]]\nport = 2\npassword = "b"\n'
    )
    assert [(s.port, s.password) for s in svcs] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ('password = "p"', "listen.service[0].port", "missing"),
        ("port = 5347", "listen.service[0].password", "mandatory"),
        ('port = 5347\npassword = ""', "listen.service[0].password", "empty"),
        ('port = "x"\npassword = "p"', "listen.service[0].port", "'x'"),
        ('port = 70000\npassword = "p"', "listen.service[0].port", "65535"),
        ("port = 1\npassword = 5", "listen.service[0].password", "string"),
        ('port = 1\npassword = "p"\nip_address = "local"', "listen.service[0].ip_address", "IP"),
        ('port = 1\npassword = "p"\ncheck_from = "yes"', "listen.service[0].check_from", "true"),
        ('port = 1\npassword = "p"\nshaper_rule = "slow"', "listen.service[0].shaper_rule", "slow"),
        ('port = 1\npassword = "p"\nproto = "udp"', "listen.service[0].proto", "tcp"),
        ('port = 1\npassword = "p"\naccess = "admins"', "listen.service[0].access", "all"),
        ('port = 1\npassword = "p"\nfoo = 1', "listen.service[0].foo", "unknown option"),
        (
            'port = 1\npassword = "p"\nconflict_behaviour = "x"',
            "listen.service[0].conflict_behaviour",
            "kick_old",
        ),
        (
            'port = 1\npassword = "p"\nip_address = "127.0.0.1"\nip_version = 6',
            "listen.service[0].ip_version",
            "contradicts",
        ),
    ],
)
def test_invalid_options_name_their_dotted_path(body: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(f"[[listen.service]]\n{body}\n")
    message = str(info.value)
    assert message.startswith(path + ":"), message
    assert fragment in message


def test_second_listener_on_same_address_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"listen\.service\[1\]\.port: .*listen\.service\[0\]"):
        _parse(
            '[[listen.service]]\nport = 1\npassword = "a"\n'
            '[[listen.service]]\nport = 1\npassword = "b"\n'
        )


def test_shaper_without_max_rate_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^shaper\.fast: "):
        _parse(
            '[[listen.service]]\nport = 1\npassword = "p"\nshaper_rule = "fast"\n[shaper.x]\n'
            "[shaper.fast]\n"
        )
