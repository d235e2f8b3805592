"""Federation with Prosody through real DNS: the shared ``dns_stub.py`` serves SRV and A records
for both domains on loopback; s2sfast's Resolver asks it (no ``[s2s] address``) and Prosody
resolves through it too (libunbound forwarding, no connect override)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from interop_flow import bob_to_node, error_of, is_message, node_to_bob, stanza_error
from interop_node import A, B, node_config
from interop_peer import LOOPBACK, completed_sessions, interop_dir

from s2sfast.net.dns import Resolver


@pytest.fixture
def dns_stub(tmp_path: Path, ports):
    """Factory: ``dns_stub({"a.test": port, ...}, srv_target="ip")`` -> "127.0.0.1:PORT" of a
    running dns_stub.py; its query log is ``.log_path``; stopped at teardown."""
    procs: list[subprocess.Popen] = []

    def start(mapping: dict[str, int], srv_target: str = "ip") -> tuple[str, Path]:
        (port,) = ports(1)
        log_path = tmp_path / f"dns-{port}.log"
        maps = [f"{d}={LOOPBACK}:{p}" for d, p in mapping.items()]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-u",
                    str(interop_dir() / "dns_stub.py"),
                    "--listen",
                    f"{LOOPBACK}:{port}",
                    "--srv-target",
                    srv_target,
                    *maps,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while b"dns stub on" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dns_stub.py did not start: {log_path.read_text()}")
            time.sleep(0.05)
        return f"{LOOPBACK}:{port}", log_path

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("srv_target", ["ip", "domain"])
async def test_federation_through_srv_records(
    prosody, s2sfast_node, c2s, ports, tls_certfile, dns_stub, srv_target
):
    node_port, prosody_c2s, prosody_s2s = ports(3)
    server, query_log = dns_stub({A: node_port, B: prosody_s2s}, srv_target)
    peer = prosody(tls="required", dns_server=server, c2s_port=prosody_c2s, s2s_port=prosody_s2s)
    config = node_config(node_port, mode="required", certfile=tls_certfile(A), peer_port=None)
    assert config.s2s.address == ()
    node = await s2sfast_node(config, resolver=Resolver([server], timeout=2, retries=1))
    bob = await c2s(peer, "bob")

    got = await bob_to_node(bob, node, "d1", "via SRV")
    assert got.from_ == bob.full_jid
    reply = await node_to_bob(node, bob, "d2", "back via SRV")
    assert reply.get("from") == f"carol@{A}/x"
    assert {c.direction for c in node.connections() if (A, B) in c.pairs} == {"in", "out"}
    assert all(c.tls for c in node.connections())
    log = peer.log()
    assert completed_sessions(log, "in") and completed_sessions(log, "out")
    assert "s2s override" not in log  # Prosody found a.test through DNS
    queries = query_log.read_text()
    # s2sfast asked for b.test's SRV record; Prosody asked XEP-0368 direct TLS first, then SRV
    assert f"'_xmpp-server._tcp.{B}.' (SRV) / RRs: SRV" in queries
    assert f"'_xmpps-server._tcp.{A}.' (SRV) / NXDOMAIN" in queries
    assert f"'_xmpp-server._tcp.{A}.' (SRV) / RRs: SRV" in queries
    if srv_target == "domain":  # the SRV target is a name: both then ask for its A record
        assert f"'{A}.' (A) / RRs: A" in queries and f"'{B}.' (A) / RRs: A" in queries


async def test_unknown_domain_in_dns_bounces_both_ways(
    prosody, s2sfast_node, c2s, ports, tls_certfile, dns_stub
):
    """Neither side can find nowhere.test (NXDOMAIN from the stub): both senders get an error."""
    node_port, prosody_c2s, prosody_s2s = ports(3)
    server, _ = dns_stub({A: node_port, B: prosody_s2s})
    peer = prosody(tls="optional", dns_server=server, c2s_port=prosody_c2s, s2s_port=prosody_s2s)
    node = await s2sfast_node(
        node_config(node_port, mode="optional", certfile=tls_certfile(A), peer_port=None),
        resolver=Resolver([server], timeout=2, retries=1),
    )
    bob = await c2s(peer, "bob")
    await node.send(
        f"<message from='carol@{A}/x' to='x@nowhere.test' id='n1'><body>?</body></message>".encode()
    )
    bounce = await node.inbox.get(lambda s: s.id == "n1")
    assert (bounce.type, bounce.to) == ("error", f"carol@{A}/x")
    assert stanza_error(bounce) == (
        "cancel",
        "remote-server-not-found",
        "NXDOMAIN for _xmpp-server._tcp.nowhere.test and nowhere.test",
    )
    bob.send("<message to='x@nowhere.test' id='n2'><body>?</body></message>")
    back = await bob.wait_for(lambda e: is_message(e, "n2"))
    assert back.get("type") == "error"
    assert error_of(back) == (
        "cancel",
        "remote-server-not-found",
        "Server-to-server connection failed: NXDomain in A lookup",
    )


async def test_production_like_dns_and_verified_certificates_both_ways(
    prosody, s2sfast_node, c2s, ports, tls_certfile, tls_ca, tls_ca_file, dns_stub
):
    """SRV records naming hosts, CA-issued certificates checked by both sides (s2sfast
    required_trusted; Prosody with s2s_secure_domains), TLS SNI from the resolved domain."""
    node_port, prosody_c2s, prosody_s2s = ports(3)
    server, query_log = dns_stub({A: node_port, B: prosody_s2s}, "domain")
    peer = prosody(
        tls="required",
        dns_server=server,
        c2s_port=prosody_c2s,
        s2s_port=prosody_s2s,
        certificate=tls_ca.issue([B]),
        extra_cfg=f's2s_secure_domains = {{ "{A}" }}\ns2s_ssl = {{ cafile = "{tls_ca_file}" }}',
    )
    node = await s2sfast_node(
        node_config(
            node_port, mode="required_trusted", certfile=tls_certfile(A), cafile=tls_ca_file
        ),
        resolver=Resolver([server], timeout=2, retries=1),
    )
    bob = await c2s(peer, "bob")
    await bob_to_node(bob, node, "pl1", "production-like")
    await node_to_bob(node, bob, "pl2", "production-like back")
    for c in node.connections():
        assert c.tls and c.peer_certificate.trusted and c.peer_certificate.name_matches
    log = peer.log()
    assert "Forbidding insecure connection" not in log
    for s in completed_sessions(log, "in") + completed_sessions(log, "out"):
        assert s.encrypted and "certificate identity validation result: valid" in s.lines
    assert f"'_xmpp-server._tcp.{B}.' (SRV) / RRs: SRV" in query_log.read_text()
