"""TLS for S2S streams: SSLContexts per ``use_starttls`` mode, cipher strings, peer chains.

The contexts are driven by stream.py through ``ssl.MemoryBIO`` + ``ssl.SSLObject`` (never
asyncio's TLS transport, whose 256 KiB read buffer per connection would break the memory
budget). Hygiene is the same in both directions: TLS 1.2 minimum, no TLS compression, no
renegotiation, no session tickets. The RFC 6125 identity check lives in s2sfast.peercert and is
re-exported here (:func:`verify_peer`, :class:`PeerCertStatus`, ...).

Cipher strings (``[s2s] ciphers``, ``[listen.s2s.tls] ciphers``) are OpenSSL cipher lists, which
only configure TLS 1.2 and below; Python 3.11 cannot choose TLS 1.3 suites, which stay at
OpenSSL's defaults. Our reading, implemented by :func:`apply_ciphers`:

* the keywords ``TLSv1.2`` etc. and suite names keep their OpenSSL meaning for TLS <= 1.2, and
  TLS 1.3 stays enabled with its default suites (as with MongooseIM, whose default is
  ``"TLSv1.2:TLSv1.3"``);
* a string naming only ``TLSv1.3`` (e.g. ``"TLSv1.3"``) means TLS 1.3 only (minimum version 1.3);
* ``!TLSv1.3`` (or ``-TLSv1.3``) in the string means no TLS 1.3 (maximum version 1.2);
* a TLS 1.3 suite name (``TLS_AES_128_GCM_SHA256`` ...) is refused with ValueError, because it
  cannot be honoured.

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
import re
import ssl
import sys
from typing import TYPE_CHECKING

from .peercert import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    XMPP_SERVER_SERVICE,
    PeerCertStatus,
    PeerNames,
    name_matches,
    peer_names,
    verify_peer,
)
from .policy import normalize_domain

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .config import ListenS2S, S2SOptions

__all__ = [
    "XMPP_SERVER_SERVICE",
    "ID_ON_XMPPADDR",
    "ID_ON_DNSSRV",
    "PeerNames",
    "PeerCertStatus",
    "check_ciphers",
    "apply_ciphers",
    "make_client_context",
    "make_server_context",
    "requests_peer_certificate",
    "peer_chain",
    "peer_names",
    "name_matches",
    "verify_peer",
]

_TLS13_SUITE = re.compile(r"^TLS_(AES|CHACHA20|AES_128_CCM)", re.ASCII)
_TLS13_KEYWORDS = frozenset({"TLSv1.3", "+TLSv1.3"})
_NO_TLS13_KEYWORDS = frozenset({"!TLSv1.3", "-TLSv1.3"})

# --- cipher strings -----------------------------------------------------------------------


def _cipher_tokens(cipher_string: str) -> list[str]:
    return [t for t in re.split(r"[:, ]+", cipher_string.strip()) if t]


def _plan_ciphers(cipher_string: str) -> tuple[str | None, bool | None]:
    """Split a cipher string into (OpenSSL list for TLS <= 1.2 or None, TLS 1.3 wanted).

    The second item is True for "TLS 1.3 only", False for "no TLS 1.3", None for "as usual".
    """
    if not isinstance(cipher_string, str) or not cipher_string.strip():
        raise ValueError("cipher string is empty")
    tokens = _cipher_tokens(cipher_string)
    suites13 = [t for t in tokens if _TLS13_SUITE.match(t.lstrip("!-+"))]
    if suites13:
        raise ValueError(
            f"cipher string {cipher_string!r} names TLS 1.3 suites ({', '.join(suites13)}), "
            "which Python's ssl cannot select; write 'TLSv1.3' to allow TLS 1.3 with "
            "OpenSSL's default suites, or 'TLSv1.3' alone to require it"
        )
    no13 = any(t in _NO_TLS13_KEYWORDS for t in tokens)
    rest = [t for t in tokens if t not in _TLS13_KEYWORDS and t not in _NO_TLS13_KEYWORDS]
    if not rest:
        if no13:
            raise ValueError(f"cipher string {cipher_string!r} excludes every TLS version")
        return None, True
    return ":".join(rest), False if no13 else None


def check_ciphers(cipher_string: str) -> None:
    """Check that OpenSSL can use *cipher_string* (see the module docstring for its meaning).

    Raises:
        ValueError: the string is empty, names TLS 1.3 suites, or selects no usable cipher;
            the message says which and quotes OpenSSL's reason.
    """
    _plan_and_check(cipher_string)


def _plan_and_check(cipher_string: str) -> tuple[str | None, bool | None]:
    openssl_list, tls13 = _plan_ciphers(cipher_string)
    if openssl_list is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(openssl_list)
        except ssl.SSLError as e:
            reason = getattr(e, "reason", None) or (e.args[0] if e.args else str(e))
            raise ValueError(
                f"cipher string {cipher_string!r} selects no cipher OpenSSL can use ({reason})"
            ) from None
    return openssl_list, tls13


def apply_ciphers(ctx: ssl.SSLContext, cipher_string: str) -> None:
    """Configure *ctx* for *cipher_string*: its TLS <= 1.2 cipher list, and the TLS 1.3 minimum
    or TLS 1.2 maximum version the string asks for (see the module docstring).

    Raises:
        ValueError: as :func:`check_ciphers`.
    """
    # Checked on a scratch context first: a failed set_ciphers leaves OpenSSL with an EMPTY
    # cipher list, which would break *ctx* for the caller who catches the error.
    openssl_list, tls13 = _plan_and_check(cipher_string)
    if openssl_list is not None:
        ctx.set_ciphers(openssl_list)
    if tls13 is True:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif tls13 is False:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2


# --- contexts ------------------------------------------------------------------------------


def _config_error(message: str) -> Exception:
    # Imported late: config.py is the bigger module and must not be needed to import tls.py.
    from .config import ConfigError

    return ConfigError(message)


def _harden(ctx: ssl.SSLContext) -> None:
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
            raise _config_error(f"{option}: required when use_starttls is {mode!r}")
        return
    try:
        ctx.load_cert_chain(certfile)
    except FileNotFoundError:
        raise _config_error(f"{option}: {certfile!r} does not exist") from None
    except (ssl.SSLError, OSError) as e:
        raise _config_error(
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
        raise _config_error(f"cacertfile: cannot load {cafile!r} ({e})") from None


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
        raise _config_error(f"s2s.ciphers: {e}") from None
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
            raise _config_error(f"listen.s2s.tls.ciphers: {e}") from None
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
            raise _config_error(msg) from None
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


def _accept_any_peer_chain(ctx: ssl.SSLContext) -> bool:
    """Make OpenSSL accept any peer chain on *ctx* (we judge it later); False if impossible."""
    if sys.implementation.name != "cpython":
        return False
    lib = _libssl()
    if lib is None:
        return False
    # PySSLContext starts with PyObject_HEAD followed by its SSL_CTX pointer.
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
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
