# cython: language_level=3
"""C-level helpers of the stream framer (ext/framer.pyx): structs, SSE2 skips, UTF-8, buffers.

Kept apart from the state machine so each file stays readable; everything here is inlined
into the extension.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport qsort, realloc
from libc.string cimport memcmp, memcpy

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
    Py_ssize_t raw_off         # stream offset of the value's first byte (captured values)
    bint verbatim              # the captured value is its raw bytes (no reference, no S normalised)


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


cdef extern from *:
    """
    /* Skip 16 bytes at a time while none needs a closer look: SSE2 is part of x86-64, other
       targets fall back to the byte tables alone. Bytes >= 0x80 compare as negative, so the
       signed "< 0x20" test catches them together with the control characters. */
    /* Copy n bytes; names and short values (the usual) with two overlapping loads, no call. */
    static inline __attribute__((always_inline)) void s2s_copy(unsigned char* d,
                                                               const unsigned char* s,
                                                               Py_ssize_t n) {
        if (n > 16) {
            memcpy(d, s, (size_t)n);
        } else if (n >= 8) {
            uint64_t a, b;
            memcpy(&a, s, 8); memcpy(&b, s + n - 8, 8);
            memcpy(d, &a, 8); memcpy(d + n - 8, &b, 8);
        } else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, s, 4); memcpy(&b, s + n - 4, 4);
            memcpy(d, &a, 4); memcpy(d + n - 4, &b, 4);
        } else if (n > 0) {
            d[0] = s[0]; d[n >> 1] = s[n >> 1]; d[n - 1] = s[n - 1];
        }
    }
    /* Grow a buffer of *cap items of `item` bytes to hold `need`: doubling, from 128 bytes up
       (an idle stream's framer should cost little memory). -1 with MemoryError set on failure. */
    static int s2s_grow(void** buf, Py_ssize_t* cap, Py_ssize_t need, Py_ssize_t item) {
        Py_ssize_t newcap;
        void* nb;
        if (need <= *cap) return 0;
        newcap = *cap * 2;
        if (newcap < need) newcap = need;
        if (newcap * item < 128) newcap = (128 + item - 1) / item;
        nb = realloc(*buf, (size_t)(newcap * item));
        if (nb == NULL) { PyErr_NoMemory(); return -1; }
        *buf = nb;
        *cap = newcap;
        return 0;
    }
    /* Append n bytes to a growable byte buffer; inlined at every call site. */
    static inline __attribute__((always_inline)) int s2s_append(
            unsigned char** buf, Py_ssize_t* len, Py_ssize_t* cap,
            const unsigned char* src, Py_ssize_t n) {
        if (*len + n > *cap && s2s_grow((void**)buf, cap, *len + n, 1) < 0) return -1;
        s2s_copy(*buf + *len, src, n);
        *len += n;
        return 0;
    }
    /* Skip whole UTF-8 sequences (2-4 bytes) that are valid and XML Chars: no overlong form,
       no surrogate, nothing above U+10FFFF, not U+FFFE/U+FFFF (the rules of u8dec below).
       Stops at an ASCII byte, at `end`, or at a sequence that is invalid or cut by `end`,
       which the caller then classifies with u8dec. */
    static inline const unsigned char* s2s_skip_u8(const unsigned char* p,
                                                   const unsigned char* end) {
        while (p < end) {
            unsigned c = p[0], c1;
            if (c < 0xC2) return p;    /* ASCII, a stray continuation byte, overlong lead */
            if (c < 0xE0) {
                if (end - p < 2 || (p[1] & 0xC0) != 0x80) return p;
                p += 2;
            } else if (c < 0xF0) {
                if (end - p < 3) return p;
                c1 = p[1];
                if ((c1 & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return p;
                if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F)) return p;
                if (c == 0xEF && c1 == 0xBF && p[2] >= 0xBE) return p;
                p += 3;
            } else if (c < 0xF5) {
                if (end - p < 4) return p;
                c1 = p[1];
                if ((c1 & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
                    return p;
                if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F)) return p;
                p += 4;
            } else {
                return p;
            }
        }
        return p;
    }
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline const unsigned char* s2s_skip_text(const unsigned char* p,
                                                     const unsigned char* end) {
        const __m128i lt = _mm_set1_epi8('<'), amp = _mm_set1_epi8('&');
        const __m128i rsqb = _mm_set1_epi8(']'), gt = _mm_set1_epi8('>');
        const __m128i sp = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i*)p);
            __m128i m = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, lt), _mm_cmpeq_epi8(v, amp)),
                _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, rsqb), _mm_cmpeq_epi8(v, gt)),
                             _mm_cmplt_epi8(v, sp)));
            int mask = _mm_movemask_epi8(m);
            if (mask) return p + __builtin_ctz((unsigned)mask);
            p += 16;
        }
        return p;
    }
    static inline const unsigned char* s2s_skip_attr(const unsigned char* p,
                                                     const unsigned char* end, int quote) {
        const __m128i lt = _mm_set1_epi8('<'), amp = _mm_set1_epi8('&');
        const __m128i q = _mm_set1_epi8((char)quote), sp = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i*)p);
            __m128i m = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, lt), _mm_cmpeq_epi8(v, amp)),
                _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmplt_epi8(v, sp)));
            int mask = _mm_movemask_epi8(m);
            if (mask) return p + __builtin_ctz((unsigned)mask);
            p += 16;
        }
        return p;
    }
    /* An ASCII NameChar other than ':' ([A-Za-z0-9._-]). */
    static inline int s2s_nchar(unsigned c) {
        return (unsigned)((c | 0x20) - 'a') < 26u || (unsigned)(c - '0') < 10u
            || c == '-' || c == '.' || c == '_';
    }
    /* ASCII NameChars other than ':', 16 at a time, then one by one up to `end`: returns the
       first other byte (or end). */
    static inline __m128i s2s_in_range(__m128i v, char lo, char hi) {
        __m128i t = _mm_sub_epi8(v, _mm_set1_epi8(lo));
        return _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8((char)(hi - lo))), t);
    }
    static inline const unsigned char* s2s_skip_nchar(const unsigned char* p,
                                                      const unsigned char* end) {
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i*)p);
            __m128i ok = _mm_or_si128(
                _mm_or_si128(s2s_in_range(_mm_or_si128(v, _mm_set1_epi8(0x20)), 'a', 'z'),
                             s2s_in_range(v, '-', '9')),   /* - . / 0-9 */
                _mm_cmpeq_epi8(v, _mm_set1_epi8('_')));
            ok = _mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('/')), ok);
            int mask = (~_mm_movemask_epi8(ok)) & 0xFFFF;
            if (mask) return p + __builtin_ctz((unsigned)mask);
            p += 16;
        }
        while (p < end && s2s_nchar(*p)) p++;
        return p;
    }
    #else
    static inline int s2s_nchar(unsigned c) {
        return (unsigned)((c | 0x20) - 'a') < 26u || (unsigned)(c - '0') < 10u
            || c == '-' || c == '.' || c == '_';
    }
    static inline const unsigned char* s2s_skip_nchar(const unsigned char* p,
                                                      const unsigned char* end) {
        while (p < end && s2s_nchar(*p)) p++;
        return p;
    }
    static inline const unsigned char* s2s_skip_text(const unsigned char* p,
                                                     const unsigned char* end) {
        (void)end;
        return p;
    }
    static inline const unsigned char* s2s_skip_attr(const unsigned char* p,
                                                     const unsigned char* end, int quote) {
        (void)end; (void)quote;
        return p;
    }
    #endif
    """
    void s2s_copy(uchar* d, const uchar* s, Py_ssize_t n) noexcept nogil
    int s2s_grow(void** buf, Py_ssize_t* cap, Py_ssize_t need, Py_ssize_t item) except -1
    int s2s_append(uchar** buf, Py_ssize_t* length, Py_ssize_t* cap, const uchar* src,
                   Py_ssize_t n) except -1
    const uchar* s2s_skip_text(const uchar* p, const uchar* end) noexcept nogil
    const uchar* s2s_skip_nchar(const uchar* p, const uchar* end) noexcept nogil
    const uchar* s2s_skip_attr(const uchar* p, const uchar* end, int quote) noexcept nogil
    const uchar* s2s_skip_u8(const uchar* p, const uchar* end) noexcept nogil


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


cdef inline bint _same(const uchar* a, const uchar* b, Py_ssize_t n) noexcept:
    """a[:n] == b[:n], eight bytes at a time (short strings: cheaper than calling memcmp).

    The last (partial) word is compared as the final eight bytes, overlapping bytes already
    compared; strings shorter than eight bytes use two overlapping 4-byte words, or the
    first, middle and last bytes (which cover all of a 1-3 byte string).
    """
    cdef uint64_t x, y
    cdef uint32_t u, v
    if n >= 8:
        while n > 8:
            memcpy(&x, a, 8)
            memcpy(&y, b, 8)
            if x != y:
                return False
            a += 8
            b += 8
            n -= 8
        memcpy(&x, a + n - 8, 8)
        memcpy(&y, b + n - 8, 8)
        return x == y
    if n >= 4:
        memcpy(&u, a, 4)
        memcpy(&v, b, 4)
        if u != v:
            return False
        memcpy(&u, a + n - 4, 4)
        memcpy(&v, b + n - 4, 4)
        return u == v
    if n > 0:
        return a[0] == b[0] and a[n >> 1] == b[n >> 1] and a[n - 1] == b[n - 1]
    return True


cdef inline bint _eq(const uchar* a, Py_ssize_t alen, const uchar* b, Py_ssize_t blen) noexcept:
    return alen == blen and memcmp(a, b, alen) == 0


cdef inline bint _eqb(const uchar* a, Py_ssize_t alen, bytes b) noexcept:
    return alen == PyBytes_GET_SIZE(b) and memcmp(a, PyBytes_AS_STRING(b), alen) == 0


cdef inline int _cmpkey(const void* x, const void* y) noexcept nogil:
    cdef const Key* ka = <const Key*>x
    cdef const Key* kb = <const Key*>y
    cdef int r
    cdef Py_ssize_t m = ka.alen if ka.alen < kb.alen else kb.alen
    r = memcmp(ka.a, kb.a, m)
    if r:
        return r
    if ka.alen != kb.alen:
        return -1 if ka.alen < kb.alen else 1
    m = ka.blen if ka.blen < kb.blen else kb.blen
    if m:
        r = memcmp(ka.b, kb.b, m)
        if r:
            return r
    if ka.blen != kb.blen:
        return -1 if ka.blen < kb.blen else 1
    return 0


cdef inline bint _has_dup(Key* keys, Py_ssize_t n) noexcept:
    """True when two of the *n* keys are equal (pairwise for few, sorted for many)."""
    cdef Py_ssize_t i, j
    if n <= 12:
        for i in range(n):
            for j in range(i + 1, n):
                if _cmpkey(&keys[i], &keys[j]) == 0:
                    return True
        return False
    qsort(keys, n, sizeof(Key), _cmpkey)
    for i in range(n - 1):
        if _cmpkey(&keys[i], &keys[i + 1]) == 0:
            return True
    return False
