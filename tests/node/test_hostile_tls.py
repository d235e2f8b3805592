"""TLS hygiene on the wire (issue 8, item 3) against a running node under use_starttls =
required: TLS 1.0/1.1 refused, renegotiation refused, no TLS compression, no stream
compression (XEP-0138), and a stalled handshake closed within state_timeout; the honest
federation keeps delivering throughout (over TLS itself)."""

from __future__ import annotations

import asyncio
import shutil
import ssl

import pytest
from hostile_helpers import (
    VICTIM,
    HostilePeer,
    arena_factory,
    header,
)


@pytest.fixture
def arena(federation, tls_certfile, tls_ca_file):
    return arena_factory(federation, tls_certfile, tls_ca_file)


def client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that speaks exactly *version* (old versions need OpenSSL security level 0
    on the client side; refusing them is the server's job)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def starttls_peer(port: int) -> HostilePeer:
    """A peer that has sent <starttls/> and received <proceed/>."""
    peer = await HostilePeer.connect(port)
    _, features = await peer.open("evil.test", VICTIM)
    assert b"urn:ietf:params:xml:ns:xmpp-tls" in features.raw
    peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    proceed = await peer.next_stanza()
    assert proceed.name == "proceed", proceed.raw
    return peer


async def test_tls_1_2_is_accepted_without_compression(arena):
    """The control for the refusals below: the same client at TLS 1.2 gets through."""
    a = await arena(mode="required")
    peer = await starttls_peer(a.port)
    await peer.start_tls(client_context(ssl.TLSVersion.TLSv1_2), server_hostname=VICTIM)
    tls = peer.writer.get_extra_info("ssl_object")
    assert tls.version() == "TLSv1.2"
    assert tls.compression() is None
    peer.send(header("evil.test", VICTIM))
    head = await peer.next()
    features = await peer.next_stanza()
    assert head.attrs["from"] == VICTIM and features.name == "features"
    assert b"starttls" not in features.raw  # no second STARTTLS
    assert b"compress" not in features.raw  # no XEP-0138 stream compression offered
    await peer.close()
    await a.finish()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
async def test_old_tls_versions_are_refused(arena, version):
    a = await arena(mode="required")
    peer = await starttls_peer(a.port)
    with pytest.raises(ssl.SSLError) as info:
        await peer.start_tls(client_context(version), server_hostname=VICTIM)
    # the server's protocol_version alert, not our client failing to offer the version
    assert "PROTOCOL_VERSION" in str(info.value).upper(), info.value
    out = await peer.outcome()
    assert out.eof
    await a.finish()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_renegotiation_is_refused(arena):
    """openssl s_client (STARTTLS xmpp-server, TLS 1.2) asks to renegotiate ('R')."""
    a = await arena(mode="required")
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{a.port}",
        "-starttls",
        "xmpp-server",
        "-xmpphost",
        VICTIM,
        "-tls1_2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = b""
    try:
        # wait for the handshake summary, then ask for renegotiation
        while b"SSL-Session:" not in output:
            chunk = await asyncio.wait_for(proc.stdout.read(4096), 20)
            assert chunk, output.decode(errors="replace")[-2000:]
            output += chunk
        assert b"TLSv1.2" in output and b"Compression: NONE" in output
        proc.stdin.write(b"R\n")
        await proc.stdin.drain()
        output += await asyncio.wait_for(proc.stdout.read(), 20)
        await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    assert "RENEGOTIATING" in text
    assert "no renegotiation" in text, text[-2000:]
    await a.finish()


STALLS = {
    "no-client-hello": b"",
    "half-a-client-hello": bytes.fromhex("160301020001"),  # record header + 1 byte of it
}


@pytest.mark.parametrize("step", list(STALLS))
async def test_stalled_tls_handshake_is_closed(arena, step):
    """After <proceed/> the peer stalls inside the handshake: closed at state_timeout (no
    stream error can be sent: the stream is neither XML nor TLS at that point)."""
    a = await arena(mode="required")
    peer = await starttls_peer(a.port)
    peer.send(STALLS[step])
    out = await peer.outcome()
    assert out.eof, "the node kept a stalled TLS handshake open"
    await a.finish()


async def test_stream_compression_request_is_refused(arena):
    """XEP-0138 is not offered; asking for it anyway is an unsupported stanza type."""
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    _, features = await peer.open("evil.test", VICTIM)
    assert b"compress" not in features.raw
    peer.send(
        "<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>"
    )
    out = await peer.outcome()
    assert out.error == "unsupported-stanza-type", out.error
    assert not out.named("compressed")
    await a.finish()


@pytest.mark.parametrize(
    "payload, condition",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not-well-formed"),
        (header("evil.test", VICTIM) + b"<!DOCTYPE x>", "restricted-xml"),
        (header("evil.test", VICTIM) + b"<message>" + b"<a>" * 1000, "policy-violation"),
    ],
    ids=["garbage", "dtd", "deep-nesting"],
)
async def test_bad_xml_inside_tls_gets_its_stream_error_over_tls(arena, payload, condition):
    """After STARTTLS the restarted stream is checked like the first one, and the error
    reaches the peer inside TLS (header first, then the error, then the close)."""
    a = await arena(mode="required")
    peer = await starttls_peer(a.port)
    await peer.start_tls(client_context(ssl.TLSVersion.TLSv1_2), server_hostname=VICTIM)
    peer.send(payload)
    out = await peer.outcome()
    assert out.header is not None and out.error == condition, (out.error, out.data[-300:])
    assert out.stream_closed and out.eof
    await a.finish()
