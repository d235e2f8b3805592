"""Hypothesis strategies for XMPP stream documents and their mutations (framer differential tests).

The stream strategy builds documents that are valid by construction: random stanzas with
nested children, attributes (prefixed ones, ``xml:lang``, all three whitespace characters that
attribute normalisation turns into spaces), the five entities, decimal and hex character
references, CDATA sections, non-ASCII and 4-byte UTF-8, whitespace keepalives between stanzas,
and varied quoting and whitespace inside tags. The mutation strategy then damages such documents
byte-wise and with the constructs restricted XML forbids; which of those still parse is for the
oracle (tests/framer_oracle.py) to decide, not for this module.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = [
    "STREAM_NS",
    "NASTY",
    "streams",
    "mutated",
    "splits",
    "xml_text",
]

STREAM_NS = "http://etherx.jabber.org/streams"
DIALBACK_NS = "jabber:server:dialback"

# Characters XML 1.0 allows (section 2.2), minus the markup characters handled separately.
_CONTROL = "".join(chr(i) for i in range(32) if i not in (9, 10, 13))
_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cs",),
    exclude_characters=_CONTROL + "<&\ufffe\uffff",
)
_NON_ASCII = st.sampled_from("éüßø☃日本語😀𝄞\U0010fffd\u00a0\u2028\ufeff")
_NAME_START = "abcdefghijklmnopqrstuvwyzé日_"
_NAME_CHAR = _NAME_START + "0123456789-.·"
_ENTITIES = ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"]
_WS = st.sampled_from([" ", " ", "\t", "\n", "\r\n", "  "])
_OPT_WS = st.one_of(st.just(""), _WS)

#: Byte strings a mutation may insert: restricted-XML constructs, broken references and UTF-8,
#: forbidden controls, stray markup. The oracle decides whether the result is still valid.
NASTY: list[bytes] = [
    b"<!--",
    b"<!-- c -->",
    b"-->",
    b"<?pi x?>",
    b"<?xml version='1.0'?>",
    b"<!DOCTYPE stream>",
    b"<!ENTITY e 'x'>",
    b"&foo;",
    b"&lt",
    b"&#0;",
    b"&#x1;",
    b"&#xD800;",
    b"&#xFFFE;",
    b"&#x110000;",
    b"&#x1F600;",
    b"&#65;",
    b"&",
    b"<",
    b">",
    b"'",
    b'"',
    b"=",
    b"/",
    b":",
    b" ",
    b"]]>",
    b"<![CDATA[",
    b"<![CDATA[x]]>",
    b"\x00",
    b"\x01",
    b"\x0b",
    b"\x7f",
    b"\x80",
    b"\xc0\xaf",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbf\xbe",
    b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    b"<x>",
    b"</x>",
    b"<x/>",
    b"<p:x/>",
    b" p:a='1'",
    b" xmlns:p='urn:p'",
    b" xmlns:p=''",
    b" xmlns=''",
    b" a='1'",
    b" a='1' a='2'",
    b"</stream:stream>",
    b"<stream:stream>",
]


def xml_text(draw: Any, *, allow_cdata: bool = True, max_pieces: int = 6) -> str:
    """Character data: plain text, entities, character references and CDATA sections."""
    pieces = []
    for _ in range(draw(st.integers(0, max_pieces))):
        kind = draw(st.integers(0, 9))
        if kind <= 3:
            pieces.append(draw(st.text(_CHARS, max_size=12)))
        elif kind == 4:
            pieces.append(draw(st.text(_NON_ASCII, min_size=1, max_size=4)))
        elif kind == 5:
            pieces.append(draw(st.sampled_from(_ENTITIES)))
        elif kind == 6:
            pieces.append(_char_ref(draw))
        elif kind == 7:
            pieces.append(draw(st.sampled_from([">", "]]", "]", "\r", "\r\n", "\t", "\n"])))
        elif allow_cdata:
            body = draw(st.text(st.one_of(_CHARS, st.sampled_from("<&]>")), max_size=10))
            while "]]>" in body:  # one pass can create a new "]]>" ("]]]>>" -> "]]]>")
                body = body.replace("]]>", "]]")
            pieces.append("<![CDATA[" + body + "]]>")
    text = "".join(pieces)
    # ']]>' is not allowed in character data (XML 1.0 section 2.4) outside CDATA sections.
    return _fix_cdata_end(text)


def _fix_cdata_end(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        if text.startswith("<![CDATA[", i):
            j = text.index("]]>", i + 9) + 3
            out.append(text[i:j])
            i = j
            continue
        if text.startswith("]]>", i):
            out.append("]]&gt;")
            i += 3
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _char_ref(draw: Any) -> str:
    ch = draw(st.one_of(_CHARS, _NON_ASCII, st.sampled_from("<&'\"\t\n\r ")))
    form = draw(st.integers(0, 2))
    if form == 0:
        return f"&#{ord(ch)};"
    if form == 1:
        return f"&#x{ord(ch):X};"
    return f"&#x{ord(ch):06x};"


def _attr_value(draw: Any, quote: str) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 6))
        if kind <= 2:
            pieces.append(draw(st.text(_CHARS, max_size=10)).replace(quote, ""))
        elif kind == 3:
            pieces.append(draw(st.text(_NON_ASCII, min_size=1, max_size=3)))
        elif kind == 4:
            pieces.append(draw(st.sampled_from(_ENTITIES)))
        elif kind == 5:
            pieces.append(_char_ref(draw))
        else:
            pieces.append(draw(st.sampled_from(["\t", "\n", "\r", "\r\n", ">", "'" + '"'])))
    value = "".join(pieces)
    return value.replace(quote, "&apos;" if quote == "'" else "&quot;")


def _name(draw: Any) -> str:
    first = draw(st.sampled_from(_NAME_START))
    return first + draw(st.text(st.sampled_from(_NAME_CHAR), max_size=6))


def _attrs(draw: Any, scope: dict[str, str], base: list[str]) -> tuple[str, dict[str, str]]:
    """Attributes for one start tag; returns the text and the prefixes it declares."""
    declared: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        prefix = draw(st.sampled_from(["p", "q", "r", "ns2"]))
        declared[prefix] = f"urn:x:{prefix}"
    if draw(st.integers(0, 6)) == 0:
        declared[""] = draw(st.sampled_from(["urn:x:default", "jabber:client", "jabber:server"]))
    names = list(base)
    pool = ["type", "id", "xml:lang", "a", "b-b", "c.c", "日"]
    names += draw(st.lists(st.sampled_from(pool), max_size=3))
    in_scope = [p for p in {**scope, **declared} if p not in ("", "stream")]
    if in_scope and draw(st.booleans()):
        names.append(draw(st.sampled_from(in_scope)) + ":" + draw(st.sampled_from(["a", "id"])))
    seen: dict[str, None] = {}
    for n in names:
        seen.setdefault(n, None)
    items = [(f"xmlns:{p}" if p else "xmlns", uri) for p, uri in declared.items()]
    for n in seen:
        quote = draw(st.sampled_from("'\""))
        items.append((n, quote + _attr_value(draw, quote) + quote))
    order = draw(st.permutations(range(len(items))))
    text = ""
    for i in order:
        name, value = items[i]
        if name.startswith("xmlns"):
            q = draw(st.sampled_from("'\""))
            value = q + value + q
        text += draw(_WS) + name + draw(_OPT_WS) + "=" + draw(_OPT_WS) + value
    return text, declared


def _element(draw: Any, name: str, scope: dict[str, str], depth: int, base_attrs: list[str]) -> str:
    attrs, declared = _attrs(draw, scope, base_attrs)
    inner = {**scope, **declared}
    children: list[str] = []
    if depth > 0:
        for _ in range(draw(st.integers(0, 2))):
            children.append(xml_text(draw, max_pieces=2))
            children.append(_child(draw, inner, depth - 1))
    children.append(xml_text(draw))
    content = "".join(children)
    tail_ws = draw(_OPT_WS)
    if not content and draw(st.booleans()):
        return f"<{name}{attrs}{tail_ws}/>"
    return f"<{name}{attrs}{tail_ws}>{content}</{name}{draw(_OPT_WS)}>"


def _child(draw: Any, scope: dict[str, str], depth: int) -> str:
    prefixes = [p for p in scope if p not in ("",)]
    if prefixes and draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(prefixes)) + ":" + _name(draw)
    else:
        name = draw(st.sampled_from(["body", "x", "query", "item", "c", "error", "text"]))
        if draw(st.integers(0, 3)) == 0:
            name = _name(draw)
    return _element(draw, name, scope, depth, [])


_STANZAS = ["message", "presence", "iq", "db:result", "db:verify", "stream:features"]


@st.composite
def stanza(draw: Any, scope: dict[str, str] | None = None, max_depth: int = 3) -> str:
    """One top-level element, as text."""
    scope = scope or {"": "jabber:server", "stream": STREAM_NS, "db": DIALBACK_NS}
    names = [n for n in _STANZAS if ":" not in n or n.split(":")[0] in scope]
    name = draw(st.sampled_from([*names, "x"]))
    if name == "x":
        name = _name(draw)
    base = draw(st.lists(st.sampled_from(["to", "from", "type", "id"]), max_size=4, unique=True))
    return _element(draw, name, scope, draw(st.integers(0, max_depth)), base)


@st.composite
def streams(draw: Any, default_ns: str = "jabber:server", closed: bool | None = None) -> bytes:
    """A whole stream document: [XML declaration] header, stanzas, keepalives, [close]."""
    out = ""
    decl = draw(st.integers(0, 5))
    if decl == 1:
        out += "<?xml version='1.0'?>"
    elif decl == 2:
        out += '<?xml version="1.0" encoding="UTF-8"?>\n'
    elif decl == 3:
        out += "<?xml version='1.0' encoding='utf-8' standalone='yes' ?>"
    header = [
        ("xmlns", default_ns),
        ("xmlns:stream", STREAM_NS),
    ]
    optional = [
        ("xmlns:db", DIALBACK_NS),
        ("xmlns:p", "urn:x:p"),
        ("to", draw(st.sampled_from(["b.test", "b&#252;cher.example", "x&#x2E;test", "ü.test"]))),
        ("from", draw(st.sampled_from(["a.test", "a.test\t", "&lt;a&gt;"]))),
        ("id", draw(st.sampled_from(["", "c2b-1", "10393691592939471009", "a&amp;b"]))),
        ("version", "1.0"),
        ("xml:lang", draw(st.sampled_from(["en", "de-CH", ""]))),
    ]
    header += [item for item in optional if draw(st.booleans())]
    scope = {"": default_ns, "stream": STREAM_NS}
    if ("xmlns:db", DIALBACK_NS) in header:
        scope["db"] = DIALBACK_NS
    if ("xmlns:p", "urn:x:p") in header:
        scope["p"] = "urn:x:p"
    out += "<stream:stream"
    for i in draw(st.permutations(range(len(header)))):
        name, value = header[i]
        q = draw(st.sampled_from("'\""))
        out += draw(_WS) + name + "=" + q + value + q
    out += draw(_OPT_WS) + ">"
    for _ in range(draw(st.integers(0, 5))):
        out += draw(st.sampled_from(["", "", " ", "\n", "\t", "\r\n", "   "]))
        text = draw(stanza(scope))
        out += text
    out += draw(st.sampled_from(["", " ", "\n"]))
    if closed is None:
        closed = draw(st.integers(0, 5)) > 0
    if closed:
        out += "</stream:stream" + draw(_OPT_WS) + ">" + draw(st.sampled_from(["", "\n", " "]))
    return out.encode("utf-8")


@st.composite
def mutated(draw: Any, base: bytes, max_mutations: int = 3) -> bytes:
    """*base* with 1..max_mutations byte-level or NASTY-token mutations."""
    data = bytearray(base)
    structural = [i for i, b in enumerate(data) if b in b"<>&'\"=/:"]
    for _ in range(draw(st.integers(1, max_mutations))):
        if structural and draw(st.booleans()):
            pos = min(draw(st.sampled_from(structural)) + draw(st.integers(-1, 1)), len(data))
            pos = max(pos, 0)
        else:
            pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 5))
        if op <= 1:
            data[pos:pos] = draw(st.sampled_from(NASTY))
        elif op == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif op == 3:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == 4 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            n = draw(st.integers(1, 12))
            data[pos:pos] = data[pos : pos + n]
    return bytes(data)


@st.composite
def splits(draw: Any, data: bytes) -> list[bytes]:
    """*data* cut at random points (sometimes into 1-byte chunks)."""
    if len(data) > 1 and draw(st.integers(0, 4)) == 0:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
