"""An idle TLS stream gives its MemoryBIO buffers back (s2sfast.net.membio, issue 14).

OpenSSL's memory BIO keeps the largest buffer it ever held. These tests read each BIO's
allocated capacity through OpenSSL itself (``BIO_get_mem_ptr``) on real streams between two
Nodes over loopback TLS: after the handshake both BIOs of both ends hold nothing, and after a
burst of full TLS records they hold at most what one small write would need.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from core_helpers import tls_spec

from s2sfast.config import StreamManagementOptions
from s2sfast.net import membio
from s2sfast.net.tls_layer import BIO_KEEP


def test_release_frees_an_empty_bio_and_the_bio_keeps_working() -> None:
    assert membio.available()  # CPython with the _ssl layout we check: the product relies on it
    bio = ssl.MemoryBIO()
    bio.write(b"x" * 20000)
    assert membio.capacity(bio) >= 20000
    assert bio.read() == b"x" * 20000
    assert membio.capacity(bio) >= 20000  # reading does not shrink it: the reason for release
    assert membio.release(bio)
    assert membio.capacity(bio) == 0
    bio.write(b"<stream:stream>")
    assert bio.pending == 15
    assert bio.read() == b"<stream:stream>"
    bio.write_eof()
    assert bio.eof


def test_release_keeps_a_bio_that_still_holds_bytes() -> None:
    bio = ssl.MemoryBIO()
    bio.write(b"abc" * 1000)
    bio.read(10)
    held = membio.capacity(bio)
    assert not membio.release(bio)
    assert membio.capacity(bio) == held
    assert bio.read() == (b"abc" * 1000)[10:]


def test_release_ignores_what_is_not_a_memory_bio() -> None:
    class Stand:
        pending = 0

    assert not membio.release(Stand())  # type: ignore[arg-type]
    assert membio.capacity(Stand()) is None  # type: ignore[arg-type]


def _capacities(stream: Any) -> tuple[int | None, int | None]:
    return membio.capacity(stream._in_bio), membio.capacity(stream._out_bio)


@pytest.mark.parametrize("sm", [True, False], ids=["sm", "no-sm"])
async def test_idle_tls_streams_hold_no_bio_buffers(federation, tls_certfile, tls_ca_file, sm):
    options = StreamManagementOptions(enabled=sm)
    nodes = await federation(
        {
            "A": {**tls_spec(tls_certfile, tls_ca_file, "a.test"), "stream_management": options},
            "B": {**tls_spec(tls_certfile, tls_ca_file, "b.test"), "stream_management": options},
        }
    )
    a, b = nodes["A"], nodes["B"]
    await a.send(b"<message from='u@a.test' to='v@b.test' id='m1'><body>hi</body></message>")
    assert (await b.inbox.get()).id == "m1"
    streams = [s for n in (a, b) for s in n.router.streams if s.authenticated]
    assert len(streams) >= 2 and all(s.tls for s in streams)
    for s in streams:
        # the handshake's flights (1.2 KiB here; more with longer chains) were given back;
        # only the small writes since (stream header, features, dialback, one message, about
        # 600 bytes at most) grew a buffer again
        cin, cout = _capacities(s)
        assert cin is not None and cout is not None
        assert cin <= 800 and cout <= 800, (s.describe(), cin, cout)

    n = 600
    for i in range(n):
        raw = f"<message from='u@a.test' to='v@b.test' id='b{i}'><body>{'y' * 400}</body></message>"
        await a.send(raw.encode())
    assert [(await b.inbox.get()).id for _ in range(n)] == [f"b{i}" for i in range(n)]
    for s in streams:
        cin, cout = _capacities(s)
        # 240 KB went through: without release the sender's out-BIO would keep ~22 KiB and
        # the receiver's in-BIO ~5.4 KiB for the rest of the stream's life
        assert cin <= BIO_KEEP * 4 // 3 + 64 and cout <= BIO_KEEP * 4 // 3 + 64, (
            s.describe(),
            cin,
            cout,
        )
