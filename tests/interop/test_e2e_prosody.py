"""Interop: a real Prosody 0.12 (Debian package) federating with a Node on loopback.

Prosody runs from ../shared/interop/prosody_peer.sh (state in tmp_path, stopped by PID). It
authenticates our stream by dialing back to our listener with db:verify, and we verify its key
the same way, in both TLS modes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from core_helpers import free_port, message, node_config

from s2sfast import Node

INTEROP = Path("/work/shared/interop")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prosody") is None or not (INTEROP / "prosody_peer.sh").exists(),
        reason="Prosody or the interop scripts are not installed",
    ),
]


def _raw_client():
    spec = importlib.util.spec_from_file_location("xmpp_raw_client", INTEROP / "xmpp_raw_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Prosody:
    def __init__(self, directory: Path, tls: str) -> None:
        self.env = {**os.environ, "PEER_DIR": str(directory), "S2S_TLS": tls, "LOG_LEVEL": "info"}
        self.c2s, self.s2s = free_port(), free_port()

    def run(self, *args: str) -> None:
        subprocess.run(
            [str(INTEROP / "prosody_peer.sh"), *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self, remote_port: int) -> None:
        self.run("start", "b.test", str(self.c2s), str(self.s2s), f"a.test=127.0.0.1:{remote_port}")
        self.run("adduser", "b.test", "bob", "pw")

    def stop(self) -> None:
        self.run("stop", "b.test")


@pytest.mark.parametrize("ours, theirs", [("false", "off"), ("required", "required")])
async def test_prosody_federates_both_ways(tmp_path, tls_certfile, ours, theirs):
    prosody = Prosody(tmp_path / "prosody", theirs)
    port = free_port()
    node = Node(
        node_config(
            ["a.test"],
            port=port,
            addresses={"b.test": prosody.s2s},
            mode=ours,
            certfile=tls_certfile("a.test"),
        )
    )
    inbox: asyncio.Queue = asyncio.Queue()
    node.on_stanza(inbox.put_nowait)
    await node.start()
    prosody.start(port)
    raw = _raw_client()
    bob = None
    try:
        bob = await asyncio.to_thread(
            lambda: raw.Conn("bob@b.test", "pw", "127.0.0.1", prosody.c2s).login()
        )
        bob.keep_bodies = True
        body = "hello from s2sfast ✓ <&>"
        await node.send(
            message(
                "alice@a.test/x",
                "bob@b.test/raw",
                body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
                id="i1",
            )
        )

        def wait_message():
            end = time.time() + 20
            while bob.messages < 1 and time.time() < end:
                bob.pump(end - time.time())
            return bob.bodies

        assert await asyncio.to_thread(wait_message) == [body]

        bob.send(
            "<message to='alice@a.test/x' type='chat' id='r1'><body>reply æøå</body></message>"
        )
        got = await asyncio.wait_for(inbox.get(), 20)
        assert got.id == "r1" and got.from_ == "bob@b.test/raw"
        assert "reply æøå".encode() in got.raw
        conns = node.connections()
        assert {c.direction for c in conns} == {"in", "out"}
        assert all(c.tls == (ours != "false") for c in conns)
        assert all(c.auth_method == "dialback" for c in conns if c.pairs)
    finally:
        if bob is not None:
            bob.close()
        await node.stop(timeout=3)
        prosody.stop()
