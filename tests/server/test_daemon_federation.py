"""Two `s2sfast run` daemons federating over loopback, each with a component: stanzas cross S2S
both ways, the built-in answers reply across S2S, and SIGHUP applies a new policy live."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonProcess, RawComponent, free_port

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")
pytest.importorskip("s2sfast.node", reason="s2sfast.node is not there yet")

pytestmark = pytest.mark.slow


def _write_config(
    path: Path,
    host: str,
    s2s_port: int,
    comp_port: int,
    peer: str,
    peer_port: int,
    policy: str,
    tls: tuple[str, str, str] | None = None,
) -> Path:
    """*tls*: (use_starttls, certfile, cafile) or None for plain TCP."""
    starttls, certfile, cafile = tls or ("false", "", "")
    listen_tls = f'  tls.cacertfile = "{cafile}"' if cafile else ""
    cert = f'  certfile = "{certfile}"' if certfile else ""
    path.write_text(
        f"""
[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {s2s_port}
  ip_address = "127.0.0.1"
{listen_tls}
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "pw-{host}"
[s2s]
  use_starttls = "{starttls}"
{cert}
  default_policy = "allow"
{policy}
  [[s2s.address]]
    host = "{peer}"
    ip_address = "127.0.0.1"
    port = {peer_port}
  [[s2s.address]]
    host = "bot.{peer}"
    ip_address = "127.0.0.1"
    port = {peer_port}
"""
    )
    return path


class Pair:
    """Daemon A (a.test) and daemon B (b.test), each with a component listener."""

    def __init__(self, tmp_path: Path, starttls: str = "false") -> None:
        self.tmp = tmp_path
        self.tls: dict[str, tuple[str, str, str] | None] = {"a": None, "b": None}
        if starttls != "false":
            import certs

            ca = certs.make_ca("federation test CA")
            cafile = ca.write_pem(tmp_path, "ca.pem")
            for side in ("a", "b"):
                leaf = ca.issue([f"{side}.test", f"bot.{side}.test"])
                self.tls[side] = (starttls, leaf.write_pem(tmp_path, f"{side}.pem"), cafile)
        self.s2s = {"a": free_port(), "b": free_port()}
        self.comp = {"a": free_port(), "b": free_port()}
        self.cfg = {
            "a": self._config("a", policy=""),
            "b": self._config("b", policy=""),
        }
        self.daemons: dict[str, DaemonProcess] = {}

    def _config(self, side: str, policy: str) -> Path:
        other = "b" if side == "a" else "a"
        return _write_config(
            self.tmp / f"{side}.toml",
            f"{side}.test",
            self.s2s[side],
            self.comp[side],
            f"{other}.test",
            self.s2s[other],
            policy,
            self.tls[side],
        )

    def start(self) -> None:
        for side in ("a", "b"):
            self.daemons[side] = DaemonProcess("--config", str(self.cfg[side]))
        for daemon in self.daemons.values():
            daemon.wait_ready()

    def stop(self) -> dict[str, int]:
        return {side: d.stop() for side, d in self.daemons.items()}

    def kill(self) -> None:
        for side, daemon in self.daemons.items():
            daemon.kill()
            print(f"--- daemon {side} log ---\n{daemon.log()}")  # shown when a test fails


async def _component(port: int, domain: str, password: str) -> RawComponent:
    comp, answer = await RawComponent.connect(port, domain, password)
    assert answer.name == "handshake", answer
    return comp


async def _next(comp: RawComponent, name: str, timeout: float = 20.0) -> Any:
    while True:
        stanza = await comp.next_stanza(timeout)
        if stanza.name == name:
            return stanza


@pytest.mark.parametrize("starttls", ["false", "required_trusted"])
async def test_components_exchange_messages_and_ping_across_s2s(
    tmp_path: Path, starttls: str
) -> None:
    pair = Pair(tmp_path, starttls)
    pair.start()
    try:
        bot_a = await _component(pair.comp["a"], "bot.a.test", "pw-a.test")
        bot_b = await _component(pair.comp["b"], "bot.b.test", "pw-b.test")

        bot_a.send(
            "<message from='alice@bot.a.test' to='bob@bot.b.test'><body>hello b</body></message>"
        )
        got = await _next(bot_b, "message")
        assert (got.from_, got.to) == ("alice@bot.a.test", "bob@bot.b.test")
        assert b"<body>hello b</body>" in got.raw

        bot_b.send(
            "<message from='bob@bot.b.test' to='alice@bot.a.test'><body>hello a</body></message>"
        )
        got = await _next(bot_a, "message")
        assert b"<body>hello a</body>" in got.raw

        # b's built-in answers, across S2S
        bot_a.send(
            "<iq type='get' id='ping1' from='bot.a.test' to='b.test'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await _next(bot_a, "iq")
        assert (reply.type, reply.id, reply.from_) == ("result", "ping1", "b.test")

        bot_a.send(
            "<iq type='get' id='disco1' from='bot.a.test' to='b.test'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )
        reply = await _next(bot_a, "iq")
        assert reply.type == "result" and b"urn:xmpp:ping" in reply.raw

        # both daemons logged the S2S streams they hold
        for daemon in pair.daemons.values():
            assert "a.test" in daemon.log() and "b.test" in daemon.log()
            assert ("TLS up (TLSv1.3" in daemon.log()) == (starttls != "false")

        codes = pair.stop()
        assert codes == {"a": 0, "b": 0}
        for comp in (bot_a, bot_b):
            tail = await comp.eof()
            assert tail.endswith(b"</stream:stream>")
            comp.close()
    finally:
        pair.kill()


async def test_sighup_applies_a_new_policy_without_dropping_streams(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.start()
    try:
        bot_a = await _component(pair.comp["a"], "bot.a.test", "pw-a.test")
        bot_b = await _component(pair.comp["b"], "bot.b.test", "pw-b.test")
        bot_a.send(
            "<message id='m1' from='x@bot.a.test' to='y@bot.b.test'><body>1</body></message>"
        )
        assert b"<body>1</body>" in (await _next(bot_b, "message")).raw

        # deny b.test on a, then reload
        pair._config("a", policy='  host_policy = [{host = "bot.b.test", policy = "deny"}]')
        pair.daemons["a"].signal(signal.SIGHUP)
        pair.daemons["a"].wait_for_log("policy reloaded")

        bot_a.send(
            "<message id='m2' from='x@bot.a.test' to='y@bot.b.test'><body>2</body></message>"
        )
        bounced = await _next(bot_a, "message")
        assert bounced.type == "error" and bounced.id == "m2"
        # the component streams were not dropped: a's built-in ping still answers
        bot_a.send(
            "<iq type='get' id='p' from='bot.a.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert (await _next(bot_a, "iq")).type == "result"
        # and b still reaches a's host over the existing streams
        bot_b.send(
            "<iq type='get' id='p2' from='bot.b.test' to='a.test'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await asyncio.wait_for(_next(bot_b, "iq"), 20)
        assert reply.id == "p2"
        assert pair.stop() == {"a": 0, "b": 0}
        bot_a.close()
        bot_b.close()
    finally:
        pair.kill()


async def test_slixmpp_components_on_both_sides_talk_across_s2s(tmp_path: Path) -> None:
    slixmpp = pytest.importorskip("slixmpp")
    pair = Pair(tmp_path)
    pair.start()
    bots: dict[str, Any] = {}
    try:
        inbox: dict[str, asyncio.Queue[Any]] = {"a": asyncio.Queue(), "b": asyncio.Queue()}
        for side in ("a", "b"):
            bot = slixmpp.ComponentXMPP(
                f"bot.{side}.test", f"pw-{side}.test", "127.0.0.1", pair.comp[side]
            )
            bot.register_plugin("xep_0199")
            started = asyncio.Event()
            bot.add_event_handler("session_start", lambda _, ev=started: ev.set())
            bot.add_event_handler("message", inbox[side].put_nowait)
            bot.connect()
            await asyncio.wait_for(started.wait(), 10)
            bots[side] = bot

        # b's bot echoes what it gets
        def echo(msg: Any) -> None:
            msg.reply(f"echo: {msg['body']}").send()

        bots["b"].add_event_handler("message", echo)

        bots["a"].send_message(
            mto="echo@bot.b.test", mfrom="alice@bot.a.test", mbody="across the federation"
        )
        got_b = await asyncio.wait_for(inbox["b"].get(), 20)
        assert str(got_b["from"]) == "alice@bot.a.test"
        assert got_b["body"] == "across the federation"
        got_a = await asyncio.wait_for(inbox["a"].get(), 20)
        assert str(got_a["from"]) == "echo@bot.b.test"
        assert got_a["body"] == "echo: across the federation"

        # XEP-0199 ping of the other node's domain, answered by its built-in handler
        iq = bots["a"].make_iq_get(ito="b.test", ifrom="bot.a.test")
        iq.enable("ping")
        result = await iq.send(timeout=20)
        assert result["type"] == "result" and str(result["from"]) == "b.test"

        assert pair.stop() == {"a": 0, "b": 0}
    finally:
        for bot in bots.values():
            bot.disconnect()
        pair.kill()
