"""Cipher strings (``[s2s] ciphers``, ``[listen.s2s.tls] ciphers``): what they mean here.

A leaf module (standard library only): the configuration loader checks strings with it at
load time and :mod:`s2sfast.net.tls` applies them when it builds contexts, so load time and
run time always agree without config and TLS importing each other.

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
"""

from __future__ import annotations

import re
import ssl

__all__ = ["check_ciphers", "apply_ciphers"]

_TLS13_SUITE = re.compile(r"^TLS_(AES|CHACHA20|AES_128_CCM)", re.ASCII)
_TLS13_KEYWORDS = frozenset({"TLSv1.3", "+TLSv1.3"})
_NO_TLS13_KEYWORDS = frozenset({"!TLSv1.3", "-TLSv1.3"})

# -----------------------------------------------------------------------


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
