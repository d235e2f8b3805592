# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""StreamFramer: an incremental, restricted-XML stream parser and stanza framer for XMPP S2S.

One resumable C state machine runs over every byte exactly once. It checks well-formedness
(tag balance, attribute syntax and uniqueness, namespace binding, references, UTF-8, the XML
Char and Name productions) and the restricted-XML rules of RFC 6120 (no comments, PIs, DTDs or
entities beyond the five predefined ones), enforces the stanza size and depth limits before
buffering more, and creates Python objects only for each completed top-level element.

Bytes of a top-level element that arrive in earlier chunks are copied once into a growable C
buffer; ``raw`` is built once when the element ends. A UTF-8 sequence cut by a chunk boundary
is held back (at most 3 bytes) and replayed, so chunk boundaries never change the result.

Speed: plain runs of text, attribute values and ASCII names are skipped 16 bytes at a time
(SSE2, ext/framer_defs.pxd), runs of non-ASCII UTF-8 are validated whole sequences at a time,
names and namespaces are checked once per tag, a child tag with nothing to bind, resolve or
compare (no prefix, no declaration kept, no repeated attribute name) is closed inside the
state machine, and decoded strings that repeat (names, namespaces, JIDs, types) come from
small caches. On bench/ (357-byte stanzas, 4 KiB reads) it frames ~650 MB/s, ~10.5x
xml.etree's XMLPullParser, at 17.4 instructions per byte (callgrind): ~77% in the state
machine and its inlined skips, ~14% in the per-stanza Python objects (Stanza, raw, cached
strs), the rest in the tag-end checks of tags that declare or use namespaces.

Errors are sticky: the machine records the condition and ``feed()`` raises
:class:`s2sfast.protocol.errors.FramingError`; every later ``feed()`` raises it again. Events completed
earlier in the failing ``feed()`` call are discarded with it: the stream is dead anyway.
"""

cimport cython
from framer_defs cimport *  # structs, UTF-8 and Name helpers (ext/framer_defs.pxd)
from framer_uri cimport valid_uri_reference  # ext/framer_uri.pxd
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcmp, memcpy

import re

from s2sfast.protocol.errors import FramingError

__all__ = ["StreamFramer", "StreamOpen", "Stanza", "StreamClose"]

cdef enum:
    # The header (and the stream's closing tag) is bounded even when stanzas are not:
    # Prosody and ejabberd default to limits of this order for unauthenticated streams.
    C_DEFAULT_HEADER_LIMIT = 65536
    # In-scope namespace declarations are bounded so that prefix lookups stay cheap; real
    # streams use fewer than ten.
    C_MAX_NS_BINDINGS = 512
    # A buffer grown past this for one big stanza is freed afterwards (memory per idle stream).
    C_KEEP_BUFFER = 65536
    # Between feeds, a partial-stanza buffer that is empty and larger than this is freed: a
    # stream that once carried a big stanza split over reads must not keep it (10,000 streams
    # per node); under load the buffer is rarely empty at the end of a feed, so rarely regrown.
    C_IDLE_BUFFER = 1024

DEFAULT_HEADER_LIMIT = C_DEFAULT_HEADER_LIMIT
MAX_NS_BINDINGS = C_MAX_NS_BINDINGS

STREAM_NS = "http://etherx.jabber.org/streams"
# The two reserved namespace names as C strings (no Python object touched per tag).
cdef const uchar* XML_NS_C = <const uchar*>b"http://www.w3.org/XML/1998/namespace"
cdef const uchar* XMLNS_NS_C = <const uchar*>b"http://www.w3.org/2000/xmlns/"
cdef enum:
    XML_NS_LEN = 36
    XMLNS_NS_LEN = 29


cdef inline bint _reserved_ns(const uchar* uri, Py_ssize_t ulen) noexcept:
    return _eq(uri, ulen, XML_NS_C, XML_NS_LEN) or _eq(uri, ulen, XMLNS_NS_C, XMLNS_NS_LEN)
cdef bytes _STREAM_NS_B = STREAM_NS.encode()
cdef bytes _LIT_BOM = b"\xbb\xbf"
cdef bytes _LIT_XML = b"xml"
cdef bytes _LIT_CDATA = b"CDATA["

_DECL_RE = re.compile(
    rb"[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(?:'1\.[0-9]+'|\"1\.[0-9]+\")"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*"
    rb"(?:'([A-Za-z][A-Za-z0-9._-]*)'|\"([A-Za-z][A-Za-z0-9._-]*)\"))?"
    rb"(?:[ \t\r\n]+standalone[ \t\r\n]*=[ \t\r\n]*(?:'(?:yes|no)'|\"(?:yes|no)\"))?"
    rb"[ \t\r\n]*\Z"
)

cdef str NWF = "not-well-formed"
cdef str RESTRICTED = "restricted-xml"
cdef str POLICY = "policy-violation"
cdef str INVALID_NS = "invalid-namespace"
cdef str BAD_ENCODING = "unsupported-encoding"

cdef enum:
    CH_TAB = 9
    CH_LF = 10
    CH_CR = 13
    CH_SP = 32
    CH_BANG = 33
    CH_DQ = 34
    CH_HASH = 35
    CH_AMP = 38
    CH_SQ = 39
    CH_MINUS = 45
    CH_SLASH = 47
    CH_COLON = 58
    CH_SEMI = 59
    CH_LT = 60
    CH_EQ = 61
    CH_GT = 62
    CH_QM = 63
    CH_D = 68
    CH_LSQB = 91
    CH_RSQB = 93
    CH_X = 120

# Byte classes. Plain bytes are skipped by the inner loops without any other test.
cdef uchar T_TEXT[256]    # plain character data: ASCII Char except < & ] >
cdef uchar T_ATTR[256]    # plain attribute value: ASCII Char except < & ' " and S but ' '
cdef uchar T_CDATA[256]   # plain CDATA content: ASCII Char except ] >
cdef uchar T_WS[256]      # XML S
cdef uchar T_NAME[256]    # 1 NameStartChar (not ':'), 2 NameChar only, 3 ':'
cdef uchar T_NCHAR[256]   # ASCII NameChar other than ':'
cdef uchar T_NMORE[256]   # ':' and bytes >= 0x80: may continue a name after an ASCII run
cdef int T_HEX[256]       # hex digit value or -1


cdef void _init_tables():
    cdef int c
    for c in range(256):
        ascii_char = c >= 0x20 and c < 0x80 or c in (9, 10, 13)
        T_TEXT[c] = ascii_char and c not in (CH_LT, CH_AMP, CH_RSQB, CH_GT)
        T_ATTR[c] = ascii_char and c not in (CH_LT, CH_AMP, CH_SQ, CH_DQ, 9, 10, 13)
        T_CDATA[c] = ascii_char and c not in (CH_RSQB, CH_GT)
        T_WS[c] = c in (9, 10, 13, 32)
        if 65 <= c <= 90 or 97 <= c <= 122 or c == 95:
            T_NAME[c] = 1
        elif 48 <= c <= 57 or c == CH_MINUS or c == 46:
            T_NAME[c] = 2
        elif c == CH_COLON:
            T_NAME[c] = 3
        else:
            T_NAME[c] = 0
        T_NCHAR[c] = T_NAME[c] == 1 or T_NAME[c] == 2
        T_NMORE[c] = c == CH_COLON or c >= 0x80
        if 48 <= c <= 57:
            T_HEX[c] = c - 48
        elif 65 <= c <= 70:
            T_HEX[c] = c - 55
        elif 97 <= c <= 102:
            T_HEX[c] = c - 87
        else:
            T_HEX[c] = -1


_init_tables()


# Global caches of decoded strings, keyed by their bytes: names, namespaces and types repeat on
# every stream, and so do the JIDs of active users; reusing the str saves a decode and an
# allocation per stanza. Direct-mapped on a sampled hash; a miss just replaces the entry.
cdef enum:
    NAMES_N = 64
    JIDS_N = 1024
    CACHE_W = 64

cdef struct CacheEntry:
    Py_ssize_t len
    uchar data[CACHE_W]

cdef CacheEntry _names_c[NAMES_N]
cdef CacheEntry _jids_c[JIDS_N]
cdef list _names_o = [None] * NAMES_N
cdef list _jids_o = [None] * JIDS_N


cdef inline uint32_t _hash(const uchar* s, Py_ssize_t n, uint32_t mask) noexcept:
    """Cache slot for s[:n] (1 <= n): four 32-bit samples spread over the value (overlapping for
    short ones); cheap for long JIDs, and a collision costs only a miss (bytes are compared)."""
    cdef uint32_t h, w0, w1, w2, w3
    if n < 4:
        h = s[0] | (<uint32_t>s[n - 1] << 8) | (<uint32_t>s[n >> 1] << 16)
        h *= 0x9E3779B1u
    else:
        # every sample lies inside s[:n] (offsets 0 <= o <= n - 4): reading past the value
        # would hash bytes that vary with what follows it, and could run off the buffer
        memcpy(&w0, s, 4)
        memcpy(&w1, s + ((n - 4) >> 2), 4)
        memcpy(&w2, s + ((n - 4) >> 1), 4)
        memcpy(&w3, s + n - 4, 4)
        h = (w0 * 0x9E3779B1u) ^ (w1 * 0x85EBCA77u) ^ (w2 * 0xC2B2AE3Du) ^ (w3 * 0x27D4EB2Fu)
    h ^= <uint32_t>n * 0x165667B1u
    return (h ^ (h >> 15) ^ (h >> 7)) & mask


cdef inline object _cached(CacheEntry* tab, list objs, uint32_t mask, const uchar* s,
                           Py_ssize_t n):
    cdef uint32_t h
    cdef CacheEntry* e
    if n == 0:
        return ""
    if n > CACHE_W:
        return PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    h = _hash(s, n, mask)
    e = &tab[h]
    if e.len == n and _same(e.data, s, n):
        return objs[h]
    o = PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    memcpy(e.data, s, n)
    e.len = n
    objs[h] = o
    return o


# Namespace names already found to be URI references: every stanza redeclares a few
# (chat states, receipts, caps), and checking the grammar each time would cost more than
# the rest of the tag.
cdef CacheEntry _uris_c[NAMES_N]


cdef bint _uri_ok(const uchar* s, Py_ssize_t n) noexcept:
    cdef uint32_t h
    cdef CacheEntry* e
    if n > CACHE_W:
        return valid_uri_reference(s, n)
    h = _hash(s, n, NAMES_N - 1)
    e = &_uris_c[h]
    if e.len == n and _same(e.data, s, n):
        return True
    if not valid_uri_reference(s, n):
        return False
    memcpy(e.data, s, n)
    e.len = n
    return True


cdef inline object _str(const uchar* s, Py_ssize_t n):
    """A str for a name, namespace or attribute value that repeats (cached)."""
    return _cached(_names_c, _names_o, NAMES_N - 1, s, n)


cdef inline object _jid(const uchar* s, Py_ssize_t n):
    """A str for a to/from address (cached apart, so addresses do not evict names)."""
    return _cached(_jids_c, _jids_o, JIDS_N - 1, s, n)


cdef object _domainpart(object jid):
    """jid_domain() for the Stanza properties: the part between the last '@' (before any '/')
    and the first '/', lower-cased."""
    cdef str s
    cdef Py_ssize_t slash, at
    if not jid:
        return ""
    s = <str>jid
    slash = s.find("/")
    if slash >= 0:
        s = s[:slash]
    at = s.rfind("@")
    if at >= 0:
        s = s[at + 1:]
    return s if s.islower() or not s else s.lower()


@cython.final
@cython.no_gc
@cython.freelist(8)
cdef class StreamOpen:
    """The stream header: ``<stream:stream ...>``.

    Attributes:
        name: the root's local name (always ``"stream"``).
        attrs: attribute name as written (``"to"``, ``"xml:lang"``) -> unescaped value;
            namespace declarations are not included (see ``namespaces``).
        namespaces: prefix -> URI declared on the header, ``''`` for the default namespace.
    """

    cdef readonly str name
    cdef readonly dict attrs
    cdef readonly dict namespaces

    def __init__(self, *, name="stream", attrs=None, namespaces=None):
        self.name = name
        self.attrs = dict(attrs) if attrs is not None else {}
        self.namespaces = dict(namespaces) if namespaces is not None else {}

    def __repr__(self):
        return f"StreamOpen(attrs={self.attrs!r}, namespaces={self.namespaces!r})"

    def __eq__(self, other):
        if not isinstance(other, StreamOpen):
            return NotImplemented
        o = <StreamOpen>other
        return (self.name == o.name and self.attrs == o.attrs
                and self.namespaces == o.namespaces)

    def __hash__(self):
        return hash((self.name, tuple(sorted(self.attrs.items()))))


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class Stanza:
    """One complete top-level element of the stream (a stanza, dialback or negotiation element).

    Attributes:
        raw: the exact bytes of the element as received (ready to forward).
        name: its local name; ns: its namespace URI ('' when in no namespace).
        to, from_, type, id: the unprefixed attributes of those names, unescaped, or None.
        namespaces: the stream header's prefix -> URI dict (shared, not copied), which the
            raw bytes inherit; :func:`s2sfast.xml.parse_stanza` applies it.
        declares_ns: whether the top-level start tag declares a default namespace
            (``xmlns='...'``); when it does not, the element inherits the stream's, and moving it
            into another stream's default namespace is a plain copy of ``raw``.
        to_domain, from_domain: the lower-cased domainparts of ``to`` and ``from_``.
    """

    cdef readonly bytes raw
    cdef readonly str name
    cdef readonly str ns
    cdef readonly object to
    cdef readonly object from_
    cdef readonly object type
    cdef object _id
    cdef Py_ssize_t _id_off               # >= 0: id not decoded yet, it is raw[_id_off:+_id_len]
    cdef Py_ssize_t _id_len
    cdef readonly object namespaces
    cdef readonly bint declares_ns
    cdef object _to_domain
    cdef object _from_domain

    def __init__(self, *, raw, name, ns, to=None, from_=None, type=None, id=None,
                 namespaces=None, declares_ns=False):
        self.raw = bytes(raw)
        self.name = name
        self.ns = ns
        self.to = to
        self.from_ = from_
        self.type = type
        self._id = id
        self._id_off = -1
        self.namespaces = namespaces
        self.declares_ns = declares_ns

    @property
    def to_domain(self):
        """The domainpart of ``to``, lower-cased ('' without one); computed once."""
        if self._to_domain is None:
            self._to_domain = _domainpart(self.to)
        return self._to_domain

    @property
    def from_domain(self):
        """The domainpart of ``from``, lower-cased ('' without one); computed once."""
        if self._from_domain is None:
            self._from_domain = _domainpart(self.from_)
        return self._from_domain

    @property
    def id(self):
        """The unescaped ``id`` attribute or None (decoded on first use: most are never read)."""
        if self._id_off >= 0:
            self._id = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(self.raw) + self._id_off,
                                            self._id_len, NULL)
            self._id_off = -1
        return self._id

    def __repr__(self):
        raw = self.raw if len(self.raw) <= 80 else self.raw[:77] + b"..."
        return (f"Stanza(name={self.name!r}, ns={self.ns!r}, to={self.to!r}, "
                f"from_={self.from_!r}, type={self.type!r}, id={self.id!r}, raw={raw!r})")

    def __eq__(self, other):
        if not isinstance(other, Stanza):
            return NotImplemented
        o = <Stanza>other
        return (self.raw == o.raw and self.name == o.name and self.ns == o.ns
                and self.to == o.to and self.from_ == o.from_ and self.type == o.type
                and self.id == o.id)

    def __hash__(self):
        return hash(self.raw)


@cython.final
cdef class StreamClose:
    """The peer closed its stream: ``</stream:stream>``."""

    def __repr__(self):
        return "StreamClose()"

    def __eq__(self, other):
        if not isinstance(other, StreamClose):
            return NotImplemented
        return True

    def __hash__(self):
        return hash(StreamClose)


cdef StreamClose _CLOSE = StreamClose()

cdef enum State:
    S_START, S_BOM_DONE, S_START_LT, S_LIT, S_DECL_WS, S_DECL, S_PROLOG, S_PROLOG_LT, S_BANG,
    S_STAG_NAME, S_STAG_WS, S_STAG_AFTERVAL, S_STAG_SLASH, S_ATTR_NAME, S_ATTR_EQ, S_ATTR_Q,
    S_ATTR_VAL, S_REF, S_REF_NAME, S_REF_HASH, S_REF_DEC, S_REF_HEX0, S_REF_HEX,
    S_TEXT, S_LT, S_ETAG_NAME, S_ETAG_WS, S_CDATA, S_STREAM, S_STREAM_LT, S_CLOSED, S_ERROR,
    S_STANZA_DONE

cdef enum LitAct:
    L_BOM, L_XML, L_CDATA

cdef enum Ctx:
    CTX_PROLOG, CTX_STREAM, CTX_CONTENT



@cython.final
cdef class StreamFramer:
    """Frames one XMPP stream (one direction, from the header to ``</stream:stream>``).

    Args:
        max_stanza_size: byte limit of one top-level element; crossing it raises
            ``policy-violation`` at once. None: stanzas are unbounded, but the header (from the
            first byte to the end of the stream start tag) and the closing tag are still bounded
            by ``DEFAULT_HEADER_LIMIT`` (64 KiB). With a limit, the header is bounded by it too.
            Whitespace between stanzas (keepalives) is never buffered and never limited.
        max_depth: deepest element nesting allowed inside the stream; a top-level stanza is at
            depth 1, its children at depth 2. Deeper: ``policy-violation``.
        default_ns: the content namespace the header's default namespace must be
            (``invalid-namespace`` otherwise, also when the header declares none).

    After STARTTLS or any stream restart, make a new framer.

    Decisions beyond XML 1.0 + Namespaces (RFC 6120 restricted XML):
        * ``<?xml ...?>`` only at offset 0 (or right after a UTF-8 BOM); any other ``<?``
          (PI or late declaration), a completed ``<!--`` or ``<!DOCTYPE``, and entity references
          other than the five predefined are ``restricted-xml``; an encoding other than UTF-8
          in the declaration is ``unsupported-encoding``.
        * The root must be ``stream`` in the streams namespace and declare ``default_ns`` as
          its default namespace (``invalid-namespace``); an unbound root prefix is
          ``not-well-formed``, as any unbound prefix.
        * Between top-level elements only literal whitespace is allowed (no CDATA, no
          references); after ``</stream:stream>`` only whitespace.
        * Attribute values are unescaped and normalised (XML 1.0 3.3.3: literal TAB/LF/CR and
          CR LF become one space); ``raw`` is always the bytes as received.
    """

    # limits and configuration
    cdef Py_ssize_t max_size          # -1: unlimited stanzas
    cdef Py_ssize_t header_limit
    cdef int max_depth
    cdef str default_ns
    cdef bytes default_ns_b
    # machine state
    cdef int st
    cdef Py_ssize_t pos               # bytes consumed so far (absolute offset)
    cdef Py_ssize_t region_end        # absolute offset where the current bounded region ends, -1
    cdef bint tok_active              # inside a top-level element whose bytes we keep
    cdef Py_ssize_t depth             # open elements, the stream root included
    cdef int ctx                      # context of a '<!' construct
    cdef int lit_act
    cdef const uchar* lit
    cdef Py_ssize_t lit_len, lit_i
    cdef int rsqb                     # run of ']' just seen in text / CDATA
    cdef int quote
    cdef bint attr_cr                 # the last attribute value character was a literal CR
    cdef bint capture
    cdef int ref_ret
    cdef uint32_t ref_val
    cdef Py_ssize_t ref_len
    cdef bint ref_other
    cdef uchar ref_name[8]
    cdef Py_ssize_t em_i              # bytes of the end-tag name matched so far
    # name being read
    cdef Py_ssize_t nm_len, nm_colon
    cdef bint nm_need
    cdef Py_ssize_t el_off, el_len, el_colon
    cdef Py_ssize_t an_off
    cdef Py_ssize_t n_decl, n_pfx      # namespace declarations / prefixed attributes so far
    cdef uint64_t name_bits           # 64-bit filter of the tag's attribute names so far
    cdef bint maybe_dup               # two of them share a filter bit: compare the names
    # held-back partial UTF-8 sequence
    cdef uchar carry[4]
    cdef int carry_len
    # buffers
    cdef uchar* buf                   # earlier chunks' bytes of the current top-level element
    cdef Py_ssize_t buf_len, buf_cap
    cdef uchar* names                 # qnames of the open elements
    cdef Py_ssize_t names_len, names_cap
    cdef uchar* abuf                  # attribute names and captured values of the current tag
    cdef Py_ssize_t abuf_len, abuf_cap
    cdef uchar* nsbuf                 # prefixes and URIs of the in-scope bindings
    cdef Py_ssize_t nsbuf_len, nsbuf_cap
    cdef Attr* attrs
    cdef Py_ssize_t nattrs, attrs_cap
    cdef NsBind* binds
    cdef Py_ssize_t nbinds, binds_cap
    cdef Key* keys
    cdef Py_ssize_t keys_cap
    cdef Elem* elems                  # grown on demand, at most max_depth + 1 entries
    cdef Py_ssize_t elems_cap
    # Python-level results
    cdef list events
    cdef dict hdr_ns
    cdef list hdr_uris                # str of each header binding, by binding index
    cdef Py_ssize_t hdr_nb
    cdef Stanza cur                   # the top-level element being read (raw set at its end)
    cdef Py_ssize_t tok_abs           # stream offset of the current top-level element's '<'
    cdef object err_cond, err_text, err_off

    def __cinit__(self):
        self.buf = NULL
        self.names = NULL
        self.abuf = NULL
        self.nsbuf = NULL
        self.attrs = NULL
        self.binds = NULL
        self.keys = NULL
        self.elems = NULL

    def __init__(self, max_stanza_size=None, max_depth=64, default_ns="jabber:server"):
        if max_stanza_size is not None:
            if int(max_stanza_size) < 1:
                raise ValueError("max_stanza_size must be a positive number of bytes or None")
            self.max_size = int(max_stanza_size)
            self.header_limit = self.max_size
        else:
            self.max_size = -1
            self.header_limit = C_DEFAULT_HEADER_LIMIT
        if int(max_depth) < 1:
            raise ValueError("max_depth must be at least 1")
        if not isinstance(default_ns, str):
            raise TypeError("default_ns must be a str")
        self.max_depth = int(max_depth)
        self.default_ns = default_ns
        self.default_ns_b = default_ns.encode()
        # (everything, so that calling __init__ again really starts a new stream)
        self.st = S_START
        self.pos = 0
        self.region_end = self.header_limit
        self.depth = 0
        self.carry_len = 0
        self.tok_active = False
        self.buf_len = 0
        self.names_len = 0
        self.abuf_len = 0
        self.nsbuf_len = 0
        self.nattrs = 0
        self.nbinds = 0
        self.rsqb = 0
        self.hdr_ns = None
        self.hdr_uris = None
        self.hdr_nb = 0
        self.err_cond = None
        self.err_text = None
        self.err_off = None

    def __dealloc__(self):
        free(self.buf)
        free(self.names)
        free(self.abuf)
        free(self.nsbuf)
        free(self.attrs)
        free(self.binds)
        free(self.keys)
        free(self.elems)

    @property
    def max_stanza_size(self):
        """The byte limit of one top-level element (None: unlimited).

        Settable, e.g. raised once a stream is authenticated; a new value applies from the next
        top-level element on (the element being read keeps the limit it started with). The
        header limit fixed at construction does not change.
        """
        return None if self.max_size < 0 else self.max_size

    @max_stanza_size.setter
    def max_stanza_size(self, value):
        if value is None:
            self.max_size = -1
        elif int(value) < 1:
            raise ValueError("max_stanza_size must be a positive number of bytes or None")
        else:
            self.max_size = int(value)

    @property
    def offset(self):
        """Bytes consumed so far (a held-back partial UTF-8 sequence not included)."""
        return self.pos

    @property
    def buffer_capacity(self):
        """Bytes allocated for a top-level element split over feeds (memory diagnostics):
        between feeds, 0 or at most 1 KiB unless such an element is still incomplete."""
        return self.buf_cap

    @property
    def scratch_capacity(self):
        """Bytes allocated for the start tag being read (attributes, their bytes, duplicate
        keys; memory diagnostics): 0 between top-level elements after a feed."""
        return self.attrs_cap * sizeof(Attr) + self.abuf_cap + self.keys_cap * sizeof(Key)

    @property
    def closed(self):
        """True once ``</stream:stream>`` (or an empty stream root) has been seen."""
        return self.st == S_CLOSED

    def __repr__(self):
        state = "failed" if self.err_cond is not None else (
            "closed" if self.st == S_CLOSED else "open")
        return f"<StreamFramer {state} offset={self.pos} depth={self.depth}>"

    def feed(self, data):
        """Consume the next bytes of the stream and return the events they complete, in order.

        Args:
            data: bytes, bytearray or memoryview (read in place, not copied).

        Returns:
            A list of StreamOpen, Stanza and StreamClose events (empty when nothing completed).

        Raises:
            FramingError: the stream is not acceptable (sticky: every later call raises again
                with the same condition). Events this call had completed before the error are
                discarded with it; events returned by earlier calls stand.
        """
        cdef Py_buffer view
        cdef const uchar* ptr
        cdef Py_ssize_t n, need, m
        cdef int r = 0
        cdef uint32_t cp
        cdef bint have_view = False
        if self.err_cond is not None:
            raise FramingError(self.err_cond, self.err_text, self.err_off)
        if type(data) is bytes:
            ptr = <const uchar*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            if isinstance(data, str):
                raise TypeError("StreamFramer.feed() takes bytes, not str")
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            have_view = True
            ptr = <const uchar*>view.buf
            n = view.len
        self.events = []
        try:
            if self.carry_len and n:
                need = u8len(self.carry[0])
                m = need - self.carry_len
                if m > n:
                    m = n
                memcpy(self.carry + self.carry_len, ptr, m)
                self.carry_len += m
                ptr += m
                n -= m
                if self.carry_len < need:
                    if u8dec(self.carry, self.carry + self.carry_len, &cp) < 0:
                        self._fail(NWF, "invalid UTF-8 sequence", self.pos)
                        r = 1
                else:
                    self.carry_len = 0
                    r = self._run(self.carry, need)
            if r == 0 and n:
                r = self._run(ptr, n)
            events = self.events
        finally:
            self.events = None
            if have_view:
                PyBuffer_Release(&view)
        if self.buf_len == 0 and self.buf_cap > C_IDLE_BUFFER:
            free(self.buf)
            self.buf = NULL
            self.buf_cap = 0
        if self.st == S_STREAM and self.attrs != NULL:
            # between top-level elements: the per-tag scratch (attributes, their bytes, the
            # duplicate-check keys) is rebuilt by the next start tag; an idle stream keeps none
            self._drop_tag_scratch()
        if r:
            raise FramingError(self.err_cond, self.err_text, self.err_off)
        return events

    # ----------------------------------------------------------------- helpers

    cdef void _drop_tag_scratch(self) noexcept:
        free(self.attrs)
        self.attrs = NULL
        self.attrs_cap = 0
        self.nattrs = 0
        free(self.abuf)
        self.abuf = NULL
        self.abuf_cap = 0
        self.abuf_len = 0
        free(self.keys)
        self.keys = NULL
        self.keys_cap = 0

    cdef int _fail(self, str cond, str text, Py_ssize_t off) except -1:
        self.err_cond = cond
        self.err_text = text
        self.err_off = off
        self.st = S_ERROR
        return S_ERROR

    cdef inline const uchar* _lim(self, const uchar* data, const uchar* end) noexcept:
        """End of the bytes the current bounded region still allows in this chunk."""
        cdef Py_ssize_t room
        if self.region_end < 0:
            return end
        room = self.region_end - self.pos
        if room <= 0:
            return data
        if room >= end - data:
            return end
        return data + room

    cdef inline int _scan_name(self, const uchar** pp, const uchar* lim) noexcept:
        """Advance over name bytes (QName rules). 0: stopped; -1: bad name; -2: cut UTF-8."""
        cdef const uchar* p = pp[0]
        cdef const uchar* q = p
        cdef uchar c, t
        cdef int k
        cdef uint32_t cp
        cdef int r = 0
        cdef bint need = self.nm_need
        cdef Py_ssize_t colon = self.nm_colon
        cdef Py_ssize_t start = self.nm_len
        while p < lim:
            c = p[0]
            t = T_NAME[c]
            if t == 1:
                need = False
                p += 1
                # the common case: a run of ASCII NameChars
                while p < lim and T_NCHAR[p[0]]:
                    p += 1
            elif t == 2:
                if need:
                    r = -1
                    break
                p += 1
            elif t == 3:
                if colon >= 0 or need:
                    r = -1
                    break
                colon = start + (p - q)
                need = True
                p += 1
            elif c >= 0x80:
                k = u8dec(p, lim, &cp)
                if k == 0:
                    r = -2
                    break
                if k < 0:
                    r = -1
                    break
                if need:
                    if not name_start_cp(cp):
                        r = -1
                        break
                    need = False
                elif not name_cp(cp):
                    r = -1
                    break
                p += k
            else:
                break
        self.nm_need = need
        self.nm_colon = colon
        self.nm_len = start + (p - q)
        pp[0] = p
        return r

    cdef Py_ssize_t _lookup(self, const uchar* pfx, Py_ssize_t plen) noexcept:
        """Index of the innermost binding of *pfx* (length 0: default namespace), or -1."""
        cdef Py_ssize_t i = self.nbinds - 1
        cdef NsBind* b
        while i >= 0:
            b = &self.binds[i]
            if b.pfx_len == plen and memcmp(self.nsbuf + b.pfx_off, pfx, plen) == 0:
                return i
            i -= 1
        return -1

    cdef int _push_bind(self, const uchar* pfx, Py_ssize_t plen, const uchar* uri,
                        Py_ssize_t ulen, Py_ssize_t off) except -1:
        cdef NsBind* b
        if self.nbinds >= C_MAX_NS_BINDINGS:
            return self._fail(POLICY, "too many namespace declarations in scope", off)
        if self.nbinds >= self.binds_cap:
            s2s_grow(<void**>&self.binds, &self.binds_cap, self.nbinds + 1, sizeof(NsBind))
        if self.nsbuf_len + plen + ulen > self.nsbuf_cap:
            s2s_grow(<void**>&self.nsbuf, &self.nsbuf_cap, self.nsbuf_len + plen + ulen, 1)
        b = &self.binds[self.nbinds]
        self.nbinds += 1
        b.pfx_off = self.nsbuf_len
        b.pfx_len = plen
        memcpy(self.nsbuf + self.nsbuf_len, pfx, plen)
        b.uri_off = self.nsbuf_len + plen
        b.uri_len = ulen
        memcpy(self.nsbuf + b.uri_off, uri, ulen)
        self.nsbuf_len += plen + ulen
        return 0

    cdef inline bint _default_decl_ok(self) noexcept:
        """The tag's one declaration is xmlns='uri' (unprefixed) with a valid, non-reserved uri."""
        cdef Attr* a = self.attrs
        cdef const uchar* uri
        while not a.is_decl:
            a += 1
        if a.colon >= 0:
            return False
        uri = self.abuf + a.val_off
        if _reserved_ns(uri, a.val_len):
            return False
        return a.val_len == 0 or _uri_ok(uri, a.val_len)

    cdef bint _dup_names(self) except -1:
        """True when two attributes of the current tag have the same name as written."""
        cdef Py_ssize_t n = self.nattrs
        cdef Py_ssize_t i, j
        cdef const uchar* ab = self.abuf
        cdef Attr* x
        cdef Attr* y
        if n <= 12:
            for i in range(1, n):
                x = &self.attrs[i]
                for j in range(i):
                    y = &self.attrs[j]
                    if (x.name_len == y.name_len and ab[x.name_off] == ab[y.name_off]
                            and memcmp(ab + x.name_off, ab + y.name_off, x.name_len) == 0):
                        return True
            return False
        if n > self.keys_cap:
            s2s_grow(<void**>&self.keys, &self.keys_cap, n, sizeof(Key))
        for i in range(n):
            self.keys[i].a = ab + self.attrs[i].name_off
            self.keys[i].alen = self.attrs[i].name_len
            self.keys[i].b = NULL
            self.keys[i].blen = 0
        return _has_dup(self.keys, n)

    cdef int _declare(self, bint push, Py_ssize_t off) except -1:
        """Check the tag's namespace declarations; bind them when *push*."""
        cdef Py_ssize_t i, plen, ulen
        cdef Attr* a
        cdef const uchar* ab = self.abuf
        cdef const uchar* nm
        cdef const uchar* pfx
        cdef const uchar* uri
        for i in range(self.nattrs):
            a = &self.attrs[i]
            if not a.is_decl:
                continue
            nm = ab + a.name_off
            uri = ab + a.val_off
            ulen = a.val_len
            if a.colon < 0:
                pfx = nm
                plen = 0
                if _reserved_ns(uri, ulen):
                    return self._fail(NWF, "reserved namespace used as the default", off)
            else:
                pfx = nm + 6
                plen = a.name_len - 6
                if _eq(pfx, plen, <const uchar*>b"xmlns", 5):
                    return self._fail(NWF, "the xmlns prefix must not be declared", off)
                if _eq(pfx, plen, <const uchar*>b"xml", 3):
                    if not _eq(uri, ulen, XML_NS_C, XML_NS_LEN):
                        return self._fail(NWF, "the xml prefix is bound to its own namespace",
                                          off)
                    continue
                if _reserved_ns(uri, ulen):
                    return self._fail(NWF, "reserved namespace bound to a prefix", off)
                if ulen == 0:
                    return self._fail(NWF, "a prefix cannot be undeclared (xmlns:p='')", off)
            if ulen and not _uri_ok(uri, ulen):
                return self._fail(NWF, "namespace name is not a URI reference: "
                                  + PyUnicode_DecodeUTF8(<const char*>uri, ulen, NULL), off)
            if push and self._push_bind(pfx, plen, uri, ulen, off) == S_ERROR:
                return S_ERROR
        return 0

    cdef int _prefixed_attrs(self, Py_ssize_t off) except -1:
        """Resolve the prefixed attributes; expanded names must be unique."""
        cdef Py_ssize_t i, k = 0, bi
        cdef Attr* a
        cdef const uchar* nm
        cdef NsBind* b
        if self.n_pfx > self.keys_cap:
            s2s_grow(<void**>&self.keys, &self.keys_cap, self.n_pfx, sizeof(Key))
        for i in range(self.nattrs):
            a = &self.attrs[i]
            if a.is_decl or a.colon < 0:
                continue
            nm = self.abuf + a.name_off
            if _eq(nm, a.colon, <const uchar*>b"xml", 3):
                a.uri = XML_NS_C
                a.uri_len = XML_NS_LEN
            else:
                bi = self._lookup(nm, a.colon)
                if bi < 0:
                    return self._fail(NWF, "unbound namespace prefix on attribute "
                                      + _str(nm, a.name_len), off)
                b = &self.binds[bi]
                a.uri = self.nsbuf + b.uri_off
                a.uri_len = b.uri_len
            self.keys[k].a = nm + a.colon + 1
            self.keys[k].alen = a.name_len - a.colon - 1
            self.keys[k].b = a.uri
            self.keys[k].blen = a.uri_len
            k += 1
        if k > 1 and _has_dup(self.keys, k):
            return self._fail(NWF, "duplicate attribute (same namespace and local name)", off)
        return 0

    cdef int _stag_end(self, bint empty, Py_ssize_t off) except -1:
        """A start tag is complete: check attributes and namespaces, open the element.

        Returns the next state (S_ERROR after recording a failure).
        """
        cdef Py_ssize_t ns_mark = self.nbinds
        cdef Py_ssize_t nsb_mark = self.nsbuf_len
        cdef Py_ssize_t bi = -1, ulen = 0, llen
        cdef const uchar* nm = self.names + self.el_off
        cdef const uchar* uri = nm
        cdef const uchar* local
        cdef NsBind* b
        cdef Elem* e
        cdef Py_ssize_t depth = self.depth
        cdef bint scoped = (not empty or self.el_colon >= 0 or self.n_pfx > 0 or depth < 2)
        if self.maybe_dup and self._dup_names():
            return self._fail(NWF, "duplicate attribute", off)
        if self.n_decl and self._declare(scoped, off) == S_ERROR:
            return S_ERROR
        if self.el_colon >= 0:
            local = nm + self.el_colon + 1
            llen = self.el_len - self.el_colon - 1
            if _eq(nm, self.el_colon, <const uchar*>b"xmlns", 5):
                return self._fail(NWF, "element prefix xmlns is reserved", off)
            if _eq(nm, self.el_colon, <const uchar*>b"xml", 3):
                uri = XML_NS_C
                ulen = XML_NS_LEN
            else:
                bi = self._lookup(nm, self.el_colon)
                if bi < 0:
                    return self._fail(NWF, "unbound namespace prefix on element "
                                      + _str(nm, self.el_len), off)
        else:
            local = nm
            llen = self.el_len
            if depth < 2:
                bi = self._lookup(nm, 0)
        if bi >= 0:
            b = &self.binds[bi]
            uri = self.nsbuf + b.uri_off
            ulen = b.uri_len
        if self.n_pfx and self._prefixed_attrs(off) == S_ERROR:
            return S_ERROR
        if depth == 0:
            if self._open_stream(local, llen, uri, ulen, ns_mark, off) == S_ERROR:
                return S_ERROR
            if empty:
                self.events.append(_CLOSE)
                return S_CLOSED
        elif depth == 1:
            self._stanza_head(local, llen, uri, ulen, bi)
        if empty:
            self.names_len = self.el_off
            self.nbinds = ns_mark
            self.nsbuf_len = nsb_mark
            return S_STANZA_DONE if depth == 1 else S_TEXT
        if depth >= self.elems_cap:
            s2s_grow(<void**>&self.elems, &self.elems_cap, depth + 1, sizeof(Elem))
        e = &self.elems[depth]
        e.name_off = self.el_off
        e.name_len = self.el_len
        e.ns_mark = ns_mark
        e.nsbuf_mark = nsb_mark
        self.depth = depth + 1
        return S_STREAM if depth == 0 else S_TEXT

    cdef int _open_stream(self, const uchar* local, Py_ssize_t llen, const uchar* uri,
                          Py_ssize_t ulen, Py_ssize_t ns_mark, Py_ssize_t off) except -1:
        cdef Py_ssize_t i
        cdef NsBind* b
        cdef Attr* a
        cdef bint found = False
        cdef StreamOpen ev
        if not _eq(local, llen, <const uchar*>b"stream", 6) or not _eqb(uri, ulen, _STREAM_NS_B):
            return self._fail(INVALID_NS, "the stream root must be <stream> in " + STREAM_NS,
                              off)
        namespaces = {}
        uris = []
        for i in range(ns_mark, self.nbinds):
            b = &self.binds[i]
            if b.pfx_len == 0:
                found = True
                if not _eqb(self.nsbuf + b.uri_off, b.uri_len, self.default_ns_b):
                    return self._fail(INVALID_NS, "default namespace "
                                      + _str(self.nsbuf + b.uri_off, b.uri_len)
                                      + " is not " + self.default_ns, off)
            u = _str(self.nsbuf + b.uri_off, b.uri_len)
            uris.append(u)
            namespaces[_str(self.nsbuf + b.pfx_off, b.pfx_len)] = u
        if not found and self.default_ns:
            return self._fail(INVALID_NS, "the stream header declares no default namespace "
                              "(expected " + self.default_ns + ")", off)
        attrs = {}
        for i in range(self.nattrs):
            a = &self.attrs[i]
            if not a.is_decl:
                attrs[_str(self.abuf + a.name_off, a.name_len)] = _str(
                    self.abuf + a.val_off, a.val_len)
        ev = StreamOpen.__new__(StreamOpen)
        ev.name = "stream"
        ev.attrs = attrs
        ev.namespaces = namespaces
        self.hdr_ns = namespaces
        self.hdr_uris = uris
        self.hdr_nb = self.nbinds
        self.events.append(ev)
        self.region_end = -1
        return 0

    cdef int _stanza_head(self, const uchar* local, Py_ssize_t llen, const uchar* uri,
                          Py_ssize_t ulen, Py_ssize_t bi) except -1:
        """Start the Stanza of a top-level element from its start tag (raw comes at its end)."""
        cdef Py_ssize_t i
        cdef Attr* a
        cdef const uchar* nm
        cdef const uchar* v
        cdef Stanza s = Stanza.__new__(Stanza)   # to, from_, type, _id: None
        s.name = _str(local, llen)
        if 0 <= bi < self.hdr_nb:
            s.ns = self.hdr_uris[bi]
        else:
            s.ns = _str(uri, ulen)
        s._id_off = -1
        s.namespaces = self.hdr_ns
        for i in range(self.nattrs):
            a = &self.attrs[i]
            if a.is_decl:
                if a.colon < 0:
                    s.declares_ns = True
                continue
            if a.val_off < 0:
                continue
            nm = self.abuf + a.name_off
            v = self.abuf + a.val_off
            if a.name_len == 2:
                if nm[0] == 116:  # to
                    s.to = _jid(v, a.val_len)
                elif a.verbatim:  # decoded from raw when first read
                    s._id_off = a.raw_off - self.tok_abs
                    s._id_len = a.val_len
                else:
                    s._id = PyUnicode_DecodeUTF8(<const char*>v, a.val_len, NULL)
            elif nm[0] == 102:  # from
                s.from_ = _jid(v, a.val_len)
            else:
                s.type = _str(v, a.val_len)
        self.cur = s
        return 0

    cdef int _emit_stanza(self, const uchar* tok, const uchar* p) except -1:
        cdef Py_ssize_t n2 = p - tok
        cdef bytes raw
        cdef char* out
        cdef Stanza s
        if self.buf_len:
            raw = PyBytes_FromStringAndSize(NULL, self.buf_len + n2)
            out = PyBytes_AS_STRING(raw)
            memcpy(out, self.buf, self.buf_len)
            memcpy(out + self.buf_len, tok, n2)
            self.buf_len = 0
            if self.buf_cap > C_KEEP_BUFFER:
                free(self.buf)
                self.buf = NULL
                self.buf_cap = 0
        else:
            raw = PyBytes_FromStringAndSize(<const char*>tok, n2)
        if self.abuf_cap > C_KEEP_BUFFER:  # a huge captured attribute: give the memory back
            free(self.abuf)
            self.abuf = NULL
            self.abuf_cap = 0
            self.abuf_len = 0
        s = self.cur
        self.cur = None
        s.raw = raw
        self.events.append(s)
        self.tok_active = False
        self.region_end = -1
        return 0

    cdef int _decl_end(self, Py_ssize_t off) except -1:
        """The XML declaration is complete (its body is in abuf): check it."""
        body = PyBytes_FromStringAndSize(<const char*>self.abuf, self.abuf_len)
        m = _DECL_RE.match(body)
        if m is None:
            return self._fail(NWF, "malformed XML declaration", off)
        enc = m.group(1) or m.group(2)
        if enc is not None and enc.lower() != b"utf-8":
            return self._fail(BAD_ENCODING, "only UTF-8 is supported, not "
                              + enc.decode("ascii"), off)
        return S_PROLOG

    cdef inline void _set_lit(self, bytes lit, int act) noexcept:
        self.lit = <const uchar*>PyBytes_AS_STRING(lit)
        self.lit_len = PyBytes_GET_SIZE(lit)
        self.lit_i = 0
        self.lit_act = act

    cdef inline uint32_t _predefined(self) noexcept:
        """The character a predefined entity reference denotes, 0 for any other name."""
        cdef const uchar* r = self.ref_name
        if self.ref_other:
            return 0
        if self.ref_len == 2 and r[1] == 116:
            if r[0] == 108:
                return 60   # lt
            if r[0] == 103:
                return 62   # gt
        elif self.ref_len == 3 and memcmp(r, b"amp", 3) == 0:
            return 38
        elif self.ref_len == 4:
            if memcmp(r, b"apos", 4) == 0:
                return 39
            if memcmp(r, b"quot", 4) == 0:
                return 34
        return 0

    # ----------------------------------------------------------------- the machine

    cdef int _run(self, const uchar* data, Py_ssize_t n) except -1:
        """Run the machine over data[:n]. Returns 0, or 1 after recording a failure."""
        cdef const uchar* p = data
        cdef const uchar* end = data + n
        cdef const uchar* lim = self._lim(data, end)
        cdef const uchar* tok = data
        cdef const uchar* q
        cdef const uchar* nm
        cdef int st = self.st
        cdef int rsqb = self.rsqb
        cdef int k, r, tagend = 0
        cdef bint cut = False, etagend = False, refdone = False
        cdef uchar c, t
        cdef uint32_t cp = 0
        cdef Py_ssize_t base = self.pos
        cdef Py_ssize_t ei, an
        cdef int qc
        cdef const uchar* q2
        cdef uint64_t bit
        cdef Elem* e
        cdef Attr* a
        cdef uchar enc[4]
        while p < lim:
            if st == S_TEXT:
                while True:
                    q = s2s_skip_text(p, lim)
                    while q < lim and T_TEXT[q[0]]:
                        q += 1
                    q, p = p, q
                    if p != q:
                        rsqb = 0
                    if p >= lim:
                        break
                    c = p[0]
                    if c >= 0x80:
                        p = s2s_skip_u8(p, lim)  # a run of non-ASCII characters
                        if p >= lim or p[0] < 0x80:
                            rsqb = 0
                            continue
                        k = u8dec(p, lim, &cp)   # where the run stopped: cut or invalid
                        if k > 0:
                            p += k
                            rsqb = 0
                            continue
                        if k == 0:
                            cut = True
                            break
                        self._fail(NWF, "invalid UTF-8 or forbidden character in text",
                                   base + (p - data))
                        return 1
                    elif c == CH_LT:
                        p += 1
                        st = S_LT
                        break
                    elif c == CH_AMP:
                        p += 1
                        self.ref_ret = S_TEXT
                        st = S_REF
                        break
                    elif c == CH_RSQB:
                        if rsqb < 2:
                            rsqb += 1
                        p += 1
                    elif c == CH_GT:
                        if rsqb >= 2:
                            self._fail(NWF, "']]>' is not allowed in text", base + (p - data))
                            return 1
                        rsqb = 0
                        p += 1
                    else:
                        self._fail(NWF, "forbidden control character in text",
                                   base + (p - data))
                        return 1
                if cut:
                    break
                rsqb = 0 if st != S_TEXT else rsqb
            elif st == S_ATTR_VAL:
                q = p
                qc = self.quote
                p = s2s_skip_attr(p, lim, qc)
                # the usual: a plain ASCII value, closed in this chunk, found by one skip
                while p < lim and p[0] != qc:
                    p = s2s_skip_attr(p, lim, qc)
                    if p >= lim:
                        break
                    c = p[0]
                    if T_ATTR[c]:
                        p += 1
                    elif c >= 0x80:
                        q2 = s2s_skip_u8(p, lim)
                        if q2 != p:
                            p = q2
                            continue
                        k = u8dec(p, lim, &cp)
                        if k > 0:
                            p += k
                        elif k == 0:
                            cut = True
                            break
                        else:
                            self._fail(NWF, "invalid UTF-8 or forbidden character in an "
                                       "attribute value", base + (p - data))
                            return 1
                    else:
                        break
                if p != q:
                    self.attr_cr = False
                    if self.capture:
                        s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap, q, p - q)
                if cut:
                    break
                if p >= lim:
                    continue
                c = p[0]
                if c == qc:
                    self.attr_cr = False
                    p += 1
                    if self.capture:
                        a = &self.attrs[self.nattrs - 1]
                        a.val_len = self.abuf_len - a.val_off
                    if p < lim and T_WS[p[0]]:  # the usual: whitespace, then the next name
                        p += 1
                        while p < lim and T_WS[p[0]]:
                            p += 1
                        if p < lim and T_NAME[p[0]] == 1:
                            self.an_off = self.abuf_len  # an attribute name begins
                            self.nm_len = 0
                            self.nm_colon = -1
                            self.nm_need = True
                            st = S_ATTR_NAME
                        else:
                            st = S_STAG_WS
                    else:
                        st = S_STAG_AFTERVAL
                elif c == CH_LF or c == CH_TAB or c == CH_CR:
                    # Attribute-value normalisation (XML 1.0 3.3.3 after 2.11): each literal
                    # tab, LF, CR or CR LF becomes one space.
                    if self.capture:
                        self.attrs[self.nattrs - 1].verbatim = False
                        if not (c == CH_LF and self.attr_cr):
                            s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap,
                                    <const uchar*>b" ", 1)
                    self.attr_cr = c == CH_CR
                    p += 1
                elif c == CH_SQ or c == CH_DQ:
                    self.attr_cr = False
                    if self.capture:
                        s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap, p, 1)
                    p += 1
                elif c == CH_AMP:
                    self.attr_cr = False
                    p += 1
                    if self.capture:
                        self.attrs[self.nattrs - 1].verbatim = False
                    self.ref_ret = S_ATTR_VAL
                    st = S_REF
                elif c == CH_LT:
                    self._fail(NWF, "'<' in an attribute value", base + (p - data))
                    return 1
                else:
                    self._fail(NWF, "forbidden control character in an attribute value",
                               base + (p - data))
                    return 1
            elif st == S_STAG_NAME or st == S_ATTR_NAME:
                q = p
                r = 0
                if self.nm_len == 0 and T_NAME[p[0]] == 1:
                    # the usual case, inline: a name starting with an ASCII letter; only a
                    # ':' or a non-ASCII byte after its ASCII run needs the full scanner
                    p = s2s_skip_nchar(p + 1, lim)
                    self.nm_len = p - q
                    self.nm_need = False
                    if p < lim and T_NMORE[p[0]]:
                        r = self._scan_name(&p, lim)
                elif p[0] >= 0x80 or T_NAME[p[0]]:
                    r = self._scan_name(&p, lim)
                if p != q:
                    if st == S_STAG_NAME:
                        s2s_append(&self.names, &self.names_len, &self.names_cap, q, p - q)
                    else:
                        s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap, q, p - q)
                if r or self.nm_need:
                    if r == -2:
                        cut = True
                        break
                    if r == -1 or p < lim:
                        self._fail(NWF, "invalid element name" if st == S_STAG_NAME
                                   else "invalid attribute name", base + (p - data))
                        return 1
                if p >= lim:
                    continue
                c = p[0]
                if st == S_STAG_NAME:
                    self.el_len = self.nm_len
                    self.el_colon = self.nm_colon
                    if T_WS[c]:
                        p += 1
                        if p < lim and T_NAME[p[0]] == 1:  # the usual: one space, a name
                            self.an_off = self.abuf_len  # an attribute name begins
                            self.nm_len = 0
                            self.nm_colon = -1
                            self.nm_need = True
                            st = S_ATTR_NAME
                        else:
                            st = S_STAG_WS
                    elif c == CH_GT:
                        p += 1
                        tagend = 1
                    elif c == CH_SLASH:
                        p += 1
                        st = S_STAG_SLASH
                    else:
                        self._fail(NWF, "invalid character in a start tag", base + (p - data))
                        return 1
                else:
                    # The attribute's name is complete: record it, decide what to capture.
                    if self.nattrs >= self.attrs_cap:
                        s2s_grow(<void**>&self.attrs, &self.attrs_cap, self.nattrs + 1,
                                 sizeof(Attr))
                    a = &self.attrs[self.nattrs]
                    nm = self.abuf + self.an_off
                    an = self.nm_len
                    self.nattrs += 1
                    bit = (<uint64_t>1) << (((<uint32_t>an | (<uint32_t>nm[0] << 8)
                                              | (<uint32_t>nm[an - 1] << 16))
                                             * 0x9E3779B1u) >> 26)
                    if self.name_bits & bit:
                        self.maybe_dup = True
                    self.name_bits |= bit
                    a.name_off = self.an_off
                    a.name_len = an
                    a.colon = self.nm_colon
                    a.val_off = -1
                    a.verbatim = False
                    a.val_len = 0
                    a.is_decl = (nm[0] == 120 and (an == 5 or a.colon == 5)
                                 and (a.colon < 0 or a.colon == 5) and nm[1] == 109
                                 and nm[2] == 108 and nm[3] == 110 and nm[4] == 115)
                    if a.is_decl:
                        self.n_decl += 1
                        self.capture = True
                    else:
                        if a.colon >= 0:
                            self.n_pfx += 1
                        if self.depth == 0:
                            self.capture = True
                        elif self.depth == 1 and a.colon < 0 and (
                                (an == 2 and ((nm[0] == 116 and nm[1] == 111)
                                              or (nm[0] == 105 and nm[1] == 100)))
                                or (an == 4 and ((nm[0] == 102 and nm[1] == 114 and nm[2] == 111
                                                  and nm[3] == 109)
                                                 or (nm[0] == 116 and nm[1] == 121
                                                     and nm[2] == 112 and nm[3] == 101)))):
                            self.capture = True   # to, id, from, type of a top-level element
                        else:
                            self.capture = False
                    if c == CH_EQ:
                        p += 1
                        if p < lim and (p[0] == CH_SQ or p[0] == CH_DQ):  # the usual a='v'
                            self.quote = p[0]
                            self.attr_cr = False
                            p += 1
                            if self.capture:
                                a = &self.attrs[self.nattrs - 1]
                                a.val_off = self.abuf_len
                                a.raw_off = base + (p - data)
                                a.verbatim = True
                            st = S_ATTR_VAL
                        else:
                            st = S_ATTR_Q
                    elif T_WS[c]:
                        p += 1
                        st = S_ATTR_EQ
                    else:
                        self._fail(NWF, "attribute without a value", base + (p - data))
                        return 1
            elif st == S_STAG_WS:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p >= lim:
                    continue
                c = p[0]
                if c == CH_GT:
                    p += 1
                    tagend = 1
                elif c == CH_SLASH:
                    p += 1
                    st = S_STAG_SLASH
                else:
                    self.an_off = self.abuf_len  # an attribute name begins
                    self.nm_len = 0
                    self.nm_colon = -1
                    self.nm_need = True
                    st = S_ATTR_NAME
            elif st == S_STAG_AFTERVAL:
                c = p[0]
                if T_WS[c]:
                    p += 1
                    st = S_STAG_WS
                elif c == CH_GT:
                    p += 1
                    tagend = 1
                elif c == CH_SLASH:
                    p += 1
                    st = S_STAG_SLASH
                else:
                    self._fail(NWF, "attributes must be separated by whitespace",
                               base + (p - data))
                    return 1
            elif st == S_STAG_SLASH:
                if p[0] != CH_GT:
                    self._fail(NWF, "'/' not followed by '>' in a start tag", base + (p - data))
                    return 1
                p += 1
                tagend = 2
            elif st == S_ATTR_EQ:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p >= lim:
                    continue
                if p[0] != CH_EQ:
                    self._fail(NWF, "attribute without '='", base + (p - data))
                    return 1
                p += 1
                st = S_ATTR_Q
            elif st == S_ATTR_Q:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p >= lim:
                    continue
                c = p[0]
                if c != CH_SQ and c != CH_DQ:
                    self._fail(NWF, "attribute value must be quoted", base + (p - data))
                    return 1
                self.quote = c
                self.attr_cr = False
                p += 1
                if self.capture:
                    a = &self.attrs[self.nattrs - 1]
                    a.val_off = self.abuf_len
                    a.raw_off = base + (p - data)
                    a.verbatim = True
                st = S_ATTR_VAL
            elif st == S_LT or st == S_STREAM_LT or st == S_PROLOG_LT:
                c = p[0]
                if c == CH_SLASH and st != S_PROLOG_LT:
                    p += 1
                    self.em_i = 0
                    if st == S_STREAM_LT:
                        self.tok_active = False
                        if self.max_size < 0:
                            self.region_end = base + (p - data) - 2 + self.header_limit
                            lim = self._lim(data, end)
                    st = S_ETAG_NAME
                elif c == CH_BANG:
                    p += 1
                    self.ctx = (CTX_CONTENT if st == S_LT else
                                CTX_STREAM if st == S_STREAM_LT else CTX_PROLOG)
                    st = S_BANG
                elif c == CH_QM:
                    self._fail(RESTRICTED, "processing instructions are not allowed",
                               base + (p - data))
                    return 1
                elif self.depth > self.max_depth:
                    self._fail(POLICY, f"elements nested deeper than {self.max_depth}",
                               base + (p - data))
                    return 1
                else:
                    # a start tag begins (inline: once per element)
                    self.el_off = self.names_len
                    self.nattrs = 0
                    self.name_bits = 0
                    self.maybe_dup = False
                    self.n_decl = 0
                    self.n_pfx = 0
                    self.abuf_len = 0
                    self.nm_len = 0
                    self.nm_colon = -1
                    self.nm_need = True
                    st = S_STAG_NAME
            elif st == S_ETAG_NAME:
                e = &self.elems[self.depth - 1]
                nm = self.names + e.name_off
                ei = self.em_i
                if ei == 0 and lim - p > e.name_len and _same(p, nm, e.name_len):
                    p += e.name_len
                    ei = e.name_len
                while p < lim and ei < e.name_len and p[0] == nm[ei]:
                    p += 1
                    ei += 1
                self.em_i = ei
                if p >= lim:
                    continue
                c = p[0]
                if ei == e.name_len and c == CH_GT:
                    p += 1
                    etagend = True
                elif ei == e.name_len and T_WS[c]:
                    p += 1
                    st = S_ETAG_WS
                else:
                    self._fail(NWF, "end tag does not match <" + _str(nm, e.name_len) + ">",
                               base + (p - data))
                    return 1
            elif st == S_ETAG_WS:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p >= lim:
                    continue
                if p[0] != CH_GT:
                    self._fail(NWF, "malformed end tag", base + (p - data))
                    return 1
                p += 1
                etagend = True
            elif st == S_STREAM:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p >= lim:
                    continue
                if p[0] != CH_LT:
                    self._fail(NWF, "text between top-level elements", base + (p - data))
                    return 1
                tok = p
                self.tok_abs = base + (p - data)
                self.tok_active = True
                self.buf_len = 0
                if self.max_size >= 0:
                    self.region_end = base + (p - data) + self.max_size
                    lim = self._lim(data, end)
                p += 1
                st = S_STREAM_LT
            elif st == S_REF:
                if p[0] == CH_HASH:
                    p += 1
                    st = S_REF_HASH
                else:
                    self.ref_len = 0
                    self.ref_other = False
                    st = S_REF_NAME
            elif st == S_REF_NAME:
                while p < lim:
                    c = p[0]
                    t = T_NAME[c]
                    if t:
                        if self.ref_len == 0 and t == 2:
                            break
                        if self.ref_len < 8:
                            self.ref_name[self.ref_len] = c
                        self.ref_len += 1
                        p += 1
                    elif c >= 0x80:
                        k = u8dec(p, lim, &cp)
                        if k == 0:
                            cut = True
                            break
                        if k < 0 or not (name_cp(cp) if self.ref_len else name_start_cp(cp)):
                            break
                        self.ref_other = True
                        self.ref_len += k
                        p += k
                    else:
                        break
                if cut:
                    break
                if p >= lim:
                    continue
                if p[0] != CH_SEMI or self.ref_len == 0:
                    self._fail(NWF, "malformed entity reference", base + (p - data))
                    return 1
                cp = self._predefined()
                if cp == 0:
                    self._fail(RESTRICTED, "only the five predefined entities are allowed",
                               base + (p - data))
                    return 1
                p += 1
                refdone = True
            elif st == S_REF_HASH:
                c = p[0]
                self.ref_val = 0
                if c == CH_X:
                    p += 1
                    st = S_REF_HEX0
                elif 48 <= c <= 57:
                    st = S_REF_DEC
                else:
                    self._fail(NWF, "malformed character reference", base + (p - data))
                    return 1
            elif st == S_REF_HEX0:
                if T_HEX[p[0]] < 0:
                    self._fail(NWF, "malformed character reference", base + (p - data))
                    return 1
                st = S_REF_HEX
            elif st == S_REF_DEC or st == S_REF_HEX:
                if st == S_REF_DEC:
                    while p < lim and 48 <= p[0] <= 57:
                        if self.ref_val <= 0x10FFFF:
                            self.ref_val = self.ref_val * 10 + (p[0] - 48)
                        p += 1
                else:
                    while p < lim and T_HEX[p[0]] >= 0:
                        if self.ref_val <= 0x10FFFF:
                            self.ref_val = self.ref_val * 16 + <uint32_t>T_HEX[p[0]]
                        p += 1
                if p >= lim:
                    continue
                if p[0] != CH_SEMI:
                    self._fail(NWF, "malformed character reference", base + (p - data))
                    return 1
                cp = self.ref_val
                if not xml_char(cp):
                    self._fail(NWF, "character reference to a character XML forbids",
                               base + (p - data))
                    return 1
                p += 1
                refdone = True
            elif st == S_CDATA:
                while True:
                    q = p
                    while p < lim and T_CDATA[p[0]]:
                        p += 1
                    if p != q:
                        rsqb = 0
                    if p >= lim:
                        break
                    c = p[0]
                    if c >= 0x80:
                        k = u8dec(p, lim, &cp)
                        if k > 0:
                            p += k
                            rsqb = 0
                            continue
                        if k == 0:
                            cut = True
                            break
                        self._fail(NWF, "invalid UTF-8 or forbidden character in CDATA",
                                   base + (p - data))
                        return 1
                    elif c == CH_RSQB:
                        if rsqb < 2:
                            rsqb += 1
                        p += 1
                    elif c == CH_GT:
                        p += 1
                        if rsqb >= 2:
                            rsqb = 0
                            st = S_TEXT
                            break
                        rsqb = 0
                    else:
                        self._fail(NWF, "forbidden control character in CDATA",
                                   base + (p - data))
                        return 1
                if cut:
                    break
            elif st == S_BANG:
                # Only a CDATA section may follow '<!'; anything else is a comment, a DTD or
                # another markup declaration (or garbage that can only become one of those):
                # restricted XML, decided right away.
                if p[0] != CH_LSQB:
                    self._fail(RESTRICTED, "comments, DTDs and markup declarations are not "
                               "allowed", base + (p - data) - 2)
                    return 1
                self._set_lit(_LIT_CDATA, L_CDATA)
                p += 1
                st = S_LIT
            elif st == S_LIT:
                while p < lim and self.lit_i < self.lit_len:
                    if p[0] != self.lit[self.lit_i]:
                        if self.lit_act == L_XML:
                            self._fail(RESTRICTED, "processing instructions are not allowed",
                                       base + (p - data))
                        elif self.lit_act == L_BOM:
                            self._fail(NWF, "invalid UTF-8 at the start of the stream",
                                       base + (p - data))
                        else:
                            self._fail(RESTRICTED, "markup declarations are not allowed",
                                       base + (p - data))
                        return 1
                    p += 1
                    self.lit_i += 1
                if self.lit_i < self.lit_len:
                    continue
                if self.lit_act == L_BOM:
                    st = S_BOM_DONE
                elif self.lit_act == L_XML:
                    st = S_DECL_WS
                elif self.ctx != CTX_CONTENT:
                    self._fail(NWF, "CDATA outside a stanza", base + (p - data))
                    return 1
                else:
                    rsqb = 0
                    st = S_CDATA
            elif st == S_CLOSED:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p < lim:
                    self._fail(NWF, "data after the end of the stream", base + (p - data))
                    return 1
            elif st == S_START:
                c = p[0]
                if c == 0xEF:
                    p += 1
                    self._set_lit(_LIT_BOM, L_BOM)
                    st = S_LIT
                elif c == 0 or c == 0xFE or c == 0xFF:
                    self._fail(BAD_ENCODING, "the stream is not UTF-8", base + (p - data))
                    return 1
                else:
                    st = S_BOM_DONE
            elif st == S_BOM_DONE:
                if p[0] == CH_LT:
                    p += 1
                    st = S_START_LT
                else:
                    st = S_PROLOG
            elif st == S_START_LT:
                if p[0] == CH_QM:
                    p += 1
                    self._set_lit(_LIT_XML, L_XML)
                    st = S_LIT
                else:
                    st = S_PROLOG_LT
            elif st == S_DECL_WS:
                c = p[0]
                if T_WS[c]:
                    self.abuf_len = 0
                    s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap, p, 1)
                    p += 1
                    st = S_DECL
                elif c == CH_QM:
                    self._fail(NWF, "malformed XML declaration", base + (p - data))
                    return 1
                else:
                    self._fail(RESTRICTED, "processing instructions are not allowed",
                               base + (p - data))
                    return 1
            elif st == S_DECL:
                # Collect the declaration up to '>' (checked as a whole then), but reject
                # bytes no XML text may contain as soon as they arrive.
                q = p
                while p < lim:
                    c = p[0]
                    if c == CH_GT:
                        break
                    if c < 0x20:
                        if not T_WS[c]:
                            break
                        p += 1
                    elif c < 0x80:
                        p += 1
                    else:
                        k = u8dec(p, lim, &cp)
                        if k <= 0:
                            cut = k == 0
                            break
                        p += k
                s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap, q, p - q)
                if cut:
                    break
                if p >= lim:
                    continue
                if p[0] != CH_GT:
                    self._fail(NWF, "invalid character in the XML declaration",
                               base + (p - data))
                    return 1
                p += 1
                if self.abuf[self.abuf_len - 1] != CH_QM:
                    self._fail(NWF, "malformed XML declaration", base + (p - data))
                    return 1
                self.abuf_len -= 1
                st = self._decl_end(base + (p - data))
                if st == S_ERROR:
                    return 1
            elif st == S_PROLOG:
                while p < lim and T_WS[p[0]]:
                    p += 1
                if p >= lim:
                    continue
                if p[0] != CH_LT:
                    self._fail(NWF, "text before the stream header", base + (p - data))
                    return 1
                p += 1
                st = S_PROLOG_LT
            else:
                self._fail(NWF, "internal framer state error", base + (p - data))
                return 1

            # Completions shared by several states.
            if tagend:
                if (self.depth >= 2 and self.el_colon < 0 and self.n_pfx == 0
                        and not self.maybe_dup
                        and (self.n_decl == 0
                             or (tagend == 2 and self.n_decl == 1 and self._default_decl_ok()))):
                    # A child element with no prefixes anywhere, no possibly repeated
                    # attribute name, and either no namespace declaration (<body>,
                    # <identity category=... type=.../>) or, when empty, only a valid default
                    # one (<active xmlns='...'/>, which binds nothing beyond itself): nothing
                    # else to check; open it, or drop its name when empty.
                    if tagend == 2:
                        self.names_len = self.el_off
                    else:
                        if self.depth >= self.elems_cap:
                            s2s_grow(<void**>&self.elems, &self.elems_cap, self.depth + 1,
                                     sizeof(Elem))
                        e = &self.elems[self.depth]
                        e.name_off = self.el_off
                        e.name_len = self.el_len
                        e.ns_mark = self.nbinds
                        e.nsbuf_mark = self.nsbuf_len
                        self.depth += 1
                    tagend = 0
                    st = S_TEXT
                    continue
                st = self._stag_end(tagend == 2, base + (p - data))
                tagend = 0
                if st == S_ERROR:
                    return 1
                if st == S_STANZA_DONE:
                    self._emit_stanza(tok, p)
                    st = S_STREAM
                lim = self._lim(data, end)
            elif etagend:
                etagend = False
                self.depth -= 1
                e = &self.elems[self.depth]
                self.names_len = e.name_off
                self.nbinds = e.ns_mark
                self.nsbuf_len = e.nsbuf_mark
                if self.depth == 1:
                    self._emit_stanza(tok, p)
                    st = S_STREAM
                    lim = end
                elif self.depth == 0:
                    self.events.append(_CLOSE)
                    self.region_end = -1
                    st = S_CLOSED
                    lim = end
                else:
                    rsqb = 0
                    st = S_TEXT
            elif refdone:
                refdone = False
                if self.ref_ret == S_ATTR_VAL and self.capture:
                    s2s_append(&self.abuf, &self.abuf_len, &self.abuf_cap, enc, u8enc(cp, enc))
                st = self.ref_ret

        if cut and lim == end:
            # Hold back a UTF-8 sequence cut by the chunk boundary; feed() replays it.
            self.carry_len = <int>(end - p)
            memcpy(self.carry, p, self.carry_len)
        elif p >= lim and lim < end or cut:
            self._fail(POLICY, ("stream header" if self.depth == 0 else "stanza")
                       + " larger than the limit", self.region_end)
            return 1
        if self.tok_active and p > tok:
            s2s_append(&self.buf, &self.buf_len, &self.buf_cap, tok, p - tok)
        self.pos = base + (p - data)
        self.st = st
        self.rsqb = rsqb
        return 0
