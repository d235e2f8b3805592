"""s2sfast.net.connect: real TCP on 127.0.0.1 / ::1 (refused, blackholed, accepted)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest
from dnsserver import BlackholedPort, DnsServer, closed_port

from s2sfast.config import OutgoingOptions, S2SOptions
from s2sfast.net.connect import ConnectError, ConnectFailure, connect_first, failure_reason
from s2sfast.net.dns import Candidate, Resolver


def cand(ip: str, port: int, host: str = "peer.test") -> Candidate:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return Candidate(ip=ip, port=port, family=family, host=host, source="srv")


class Recorder(asyncio.Protocol):
    """Client protocol that collects what the server sends."""

    made = 0

    def __init__(self) -> None:
        Recorder.made += 1
        self.data = b""
        self.got = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()


@pytest.fixture
async def echo_server():
    """Start an asyncio server on a loopback host that greets each client with b'hello'."""
    servers = []

    async def start(host: str = "127.0.0.1") -> int:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()

        server = await asyncio.start_server(greet, host, 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def test_first_candidate_that_accepts_wins(echo_server):
    port = await echo_server()
    Recorder.made = 0
    transport, protocol, used = await connect_first(
        [cand("127.0.0.1", port)], Recorder, timeout_ms=2000
    )
    try:
        assert used == cand("127.0.0.1", port)
        await asyncio.wait_for(protocol.got.wait(), 5)
        assert protocol.data == b"hello"
        assert transport.get_extra_info("peername")[:2] == ("127.0.0.1", port)
        assert Recorder.made == 1
    finally:
        transport.close()


async def test_ipv6_loopback_candidate(echo_server):
    port = await echo_server("::1")
    transport, protocol, used = await connect_first([cand("::1", port)], Recorder, timeout_ms=None)
    try:
        await asyncio.wait_for(protocol.got.wait(), 5)
        assert protocol.data == b"hello" and used.family == socket.AF_INET6
    finally:
        transport.close()


async def test_closed_port_is_refused_and_reported(caplog):
    port = closed_port()
    caplog.set_level(logging.WARNING, logger="s2sfast.connect")
    with pytest.raises(ConnectError) as info:
        await connect_first([cand("127.0.0.1", port)], Recorder, timeout_ms=2000, domain="x.test")
    err = info.value
    assert [f.reason for f in err.failures] == ["refused"]
    assert not err.timed_out and err.condition == "remote-server-not-found"
    assert str(err).startswith(f"could not connect to x.test: peer.test 127.0.0.1:{port} (srv)")
    assert "refused" in str(err)
    assert any("refused" in r.getMessage() and "x.test" in r.getMessage() for r in caplog.records)


async def test_blackholed_port_times_out_within_the_connection_timeout(caplog):
    caplog.set_level(logging.WARNING, logger="s2sfast.connect")
    with BlackholedPort() as hole:
        with pytest.raises(ConnectError) as info:
            await connect_first([cand(hole.host, hole.port)], Recorder, timeout_ms=200)
    err = info.value
    assert err.failures == (
        ConnectFailure(
            candidate=cand("127.0.0.1", hole.port),
            reason="timeout",
            detail="no answer within 200 ms",
        ),
    )
    assert err.timed_out and err.condition == "remote-server-timeout"
    assert any("timeout" in r.getMessage() for r in caplog.records)


async def test_ipv6_blackhole_times_out_too():
    with BlackholedPort("::1") as hole:
        with pytest.raises(ConnectError) as info:
            await connect_first([cand("::1", hole.port)], Recorder, timeout_ms=150)
    assert info.value.timed_out


async def test_failures_fall_through_to_the_next_candidate_in_order(echo_server, caplog):
    caplog.set_level(logging.WARNING, logger="s2sfast.connect")
    good = await echo_server()
    refused = closed_port()
    with BlackholedPort() as hole:
        transport, protocol, used = await connect_first(
            [cand("127.0.0.1", refused), cand("127.0.0.1", hole.port), cand("127.0.0.1", good)],
            Recorder,
            timeout_ms=200,
        )
    try:
        assert used.port == good
        await asyncio.wait_for(protocol.got.wait(), 5)
    finally:
        transport.close()
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2
    assert str(refused) in logged[0] and "refused" in logged[0]
    assert str(hole.port) in logged[1] and "timeout" in logged[1]


async def test_mixed_failures_with_any_timeout_mean_remote_server_timeout():
    with BlackholedPort() as hole:
        with pytest.raises(ConnectError) as info:
            await connect_first(
                [
                    cand("127.0.0.1", closed_port()),
                    cand("::1", closed_port("::1")),
                    cand("127.0.0.1", hole.port),
                ],
                Recorder,
                timeout_ms=150,
            )
    assert [f.reason for f in info.value.failures] == ["refused", "refused", "timeout"]
    assert info.value.condition == "remote-server-timeout"


async def test_no_timeout_means_no_bound():
    # "infinity": connect_first keeps waiting on a blackholed port; only our outer bound ends it
    with BlackholedPort() as hole:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await connect_first([cand("127.0.0.1", hole.port)], Recorder, timeout_ms=None)


async def test_no_candidates_is_an_error():
    with pytest.raises(ConnectError, match="no address to connect to for z.test") as info:
        await connect_first([], Recorder, timeout_ms=100, domain="z.test")
    assert info.value.condition == "remote-server-not-found"


async def test_nonpositive_timeout_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        await connect_first([cand("127.0.0.1", 1)], Recorder, timeout_ms=0)


def test_failure_reasons():
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) == "refused"
    for code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        assert failure_reason(OSError(code, "x")) == "unreachable"
    assert failure_reason(ConnectionResetError(errno.ECONNRESET, "reset")) == "error"


async def test_resolve_then_connect_end_to_end(echo_server):
    """The router's path: SRV from a loopback DNS server, first target refused, second accepts."""
    good = await echo_server("::1")
    bad = closed_port()
    with DnsServer() as dns:
        dns.add_srv("_xmpp-server._tcp.e2e.test", 0, 0, bad, "a.e2e.test")
        dns.add_srv("_xmpp-server._tcp.e2e.test", 5, 0, good, "b.e2e.test")
        dns.add_a("a.e2e.test", "127.0.0.1")
        dns.add_aaaa("b.e2e.test", "::1")
        async with Resolver([dns.nameserver], timeout=1, retries=1) as resolver:
            s2s = S2SOptions(outgoing=OutgoingOptions(ip_versions=(4, 6)))
            candidates = await resolver.resolve("e2e.test", s2s)
    transport, protocol, used = await connect_first(
        candidates, Recorder, timeout_ms=s2s.outgoing.connection_timeout, domain="e2e.test"
    )
    try:
        assert (used.host, used.ip, used.port) == ("b.e2e.test", "::1", good)
        await asyncio.wait_for(protocol.got.wait(), 5)
        assert protocol.data == b"hello"
    finally:
        transport.close()
