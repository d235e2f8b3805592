"""TLS for an XmlStream: an ``ssl.SSLObject`` between two ``ssl.MemoryBIO``s.

Not ``loop.start_tls``: asyncio's TLS transport keeps a 256 KiB read buffer per connection,
while an idle SSLObject costs only OpenSSL's own state. The BIOs are fed and drained in
bounded slices, because their buffers never shrink (memory per idle stream, issue 14).
:class:`TlsLayer` is a mixin of :class:`s2sfast.net.stream.XmlStream`, whose slots it uses.
"""

from __future__ import annotations

import logging
import ssl

from s2sfast.net.membio import release
from s2sfast.net.peer_release import release as release_peer_certificates
from s2sfast.net.tls import peer_chain
from s2sfast.protocol.errors import RemoteStreamError
from s2sfast.protocol.events import ConnectionLost, StartTls, TlsUp

__all__ = ["TlsLayer", "TLS_READ_SIZE", "TLS_IN_SLICE", "TLS_OUT_SLICE", "BIO_KEEP"]

log = logging.getLogger("s2sfast.stream")

#: plaintext read per SSLObject.read call: one TLS record's worth
TLS_READ_SIZE = 16 * 1024
#: An ``ssl.MemoryBIO`` keeps the largest buffer it ever held (OpenSSL's BUF_MEM never shrinks,
#: and grows by 4/3): one 256 KiB read fed at once, or one 256 KiB batch encrypted at once,
#: would stay allocated (~340 KiB) for the life of the stream, idle or not. Received bytes go
#: into the in-BIO at most this many at a time (a few more SSLObject.read calls per read) ...
TLS_IN_SLICE = 4 * 1024
#: ... and plaintext is encrypted at most one TLS record (16 KiB) at a time, each record taken
#: out of the out-BIO before the next: the same records as one big write, in one
#: transport.write per batch, with an out-BIO of one record (~22 KiB once a batch exceeded it).
TLS_OUT_SLICE = 16 * 1024
#: A BIO that carried more than this at once gives its buffer back as soon as it is empty
#: (:func:`s2sfast.net.membio.release`: the out-BIO after such a write, the in-BIO after a
#: read fed in slices; a smaller read never grows it past one slice), and both do when the
#: handshake ends: an idle stream keeps at most ~5.4 KiB per BIO instead of the largest
#: flight or batch it ever saw. Smaller traffic keeps its buffer, so a steady trickle does not
#: free and allocate on every write (a release costs ~1.9 us: 329 releases for 100,000
#: messages of 400 bytes on the library path).
BIO_KEEP = 4 * 1024


class TlsLayer:
    """STARTTLS / Direct TLS handshake, decryption of what arrives, encryption of what leaves."""

    __slots__ = ()
    _ssl: ssl.SSLObject | None
    _in_bio: ssl.MemoryBIO | None
    _out_bio: ssl.MemoryBIO | None

    def _tls_received_sliced(self, data: bytes) -> None:
        """:meth:`data_received` under TLS for a big read: the in-BIO takes it a slice at a
        time (TLS_IN_SLICE), so its never-shrinking buffer stays small."""
        view = memoryview(data)
        for i in range(0, len(data), TLS_IN_SLICE):
            if self._lost or self._in_bio is None:
                return
            self._in_bio.write(view[i : i + TLS_IN_SLICE])
            if self._handshaking:
                self._handshake()
                if self._handshaking:
                    continue  # the handshake wants the next slice
                if self._ssl is None:
                    return
            self._read_tls()
        if self._in_bio is not None:
            release(self._in_bio)

    def _write_tls_sliced(self, data: bytes) -> None:
        """Encrypt a big batch one TLS record at a time (TLS_OUT_SLICE), taking each record out
        of the out-BIO before the next, and hand the records to the transport in one write."""
        assert self._ssl is not None and self._out_bio is not None and self.transport is not None
        view = memoryview(data)
        write, take = self._ssl.write, self._out_bio.read
        records = []
        for i in range(0, len(data), TLS_OUT_SLICE):
            write(view[i : i + TLS_OUT_SLICE])
            records.append(take())
        self.transport.write(b"".join(records))
        release(self._out_bio)

    def _drain_bio(self) -> None:
        out = self._out_bio
        assert out is not None and self.transport is not None
        size = out.pending
        if size:
            self.transport.write(out.read())
            if size > BIO_KEEP:
                release(out)

    def _start_tls(self, action: StartTls) -> None:
        if self.ssl_context is None:
            self._fail(RemoteStreamError("undefined-condition", "no TLS context for STARTTLS"))
            return
        self._flush(force=True)  # <proceed/> / <starttls/> go out in plaintext
        self._in_bio = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._ssl = self.ssl_context.wrap_bio(
            self._in_bio,
            self._out_bio,
            server_side=action.server_side,
            server_hostname=action.server_hostname,
        )
        self._handshaking = True
        self.framer = self._new_framer()
        self._handshake()

    def _handshake(self) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._drain_bio()
            return
        except (ssl.SSLError, OSError) as exc:
            self._drain_bio()
            what = "Direct TLS handshake" if self.direct_tls else "TLS handshake"
            reason = f"{what} failed: {getattr(exc, 'reason', None) or exc}"
            log.warning("%s on %s", reason, self.describe())
            self.owner.stream_event(self, "tls-failed", {"reason": reason})
            self._handshaking = False
            self._perform(self.machine.receive(ConnectionLost(reason=reason, retry=False)))
            self.abort()
            return
        self._handshaking = False
        self._drain_bio()
        chain = tuple(peer_chain(self._ssl))
        # read once, in DER: OpenSSL's decoded copies (~4.6 KiB per end) go
        release_peer_certificates(self._ssl)
        self.alpn = self._ssl.selected_alpn_protocol()
        log.info(
            "TLS up (%s%s%s) on %s",
            self._ssl.version(),
            ", Direct TLS" if self.direct_tls else "",
            f", ALPN {self.alpn}" if self.alpn else "",
            self.describe(),
        )
        cipher = self._ssl.cipher()
        self.owner.stream_event(
            self,
            "tls-up",
            {
                "version": self._ssl.version(),
                "cipher": cipher[0] if cipher else None,
                "direct_tls": self.direct_tls,
                "alpn": self.alpn,
            },
        )
        self._perform(self.machine.receive(TlsUp(chain=chain, version=self._ssl.version())))
        # What came with the peer's last flight is read now, so that both BIOs are empty
        # and give back the handshake's buffers (the caller's own read then finds nothing).
        if self._ssl is not None and not self._lost:
            self._read_tls()
        for bio in (self._in_bio, self._out_bio):
            if bio is not None:
                release(bio)

    def _read_tls(self) -> None:
        assert self._ssl is not None
        while not self._lost:
            try:
                chunk = self._ssl.read(TLS_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._peer_closed = True
                self._shutdown()
                return
            except ssl.SSLError as exc:
                log.warning("TLS error on %s: %s", self.describe(), exc)
                self.abort()
                return
            if not chunk:
                break
            self._feed(chunk)
        if not self._lost:
            self._drain_bio()
