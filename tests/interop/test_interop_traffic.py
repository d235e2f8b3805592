"""Stanzas end to end between a user of the peer (Prosody or ejabberd, over c2s) and the s2sfast
Node handler, over TLS-required S2S on both sides: messages, presences and iq round trips,
non-ASCII text, 1,000 stanzas in order with none lost."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from interop_c2s import local, text_of
from interop_flow import error_of, eventually, is_message, node_to_bob
from interop_node import A, B, node_config, parse

from s2sfast.config import AddressOverride

# Non-ASCII text incl. a 4-byte UTF-8 character, plus characters that must stay escaped
TEXT = "grüße ☃ 日本語 😀 café æøå & <tag> \"q\" 's'"
ESCAPED = TEXT.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
PING = "urn:xmpp:ping"
A2 = "a2.test"  # a second domain served by the same node
C = "c.test"  # a second peer


@pytest.fixture
async def linked(peer, s2sfast_node, c2s, ports, tls_certfile):
    """The peer (S2S TLS required) and s2sfast (required) federating; bob logged in. The Node
    answers iq pings to a.test and its users, as a server built on it would."""
    (port,) = ports(1)
    srv = peer(tls="required", remotes={A: port})
    node = await s2sfast_node(
        node_config(port, mode="required", certfile=tls_certfile(A), peer_port=srv.s2s_port)
    )

    async def answer_pings(st) -> None:
        if st.name == "iq" and st.type == "get" and PING.encode() in st.raw:
            await node.send(
                f"<iq type='result' from='{st.to}' to='{st.from_}' id='{st.id}'/>".encode()
            )

    node.on_stanza(answer_pings)
    bob = await c2s(srv, "bob")
    return srv, node, bob


async def test_messages_with_non_ascii_text_both_ways(linked):
    peer, node, bob = linked
    bob.send(f"<message to='carol@{A}/x' id='u1' type='chat'><body>{ESCAPED}</body></message>")
    got = await node.inbox.get(lambda s: s.id == "u1")
    el = parse(got.raw)
    assert (got.from_, got.to) == (bob.full_jid, f"carol@{A}/x")
    assert text_of(el, "body") == TEXT

    await node.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='u2' type='chat'>"
        f"<body>{ESCAPED}</body><subject>ünïcødé</subject></message>".encode()
    )
    m = await bob.wait_for(lambda e: is_message(e, "u2"))
    assert (m.get("from"), m.get("type")) == (f"carol@{A}/x", "chat")
    assert text_of(m, "body") == TEXT and text_of(m, "subject") == "ünïcødé"
    assert all(c.tls for c in node.connections())


async def test_presences_both_ways(linked):
    peer, node, bob = linked
    # directed presence and a subscription request from bob
    bob.send(f"<presence to='carol@{A}/x' id='pr1'><status>{ESCAPED}</status></presence>")
    got = await node.inbox.get(lambda s: s.id == "pr1")
    assert (got.name, got.type, got.from_) == ("presence", None, bob.full_jid)
    assert text_of(parse(got.raw), "status") == TEXT
    bob.send(f"<presence to='carol@{A}' type='subscribe' id='sub1'/>")
    sub = await node.inbox.get(lambda s: s.name == "presence" and s.type == "subscribe")
    assert (sub.to, sub.from_) == (f"carol@{A}", f"bob@{B}")  # Prosody sends the bare JID

    # from s2sfast: directed presence to bob's resource, and a subscription request
    show = "<show>away</show>"
    await node.send(
        f"<presence from='carol@{A}/x' to='{bob.full_jid}' id='pr2'>{show}</presence>".encode()
    )
    p = await bob.wait_for(lambda e: local(e.tag) == "presence" and e.get("id") == "pr2")
    assert p.get("from") == f"carol@{A}/x" and text_of(p, "show") == "away"
    await node.send(
        f"<presence from='carol@{A}' to='bob@{B}' type='subscribe' id='sub2'/>".encode()
    )
    s = await bob.wait_for(lambda e: local(e.tag) == "presence" and e.get("type") == "subscribe")
    assert s.get("from") == f"carol@{A}"


async def test_iq_ping_round_trips(linked):
    peer, node, bob = linked
    # bob pings the s2sfast domain; the Node's handler answers
    bob.send(f"<iq type='get' to='{A}' id='ping1'><ping xmlns='{PING}'/></iq>")
    r = await bob.wait_for(lambda e: local(e.tag) == "iq" and e.get("id") == "ping1")
    assert (r.get("type"), r.get("from")) == ("result", A)
    # s2sfast pings Prosody's domain (mod_ping answers) ...
    await node.send(
        f"<iq type='get' from='{A}' to='{B}' id='ping2'><ping xmlns='{PING}'/></iq>".encode()
    )
    r2 = await node.inbox.get(lambda s: s.id == "ping2")
    assert (r2.name, r2.type, r2.from_, r2.to) == ("iq", "result", B, A)
    # ... and bob's resource, which answers itself
    await node.send(
        f"<iq type='get' from='carol@{A}/x' to='{bob.full_jid}' id='ping3'>"
        f"<ping xmlns='{PING}'/></iq>".encode()
    )
    q = await bob.wait_for(lambda e: local(e.tag) == "iq" and e.get("id") == "ping3")
    assert q.get("type") == "get" and q.get("from") == f"carol@{A}/x"
    bob.send(f"<iq type='result' to='carol@{A}/x' id='ping3'/>")
    r3 = await node.inbox.get(lambda s: s.id == "ping3")
    assert (r3.type, r3.from_) == ("result", bob.full_jid)
    # an iq to a resource that is not there comes back as an error from Prosody
    await node.send(
        f"<iq type='get' from='carol@{A}/x' to='bob@{B}/gone' id='ping4'>"
        f"<ping xmlns='{PING}'/></iq>".encode()
    )
    e4 = await node.inbox.get(lambda s: s.id == "ping4")
    assert e4.type == "error"
    assert error_of(parse(e4.raw))[1] == "service-unavailable"


async def test_large_stanzas_both_ways(linked):
    """200 KB of 2-byte UTF-8 text: many TLS records, many reads, one stanza (Prosody's own
    limits are 256 KB for c2s and 512 KB for s2s stanzas)."""
    peer, node, bob = linked
    big = "é" * 100_000
    await node.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='big1' type='chat'>"
        f"<body>{big}</body></message>".encode()
    )
    m = await bob.wait_for(lambda e: is_message(e, "big1"), 30)
    assert text_of(m, "body") == big
    bob.send(f"<message to='carol@{A}/x' id='big2' type='chat'><body>{big}</body></message>")
    st = await node.inbox.get(lambda s: s.id == "big2", 30)
    assert text_of(parse(st.raw), "body") == big


async def test_two_local_domains_each_authenticated_with_the_peer(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """s2sfast serving a.test and a2.test: each domain pair is dialback-authenticated on its own,
    in both directions, and the peer delivers to and from both."""
    (port,) = ports(1)
    srv = peer(tls="optional", remotes={A: port, A2: port})
    config = node_config(
        port, mode="optional", certfile=tls_certfile(A, A2), peer_port=srv.s2s_port
    )
    node = await s2sfast_node(dataclasses.replace(config, hosts=(A, A2)))
    bob = await c2s(srv, "bob")
    for frm in (f"carol@{A}/x", f"dave@{A2}/y"):
        await node.send(
            f"<message from='{frm}' to='{bob.full_jid}' id='{frm}' type='chat'>"
            f"<body>hi</body></message>".encode()
        )
        m = await bob.wait_for(lambda e, frm=frm: is_message(e, frm))
        assert m.get("from") == frm
        bob.send(f"<message to='{frm}' id='re-{frm}' type='chat'><body>re</body></message>")
        got = await node.inbox.get(lambda s, frm=frm: s.id == f"re-{frm}")
        assert got.to == frm
    assert await eventually(
        lambda: (
            sorted(s.completed[0] for s in srv.completed_sessions("out")) == [(B, A), (B, A2)]
            and sorted(s.completed[0] for s in srv.completed_sessions("in")) == [(A, B), (A2, B)]
        )
    ), srv.s2s_sessions()
    pairs = {p for c in node.connections() for p in c.pairs}
    assert pairs == {(A, B), (A2, B)}


async def test_thousand_stanzas_each_way_in_order(linked):
    peer, node, bob = linked
    n = 1000
    batch = "".join(
        f"<message to='carol@{A}/x' id='b{i}' type='chat'><body>{i} {ESCAPED}</body></message>"
        for i in range(n)
    )
    bob.send(batch)
    got = [await node.inbox.get(lambda s: s.id.startswith("b"), timeout=60) for _ in range(n)]
    assert [s.id for s in got] == [f"b{i}" for i in range(n)]
    assert text_of(parse(got[-1].raw), "body") == f"{n - 1} {TEXT}"

    for i in range(n):
        await node.send(
            f"<message from='carol@{A}/x' to='{bob.full_jid}' id='n{i}' type='chat'>"
            f"<body>{i} {ESCAPED}</body></message>".encode()
        )

    async def all_received() -> list[str]:
        ids: list[str] = []
        while len(ids) < n:
            m = await bob.wait_for(lambda e: local(e.tag) == "message", 60)
            ids.append(m.get("id"))
            assert m.get("type") == "chat", m.attrib  # no bounce among them
        return ids

    ids = await asyncio.wait_for(all_received(), 90)
    assert ids == [f"n{i}" for i in range(n)]
    assert await node.inbox.nothing(lambda s: s.type == "error", 0.3)


async def test_extension_payloads_keep_their_namespaces(linked):
    """Children in other namespaces (default and prefixed) survive Prosody's re-serialisation
    and s2sfast's raw forwarding, both ways."""
    peer, node, bob = linked
    payload = (
        "<x xmlns='jabber:x:oob'><url>https://example.test/ü</url></x>"
        "<foo:bar xmlns:foo='urn:example:foo' foo:attr='v'><foo:baz>z</foo:baz></foo:bar>"
    )
    bob.send(f"<message to='carol@{A}/x' id='ns1' type='chat'><body>b</body>{payload}</message>")
    got = parse((await node.inbox.get(lambda s: s.id == "ns1")).raw)
    _check_payload(got)
    await node.send(
        f"<message from='carol@{A}/x' to='{bob.full_jid}' id='ns2' type='chat'><body>b</body>"
        f"{payload}</message>".encode()
    )
    _check_payload(await bob.wait_for(lambda e: is_message(e, "ns2")))


def _check_payload(el) -> None:
    url = el.find("{jabber:x:oob}x/{jabber:x:oob}url")
    assert url is not None and url.text == "https://example.test/ü"
    bar = el.find("{urn:example:foo}bar")
    assert bar is not None and bar.get("{urn:example:foo}attr") == "v"
    assert bar.find("{urn:example:foo}baz").text == "z"


async def test_error_from_the_peer_reaches_the_handler_and_is_not_bounced_back(linked, server):
    """A message to a user the peer does not have comes back as an error stanza; s2sfast hands
    it to the handler and never answers an error with an error (no loop)."""
    peer, node, bob = linked
    await node.send(
        f"<message from='carol@{A}/x' to='nobody@{B}' id='e1' type='chat'>"
        f"<body>anyone?</body></message>".encode()
    )
    err = await node.inbox.get(lambda s: s.id == "e1")
    assert (err.type, err.from_, err.to) == ("error", f"nobody@{B}", f"carol@{A}/x")
    assert error_of(parse(err.raw))[1] == "service-unavailable"
    await asyncio.sleep(0.5)
    assert [s.id for s in node.inbox.seen if s.id == "e1"] == ["e1"]
    # the peer received no error about its error (Prosody's debug log shows what it received;
    # ejabberd's info log shows no elements)
    if server == "prosody":
        assert not [
            line
            for line in peer.log().splitlines()
            if "Received" in line and "e1" in line and "type='error'" in line
        ]


async def test_simultaneous_first_contact_queues_both_ways(
    peer, server, s2sfast_node, c2s, ports, tls_certfile
):
    """Before any stream exists, both sides send 200 stanzas at the same moment: each queues
    while TLS and the crossing dialback exchanges complete, then delivers all, in order."""
    (port,) = ports(1)
    srv = peer(tls="required", remotes={A: port})
    node = await s2sfast_node(
        node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=srv.s2s_port)
    )
    bob = await c2s(srv, "bob")
    n = 200
    bob.send(
        "".join(
            f"<message to='carol@{A}/x' id='q{i}' type='chat'><body>{i}</body></message>"
            for i in range(n)
        )
    )
    for i in range(n):
        await node.send(
            f"<message from='carol@{A}/x' to='{bob.full_jid}' id='w{i}' type='chat'>"
            f"<body>{i}</body></message>".encode()
        )
    got = [await node.inbox.get(lambda s: s.id.startswith("q")) for _ in range(n)]
    assert [s.id for s in got] == [f"q{i}" for i in range(n)]
    ids = []
    while len(ids) < n:
        m = await bob.wait_for(lambda e: local(e.tag) == "message")
        ids.append(m.get("id"))
    assert ids == [f"w{i}" for i in range(n)]
    assert not [s for s in node.inbox.seen if s.type == "error"]


@pytest.mark.slow
async def test_a_burst_bigger_than_the_write_buffer_reaches_the_peer_whole(linked):
    """node.send() 20,000 stanzas of ~500 bytes (10 MB) as fast as the API lets a caller: the
    peer reads at its own pace, so s2sfast must hold the caller back (or keep queueing) rather than
    treat an honest, reading peer as one that does not read. Every stanza reaches bob, in order;
    none vanishes (one that cannot be delivered must come back as an error)."""
    peer, node, bob = linked
    await node_to_bob(node, bob, "first", "establish the stream (the connect queue is bounded)")
    n = 20_000
    filler = "y" * 400
    for i in range(n):
        await node.send(
            f"<message from='carol@{A}/x' to='{bob.full_jid}' id='f{i}' type='chat'>"
            f"<body>{i} {filler}</body></message>".encode()
        )
    ids: list[str] = []
    while len(ids) < n:
        try:  # give up only when nothing arrives for 10 s
            m = await bob.wait_for(lambda e: local(e.tag) == "message", 10)
        except TimeoutError:
            break
        ids.append(m.get("id"))
    bounced = [s.id for s in node.inbox.seen if s.type == "error"]
    assert len(ids) + len(bounced) == n, (
        f"{n - len(ids) - len(bounced)} of {n} stanzas vanished: {len(ids)} delivered, "
        f"{len(bounced)} bounced; streams now {node.connections()}"
    )
    assert ids == [f"f{i}" for i in range(n)] and not bounced


async def test_one_node_bridges_users_of_prosody_and_ejabberd(
    prosody, ejabberd, s2sfast_node, c2s, ports, tls_certfile
):
    """A server built on s2sfast relays between two independent peers (Prosody serving b.test
    with TLS required, ejabberd serving c.test with S2S TLS off): each link negotiates on its
    own terms, concurrently."""
    (port,) = ports(1)
    peer_b = prosody(tls="required", remotes={A: port})
    peer_c = ejabberd(tls="off", remotes={A: port}, domain=C)
    config = node_config(port, mode="optional", certfile=tls_certfile(A), peer_port=peer_b.s2s_port)
    extra = AddressOverride(host=C, ip_address="127.0.0.1", port=peer_c.s2s_port)
    config = dataclasses.replace(
        config, s2s=dataclasses.replace(config.s2s, address=(*config.s2s.address, extra))
    )
    node = await s2sfast_node(config)

    async def relay(st) -> None:  # carol@a.test forwards what she gets to the other side
        if st.name == "message" and st.type == "chat" and st.to == f"carol@{A}/x":
            other = alice.full_jid if st.from_.endswith(f"@{B}/r") else bob.full_jid
            body = text_of(parse(st.raw), "body")
            await node.send(
                f"<message from='carol@{A}/x' to='{other}' id='fwd-{st.id}' type='chat'>"
                f"<body>{body}</body></message>".encode()
            )

    node.on_stanza(relay)
    bob = await c2s(peer_b, "bob")
    alice = await c2s(peer_c, "alice")
    bob.send(f"<message to='carol@{A}/x' id='x1' type='chat'><body>to c via a</body></message>")
    alice.send(f"<message to='carol@{A}/x' id='x2' type='chat'><body>to b via a</body></message>")
    got_alice = await alice.wait_for(lambda e: is_message(e, "fwd-x1"))
    got_bob = await bob.wait_for(lambda e: is_message(e, "fwd-x2"))
    assert text_of(got_alice, "body") == "to c via a" and text_of(got_bob, "body") == "to b via a"
    tls_by_remote = {(c.direction, c.remote): c.tls for c in node.connections()}
    assert tls_by_remote == {
        ("in", B): True,
        ("out", B): True,
        ("in", C): False,
        ("out", C): False,
    }
