"""Cipher strings: check_ciphers / apply_ciphers semantics (OpenSSL lists, TLS 1.3 keywords)."""

from __future__ import annotations

import ssl

import pytest

from s2sfast.net.tls import apply_ciphers, check_ciphers


def _ctx() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@pytest.mark.parametrize(
    "good",
    [
        "TLSv1.2:TLSv1.3",  # MongooseIM's default
        "TLSv1.2",
        "TLSv1.3",
        "HIGH:!aNULL:!MD5",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256,ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE+AESGCM TLSv1.3",
    ],
)
def test_usable_strings_pass(good):
    check_ciphers(good)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("NO-SUCH-CIPHER", "selects no cipher OpenSSL can use"),
        ("!ALL", "selects no cipher"),
        ("TLS_AES_128_GCM_SHA256", "TLS 1.3 suites"),
        ("TLSv1.2:TLS_CHACHA20_POLY1305_SHA256", "TLS 1.3 suites"),
    ],
)
def test_unusable_strings_fail_with_a_reason(bad, why):
    with pytest.raises(ValueError, match=why):
        check_ciphers(bad)


def test_openssl_reason_is_quoted():
    with pytest.raises(ValueError, match="No cipher can be selected"):
        check_ciphers("NO-SUCH-CIPHER")


def test_tls13_alone_means_tls13_only():
    ctx = _ctx()
    apply_ciphers(ctx, "TLSv1.3")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_tls12_list_restricts_tls12_suites_and_keeps_tls13():
    ctx = _ctx()
    apply_ciphers(ctx, "ECDHE-ECDSA-AES256-GCM-SHA384")
    names = {c["name"] for c in ctx.get_ciphers()}
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES256-GCM-SHA384"}
    assert "TLS_AES_256_GCM_SHA384" in names  # TLS 1.3 stays at OpenSSL's defaults
    assert ctx.minimum_version != ssl.TLSVersion.TLSv1_3


def test_default_string_keeps_both_versions():
    ctx = _ctx()
    before = ctx.minimum_version
    apply_ciphers(ctx, "TLSv1.2:TLSv1.3")
    assert ctx.minimum_version == before
    protocols = {c["protocol"] for c in ctx.get_ciphers()}
    assert {"TLSv1.2", "TLSv1.3"} <= protocols


def test_failed_apply_leaves_the_context_usable():
    ctx = _ctx()
    apply_ciphers(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ValueError):
        apply_ciphers(ctx, "NO-SUCH-CIPHER")
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256"}


@pytest.mark.parametrize("spelling", ["TLSv1.2:!TLSv1.3", "HIGH:-TLSv1.3"])
def test_excluding_tls13_caps_at_tls12(spelling):
    ctx = _ctx()
    apply_ciphers(ctx, spelling)
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.minimum_version != ssl.TLSVersion.TLSv1_3


def test_excluding_everything_is_refused():
    with pytest.raises(ValueError, match="excludes every TLS version"):
        check_ciphers("!TLSv1.3")
