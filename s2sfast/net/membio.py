"""Give an empty ``ssl.MemoryBIO``'s buffer back, so an idle TLS stream does not keep it.

OpenSSL's memory BIO never shrinks its buffer (a ``BUF_MEM`` only grows): after the TLS
handshake each of a stream's two BIOs keeps the size of the largest flight it carried (about
1.7 KiB per connection end together), and after a batch of a few records up to ~22 KiB. With
10,000 idle streams that is 17 to 440 MiB held for nothing (issue 14). Python's ``ssl`` has no
call for it, so :func:`release` swaps an *empty* BIO's ``BUF_MEM`` for a new empty one with
``BIO_set_mem_buf`` (public OpenSSL API: the BIO frees the old buffer; the next write allocates
what it needs), through ``ctypes`` on the libcrypto that ``_ssl`` is linked with.

The ``BIO *`` is read from the MemoryBIO object (CPython's ``PySSLMemoryBIO`` is
``PyObject_HEAD``, then the ``BIO *``, then an ``int``); before any use, the type's size must
match that layout and a self-test on a scratch MemoryBIO must see its own bytes through the
pointer, a release that empties the buffer, and a working write/read after it; each call checks
that the object is exactly an ``ssl.MemoryBIO`` and empty (:func:`capacity`, for tests, also
that the pointer is a memory BIO holding what the object says it holds). If
anything differs (another Python, another layout, no symbol), :func:`release` does nothing:
memory stays as it was, behaviour is unchanged.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys

from s2sfast.net.tls import _libssl

__all__ = ["release", "capacity", "available"]

#: OpenSSL constants (bio.h): stable across 1.1.1 and 3.x
_BIO_TYPE_MEM = 1 | 0x0400
_BIO_CTRL_PENDING = 10
_BIO_C_SET_BUF_MEM = 114
_BIO_C_GET_BUF_MEM_PTR = 115
_BIO_CLOSE = 1


class _BufMem(ctypes.Structure):
    """OpenSSL's ``BUF_MEM``: length, data, max (the capacity), flags."""

    _fields_ = [
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    ]


def _bio_pointer(bio: ssl.MemoryBIO) -> int | None:
    return ctypes.c_void_p.from_address(id(bio) + object.__basicsize__).value


def _lib() -> ctypes.CDLL | None:
    lib = _libssl()
    if lib is None:
        return None
    try:
        lib.BIO_ctrl.restype = ctypes.c_long
        lib.BIO_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.BIO_method_type.restype = ctypes.c_int
        lib.BIO_method_type.argtypes = [ctypes.c_void_p]
        lib.BUF_MEM_new.restype = ctypes.c_void_p
        lib.BUF_MEM_new.argtypes = []
        lib.BUF_MEM_free.restype = None
        lib.BUF_MEM_free.argtypes = [ctypes.c_void_p]
    except AttributeError:
        return None
    return lib


def _checked_pointer(lib: ctypes.CDLL, bio: ssl.MemoryBIO) -> int | None:
    """The object's ``BIO *`` if it is a memory BIO holding what the object says, else None."""
    if type(bio) is not ssl.MemoryBIO:  # (a stand-in, a subclass: not the layout we know)
        return None
    ptr = _bio_pointer(bio)
    if not ptr or lib.BIO_method_type(ptr) != _BIO_TYPE_MEM:
        return None
    if lib.BIO_ctrl(ptr, _BIO_CTRL_PENDING, 0, None) != bio.pending:
        return None
    return ptr


def _capacity(lib: ctypes.CDLL, ptr: int) -> int:
    buf = ctypes.c_void_p()
    lib.BIO_ctrl(ptr, _BIO_C_GET_BUF_MEM_PTR, 0, ctypes.byref(buf))
    return _BufMem.from_address(buf.value).max if buf.value else 0


def _swap(lib: ctypes.CDLL, ptr: int) -> bool:
    fresh = lib.BUF_MEM_new()
    if not fresh:
        return False
    if lib.BIO_ctrl(ptr, _BIO_C_SET_BUF_MEM, _BIO_CLOSE, fresh) != 1:
        lib.BUF_MEM_free(fresh)
        return False
    return True


@functools.cache
def _usable() -> ctypes.CDLL | None:
    """The library, once the layout check and the self-test passed; else None."""
    if sys.implementation.name != "cpython":
        return None
    if ssl.MemoryBIO.__basicsize__ != object.__basicsize__ + 2 * ctypes.sizeof(ctypes.c_void_p):
        return None
    lib = _lib()
    if lib is None:
        return None
    probe = ssl.MemoryBIO()
    probe.write(b"s2sfast" * 300)
    ptr = _checked_pointer(lib, probe)
    if ptr is None or _capacity(lib, ptr) < 2100:
        return None
    if probe.read() != b"s2sfast" * 300 or not _swap(lib, ptr) or _capacity(lib, ptr) != 0:
        return None
    probe.write(b"after")
    if probe.pending != 5 or probe.read() != b"after" or probe.pending != 0:
        return None
    return lib


def available() -> bool:
    """Whether :func:`release` can work on this Python and OpenSSL."""
    return _usable() is not None


def release(bio: ssl.MemoryBIO) -> bool:
    """Free *bio*'s buffer if it is empty; True if it was freed (False: kept, or impossible).

    About 1.5 us (two calls into libcrypto; the layout was proven by the self-test, and the
    exact type is checked here, so the per-call BIO checks of :func:`capacity` are skipped).
    """
    if bio.pending or type(bio) is not ssl.MemoryBIO:
        return False
    lib = _usable()
    if lib is None:
        return False
    ptr = _bio_pointer(bio)
    return bool(ptr) and _swap(lib, ptr)


def capacity(bio: ssl.MemoryBIO) -> int | None:
    """Bytes *bio*'s buffer holds allocated (None where it cannot be read): for tests."""
    lib = _usable()
    if lib is None:
        return None
    ptr = _checked_pointer(lib, bio)
    return None if ptr is None else _capacity(lib, ptr)
