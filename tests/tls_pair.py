"""Two SSLObjects back to back through memory BIOs: real TLS handshakes and records between
s2sfast's contexts without sockets, driven the way s2sfast.net.stream drives TLS; and those
contexts, made from the ``pki`` fixture's files (tests/net/conftest.py)."""

from __future__ import annotations

import ssl

from s2sfast.config import ListenS2S, ListenTls, S2SOptions
from s2sfast.net.tls import make_client_context, make_server_context


def client_context(
    pki: dict[str, str], mode="required_trusted", cert="a", ciphers=None, cafile="cafile"
) -> ssl.SSLContext | None:
    """s2sfast's outgoing context with *mode*, identity *cert*, trusting *cafile* (keys of
    *pki*; None for no certificate or no CA file)."""
    kw = {"ciphers": ciphers} if ciphers else {}
    s2s = S2SOptions(use_starttls=mode, certfile=pki[cert] if cert else None, **kw)
    return make_client_context(s2s, pki[cafile] if cafile else None)


def server_context(
    pki: dict[str, str], mode="required_trusted", cert="b", **tls
) -> ssl.SSLContext | None:
    """s2sfast's listener context with *mode*, identity *cert* and ``[listen.s2s] tls``
    options *tls*."""
    s2s = S2SOptions(use_starttls=mode, certfile=pki[cert])
    return make_server_context(s2s, ListenS2S(port=5269, tls=ListenTls(**tls)))


class Pair:
    """A client and a server SSLObject wired back to back through memory BIOs."""

    def __init__(self, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, sni="b.test"):
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname=sni)
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)

    def shuttle(self) -> bool:
        moved = False
        for src, dst in ((self.c_out, self.s_in), (self.s_out, self.c_in)):
            data = src.read()
            if data:
                dst.write(data)
                moved = True
        return moved

    def handshake(self) -> tuple[Exception | None, Exception | None]:
        """Run both handshakes to quiescence; return (client error, server error)."""
        done = {"client": False, "server": False}
        errors: dict[str, Exception | None] = {"client": None, "server": None}
        for _ in range(50):
            for side in ("client", "server"):
                if done[side] or errors[side]:
                    continue
                try:
                    getattr(self, side).do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as e:
                    errors[side] = e
            if not self.shuttle() and (all(done.values()) or any(errors.values())):
                break
        return errors["client"], errors["server"]

    def ok(self) -> Pair:
        client_err, server_err = self.handshake()
        assert client_err is None and server_err is None, (client_err, server_err)
        return self

    def send(self, sender: ssl.SSLObject, receiver: ssl.SSLObject, data: bytes) -> bytes:
        sender.write(data)
        self.shuttle()
        got = b""
        while True:
            try:
                got += receiver.read(65536)
            except ssl.SSLWantReadError:
                if not self.shuttle():
                    return got
