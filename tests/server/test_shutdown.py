"""SIGTERM with peers that reset, stall and vanish: `s2sfast run` exits 0 without a traceback."""

from __future__ import annotations

import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, component_config, free_port

pytest.importorskip("s2sfast._framer", reason="the compiled framer is not built")

pytestmark = pytest.mark.slow


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the peer vanished."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_sigterm_with_peers_that_reset_stall_and_vanish_exits_0(
    tmp_path: Path, delay: float
) -> None:
    s2s, comp = free_port(), free_port()
    cfg = component_config(tmp_path, comp, s2s_port=s2s)
    daemon = DaemonProcess("--config", str(cfg))
    peers: list[socket.socket] = []
    try:
        daemon.wait_ready()
        header = (
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
            b"to='a.test' from='b.test' version='1.0'>"
        )
        reset = socket.create_connection(("127.0.0.1", s2s))
        reset.sendall(header)
        stalled = socket.create_connection(("127.0.0.1", s2s))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(header)  # and never reads again
        gone = socket.create_connection(("127.0.0.1", comp))
        gone.sendall(
            b"<stream:stream xmlns='jabber:component:accept' "
            b"xmlns:stream='http://etherx.jabber.org/streams' to='bot.a.test'>"
        )
        peers += [stalled]
        time.sleep(0.1)
        _reset(reset)
        _reset(gone)
        time.sleep(delay)
        daemon.signal(signal.SIGTERM)
        code = daemon.stop(30)
        log = daemon.log()
        assert code == 0, log
        assert "Traceback" not in log, log
        assert "stopped" in log
    finally:
        for peer in peers:
            peer.close()
        daemon.kill()
