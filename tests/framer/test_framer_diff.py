"""Differential tests: StreamFramer against the strict-lxml oracle (tests/framer_oracle.py).

On generated streams the framer must give exactly the oracle's events and bytes; on any split
of the input into chunks it must give the same events (and the same error); on mutated streams
it must accept exactly when the oracle accepts, raise whenever the oracle sees a definite error,
and agree on the elements completed before it. Example counts are moderate by default; set
``S2SFAST_FUZZ=thorough`` for a long run (the slow-marked test grows the most).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from framer_oracle import check_run, judge, run_framer
from framer_streams import mutated, splits, streams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

THOROUGH = os.environ.get("S2SFAST_FUZZ") == "thorough"


def _settings(n: int) -> settings:
    return settings(
        max_examples=n * 25 if THOROUGH else n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"to='b.test' from='a.test' version='1.0'>"
)
CLOSE = b"</stream:stream>"


def _error(run):
    e = run.error
    return None if e is None else (e.condition, e.offset)


def _same_outcome(whole, split) -> None:
    """Chunking must not change the events, nor which error is raised where.

    A failing feed() discards the events it completed (the stream is dead), so on failure the
    runs may differ in how many events came before the error; one must be a prefix of the other.
    """
    assert _error(split) == _error(whole)
    if whole.error is None:
        assert split.events == whole.events
    else:
        short, long_ = sorted((whole.events, split.events), key=len)
        assert long_[: len(short)] == short


@_settings(100)
@given(streams())
def test_generated_streams_match_the_oracle(data):
    check_run(data, judge(data), run_framer([data]))


@_settings(40)
@given(st.data())
def test_generated_streams_in_the_jabber_client_namespace(data):
    doc = data.draw(streams(default_ns="jabber:client"))
    check_run(doc, judge(doc, "jabber:client"), run_framer([doc], default_ns="jabber:client"))
    # The same bytes are a namespace error for a server-to-server framer.
    run = run_framer([doc])
    assert run.error is not None and run.error.condition == "invalid-namespace"


@_settings(100)
@given(st.data())
def test_any_chunk_split_gives_identical_events(data):
    doc = data.draw(streams())
    assert not judge(doc).definite  # the generator makes valid streams
    whole = run_framer([doc])
    split = run_framer(data.draw(splits(doc)))
    assert whole.error is None
    _same_outcome(whole, split)


@pytest.mark.parametrize(
    "body",
    [
        b"<!-- c -->",
        b"<?pi x?>",
        b"<!DOCTYPE x>",
        b"<message><!-- c --></message>",
        b"<message><body>a<?pi?></body></message>",
        b"<message>&foo;</message>",
        b"<message to='&ent;'/>",
    ],
)
def test_restricted_constructs_raise_restricted_xml(body):
    data = HEADER + b"<presence/>" + body + b"<presence/>" + CLOSE
    verdict = judge(data)
    assert verdict.definite and verdict.condition == "restricted-xml"
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        run = run_framer(chunks)
        assert run.error is not None and run.error.condition == "restricted-xml"
        check_run(data, verdict, run)


@_settings(60)
@given(st.data())
def test_injected_restricted_constructs(data):
    """A comment, PI, DOCTYPE or custom entity spliced into a valid stream's content."""
    doc = data.draw(streams(closed=True))
    verdict = judge(doc)
    header_end = len(verdict.header.raw) + doc.index(verdict.header.raw)
    # Positions where markup may start: after the header, and right after any '>' in a stanza.
    spots = [header_end]
    pos = header_end
    for elem in verdict.elements:
        at = doc.index(elem.raw, pos)
        spots += [at + i + 1 for i, b in enumerate(elem.raw) if b == 0x3E]
        pos = at + len(elem.raw)
    at = data.draw(st.sampled_from(spots))
    if data.draw(st.booleans()) and not doc[at:].startswith(b"</stream:stream"):
        inject = data.draw(st.sampled_from([b"<!--x-->", b"<?x y?>", b"&custom;"]))
    else:
        inject = data.draw(st.sampled_from([b"<!--x-->", b"<?x y?>"]))
    bad = doc[:at] + inject + doc[at:]
    bad_verdict = judge(bad)  # still valid when the spot was inside CDATA or an attribute
    chunks = data.draw(splits(bad))
    run = run_framer(chunks)
    check_run(bad, bad_verdict, run)
    if bad_verdict.condition == "restricted-xml":
        assert run.error.condition == "restricted-xml", run.error.text


def _check_mutation(data, base: bytes) -> None:
    bad = data.draw(mutated(base))
    verdict = judge(bad)
    chunks = data.draw(splits(bad))
    run = run_framer(chunks)
    check_run(bad, verdict, run)
    _same_outcome(run_framer([bad]), run)


@_settings(200)
@given(st.data())
def test_mutated_streams_match_the_oracle(data):
    _check_mutation(data, data.draw(streams(closed=True)))


@pytest.mark.slow
@_settings(1500)
@given(st.data())
def test_mutated_streams_match_the_oracle_long_run(data):
    _check_mutation(data, data.draw(streams(closed=True)))


@_settings(50)
@given(st.data())
def test_stanza_size_limit(data):
    """policy-violation exactly when a top-level element grows longer than the limit."""
    doc = data.draw(streams(closed=True))
    verdict = judge(doc)
    header_end = doc.index(verdict.header.raw) + len(verdict.header.raw)
    # Not below the header's own size: the header is bounded by the same limit.
    limit = data.draw(st.integers(header_end, header_end + 300))
    run = run_framer(data.draw(splits(doc)), max_stanza_size=limit)
    too_big = [i for i, e in enumerate(verdict.elements) if len(e.raw) > limit]
    if not too_big:
        check_run(doc, verdict, run)
        return
    assert run.error is not None and run.error.condition == "policy-violation"
    assert len(run.stanzas) <= too_big[0]
    # Raised as soon as the limit is crossed, before the element ends: the first byte past
    # the limit is enough, the byte before it is not.
    pos = header_end
    for elem in verdict.elements[: too_big[0] + 1]:
        start = doc.index(elem.raw, pos)
        pos = start + len(elem.raw)
    at_limit = run_framer([doc[: start + limit]], max_stanza_size=limit)
    assert at_limit.error is None
    assert len(at_limit.stanzas) == too_big[0]
    over = run_framer([doc[: start + limit + 1]], max_stanza_size=limit)
    assert over.error is not None and over.error.condition == "policy-violation"


def _depth(el) -> int:
    return 1 + max((_depth(c) for c in el), default=0)


@_settings(50)
@given(st.data())
def test_depth_limit(data):
    """policy-violation exactly when elements nest deeper than max_depth (a stanza is depth 1)."""
    doc = data.draw(streams(closed=True))
    verdict = judge(doc)
    deepest = max((_depth(e.element) for e in verdict.elements), default=0)
    limit = data.draw(st.integers(1, 6))
    run = run_framer(data.draw(splits(doc)), max_depth=limit)
    if deepest <= limit:
        check_run(doc, verdict, run)
    else:
        assert run.error is not None and run.error.condition == "policy-violation"
        first = next(i for i, e in enumerate(verdict.elements) if _depth(e.element) > limit)
        assert len(run.stanzas) <= first


_CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"


def _capture_docs() -> list[bytes]:
    """The plain-XML S2S captures as complete documents (close tag added where absent)."""
    docs = []
    for path in sorted(_CAPTURES.glob("[01]*.xml")):
        data = path.read_bytes()
        docs.append(data if data.rstrip().endswith(CLOSE) else data + CLOSE)
    assert len(docs) == 6, f"expected the 6 plain S2S captures in {_CAPTURES}"
    return docs


@_settings(200)
@given(st.data())
def test_mutated_captures_match_the_oracle(data):
    """Real Prosody/ejabberd streams, damaged byte-wise and with restricted constructs."""
    _check_mutation(data, data.draw(st.sampled_from(_capture_docs())))


@pytest.mark.parametrize(
    "uri, valid",
    [
        (b"urn:x:p", True),
        (b"http://jabber.org/protocol/caps", True),
        (b"foo", True),
        (b"%41b", True),
        (b"http://[::1]/x", True),
        (b"a b", False),
        (b":x:ns2", False),
        (b"%zz", False),
        (b"a]b", False),
        (b"1a:b", False),
        (b"\xc3\xa4", False),
    ],
)
def test_namespace_names_must_be_uri_references(uri, valid):
    """lxml (hence parse_stanza) refuses other namespace names, so the framer must too."""
    for decl in (b"xmlns", b"xmlns:p"):
        data = HEADER + b"<message " + decl + b"='" + uri + b"'><body/></message>" + CLOSE
        verdict = judge(data)
        assert verdict.accepted == valid and verdict.definite != valid
        check_run(data, verdict, run_framer([data]))
