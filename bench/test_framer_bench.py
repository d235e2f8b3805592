"""Throughput of StreamFramer against the parsers Python XMPP stacks use, on one corpus.

Every contender gets the same realistic S2S stream (bench/corpus.py) in 4 KiB reads and must
find every top-level stanza: StreamFramer with full validation; xml.etree's XMLPullParser the
way slixmpp drives it (start/end events, count depth-1 ends, clear the root); lxml's
XMLPullParser likewise; pyexpat with depth-counting handlers. Ratios, not absolute times, are
the result: they are printed at the end of the session (bench/conftest.py).

Run: ``pytest bench/ --benchmark-only``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from xml.parsers import expat

import pytest
from lxml import etree as lxml_etree

from s2sfast.framing import Stanza, StreamFramer

ROUNDS = 7


def frame_with_streamframer(chunks: list[bytes]) -> int:
    framer = StreamFramer()
    n = 0
    for chunk in chunks:
        for ev in framer.feed(chunk):
            if type(ev) is Stanza:
                n += 1
    return n


def _pull(parser_factory: Callable[[], object]) -> Callable[[list[bytes]], int]:
    def run(chunks: list[bytes]) -> int:
        parser = parser_factory()
        depth = 0
        root = None
        n = 0
        for chunk in chunks:
            parser.feed(chunk)
            for event, elem in parser.read_events():
                if event == "start":
                    if depth == 0:
                        root = elem
                    depth += 1
                else:
                    depth -= 1
                    if depth == 1:
                        n += 1
                        root.clear()  # slixmpp keeps the root empty of finished stanzas
        return n

    return run


frame_with_etree = _pull(lambda: ET.XMLPullParser(events=("start", "end")))
frame_with_lxml = _pull(lambda: lxml_etree.XMLPullParser(events=("start", "end")))


def frame_with_pyexpat(chunks: list[bytes]) -> int:
    parser = expat.ParserCreate("UTF-8", "}")
    state = [0, 0]  # depth, stanzas

    def start(name, attrs):
        state[0] += 1

    def end(name):
        state[0] -= 1
        if state[0] == 1:
            state[1] += 1

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    for chunk in chunks:
        parser.Parse(chunk, False)
    return state[1]


CONTENDERS = {
    "StreamFramer": frame_with_streamframer,
    "xml.etree XMLPullParser": frame_with_etree,
    "lxml XMLPullParser": frame_with_lxml,
    "pyexpat depth handlers": frame_with_pyexpat,
}


@pytest.mark.parametrize("name", list(CONTENDERS))
def test_throughput(benchmark, corpus, chunks, results, name):
    run = CONTENDERS[name]
    benchmark.group = "framing 4 KiB chunks"
    benchmark.extra_info["bytes"] = len(corpus.data)
    benchmark.extra_info["stanzas"] = corpus.stanzas
    found = benchmark.pedantic(run, args=(chunks,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert found == corpus.stanzas
    results[name] = (benchmark.stats.stats.min, len(corpus.data), corpus.stanzas)
