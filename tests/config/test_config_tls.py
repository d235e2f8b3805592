"""Config options that point at files or OpenSSL: certfile, cacertfile, dhfile, ciphers, the
STARTTLS rules that span sections, and the full example mongooseim.toml.

Certificates are made here with ``cryptography`` (tests/certs.py); nothing is read from the repo
except examples/mongooseim.toml.
"""

from __future__ import annotations

import copy
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from certs import make_ca
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh

from s2sfast.config import ConfigError, config_from_dict, load_config
from s2sfast.net.tls import apply_ciphers

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mongooseim.toml"


def doc(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"general": {"hosts": ["localhost"]}}
    data.update(copy.deepcopy(sections))
    return data


def rejects(data: dict[str, Any], path: str, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert info.value.path == path, message
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def ca():
    return make_ca("config test CA")


@pytest.fixture
def certfile(ca, tmp_path) -> str:
    return ca.issue(["localhost"]).write_pem(tmp_path, "server.pem")


@pytest.fixture
def cafile(ca, tmp_path) -> str:
    return ca.write_pem(tmp_path, "ca.pem")


def _ffdhe2048() -> int:
    """RFC 7919's ffdhe2048 prime: 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1.

    Computed instead of generated because making fresh 2048-bit DH parameters takes far too
    long for a unit test, and OpenSSL refuses smaller ones.
    """
    guard = 64
    term = total = 1 << (1918 + guard)
    k = 0
    while term:
        k += 1
        term //= k
        total += term
    e_scaled = total >> guard
    return 2**2048 - 2**1984 + (e_scaled + 560316) * 2**64 - 1


@pytest.fixture(scope="module")
def dhfile(tmp_path_factory) -> str:
    params = dh.DHParameterNumbers(_ffdhe2048(), 2).parameters()
    path = tmp_path_factory.mktemp("dh") / "dh.pem"
    path.write_bytes(
        params.parameter_bytes(serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3)
    )
    return str(path)


# ----------------------------------------------------------------------------- [s2s] certfile


@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
def test_use_starttls_with_certfile_is_read(mode, certfile, cafile):
    data = doc(
        s2s={"use_starttls": mode, "certfile": certfile},
        listen={"s2s": [{"port": 5269, "tls": {"cacertfile": cafile}}]},
    )
    opts = config_from_dict(data).s2s
    assert (opts.use_starttls, opts.certfile) == (mode, certfile)


def test_certfile_is_checked_even_without_starttls(tmp_path):
    path = tmp_path / "x.pem"
    path.write_text("not a certificate\n")
    rejects(doc(s2s={"certfile": str(path)}), "s2s.certfile", "no PEM certificate")


@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
def test_use_starttls_without_certfile_is_rejected(mode):
    rejects(doc(s2s={"use_starttls": mode}), "s2s.certfile", "missing", f'"{mode}"')


def _key_pem(key, fmt, encryption) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda leaf, other: leaf.cert_pem(), "no PEM private key"),
        (lambda leaf, other: leaf.key_pem(), "no PEM certificate"),
        (lambda leaf, other: b"", "no PEM certificate"),
        (lambda leaf, other: leaf.cert_pem() + other.key_pem(), "does not belong"),
        (
            lambda leaf, other: (
                leaf.cert_pem()
                + _key_pem(
                    leaf.key,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            ),
            "encrypted",
        ),
        (
            lambda leaf, other: (
                leaf.cert_pem()
                + _key_pem(
                    leaf.key,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            ),
            "encrypted",
        ),
        (
            lambda leaf, other: (
                leaf.cert_pem() + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            "cannot be read",
        ),
    ],
    ids=[
        "cert-only",
        "key-only",
        "empty",
        "wrong-key",
        "pkcs8-encrypted",
        "legacy-encrypted",
        "bad-key",
    ],
)
def test_bad_certfiles_are_rejected(make, fragment, ca, tmp_path):
    leaf, other = ca.issue(["localhost"]), ca.issue(["other.example"])
    path = tmp_path / "server.pem"
    path.write_bytes(make(leaf, other))
    data = doc(s2s={"use_starttls": "optional", "certfile": str(path)})
    message = rejects(data, "s2s.certfile", fragment, str(path), "unencrypted private key")
    assert "Traceback" not in message


def test_key_before_certificate_is_accepted(ca, tmp_path):
    leaf = ca.issue(["localhost"])
    path = tmp_path / "server.pem"
    path.write_bytes(leaf.key_pem() + leaf.cert_pem())
    data = doc(s2s={"use_starttls": "optional", "certfile": str(path)})
    assert config_from_dict(data).s2s.certfile == str(path)


def test_unreadable_certfile_is_rejected(tmp_path):
    for path in (tmp_path / "absent.pem", tmp_path):
        data = doc(s2s={"use_starttls": "optional", "certfile": str(path)})
        rejects(data, "s2s.certfile", "cannot read the file")


def test_accepted_certfile_loads_into_ssl(certfile):
    opts = config_from_dict(doc(s2s={"use_starttls": "optional", "certfile": certfile})).s2s
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(opts.certfile)


# ----------------------------------------------------------------------------- required* needs a CA


def test_required_needs_cacertfile_or_verify_none_on_every_listener(certfile, cafile):
    listeners = [{"port": 5269, "tls": {"cacertfile": cafile}}, {"port": 5270}]
    for mode in ("required", "required_trusted"):
        data = doc(s2s={"use_starttls": mode, "certfile": certfile}, listen={"s2s": listeners})
        rejects(data, "listen.s2s[1].tls.cacertfile", "missing", 'verify_mode = "none"', mode)


def test_required_with_verify_mode_none_is_accepted(certfile):
    data = doc(
        s2s={"use_starttls": "required", "certfile": certfile},
        listen={"s2s": [{"port": 5269, "tls": {"verify_mode": "none"}}]},
    )
    assert config_from_dict(data).listen_s2s[0].tls.verify_mode == "none"


def test_required_with_verify_mode_peer_still_needs_cacertfile(certfile):
    data = doc(
        s2s={"use_starttls": "required", "certfile": certfile},
        listen={"s2s": [{"port": 5269, "tls": {"verify_mode": "peer"}}]},
    )
    rejects(data, "listen.s2s[0].tls.cacertfile", "missing")


def test_optional_needs_no_cacertfile(certfile):
    data = doc(
        s2s={"use_starttls": "optional", "certfile": certfile}, listen={"s2s": [{"port": 1}]}
    )
    assert config_from_dict(data).listen_s2s[0].tls.cacertfile is None


def test_required_without_listeners_is_accepted(certfile):
    data = doc(s2s={"use_starttls": "required_trusted", "certfile": certfile})
    assert config_from_dict(data).s2s.use_starttls == "required_trusted"


def test_host_config_required_also_needs_listener_ca(certfile):
    data = doc(
        s2s={"certfile": certfile},
        listen={"s2s": [{"port": 5269}]},
        host_config=[
            {"host": "localhost", "s2s": {"use_starttls": "required", "certfile": certfile}}
        ],
    )
    rejects(data, "listen.s2s[0].tls.cacertfile", "host_config[0].s2s.use_starttls")


def test_host_config_does_not_inherit_the_global_certfile(certfile):
    data = doc(
        s2s={"certfile": certfile},
        host_config=[{"host": "localhost", "s2s": {"use_starttls": "optional"}}],
    )
    message = rejects(data, "host_config[0].s2s.certfile")
    assert "optional" in message or "use_starttls" in message, message


def test_host_config_with_its_own_certfile(certfile):
    data = doc(
        host_config=[
            {"host": "localhost", "s2s": {"use_starttls": "optional", "certfile": certfile}}
        ],
    )
    opts = config_from_dict(data).s2s_for("localhost")
    assert (opts.use_starttls, opts.certfile) == ("optional", certfile)
    assert config_from_dict(data).s2s.use_starttls == "false"


# ----------------------------------------------------------------------------- listener tls files


def test_listener_tls_files_are_read(cafile, certfile, dhfile):
    tls = {"cacertfile": cafile, "dhfile": dhfile, "certfile": certfile, "ciphers": "TLSv1.2"}
    lst = config_from_dict(doc(listen={"s2s": [{"port": 5269, "tls": tls}]})).listen_s2s[0]
    assert (lst.tls.cacertfile, lst.tls.dhfile, lst.tls.certfile) == (cafile, dhfile, certfile)
    assert lst.tls.ciphers == "TLSv1.2"


@pytest.mark.parametrize("key", ["cacertfile", "dhfile", "certfile"])
def test_listener_tls_files_are_checked(key, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    for value in (str(junk), str(tmp_path / "absent.pem"), ""):
        data = doc(listen={"s2s": [{"port": 5269, "tls": {key: value}}]})
        rejects(data, f"listen.s2s[0].tls.{key}")


def test_a_certificate_is_no_dhfile(cafile):
    data = doc(listen={"s2s": [{"port": 5269, "tls": {"dhfile": cafile}}]})
    rejects(data, "listen.s2s[0].tls.dhfile", "DH parameters")


# ----------------------------------------------------------------------------- ciphers


TYPICAL = [
    "TLSv1.2:TLSv1.3",
    "TLSv1.2",
    "HIGH:!aNULL:!MD5",
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384",
]


@pytest.mark.parametrize("ciphers", TYPICAL)
def test_typical_cipher_strings_are_accepted_and_configure_ssl(ciphers):
    opts = config_from_dict(doc(s2s={"ciphers": ciphers})).s2s
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers(opts.ciphers)
    assert any(c["protocol"] == "TLSv1.2" for c in ctx.get_ciphers())
    # set_ciphers does not touch TLS 1.3 suites: they stay enabled whatever the string says.
    assert "TLS_AES_256_GCM_SHA384" in {c["name"] for c in ctx.get_ciphers()}
    apply_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), opts.ciphers)


def test_default_ciphers_configure_ssl():
    opts = config_from_dict(doc()).s2s
    assert opts.ciphers == "TLSv1.2:TLSv1.3"
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(opts.ciphers)
    apply_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), opts.ciphers)


def test_tls13_alone_is_accepted_as_s2sfast_tls_applies_it():
    # OpenSSL's set_ciphers refuses "TLSv1.3"; s2sfast.net.tls reads it as "TLS 1.3 only", and the
    # load-time check follows the code that builds the contexts.
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers("TLSv1.3")
    opts = config_from_dict(doc(s2s={"ciphers": "TLSv1.3"})).s2s
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_ciphers(ctx, opts.ciphers)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("ciphers", ["NOT-A-CIPHER", "TLS_AES_128_GCM_SHA256", "!ALL"])
def test_unusable_cipher_strings_are_rejected(ciphers):
    message = rejects(doc(s2s={"ciphers": ciphers}), "s2s.ciphers", ciphers)
    assert 'expected an OpenSSL cipher string such as "TLSv1.2:TLSv1.3"' in message
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(ciphers)
    with pytest.raises(ValueError):
        apply_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ciphers)


def test_empty_cipher_string_is_rejected():
    rejects(doc(s2s={"ciphers": ""}), "s2s.ciphers", 'got ""')


def test_listener_ciphers_are_checked():
    data = doc(listen={"s2s": [{"port": 5269, "tls": {"ciphers": "NOT-A-CIPHER"}}]})
    rejects(data, "listen.s2s[0].tls.ciphers", "NOT-A-CIPHER")


def test_host_config_ciphers_are_checked():
    data = doc(host_config=[{"host": "localhost", "s2s": {"ciphers": "NOT-A-CIPHER"}}])
    rejects(data, "host_config[0].s2s.ciphers", "NOT-A-CIPHER")


# ----------------------------------------------------------------------------- the full example


def test_full_example_loads(caplog):
    with caplog.at_level(logging.INFO, logger="s2sfast.config"):
        config = load_config(EXAMPLE)
    assert config.hosts == ("localhost",)
    [lst] = config.listen_s2s
    assert (lst.port, lst.ip_address, lst.max_stanza_size) == (5269, "0.0.0.0", 131072)
    assert (lst.shaper, lst.shaper_name, lst.max_rate) == ("s2s_shaper", "fast", 50_000)
    assert config.s2s.default_policy == "deny"
    assert config.s2s.outgoing.port == 5269
    assert config.s2s.use_starttls == "false"
    assert config.host_s2s == {}
    assert [(s.ip_address, s.port) for s in config.listen_service] == [("127.0.0.1", 8888)]
    [line] = [r.getMessage() for r in caplog.records if r.name == "s2sfast.config"]
    for section in ("auth", "modules", "acl", "services", "listen.c2s", "listen.http"):
        assert section in line


def test_full_example_with_its_starttls_lines_enabled(ca, tmp_path, monkeypatch):
    text = EXAMPLE.read_text()
    assert '  # use_starttls = "optional"\n' in text
    text = text.replace('  # use_starttls = "optional"', '  use_starttls = "optional"')
    text = text.replace('  # certfile = "priv/ssl/', '  certfile = "priv/ssl/')
    (tmp_path / "priv" / "ssl").mkdir(parents=True)
    ca.issue(["localhost"]).write_pem(tmp_path / "priv" / "ssl", "fake_server.pem")
    (tmp_path / "mongooseim.toml").write_text(text)
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the working directory
    config = load_config("mongooseim.toml")
    assert config.s2s.use_starttls == "optional"
    assert config.s2s.certfile == "priv/ssl/fake_server.pem"
    os.remove("priv/ssl/fake_server.pem")
    with pytest.raises(ConfigError, match="s2s.certfile: cannot read the file"):
        load_config("mongooseim.toml")
