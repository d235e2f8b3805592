"""The differential oracle for the stream framer: strict lxml plus the restricted-XML rules.

The framer (ext/framer.pyx) is a hand-written incremental parser; this module decides, by
independent means, what it should have done with a whole stream document. lxml (libxml2) is
configured strictly (no recovery, no entity resolution, no DTD loading, no network, no huge
trees, UTF-8 forced), and what libxml2 accepts but XMPP forbids is checked here separately:
comments, processing instructions, DOCTYPE, entities other than the five predefined, XML
declarations that are not UTF-8, character data between stanzas, and the stream namespaces.

The verdict distinguishes three outcomes, because a streaming framer cannot know where the
input ends:

- ``accepted``: a complete stream (header .. ``</stream:stream>``) the framer must accept, with
  exactly these events;
- ``definite``: an error that is visible before the end of the input, so no continuation can
  repair it: the framer must raise;
- neither: the input is only truncated (a viable prefix, as far as libxml2 can tell): the framer
  must not report a stream close, must give the same elements, and may raise only inside the
  unfinished last token (``tail``), which libxml2 has not judged yet.

libxml2 reports some errors only at the end of the input (namespace errors, a missing ';'); the
verdict places them by libxml2's line and column and counts those before ``tail`` as definite.
Namespace names must be RFC 3986 URI references, as libxml2 2.14 (and so lxml and
s2sfast.xml.parse_stanza) requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

__all__ = [
    "STREAM_NS",
    "XML_NS",
    "Header",
    "Element",
    "Verdict",
    "judge",
    "canon",
    "strict_parser",
]

STREAM_NS = "http://etherx.jabber.org/streams"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_PREDEFINED = {b"lt", b"gt", b"amp", b"quot", b"apos"}
_WS = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark may precede the document (XML 1.0 F.1)

# XML 1.0 section 2.8: XMLDecl (a 1.0 processor takes any 1.x version), encoding, standalone.
_XML_DECL = re.compile(
    rb"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(['\"])1\.[0-9]+\1"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*(['\"])([A-Za-z][A-Za-z0-9._-]*)\2)?"
    rb"(?:[ \t\r\n]+standalone[ \t\r\n]*=[ \t\r\n]*(['\"])(yes|no)\4)?"
    rb"[ \t\r\n]*\?>"
)
# XML 1.0 section 2.2: Char; everything else is forbidden anywhere in the document.
_FORBIDDEN_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ENTITY_REF = re.compile(rb"&([^\s;<>&'\"#][^\s;<>&'\"]*);")
_ATTR = re.compile(rb"([^\s=/>]+)[ \t\r\n]*=[ \t\r\n]*(?:'([^']*)'|\"([^\"]*)\")")


def strict_parser(events: tuple[str, ...] = ("start", "end", "comment", "pi")) -> Any:
    """A libxml2 push parser with every leniency off and UTF-8 forced."""
    return etree.XMLPullParser(
        events=events,
        encoding="utf-8",
        recover=False,
        resolve_entities=False,
        load_dtd=False,
        dtd_validation=False,
        no_network=True,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=False,
        remove_pis=False,
        strip_cdata=True,
        collect_ids=False,
    )


@dataclass(frozen=True)
class Header:
    """The stream header as the framer's StreamOpen must report it."""

    name: str  # local name of the root ("stream")
    ns: str  # its namespace URI
    attrs: dict[str, str]  # qualified name as written -> unescaped value (no xmlns*)
    namespaces: dict[str, str]  # prefix ('' for the default) -> URI, as declared on the root
    raw: bytes


@dataclass
class Element:
    """One top-level element (a stanza): its exact bytes when known, and its parse."""

    element: Any  # lxml element from the whole-document parse
    raw: bytes | None = None

    @property
    def tree(self) -> tuple:
        return canon(self.element)


@dataclass
class Verdict:
    """What the framer must do with a whole input (see the module docstring)."""

    accepted: bool
    definite: bool
    condition: str | None = None
    reason: str = ""
    offset: int | None = None
    header: Header | None = None
    elements: list[Element] = field(default_factory=list)
    closed: bool = False
    tail: int = 0  # truncated input: where its unfinished last token starts


def canon(el: Any) -> tuple:
    """A comparable form of an lxml element: tag, sorted attributes, text, children+tails."""
    children = tuple((canon(c), c.tail or "") for c in el)
    return (str(el.tag), tuple(sorted(el.attrib.items())), el.text or "", children)


@dataclass(order=True)
class _Problem:
    offset: int
    condition: str
    reason: str


class _Scan:
    """Token spans of a document, found by a lenient scanner (exact on well-formed input).

    It records the first restricted-XML construct, the root start tag, the depth-1 element spans,
    non-whitespace character data at depth 1, and the root end tag. It stops at the first
    restricted construct or at an unterminated token.
    """

    def __init__(self, data: bytes, start: int) -> None:
        self.restricted: _Problem | None = None
        self.top_junk: _Problem | None = None
        self.header_span: tuple[int, int] | None = None
        self.spans: list[tuple[int, int]] = []
        self.close_span: tuple[int, int] | None = None
        self.tail = len(data)  # start of the unfinished token at the end of the input
        self._run(data, start)

    def _ref(self, data: bytes, i: int) -> None:
        m = _ENTITY_REF.match(data, i)
        if m and m.group(1) not in _PREDEFINED and self.restricted is None:
            name = m.group(1).decode("utf-8", "replace")
            self.restricted = _Problem(i, "restricted-xml", f"entity reference &{name};")

    def _run(self, data: bytes, i: int) -> None:
        n = len(data)
        depth = 0
        elem_start = 0
        while i < n and self.restricted is None:
            c = data[i]
            if c == 0x3C:  # '<'
                if b"<![CDATA[".startswith(data[i : i + 9]) and n - i < 9:
                    self.tail = i  # may still become a CDATA section
                    return
                if data.startswith(b"<![CDATA[", i):
                    j = data.find(b"]]>", i + 9)
                    if depth <= 1 and self.top_junk is None:
                        self.top_junk = _Problem(i, "not-well-formed", "CDATA between stanzas")
                    if j < 0:
                        self.tail = i
                        return
                    i = j + 3
                elif data.startswith(b"<!--", i):
                    self.restricted = _Problem(i, "restricted-xml", "comment")
                elif data.startswith(b"<!", i):
                    self.restricted = _Problem(i, "restricted-xml", "DOCTYPE or markup declaration")
                elif data.startswith(b"<?", i):
                    self.restricted = _Problem(i, "restricted-xml", "processing instruction")
                elif data.startswith(b"</", i):
                    j = data.find(b">", i)
                    if j < 0:
                        self.tail = i
                        return
                    depth -= 1
                    if depth == 1:
                        self.spans.append((elem_start, j + 1))
                    elif depth == 0:
                        self.close_span = (i, j + 1)
                    i = j + 1
                else:
                    j = i + 1
                    quote = 0
                    while j < n:
                        ch = data[j]
                        if quote:
                            if ch == quote:
                                quote = 0
                            elif ch == 0x26:
                                self._ref(data, j)
                        elif ch in (0x22, 0x27):
                            quote = ch
                        elif ch == 0x3E:
                            break
                        j += 1
                    if j >= n:
                        self.tail = i
                        return
                    empty = data[j - 1] == 0x2F
                    if depth == 0:
                        self.header_span = (i, j + 1)
                    elif depth == 1:
                        elem_start = i
                    if empty:
                        if depth == 1:
                            self.spans.append((i, j + 1))
                    else:
                        depth += 1
                    i = j + 1
            else:
                j = data.find(b"<", i)
                if j < 0:
                    j = n
                    self.tail = i
                k = i
                while True:
                    k = data.find(b"&", k, j)
                    if k < 0:
                        break
                    self._ref(data, k)
                    k += 1
                if depth <= 1 and self.top_junk is None:
                    chunk = data[i:j]
                    bad = len(chunk) - len(chunk.lstrip(_WS))
                    if bad < len(chunk):
                        where = "before the stream header" if depth == 0 else "between stanzas"
                        self.top_junk = _Problem(i + bad, "not-well-formed", f"text {where}")
                i = j


def _decl_end(data: bytes) -> tuple[int, _Problem | None, bool]:
    """Length of a leading XML declaration, a problem with it, and whether it is still open."""
    if not data.startswith(b"<?xml") or (len(data) > 5 and data[5] not in _WS):
        return 0, None, False
    end = data.find(b"?>")
    if end < 0:
        return len(data), None, True
    m = _XML_DECL.fullmatch(data, 0, end + 2)
    if m is None:
        return end + 2, _Problem(0, "not-well-formed", "malformed XML declaration"), False
    enc = m.group(3)
    if enc is not None and enc.lower() != b"utf-8":
        problem = _Problem(0, "unsupported-encoding", f"encoding {enc.decode()!r}")
        return end + 2, problem, False
    return end + 2, None, False


def _char_problem(data: bytes) -> tuple[_Problem | None, bool]:
    """The first UTF-8 or XML Char violation, and whether the input ends mid-sequence."""
    try:
        text = data.decode("utf-8")
        truncated = False
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.end == len(data):
            text = data[: exc.start].decode("utf-8", "strict")
            truncated = True
        else:
            return _Problem(exc.start, "not-well-formed", f"invalid UTF-8: {exc.reason}"), False
    m = _FORBIDDEN_CHAR.search(text)
    if m is not None:
        off = len(text[: m.start()].encode("utf-8"))
        reason = f"forbidden character U+{ord(m.group()):04X}"
        return _Problem(off, "not-well-formed", reason), False
    return None, truncated


# Namespace names must be RFC 3986 URI references: libxml2 (2.14) rejects others at error level
# (WAR_NS_URI, so lxml and s2sfast.xml.parse_stanza raise). Relative references only warn.
_IGNORED = {"WAR_NS_URI_RELATIVE"}
# Errors libxml2 only reports because the input ended (wherever it places them).
_EOF_ONLY = {
    "ERR_TAG_NOT_FINISHED",
    "ERR_DOCUMENT_EMPTY",
    "ERR_CDATA_NOT_FINISHED",
    "ERR_COMMENT_NOT_FINISHED",
    "ERR_PI_NOT_FINISHED",
}


def _errors(exc: Any) -> list[Any]:
    return [e for e in exc.error_log if e.level_name in ("ERROR", "FATAL")]


def _ignorable_only(exc: Any) -> bool:
    return all(e.type_name in _IGNORED for e in _errors(exc))


def _first_error(data: bytes, exc: Any, tail: int) -> _Problem | None:
    """The first real error libxml2 logged before *tail* (errors from there on are EOF)."""
    for e in _errors(exc):
        if e.type_name in _IGNORED:
            continue
        if e.type_name in _EOF_ONLY and tail <= len(data):
            return None
        off = _line_col_offset(data, e.line, e.column)
        if off < tail:
            return _Problem(off, "not-well-formed", e.message.strip())
        return None
    return None


def _split(tag: Any) -> tuple[str | None, str]:
    """(namespace, local name) of an lxml tag; unbound prefixes stay in the local name."""
    tag = str(tag)
    if tag.startswith("{"):
        ns, local = tag[1:].split("}", 1)
        return ns, local
    return None, tag


def _line_col_offset(data: bytes, line: int, col: int) -> int:
    """Byte offset of a libxml2 (line, column) position: only LF ends a line, and columns
    count characters (CR included)."""
    if line < 1:  # some errors come without a position
        return len(data)
    pos = 0
    for _ in range(line - 1):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return len(data)
        pos = nl + 1
    end = data.find(b"\n", pos)
    line_text = data[pos : len(data) if end < 0 else end].decode("utf-8", "replace")
    return min(pos + len(line_text[: max(col - 1, 0)].encode("utf-8")), len(data))


def _header(data: bytes, span: tuple[int, int], root: Any) -> Header:
    raw = data[span[0] : span[1]]
    qname = re.match(rb"<([^\s/>]+)", raw).group(1).decode()
    attrs: dict[str, str] = {}
    namespaces: dict[str, str] = {}
    for m in _ATTR.finditer(raw, len(qname) + 1):
        name = m.group(1).decode()
        if name == "xmlns":
            namespaces[""] = root.nsmap.get(None, "")
        elif name.startswith("xmlns:"):
            namespaces[name[6:]] = root.nsmap[name[6:]]
        elif ":" in name:
            prefix, local = name.split(":", 1)
            uri = XML_NS if prefix == "xml" else root.nsmap[prefix]
            attrs[name] = root.attrib[f"{{{uri}}}{local}"]
        else:
            attrs[name] = root.attrib[name]
    tag = etree.QName(root)
    return Header(tag.localname, tag.namespace or "", attrs, namespaces, raw)


def judge(data: bytes, default_ns: str = "jabber:server") -> Verdict:
    """Decide what a strict restricted-XML stream framer must do with the whole of *data*.

    Args:
        data: the bytes of one stream, from its first byte (optionally an XML declaration).
        default_ns: the default namespace the stream header must declare.

    Returns:
        A :class:`Verdict`; ``elements`` holds the top-level elements libxml2 completed (all of
        them when accepted, with ``raw`` set; before the first error otherwise).
    """
    bom = 3 if data.startswith(_BOM) else 0
    if _BOM.startswith(data) or (len(data) - bom < 6 and b"<?xml ".startswith(data[bom:])):
        return Verdict(accepted=False, definite=False, reason="truncated: XML declaration")
    problems: list[_Problem] = []
    decl_len, decl_problem, decl_open = _decl_end(data[bom:])
    decl_len += bom
    if decl_problem:
        problems.append(decl_problem)
    char_problem, utf8_truncated = _char_problem(data)
    if char_problem:
        problems.append(char_problem)
    scan = _Scan(data, decl_len)
    if scan.restricted:
        problems.append(scan.restricted)
    if scan.top_junk:
        problems.append(scan.top_junk)

    parser = strict_parser()
    fatal: _Problem | None = None
    eof_error: str | None = None
    tail = 0 if decl_open else scan.tail
    etree.clear_error_log()
    try:
        parser.feed(data)
    except etree.XMLSyntaxError as exc:
        fatal = _first_error(data, exc, len(data) + 1)
    events = list(parser.read_events())
    if fatal is None:
        try:
            parser.close()
        except etree.XMLSyntaxError as exc:
            # libxml2 defers namespace errors, and some others, to the end of the input; only
            # an error in the unfinished last token is truncation.
            fatal = _first_error(data, exc, tail)
            if fatal is None and not _ignorable_only(exc):
                eof_error = exc.msg
        if fatal is None and eof_error is None:
            events += parser.read_events()  # only a successful end counts what it completed

    depth = 0
    root = None
    elements: list[Element] = []
    closed = False
    for event, el in events:
        if event == "start":
            depth += 1
            if depth == 1:
                root = el
                if _split(el.tag) != (STREAM_NS, "stream"):
                    problems.append(_Problem(0, "invalid-namespace", f"root {el.tag}"))
                elif el.nsmap.get(None) != default_ns:
                    got = el.nsmap.get(None)
                    problems.append(_Problem(0, "invalid-namespace", f"default namespace {got}"))
        elif event == "end":
            depth -= 1
            if depth == 1:
                elements.append(Element(el))
            elif depth == 0:
                closed = True
        else:  # a comment or PI the scanner did not reach (it stops at the first one)
            problems.append(_Problem(len(data), "restricted-xml", event))
    if fatal:
        problems.append(fatal)

    if problems:
        first = min(problems)
        return Verdict(
            accepted=False,
            definite=True,
            condition=first.condition,
            reason=first.reason,
            offset=first.offset,
            elements=elements,
            closed=closed,
        )
    if eof_error or decl_open or utf8_truncated or not closed:
        return Verdict(
            accepted=False,
            definite=False,
            reason=f"truncated: {eof_error or 'end of input'}",
            elements=elements,
            tail=tail,
        )
    spans = scan.spans
    if scan.header_span is None or len(spans) != len(elements):
        raise AssertionError(f"oracle scanner out of step: {len(spans)} spans, {len(elements)}")
    for (a, b), elem in zip(spans, elements, strict=True):
        elem.raw = data[a:b]
    return Verdict(
        accepted=True,
        definite=False,
        header=_header(data, scan.header_span, root),
        elements=elements,
        closed=True,
    )


# --- driving the framer and comparing it with a verdict ------------------------------------


@dataclass
class Run:
    """What a StreamFramer did with a sequence of chunks."""

    events: list[tuple]  # normalised events (see :func:`event_tuple`), in order
    stanzas: list[Any]  # the Stanza objects, in order
    error: Any = None  # the FramingError raised, if any
    error_chunk: int | None = None  # index of the chunk whose feed() raised


def event_tuple(ev: Any) -> tuple:
    """A framer event as a plain comparable tuple."""
    kind = type(ev).__name__
    if kind == "StreamOpen":
        return ("open", ev.name, dict(ev.attrs), dict(ev.namespaces))
    if kind == "Stanza":
        return ("stanza", bytes(ev.raw), ev.name, ev.ns, ev.to, ev.from_, ev.type, ev.id)
    if kind == "StreamClose":
        return ("close",)
    raise AssertionError(f"unknown framer event {ev!r}")


def run_framer(chunks: list[bytes], **kwargs: Any) -> Run:
    """Feed *chunks* to a new StreamFramer(**kwargs); stop at the first FramingError."""
    from s2sfast.framing import FramingError, StreamFramer

    framer = StreamFramer(**kwargs)
    run = Run(events=[], stanzas=[])
    for i, chunk in enumerate(chunks):
        try:
            out = framer.feed(chunk)
        except FramingError as exc:
            run.error = exc
            run.error_chunk = i
            break
        for ev in out:
            run.events.append(event_tuple(ev))
            if type(ev).__name__ == "Stanza":
                run.stanzas.append(ev)
    return run


def _describe(run: Run) -> str:
    err = run.error
    if err is None:
        return "no error"
    return f"{err.condition}: {err.text} (offset {err.offset})"


def check_run(data: bytes, verdict: Verdict, run: Run) -> None:
    """Assert that *run* (the framer on *data*) is what *verdict* (the oracle) demands."""
    from s2sfast.xml import parse_stanza

    kinds = [e[0] for e in run.events]
    assert kinds.count("open") <= 1 and (not kinds or kinds[0] == "open"), kinds
    assert "close" not in kinds[:-1], f"events after the stream close: {kinds}"
    pos = 0
    if verdict.accepted:
        assert run.error is None, f"framer rejected a valid stream: {_describe(run)}"
        assert kinds and kinds[0] == "open" and kinds[-1] == "close", kinds
        h = verdict.header
        assert run.events[0] == ("open", h.name, h.attrs, h.namespaces)
        assert len(run.stanzas) == len(verdict.elements), (
            f"framer gave {len(run.stanzas)} stanzas, oracle {len(verdict.elements)}"
        )
    elif verdict.definite:
        assert run.error is not None, (
            f"framer accepted what the oracle rejects ({verdict.condition}: {verdict.reason} "
            f"near offset {verdict.offset}); events {kinds}"
        )
        assert len(run.stanzas) <= len(verdict.elements), (
            f"framer gave {len(run.stanzas)} stanzas before its error ({_describe(run)}), "
            f"libxml2 completed only {len(verdict.elements)} ({verdict.reason})"
        )
    elif run.error is not None:
        # libxml2 saw no error before the unfinished last token: neither may the framer.
        assert run.error.offset is None or run.error.offset >= verdict.tail, (
            f"framer raised ({_describe(run)}) before offset {verdict.tail}, where the input is "
            f"only truncated ({verdict.reason})"
        )
    else:
        assert "close" not in kinds, f"framer closed a truncated stream ({verdict.reason})"
        assert len(run.stanzas) == len(verdict.elements), (
            f"truncated input: framer gave {len(run.stanzas)} stanzas, "
            f"oracle {len(verdict.elements)} ({verdict.reason})"
        )
    for i, (stanza, elem) in enumerate(zip(run.stanzas, verdict.elements, strict=False)):
        raw = bytes(stanza.raw)
        if elem.raw is not None:
            assert raw == elem.raw, f"stanza {i}: raw {raw!r} != {elem.raw!r}"
        # The raw bytes are a contiguous piece of the input, only whitespace between stanzas.
        at = data.find(raw, pos)
        assert at >= 0, f"stanza {i}: raw bytes not found in the input after offset {pos}"
        pos = at + len(raw)
        el = elem.element
        ns, local = _split(el.tag)
        got = (stanza.name, stanza.ns, stanza.to, stanza.from_, stanza.type, stanza.id)
        # the framer says '' for no namespace (xmlns='' on the stanza), lxml None
        want = (local, ns or "", *(el.get(a) for a in ("to", "from", "type", "id")))
        assert got == want, f"stanza {i}: fields {got} != {want}"
        assert canon(parse_stanza(stanza)) == elem.tree, f"stanza {i}: parse differs"
        if verdict.header is not None:
            assert stanza.namespaces == verdict.header.namespaces, f"stanza {i}: namespaces"
