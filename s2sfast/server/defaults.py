"""Embedded defaults for ``s2sfast run`` without ``--config``: a node that works on a fresh machine.

Host ``localhost``, one S2S listener on 127.0.0.1:5269 with ``use_starttls = "optional"``, a
self-signed certificate (EC P-256, SAN ``DNS:localhost``) made on first start, and a component
listener on 127.0.0.1:5347 (XEP-0114's conventional port) with a random password. The certificate
and the password live in a per-user data directory (0700; secrets 0600) so that a restart reuses
them: peers that pinned the certificate and components configured with the password keep working.
They log at ``info`` (a configuration file's ``[general] loglevel`` defaults to MongooseIM's
``warning``): whoever tries s2sfast out sees where its files are and that the node runs.
"""

from __future__ import annotations

import datetime
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from s2sfast.config import Config, ListenS2S, S2SOptions
from s2sfast.config.service import ListenService

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_S2S_PORT",
    "DEFAULT_COMPONENT_PORT",
    "Embedded",
    "default_data_dir",
    "ensure_data_dir",
    "ensure_certificate",
    "ensure_component_password",
    "embedded_config",
]

DEFAULT_HOST = "localhost"
#: RFC 6120 section 14.7: the IANA-registered xmpp-server port
DEFAULT_S2S_PORT = 5269
#: XEP-0114's examples and most servers' (Prosody, ejabberd) component port
DEFAULT_COMPONENT_PORT = 5347
_LOOPBACK = "127.0.0.1"
#: a year, then a new certificate is made on the next start
_CERT_DAYS = 365
#: regenerate when less than this is left, so a running node never serves an expired one
_CERT_RENEW_BEFORE = datetime.timedelta(days=7)

CERT_FILE = "s2s.pem"  # key + certificate, as MongooseIM's s2s.certfile expects; 0600
PUBLIC_CERT_FILE = "s2s.crt"  # the certificate alone, for peers to pin
PASSWORD_FILE = "component-password"  # 0600


@dataclass(frozen=True, slots=True, kw_only=True)
class Embedded:
    """What :func:`embedded_config` made: the configuration and what was new on this start."""

    config: Config
    listen_service: tuple[ListenService, ...]
    data_dir: Path
    certfile: Path
    #: True when the certificate was (re)generated on this start
    certificate_created: bool
    #: True when the component password was generated on this start (print it once)
    password_created: bool


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/s2sfast``, else ``~/.local/share/s2sfast`` (XDG Base Directory spec)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "s2sfast"


def ensure_data_dir(path: Path) -> Path:
    """Create *path* (and parents) with mode 0700 when missing; return it.

    Raises:
        OSError: it cannot be created, or exists and is not a directory.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.is_dir():
        raise NotADirectoryError(f"data directory {path} is not a directory")
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write *data* to *path* atomically, readable by the owner only (0600) from the start."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _certificate_usable(path: Path, host: str) -> bool:
    """The combined PEM loads as a key pair, names *host* and is not about to expire."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(path)
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ssl.SSLError, ValueError, x509.ExtensionNotFound):
        return False
    remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return host in names.get_values_for_type(x509.DNSName) and remaining > _CERT_RENEW_BEFORE


def _make_certificate(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def ensure_certificate(data_dir: Path, host: str = DEFAULT_HOST) -> tuple[Path, bool]:
    """Reuse ``data_dir/s2s.pem`` if it is a valid key pair for *host*, else make a new one.

    The new certificate is self-signed (EC P-256, SAN ``DNS:host``, a year long); the key and
    certificate go into one 0600 PEM file (MongooseIM's ``s2s.certfile`` format) and the
    certificate alone into ``s2s.crt`` for peers to pin.

    Returns:
        (path of the combined PEM, True when it was created on this call)
    """
    path = data_dir / CERT_FILE
    if _certificate_usable(path, host):
        return path, False
    key_pem, cert_pem = _make_certificate(host)
    _write_private(path, key_pem + cert_pem)
    (data_dir / PUBLIC_CERT_FILE).write_bytes(cert_pem)
    return path, True


def ensure_component_password(data_dir: Path) -> tuple[str, bool]:
    """The component password stored in the data directory, made (0600) on first use.

    Returns:
        (password, True when it was generated on this call)
    """
    path = data_dir / PASSWORD_FILE
    try:
        stored = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored, False
    password = secrets.token_urlsafe(18)
    _write_private(path, password.encode("ascii") + b"\n")
    return password, True


def embedded_config(
    data_dir: Path,
    *,
    s2s_port: int = DEFAULT_S2S_PORT,
    component_port: int = DEFAULT_COMPONENT_PORT,
) -> Embedded:
    """Build the embedded-defaults configuration, creating the data directory's files if needed.

    Args:
        data_dir: where the certificate and component password live (created 0700).
        s2s_port: the S2S listener's port on 127.0.0.1.
        component_port: the component listener's port on 127.0.0.1.

    Returns:
        An :class:`Embedded` with the Config (hosts ``localhost``, use_starttls optional, a fresh
        dialback secret) and the component listener.
    """
    ensure_data_dir(data_dir)
    certfile, cert_new = ensure_certificate(data_dir, DEFAULT_HOST)
    password, password_new = ensure_component_password(data_dir)
    config = Config(
        hosts=(DEFAULT_HOST,),
        listen_s2s=(ListenS2S(port=s2s_port, ip_address=_LOOPBACK),),
        s2s=S2SOptions(
            use_starttls="optional",
            certfile=str(certfile),
            shared=secrets.token_hex(10),
        ),
        source=None,
        loglevel="info",
    )
    service = ListenService(port=component_port, ip_address=_LOOPBACK, password=password)
    return Embedded(
        config=config,
        listen_service=(service,),
        data_dir=data_dir,
        certfile=certfile,
        certificate_created=cert_new,
        password_created=password_new,
    )
