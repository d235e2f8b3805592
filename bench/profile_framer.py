"""Run StreamFramer alone over the benchmark corpus, for callgrind or perf (see bench/README.md).

Nothing but framing happens in the measured loop, so a profile of this process is a profile
of ext/framer.pyx plus the CPython calls it makes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import chunked, make_corpus  # noqa: E402

from s2sfast.framing import Stanza, StreamFramer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stanzas", type=int, default=10_000, help="corpus size (default 10000)")
    ap.add_argument("--passes", type=int, default=5, help="passes over the corpus (default 5)")
    ap.add_argument("--chunk", type=int, default=4096, help="read size in bytes (default 4096)")
    args = ap.parse_args(argv)
    corpus = make_corpus(args.stanzas)
    chunks = chunked(corpus.data, args.chunk)
    start = time.perf_counter()
    for _ in range(args.passes):
        framer = StreamFramer()
        n = sum(type(ev) is Stanza for chunk in chunks for ev in framer.feed(chunk))
        assert n == corpus.stanzas, (n, corpus.stanzas)
    secs = time.perf_counter() - start
    total = len(corpus.data) * args.passes
    print(f"{total / secs / 1e6:.1f} MB/s, {corpus.stanzas * args.passes / secs:,.0f} stanzas/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
