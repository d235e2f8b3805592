"""Prometheus: [[listen.http]] + mongoose_prometheus_handler parsing, and a daemon whose
endpoint reflects the traffic a component drives through it (builtin answers, S2S)."""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, RawComponent, component_config, free_port

from s2sfast.config import ConfigError
from s2sfast.server.metrics import ListenPrometheus, parse_listen_prometheus


def test_mongooseim_prometheus_listener_is_read() -> None:
    raw = tomllib.loads(
        """
[[listen.http]]
  port = 9091
  ip_address = "127.0.0.1"
  transport.num_acceptors = 10
  [[listen.http.handlers.mongoose_prometheus_handler]]
    host = "_"
    path = "/metrics"
[[listen.http]]
  port = 5280
  [[listen.http.handlers.mongoose_bosh_handler]]
    host = "_"
    path = "/http-bind"
"""
    )
    assert parse_listen_prometheus(raw) == (
        ListenPrometheus(port=9091, ip_address="127.0.0.1", host="_", path="/metrics"),
    )


def test_no_http_listener_means_no_endpoint() -> None:
    assert parse_listen_prometheus({"general": {"hosts": ["a"]}}) == ()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('port = "x"\n', "listen.http[0].port"),
        ('port = 1\nip_address = "nope"\n', "listen.http[0].ip_address"),
    ],
)
def test_invalid_prometheus_listener_names_the_path(body: str, path: str) -> None:
    raw = tomllib.loads(
        f"[[listen.http]]\n{body}[[listen.http.handlers.mongoose_prometheus_handler]]\n"
        'host = "_"\npath = "/metrics"\n'
    )
    with pytest.raises(ConfigError, match=re.escape(path)):
        parse_listen_prometheus(raw)


def test_handler_path_must_be_absolute() -> None:
    raw = tomllib.loads(
        "[[listen.http]]\nport = 1\n[[listen.http.handlers.mongoose_prometheus_handler]]\n"
        'path = "metrics"\n'
    )
    with pytest.raises(ConfigError, match=r"mongoose_prometheus_handler\[0\]\.path"):
        parse_listen_prometheus(raw)


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_endpoint_reflects_component_and_s2s_traffic(tmp_path: Path) -> None:
    pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")
    pytest.importorskip("s2sfast.node", reason="s2sfast.node is not there yet")
    comp_port, http_port = free_port(), free_port()
    http = f"""[[listen.http]]
  port = {http_port}
  ip_address = "127.0.0.1"
  [[listen.http.handlers.mongoose_prometheus_handler]]
    host = "_"
    path = "/metrics"
"""
    deny = '  host_policy = [{host = "denied.test", policy = "deny"}]'
    cfg = component_config(tmp_path, comp_port, s2s=deny, listeners=http)
    daemon = DaemonProcess("--config", str(cfg))
    try:
        daemon.wait_ready()
        status, before = await _get(http_port, "/metrics")
        assert status == 200
        assert _value(before, "s2sfast_components_connected") == 0

        comp, answer = await RawComponent.connect(comp_port, "bot.a.test", "pw")
        assert answer.name == "handshake"
        for i in range(3):
            comp.send(
                f"<iq type='get' id='p{i}' from='bot.a.test' to='a.test'>"
                "<ping xmlns='urn:xmpp:ping'/></iq>"
            )
            assert (await comp.next_stanza()).type == "result"
        # a remote domain the policy denies: bounced back to the component at once
        comp.send("<message id='m1' from='x@bot.a.test' to='y@denied.test'><body/></message>")
        bounce = await comp.next_stanza(20)
        assert bounce.type == "error" and bounce.id == "m1"

        status, after = await _get(http_port, "/metrics")
        assert status == 200
        assert _value(after, "s2sfast_components_connected") == 1
        assert _value(after, "s2sfast_component_stanzas_total", direction="in") == 4
        assert _value(after, "s2sfast_component_stanzas_total", direction="out") >= 4
        assert _value(after, "s2sfast_stanzas_total", direction="out", kind="message") == 1
        assert _value(after, "s2sfast_stanza_bytes_total", direction="out") > 0
        assert _value(after, "s2sfast_stanzas_total", direction="in", kind="message") == 1
        assert (
            sum(
                _value(after, "s2sfast_bounces_total", condition=c)
                for c in ("remote-server-not-found", "remote-server-timeout", "service-unavailable")
            )
            == 1
        )

        status, _ = await _get(http_port, "/other")
        assert status == 404
        comp.close()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def _node_config(
    path: Path, host: str, s2s: int, peer: str, peer_s2s: int, tls: tuple[str, str], extra: str
) -> Path:
    certfile, cafile = tls
    path.write_text(
        f"""
[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {s2s}
  ip_address = "127.0.0.1"
  tls.cacertfile = "{cafile}"
[s2s]
  use_starttls = "required_trusted"
  certfile = "{certfile}"
  [[s2s.address]]
    host = "{peer}"
    ip_address = "127.0.0.1"
    port = {peer_s2s}
{extra}
"""
    )
    return path


@pytest.mark.slow
async def test_metrics_show_tls_streams_and_their_certificate_verdicts(tmp_path: Path) -> None:
    pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")
    certs = pytest.importorskip("certs")
    ca = certs.make_ca("metrics test CA")
    cafile = ca.write_pem(tmp_path, "ca.pem")
    pa, pb, comp_port, http_port = free_port(), free_port(), free_port(), free_port()
    extra_a = f"""
[[listen.service]]
  port = {comp_port}
  ip_address = "127.0.0.1"
  password = "pw"
[[listen.http]]
  port = {http_port}
  ip_address = "127.0.0.1"
  [[listen.http.handlers.mongoose_prometheus_handler]]
    host = "_"
    path = "/metrics"
"""
    tls_a = (ca.issue(["a.test", "bot.a.test"]).write_pem(tmp_path, "a.pem"), cafile)
    tls_b = (ca.issue("b.test").write_pem(tmp_path, "b.pem"), cafile)
    cfg_a = _node_config(tmp_path / "a.toml", "a.test", pa, "b.test", pb, tls_a, extra_a)
    cfg_b = _node_config(tmp_path / "b.toml", "b.test", pb, "a.test", pa, tls_b, "")
    a, b = DaemonProcess("--config", str(cfg_a)), DaemonProcess("--config", str(cfg_b))
    try:
        a.wait_ready()
        b.wait_ready()
        comp, answer = await RawComponent.connect(comp_port, "a.test", "pw")
        assert answer.name == "handshake"
        comp.send(
            "<iq type='get' id='p' from='a.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await comp.next_stanza(20)
        assert reply.type == "result" and reply.from_ == "b.test"

        _, text = await _get(http_port, "/metrics")
        # both certificates chain to the CA and name their domains: SASL EXTERNAL, not dialback
        out = _value(text, "s2sfast_connections", direction="out", tls="yes", auth="sasl-external")
        assert out >= 1, text
        assert _value(text, "s2sfast_tls_peer_certificates", verdict="trusted") >= 1
        assert _value(text, "s2sfast_tls_peer_certificates", verdict="untrusted") == 0
        assert _value(text, "s2sfast_tls_handshakes_total", outcome="up", version="TLSv1.3") >= 1
        authed = _value(
            text,
            "s2sfast_stream_auth_total",
            outcome="authenticated",
            method="sasl-external",
            tls="yes",
        )
        assert authed >= 1
        assert _value(text, "s2sfast_stream_auth_total", outcome="failed") == 0
        assert _value(text, "s2sfast_stanzas_total", direction="in", kind="iq") == 1
        assert _value(text, "s2sfast_stanzas_total", direction="out", kind="iq") == 1
        comp.close()
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.kill()
        b.kill()
