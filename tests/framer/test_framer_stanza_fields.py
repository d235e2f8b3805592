"""The Stanza fields the data path reads instead of re-parsing: ``declares_ns`` (does the
top-level start tag declare a default namespace) and ``to_domain``/``from_domain`` (the
lower-cased domainparts), checked against expat's namespace events and jid_domain on varied
inputs and chunk cuts."""

from __future__ import annotations

from xml.parsers import expat

import pytest

from s2sfast.framing import Stanza, StreamFramer
from s2sfast.protocol.jid import jid_domain

HEADER = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"

CASES = [
    b"<message to='u@b.test' from='a.test'><body>x</body></message>",
    b"<message xmlns='jabber:server' to='u@b.test'/>",
    b"<message xmlns='jabber:client' to='U@B.Test/Res' from='x@A.TEST/r@s'><body/></message>",
    b"<iq xmlns:p='urn:x' type='get' to='b.test'><p:q/></iq>",
    b"<iq type='get' to='b.test' id='a&gt;b'><query xmlns='urn:y'/></iq>",
    b'<presence\n  xmlns\t=\t"jabber:server"\n to="b.test"/>',
    b"<message to='b.test' note='xmlns=\"x\"'/>",
    b"<message to='u@b.test'><x xmlns='jabber:client'/></message>",
    b"<message to='' from=''/>",
    b"<message/>",
]


def _frame(raw: bytes, cut: int | None = None) -> Stanza:
    framer = StreamFramer()
    framer.feed(HEADER)
    if cut is None:
        events = framer.feed(raw)
    else:
        events = framer.feed(raw[:cut]) + framer.feed(raw[cut:])
    (stanza,) = events
    assert isinstance(stanza, Stanza)
    return stanza


def _declares_default(raw: bytes) -> bool:
    """expat's view: a default-namespace declaration reported just before the top element."""
    parser = expat.ParserCreate(namespace_separator=" ")
    depth = 0
    found = False

    def start_ns(prefix: str | None, uri: str) -> None:
        nonlocal found
        if depth == 1 and prefix is None:
            found = True

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1

    parser.StartNamespaceDeclHandler = start_ns
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.Parse(HEADER + raw + b"</stream:stream>", True)
    return found


@pytest.mark.parametrize("raw", CASES)
def test_declares_ns_matches_the_start_tag(raw: bytes) -> None:
    for cut in (None, 1, len(raw) // 2, len(raw) - 1):
        assert _frame(raw, cut).declares_ns == _declares_default(raw), (raw, cut)


@pytest.mark.parametrize("raw", CASES)
def test_domains_match_jid_domain(raw: bytes) -> None:
    stanza = _frame(raw)
    assert stanza.to_domain == jid_domain(stanza.to)
    assert stanza.from_domain == jid_domain(stanza.from_)


def test_hand_built_stanza_defaults() -> None:
    st = Stanza(raw=b"<message/>", name="message", ns="jabber:server", to="A@B.test/r")
    assert st.declares_ns is False and st.to_domain == "b.test" and st.from_domain == ""
    st = Stanza(raw=b"<message xmlns='x'/>", name="message", ns="x", declares_ns=True)
    assert st.declares_ns is True
