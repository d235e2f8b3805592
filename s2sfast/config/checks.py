"""Load-time checks of what the configuration points at: certificate, CA and DH files, cipher
strings and IP addresses.

Kept apart from config.py (which owns the option layout) so each module has one job. Each check
raises ``ValueError(problem, expected)``; config.py turns that into a ConfigError naming the
option's dotted path. Everything is checked with the libraries that will use it later
(``cryptography`` for the PEM contents, Python's ``ssl`` for what OpenSSL accepts), so a file
that passes here also loads when the node starts.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from s2sfast.config.errors import ConfigError
from s2sfast.net.ciphers import check_ciphers as tls_check

__all__ = [
    "ConfigError",
    "show",
    "ip_version",
    "check_ciphers",
    "check_certfile",
    "check_cafile",
    "check_dhfile",
]

_CERTFILE_EXPECTED = "a readable PEM file holding a certificate and an unencrypted private key"
_CAFILE_EXPECTED = "a readable PEM file holding CA certificates"
_DHFILE_EXPECTED = "a readable PEM file holding Diffie-Hellman parameters"
_CIPHERS_EXPECTED = (
    'an OpenSSL cipher string such as "TLSv1.2:TLSv1.3" (it chooses the TLS 1.2 suites; '
    "TLS 1.3 suites are OpenSSL's defaults)"
)
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL
)
_SHOW_LIMIT = 120


def show(value: Any) -> str:
    """A value as the operator wrote it (TOML-like: strings quoted, true/false), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def ip_version(text: str) -> int | None:
    """4 or 6 when *text* is an IP address, else None."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def _read(path: str, expected: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the file ({exc.strerror or exc})", expected) from None


def check_ciphers(ciphers: str) -> None:
    """Reject a cipher string the node could not apply, by the rules of s2sfast.net.tls (which
    builds the SSLContexts from it later), so that load time and run time always agree."""
    try:
        tls_check(ciphers)
    except ValueError as exc:
        raise ValueError(str(exc), _CIPHERS_EXPECTED) from None


def check_certfile(path: str) -> None:
    """A server certificate file: a PEM certificate (chain) and its unencrypted private key."""
    data = _read(path, _CERTFILE_EXPECTED)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError("the file holds no PEM certificate", _CERTFILE_EXPECTED)
    block = _KEY_BLOCK.search(data)
    if block is None:
        raise ValueError("the file holds no PEM private key", _CERTFILE_EXPECTED)
    if b"ENCRYPTED" in block.group(1) or b"Proc-Type: 4,ENCRYPTED" in block.group(0):
        raise ValueError("its private key is encrypted (password-protected)", _CERTFILE_EXPECTED)
    try:
        key = serialization.load_pem_private_key(block.group(0), password=None)
    except TypeError:
        raise ValueError(
            "its private key is encrypted (password-protected)", _CERTFILE_EXPECTED
        ) from None
    except ValueError as exc:
        raise ValueError(f"its private key cannot be read ({exc})", _CERTFILE_EXPECTED) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
        raise ValueError(
            "its private key does not belong to its first certificate", _CERTFILE_EXPECTED
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path, password=b"")
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"Python's ssl cannot load it ({exc})", _CERTFILE_EXPECTED) from None


def check_cafile(path: str) -> None:
    """CA certificates to verify peers with (what ``load_verify_locations`` will read)."""
    _read(path, _CAFILE_EXPECTED)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"no CA certificate can be loaded ({exc})", _CAFILE_EXPECTED) from None


def check_dhfile(path: str) -> None:
    """Diffie-Hellman parameters (what ``load_dh_params`` will read)."""
    _read(path, _DHFILE_EXPECTED)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ValueError(f"no DH parameters can be loaded ({exc})", _DHFILE_EXPECTED) from None


# --------------------------------------------------------------------------- option readers
# Each reads one TOML value at a dotted path or raises ConfigError naming that path.


def fail(path: str, value: Any, expected: str, problem: str | None = None) -> NoReturn:
    """Raise a ConfigError: ``PATH: got VALUE, expected WHAT`` (or ``PATH: PROBLEM ...``)."""
    if problem is None:
        message = f"{path}: got {show(value)}, expected {expected}"
    else:
        message = f"{path}: {problem}: got {show(value)}, expected {expected}"
    raise ConfigError(message, path=path)


def missing(path: str, expected: str) -> NoReturn:
    raise ConfigError(f"{path}: missing; expected {expected}", path=path)


def table(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        fail(path, value, "a table")
    return value


def array(value: Any, path: str, expected: str) -> list[Any]:
    if not isinstance(value, list):
        fail(path, value, expected)
    return value


def known(table: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}: unknown option; expected one of: {', '.join(allowed)}",
                path=f"{path}.{key}",
            )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive(value: Any, path: str, unit: str = "") -> int:
    if not is_int(value) or value <= 0:
        fail(path, value, f"a positive integer{unit}")
    return value


def non_negative(value: Any, path: str) -> int:
    if not is_int(value) or value < 0:
        fail(path, value, "a non-negative integer")
    return value


def positive_or_infinity(value: Any, path: str, unit: str = "") -> int | None:
    if value == "infinity":
        return None
    if not is_int(value) or value <= 0:
        fail(path, value, f'a positive integer{unit} or the string "infinity"')
    return value


def string(value: Any, path: str, expected: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value:
        fail(path, value, expected)
    return value


def enum(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        fail(path, value, "one of the strings " + ", ".join(f'"{c}"' for c in choices))
    return value


def port(value: Any, path: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not is_int(value) or not low <= value <= 65535:
        fail(path, value, f"a port number, an integer from {low} to 65535")
    return value


def ip(value: Any, path: str) -> str:
    if not isinstance(value, str) or ip_version(value) is None:
        fail(path, value, 'an IP address string such as "127.0.0.1" or "::1"')
    return value


def run_check(check: Any, value: str, path: str, *args: Any) -> str:
    """Run one of the file/cipher checks of ``_config_checks``; its ValueError -> ConfigError."""
    try:
        check(value, *args)
    except ValueError as exc:
        fail(path, value, str(exc.args[1]), problem=str(exc.args[0]))
    return value
