"""Test certificates made with `cryptography`: a test CA, leaf certificates and PEM files.

Every TLS test in s2sfast uses real certificates made here, never files checked into the repo.
EC P-256 keys are the default because they take well under a millisecond to generate (RSA 2048
takes tens of milliseconds).

Plain helpers (import them in any test module: ``from certs import make_ca``; pytest puts
``tests/`` on ``sys.path``):

    ca = make_ca()                                  # a root CA
    leaf = ca.issue(["a.test"])                     # SAN dNSName a.test, valid now
    certfile = leaf.write_pem(tmp_path)             # cert (+ chain) + plain key: [s2s] certfile
    cafile = ca.write_pem(tmp_path)                 # the CA certificate: tls.cacertfile
    expired = ca.issue(["a.test"], not_after=past)  # expired / not-yet-valid via the dates
    inter = ca.intermediate("s2sfast test sub-CA")  # its leaves carry it in their chain
    lone = self_signed("a.test")                    # self-signed leaf (no CA)

Pytest fixtures (exported ready to use; tests/conftest.py registers them with
``from certs import *``, since ``__all__`` lists them):

    tls_ca        session-scoped CA
    tls_ca_file   session-scoped path of its PEM (a cacertfile)
    tls_certfile  session-scoped factory: ``tls_certfile("a.test", "b.test")`` -> certfile path of
                  a cert for those names from tls_ca, cached per name tuple
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

__all__ = [
    "CA",
    "IssuedCert",
    "ID_ON_XMPPADDR",
    "ID_ON_DNSSRV",
    "make_ca",
    "self_signed",
    "utcnow",
    "tls_ca",
    "tls_ca_file",
    "tls_certfile",
]

#: RFC 6120 section 13.7.1.4: id-on-xmppAddr, an otherName holding a UTF8String JID.
ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
#: RFC 4985: id-on-dnsSRV, an otherName holding an IA5String "_service.domain".
ID_ON_DNSSRV = ObjectIdentifier("1.3.6.1.5.5.7.8.7")

_ONE_DAY = _dt.timedelta(days=1)


def utcnow() -> _dt.datetime:
    """The current time as an aware UTC datetime (what certificate dates are compared with)."""
    return _dt.datetime.now(_dt.UTC)


def _new_key(key_type: str):
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _der_utf8(text: str) -> bytes:
    """DER of a UTF8String (tag 12), as id-on-xmppAddr wants inside its otherName."""
    return _der_tlv(0x0C, text.encode("utf-8"))


def _der_ia5(text: str) -> bytes:
    """DER of an IA5String (tag 22), as id-on-dnsSRV wants inside its otherName."""
    return _der_tlv(0x16, text.encode("ascii"))


def _der_tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + value


def _names(
    domain_names: Iterable[str], srv_ids: Iterable[str], xmpp_addrs: Iterable[str]
) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in domain_names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    for srv in srv_ids:
        # Accept "a.test" (meaning _xmpp-server.a.test) or a full "_service.domain" form.
        value = srv if srv.startswith("_") else f"_xmpp-server.{srv}"
        out.append(x509.OtherName(ID_ON_DNSSRV, _der_ia5(value)))
    for addr in xmpp_addrs:
        out.append(x509.OtherName(ID_ON_XMPPADDR, _der_utf8(addr)))
    return out


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(directory: str | os.PathLike[str], filename: str, data: bytes) -> str:
    path = os.path.join(os.fspath(directory), filename)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in label) or "cert"


@dataclass(frozen=True, eq=False)
class IssuedCert:
    """A leaf certificate, its private key and the intermediates between it and the root.

    Attributes:
        cert: the leaf certificate.
        key: its private key.
        chain: intermediate CA certificates, leaf's issuer first (empty when issued by a root
            or self-signed). The root itself is never included.
    """

    cert: x509.Certificate
    key: object
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def der(self) -> bytes:
        """The leaf in DER."""
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def chain_der(self) -> list[bytes]:
        """Leaf then intermediates in DER: what a peer sends in its TLS Certificate message."""
        return [self.der] + [c.public_bytes(serialization.Encoding.DER) for c in self.chain]

    def cert_pem(self) -> bytes:
        """Leaf then intermediates in PEM."""
        return _pem(self.cert) + b"".join(_pem(c) for c in self.chain)

    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_pem(self, directory: str | os.PathLike[str], filename: str | None = None) -> str:
        """Write certificate, chain and unencrypted key into one PEM file ([s2s] certfile).

        Returns:
            The file's path.
        """
        if filename is None:
            cn = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            label = cn[0].value if cn else self.cert.serial_number
            filename = f"{_safe(str(label))}-{self.cert.serial_number:x}"[:60] + ".pem"
        return _write(directory, filename, self.cert_pem() + self.key_pem())


@dataclass(eq=False)
class CA:
    """A certificate authority (root or intermediate) that issues test certificates.

    Attributes:
        name: the CA's common name.
        cert: its certificate.
        key: its private key.
        parents: the intermediate CA certificates above this one, nearest first (never the
            root; empty for a root and for a CA signed directly by a root).
        is_root: whether this CA is self-signed (its leaves then carry no chain).
    """

    name: str
    cert: x509.Certificate
    key: object
    parents: tuple[x509.Certificate, ...] = field(default=())
    is_root: bool = True

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    def write_pem(self, directory: str | os.PathLike[str], filename: str | None = None) -> str:
        """Write this CA's certificate as a PEM file (a cacertfile). Returns its path."""
        return _write(directory, filename or f"{_safe(self.name)}-ca.pem", self.cert_pem())

    def issue(
        self,
        domain_names: Sequence[str] | str = (),
        *,
        not_before: _dt.datetime | None = None,
        not_after: _dt.datetime | None = None,
        srv_ids: Sequence[str] = (),
        xmpp_addrs: Sequence[str] = (),
        cn: str | None = None,
        key_type: str = "ec",
        ekus: Sequence[ObjectIdentifier] | None = (
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
    ) -> IssuedCert:
        """Issue a leaf certificate.

        Args:
            domain_names: SAN dNSName entries (``"*.a.test"`` for a wildcard; an IP literal
                becomes an iPAddress entry). A single string is one name.
            not_before, not_after: validity; default one day ago to thirty days ahead. Pass a
                past *not_after* for an expired certificate, a future *not_before* for one
                not yet valid.
            srv_ids: SRV-ID entries (RFC 4985 otherName): ``"a.test"`` means
                ``_xmpp-server.a.test``; a value starting with ``_`` is used as is.
            xmpp_addrs: id-on-xmppAddr entries (RFC 6120 section 13.7.1.4).
            cn: subject common name; default the first domain name, else "s2sfast test leaf".
                With no SAN entry at all the certificate has no SAN extension (the CN-only case).
            key_type: "ec" (P-256, fast) or "rsa" (2048 bits).
            ekus: extended key usages; None leaves the extension out.
        """
        if isinstance(domain_names, str):
            domain_names = [domain_names]
        key = _new_key(key_type)
        now = utcnow()
        not_before = not_before or now - _ONE_DAY
        not_after = not_after or now + 30 * _ONE_DAY
        subject_cn = cn or (domain_names[0] if domain_names else "s2sfast test leaf")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(_leaf_key_usage(key_type), critical=True)
        )
        if ekus:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
        san = _names(domain_names, srv_ids, xmpp_addrs)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = () if self.is_root else (self.cert, *self.parents)
        return IssuedCert(cert=cert, key=key, chain=chain)

    def intermediate(self, name: str = "s2sfast test intermediate CA", **kw) -> CA:
        """Make a sub-CA signed by this CA; its leaves carry it (and CAs above) in their chain."""
        return _make_ca(name, issuer=self, **kw)


def _leaf_key_usage(key_type: str) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_type == "rsa",
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(
    name: str,
    *,
    issuer: CA | None = None,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    key_type: str = "ec",
) -> CA:
    key = _new_key(key_type)
    now = utcnow()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "s2sfast tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _ONE_DAY)
        .not_valid_after(not_after or now + 365 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    cert = builder.sign(signer_key, hashes.SHA256())
    if issuer is None:
        return CA(name=name, cert=cert, key=key)
    parents = () if issuer.is_root else (issuer.cert, *issuer.parents)
    return CA(name=name, cert=cert, key=key, parents=parents, is_root=False)


def make_ca(
    name: str = "s2sfast test CA",
    *,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    key_type: str = "ec",
) -> CA:
    """Make a self-signed root CA (valid from a day ago for a year unless dates are given)."""
    return _make_ca(name, not_before=not_before, not_after=not_after, key_type=key_type)


def self_signed(
    domain: str,
    *,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    srv_ids: Sequence[str] = (),
    xmpp_addrs: Sequence[str] = (),
    key_type: str = "ec",
) -> IssuedCert:
    """A self-signed leaf naming *domain* (SAN dNSName), not a CA: trusted by nobody."""
    key = _new_key(key_type)
    now = utcnow()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _ONE_DAY)
        .not_valid_after(not_after or now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_leaf_key_usage(key_type), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(_names([domain], srv_ids, xmpp_addrs)), critical=False
        )
    )
    return IssuedCert(cert=builder.sign(key, hashes.SHA256()), key=key)


# --- pytest fixtures (registered by tests/conftest.py through ``from certs import *``) ---


@pytest.fixture(scope="session")
def tls_ca() -> CA:
    """One test root CA for the whole session."""
    return make_ca()


@pytest.fixture(scope="session")
def tls_ca_file(tls_ca: CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the session CA's certificate PEM (use as tls.cacertfile)."""
    return tls_ca.write_pem(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def tls_certfile(tls_ca: CA, tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``tls_certfile("a.test", ...)`` -> certfile path (cert + key) from tls_ca.

    The same names give the same file for the whole session.
    """
    directory = tmp_path_factory.mktemp("certs")
    cache: dict[tuple[str, ...], str] = {}

    def make(*domain_names: str) -> str:
        if domain_names not in cache:
            cache[domain_names] = tls_ca.issue(list(domain_names)).write_pem(directory)
        return cache[domain_names]

    return make
