"""SASL EXTERNAL (XEP-0178) and dialback answered without a verify stream (XEP-0344) between two
real Nodes on loopback, over real TLS with certificates from the test CA: valid, expired, wrong
name and self-signed; policy on the EXTERNAL path; what node.connections() and the log say."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from certs import self_signed, utcnow
from core_helpers import message


def spec(host, certfile, cafile, *, mode="required", **extra):
    return {"hosts": [host], "mode": mode, "certfile": certfile, "cafile": cafile, **extra}


def auth_of(node):
    """{(direction, local, remote): auth_method} of the node's streams."""
    return {(c.direction, c.local, c.remote): c.auth_method for c in node.connections()}


@pytest.fixture
def bad_cert(tls_ca, tmp_path):
    """A certfile for *domain* that cannot prove it: expired, naming another domain, or
    self-signed."""
    past = utcnow() - dt.timedelta(days=2)

    def make(kind: str, domain: str) -> str:
        if kind == "expired":
            cert = tls_ca.issue([domain], not_before=past - dt.timedelta(days=30), not_after=past)
        elif kind == "wrong-name":
            cert = tls_ca.issue(["wrong.test"])
        else:
            cert = self_signed(domain)
        return cert.write_pem(tmp_path, f"{kind}-{domain}.pem")

    return make


async def test_external_one_connection_no_dialback(federation, tls_certfile, tls_ca_file, caplog):
    """The first target: valid certificates both sides, a new domain pair authenticates on
    the one TCP connection A opened, with no dialback verify (B opens nothing back)."""
    caplog.set_level(logging.INFO, logger="s2sfast")
    nodes = await federation(
        {
            "A": spec("a.test", tls_certfile("a.test"), tls_ca_file, sasl_external=True),
            "B": spec("b.test", tls_certfile("b.test"), tls_ca_file, sasl_external=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "hi", id="x1"))
    assert (await b.inbox.get()).id == "x1"
    assert auth_of(a) == {("out", "a.test", "b.test"): "sasl-external"}
    assert auth_of(b) == {("in", "b.test", "a.test"): "sasl-external"}
    (conn,) = b.connections()
    assert conn.tls and conn.peer_certificate.ok and conn.pairs == (("b.test", "a.test"),)
    text = caplog.text
    assert "stream authenticated (sasl-external)" in text
    assert "db:verify" not in text and "verified key" not in text
    # the other direction gets its own stream, authenticated the same way
    await b.send(message("v@b.test", "u@a.test", "back", id="x2"))
    assert (await a.inbox.get()).id == "x2"
    assert set(auth_of(a).values()) == set(auth_of(b).values()) == {"sasl-external"}


@pytest.mark.parametrize("kind", ["expired", "wrong-name", "self-signed"])
async def test_bad_certificate_falls_back_to_dialback(
    federation, tls_certfile, tls_ca_file, bad_cert, kind
):
    """A's certificate cannot prove a.test: B does not offer EXTERNAL (and A would not use it),
    and dialback with a real verify stream authenticates instead."""
    nodes = await federation(
        {
            "A": spec("a.test", bad_cert(kind, "a.test"), tls_ca_file, sasl_external=True),
            "B": spec("b.test", tls_certfile("b.test"), tls_ca_file, sasl_external=True),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "hi", id="f1"))
    assert (await b.inbox.get()).id == "f1"
    assert auth_of(a)[("out", "a.test", "b.test")] == "dialback"
    assert auth_of(b)[("in", "b.test", "a.test")] == "dialback"  # not dialback-cert
    (inbound,) = [c for c in b.connections() if c.direction == "in" and c.remote == "a.test"]
    assert not inbound.peer_certificate.ok
    # B asked a.test's authoritative server: it opened a stream of its own to A for that
    assert ("out", "b.test", "a.test") in auth_of(b)


async def test_peer_without_external_gets_dialback_answered_at_once(
    federation, tls_certfile, tls_ca_file
):
    """B does not do SASL EXTERNAL but trusts A's certificate: dialback is answered valid at
    once (XEP-0344): one connection, no verify stream."""
    nodes = await federation(
        {
            "A": spec("a.test", tls_certfile("a.test"), tls_ca_file, sasl_external=True),
            "B": spec("b.test", tls_certfile("b.test"), tls_ca_file, sasl_external=False),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "hi", id="d1"))
    assert (await b.inbox.get()).id == "d1"
    assert auth_of(a) == {("out", "a.test", "b.test"): "dialback"}
    assert auth_of(b) == {("in", "b.test", "a.test"): "dialback-cert"}


async def test_dialback_cert_auth_off_uses_a_verify_stream(federation, tls_certfile, tls_ca_file):
    nodes = await federation(
        {
            "A": spec("a.test", tls_certfile("a.test"), tls_ca_file),
            "B": spec("b.test", tls_certfile("b.test"), tls_ca_file, dialback_cert_auth=False),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "hi", id="v1"))
    assert (await b.inbox.get()).id == "v1"
    assert auth_of(b)[("in", "b.test", "a.test")] == "dialback"
    assert ("out", "b.test", "a.test") in auth_of(b)  # the verify stream


@pytest.mark.parametrize("sasl", [True, False])
async def test_policy_deny_on_the_certificate_paths(
    federation, tls_certfile, tls_ca_file, caplog, sasl
):
    """B denies a.test: neither EXTERNAL (sasl) nor dialback answered at once (not sasl) lets
    it in; A's sender gets a bounce naming the policy, and nothing is delivered."""
    caplog.set_level(logging.INFO, logger="s2sfast")
    nodes = await federation(
        {
            "A": spec("a.test", tls_certfile("a.test"), tls_ca_file, sasl_external=sasl),
            "B": spec(
                "b.test",
                tls_certfile("b.test"),
                tls_ca_file,
                sasl_external=sasl,
                host_policy={"a.test": "deny"},
            ),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(message("u@a.test", "v@b.test", "no", id="p1"))
    bounce = await a.inbox.get()
    assert bounce.id == "p1" and bounce.type == "error" and bounce.to == "u@a.test"
    assert b"service-unavailable" in bounce.raw
    assert b"policy-violation" in bounce.raw
    if sasl:  # B's <failure/> then its stream error, whose text the bounce carries
        assert b"a.test is not allowed to federate with b.test (policy)" in bounce.raw
    assert await b.inbox.nothing(0.3)
    assert not [c for c in b.connections() if c.pairs]
    if sasl:
        assert "SASL EXTERNAL" in caplog.text and "authenticated" not in caplog.text


async def test_external_both_ways_on_required_trusted(federation, tls_certfile, tls_ca_file):
    nodes = await federation(
        {
            "A": spec(
                "a.test",
                tls_certfile("a.test"),
                tls_ca_file,
                mode="required_trusted",
                sasl_external=True,
            ),
            "B": spec(
                "b.test",
                tls_certfile("b.test"),
                tls_ca_file,
                mode="required_trusted",
                sasl_external=True,
            ),
        }
    )
    a, b = nodes["A"], nodes["B"]
    for i in range(5):
        await a.send(message("u@a.test", "v@b.test", str(i), id=f"a{i}"))
        await b.send(message("v@b.test", "u@a.test", str(i), id=f"b{i}"))
    assert [(await b.inbox.get()).id for _ in range(5)] == [f"a{i}" for i in range(5)]
    assert [(await a.inbox.get()).id for _ in range(5)] == [f"b{i}" for i in range(5)]
    assert set(auth_of(a).values()) == {"sasl-external"} and len(a.connections()) == 2
