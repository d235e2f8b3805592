"""`s2sfast run` as a subprocess on free loopback ports: embedded defaults, a configuration file,
the component bridge with the built-in answers, SIGTERM and SIGHUP."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, RawComponent, free_port

from s2sfast.protocol.component import COMPONENT_NS

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")
pytest.importorskip("s2sfast.node", reason="s2sfast.node is not there yet")


def _config(
    tmp_path: Path, host: str, s2s_port: int, comp_port: int, extra: str = "", service: str = ""
) -> Path:
    path = tmp_path / f"{host}.toml"
    path.write_text(
        f"""
[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {s2s_port}
  ip_address = "127.0.0.1"
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "pw-{host}"
{service}
[s2s]
  use_starttls = "false"
{extra}
"""
    )
    return path


async def test_embedded_defaults_first_start_prints_password_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s2s_port, comp_port = free_port(), free_port()
    args = ("--data-dir", str(data), "--s2s-port", str(s2s_port))
    first = DaemonProcess(*args, "--component-port", str(comp_port))
    try:
        first.wait_ready()
        lines = [line for line in first.out().splitlines() if "component password" in line]
        assert len(lines) == 1, first.out()
        password = lines[0].rsplit(": ", 1)[1]
        assert f"127.0.0.1:{comp_port}" in lines[0]
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "s2s.pem").stat().st_mode) == 0o600
        assert (data / "component-password").read_text().strip() == password

        comp, answer = await RawComponent.connect(comp_port, "bot.localhost", password)
        assert answer.name == "handshake"
        # the S2S listener is up on the chosen port
        assert "127.0.0.1" in first.log() and str(s2s_port) in first.log()

        assert first.stop() == 0
        # the component's stream was closed cleanly, without a stream error
        rest = await comp.eof()
        assert rest.endswith(b"</stream:stream>") and b"stream:error" not in rest
        comp.close()
    finally:
        first.kill()

    second = DaemonProcess(*args, "--component-port", str(comp_port))
    try:
        second.wait_ready()
        assert "component password" not in second.out()
        comp, answer = await RawComponent.connect(comp_port, "bot.localhost", password)
        assert answer.name == "handshake"
        comp.close()
        assert second.stop() == 0
    finally:
        second.kill()


async def test_component_handshake_and_builtin_answers(tmp_path: Path) -> None:
    comp_port = free_port()
    cfg = _config(tmp_path, "a.test", free_port(), comp_port)
    daemon = DaemonProcess("--config", str(cfg), "--log-level", "debug")
    try:
        daemon.wait_ready()
        bad, answer = await RawComponent.connect(comp_port, "bot.a.test", "wrong")
        assert answer.name == "error"
        assert b"<not-authorized" in answer.raw
        await bad.eof()
        bad.close()

        unknown, answer = await RawComponent.connect(comp_port, "bot.b.test", "pw-a.test")
        assert answer.name == "error" and b"<host-unknown" in answer.raw
        unknown.close()

        comp, answer = await RawComponent.connect(comp_port, "bot.a.test", "pw-a.test")
        assert answer.name == "handshake"
        second, answer = await RawComponent.connect(comp_port, "bot.a.test", "pw-a.test")
        assert answer.name == "error" and b"<conflict" in answer.raw
        second.close()

        comp.send(
            "<iq type='get' id='p1' from='bot.a.test' to='a.test'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await comp.next_stanza()
        assert (reply.name, reply.type, reply.id) == ("iq", "result", "p1")
        assert (reply.from_, reply.to) == ("a.test", "bot.a.test")
        assert reply.ns == COMPONENT_NS

        comp.send(
            "<iq type='get' id='d1' from='bot.a.test' to='a.test'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        )
        reply = await comp.next_stanza()
        assert reply.type == "result" and b"urn:xmpp:ping" in reply.raw
        assert b'category="server"' in reply.raw

        comp.send(
            "<iq type='get' id='v1' from='bot.a.test' to='a.test'>"
            "<query xmlns='jabber:iq:version'/></iq>"
        )
        reply = await comp.next_stanza()
        assert reply.type == "result" and b"<name>s2sfast</name>" in reply.raw

        comp.send(
            "<iq type='get' id='x1' from='bot.a.test' to='a.test'>"
            "<query xmlns='jabber:iq:roster'/></iq>"
        )
        reply = await comp.next_stanza()
        assert reply.type == "error" and f'<service-unavailable xmlns="{STANZAS}"'.encode() in (
            reply.raw
        )

        comp.send("<message from='bot.a.test' to='a.test'><body>hi</body></message>")
        daemon.wait_for_log(r"dropped <message")

        # a subdomain nobody serves
        comp.send(
            "<iq type='get' id='u1' from='bot.a.test' to='nobody.a.test'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await comp.next_stanza()
        assert reply.type == "error" and b"service-unavailable" in reply.raw

        daemon.wait_for_log(r"component stream \w+ from 127\.0\.0\.1:\d+: authenticated")
        assert daemon.stop() == 0
        rest = await comp.eof()
        assert rest.endswith(b"</stream:stream>")
        comp.close()
    finally:
        daemon.kill()


async def test_sighup_without_config_keeps_running(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        "--data-dir",
        str(tmp_path),
        "--s2s-port",
        str(free_port()),
        "--component-port",
        str(free_port()),
    )
    try:
        daemon.wait_ready()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("nothing to reload")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.kill()


async def test_sighup_with_a_broken_file_keeps_the_running_policy(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "a.test", free_port(), free_port())
    daemon = DaemonProcess("--config", str(cfg))
    try:
        daemon.wait_ready()
        cfg.write_text("[general]\nhosts = 5\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("reload of .* failed, keeping the running policy")
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.kill()


async def test_sigint_drains_and_exits_0(tmp_path: Path) -> None:
    comp_port = free_port()
    cfg = _config(tmp_path, "a.test", free_port(), comp_port)
    daemon = DaemonProcess("--config", str(cfg))
    try:
        daemon.wait_ready()
        comp, answer = await RawComponent.connect(comp_port, "a.test", "pw-a.test")
        assert answer.name == "handshake"
        daemon.signal(signal.SIGINT)
        assert daemon.stop() == 0
        assert (await comp.eof()).endswith(b"</stream:stream>")
        comp.close()
        assert "shutting down" in daemon.log() and "stopped" in daemon.log()
    finally:
        daemon.kill()


def test_a_taken_port_is_a_clear_startup_failure(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = DaemonProcess(
            "--data-dir",
            str(tmp_path),
            "--s2s-port",
            str(port),
            "--component-port",
            str(free_port()),
        )
        try:
            assert daemon.proc.wait(30) == 1
        finally:
            daemon.kill()
    daemon.wait_for_log("cannot start")
    assert str(port) in daemon.log()


async def test_check_from_off_lets_foreign_from_in_but_the_node_refuses_to_send_it(
    tmp_path: Path,
) -> None:
    comp_port = free_port()
    cfg = _config(tmp_path, "a.test", free_port(), comp_port, service="  check_from = false")
    daemon = DaemonProcess("--config", str(cfg))
    try:
        daemon.wait_ready()
        comp, answer = await RawComponent.connect(comp_port, "bot.a.test", "pw-a.test")
        assert answer.name == "handshake"
        comp.send("<message id='f1' from='u@elsewhere.org' to='x@remote.test'><body/></message>")
        reply = await comp.next_stanza()
        assert (reply.name, reply.type, reply.id) == ("message", "error", "f1")
        assert b"<not-allowed" in reply.raw
        # the stream survives: builtin ping still answers
        comp.send(
            "<iq type='get' id='p' from='bot.a.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        assert (await comp.next_stanza()).type == "result"
        comp.close()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


async def test_a_failed_federation_attempt_logs_its_one_line_reason(tmp_path: Path) -> None:
    from dnsserver import closed_port

    comp_port = free_port()
    dead = closed_port()
    extra = f'  address = [{{host = "b.test", ip_address = "127.0.0.1", port = {dead}}}]'
    cfg = _config(tmp_path, "a.test", free_port(), comp_port, extra=extra)
    daemon = DaemonProcess("--config", str(cfg))
    try:
        daemon.wait_ready()
        comp, answer = await RawComponent.connect(comp_port, "a.test", "pw-a.test")
        assert answer.name == "handshake"
        comp.send("<message from='a.test' to='bob@b.test' id='f1'><body>hi</body></message>")
        # the operator reads which pair failed, where it tried and why, on one line
        match = daemon.wait_for_log(
            rf"stream a\.test -> b\.test failed \([^\n]*127\.0\.0\.1[^\n]*{dead}[^\n]*refused"
        )
        assert "\n" not in match.group(0)
        comp.close()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
