"""TLS for S2S streams: SSLContexts per ``use_starttls`` mode and the RFC 6125 peer identity check.

The contexts are driven by stream.py through ``ssl.MemoryBIO`` + ``ssl.SSLObject`` (never asyncio's
TLS transport, whose 256 KiB read buffer per connection would break the memory budget). Hygiene
is the same in both directions: TLS 1.2 minimum, no TLS compression, no renegotiation.

Identity is decided by us, not by OpenSSL's hostname check: :func:`verify_peer` checks the chain
(to ``cafile`` or the system store, with ``cryptography.x509.verification``), the validity dates and
the names an XMPP server certificate may carry (RFC 6125 / RFC 7590: SAN dNSName with a single
left-most wildcard label, SRV-ID ``_xmpp-server.<domain>``, id-on-xmppAddr; never the CN). The
caller turns a failed check into ``policy-violation`` with :attr:`PeerCertStatus.reason` as text.

Cipher strings (``[s2s] ciphers``, ``[listen.s2s.tls] ciphers``) are OpenSSL cipher lists, which
only configure TLS 1.2 and below; Python 3.11 cannot choose TLS 1.3 suites, which stay at OpenSSL's
defaults. Our reading, implemented by :func:`apply_ciphers`:

* the keywords ``TLSv1.2`` etc. and suite names keep their OpenSSL meaning for TLS <= 1.2, and
  TLS 1.3 stays enabled with its default suites (as with MongooseIM, whose default is
  ``"TLSv1.2:TLSv1.3"``);
* a string naming only ``TLSv1.3`` (e.g. ``"TLSv1.3"``) means TLS 1.3 only (minimum version 1.3);
* a TLS 1.3 suite name (``TLS_AES_128_GCM_SHA256`` ...) is refused with ValueError, because it
  cannot be honoured.

Peer chains (Python 3.11): ``ssl.SSLObject`` has no public way to get the peer's chain before
3.13, but the private ``SSLObject._sslobj.get_unverified_chain()`` exists in 3.10 - 3.12 and
returns ``_ssl.Certificate`` objects, leaf first, on the server side too (tested in
tests/test_tls_handshake.py). :func:`peer_chain` uses the public method when present (3.13+),
then the private one, then falls back to the leaf alone from ``getpeercert(binary_form=True)``;
a leaf alone still verifies when a trusted root issued it directly.

Inbound certificate requests: OpenSSL aborts a handshake whose client certificate does not verify
when the server asked for one, and Python's ``ssl`` has no verify callback. To request the peer's
certificate without letting OpenSSL decide, the server context gets a certificate-verify
callback that accepts every chain (``SSL_CTX_set_cert_verify_callback`` through ``ctypes``, on
the libssl that ``_ssl`` is linked with, after checking the SSL_CTX pointer against the
context's own options and verify mode).
If that is impossible the server does not request certificates at all (so inbound
``required_trusted`` then fails with "the peer presented no certificate" instead of a TLS alert).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import functools
import ipaddress
import os
import re
import ssl
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification as _verification

if TYPE_CHECKING:
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

#: The SRV service name whose SRV-IDs identify an XMPP server (RFC 6120 section 13.7.1.2.1).
XMPP_SERVER_SERVICE = "_xmpp-server"
#: RFC 6120 section 13.7.1.4: otherName id-on-xmppAddr (a UTF8String JID).
ID_ON_XMPPADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")
#: RFC 4985: otherName id-on-dnsSRV (an IA5String "_service.domain").
ID_ON_DNSSRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")

#: Deepest chain we follow (leaf + intermediates + root); public PKI chains are 3-4 long.
MAX_CHAIN_DEPTH = 8

_TLS13_SUITE = re.compile(r"^TLS_(AES|CHACHA20|AES_128_CCM)", re.ASCII)
_TLS13_KEYWORDS = frozenset({"TLSv1.3", "+TLSv1.3"})

# --- cipher strings -----------------------------------------------------------------------


def _cipher_tokens(cipher_string: str) -> list[str]:
    return [t for t in re.split(r"[:, ]+", cipher_string.strip()) if t]


def _plan_ciphers(cipher_string: str) -> tuple[str | None, bool]:
    """Split a cipher string into (OpenSSL list for TLS <= 1.2 or None, TLS 1.3 only?)."""
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
    rest = [t for t in tokens if t not in _TLS13_KEYWORDS]
    if not rest:
        return None, True
    return ":".join(rest), False


def check_ciphers(cipher_string: str) -> None:
    """Check that OpenSSL can use *cipher_string* (see the module docstring for its meaning).

    Raises:
        ValueError: the string is empty, names TLS 1.3 suites, or selects no usable cipher;
            the message says which and quotes OpenSSL's reason.
    """
    _plan_and_check(cipher_string)


def _plan_and_check(cipher_string: str) -> tuple[str | None, bool]:
    openssl_list, tls13_only = _plan_ciphers(cipher_string)
    if openssl_list is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(openssl_list)
        except ssl.SSLError as e:
            reason = getattr(e, "reason", None) or (e.args[0] if e.args else str(e))
            raise ValueError(
                f"cipher string {cipher_string!r} selects no cipher OpenSSL can use ({reason})"
            ) from None
    return openssl_list, tls13_only


def apply_ciphers(ctx: ssl.SSLContext, cipher_string: str) -> None:
    """Configure *ctx* for *cipher_string*: its TLS <= 1.2 cipher list or, for a string naming
    only TLS 1.3, a TLS 1.3 minimum version.

    Raises:
        ValueError: as :func:`check_ciphers`.
    """
    # Checked on a scratch context first: a failed set_ciphers leaves OpenSSL with an EMPTY
    # cipher list, which would break *ctx* for the caller who catches the error.
    openssl_list, tls13_only = _plan_and_check(cipher_string)
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx.set_ciphers(openssl_list)


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


def _load_certfile(ctx: ssl.SSLContext, certfile: str | None, mode: str, *, needed: bool) -> None:
    if certfile is None:
        if needed:
            raise _config_error(f"s2s.certfile: required when use_starttls is {mode!r}")
        return
    try:
        ctx.load_cert_chain(certfile)
    except FileNotFoundError:
        raise _config_error(f"s2s.certfile: {certfile!r} does not exist") from None
    except (ssl.SSLError, OSError) as e:
        raise _config_error(
            f"s2s.certfile: {certfile!r} is not a PEM file with a certificate and its "
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


def make_server_context(s2s: S2SOptions, listen: ListenS2S) -> ssl.SSLContext | None:
    """The context for incoming S2S streams on *listen*, or None when ``use_starttls`` is false.

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
    _load_certfile(ctx, s2s.certfile or listen.tls.certfile, mode, needed=True)
    if tls.dhfile:
        try:
            ctx.load_dh_params(tls.dhfile)
        except (ssl.SSLError, OSError) as e:
            msg = f"listen.s2s.tls.dhfile: cannot load {tls.dhfile!r} ({e})"
            raise _config_error(msg) from None
    if tls.verify_mode != "none" or mode == "required_trusted":
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


# --- names ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerNames:
    """The identities a certificate presents (RFC 6125 section 6 / RFC 6120 section 13.7.1).

    Attributes:
        dns_names: SAN dNSName entries, lower-case, trailing dot removed.
        srv_ids: SAN SRV-ID entries as ``(service, domain)``, e.g. ``("_xmpp-server", "a.test")``.
        xmpp_addrs: SAN id-on-xmppAddr entries (JIDs).
        common_names: subject CNs, for display only: never used to match.
    """

    dns_names: tuple[str, ...] = ()
    srv_ids: tuple[tuple[str, str], ...] = ()
    xmpp_addrs: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()

    def describe(self) -> str:
        """A short human list of the names, for logs and stream-error texts."""
        parts = [f"DNS:{n}" for n in self.dns_names]
        parts += [f"SRV:{s}.{d}" for s, d in self.srv_ids]
        parts += [f"xmppAddr:{a}" for a in self.xmpp_addrs]
        if not parts:
            parts = [f"CN:{c} (not used)" for c in self.common_names] or ["no names"]
        return ", ".join(parts)


def _der_string(value: bytes, tag: int) -> str | None:
    """Decode a DER TLV of string type *tag* (the content of an otherName), None if malformed."""
    if len(value) < 2 or value[0] != tag:
        return None
    n = value[1]
    pos = 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4 or len(value) < 2 + count:
            return None
        n = int.from_bytes(value[2 : 2 + count], "big")
        pos = 2 + count
    if len(value) != pos + n:
        return None
    try:
        return value[pos:].decode("utf-8" if tag == 0x0C else "ascii")
    except UnicodeDecodeError:
        return None


def _norm_domain(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def peer_names(cert_der: bytes) -> PeerNames:
    """Extract the identities of the certificate *cert_der*.

    Raises:
        ValueError: *cert_der* is not a DER certificate.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    return _names_of(cert)


def _names_of(cert: x509.Certificate) -> PeerNames:
    cns = tuple(
        str(a.value) for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return PeerNames(common_names=cns)
    except ValueError:  # a malformed SAN extension: no usable names
        return PeerNames(common_names=cns)
    dns = tuple(_norm_domain(n) for n in san.get_values_for_type(x509.DNSName))
    srv: list[tuple[str, str]] = []
    addrs: list[str] = []
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == ID_ON_DNSSRV:
            text = _der_string(other.value, 0x16)
            if text and text.startswith("_") and "." in text:
                service, _, domain = text.partition(".")
                srv.append((service.lower(), _norm_domain(domain)))
        elif other.type_id == ID_ON_XMPPADDR:
            text = _der_string(other.value, 0x0C)
            if text:
                addrs.append(text)
    return PeerNames(dns_names=dns, srv_ids=tuple(srv), xmpp_addrs=tuple(addrs), common_names=cns)


def _dns_match(pattern: str, domain: str) -> bool:
    if pattern == domain:
        return True
    if not pattern.startswith("*."):
        return False
    suffix = pattern[2:]
    # The wildcard covers exactly one whole left-most label, and never a bare public suffix
    # ("*.com"): at least two labels must follow it.
    if "*" in suffix or suffix.count(".") < 1:
        return False
    label, dot, rest = domain.partition(".")
    return bool(dot) and bool(label) and rest == suffix


def name_matches(names: PeerNames, domain: str) -> bool:
    """Whether *names* identify the XMPP server *domain* (RFC 6125; no CN fallback).

    dNSName: exact, or ``*.`` wildcard over exactly one left-most label. SRV-ID: service
    ``_xmpp-server`` and the exact domain. xmppAddr: the domain JID itself.
    """
    want = _norm_domain(domain)
    if not want:
        return False
    try:
        ipaddress.ip_address(want)
        return False  # XMPP domains are DNS names; an IP literal never matches a dNSName here
    except ValueError:
        pass
    if any(_dns_match(n, want) for n in names.dns_names):
        return True
    if any(s == XMPP_SERVER_SERVICE and d == want for s, d in names.srv_ids):
        return True
    return any(_norm_domain(a) == want for a in names.xmpp_addrs if "@" not in a and "/" not in a)


# --- verification --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCertStatus:
    """What we concluded about a peer's certificate.

    Attributes:
        trusted: the chain verifies to the trust anchors and every certificate is in date.
        name_matches: the leaf names the expected domain (RFC 6125, no CN fallback).
        reason: why it is not acceptable (None when trusted and name_matches), ready to use as
            the ``<text/>`` of a ``policy-violation`` stream error.
        names: the leaf's identities.
        not_after: the leaf's expiry (None when there is no leaf).
    """

    trusted: bool
    name_matches: bool
    reason: str | None
    names: PeerNames
    not_after: _dt.datetime | None

    @property
    def ok(self) -> bool:
        """Trusted and naming the domain: what ``required_trusted`` demands."""
        return self.trusted and self.name_matches


def _system_trust_files() -> list[str]:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return [candidate]
    capath = paths.capath or paths.openssl_capath
    if capath and os.path.isdir(capath):
        return sorted(
            os.path.join(capath, f)
            for f in os.listdir(capath)
            if os.path.isfile(os.path.join(capath, f))
        )
    return []


@dataclass(frozen=True, slots=True)
class _Trust:
    store: _verification.Store
    #: DER of every anchor, so that a pinned (self-signed) leaf in the cafile is trusted
    anchors: frozenset[bytes]


@functools.lru_cache(maxsize=16)
def _load_store(files: tuple[str, ...], stamp: tuple[float, ...]) -> _Trust:
    certs: list[x509.Certificate] = []
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
            with warnings.catch_warnings():
                # Some system roots have negative serials; cryptography warns but loads them.
                warnings.simplefilter("ignore")
                certs.extend(x509.load_pem_x509_certificates(data))
        except (OSError, ValueError):
            if len(files) == 1:
                raise ValueError(f"cannot read CA certificates from {path!r}") from None
    if not certs:
        raise ValueError(f"no CA certificates in {', '.join(files) or 'the system store'}")
    anchors = frozenset(c.public_bytes(serialization.Encoding.DER) for c in certs)
    return _Trust(store=_verification.Store(certs), anchors=anchors)


def _trust_store(cafile: str | None) -> _Trust:
    files = [cafile] if cafile is not None else _system_trust_files()
    stamp = []
    for f in files:
        try:
            stamp.append(os.stat(f).st_mtime)
        except OSError:
            stamp.append(-1.0)
    return _load_store(tuple(files), tuple(stamp))


def _check_eku(_policy: object, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    # A server certificate presented in either direction: serverAuth or clientAuth both do.
    if eku is None:
        return
    allowed = {
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
        x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }
    if not allowed.intersection(eku):
        raise ValueError("extended key usage allows neither serverAuth nor clientAuth")


@functools.cache
def _ee_policy() -> _verification.ExtensionPolicy:
    crit = _verification.Criticality.AGNOSTIC
    return (
        _verification.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, crit, _check_eku)
        # A certificate without SAN still chains; it just names nobody (checked separately).
        .may_be_present(x509.SubjectAlternativeName, crit, None)
        # Self-made XMPP certificates often lack the AKI; the issuer is still found by name.
        .may_be_present(x509.AuthorityKeyIdentifier, crit, None)
    )


def _fmt_time(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def verify_peer(
    cert_chain_der: list[bytes],
    domain: str,
    *,
    cafile: str | None,
    now: _dt.datetime | None = None,
) -> PeerCertStatus:
    """Check a peer's certificate chain (leaf first) for the XMPP server *domain*.

    Args:
        cert_chain_der: what :func:`peer_chain` returned.
        domain: the domain the peer claims (stream ``from``/``to``).
        cafile: PEM trust anchors; None means the system store.
        now: the validation time (default: the current time).

    Returns:
        A :class:`PeerCertStatus`; never raises for a bad certificate.
    """
    if not cert_chain_der:
        return PeerCertStatus(
            trusted=False,
            name_matches=False,
            reason="the peer presented no certificate",
            names=PeerNames(),
            not_after=None,
        )
    now = now or _dt.datetime.now(_dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=_dt.UTC)
    try:
        certs = [x509.load_der_x509_certificate(der) for der in cert_chain_der]
    except ValueError as e:
        return PeerCertStatus(
            trusted=False,
            name_matches=False,
            reason=f"the peer's certificate cannot be parsed ({e})",
            names=PeerNames(),
            not_after=None,
        )
    leaf = certs[0]
    names = _names_of(leaf)
    matches = name_matches(names, domain)
    chain_problem = _chain_problem(leaf, certs[1:], cafile, now)
    reason = chain_problem
    if reason is None and not matches:
        reason = f"the certificate does not name {domain} (it names {names.describe()})"
    return PeerCertStatus(
        trusted=chain_problem is None,
        name_matches=matches,
        reason=reason,
        names=names,
        not_after=leaf.not_valid_after_utc,
    )


def _chain_problem(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    cafile: str | None,
    now: _dt.datetime,
) -> str | None:
    """Why the chain is not trusted at *now*, or None when it is."""
    if now < leaf.not_valid_before_utc:
        return f"the certificate is not valid before {_fmt_time(leaf.not_valid_before_utc)}"
    if now > leaf.not_valid_after_utc:
        return f"the certificate expired at {_fmt_time(leaf.not_valid_after_utc)}"
    try:
        trust = _trust_store(cafile)
    except ValueError as e:
        return f"no trust anchors to verify the certificate with: {e}"
    if leaf.public_bytes(serialization.Encoding.DER) in trust.anchors:
        return None  # the peer's own certificate is a configured trust anchor (pinned)
    self_signed = leaf.issuer == leaf.subject
    verifier = (
        _verification.PolicyBuilder()
        .store(trust.store)
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(
            ca_policy=_verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except _verification.VerificationError as e:
        if self_signed:
            return "the certificate is self-signed and not a trust anchor"
        issuer = leaf.issuer.rfc4514_string() or "an unnamed issuer"
        return f"the certificate (issued by {issuer}) is not trusted: {_short(str(e))}"
    return None


def _short(message: str) -> str:
    # cryptography appends "(encountered processing <Certificate(...)>)": keep the reason.
    return message.split(" (encountered processing", 1)[0].removeprefix("validation failed: ")
