"""Prometheus: [[listen.http]] + mongoose_prometheus_handler parsing, and a daemon whose
endpoint reflects the traffic a component drives through it (builtin answers, S2S)."""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, RawComponent, free_port

from s2sfast.config import ConfigError
from s2sfast.metrics import ListenPrometheus, parse_listen_prometheus


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
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f"""
[general]
  hosts = ["a.test"]
[[listen.s2s]]
  port = {free_port()}
  ip_address = "127.0.0.1"
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
[s2s]
  use_starttls = "false"
"""
    )
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
        # a remote domain with no known address: queued, then bounced back to the component
        comp.send("<message id='m1' from='x@bot.a.test' to='y@nowhere.test'><body/></message>")
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
