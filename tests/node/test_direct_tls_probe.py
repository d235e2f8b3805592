"""``s2sfast probe`` says which transport it used: Direct TLS (found through ``_xmpps-server``)
or STARTTLS, in its text report and in ``--json``; against real nodes and a real DNS server on
loopback, with a full dialback run as a.test (a running a.test node answers the verify)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from core_helpers import Inbox, free_port, node_config
from dnsserver import DnsServer

from s2sfast.net.dns import SRV_PREFIX, XMPPS_SRV_PREFIX, Resolver
from s2sfast.node import Node

ROOT = Path(__file__).resolve().parents[2]
SECRET = "probe-secret-of-a"


async def _probe(*args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "s2sfast",
        "probe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


@pytest.fixture
async def peers(dns_server: DnsServer, tls_certfile, tls_ca_file):
    """a.test (STARTTLS listener, the probe's dialback authority) and b.test with a STARTTLS
    listener and a Direct TLS one; the test publishes b.test's SRV records."""
    nodes = []
    ports = {}
    for host, modes, shared in (
        ("a.test", ("starttls",), SECRET),
        ("b.test", ("starttls", "tls"), None),
    ):
        config = node_config(
            [host],
            port=free_port(),
            mode="optional",
            certfile=tls_certfile(host),
            cafile=tls_ca_file,
            shared=shared,
        )
        first = config.listen_s2s[0]
        config = replace(
            config,
            listen_s2s=tuple(
                replace(first, port=free_port(), tls=replace(first.tls, mode=m)) for m in modes
            ),
        )
        node = Node(config, resolver=Resolver([dns_server.nameserver], timeout=1, retries=1))
        node.inbox = Inbox()
        node.on_stanza(node.inbox)
        await node.start()
        nodes.append(node)
        ports[host] = dict(zip(modes, (a[1] for a in node.listen_addresses()), strict=True))
    dns_server.add_srv(SRV_PREFIX + "a.test", 0, 0, ports["a.test"]["starttls"], "xmpp.a.test")
    dns_server.add_a("xmpp.a.test", "127.0.0.1")
    dns_server.add_a("xmpp.b.test", "127.0.0.1")
    yield ports
    for node in nodes:
        await node.stop(timeout=3)


def _config_a(tmp_path: Path, tls_certfile, tls_ca_file) -> str:
    path = tmp_path / "a.toml"
    path.write_text(
        f"""
[general]
  hosts = ["a.test"]
[[listen.s2s]]
  port = {free_port()}
  ip_address = "127.0.0.1"
  tls.cacertfile = "{tls_ca_file}"
[s2s]
  use_starttls = "optional"
  certfile = "{tls_certfile("a.test")}"
  shared = "{SECRET}"
"""
    )
    return str(path)


@pytest.mark.parametrize(("direct_first", "expected"), [(True, "direct-tls"), (False, "starttls")])
async def test_probe_reports_the_transport(
    dns_server, peers, tmp_path, tls_certfile, tls_ca_file, direct_first, expected
):
    b = peers["b.test"]
    dns_server.add_srv(
        XMPPS_SRV_PREFIX + "b.test", 5 if direct_first else 10, 0, b["tls"], "xmpp.b.test"
    )
    dns_server.add_srv(
        SRV_PREFIX + "b.test", 10 if direct_first else 5, 0, b["starttls"], "xmpp.b.test"
    )
    config = _config_a(tmp_path, tls_certfile, tls_ca_file)
    args = ("b.test", "--config", config, "--nameserver", dns_server.nameserver)

    code, text = await _probe(*args)
    assert code == 0, text
    lines = text.splitlines()
    assert lines[-1] == "federation a.test -> b.test: success"
    tls_line = next(line for line in lines if line.startswith("[  ok] tls"))
    transport_line = next(line for line in lines if " transport " in line)
    if expected == "direct-tls":
        assert f"127.0.0.1:{b['tls']} (srv, Direct TLS)" in text
        assert "Direct TLS: TLSv1." in tls_line and "ALPN xmpp-server" in tls_line
        assert transport_line.endswith("Direct TLS (XEP-0368)")
    else:
        assert f"127.0.0.1:{b['starttls']} (srv)" in text
        assert "STARTTLS: TLSv1." in tls_line
        assert transport_line.endswith("STARTTLS")
    # both kinds of record were listed, in the order tried
    assert ("Direct TLS" in next(line for line in lines if "#1 " in line)) is direct_first

    code, out = await _probe(*args, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] is True and doc["transport"] == expected
    (tls,) = [s for s in doc["steps"] if s["step"] == "tls"]
    assert tls["data"]["transport"] == expected and tls["data"]["alpn"] == "xmpp-server"
    assert [s["data"]["transport"] for s in doc["steps"] if s["step"] == "connect"] == [
        "Direct TLS" if direct_first else "STARTTLS"
    ]


async def test_probe_of_a_refusing_direct_tls_port_falls_back_and_says_so(
    dns_server, peers, tmp_path, tls_certfile, tls_ca_file
):
    from dnsserver import closed_port

    b = peers["b.test"]
    closed = closed_port()
    dns_server.add_srv(XMPPS_SRV_PREFIX + "b.test", 1, 0, closed, "xmpp.b.test")
    dns_server.add_srv(SRV_PREFIX + "b.test", 2, 0, b["starttls"], "xmpp.b.test")
    code, out = await _probe(
        "b.test", "--from", "a.test", "--nameserver", dns_server.nameserver, "--json"
    )
    assert code == 2, out  # no --config: dialback not tried
    doc = json.loads(out)
    assert doc["transport"] == "starttls"
    connect = [s for s in doc["steps"] if s["step"] == "connect"]
    assert f"127.0.0.1:{closed} (srv, Direct TLS): refused" in connect[0]["detail"]
    assert connect[-1]["status"] == "ok"


async def test_probe_refuses_a_wrong_name_on_direct_tls_with_the_reason(
    dns_server, tmp_path, tls_ca, tls_certfile, tls_ca_file
):
    wrong = tls_ca.issue(["wrong.test"]).write_pem(tmp_path, "wrong.pem")
    config = node_config(["b.test"], port=free_port(), mode="optional", certfile=wrong)
    (listen,) = config.listen_s2s
    config = replace(config, listen_s2s=(replace(listen, tls=replace(listen.tls, mode="tls")),))
    b = Node(config, resolver=Resolver([dns_server.nameserver], timeout=1, retries=1))
    await b.start()
    try:
        port = b.listen_addresses()[0][1]
        dns_server.add_srv(XMPPS_SRV_PREFIX + "b.test", 0, 0, port, "xmpp.b.test")
        dns_server.add_a("xmpp.b.test", "127.0.0.1")
        path = Path(_config_a(tmp_path, tls_certfile, tls_ca_file))
        path.write_text(path.read_text().replace('"optional"', '"required_trusted"'))
        code, text = await _probe(
            "b.test", "--config", str(path), "--nameserver", dns_server.nameserver
        )
    finally:
        await b.stop(timeout=3)
    assert code == 1, text
    lines = text.splitlines()
    (tls_line,) = [line for line in lines if " tls " in line and "Direct TLS: TLSv1." in line]
    assert "DNS:wrong.test" in tls_line and "NOT acceptable for b.test" in tls_line
    assert any(line.startswith("[FAIL] tls") and "required_trusted" in line for line in lines)
    assert text.splitlines()[-2].endswith("Direct TLS (XEP-0368)")
    assert text.splitlines()[-1] == "federation a.test -> b.test: failure"
