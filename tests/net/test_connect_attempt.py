"""s2sfast.net.connect.Attempt: one walk through the candidates, resumed after a connected
Direct TLS candidate failed (real TCP on 127.0.0.1: accepted, refused)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from dnsserver import closed_port

from s2sfast.net.connect import Attempt, ConnectError, connect_first
from s2sfast.net.dns import Candidate


def cand(port: int, *, direct_tls: bool = False) -> Candidate:
    return Candidate(
        ip="127.0.0.1",
        port=port,
        family=socket.AF_INET,
        host="peer.test",
        source="srv",
        direct_tls=direct_tls,
    )


class Tls(asyncio.Protocol):
    """Stands in for an XmlStream: connect_first marks it Direct TLS."""

    def __init__(self) -> None:
        self.direct_tls = False


@pytest.fixture
async def listener():
    servers: list[asyncio.Server] = []

    async def start() -> int:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


async def test_resumed_attempt_goes_on_after_the_failed_candidate(listener):
    first, second = await listener(), await listener()
    refused = closed_port()
    attempt = Attempt([cand(refused), cand(first, direct_tls=True), cand(second)])
    transport, protocol, used = await connect_first(attempt, Tls, timeout_ms=2000, domain="p.test")
    transport.close()
    assert used == cand(first, direct_tls=True) == attempt.current and protocol.direct_tls
    assert [f.reason for f in attempt.failures] == ["refused"] and attempt.untried == 1
    # its handshake failed: recorded, and the walk resumes with the candidate after it
    attempt.failed("tls", "Direct TLS handshake failed: WRONG_VERSION_NUMBER")
    transport, protocol, used = await connect_first(attempt, Tls, timeout_ms=2000, domain="p.test")
    transport.close()
    assert used == cand(second) and not protocol.direct_tls and attempt.untried == 0


async def test_exhausted_attempt_reports_every_failure_in_order(listener):
    port = await listener()
    refused = closed_port()
    attempt = Attempt([cand(port, direct_tls=True), cand(refused)])
    transport, _, _ = await connect_first(attempt, Tls, timeout_ms=2000)
    transport.close()
    attempt.failed("timeout", "no TLS within 5 s")
    with pytest.raises(ConnectError) as info:
        await connect_first(attempt, Tls, timeout_ms=2000, domain="p.test")
    err = info.value
    assert [(f.candidate.port, f.reason) for f in err.failures] == [
        (port, "timeout"),
        (refused, "refused"),
    ]
    assert err.condition == "remote-server-timeout"
    assert str(err).index(f":{port}") < str(err).index(f":{refused}")
    # nothing left: a further call fails at once with the same failures
    with pytest.raises(ConnectError) as again:
        await connect_first(attempt, Tls, timeout_ms=2000)
    assert again.value.failures == err.failures


def test_failed_before_any_candidate_is_an_error():
    with pytest.raises(ValueError):
        Attempt([cand(1)]).failed("tls", "x")
