"""The framer on real Prosody 0.12.3 / ejabberd 23.01 wire captures (tests/data/captures/).

Each capture is framed whole and split at the TCP read boundaries the recording proxy saw, and
must give the stanza sequence below (read from the captures and cross-checked against their
README) and identical events for every split. TLS files are framed up to the first TLS record;
the c2s files restart after SASL, so each ``<?xml`` segment gets its own framer, as a real
stream restart would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from framer_oracle import check_run, judge, run_framer

#: the committed captures (a missing file fails the tests that read it)
CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"

S = "jabber:server"
C = "jabber:client"
DB = "jabber:server:dialback"
ST = "http://etherx.jabber.org/streams"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"

#: Connections whose recorded TCP reads are kept beside them (STEM.chunks: one "dir@offset+len"
#: line per read, in the order the proxy saw them; tests/data/captures/README.md).
CHUNKS = (
    "01-s1plain-a.test-to-b.test",
    "11-s2plain-b.test-to-e.test",
    "12-s2plain-e.test-to-b.test",
)

#: Offset of the first TLS record (16 03 ..) in the STARTTLS scenario files.
TLS_FROM = {
    "21-s3tls-a.test-to-b.test.c2a.xml": 251,
    "21-s3tls-a.test-to-b.test.a2c.xml": 439,
    "22-s3tls-b.test-to-a.test.c2a.xml": 251,
    "22-s3tls-b.test-to-a.test.a2c.xml": 439,
    "23-s3tls-b.test-to-e.test.c2a.xml": 251,
    "23-s3tls-b.test-to-e.test.a2c.xml": 377,
    "24-s3tls-e.test-to-b.test.c2a.xml": 245,
    "24-s3tls-e.test-to-b.test.a2c.xml": 439,
}

_FEATURES = ("features", ST, None, None, None, None)
_STARTTLS = [("starttls", TLS, None, None, None, None)]
_TLS_A2C = [_FEATURES, ("proceed", TLS, None, None, None, None)]

#: Per file, per stream segment: whether it ends with </stream:stream>, and its stanzas as
#: (local name, namespace, to, from, type, id).
EXPECTED: dict[str, list[tuple[bool, list[tuple]]]] = {
    "01-s1plain-a.test-to-b.test.c2a.xml": [
        (
            True,
            [
                ("result", DB, "b.test", "a.test", None, None),
                ("verify", DB, "b.test", "a.test", None, "c3260af9-f5b4-4e59-90bc-34dd68e6dd4d"),
                ("message", S, "bob@b.test", "alice@a.test/raw", "chat", "m1"),
                ("message", S, "bob@b.test", "alice@a.test/raw", "chat", "m2"),
                ("message", S, "bob@b.test", "alice@a.test/raw", "chat", "m3"),
                ("presence", S, "bob@b.test", "alice@a.test", "subscribe", "s1"),
                ("iq", S, "b.test", "alice@a.test/raw", "get", "p1"),
                ("error", ST, None, None, None, None),
            ],
        )
    ],
    "01-s1plain-a.test-to-b.test.a2c.xml": [
        (
            True,
            [
                _FEATURES,
                ("verify", DB, "a.test", "b.test", "valid", "c3260af9-f5b4-4e59-90bc-34dd68e6dd4d"),
                ("result", DB, "a.test", "b.test", "valid", "2ddf209e-a1ac-4f94-a373-e16c0b073e0a"),
            ],
        )
    ],
    "11-s2plain-b.test-to-e.test.c2a.xml": [
        (
            False,
            [
                ("result", DB, "e.test", "b.test", None, None),
                ("message", S, "carol@e.test", "bob@b.test/raw", "chat", "m1"),
                ("message", S, "carol@e.test", "bob@b.test/raw", "chat", "m2"),
                ("message", S, "carol@e.test", "bob@b.test/raw", "chat", "m3"),
                ("presence", S, "carol@e.test", "bob@b.test", "subscribe", "s1"),
                ("iq", S, "e.test", "bob@b.test/raw", "get", "p1"),
                ("verify", DB, "e.test", "b.test", None, "50e4feb9-43b4-4b5f-9e8c-654d203378b5"),
                ("presence", S, "carol@e.test", "bob@b.test", "subscribe", None),
                ("presence", S, "carol@e.test", "bob@b.test", "unavailable", None),
                ("iq", S, "carol@e.test/raw", "b.test", "result", "p1"),
                ("message", S, "carol@e.test/raw", "bob@b.test/raw", "chat", "r1"),
            ],
        )
    ],
    "11-s2plain-b.test-to-e.test.a2c.xml": [
        (
            False,
            [
                _FEATURES,
                ("result", DB, "b.test", "e.test", "valid", None),
                ("verify", DB, "b.test", "e.test", "valid", "50e4feb9-43b4-4b5f-9e8c-654d203378b5"),
            ],
        )
    ],
    "12-s2plain-e.test-to-b.test.c2a.xml": [
        (True, [("verify", DB, "b.test", "e.test", None, "10393691592939471009")]),
    ],
    "12-s2plain-e.test-to-b.test.a2c.xml": [
        (False, [_FEATURES, ("verify", DB, "e.test", "b.test", "valid", "10393691592939471009")]),
    ],
    **{name: [(False, _TLS_A2C if ".a2c." in name else _STARTTLS)] for name in TLS_FROM},
    "31-s4fail-alice-c2s-to-a.test.c2a.xml": [
        (False, [("auth", SASL, None, None, None, None)]),
        (
            True,
            [
                ("iq", C, None, None, "set", "b1"),
                ("presence", C, None, None, None, None),
                ("message", C, "nobody@c.test", None, "chat", "f1"),
                ("message", C, "someone@x.test", None, "chat", "f2"),
                ("iq", C, "x.test", None, "get", "f3"),
            ],
        ),
    ],
    "31-s4fail-alice-c2s-to-a.test.a2c.xml": [
        (False, [_FEATURES, ("success", SASL, None, None, None, None)]),
        (
            False,
            [
                _FEATURES,
                ("iq", C, None, None, "result", "b1"),
                ("presence", C, None, "alice@a.test/raw", None, None),
                ("presence", C, "alice@a.test", "bob@b.test", "error", None),
                ("message", C, "alice@a.test/raw", "nobody@c.test", "error", "f1"),
                ("message", C, "alice@a.test/raw", "someone@x.test", "error", "f2"),
                ("iq", C, "alice@a.test/raw", "x.test", "error", "f3"),
            ],
        ),
    ],
    "32-s4fail-carol-c2s-to-e.test.c2a.xml": [
        (False, [("auth", SASL, None, None, None, None)]),
        (
            True,
            [
                ("iq", C, None, None, "set", "b1"),
                ("presence", C, None, None, None, None),
                ("message", C, "nobody@c.test", None, "chat", "g1"),
                ("iq", C, "c.test", None, "get", "g2"),
            ],
        ),
    ],
    "32-s4fail-carol-c2s-to-e.test.a2c.xml": [
        (False, [_FEATURES, ("success", SASL, None, None, None, None)]),
        (
            False,
            [
                _FEATURES,
                ("iq", C, None, None, "result", "b1"),
                ("presence", C, "carol@e.test", "bob@b.test", "subscribe", None),
                ("presence", C, "carol@e.test/raw", "carol@e.test/raw", None, None),
                ("message", C, "carol@e.test/raw", "nobody@c.test", "error", "g1"),
                ("iq", C, "carol@e.test/raw", "c.test", "error", "g2"),
            ],
        ),
    ],
}

FILES = sorted(EXPECTED)


def parse_chunks(spec: str) -> dict[str, list[tuple[int, int]]]:
    """Parse a chunk list: "c2a@0+200; a2c@0+317" -> {"c2a": [(0, 200)], ...}."""
    out: dict[str, list[tuple[int, int]]] = {"c2a": [], "a2c": []}
    for item in spec.split(";"):
        direction, rest = item.strip().split("@")
        offset, length = rest.split("+")
        out[direction].append((int(offset), int(length)))
    return out


def segments(name: str) -> list[bytes]:
    """The XML parts of a capture: up to TLS, or one part per stream restart."""
    data = (CAPTURES / name).read_bytes()
    if name in TLS_FROM:
        return [data[: TLS_FROM[name]]]
    starts = [i for i in range(len(data)) if data.startswith(b"<?xml", i)]
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def default_ns(name: str) -> str:
    return C if name.startswith("3") else S


def stanza_rows(run) -> list[tuple]:
    return [(s.name, s.ns, s.to, s.from_, s.type, s.id) for s in run.stanzas]


def test_every_capture_is_covered():
    names = {p.name for p in CAPTURES.glob("*.xml")}
    assert names == set(EXPECTED), "capture files and the EXPECTED table disagree"


@pytest.mark.parametrize("name", FILES)
def test_oracle_agrees_with_the_table(name):
    """The table is what a strict lxml parse of the capture gives (close tag added if absent)."""
    segs = segments(name)
    assert len(segs) == len(EXPECTED[name])
    for seg, (closed, rows) in zip(segs, EXPECTED[name], strict=True):
        assert seg.rstrip().endswith(b"</stream:stream>") == closed
        verdict = judge(seg if closed else seg + b"</stream:stream>", default_ns(name))
        assert verdict.accepted, verdict.reason
        got = []
        for elem in verdict.elements:
            el = elem.element
            tag = el.tag[1:].split("}")
            got.append((tag[1], tag[0], *(el.get(a) for a in ("to", "from", "type", "id"))))
        assert got == rows


@pytest.mark.parametrize("name", FILES)
def test_capture_framed_whole(name):
    for seg, (closed, rows) in zip(segments(name), EXPECTED[name], strict=True):
        run = run_framer([seg], default_ns=default_ns(name))
        assert run.error is None, f"{run.error.condition}: {run.error.text} @ {run.error.offset}"
        assert stanza_rows(run) == rows
        assert [e[0] for e in run.events] == ["open"] + ["stanza"] * len(rows) + (
            ["close"] if closed else []
        )
        check_run(seg, judge(seg, default_ns(name)), run)
        header = judge(seg + (b"" if closed else b"</stream:stream>"), default_ns(name)).header
        assert run.events[0] == ("open", header.name, header.attrs, header.namespaces)


@pytest.mark.parametrize("conn", sorted(CHUNKS))
@pytest.mark.parametrize("direction", ["c2a", "a2c"])
def test_capture_split_at_recorded_tcp_reads(conn, direction):
    name = f"{conn}.{direction}.xml"
    data = (CAPTURES / name).read_bytes()
    reads = parse_chunks("; ".join((CAPTURES / f"{conn}.chunks").read_text().split()))[direction]
    # The recorded reads tile the file exactly, in order.
    assert [off for off, _ in reads] == [sum(n for _, n in reads[:i]) for i in range(len(reads))]
    assert sum(n for _, n in reads) == len(data)
    chunks = [data[off : off + n] for off, n in reads]
    whole = run_framer([data])
    split = run_framer(chunks)
    assert whole.error is None and split.error is None
    assert split.events == whole.events
    assert stanza_rows(split) == EXPECTED[name][0][1]


@pytest.mark.parametrize("name", FILES)
def test_capture_split_into_single_bytes(name):
    for seg in segments(name):
        whole = run_framer([seg], default_ns=default_ns(name))
        single = run_framer([seg[i : i + 1] for i in range(len(seg))], default_ns=default_ns(name))
        assert single.error is None
        assert single.events == whole.events


@pytest.mark.parametrize("name", sorted(TLS_FROM))
def test_tls_records_after_proceed_are_not_xml(name):
    """A peer that starts TLS without a stream restart is sending binary to the framer."""
    data = (CAPTURES / name).read_bytes()
    run = run_framer([data[: TLS_FROM[name]], data[TLS_FROM[name] :]])
    assert stanza_rows(run) == EXPECTED[name][0][1]
    assert run.error is not None and run.error_chunk == 1
    assert run.error.condition == "not-well-formed"


@pytest.mark.parametrize("name", [n for n in FILES if n.startswith("3")])
def test_c2s_restart_needs_a_new_framer(name):
    """A second XML declaration in the same framer is an error; a fresh framer takes it."""
    first, second = segments(name)
    run = run_framer([first, second], default_ns=C)
    assert run.error is not None and run.error_chunk == 1
    assert stanza_rows(run) == EXPECTED[name][0][1]
    fresh = run_framer([second], default_ns=C)
    assert stanza_rows(fresh) == EXPECTED[name][1][1]
