# cython: language_level=3
"""C-level helpers of the stream framer (ext/framer.pyx): structs, byte tables, UTF-8.

Kept apart from the state machine so each file stays readable; everything here is inlined
into the extension.
"""

from libc.stdint cimport uint32_t

ctypedef unsigned char uchar


cdef struct Attr:
    # One attribute of the start tag being read; offsets index the framer's attribute buffer.
    Py_ssize_t name_off
    Py_ssize_t name_len
    Py_ssize_t colon           # index of the ':' in the name, -1 when unprefixed
    Py_ssize_t val_off         # decoded value, -1 when the value was not captured
    Py_ssize_t val_len
    const uchar* uri           # resolved namespace of a prefixed attribute (at tag end)
    Py_ssize_t uri_len
    bint is_decl               # xmlns or xmlns:p


cdef struct NsBind:
    # One in-scope namespace binding; prefix and URI live in the framer's namespace buffer.
    Py_ssize_t pfx_off
    Py_ssize_t pfx_len         # 0 for the default namespace
    Py_ssize_t uri_off
    Py_ssize_t uri_len         # 0 for an undeclared default namespace (xmlns='')


cdef struct Elem:
    # One open element: its qname in the name buffer and the namespace marks to pop to.
    Py_ssize_t name_off
    Py_ssize_t name_len
    Py_ssize_t ns_mark
    Py_ssize_t nsbuf_mark


cdef struct Key:
    # A sort key for duplicate-attribute detection: (a, b) compared bytewise.
    const uchar* a
    Py_ssize_t alen
    const uchar* b
    Py_ssize_t blen


cdef inline int u8dec(const uchar* p, const uchar* e, uint32_t* out) noexcept nogil:
    """Decode one UTF-8 sequence starting at a byte >= 0x80.

    Returns its length (2-4) when complete and valid, 0 when the bytes up to *e* are a valid but
    incomplete prefix, -1 when invalid (bad lead or continuation byte, overlong form, surrogate,
    beyond U+10FFFF) or a non-character XML forbids (U+FFFE, U+FFFF).
    """
    cdef uint32_t c = p[0]
    cdef uint32_t c1, c2, c3, lo, hi
    cdef Py_ssize_t avail = e - p
    if c < 0xC2:
        return -1
    if c < 0xE0:
        if avail < 2:
            return 0
        c1 = p[1]
        if (c1 & 0xC0) != 0x80:
            return -1
        out[0] = ((c & 0x1F) << 6) | (c1 & 0x3F)
        return 2
    if c < 0xF0:
        lo = 0x80
        hi = 0xBF
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        if avail < 2:
            return 0
        c1 = p[1]
        if c1 < lo or c1 > hi:
            return -1
        if avail < 3:
            return 0
        c2 = p[2]
        if (c2 & 0xC0) != 0x80:
            return -1
        c = ((c & 0x0F) << 12) | ((c1 & 0x3F) << 6) | (c2 & 0x3F)
        if c >= 0xFFFE:
            return -1
        out[0] = c
        return 3
    if c < 0xF5:
        lo = 0x80
        hi = 0xBF
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if avail < 2:
            return 0
        c1 = p[1]
        if c1 < lo or c1 > hi:
            return -1
        if avail < 3:
            return 0
        c2 = p[2]
        if (c2 & 0xC0) != 0x80:
            return -1
        if avail < 4:
            return 0
        c3 = p[3]
        if (c3 & 0xC0) != 0x80:
            return -1
        out[0] = ((c & 0x07) << 18) | ((c1 & 0x3F) << 12) | ((c2 & 0x3F) << 6) | (c3 & 0x3F)
        return 4
    return -1


cdef inline int u8len(uchar c) noexcept nogil:
    """Length of the UTF-8 sequence a lead byte announces (0 for an invalid lead)."""
    if 0xC2 <= c < 0xE0:
        return 2
    if 0xE0 <= c < 0xF0:
        return 3
    if 0xF0 <= c < 0xF5:
        return 4
    return 0


cdef inline bint name_start_cp(uint32_t c) noexcept nogil:
    """XML 1.0 (5th ed.) NameStartChar for a code point >= 0x80."""
    return ((0xC0 <= c <= 0xD6) or (0xD8 <= c <= 0xF6) or (0xF8 <= c <= 0x2FF)
            or (0x370 <= c <= 0x37D) or (0x37F <= c <= 0x1FFF) or (0x200C <= c <= 0x200D)
            or (0x2070 <= c <= 0x218F) or (0x2C00 <= c <= 0x2FEF) or (0x3001 <= c <= 0xD7FF)
            or (0xF900 <= c <= 0xFDCF) or (0xFDF0 <= c <= 0xFFFD) or (0x10000 <= c <= 0xEFFFF))


cdef inline bint name_cp(uint32_t c) noexcept nogil:
    """XML 1.0 (5th ed.) NameChar for a code point >= 0x80."""
    return (name_start_cp(c) or c == 0xB7 or (0x300 <= c <= 0x36F)
            or (0x203F <= c <= 0x2040))


cdef inline bint xml_char(uint32_t c) noexcept nogil:
    """XML 1.0 Char production (what a character reference may denote)."""
    return (c == 0x9 or c == 0xA or c == 0xD or (0x20 <= c <= 0xD7FF)
            or (0xE000 <= c <= 0xFFFD) or (0x10000 <= c <= 0x10FFFF))


cdef inline Py_ssize_t u8enc(uint32_t c, uchar* out) noexcept nogil:
    """Encode a valid code point as UTF-8 into *out* (room for 4 bytes); returns the length."""
    if c < 0x80:
        out[0] = <uchar>c
        return 1
    if c < 0x800:
        out[0] = <uchar>(0xC0 | (c >> 6))
        out[1] = <uchar>(0x80 | (c & 0x3F))
        return 2
    if c < 0x10000:
        out[0] = <uchar>(0xE0 | (c >> 12))
        out[1] = <uchar>(0x80 | ((c >> 6) & 0x3F))
        out[2] = <uchar>(0x80 | (c & 0x3F))
        return 3
    out[0] = <uchar>(0xF0 | (c >> 18))
    out[1] = <uchar>(0x80 | ((c >> 12) & 0x3F))
    out[2] = <uchar>(0x80 | ((c >> 6) & 0x3F))
    out[3] = <uchar>(0x80 | (c & 0x3F))
    return 4
