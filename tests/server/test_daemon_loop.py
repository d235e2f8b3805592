"""``s2sfast run --loop {asyncio,uvloop}``: two daemons federate over TLS (required, dialback)
on either event loop, a component each; a burst large enough to fill the transports' write
buffers (pause_writing/resume_writing, pause_reading/resume_reading) arrives whole and in order."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, RawComponent, free_port

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

pytestmark = pytest.mark.slow

BURST = 3000


def _config(path: Path, host: str, ports: dict[str, int], peer: str, cert: str, ca: str) -> str:
    path.write_text(
        f"""[general]
  hosts = ["{host}"]
[[listen.s2s]]
  port = {ports[host]}
  ip_address = "127.0.0.1"
  tls.cacertfile = "{ca}"
[[listen.service]]
  port = {ports["comp-" + host]}
  ip_address = "127.0.0.1"
  password = "pw"
[s2s]
  use_starttls = "required"
  certfile = "{cert}"
  default_policy = "allow"
  [[s2s.address]]
    host = "{peer}"
    ip_address = "127.0.0.1"
    port = {ports[peer]}
"""
    )
    return str(path)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_daemons_federate_on_each_loop(tmp_path: Path, loop: str) -> None:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed (pip install 's2sfast[uvloop]')")
    import certs

    ca = certs.make_ca("loop test CA")
    cafile = ca.write_pem(tmp_path, "ca.pem")
    ports = {k: free_port() for k in ("a.test", "b.test", "comp-a.test", "comp-b.test")}
    daemons = {}
    for host, peer in (("a.test", "b.test"), ("b.test", "a.test")):
        cert = ca.issue([host]).write_pem(tmp_path, f"{host}.pem")
        cfg = _config(tmp_path / f"{host}.toml", host, ports, peer, cert, cafile)
        daemons[host] = DaemonProcess("--config", cfg, "--loop", loop)
    try:
        for daemon in daemons.values():
            daemon.wait_ready()
            daemon.wait_for_log(re.escape(f"event loop: {loop}"))
        alice, answer = await RawComponent.connect(ports["comp-a.test"], "a.test", "pw")
        assert answer.name == "handshake", answer
        bob, answer = await RawComponent.connect(ports["comp-b.test"], "b.test", "pw")
        assert answer.name == "handshake", answer
        pad = "x" * 300
        alice.send(
            "".join(
                f"<message from='alice@a.test' to='bob@b.test' id='m{i}'><body>{i} {pad}</body>"
                "</message>"
                for i in range(BURST)
            )
        )
        ids = []
        while len(ids) < BURST:
            stanza = await bob.next_stanza(30)
            if stanza.name == "message":
                ids.append(stanza.id)
        assert ids == [f"m{i}" for i in range(BURST)]
        log = daemons["a.test"].log() + daemons["b.test"].log()
        assert "Traceback" not in log and "Exception in callback" not in log, log
        alice.close()
        bob.close()
        await asyncio.sleep(0)
    finally:
        codes = {h: d.stop() for h, d in daemons.items()}
    assert codes == {"a.test": 0, "b.test": 0}, [d.log() for d in daemons.values()]
