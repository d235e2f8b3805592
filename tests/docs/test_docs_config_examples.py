"""Every TOML example of the configuration reference, and every whole ``mongooseim.toml`` the
pages show (```toml title="mongooseim.toml"```), loads: s2sfast accepts it as written.

The examples name files an operator would have (``/etc/s2sfast/example.org.pem``,
``/etc/ssl/certs/ca-certificates.crt``, ``/etc/s2sfast/dh.pem``); the test substitutes real
ones made here for every ``certfile``, ``cacertfile`` and ``dhfile`` value (a certificate and key
for the pages' domains from a test CA, that CA, RFC 7919's ffdhe2048 group), and gives an example
without ``[general] hosts`` the hosts its ``[[host_config]]`` examples name.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from certs import make_ca
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh
from docs_helpers import DOCS, blocks, page

from s2sfast.config import config_from_dict
from s2sfast.server.metrics import parse_listen_prometheus

_HOSTS = ["example.org", "example.net"]


def _ffdhe2048() -> int:
    """RFC 7919 appendix A.1: p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1
    (e summed as a series in fixed point; fresh 2048-bit parameters take far too long to make)."""
    guard = 64
    term = total = 1 << (1918 + guard)
    k = 0
    while term:
        k += 1
        term //= k
        total += term
    return 2**2048 - 2**1984 + ((total >> guard) + 560316) * 2**64 - 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    where = tmp_path_factory.mktemp("docfiles")
    ca = make_ca()
    dhfile = where / "dh.pem"
    params = dh.DHParameterNumbers(_ffdhe2048(), 2).parameters()
    dhfile.write_bytes(
        params.parameter_bytes(serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3)
    )
    return {
        "certfile": ca.issue(_HOSTS).write_pem(where),
        "cacertfile": ca.write_pem(where, "ca.pem"),
        "dhfile": str(dhfile),
    }


def _substitute(value: Any, files: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: files[k] if k in files and isinstance(v, str) else _substitute(v, files)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, files) for v in value]
    return value


def _examples() -> list[tuple[str, str]]:
    out = []
    for block in blocks(page("configuration.md")):
        if block.lang == "toml":
            out.append((f"configuration.md:{block.line}", block.body))
    for path in sorted(DOCS.rglob("*.md")):
        for block in blocks(path.read_text(encoding="utf-8")):
            if block.lang == "toml" and block.title == "mongooseim.toml":
                out.append((f"{path.name}:{block.line}", block.body))
    return out


def test_there_are_examples_of_both_kinds():
    names = [where for where, _ in _examples()]
    assert sum(n.startswith("configuration.md") for n in names) > 60
    assert any(not n.startswith("configuration.md") for n in names)


@pytest.mark.parametrize(("where", "text"), _examples(), ids=[w for w, _ in _examples()])
def test_example_loads(where, text, files):
    document = _substitute(tomllib.loads(text), files)
    document.setdefault("general", {}).setdefault("hosts", _HOSTS)
    config = config_from_dict(document)  # raises ConfigError naming the option
    parse_listen_prometheus(document)
    assert config.hosts
