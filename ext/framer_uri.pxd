# cython: language_level=3
"""Namespace names must be URI references (Namespaces in XML 1.0, section 2.2).

The check is RFC 3986's URI-reference grammar, with the two liberties libxml2 (lxml, the
framer's differential oracle) takes: a fragment may contain '[' and ']', and an IP-literal host
is anything between the brackets. Only ASCII is allowed (no IRIs). It runs once per namespace
declaration, never per byte of content.
"""

ctypedef unsigned char uchar


cdef inline int _at(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    return s[i] if i < n else 0


cdef inline bint _alpha(int c) noexcept nogil:
    return (65 <= c <= 90) or (97 <= c <= 122)


cdef inline bint _digit(int c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint _hexdig(int c) noexcept nogil:
    return _digit(c) or (65 <= c <= 70) or (97 <= c <= 102)


cdef inline bint _unreserved(int c) noexcept nogil:
    return _alpha(c) or _digit(c) or c == 45 or c == 46 or c == 95 or c == 126


cdef inline bint _sub_delim(int c) noexcept nogil:
    # ! $ & ' ( ) * + , ; =
    return (c == 33 or c == 36 or c == 38 or c == 39 or c == 40 or c == 41 or c == 42
            or c == 43 or c == 44 or c == 59 or c == 61)


cdef inline Py_ssize_t _pct(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """3 when a pct-encoded triplet starts at i, else 0."""
    if _at(s, n, i) == 37 and _hexdig(_at(s, n, i + 1)) and _hexdig(_at(s, n, i + 2)):
        return 3
    return 0


cdef inline Py_ssize_t _pchar(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Length of the pchar at i (unreserved / pct-encoded / sub-delims / ':' / '@'), or 0."""
    cdef int c = _at(s, n, i)
    if _unreserved(c) or _sub_delim(c) or c == 58 or c == 64:
        return 1
    return _pct(s, n, i)


cdef inline Py_ssize_t _segment(const uchar* s, Py_ssize_t n, Py_ssize_t i, int forbid,
                                bint empty) noexcept nogil:
    """End of a segment starting at i (-1 when a non-empty one is required and missing)."""
    cdef Py_ssize_t k = _pchar(s, n, i)
    if k == 0 or _at(s, n, i) == forbid:
        return i if empty else -1
    i += k
    while True:
        k = _pchar(s, n, i)
        if k == 0 or _at(s, n, i) == forbid:
            return i
        i += k


cdef inline Py_ssize_t _abempty(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    while _at(s, n, i) == 47:
        i = _segment(s, n, i + 1, -1, True)
    return i


cdef inline Py_ssize_t _authority(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """authority = [ userinfo "@" ] host [ ":" port ]; returns its end or -1."""
    cdef Py_ssize_t j = i
    cdef int c
    cdef long port = 0
    while True:  # userinfo, kept only when an '@' follows
        c = _at(s, n, j)
        if _unreserved(c) or _sub_delim(c) or c == 58:
            j += 1
        elif _pct(s, n, j):
            j += 3
        else:
            break
    if _at(s, n, j) == 64:
        i = j + 1
    if _at(s, n, i) == 91:  # IP-literal: anything up to ']'
        j = i + 1
        while j < n and s[j] != 93:
            j += 1
        if j >= n:
            return -1
        i = j + 1
    else:  # reg-name (an IPv4 address is one too)
        while True:
            c = _at(s, n, i)
            if _unreserved(c) or _sub_delim(c):
                i += 1
            elif _pct(s, n, i):
                i += 3
            else:
                break
    if _at(s, n, i) == 58:
        i += 1
        if not _digit(_at(s, n, i)):
            return -1
        while _digit(_at(s, n, i)):
            port = port * 10 + (_at(s, n, i) - 48)
            if port > 2147483647:
                return -1
            i += 1
    return i


cdef inline bint _tail(const uchar* s, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """[ "?" query ] [ "#" fragment ] and then the end of the string."""
    cdef Py_ssize_t k
    cdef int c
    if _at(s, n, i) == 63:
        i += 1
        while True:
            k = _pchar(s, n, i)
            c = _at(s, n, i)
            if k:
                i += k
            elif c == 47 or c == 63:
                i += 1
            else:
                break
    if _at(s, n, i) == 35:
        i += 1
        while True:
            k = _pchar(s, n, i)
            c = _at(s, n, i)
            if k:
                i += k
            elif c == 47 or c == 63 or c == 91 or c == 93:
                i += 1
            else:
                break
    return i == n


cdef inline Py_ssize_t _path(const uchar* s, Py_ssize_t n, Py_ssize_t i,
                             bint noscheme) noexcept nogil:
    """hier-part (after a scheme) or relative-part; returns its end or -1."""
    cdef Py_ssize_t j
    if _at(s, n, i) == 47 and _at(s, n, i + 1) == 47:
        i = _authority(s, n, i + 2)
        if i < 0:
            return -1
        return _abempty(s, n, i)
    if _at(s, n, i) == 47:
        j = _segment(s, n, i + 1, -1, False)
        if j < 0:
            return i + 1
        return _abempty(s, n, j)
    if _pchar(s, n, i):
        j = _segment(s, n, i, 58 if noscheme else -1, False)
        if j < 0:
            return -1
        return _abempty(s, n, j)
    return i


cdef inline bint valid_uri_reference(const uchar* s, Py_ssize_t n) noexcept nogil:
    """True when s[:n] is a URI-reference: an absolute URI, else a relative reference."""
    cdef Py_ssize_t i, j
    cdef int c
    if _alpha(_at(s, n, 0)):
        i = 1
        while True:
            c = _at(s, n, i)
            if _alpha(c) or _digit(c) or c == 43 or c == 45 or c == 46:
                i += 1
            else:
                break
        if _at(s, n, i) == 58:
            j = _path(s, n, i + 1, False)
            if j >= 0 and _tail(s, n, j):
                return True
    j = _path(s, n, 0, True)
    return j >= 0 and _tail(s, n, j)
