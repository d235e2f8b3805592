"""RFC 6125 identity of a peer's certificate, for XMPP servers (RFC 6120 section 13.7.2).

Identity is decided by us, not by OpenSSL's hostname check: :func:`verify_peer` checks the
chain (to ``cafile`` or the system store, with ``cryptography.x509.verification``), the validity
dates and the names an XMPP server certificate may carry (SAN dNSName with a single left-most
wildcard label, SRV-ID ``_xmpp-server.<domain>``, id-on-xmppAddr; never the CN). The caller turns
a failed check into ``policy-violation`` with :attr:`PeerCertStatus.reason` as text.

The chain policy is the Web PKI profile of ``cryptography`` (CA certificates need basic
constraints and key usage) with three XMPP allowances for the peer's own certificate: either
serverAuth or clientAuth extended key usage (a server certificate is presented in both
directions), no SAN (it then names nobody), no authority key identifier. A certificate listed
in the cafile itself is trusted as is (pinning a self-signed peer).

s2sfast.net.tls re-exports everything here.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import ipaddress
import os
import ssl
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification as _verification

__all__ = [
    "XMPP_SERVER_SERVICE",
    "ID_ON_XMPPADDR",
    "ID_ON_DNSSRV",
    "MAX_CHAIN_DEPTH",
    "PeerNames",
    "PeerCertStatus",
    "peer_names",
    "name_matches",
    "verify_peer",
    "own_certificate_problem",
]

#: The SRV service name whose SRV-IDs identify an XMPP server (RFC 6120 section 13.7.1.2.1).
XMPP_SERVER_SERVICE = "_xmpp-server"
#: RFC 6120 section 13.7.1.4: otherName id-on-xmppAddr (a UTF8String JID).
ID_ON_XMPPADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")
#: RFC 4985: otherName id-on-dnsSRV (an IA5String "_service.domain").
ID_ON_DNSSRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")

#: Deepest chain we follow (leaf + intermediates + root); public PKI chains are 3-4 long.
MAX_CHAIN_DEPTH = 8


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


def _is_ip_literal(domain: str) -> bool:
    """Whether *domain* is an IP address: RFC 7622's IP-literal domainpart (an IPv4 address, or
    an IPv6 address in brackets), or an IPv6 address without them."""
    if domain.startswith("[") and domain.endswith("]"):
        domain = domain[1:-1]
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return False
    return True


def name_matches(names: PeerNames, domain: str) -> bool:
    """Whether *names* identify the XMPP server *domain* (RFC 6125; no CN fallback).

    dNSName: exact, or ``*.`` wildcard over exactly one left-most label. SRV-ID: service
    ``_xmpp-server`` and the exact domain. xmppAddr: the domain JID itself. Comparison is
    case-insensitive, a trailing dot is ignored, and a U-label domain is compared as A-labels.

    A *domain* that is an IP address (``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]``; RFC
    7622 allows such a domainpart) never matches. RFC 6125 identifies services by DNS domain
    names only (section 1.7.2 leaves IP addresses out of scope) and its DNS-ID, SRV-ID and
    xmppAddr rules compare DNS names; RFC 9525, which replaces it, compares an address only
    with an iPAddress SAN, never with a DNS-ID. Comparing the address as text would accept a
    certificate whose dNSName merely spells it (``0.0.0.0``). So a peer whose domain is an
    address is never RFC 6125-verified, and ``required_trusted`` refuses it. Dotted names that
    are not addresses (``256.1.1.1``, ``1.2.3``) are compared as names.

    Args:
        names: the identities of the peer's certificate (:func:`peer_names`).
        domain: the XMPP domain the peer should be.

    Returns:
        True when one identity names *domain*.
    """
    want = _norm_domain(domain)
    if not want or _is_ip_literal(want):
        return False
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


#: Verdicts and leaf identities kept to be shared (memory per idle stream, issue 14): every
#: stream keeps its last verdict, and both directions with one peer domain, or many pairs with
#: one peer server, present the same certificate. An equal verdict is the same object (72 bytes
#: saved per stream), and one leaf's names and expiry are parsed into one PeerNames and one
#: datetime (about 250 bytes more). Bounded: emptied when full (a miss only costs a copy).
_SHARED_MAX = 1024
_shared_leaves: dict[bytes, tuple[PeerNames, _dt.datetime]] = {}
_shared_verdicts: dict[PeerCertStatus, PeerCertStatus] = {}


def _leaf_facts(der: bytes, leaf: x509.Certificate) -> tuple[PeerNames, _dt.datetime]:
    """*leaf*'s identities and expiry, the same objects for the same certificate."""
    key = hashlib.sha256(der).digest()
    hit = _shared_leaves.get(key)
    if hit is None:
        if len(_shared_leaves) >= _SHARED_MAX:
            _shared_leaves.clear()
        hit = _shared_leaves[key] = (_names_of(leaf), leaf.not_valid_after_utc)
    return hit


def _shared(status: PeerCertStatus) -> PeerCertStatus:
    """An equal verdict made before, or *status* (kept for the next one)."""
    hit = _shared_verdicts.get(status)
    if hit is None:
        if len(_shared_verdicts) >= _SHARED_MAX:
            _shared_verdicts.clear()
        hit = _shared_verdicts[status] = status
    return hit


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
    names, not_after = _leaf_facts(cert_chain_der[0], leaf)
    matches = name_matches(names, domain)
    chain_problem = _chain_problem(leaf, certs[1:], cafile, now)
    reason = chain_problem
    if reason is None and not matches:
        reason = f"the certificate does not name {domain} (it names {names.describe()})"
    return _shared(
        PeerCertStatus(
            trusted=chain_problem is None,
            name_matches=matches,
            reason=reason,
            names=names,
            not_after=not_after,
        )
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
    """cryptography's verification message, reworded for a stream-error text."""
    # It appends "(encountered processing <Certificate(...)>)": keep the reason only.
    message = message.split(" (encountered processing", 1)[0].removeprefix("validation failed: ")
    message = message.removeprefix("Python extension validator failed: ValueError: ")
    if message == "candidates exhausted: all candidates exhausted with no interior errors":
        return "no chain to a trusted CA (unknown issuer, or an intermediate is missing)"
    if message.startswith("candidates exhausted: "):
        return "no valid chain to a trusted CA: " + message.removeprefix("candidates exhausted: ")
    return message


# --- our own certificate (SASL EXTERNAL, XEP-0178) ------------------------------------------


@functools.lru_cache(maxsize=64)
def _own_leaf(path: str, stamp: float) -> x509.Certificate | None:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None


def own_certificate_problem(
    certfile: str | None, domain: str, *, now: _dt.datetime | None = None
) -> str | None:
    """Why our certificate cannot prove *domain* to a peer (None when it can): before the
    originating side offers SASL EXTERNAL, the first certificate in *certfile* must be in date
    and name *domain* (RFC 6125). Whether it chains to the peer's anchors is the peer's call
    (it offers EXTERNAL only then; a ``<failure/>`` falls back to dialback).

    Args:
        certfile: ``[s2s] certfile`` (PEM, certificate first).
        domain: our local domain.
        now: the time to judge validity at (default: now).
    """
    if not certfile:
        return "no certfile"
    try:
        stamp = os.stat(certfile).st_mtime
    except OSError as e:
        return f"cannot read {certfile}: {e.strerror}"
    leaf = _own_leaf(certfile, stamp)
    if leaf is None:
        return f"no PEM certificate in {certfile}"
    now = now or _dt.datetime.now(_dt.UTC)
    if now < leaf.not_valid_before_utc:
        return f"our certificate is not valid before {_fmt_time(leaf.not_valid_before_utc)}"
    if now > leaf.not_valid_after_utc:
        return f"our certificate expired at {_fmt_time(leaf.not_valid_after_utc)}"
    names = _names_of(leaf)
    if not name_matches(names, domain):
        return f"our certificate does not name {domain} (it names {names.describe()})"
    return None
