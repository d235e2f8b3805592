"""s2sfast's C-level memory handling under valgrind's memcheck.

Three things in s2sfast touch memory that Python does not manage: the Cython framer, the
MemoryBIO buffer swap (s2sfast.net.membio) and the freeing of OpenSSL's peer certificates
(s2sfast.net.peer_release), the last two through ctypes on libssl. A wrong pointer or a double
free there would not always crash; memcheck reports it. Each test runs a script in a child
interpreter under valgrind (``PYTHONMALLOC=malloc``, so every allocation is seen) and fails on
any invalid read, write or free, wherever it happens. CPython's own "uninitialised value"
reports (its small-integer checks) are expected noise and not counted.

The scripts: TLS handshakes over memory BIOs with both releases, then records both ways (TLS
1.2 and 1.3, tickets arriving after the release); and two Nodes on loopback, TLS with trusted
certificates, 300 messages each way and a clean stop. Without valgrind the tests skip (``apt-get
install valgrind``), or fail under ``S2SFAST_REQUIRE_INTEROP=1`` as CI runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent

#: what memcheck says about a wrong pointer or a double free
MEMORY_ERRORS = (
    "Invalid read",
    "Invalid write",
    "Invalid free",
    "Mismatched free",
    "unaddressable byte",
    "Source and destination overlap",
)

_HANDSHAKES = """
    import ssl, sys
    sys.path[:0] = [{tests!r}, {root!r}]
    from tls_pair import Pair, client_context, server_context
    from s2sfast.net import membio, peer_release
    pki = {pki!r}
    assert peer_release.available() and membio.available()
    client = client_context(pki)
    server = server_context(pki, "optional")
    for rounds in range(3):
        pair = Pair(client, server).ok()
        assert peer_release.release(pair.client) and peer_release.release(pair.server)
        assert pair.send(pair.client, pair.server, b"x" * 40000) == b"x" * 40000
        assert pair.send(pair.server, pair.client, b"y" * 300) == b"y" * 300
        for bio in (pair.c_in, pair.c_out, pair.s_in, pair.s_out):
            assert membio.release(bio)
        assert pair.send(pair.client, pair.server, b"z" * 20000) == b"z" * 20000
        pair.client.getpeercert(); pair.server.getpeercert(); pair.client.cipher()
        del pair
    for version in ("TLSv1_2", "TLSv1_3"):
        plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # tickets on
        plain.load_cert_chain(pki["b"])
        plain.maximum_version = ssl.TLSVersion[version]
        tickets = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tickets.load_verify_locations(pki["cafile"])
        pair = Pair(tickets, plain).ok()
        assert peer_release.release(pair.client)
        assert pair.send(pair.server, pair.client, b"t" * 3000) == b"t" * 3000
        assert pair.client.session.has_ticket
    print("done")
"""

_NODES = """
    import asyncio, sys
    sys.path[:0] = [{tests!r}, {root!r}]
    from core_helpers import free_port, node_config
    from s2sfast.node import Node
    pki = {pki!r}

    async def main():
        pa, pb = free_port(), free_port()
        common = dict(mode="required_trusted", cafile=pki["cafile"], state_timeout_ms=60000)
        a = Node(node_config(["a.test"], port=pa, addresses={{"b.test": pb}}, certfile=pki["a"],
                             **common), keepalive=None, idle_timeout=None)
        b = Node(node_config(["b.test"], port=pb, addresses={{"a.test": pa}}, certfile=pki["b"],
                             **common), keepalive=None, idle_timeout=None)
        got_a, got_b = [], []
        a.on_stanza(got_a.append)
        b.on_stanza(got_b.append)
        await a.start()
        await b.start()
        n = 300
        body = "<body>" + "x" * 300 + "</body></message>"
        for i in range(n):
            await a.send(f"<message from='u@a.test' to='v@b.test' id='a{{i}}'>{{body}}".encode())
            await b.send(f"<message from='v@b.test' to='u@a.test' id='b{{i}}'>{{body}}".encode())
        for _ in range(6000):  # a hang guard: valgrind runs ~30x slower
            if len(got_a) >= n and len(got_b) >= n:
                break
            await asyncio.sleep(0.01)
        assert [s.id for s in got_b] == [f"a{{i}}" for i in range(n)]
        assert [s.id for s in got_a] == [f"b{{i}}" for i in range(n)]
        streams = [s for node in (a, b) for s in node.router.streams if s.tls]
        assert streams and all(s._ssl.getpeercert(True) is None for s in streams)
        await a.stop()
        await b.stop()
        print("done")

    asyncio.run(main())
"""


def _memcheck(script: str, pki: dict[str, str], tmp_path: Path) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        why = "valgrind is not installed (apt-get install valgrind)"
        if os.environ.get("S2SFAST_REQUIRE_INTEROP", "") not in ("", "0"):
            pytest.fail(why)
        pytest.skip(why)
    path = tmp_path / "under_valgrind.py"
    text = textwrap.dedent(script).format(tests=str(TESTS), root=str(ROOT), pki=pki)
    path.write_text(text)
    done = subprocess.run(
        [valgrind, "--error-limit=no", sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONMALLOC": "malloc"},
    )
    report = done.stderr
    assert done.returncode == 0 and "done" in done.stdout, report[-4000:]
    assert "ERROR SUMMARY" in report  # valgrind really ran the interpreter
    for kind in MEMORY_ERRORS:
        assert kind not in report, report[max(0, report.index(kind) - 200) :][:4000]


def test_tls_handshakes_and_both_releases(pki: dict[str, str], tmp_path: Path) -> None:
    _memcheck(_HANDSHAKES, pki, tmp_path)


def test_two_nodes_over_tls(pki: dict[str, str], tmp_path: Path) -> None:
    _memcheck(_NODES, pki, tmp_path)
