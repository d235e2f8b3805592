"""`s2sfast probe`: against a second daemon (plain and STARTTLS), a closed port, a certificate
naming the wrong domain, and a domain the loopback DNS server says does not exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import ROOT, DaemonProcess, free_port

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")
pytest.importorskip("s2sfast.node", reason="s2sfast.node is not there yet")

pytestmark = pytest.mark.slow


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s2sfast", "probe", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


def _config(
    path: Path,
    host: str,
    s2s_port: int,
    peers: dict[str, int],
    *,
    starttls: str = "false",
    certfile: str | None = None,
    cafile: str | None = None,
) -> Path:
    addresses = "".join(
        f'  [[s2s.address]]\n    host = "{peer}"\n    ip_address = "127.0.0.1"\n    port = {port}\n'
        for peer, port in peers.items()
    )
    tls = f'  certfile = "{certfile}"\n' if certfile else ""
    listen_tls = f'  tls.cacertfile = "{cafile}"\n' if cafile else ""
    path.write_text(
        f"""
[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {s2s_port}
  ip_address = "127.0.0.1"
{listen_tls}
[s2s]
  use_starttls = "{starttls}"
  shared = "secret-of-{host}"
{tls}{addresses}
"""
    )
    return path


def test_probe_of_a_running_peer_succeeds_with_dialback(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    cfg_a = _config(tmp_path / "a.toml", "a.test", pa, {"b.test": pb})
    cfg_b = _config(tmp_path / "b.toml", "b.test", pb, {"a.test": pa})
    a, b = DaemonProcess("--config", str(cfg_a)), DaemonProcess("--config", str(cfg_b))
    try:
        a.wait_ready()
        b.wait_ready()
        result = _probe("b.test", "--config", str(cfg_a))
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert any(line.startswith("[  ok] resolve") for line in lines)
        assert any(f"127.0.0.1:{pb} (address)" in line for line in lines)
        assert any(line.startswith("[  ok] stream") and "dialback" in line for line in lines)
        assert any(line.startswith("[  ok] dialback") for line in lines)
        assert lines[-1] == "federation a.test -> b.test: success"

        as_json = _probe("b.test", "--config", str(cfg_a), "--json")
        doc = json.loads(as_json.stdout)
        assert doc["ok"] is True and doc["result"] == "success"
        assert [s["step"] for s in doc["steps"] if s["status"] == "ok"] == [
            "resolve",
            "connect",
            "stream",
            "dialback",
        ]

        # without a config (no secret, no address override): DNS SRV finds b, dialback is not
        # tried, so success is not proven: exit 2
        dnsserver = pytest.importorskip("dnsserver")
        with dnsserver.DnsServer() as dns:
            dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, pb, "xmpp.b.test")
            dns.add_a("xmpp.b.test", "127.0.0.1")
            plain = _probe("b.test", "--from", "a.test", "--nameserver", dns.nameserver)
        assert plain.returncode == 2, plain.stdout + plain.stderr
        assert f"xmpp.b.test 127.0.0.1:{pb} (srv)" in plain.stdout
        assert "[skip] dialback" in plain.stdout
        assert plain.stdout.splitlines()[-1] == "federation a.test -> b.test: incomplete"
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.kill()
        b.kill()


def test_probe_of_a_closed_port_names_the_refusal(tmp_path: Path) -> None:
    closed = free_port()
    cfg = _config(tmp_path / "a.toml", "a.test", free_port(), {"b.test": closed})
    result = _probe("b.test", "--config", str(cfg))
    assert result.returncode == 1
    assert f"127.0.0.1:{closed} (address): refused" in result.stdout
    assert "[FAIL] connect" in result.stdout


def test_probe_reports_a_certificate_for_the_wrong_name(tmp_path: Path) -> None:
    certs = pytest.importorskip("certs")
    ca = certs.make_ca("probe test CA")
    cafile = ca.write_pem(tmp_path, "ca.pem")
    wrong = ca.issue("wrong.test").write_pem(tmp_path, "wrong.pem")
    pa, pb = free_port(), free_port()
    cfg_b = _config(
        tmp_path / "b.toml", "b.test", pb, {"a.test": pa}, starttls="optional", certfile=wrong
    )
    cfg_a = _config(
        tmp_path / "a.toml",
        "a.test",
        pa,
        {"b.test": pb},
        starttls="required_trusted",
        certfile=ca.issue("a.test").write_pem(tmp_path, "a.pem"),
        cafile=cafile,
    )
    b = DaemonProcess("--config", str(cfg_b))
    try:
        b.wait_ready()
        result = _probe("b.test", "--config", str(cfg_a))
        assert result.returncode == 1, result.stdout + result.stderr
        tls_lines = [line for line in result.stdout.splitlines() if " tls " in line]
        assert tls_lines and "DNS:wrong.test" in tls_lines[0] and "TLSv1." in tls_lines[0]
        assert "NOT acceptable for b.test" in result.stdout
        assert "[FAIL] tls" in result.stdout
        assert b.stop() == 0
    finally:
        b.kill()


def test_probe_of_an_unknown_domain_says_nxdomain() -> None:
    dnsserver = pytest.importorskip("dnsserver")
    with dnsserver.DnsServer() as dns:
        result = _probe("nowhere.test", "--nameserver", dns.nameserver, "--timeout", "5")
    assert result.returncode == 1
    fail = [line for line in result.stdout.splitlines() if line.startswith("[FAIL]")]
    assert len(fail) == 1 and "resolve" in fail[0] and "nowhere.test" in fail[0]


@pytest.mark.interop
@pytest.mark.parametrize("server", ["prosody", "ejabberd"])
def test_probe_of_a_real_server_negotiates_tls_and_dialback(tmp_path: Path, server: str) -> None:
    """The probe against Prosody / ejabberd (tests/interop/servers) serving b.test with S2S TLS
    required; the peer dials back to the daemon serving a.test."""
    from servers import SERVERS, need_server

    from s2sfast.server.defaults import ensure_certificate

    need_server(server)
    pa = free_port()
    certfile, _ = ensure_certificate(tmp_path, "a.test")
    peer = SERVERS[server]("b.test", tmp_path / server, tls="required", remotes={"a.test": pa})
    cfg_a = _config(
        tmp_path / "a.toml",
        "a.test",
        pa,
        {"b.test": peer.s2s_port},
        starttls="optional",
        certfile=str(certfile),
    )
    a = DaemonProcess("--config", str(cfg_a))
    try:
        peer.start()
        a.wait_ready()
        result = _probe("b.test", "--config", str(cfg_a), "--json")
        doc = json.loads(result.stdout)
        steps = {s["step"]: s for s in doc["steps"] if s["status"] != "info"}
        assert steps["tls"]["status"] == "ok", doc
        assert steps["tls"]["data"]["version"].startswith("TLSv1.")
        # the peer's self-signed certificate names b.test but is not trusted here
        assert steps["tls"]["data"]["name_matches"] is True
        assert steps["tls"]["data"]["trusted"] is False
        assert steps["dialback"]["status"] == "ok", doc
        assert result.returncode == 0 and doc["result"] == "success"
        assert a.stop() == 0
    finally:
        a.kill()
        peer.stop()
