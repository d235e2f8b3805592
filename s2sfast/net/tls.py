"""TLS for S2S streams: SSLContexts per ``use_starttls`` mode and peer chains.

The contexts are driven by stream.py through ``ssl.MemoryBIO`` + ``ssl.SSLObject`` (never
asyncio's TLS transport, whose 256 KiB read buffer per connection would break the memory
budget). Hygiene is the same in both directions: TLS 1.2 minimum, no TLS compression, no
renegotiation, no session tickets. The RFC 6125 identity check lives in s2sfast.net.peercert and is
re-exported here (:func:`verify_peer`, :class:`PeerCertStatus`, ...).

Cipher strings are read by :mod:`s2sfast.net.ciphers` (:func:`apply_ciphers`).

Peer chains (Python 3.11): ``ssl.SSLObject`` has no public way to get the peer's chain before
3.13, but the private ``SSLObject._sslobj.get_unverified_chain()`` exists in 3.10 - 3.12 and
returns ``_ssl.Certificate`` objects, leaf first, on the server side too (OpenSSL's own server
side list lacks the leaf; CPython inserts it). When a client sent no certificate, 3.11 returns
``[None]`` on the server side. :func:`peer_chain` uses the public method when present (3.13+),
then the private one, then falls back to the leaf alone from ``getpeercert(binary_form=True)``;
a leaf alone still verifies when a trusted root issued it directly. All of this is exercised in
tests/test_tls_handshake.py.

Inbound certificate requests: OpenSSL aborts a handshake whose client certificate does not
verify when the server asked for one, and Python's ``ssl`` has no verify callback. To request
the peer's certificate without letting OpenSSL decide, the server context gets a
certificate-verify callback that accepts every chain (``SSL_CTX_set_cert_verify_callback``
through ``ctypes``, on the libssl that ``_ssl`` is linked with, after checking the SSL_CTX
pointer against the context's own options and verify mode). If that is impossible the server
does not request certificates at all (inbound ``required_trusted`` then fails with "the peer
presented no certificate" instead of a TLS alert).
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
from typing import TYPE_CHECKING

from s2sfast.config.errors import ConfigError
from s2sfast.net.ciphers import apply_ciphers, check_ciphers
from s2sfast.net.peercert import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    XMPP_SERVER_SERVICE,
    PeerCertStatus,
    PeerNames,
    name_matches,
    peer_names,
    verify_peer,
)
from s2sfast.protocol.jid import normalize_domain

if TYPE_CHECKING:
    from collections.abc import Mapping

    from s2sfast.config.loader import ListenS2S, S2SOptions

__all__ = [
    "XMPP_SERVER_SERVICE",
    "ID_ON_XMPPADDR",
    "ID_ON_DNSSRV",
    "PeerNames",
    "PeerCertStatus",
    "check_ciphers",
    "apply_ciphers",
    "ALPN_XMPP_SERVER",
    "make_client_context",
    "make_server_context",
    "requests_peer_certificate",
    "peer_chain",
    "peer_names",
    "name_matches",
    "verify_peer",
]

# --- contexts ------------------------------------------------------------------------------

#: XEP-0368 section 3: the ALPN protocol id of server-to-server XMPP. Every S2S context offers
#: (client) or accepts (server) it; a peer offering nothing else still gets no ALPN at all, and a
#: peer offering only other protocols is not refused (OpenSSL's "no overlap" is not an alert).
ALPN_XMPP_SERVER = "xmpp-server"


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.set_alpn_protocols([ALPN_XMPP_SERVER])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # No session tickets: a resumed session skips the peer certificate we check each time.
    ctx.options |= ssl.OP_NO_TICKET


def _load_certfile(
    ctx: ssl.SSLContext,
    certfile: str | None,
    mode: str,
    *,
    needed: bool,
    option: str = "s2s.certfile",
) -> None:
    if certfile is None:
        if needed:
            raise ConfigError(f"{option}: required when use_starttls is {mode!r}")
        return
    try:
        ctx.load_cert_chain(certfile)
    except FileNotFoundError:
        raise ConfigError(f"{option}: {certfile!r} does not exist") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"{option}: {certfile!r} is not a PEM file with a certificate and its "
            f"unencrypted private key ({getattr(e, 'reason', None) or e})"
        ) from None


def _load_trust(ctx: ssl.SSLContext, cafile: str | None) -> None:
    if cafile is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    try:
        ctx.load_verify_locations(cafile=cafile)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cacertfile: cannot load {cafile!r} ({e})") from None


def make_client_context(s2s: S2SOptions, cafile: str | None = None) -> ssl.SSLContext | None:
    """The context for outgoing S2S streams, or None when ``use_starttls`` is ``"false"``.

    Our certfile (if set) is the client identity; ``s2s.ciphers`` applies. Hostname checking is
    off: identity is checked by :func:`verify_peer`. With ``required_trusted`` OpenSSL also
    verifies the chain (to *cafile*, else the system store) during the handshake, so an
    untrusted server fails there with ``ssl.SSLCertVerificationError``.

    Raises:
        ConfigError: unreadable certfile/cafile, or an unusable ``s2s.ciphers``.
    """
    mode = s2s.use_starttls
    if mode == "false":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _harden(ctx)
    try:
        apply_ciphers(ctx, s2s.ciphers)
    except ValueError as e:
        raise ConfigError(f"s2s.ciphers: {e}") from None
    _load_certfile(ctx, s2s.certfile, mode, needed=False)
    if mode == "required_trusted":
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_trust(ctx, cafile)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_server_context(
    s2s: S2SOptions,
    listen: ListenS2S,
    *,
    hosts: Mapping[str, S2SOptions] | None = None,
) -> ssl.SSLContext | None:
    """The context for incoming S2S streams on *listen*, or None when ``use_starttls`` is false.

    *hosts* (``Config.host_s2s``: local domain -> its effective options) gives each
    ``[[host_config]]`` domain with its own certfile its own identity: a peer naming that domain
    in SNI gets that certificate; anyone else gets *s2s*'s. (The peer's certificate is then
    requested on the whole listener when any host's rule asks for it.)

    Our certfile is the server identity (required: ``[s2s] certfile``, else the listener's
    ``tls.certfile``); ``listen.tls.ciphers`` and ``listen.tls.dhfile`` apply when set. The
    peer's certificate is requested (unless ``listen.tls.verify_mode`` is ``"none"`` and the
    mode is not ``required_trusted``) but never judged by OpenSSL: the handshake succeeds
    whatever the peer presents, and the caller decides with :func:`verify_peer` (against
    ``listen.tls.cacertfile``) so it can close with ``policy-violation`` and a reason.
    Consequently ``getpeercert()`` (dict form) on these connections means nothing about trust,
    and the context's ``verify_mode`` must not be changed afterwards.

    Raises:
        ConfigError: missing/unreadable certfile or dhfile, or unusable ciphers.
    """
    if not hosts:
        return _server_context(s2s, listen, request=_wants_peer_cert(s2s, listen))
    # OpenSSL keeps the first context's verify mode when SNI switches contexts, so every context
    # of this listener asks for the peer's certificate if any host's rule needs it (harmless:
    # the handshake never fails over it) and carries the accept-all callback.
    request = any(_wants_peer_cert(o, listen) for o in (s2s, *hosts.values()))
    base = _server_context(s2s, listen, request=request)
    if base is None:
        return None
    default_cert = s2s.certfile or listen.tls.certfile
    by_domain: dict[str, ssl.SSLContext] = {}
    by_options: dict[tuple[str, str], ssl.SSLContext] = {}
    for domain, opts in hosts.items():
        certfile = opts.certfile
        if opts.use_starttls == "false" or not certfile:
            continue
        if certfile == default_cert and opts.use_starttls == s2s.use_starttls:
            continue
        key = (certfile, opts.use_starttls)
        if key not in by_options:
            by_options[key] = _server_context(opts, listen, request=request)
        by_domain[normalize_domain(domain)] = by_options[key]
    if by_domain:
        base.sni_callback = functools.partial(_pick_host_context, by_domain)
    return base


def _pick_host_context(
    by_domain: dict[str, ssl.SSLContext],
    sslobj: ssl.SSLObject,
    server_name: str | None,
    _ctx: ssl.SSLContext,
) -> None:
    if server_name:
        chosen = by_domain.get(normalize_domain(server_name))
        if chosen is not None:
            sslobj.context = chosen
    return None


def _wants_peer_cert(s2s: S2SOptions, listen: ListenS2S) -> bool:
    if s2s.use_starttls == "false":
        return False
    return listen.tls.verify_mode != "none" or s2s.use_starttls == "required_trusted"


def _server_context(s2s: S2SOptions, listen: ListenS2S, *, request: bool) -> ssl.SSLContext | None:
    mode = s2s.use_starttls
    if mode == "false":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # No TLS 1.3 session tickets: with OP_NO_TICKET OpenSSL would otherwise keep every inbound
    # session in its server cache (measured: ~6 KiB per handshake, up to 20,480 sessions for
    # 300 s), memory a 10,000-stream node cannot spare, for resumptions S2S peers do not use.
    ctx.num_tickets = 0
    tls = listen.tls
    if tls.ciphers:
        try:
            apply_ciphers(ctx, tls.ciphers)
        except ValueError as e:
            raise ConfigError(f"listen.s2s.tls.ciphers: {e}") from None
    if s2s.certfile is None and listen.tls.certfile is not None:
        _load_certfile(
            ctx, listen.tls.certfile, mode, needed=True, option="listen.s2s.tls.certfile"
        )
    else:
        _load_certfile(ctx, s2s.certfile, mode, needed=True)
    if tls.dhfile:
        try:
            ctx.load_dh_params(tls.dhfile)
        except (ssl.SSLError, OSError) as e:
            msg = f"listen.s2s.tls.dhfile: cannot load {tls.dhfile!r} ({e})"
            raise ConfigError(msg) from None
    if request:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        if not _accept_any_peer_chain(ctx):
            ctx.verify_mode = ssl.CERT_NONE
    return ctx


def requests_peer_certificate(ctx: ssl.SSLContext) -> bool:
    """Whether a server context from :func:`make_server_context` asks peers for a certificate."""
    return ctx.verify_mode != ssl.CERT_NONE


# The accept-all certificate-verify callback (see the module docstring for why).
_CERT_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@_CERT_VERIFY_CB
def _accept_chain(_store_ctx: int | None, _arg: int | None) -> int:
    return 1


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    import _ssl

    path = getattr(_ssl, "__file__", None)
    try:
        lib = ctypes.CDLL(path)  # path None: the main program, when _ssl is built in
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_set_cert_verify_callback.restype = None
        lib.SSL_CTX_set_cert_verify_callback.argtypes = [
            ctypes.c_void_p,
            _CERT_VERIFY_CB,
            ctypes.c_void_p,
        ]
    except (OSError, AttributeError):
        return None
    return lib


def _ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """*ctx*'s ``SSL_CTX *`` as CPython holds it (PySSLContext: PyObject_HEAD, then the
    pointer); callers prove it is the context's before writing through it."""
    return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value


def _accept_any_peer_chain(ctx: ssl.SSLContext) -> bool:
    """Make OpenSSL accept any peer chain on *ctx* (we judge it later); False if impossible."""
    if sys.implementation.name != "cpython":
        return False
    lib = _libssl()
    if lib is None:
        return False
    ptr = _ctx_pointer(ctx)
    if not ptr:
        return False
    # Make sure the pointer really is this context's SSL_CTX before writing through it.
    if lib.SSL_CTX_get_options(ptr) != ctx.options:
        return False
    if lib.SSL_CTX_get_verify_mode(ptr) != int(ctx.verify_mode):
        return False
    lib.SSL_CTX_set_cert_verify_callback(ptr, _accept_chain, None)
    return True


# --- peer chain ----------------------------------------------------------------------------


def peer_chain(sslobj: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer sent, leaf first, in DER ([] when it sent none or before the
    handshake completed).

    Uses the public ``get_unverified_chain()`` (Python 3.13+), else the private
    ``_sslobj.get_unverified_chain()`` (3.10 - 3.12), else the leaf from ``getpeercert``.
    """
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(sslobj, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter()
        except (ValueError, ssl.SSLError):
            chain = None
        # 3.11 server side, peer sent no certificate: the list is [None] (the absent leaf).
        if chain and chain[0] is not None:
            return [_der_of(c) for c in chain if c is not None]
    try:
        leaf = sslobj.getpeercert(binary_form=True)
    except ValueError:  # "handshake not done yet"
        return []
    return [leaf] if leaf else []


def _der_of(cert: object) -> bytes:
    if isinstance(cert, bytes | bytearray):
        return bytes(cert)
    import _ssl

    return cert.public_bytes(_ssl.ENCODING_DER)
