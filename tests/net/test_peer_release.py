"""OpenSSL's copies of the peer's certificates are freed after the handshake (issue 14).

s2sfast.net.peer_release clears the session's peer leaf and chain and a client's verified chain
through ctypes and frees them with OpenSSL's own calls. These tests run real handshakes between
s2sfast's own contexts (SSLObject over MemoryBIOs, as the streams use them) and between two
Nodes on loopback, and check what a user would see: the memory goes back to the C heap, the
connection keeps working both ways (TLS 1.3 and 1.2, session tickets arriving afterwards, a
clean close), and the certificate verdict taken at the handshake still authenticates the
stream. tests/net/test_under_valgrind.py runs the same handshakes, and two Nodes, under
valgrind, where an invalid read or a double free in libssl would show.
"""

from __future__ import annotations

import ctypes
import os
import ssl
from typing import Any

import pytest
from core_helpers import tls_spec
from tls_pair import Pair, client_context, server_context

from s2sfast.net import peer_release
from s2sfast.net.tls import peer_chain, verify_peer


def test_release_frees_both_ends_certificates_and_the_connection_keeps_working(pki):
    assert peer_release.available()  # CPython over OpenSSL's default allocator: relied upon
    pair = Pair(client_context(pki), server_context(pki, "optional")).ok()
    client_chain, server_chain = peer_chain(pair.client), peer_chain(pair.server)
    assert len(client_chain) == 1 and len(server_chain) == 2  # b's leaf; a's leaf + intermediate
    version, cipher = pair.client.version(), pair.client.cipher()

    assert peer_release.release(pair.client)  # the leaf, the chain and the verified chain
    assert peer_release.release(pair.server)
    assert pair.client.getpeercert(binary_form=True) is None
    assert pair.server.getpeercert(binary_form=True) is None
    assert peer_chain(pair.client) == [] and peer_chain(pair.server) == []
    assert not peer_release.release(pair.client)  # nothing is left to free

    # what was read before is all the verdict needs
    assert verify_peer(client_chain, "b.test", cafile=pki["cafile"]).ok
    assert verify_peer(server_chain, "a.test", cafile=pki["cafile"]).ok
    assert (pair.client.version(), pair.client.cipher()) == (version, cipher)
    big = os.urandom(100_000)
    assert pair.send(pair.client, pair.server, big) == big
    assert pair.send(pair.server, pair.client, b"<stream:stream>") == b"<stream:stream>"
    with pytest.raises(ssl.SSLWantReadError):  # close_notify sent, the peer's not yet read
        pair.client.unwrap()
    pair.shuttle()
    assert pair.server.read(10) == b""  # the close_notify, read cleanly


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tickets_that_arrive_after_the_release_are_taken(pki, version):
    """A peer server that hands out session tickets (Prosody does) sends them after its
    Finished: the client reads them from a session whose certificates are gone."""
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # tickets on, unlike s2sfast's servers
    plain.load_cert_chain(pki["b_rsa"])
    plain.maximum_version = ssl.TLSVersion[version]
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # tickets accepted, unlike s2sfast's
    client.load_verify_locations(pki["cafile"])
    pair = Pair(client, plain).ok()
    assert peer_release.release(pair.client)
    assert pair.send(pair.server, pair.client, b"x" * 5000) == b"x" * 5000
    assert pair.client.session is not None and pair.client.session.has_ticket
    assert pair.client.version() == version.replace("_", ".")
    assert pair.client.getpeercert(binary_form=True) is None
    assert pair.send(pair.client, pair.server, b"y" * 5000) == b"y" * 5000


def test_release_refuses_what_it_cannot_prove(pki):
    no_request = server_context(pki, "optional", verify_mode="none")
    pair = Pair(client_context(pki, "optional"), no_request)
    assert not peer_release.release(pair.client)  # no handshake yet: no peer
    pair.ok()
    assert not peer_release.release(pair.server)  # the client was not asked for a certificate
    assert peer_release.release(pair.client)

    class Impostor:
        _sslobj = object()
        context = pair.client.context
        server_side = False

    assert not peer_release.release(Impostor())  # type: ignore[arg-type]
    assert pair.send(pair.client, pair.server, b"ok") == b"ok"


def _malloc_in_use() -> int:
    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
            "fordblks keepcost".split()
        ]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def test_the_memory_goes_back_to_the_c_heap(pki):
    """The point of it: a decoded certificate is 4-5 KiB of OpenSSL's heap per end."""
    pairs = [Pair(client_context(pki), server_context(pki, "optional")).ok() for _ in range(40)]
    for p in pairs:
        p.send(p.client, p.server, b"x")
    before = _malloc_in_use()
    for p in pairs:
        assert peer_release.release(p.client) and peer_release.release(p.server)
    freed_per_end = (before - _malloc_in_use()) / (2 * len(pairs))
    assert freed_per_end > 3000, freed_per_end


def _authenticated_tls(nodes: dict[str, Any]) -> list[Any]:
    return [s for n in nodes.values() for s in n.router.streams if s.authenticated and s.tls]


async def test_streams_between_nodes_keep_their_verdict_not_the_certificates(
    federation, tls_certfile, tls_ca_file
):
    nodes = await federation(
        {
            "A": tls_spec(tls_certfile, tls_ca_file, "a.test", mode="required_trusted"),
            "B": tls_spec(tls_certfile, tls_ca_file, "b.test", mode="required_trusted"),
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(b"<message from='u@a.test' to='v@b.test' id='m1'><body>hi</body></message>")
    assert (await b.inbox.get()).id == "m1"
    await b.send(b"<message from='v@b.test' to='u@a.test' id='m2'><body>hi</body></message>")
    assert (await a.inbox.get()).id == "m2"
    streams = _authenticated_tls(nodes)
    assert len(streams) >= 2
    for s in streams:
        assert s._ssl.getpeercert(binary_form=True) is None, s.describe()
        assert s.machine.peer_cert is not None and s.machine.peer_cert.ok, s.describe()
    for i in range(200):
        await a.send(f"<message to='v@b.test' from='u@a.test' id='n{i}'/>".encode())
    assert [(await b.inbox.get()).id for _ in range(200)] == [f"n{i}" for i in range(200)]
