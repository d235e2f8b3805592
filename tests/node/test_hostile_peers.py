"""Hostile peers against a running node (issue 8, item 4).

Each test: one raw-socket peer does one bad thing to the victim node ``v.test`` while the
victim and an honest node ``h.test`` exchange numbered stanzas both ways. Each checks what the
attacker sees on the wire (the stream error or close), that the node's memory stays bounded,
and that the honest federation delivered every stanza in order, none lost or duplicated.

The limits these tests rely on are named in s2sfast.limits (pre-auth stanza size, pending
dialback claims per stream, negotiating connections per address).
"""

from __future__ import annotations

import asyncio

import pytest
from hostile_helpers import (
    HONEST,
    MAX_STANZA,
    VICTIM,
    FakeServer,
    HostilePeer,
    MemoryProbe,
    MiB,
    arena_factory,
    authenticate_as,
    header,
    until,
)

from s2sfast import limits


@pytest.fixture
def arena(federation, tls_certfile, tls_ca_file):
    return arena_factory(federation, tls_certfile, tls_ca_file)


@pytest.fixture
async def fakes():
    """Factory for FakeServers (stopped at the end)."""
    made: list[FakeServer] = []

    async def make(behaviour: str, domain: str = "evil.test") -> FakeServer:
        fake = FakeServer(behaviour, domain)
        await fake.start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        await fake.stop()


def delivered_ids(node, prefix: str) -> list[str]:
    return [s.id for s in node.inbox.seen if s.id and s.id.startswith(prefix)]


def assert_stream_error(out, condition: str) -> None:
    """The attacker saw our header, the stream error, ``</stream:stream>`` and the close."""
    assert out.parse_error is None, out.parse_error
    assert out.header is not None, f"no stream header before the error: {out.data[:200]!r}"
    assert out.error == condition, f"expected {condition}, got {out.error} ({out.text})"
    assert out.stream_closed, "no </stream:stream> after the stream error"
    assert out.eof, "the node kept the TCP connection open"


# --- bad bytes ---------------------------------------------------------------------------------


async def test_garbage_before_the_header(arena):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    peer.send(b"GET / HTTP/1.1\r\nHost: v.test\r\n\r\n")
    assert_stream_error(await peer.outcome(), "not-well-formed")
    await a.finish()


RESTRICTED = {
    "comment": header("evil.test", VICTIM) + b"<!-- hello -->",
    "processing-instruction": header("evil.test", VICTIM) + b"<?evil run?>",
    "dtd-before-header": b"<?xml version='1.0'?><!DOCTYPE stream:stream>"
    + header("evil.test", VICTIM),
    "comment-inside-a-stanza": header("evil.test", VICTIM)
    + b"<message to='bob@v.test'><!-- x --></message>",
    "cdata-between-stanzas": header("evil.test", VICTIM) + b"<![CDATA[x]]>",
}


@pytest.mark.parametrize("kind", sorted(RESTRICTED))
async def test_restricted_xml(arena, kind):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    peer.send(RESTRICTED[kind])
    out = await peer.outcome()
    # RFC 6120 11.1: restricted-xml; XML that is not even allowed at stream level
    # (CDATA between stanzas) is not-well-formed
    want = "not-well-formed" if kind == "cdata-between-stanzas" else "restricted-xml"
    assert_stream_error(out, want)
    await a.finish()


LAUGHS = (
    b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    + b"".join(
        b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>"
)


@pytest.mark.parametrize("where", ["prolog", "stanza"])
async def test_billion_laughs(arena, where):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    async with MemoryProbe() as mem:
        if where == "prolog":
            peer.send(LAUGHS + header("evil.test", VICTIM) + b"<message>&lol9;</message>")
        else:
            peer.send(header("evil.test", VICTIM) + b"<message><body>&lol9;</body></message>")
        out = await peer.outcome()
    assert_stream_error(out, "restricted-xml")
    mem.assert_below(16 * MiB, "billion laughs")
    assert b"lollol" not in out.data
    await a.finish()


XXE_DTD = b"<?xml version='1.0'?><!DOCTYPE m [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"


@pytest.mark.parametrize("where", ["prolog", "stanza", "authenticated"])
async def test_external_entity(arena, fakes, where):
    fake = await fakes("authoritative")
    a = await arena(addresses={"evil.test": fake.port})
    peer = await HostilePeer.connect(a.port)
    if where == "prolog":
        peer.send(XXE_DTD + header("evil.test", VICTIM))
    elif where == "stanza":
        peer.send(header("evil.test", VICTIM) + b"<message><body>&xxe;</body></message>")
    else:
        await authenticate_as(peer, domain="evil.test", victim=VICTIM)
        peer.send(
            b"<message from='m@evil.test' to='bob@v.test' id='xxe'><body>&xxe;</body></message>"
        )
    out = await peer.outcome()
    assert_stream_error(out, "restricted-xml")
    assert b"root:" not in out.data
    assert delivered_ids(a.victim, "xxe") == []
    await a.finish()


async def test_endless_attribute_is_cut_at_max_stanza_size(arena):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    async with MemoryProbe() as mem:
        sent = await peer.flood(
            header("evil.test", VICTIM) + b"<db:result from='evil.test' to='v.test' x='",
            b"a",
            total=32 * MiB,
        )
    assert_stream_error(peer.out, "policy-violation")
    assert sent < 32 * MiB, "the node read 32 MiB of one attribute without closing"
    mem.assert_below(16 * MiB, "endless attribute")
    await a.finish()


async def test_endless_attribute_before_auth_without_max_stanza_size(arena):
    """With max_stanza_size unset ("infinity"), an unauthenticated peer still gets only
    limits.PRE_AUTH_MAX_STANZA bytes per stanza."""
    a = await arena(max_stanza_size=None)
    peer = await HostilePeer.connect(a.port)
    async with MemoryProbe() as mem:
        await peer.flood(
            header("evil.test", VICTIM) + b"<db:result from='evil.test' to='v.test' x='",
            b"a",
            total=8 * MiB,
        )
    assert_stream_error(peer.out, "policy-violation")
    mem.assert_below(4 * MiB, "endless attribute before authentication")
    await a.finish()


async def test_endless_stanza_in_one_byte_chunks(arena, fakes):
    """An authenticated peer trickles one stanza byte by byte past max_stanza_size."""
    fake = await fakes("authoritative")
    a = await arena(addresses={"evil.test": fake.port})
    peer = await HostilePeer.connect(a.port)
    await authenticate_as(peer, domain="evil.test", victim=VICTIM)
    body = b"<message from='m@evil.test' to='bob@v.test' id='big'><body>" + b"x" * (2 * MAX_STANZA)
    async with MemoryProbe() as mem:
        sent = await peer.trickle(body, chunk=1)
        out = await peer.outcome()
    assert_stream_error(out, "policy-violation")
    assert MAX_STANZA - 200 < sent < 2 * MAX_STANZA, sent
    mem.assert_below(16 * MiB, "endless stanza")
    assert delivered_ids(a.victim, "big") == []
    await a.finish()


async def test_deep_nesting(arena):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    async with MemoryProbe() as mem:
        peer.send(header("evil.test", VICTIM) + b"<message>" + b"<a>" * 100_000)
        out = await peer.outcome()
    assert_stream_error(out, "policy-violation")
    mem.assert_below(16 * MiB, "deep nesting")
    await a.finish()


BAD_UTF8 = {
    "invalid-byte": b"\xff\xfe",
    "overlong-slash": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "beyond-unicode": b"\xf4\x90\x80\x80",
    "truncated-sequence": b"\xe6\x97<",
}


@pytest.mark.parametrize("kind", sorted(BAD_UTF8))
async def test_invalid_utf8(arena, kind):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    peer.send(header("evil.test", VICTIM) + b"<message><body>" + BAD_UTF8[kind] + b"</body>")
    assert_stream_error(await peer.outcome(), "not-well-formed")
    await a.finish()


async def test_invalid_utf8_in_the_header(arena):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    peer.send(header("evil.test", VICTIM).replace(b"evil.test", b"evil\xff.test"))
    assert_stream_error(await peer.outcome(), "not-well-formed")
    await a.finish()


# --- stalls ------------------------------------------------------------------------------------


STALLS = {
    "before-the-header": b"",
    "inside-the-header": b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' to='v.t",
    "after-the-features": header("evil.test", VICTIM),
    "mid-stanza": header("evil.test", VICTIM) + b"<db:result from='evil.test' to='v.test'>ab",
}


@pytest.mark.parametrize("step", list(STALLS))
async def test_stall_is_closed_with_connection_timeout(arena, step):
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    peer.send(STALLS[step])
    out = await peer.outcome()
    assert_stream_error(out, "connection-timeout")
    await a.finish()


async def test_stall_in_dialback_authoritative_server_never_answers(arena, fakes):
    """The attacker claims stall.test, whose server accepts the verify stream and says
    nothing more: the claim is never authorised, and the verify stream times out too."""
    fake = await fakes("stall-dialback", "stall.test")
    a = await arena(addresses={"stall.test": fake.port})
    peer = await HostilePeer.connect(a.port)
    await peer.open("stall.test", VICTIM)
    peer.send("<db:result from='stall.test' to='v.test'>" + "ab" * 32 + "</db:result>")
    peer.send("<message from='m@stall.test' to='bob@v.test' id='stalled'/>")
    out = await peer.outcome()
    results = out.named("result")
    assert all(r.type != "valid" for r in results), [r.raw for r in results]
    # either our stream's own state_timeout fires first, or the verify fails and the
    # refused claim leaves the stream with nothing authorised
    assert out.error in ("connection-timeout", "not-authorized") or results, out.data[-300:]
    assert out.eof
    assert delivered_ids(a.victim, "stalled") == []
    # the outbound verify stream to stall.test gives up on its own
    assert await until(lambda: b"connection-timeout" in fake.everything())
    await a.finish()


async def test_stall_in_dialback_receiving_server_never_answers(arena, fakes):
    """The victim originates to mute.test, which takes the db:result and never answers: the
    victim's stream times out and nothing is sent before dialback succeeds."""
    fake = await fakes("stall-dialback", "mute.test")
    a = await arena(addresses={"mute.test": fake.port})
    await a.victim.send(b"<message from='alice@v.test' to='x@mute.test' id='to-mute'/>")
    await until(lambda: b"connection-timeout" in fake.everything())
    seen = fake.everything()
    assert b"<db:result" in seen and b"connection-timeout" in seen
    assert b"to-mute" not in seen, "a stanza went out before dialback succeeded"
    await a.finish()


# --- dialback abuse ----------------------------------------------------------------------------


async def test_flood_of_db_result_for_many_domains(arena, fakes):
    """One stream claims 300 domains whose servers never answer: pending verifications (and
    the outbound verify streams they open) stay bounded."""
    fake = await fakes("mute", "flood.test")
    domains = [f"d{i}.flood.test" for i in range(300)]
    a = await arena(addresses={d: fake.port for d in domains})
    peer = await HostilePeer.connect(a.port)
    await peer.open("d0.flood.test", VICTIM)
    async with MemoryProbe() as mem:
        for d in domains:
            if not peer.send(f"<db:result from='{d}' to='v.test'>{'ab' * 32}</db:result>"):
                break
        await peer.drain()
        reading = asyncio.ensure_future(peer.outcome())
        links = 0
        while not reading.done():  # the most verify links the node held at any moment
            links = max(links, len(a.victim.router.outbound))
            await asyncio.sleep(0.01)
        out = reading.result()
    assert links <= limits.MAX_PENDING_RESULTS_PER_STREAM + 1, (
        f"{links} verify links for one stream"
    )
    assert fake.connections <= limits.MAX_PENDING_RESULTS_PER_STREAM + 1, fake.connections
    assert_stream_error(out, "policy-violation")
    mem.assert_below(32 * MiB, "db:result flood")
    await a.finish()


async def test_db_verify_answers_nobody_asked_for(arena):
    """Answers (type='valid') for verifications we never requested authorise nothing."""
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    head, _ = await peer.open(HONEST, VICTIM)
    sid = head.attrs["id"]
    peer.send(f"<db:verify from='{HONEST}' to='{VICTIM}' id='{sid}' type='valid'/>")
    peer.send(f"<db:result from='{HONEST}' to='{VICTIM}' type='valid'/>")
    peer.send(f"<message from='eve@{HONEST}' to='bob@{VICTIM}' id='unasked'/>")
    out = await peer.outcome()
    assert delivered_ids(a.victim, "unasked") == []
    assert not out.named("verify") and not out.named("result"), "the node answered an answer"
    assert_stream_error(out, "not-authorized")  # the message: nothing was authorised
    await a.finish()


async def test_db_verify_answer_on_the_victims_outbound_stream(arena, fakes):
    """An authoritative server answers a verification nobody asked for on the victim's own
    outbound stream: dropped, and the pair it names is not authorised."""
    fake = await fakes("authoritative")
    a = await arena(addresses={"evil.test": fake.port})
    peer = await HostilePeer.connect(a.port)
    await authenticate_as(peer, domain="evil.test", victim=VICTIM)
    # the fake's verify stream to us is gone; make it speak on ours
    fake_writer = fake._writers[0]
    fake_writer.write(
        f"<db:verify from='{HONEST}' to='{VICTIM}' id='made-up' type='valid'/>".encode()
    )
    peer.send(f"<message from='eve@{HONEST}' to='bob@{VICTIM}' id='via-verify'/>")
    peer.send("<message from='m@evil.test' to='bob@v.test' id='legit-evil'/>")
    # sent after the spoof on the same stream: once it is in, the spoof was decided
    await until(lambda: delivered_ids(a.victim, "legit-evil"))
    assert delivered_ids(a.victim, "via-verify") == []
    assert delivered_ids(a.victim, "legit-evil") == ["legit-evil"]
    await peer.close()
    await a.finish()


async def test_dialback_claim_for_an_honest_domain_with_a_forged_key(arena):
    """The attacker claims h.test with a made-up key: h.test's server says invalid."""
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    await peer.open(HONEST, VICTIM)
    peer.send(f"<db:result from='{HONEST}' to='{VICTIM}'>{'0' * 64}</db:result>")
    verdict = await peer.next_stanza()
    peer.send(f"<message from='eve@{HONEST}' to='bob@{VICTIM}' id='forged'/>")
    out = await peer.outcome()
    assert (verdict.name, verdict.type) == ("result", "invalid"), verdict.raw
    assert out.error == "not-authorized"
    assert out.stream_closed and out.eof
    assert delivered_ids(a.victim, "forged") == []
    await a.finish()


async def test_spoofed_from_domain_is_not_delivered(arena, fakes):
    fake = await fakes("authoritative")
    a = await arena(addresses={"evil.test": fake.port})
    peer = await HostilePeer.connect(a.port)
    await authenticate_as(peer, domain="evil.test", victim=VICTIM)
    peer.send("<message from='m@evil.test' to='bob@v.test' id='honest-evil'/>")
    peer.send(f"<message from='eve@{HONEST}' to='bob@{VICTIM}' id='spoof-1'/>")
    peer.send(f"<message from='{HONEST}' to='bob@{VICTIM}' id='spoof-2'/>")
    peer.send("<message to='bob@v.test' id='spoof-3'/>")
    peer.send("<message from='m@evil.test' to='bob@h.test' id='spoof-4'/>")
    peer.send("<message from='m@evil.test' to='bob@v.test' id='after-spoof'/>")
    # the last one sent: once it is in, every spoof before it was decided
    await until(lambda: delivered_ids(a.victim, "after-spoof"))
    await until(lambda: delivered_ids(a.honest, "spoof"), timeout=0.2)
    assert delivered_ids(a.victim, "spoof") == []
    assert delivered_ids(a.honest, "spoof") == []
    assert delivered_ids(a.victim, "honest-evil") == ["honest-evil"]
    await peer.close()
    await a.finish()


async def test_stanza_before_authentication_gets_not_authorized(arena):
    """RFC 6120 4.9.3.12: not-authorized, and nothing delivered."""
    a = await arena()
    peer = await HostilePeer.connect(a.port)
    await peer.open("evil.test", VICTIM)
    peer.send("<message from='m@evil.test' to='bob@v.test' id='early'/>")
    peer.send(f"<message from='eve@{HONEST}' to='bob@{VICTIM}' id='early-spoof'/>")
    out = await peer.outcome()
    assert_stream_error(out, "not-authorized")
    assert delivered_ids(a.victim, "early") == []
    await a.finish()


# --- STARTTLS required -------------------------------------------------------------------------


async def test_plaintext_stanza_under_required_is_refused(arena):
    a = await arena(mode="required")
    peer = await HostilePeer.connect(a.port)
    _, features = await peer.open("evil.test", VICTIM)
    assert b"<required/>" in features.raw
    peer.send(f"<message from='eve@{HONEST}' to='bob@{VICTIM}' id='plain'/>")
    out = await peer.outcome()
    assert_stream_error(out, "policy-violation")
    assert delivered_ids(a.victim, "plain") == []
    await a.finish()


@pytest.mark.parametrize("element", ["result", "verify"])
async def test_tls_downgrade_inbound_skipping_starttls(arena, element):
    """Under required, dialback without STARTTLS first is refused."""
    a = await arena(mode="required")
    peer = await HostilePeer.connect(a.port)
    head, _ = await peer.open("evil.test", VICTIM)
    extra = f" id='{head.attrs['id']}'" if element == "verify" else ""
    peer.send(f"<db:{element} from='evil.test' to='v.test'{extra}>{'ab' * 32}</db:{element}>")
    out = await peer.outcome()
    assert_stream_error(out, "policy-violation")
    assert not out.named(element)
    await a.finish()


async def test_tls_downgrade_outbound_stripped_starttls(arena, fakes):
    """A man in the middle strips STARTTLS from the features: the victim (required) sends
    neither dialback nor stanzas in plaintext, and the stanza bounces to its sender."""
    fake = await fakes("strip-tls", "stripped.test")
    a = await arena(mode="required", addresses={"stripped.test": fake.port})
    await a.victim.send(b"<message from='alice@v.test' to='x@stripped.test' id='strip-1'/>")

    def bounced() -> bool:
        return any(s.id == "strip-1" and s.type == "error" for s in a.victim.inbox.seen)

    assert await until(bounced), "the stanza to the stripped server neither went nor bounced"
    seen = fake.everything()
    assert b"db:result" not in seen and b"strip-1" not in seen, seen
    assert b"policy-violation" in seen
    await a.finish()


# --- many connections --------------------------------------------------------------------------


def _negotiating(node) -> int:
    """Inbound streams the node holds that are admitted but not authenticated."""
    return sum(
        1
        for s in node.router.streams
        if s.direction == "in" and getattr(s, "admitted", True) and not s.authenticated
    )


async def _half_open(a, count: int) -> None:
    peers = []
    most = 0
    async with MemoryProbe() as mem:
        for i in range(count):
            peer = await HostilePeer.connect(a.port)
            peer.send(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' to='v.")
            peers.append(peer)
            if i % 50 == 49:
                await asyncio.sleep(0)
                most = max(most, _negotiating(a.victim))
        await asyncio.sleep(0.1)
        most = max(most, _negotiating(a.victim))
        outs = await asyncio.gather(*(p.outcome(timeout=60) for p in peers))
    errors = {o.error for o in outs}
    # timed out, or refused at once by the per-address cap (limits.MAX_NEGOTIATING_PER_ADDRESS)
    assert errors <= {"connection-timeout", "policy-violation"}, errors
    assert most <= limits.MAX_NEGOTIATING_PER_ADDRESS, f"{most} negotiations held at once"
    assert all(o.eof for o in outs)
    # generous: a negotiating plaintext stream should cost a few KiB
    mem.assert_below(max(32 * MiB, count * 64 * 1024), f"{count} half-open connections")
    for p in peers:
        await p.close()
    await a.finish()
    left = [s for s in a.victim.router.streams if s.direction == "in" and not s.authenticated]
    assert left == [], f"{len(left)} half-open streams still held"


async def test_300_half_open_connections(arena):
    a = await arena()
    await _half_open(a, 300)


@pytest.mark.slow
async def test_1000_half_open_connections(arena):
    a = await arena()
    await _half_open(a, 1000)


async def test_stream_error_survives_a_peer_that_reads_late(arena, fakes):
    """A peer that overshoots max_stanza_size and only reads after writing must still find
    the policy-violation stream error in its receive buffer (RFC 6120 4.4: send the error,
    then close; do not reset the connection under it)."""
    fake = await fakes("authoritative")
    a = await arena(addresses={"evil.test": fake.port})
    peer = await HostilePeer.connect(a.port)
    await authenticate_as(peer, domain="evil.test", victim=VICTIM)
    body = b"<message from='m@evil.test' to='bob@v.test' id='big'><body>" + b"x" * (2 * MAX_STANZA)
    await peer.trickle(body, chunk=512, read=False)
    await asyncio.sleep(0.3)
    out = await peer.outcome()
    assert_stream_error(out, "policy-violation")
    await a.finish()


async def test_the_pre_auth_limit_lifts_after_authentication(arena, fakes):
    """A stanza above limits.PRE_AUTH_MAX_STANZA but within max_stanza_size is refused
    before authentication and delivered after it (honest peers keep the configured limit)."""
    assert limits.PRE_AUTH_MAX_STANZA < 12 * 1024 < MAX_STANZA
    fake = await fakes("authoritative")
    a = await arena(addresses={"evil.test": fake.port})
    big = "<message from='m@evil.test' to='bob@v.test' id='{id}'><body>" + "b" * 12 * 1024
    big += "</body></message>"
    early = await HostilePeer.connect(a.port)
    await early.open("evil.test", VICTIM)
    early.send(big.format(id="too-early"))
    assert_stream_error(await early.outcome(), "policy-violation")
    peer = await HostilePeer.connect(a.port)
    await authenticate_as(peer, domain="evil.test", victim=VICTIM)
    peer.send(big.format(id="big-ok"))
    got = await a.victim.inbox.get()
    while got.id != "big-ok":
        got = await a.victim.inbox.get()
    assert len(got.raw) > 12 * 1024
    assert delivered_ids(a.victim, "too-early") == []
    await peer.close()
    await a.finish()
