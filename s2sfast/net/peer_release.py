"""Free OpenSSL's decoded copies of the peer's certificates once the handshake is over.

After a handshake OpenSSL keeps the certificates the peer sent, decoded, for the life of the
connection: the leaf in the session (``SSL_SESSION.peer``), the rest of the chain beside it
(``peer_chain``), and on a verifying client end the chain it built (``SSL.verified_chain``). A
decoded X.509 certificate costs 4.2 KiB (RSA) to 5.1 KiB (EC) of heap with OpenSSL 3.0, so each
idle stream end held ~4.6 KiB of certificate it never reads again (issue 14: RSS per idle TLS
stream end 20.2 -> 15.6 KiB with bare SSLObjects). s2sfast reads the chain once, in DER, when
the handshake completes (:func:`s2sfast.net.tls.peer_chain`), and judges it from those bytes
(:mod:`s2sfast.net.peercert`); OpenSSL itself needs the certificates only during the handshake
(CertificateVerify, chain verification). Afterwards ``getpeercert()`` returns None.

Python's ``ssl`` has no call for this and OpenSSL has no setter, so :func:`release` clears
the fields through ``ctypes`` on the libssl that ``_ssl`` is linked with, then frees what they
held with OpenSSL's own ``X509_free`` / ``OPENSSL_sk_pop_free``. Nothing relies on a struct
layout compiled in here. Each field is *found*, every time: the values the public getters
return (``SSL_get0_peer_certificate``, ``SSL_get_peer_cert_chain``,
``SSL_get0_verified_chain``) are looked for inside the ``SSL_SESSION`` / ``SSL`` allocation
(bounded by ``malloc_usable_size``); the leaf and the chain must sit in adjacent words, each
value must occur exactly once; later connections must hold the values at the offsets found
then. The
``SSL *`` is read from CPython's ``_ssl._SSLSocket`` (``PyObject_HEAD``, the owner weakref, then
the ``SSL *``) and must give back the object's own ``SSL_CTX`` and side before it is used.
OpenSSL must allocate with the C library's malloc (its default; checked). Where anything
differs (another Python or OpenSSL, another allocator, no symbol) :func:`release` does
nothing: memory stays as it was, and behaviour too.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import struct
import sys

from s2sfast.net.tls import _ctx_pointer, _libssl

__all__ = ["release", "available"]

_P = ctypes.c_void_p
_WORD = ctypes.sizeof(_P)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_usable_size.restype = ctypes.c_size_t
        libc.malloc_usable_size.argtypes = [_P]
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def _lib() -> ctypes.CDLL | None:
    """libssl with the calls declared, if OpenSSL allocates with the C library's malloc."""
    if sys.implementation.name != "cpython" or _WORD != 8:
        return None
    lib = _libssl()
    if lib is None or _libc() is None:
        return None
    try:
        for name, restype, argtypes in (
            ("SSL_get_session", _P, [_P]),
            ("SSL_get0_peer_certificate", _P, [_P]),
            ("SSL_get_peer_cert_chain", _P, [_P]),
            ("SSL_get0_verified_chain", _P, [_P]),
            ("SSL_get_SSL_CTX", _P, [_P]),
            ("SSL_is_server", ctypes.c_int, [_P]),
            ("X509_free", None, [_P]),
            ("OPENSSL_sk_pop_free", None, [_P, _P]),
            ("CRYPTO_get_mem_functions", None, [_P, _P, _P]),
        ):
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        malloc_fn, realloc_fn, free_fn = _P(), _P(), _P()
        lib.CRYPTO_get_mem_functions(
            ctypes.byref(malloc_fn), ctypes.byref(realloc_fn), ctypes.byref(free_fn)
        )
        # OpenSSL's default allocator is CRYPTO_malloc itself (over the C library's malloc);
        # anything else means malloc_usable_size cannot bound our reads.
        if malloc_fn.value != ctypes.cast(lib.CRYPTO_malloc, _P).value:
            return None
    except (AttributeError, TypeError):
        return None
    return lib


def available() -> bool:
    """Whether :func:`release` can work on this Python and OpenSSL."""
    return _lib() is not None


def _ssl_pointer(lib: ctypes.CDLL, sslobj: ssl.SSLObject) -> int | None:
    """The connection's ``SSL *``, once it has proved to be this object's own."""
    inner = getattr(sslobj, "_sslobj", None)
    if type(inner).__name__ != "_SSLSocket" or type(inner).__module__ != "_ssl":
        return None
    ptr = _P.from_address(id(inner) + object.__basicsize__ + _WORD).value
    if not ptr:
        return None
    ctx_ptr = _ctx_pointer(sslobj.context)
    if not ctx_ptr or lib.SSL_get_SSL_CTX(ptr) != ctx_ptr:
        return None
    if bool(lib.SSL_is_server(ptr)) != sslobj.server_side:
        return None
    return ptr


#: where each field sat the first time (word index inside its allocation), by field name
_offsets: dict[str, int] = {}


def _find(base: int, *values: int) -> int | None:
    """The word index inside *base*'s allocation where *values* sit in consecutive words, if
    they occur there exactly once."""
    size = _libc().malloc_usable_size(base) // _WORD * _WORD  # type: ignore[union-attr]
    if size < _WORD * len(values):
        return None
    memory = ctypes.string_at(base, size)
    needle = struct.pack(f"<{len(values)}Q", *values)
    hits = []
    at = memory.find(needle)
    while at != -1 and len(hits) < 2:
        if at % _WORD == 0:
            hits.append(at // _WORD)
        at = memory.find(needle, at + 1)
    return hits[0] if len(hits) == 1 else None


def _locate(field: str, base: int, *values: int) -> int | None:
    """Where *field* holds *values* in *base*: found by a search the first time, afterwards
    read at that offset and compared (the layout is the library's, the same for every
    connection; a value that differs there means it is not, and nothing is touched)."""
    known = _offsets.get(field)
    if known is None:
        index = _find(base, *values)
        if index is not None:
            _offsets[field] = index
        return index
    if _libc().malloc_usable_size(base) < (known + len(values)) * _WORD:  # type: ignore[union-attr]
        return None
    words = (ctypes.c_uint64 * len(values)).from_address(base + known * _WORD)
    return known if list(words) == list(values) else None


def release(sslobj: ssl.SSLObject) -> bool:
    """Free OpenSSL's copies of *sslobj*'s peer certificates (call it after the handshake,
    once the chain was read); True if anything was freed.

    About 35 us per connection end, most of it OpenSSL freeing the certificates (5 us each:
    work it would otherwise do when the connection is freed); the first call in a process
    also searches the two allocations (1-7 KiB).
    """
    lib = _lib()
    if lib is None:
        return False
    ptr = _ssl_pointer(lib, sslobj)
    if ptr is None:
        return False
    freed = False
    verified = lib.SSL_get0_verified_chain(ptr)
    if verified:
        index = _locate("verified_chain", ptr, verified)
        if index is not None:
            _P.from_address(ptr + index * _WORD).value = None
            lib.OPENSSL_sk_pop_free(verified, ctypes.cast(lib.X509_free, _P))
            freed = True
    session = lib.SSL_get_session(ptr)
    leaf = lib.SSL_get0_peer_certificate(ptr)
    chain = lib.SSL_get_peer_cert_chain(ptr)
    if session and leaf:
        # SSL_SESSION: the leaf, then the chain (NULL when the peer sent the leaf alone)
        index = _locate("session_peer", session, leaf, chain or 0)
        if index is not None:
            _P.from_address(session + index * _WORD).value = None
            _P.from_address(session + (index + 1) * _WORD).value = None
            lib.X509_free(leaf)
            if chain:
                lib.OPENSSL_sk_pop_free(chain, ctypes.cast(lib.X509_free, _P))
            freed = True
    return freed
