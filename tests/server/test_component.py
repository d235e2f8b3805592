"""XEP-0114 accept side: the sans-IO machine fed by the real framer, and the asyncio server on
loopback sockets (raw sockets for the error cases, slixmpp's ComponentXMPP for the happy path)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import pytest

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from s2sfast.config.service import ListenService  # noqa: E402
from s2sfast.framing import StreamFramer  # noqa: E402
from s2sfast.protocol.component import (  # noqa: E402
    COMPONENT_NS,
    ComponentMachine,
    ComponentUp,
    Route,
    Shutdown,
    handshake_digest,
)
from s2sfast.protocol.errors import StreamError  # noqa: E402
from s2sfast.protocol.events import Close, SendBytes, SetTimer, TimerFired  # noqa: E402
from s2sfast.server.component import ComponentRegistry, ComponentServer  # noqa: E402

HOSTS = ("localhost",)
PASSWORD = "s3cret"
HEADER = (
    "<stream:stream xmlns='jabber:component:accept' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>"
)


def _hosted(domain: str) -> bool:
    return any(domain == h or domain.endswith("." + h) for h in HOSTS)


class Driver:
    """The machine fed through a real StreamFramer, collecting its actions."""

    def __init__(self, *, taken: set[str] | None = None, check_from: bool = True) -> None:
        self.taken = taken or set()
        self.machine = ComponentMachine(
            password=PASSWORD,
            is_hosted=_hosted,
            is_taken=lambda d: d in self.taken,
            check_from=check_from,
            stream_id="abc123",
        )
        self.framer = StreamFramer(default_ns=COMPONENT_NS)
        self.actions: list[Any] = list(self.machine.start())

    def feed(self, data: str | bytes) -> list[Any]:
        raw = data.encode() if isinstance(data, str) else data
        out: list[Any] = []
        try:
            events = self.framer.feed(raw)
        except StreamError as exc:  # as ComponentConnection does: the machine answers
            events = []
            out.extend(self.machine.fail(exc))
        for event in events:
            out.extend(self.machine.receive(event))
        self.actions.extend(out)
        return out

    def sent(self) -> bytes:
        return b"".join(a.data for a in self.actions if isinstance(a, SendBytes))

    def close(self) -> Close | None:
        closes = [a for a in self.actions if isinstance(a, Close)]
        return closes[-1] if closes else None

    def authenticate(self, domain: str = "bot.localhost") -> None:
        self.feed(HEADER.format(to=domain))
        self.feed(f"<handshake>{handshake_digest('abc123', PASSWORD)}</handshake>")


def test_digest_is_xep0114_sha1_hex() -> None:
    assert handshake_digest("3BF96D32", "secret") == hashlib.sha1(b"3BF96D32secret").hexdigest()


def test_good_handshake_opens_the_stream() -> None:
    d = Driver()
    assert d.actions == [SetTimer(seconds=10.0)]
    out = d.feed(HEADER.format(to="Bot.LocalHost"))
    header = out[0].data.decode()
    assert "xmlns='jabber:component:accept'" in header
    assert "from='bot.localhost'" in header and "id='abc123'" in header
    out = d.feed(f"<handshake>{handshake_digest('abc123', PASSWORD).upper()}</handshake>")
    assert SendBytes(data=b"<handshake/>") in out
    assert ComponentUp(domain="bot.localhost") in out
    assert SetTimer(seconds=None) in out
    assert d.machine.state == "OPEN" and d.close() is None


def test_the_host_itself_may_be_served() -> None:
    d = Driver()
    d.authenticate("localhost")
    assert d.machine.state == "OPEN"


def test_wrong_password_is_not_authorized() -> None:
    d = Driver()
    d.feed(HEADER.format(to="bot.localhost"))
    d.feed(f"<handshake>{handshake_digest('abc123', 'wrong')}</handshake>")
    close = d.close()
    assert close is not None and close.condition == "not-authorized"
    assert d.machine.state == "ERROR"
    assert not any(isinstance(a, ComponentUp) for a in d.actions)


def test_stanza_before_handshake_is_not_authorized() -> None:
    d = Driver()
    d.feed(HEADER.format(to="bot.localhost"))
    d.feed("<message to='a@b.test' from='bot.localhost'/>")
    assert d.close() is not None and d.close().condition == "not-authorized"


@pytest.mark.parametrize("domain", ["example.org", "localhost.evil", "xlocalhost"])
def test_domain_not_hosted_is_host_unknown(domain: str) -> None:
    d = Driver()
    d.feed(HEADER.format(to=domain))
    close = d.close()
    assert close is not None and close.condition == "host-unknown"
    # RFC 6120 4.9.1.2: our header goes out before the error
    assert d.sent().startswith(b"<?xml version='1.0'?><stream:stream")


def test_missing_to_is_improper_addressing() -> None:
    d = Driver()
    d.feed(
        "<stream:stream xmlns='jabber:component:accept' "
        "xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    assert d.close() is not None and d.close().condition == "improper-addressing"


def test_server_namespace_header_is_invalid_namespace() -> None:
    d = Driver()
    d.feed(
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
        "to='bot.localhost'>"
    )
    assert d.close() is not None and d.close().condition == "invalid-namespace"


def test_second_component_for_a_domain_is_conflict() -> None:
    d = Driver(taken={"bot.localhost"})
    d.authenticate()
    assert d.close() is not None and d.close().condition == "conflict"


def test_stanzas_are_routed_with_their_addresses() -> None:
    d = Driver()
    d.authenticate()
    out = d.feed(
        "<message to='u@remote.test' from='echo@bot.localhost/x'><body>hi</body></message>"
    )
    (route,) = out
    assert route == Route(
        raw=b"<message to='u@remote.test' from='echo@bot.localhost/x'><body>hi</body></message>",
        name="message",
        from_="echo@bot.localhost/x",
        to="u@remote.test",
    )


def test_explicit_component_namespace_is_rebound_for_s2s() -> None:
    d = Driver()
    d.authenticate()
    (route,) = d.feed(
        f"<iq xmlns='{COMPONENT_NS}' type='get' id='1' to='remote.test' from='bot.localhost'>"
        "<ping xmlns='urn:xmpp:ping'/></iq>"
    )
    assert COMPONENT_NS.encode() not in route.raw
    assert route.raw.startswith(b'<iq xmlns="jabber:server" ')


def test_foreign_from_is_invalid_from_unless_check_from_is_off() -> None:
    d = Driver()
    d.authenticate()
    d.feed("<message to='u@remote.test' from='u@localhost'/>")
    assert d.close() is not None and d.close().condition == "invalid-from"

    lax = Driver(check_from=False)
    lax.authenticate()
    (route,) = lax.feed("<message to='u@remote.test' from='u@localhost'/>")
    assert route.from_ == "u@localhost"


def test_non_stanza_element_is_unsupported_stanza_type() -> None:
    d = Driver()
    d.authenticate()
    d.feed("<foo to='a.test' from='bot.localhost'/>")
    assert d.close() is not None and d.close().condition == "unsupported-stanza-type"


def test_timeout_before_handshake_is_connection_timeout() -> None:
    d = Driver()
    d.feed(HEADER.format(to="bot.localhost"))
    d.actions.extend(d.machine.receive(TimerFired()))
    assert d.close() is not None and d.close().condition == "connection-timeout"


def test_component_close_and_node_shutdown_are_clean() -> None:
    d = Driver()
    d.authenticate()
    d.feed("</stream:stream>")
    assert d.close() == Close(condition=None, text="the component closed its stream")

    d2 = Driver()
    d2.authenticate()
    d2.actions.extend(d2.machine.receive(Shutdown()))
    assert d2.close() is not None and d2.close().condition is None

    d3 = Driver()
    d3.feed(HEADER.format(to="bot.localhost"))
    d3.actions.extend(d3.machine.receive(Shutdown()))
    assert d3.close() is not None and d3.close().condition == "system-shutdown"


def test_outgoing_only_when_open() -> None:
    d = Driver()
    assert d.machine.outgoing(b"<message/>") == []
    d.authenticate()
    assert d.machine.outgoing(b"<message/>") == [SendBytes(data=b"<message/>")]


# --- the asyncio server on loopback -----------------------------------------------------------


class Harness:
    def __init__(self, **options: Any) -> None:
        self.registry = ComponentRegistry()
        self.routed: list[tuple[str, Route]] = []
        self.changes: list[tuple[str, bool]] = []
        listen = ListenService(port=0, ip_address="127.0.0.1", password=PASSWORD, **options)
        self.server = ComponentServer(
            listen,
            registry=self.registry,
            is_hosted=_hosted,
            on_route=lambda d, r: self.routed.append((d, r)),
            on_change=lambda d, up: self.changes.append((d, up)),
        )

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]


async def _read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5.0) -> bytes:
    data = b""
    while marker not in data:
        chunk = await asyncio.wait_for(reader.read(4096), timeout)
        if not chunk:
            break
        data += chunk
    return data


async def _raw_component(
    port: int, domain: str, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADER.format(to=domain).encode())
    header = await _read_until(reader, b">")
    match = re.search(rb"id='([^']+)'", header)
    if match is None:
        return reader, writer, header
    digest = handshake_digest(match.group(1).decode(), password)
    writer.write(f"<handshake>{digest}</handshake>".encode())
    return reader, writer, header + await _read_until(reader, b"/>")


async def test_raw_socket_good_and_bad_password() -> None:
    h = Harness()
    await h.server.start()
    try:
        reader, writer, got = await _raw_component(h.port, "bot.localhost", PASSWORD)
        assert got.endswith(b"<handshake/>")
        await asyncio.sleep(0)
        assert h.registry.get("bot.localhost") is not None
        assert h.changes == [("bot.localhost", True)]

        r2, w2, got2 = await _raw_component(h.port, "other.localhost", "wrong")
        rest = await _read_until(r2, b"</stream:stream>")
        assert b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in got2 + rest
        assert await r2.read() == b""  # the server closed the connection
        assert h.registry.get("other.localhost") is None

        r3, w3, got3 = await _raw_component(h.port, "elsewhere.example", PASSWORD)
        rest = await _read_until(r3, b"</stream:stream>")
        assert b"<host-unknown" in got3 + rest

        r4, w4, got4 = await _raw_component(h.port, "bot.localhost", PASSWORD)
        rest = await _read_until(r4, b"</stream:stream>")
        assert b"<conflict" in got4 + rest
        # the first one keeps its domain
        assert h.registry.get("bot.localhost") is not None

        writer.write(b"<message to='u@remote.test' from='bot.localhost'><body>x</body></message>")
        for _ in range(100):
            if h.routed:
                break
            await asyncio.sleep(0.01)
        assert h.routed[0][0] == "bot.localhost"
        assert h.routed[0][1].to == "u@remote.test"

        writer.write(b"</stream:stream>")
        assert (await _read_until(reader, b"</stream:stream>")).endswith(b"</stream:stream>")
        for _ in range(100):
            if h.registry.get("bot.localhost") is None:
                break
            await asyncio.sleep(0.01)
        assert h.registry.get("bot.localhost") is None
        assert h.changes[-1] == ("bot.localhost", False)
        for w in (writer, w2, w3, w4):
            w.close()
    finally:
        await h.server.close()


async def test_kick_old_replaces_the_first_component() -> None:
    h = Harness(conflict_behaviour="kick_old")
    await h.server.start()
    try:
        r1, w1, got1 = await _raw_component(h.port, "bot.localhost", PASSWORD)
        first = h.registry.get("bot.localhost")
        r2, w2, got2 = await _raw_component(h.port, "bot.localhost", PASSWORD)
        assert got2.endswith(b"<handshake/>")
        kicked = await _read_until(r1, b"</stream:stream>")
        assert b"<conflict" in kicked
        second = h.registry.get("bot.localhost")
        assert second is not None and second is not first
        w1.close()
        w2.close()
    finally:
        await h.server.close()


async def test_silent_connection_times_out() -> None:
    h = Harness()
    h.server._state_timeout = 0.2
    await h.server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        data = await _read_until(reader, b"</stream:stream>")
        assert b"<connection-timeout" in data
        writer.close()
    finally:
        await h.server.close()


async def test_slixmpp_component_exchanges_stanzas_and_is_closed_on_shutdown() -> None:
    slixmpp = pytest.importorskip("slixmpp")
    h = Harness()
    await h.server.start()
    xmpp = slixmpp.ComponentXMPP("bot.localhost", PASSWORD, "127.0.0.1", h.port)
    started = asyncio.Event()
    received: asyncio.Queue[Any] = asyncio.Queue()
    disconnected = asyncio.Event()
    xmpp.add_event_handler("session_start", lambda _: started.set())
    xmpp.add_event_handler("message", received.put_nowait)
    xmpp.add_event_handler("disconnected", lambda _: disconnected.set())
    try:
        xmpp.connect()
        await asyncio.wait_for(started.wait(), 10)
        xmpp.send_message(mto="u@remote.test", mbody="hello", mfrom="echo@bot.localhost")
        for _ in range(200):
            if h.routed:
                break
            await asyncio.sleep(0.01)
        domain, route = h.routed[0]
        assert domain == "bot.localhost" and route.name == "message"
        assert route.from_ == "echo@bot.localhost" and b"hello" in route.raw

        conn = h.registry.get("bot.localhost")
        assert conn is not None
        assert conn.send(
            b"<message from='u@remote.test' to='echo@bot.localhost'><body>back</body></message>"
        )
        msg = await asyncio.wait_for(received.get(), 10)
        assert msg["body"] == "back" and str(msg["from"]) == "u@remote.test"

        await h.server.close()
        await asyncio.wait_for(disconnected.wait(), 10)
        assert h.registry.get("bot.localhost") is None
    finally:
        xmpp.disconnect()
        await h.server.close()


async def test_shutdown_mid_handshake_is_system_shutdown() -> None:
    h = Harness()
    await h.server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(HEADER.format(to="bot.localhost").encode())
    await _read_until(reader, b"id=")
    await h.server.close()
    data = await _read_until(reader, b"</stream:stream>")
    assert b"<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
    assert await reader.read() == b""
    writer.close()


async def test_shaped_component_still_delivers_everything_in_order() -> None:
    # max_rate 2000 B/s against ~6 KB: reading pauses and resumes several times on the way
    h = Harness(max_rate=2000)
    await h.server.start()
    try:
        r, w, got = await _raw_component(h.port, "bot.localhost", PASSWORD)
        assert got.endswith(b"<handshake/>")
        body = "x" * 100
        for i in range(40):
            w.write(
                f"<message id='{i}' to='u@remote.test' from='bot.localhost'><body>{body}</body>"
                "</message>".encode()
            )
        for _ in range(1000):
            if len(h.routed) == 40:
                break
            await asyncio.sleep(0.02)
        ids = [re.search(rb"id='(\d+)'", route.raw).group(1) for _, route in h.routed]
        assert ids == [str(i).encode() for i in range(40)]
        w.close()
    finally:
        await h.server.close()


async def test_oversized_stanza_is_policy_violation() -> None:
    h = Harness(max_stanza_size=1000)
    await h.server.start()
    try:
        r, w, got = await _raw_component(h.port, "bot.localhost", PASSWORD)
        assert got.endswith(b"<handshake/>")
        w.write(
            b"<message to='u@remote.test' from='bot.localhost'><body>"
            + b"x" * 2000
            + b"</body></message>"
        )
        data = await _read_until(r, b"</stream:stream>")
        assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
        assert h.routed == []
        w.close()
    finally:
        await h.server.close()
