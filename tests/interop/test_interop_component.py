"""``s2sfast run`` (the daemon) with a slixmpp ComponentXMPP attached over XEP-0114, federating
with a user of Prosody or ejabberd: the component's stanzas go out over S2S and the peer's come
in to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from interop_c2s import local, text_of
from interop_flow import error_of, eventually, is_message
from interop_node import A, B

COMPONENT = f"bot.{A}"
SECRET = "component-secret"
TEXT = "grüße ☃ 日本語 😀 & <ok>"
PING = "urn:xmpp:ping"


def _daemon_config(path: Path, s2s_port: int, comp_port: int, peer_port: int, certfile: str):
    path.write_text(
        f"""
[general]
  hosts = ["{A}"]
[[listen.s2s]]
  port = {s2s_port}
  ip_address = "127.0.0.1"
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "{SECRET}"
[s2s]
  use_starttls = "optional"
  certfile = "{certfile}"
  default_policy = "allow"
  [[s2s.address]]
    host = "{B}"
    ip_address = "127.0.0.1"
    port = {peer_port}
"""
    )
    return path


@pytest.fixture
def daemon(tmp_path: Path):
    """Factory: ``daemon(config_path)`` -> a running ``s2sfast run`` process; stopped at the end."""
    from daemon_helpers import DaemonProcess

    procs: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        proc = DaemonProcess("--config", str(config))
        procs.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in procs:
        proc.kill()


# the peer's bounce for a stanza to a component domain with no component attached. ejabberd
# then refuses to try that domain pair again for a random 1-300 s ("bouncing for N seconds"), so
# against it the probe goes to another component domain that stays unattached
UNATTACHED = {"prosody": COMPONENT, "ejabberd": f"other.{A}"}


def _not_served(server: str) -> tuple[str, str, str]:
    domain = UNATTACHED[server]
    if server == "prosody":
        text = f"Server-to-server connection failed: host-unknown ({domain} is not served here)"
    else:
        text = f"Stream closed by peer: {domain} is not served here (host-unknown)"
    return ("wait", "remote-server-timeout", text)


async def test_slixmpp_component_exchanges_with_a_peer_user(
    peer, server, c2s, ports, tls_certfile, daemon, tmp_path
):
    slixmpp = pytest.importorskip("slixmpp")
    s2s_port, comp_port = ports(2)
    early = UNATTACHED[server]
    srv = peer(tls="optional", remotes={A: s2s_port, COMPONENT: s2s_port, early: s2s_port})
    config = _daemon_config(
        tmp_path / "s2sfast.toml", s2s_port, comp_port, srv.s2s_port, tls_certfile(A, COMPONENT)
    )
    proc = daemon(config)

    # no component attached yet: bob's stanza to its domain comes back as an error
    alice = await c2s(srv, "alice")
    alice.send(f"<message to='x@{early}' id='e0' type='chat'><body>anyone?</body></message>")
    back = await alice.wait_for(lambda e: is_message(e, "e0"))
    assert back.get("type") == "error"
    assert error_of(back) == _not_served(server)

    component = slixmpp.ComponentXMPP(COMPONENT, SECRET, "127.0.0.1", comp_port)
    inbox: asyncio.Queue = asyncio.Queue()
    started = asyncio.Event()
    component.add_event_handler("session_start", lambda _e: started.set())
    component.add_event_handler("message", inbox.put_nowait)
    component.connect()
    try:
        await asyncio.wait_for(started.wait(), 15)
        bob = await c2s(srv, "bob")

        # Prosody user -> component, through S2S and the daemon's bridge
        bob.send(
            f"<message to='alice@{COMPONENT}/desk' id='c1' type='chat'>"
            f"<body>{TEXT.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}"
            f"</body></message>"
        )
        msg = await asyncio.wait_for(inbox.get(), 15)
        assert str(msg["from"]) == bob.full_jid and str(msg["to"]) == f"alice@{COMPONENT}/desk"
        assert msg["body"] == TEXT and msg["id"] == "c1"

        # component -> Prosody user
        component.send_message(
            mto=bob.full_jid, mfrom=f"alice@{COMPONENT}/desk", mbody=f"re: {TEXT}", mtype="chat"
        )
        reply = await bob.wait_for(lambda e: local(e.tag) == "message" and e.get("type") == "chat")
        assert reply.get("from") == f"alice@{COMPONENT}/desk"
        assert text_of(reply, "body") == f"re: {TEXT}"

        # the daemon's built-in answers reach Prosody users too: ping a.test itself
        bob.send(f"<iq type='get' to='{A}' id='ping1'><ping xmlns='{PING}'/></iq>")
        pong = await bob.wait_for(lambda e: local(e.tag) == "iq" and e.get("id") == "ping1")
        assert (pong.get("type"), pong.get("from")) == ("result", A)
        assert not [e for e in bob.received if is_message(e, "c1")]  # no bounce came back
    finally:
        component.disconnect()
        await asyncio.sleep(0.2)
    assert proc.stop() == 0
    done = await eventually(
        lambda: (
            {s.completed[0] for s in srv.completed_sessions("out")} >= {(B, COMPONENT)}
            and {s.completed[0] for s in srv.completed_sessions("in")} >= {(COMPONENT, B)}
        )
    )
    assert done, srv.s2s_sessions()
