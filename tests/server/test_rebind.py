"""Namespace rebinding between jabber:component:accept and jabber:server on the daemon's path,
both ways: the common case (no xmlns on the start tag) leaves as the very bytes that came in;
the rare case (the start tag declares xmlns, e.g. jabber:client) is rebuilt into the namespace
of the stream it is written to. Real sockets on loopback: an in-process daemon (a.test) with a
raw component (bot.a.test), federating with a Node (b.test) in the same process; every domain
has an [s2s] address override, so no DNS is asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from core_helpers import Inbox
from daemon_helpers import RawComponent, free_port

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

from s2sfast.config import load_config  # noqa: E402
from s2sfast.framing import StreamFramer  # noqa: E402
from s2sfast.node import Node  # noqa: E402
from s2sfast.server.daemon import Daemon  # noqa: E402

COMPONENT_NS = "jabber:component:accept"


async def _setup(tmp_path: Path) -> tuple[Daemon, Node, Inbox, RawComponent]:
    a_port, b_port, comp_port = free_port(), free_port(), free_port()
    for name, host, port, other, other_port in (
        ("a", "a.test", a_port, "b.test", b_port),
        ("b", "b.test", b_port, "bot.a.test", a_port),
    ):
        (tmp_path / f"{name}.toml").write_text(
            f"""
[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {port}
  ip_address = "127.0.0.1"
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "pw"
[s2s]
  use_starttls = "false"
  shared = "secret-{name}"
  [[s2s.address]]
    host = "{other}"
    ip_address = "127.0.0.1"
    port = {other_port}
"""
        )
    config_a = load_config(tmp_path / "a.toml")
    daemon = Daemon(config_a, config_a.listen_service)
    await daemon.start()
    node_b = Node(load_config(tmp_path / "b.toml"))
    inbox = Inbox()
    node_b.on_stanza(inbox)
    await node_b.start()
    comp, answer = await RawComponent.connect(comp_port, "bot.a.test", "pw")
    assert answer.name == "handshake", answer
    return daemon, node_b, inbox, comp


def _reparse(raw: bytes, default_ns: str) -> Any:
    """What a peer's framer makes of *raw* written into a stream of *default_ns*."""
    framer = StreamFramer(default_ns=default_ns)
    framer.feed(
        f"<stream:stream xmlns='{default_ns}' "
        "xmlns:stream='http://etherx.jabber.org/streams'>".encode()
    )
    (stanza,) = framer.feed(raw)
    return stanza


async def test_component_to_s2s_and_back_in_both_forms(tmp_path: Path) -> None:
    daemon, node_b, inbox, comp = await _setup(tmp_path)
    try:
        plain = b"<message from='x@bot.a.test' to='y@b.test' id='p1'><body>plain</body></message>"
        comp.send(plain)
        got = await inbox.get(20)
        assert got.raw == plain  # the same bytes, no rebuild
        assert got.ns == "jabber:server"

        declared = (
            b"<message xmlns='jabber:client' from='x@bot.a.test' to='y@b.test' id='d1'>"
            b"<body>declared</body><x xmlns='urn:keep'/></message>"
        )
        comp.send(declared)
        got = await inbox.get(20)
        assert got.ns == "jabber:server" and got.id == "d1"
        assert b"jabber:client" not in got.raw and b"urn:keep" in got.raw
        assert _reparse(got.raw, "jabber:server").ns == "jabber:server"

        # and back: plain bytes unchanged, a declaring start tag into the component's namespace
        back = b"<message from='y@b.test' to='x@bot.a.test' id='p2'><body>back</body></message>"
        await node_b.send(back)
        got = await comp.next_stanza(20)
        assert got.raw == back and got.ns == COMPONENT_NS
        back_declared = (
            b"<message xmlns='jabber:server' from='y@b.test' to='x@bot.a.test' id='d2'>"
            b"<body>back</body></message>"
        )
        await node_b.send(back_declared)
        got = await comp.next_stanza(20)
        assert got.id == "d2" and got.ns == COMPONENT_NS
        assert b"jabber:server" not in got.raw
        comp.close()
    finally:
        await daemon.stop()
        await node_b.stop()
