"""tests/certs.py itself: the files it writes are what [s2s] certfile and tls.cacertfile expect."""

from __future__ import annotations

import ssl
from datetime import timedelta

import pytest
from certs import make_ca, self_signed, tls_ca, tls_ca_file, tls_certfile, utcnow  # noqa: F401
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def test_certfile_holds_leaf_chain_and_plain_key(tmp_path):
    ca = make_ca()
    leaf = ca.intermediate().issue(["a.test"])
    path = leaf.write_pem(tmp_path)
    data = open(path, "rb").read()
    assert data.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert b"-----BEGIN PRIVATE KEY-----" in data and b"ENCRYPTED" not in data
    certs = x509.load_pem_x509_certificates(data)
    assert certs[0] == leaf.cert and certs[1].subject == certs[0].issuer
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(path)  # what make_server_context does


def test_cafile_loads_as_trust_anchor(tmp_path):
    ca = make_ca("my CA")
    path = ca.write_pem(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(path)
    assert [c["subject"] for c in ctx.get_ca_certs()][0][-1] == (("commonName", "my CA"),)


def test_dates_names_and_key_types():
    ca = make_ca()
    now = utcnow()
    expired = ca.issue(["a.test"], not_before=now - timedelta(days=2), not_after=now)
    assert expired.cert.not_valid_after_utc <= utcnow()
    assert isinstance(ca.issue("a.test").key, ec.EllipticCurvePrivateKey)
    assert isinstance(ca.issue(["a.test"], key_type="rsa").key, rsa.RSAPrivateKey)
    with pytest.raises(ValueError):
        ca.issue(["a.test"], key_type="dsa")
    cn_only = ca.issue([], cn="a.test")
    with pytest.raises(x509.ExtensionNotFound):
        cn_only.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    lone = self_signed("a.test")
    assert lone.cert.issuer == lone.cert.subject and lone.chain == ()


def test_intermediate_chains_nest():
    root = make_ca()
    sub1 = root.intermediate("sub 1")
    sub2 = sub1.intermediate("sub 2")
    assert root.issue(["a.test"]).chain == ()
    assert [c.subject for c in sub1.issue(["a.test"]).chain] == [sub1.cert.subject]
    assert [c.subject for c in sub2.issue(["a.test"]).chain] == [
        sub2.cert.subject,
        sub1.cert.subject,
    ]


def test_fixtures(tls_ca, tls_ca_file, tls_certfile):  # noqa: F811
    path = tls_certfile("a.test", "b.test")
    assert tls_certfile("a.test", "b.test") == path  # cached per name tuple
    assert tls_certfile("c.test") != path
    leaf = x509.load_pem_x509_certificates(open(path, "rb").read())[0]
    assert leaf.issuer == tls_ca.cert.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]
    assert x509.load_pem_x509_certificates(open(tls_ca_file, "rb").read()) == [tls_ca.cert]
