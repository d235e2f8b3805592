"""STARTTLS end to end: every use_starttls pairing, certificate verdicts, and proof that the
bytes on the wire after <proceed/> are TLS records (a recording TCP proxy in the test)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from certs import self_signed, utcnow
from core_helpers import RawPeer, RecordingProxy, message

MODES = ["false", "optional", "required", "required_trusted"]
REQUIRES = {"required", "required_trusted"}


def federates(a: str, b: str) -> bool:
    """MongooseIM's use_starttls semantics: TLS off on one side and required on the other."""
    return not ((a == "false" and b in REQUIRES) or (b == "false" and a in REQUIRES))


def tls_spec(hosts, mode, certfile, cafile, **extra):
    return {"hosts": hosts, "mode": mode, "certfile": certfile, "cafile": cafile, **extra}


@pytest.mark.parametrize("mode_b", MODES)
@pytest.mark.parametrize("mode_a", MODES)
async def test_use_starttls_pairings(federation, tls_certfile, tls_ca_file, mode_a, mode_b):
    nodes = await federation(
        {
            "A": tls_spec(["a.test"], mode_a, tls_certfile("a.test"), tls_ca_file),
            "B": tls_spec(["b.test"], mode_b, tls_certfile("b.test"), tls_ca_file),
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "hello", id="t1"))
    if federates(mode_a, mode_b):
        got = await nodes["B"].inbox.get()
        assert got.id == "t1"
        (out,) = [c for c in nodes["A"].connections() if c.direction == "out"]
        assert out.tls == (mode_a != "false" and mode_b != "false")
        if out.tls:
            assert out.peer_certificate is not None and out.peer_certificate.ok
    else:
        bounce = await nodes["A"].inbox.get()
        assert bounce.id == "t1" and bounce.type == "error" and bounce.to == "u@a.test"
        assert await nodes["B"].inbox.nothing(0.2)


@pytest.fixture
def bad_certs(tls_ca, tmp_path):
    """certfiles for a.test / b.test that required_trusted must refuse, by kind."""
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


@pytest.mark.parametrize("kind", ["expired", "wrong-name", "self-signed"])
async def test_required_trusted_refuses_bad_incoming_certificate(
    federation, tls_certfile, tls_ca_file, bad_certs, kind
):
    nodes = await federation(
        {
            "A": tls_spec(["a.test"], "optional", bad_certs(kind, "a.test"), tls_ca_file),
            "B": tls_spec(["b.test"], "required_trusted", tls_certfile("b.test"), tls_ca_file),
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "x", id="c1"))
    bounce = await nodes["A"].inbox.get()
    assert bounce.id == "c1" and bounce.type == "error"
    # B closed with policy-violation, and A says so in the bounce's text
    assert b"policy-violation" in bounce.raw
    assert await nodes["B"].inbox.nothing(0.2)


@pytest.mark.parametrize("kind", ["expired", "wrong-name", "self-signed"])
async def test_required_trusted_refuses_bad_server_certificate(
    federation, tls_certfile, tls_ca_file, bad_certs, kind
):
    nodes = await federation(
        {
            "A": tls_spec(["a.test"], "required_trusted", tls_certfile("a.test"), tls_ca_file),
            "B": tls_spec(["b.test"], "optional", bad_certs(kind, "b.test"), tls_ca_file),
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "x", id="c2"))
    bounce = await nodes["A"].inbox.get()
    assert bounce.id == "c2" and bounce.type == "error"
    assert await nodes["B"].inbox.nothing(0.2)


async def test_optional_accepts_self_signed_but_reports_it(
    federation, tls_certfile, tls_ca_file, bad_certs
):
    nodes = await federation(
        {
            "A": tls_spec(["a.test"], "optional", tls_certfile("a.test"), tls_ca_file),
            "B": tls_spec(["b.test"], "optional", bad_certs("self-signed", "b.test"), tls_ca_file),
        }
    )
    await nodes["A"].send(message("u@a.test", "v@b.test", "x", id="c3"))
    assert (await nodes["B"].inbox.get()).id == "c3"
    (out,) = [c for c in nodes["A"].connections() if c.direction == "out"]
    assert out.tls and not out.peer_certificate.trusted


async def test_required_refuses_dialback_before_tls_inbound(federation, tls_certfile, tls_ca_file):
    nodes = await federation(
        {"B": tls_spec(["b.test"], "required", tls_certfile("b.test"), tls_ca_file)}
    )
    peer = await RawPeer.connect(nodes["B"].port)
    peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        "from='a.test' to='b.test' version='1.0'>"
    )
    await peer.next()
    features = await peer.next()
    assert b"<required/>" in features.raw and b"urn:xmpp:features:dialback" not in features.raw
    peer.send("<db:result from='a.test' to='b.test'>" + "1" * 64 + "</db:result>")
    error = await peer.next()
    assert error.name == "error" and b"policy-violation" in error.raw
    await peer.close()


async def test_tls_is_really_on_the_wire(federation, tls_certfile, tls_ca_file):
    # A reaches b.test through the proxy; B reaches a.test directly (its verify connection)
    proxy = RecordingProxy()
    proxy_port = await proxy.start()
    secret_text = "the body text nobody may read"
    nodes = await federation(
        {
            "B": tls_spec(["b.test"], "required", tls_certfile("b.test"), tls_ca_file),
            "A": tls_spec(
                ["a.test"],
                "required",
                tls_certfile("a.test"),
                tls_ca_file,
                addresses={"b.test": proxy_port},
            ),
        }
    )
    proxy.target_port = nodes["B"].port
    await nodes["A"].send(message("u@a.test", "v@b.test", secret_text, id="w1"))
    got = await nodes["B"].inbox.get()
    assert secret_text.encode() in got.raw
    await proxy.stop()

    starttls = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    proceed = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    c2a, a2c = bytes(proxy.c2a), bytes(proxy.a2c)
    assert starttls in c2a and proceed in a2c
    after_c = c2a[c2a.index(starttls) + len(starttls) :]
    after_a = a2c[a2c.index(proceed) + len(proceed) :]
    # TLS handshake records (content type 22, version 3.x) right after the upgrade
    assert after_c[:2] == b"\x16\x03" and after_a[:2] == b"\x16\x03"
    for data in (c2a, a2c):
        assert secret_text.encode() not in data
        assert b"db:result" not in data and b"<message" not in data


async def test_whitespace_keepalive_on_idle_stream(federation):
    proxy = RecordingProxy()
    proxy_port = await proxy.start()
    nodes = await federation(
        {
            "B": {"hosts": ["b.test"]},
            "A": {"hosts": ["a.test"], "keepalive": 0.2, "addresses": {"b.test": proxy_port}},
        }
    )
    proxy.target_port = nodes["B"].port
    await nodes["A"].send(message("u@a.test", "v@b.test", "x", id="k1"))
    await nodes["B"].inbox.get()
    await asyncio.sleep(0.8)
    await proxy.stop()
    tail = bytes(proxy.c2a).split(b"</message>", 1)[1]
    assert tail.strip(b" ") == b"" and len(tail) >= 2  # only single-space keepalives
