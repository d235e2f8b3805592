"""atheris harness for the stream framer (ext/framer.pyx via s2sfast.framing).

Input layout: byte 0 = flags (bit 0: prepend a jabber:server stream header, bit 1: a 512-byte
max_stanza_size), byte 1 = chunking seed, the rest = stream bytes. Each input is checked for:

1. no exception other than FramingError, whatever the bytes;
2. chunk invariance: the same bytes fed whole and in random chunks give the same events, or
   the same error (condition and offset);
3. without a size limit, the differential oracle (tests/framer_oracle.py: strict lxml plus the
   restricted-XML rules) agrees with what the framer did (unless the framer stopped at one of
   its own limits: policy-violation).

Run: ``python3 fuzz/fuzz_framer.py [NEW_UNITS_DIR] fuzz/corpus/framer [libFuzzer flags]``
(see fuzz/README.md).
"""

from __future__ import annotations

import os
import random
import sys
import zlib

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

import lxml.etree  # noqa: F401,E402  (C code: nothing to instrument)

from s2sfast.framing import FramingError  # noqa: F401,E402  (the only exception allowed)

with atheris.instrument_imports(include=["framer_oracle"]):
    import framer_oracle  # noqa: E402

#: FUZZ_ORACLE=0 checks only 1 and 2 (crash-freedom, chunk invariance)
ORACLE = os.environ.get("FUZZ_ORACLE", "1") != "0"

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='a.test' to='b.test' version='1.0'>"
)
SIZE_LIMIT = 512


def _outcome_branches(n: int = 256):
    """A function with *n* distinct branches, instrumented: the framer is C code that
    atheris cannot see into (without a clang build), so each outcome class of a run (error
    condition and text, how many events, which stanza names) is made to light up its own
    Python branch, and libFuzzer keeps inputs that reach new outcome classes."""
    lines = ["def outcome(h):"]
    lines += [f"    {'if' if i == 0 else 'elif'} h == {i}:\n        return {i}" for i in range(n)]
    namespace: dict = {}
    exec("\n".join(lines), namespace)  # noqa: S102 (generated above, no input involved)
    return atheris.instrument_func(namespace["outcome"])


_outcome = _outcome_branches()


def _feature(run) -> int:
    err = run.error
    names = sorted({e[2] for e in run.events if e[0] == "stanza"})[:4]
    error = f"{err.condition}|{err.text}" if err else ""
    key = f"{error}|{min(len(run.events), 6)}|{names}"
    return zlib.crc32(key.encode()) % 256


def chunked(data: bytes, seed: int) -> list[bytes]:
    """*data* cut at pseudo-random places (1-byte pieces for seed 0)."""
    if seed == 0:
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 1, 2, 3, 5, 8, 13, 64, 1000))
        out.append(data[i : i + n])
        i += n
    return out


def check(data: bytes) -> None:
    """Run every check on one input; AssertionError (or any other exception) is a finding."""
    if len(data) < 2:
        return
    flags, seed, body = data[0], data[1], data[2:]
    if flags & 1:
        body = HEADER + body
    limit = SIZE_LIMIT if flags & 2 else None
    whole = framer_oracle.run_framer([body], max_stanza_size=limit)
    parts = framer_oracle.run_framer(chunked(body, seed), max_stanza_size=limit)
    _outcome(_feature(whole))
    if whole.error is None:
        assert parts.error is None, f"split feed failed where whole did not: {parts.error!r}"
        assert parts.events == whole.events, "split feed gave different events"
    else:
        assert parts.error is not None, f"split feed accepted what whole refused: {whole.error!r}"
        got = (parts.error.condition, parts.error.offset)
        want = (whole.error.condition, whole.error.offset)
        assert got == want, f"split error {got} != whole error {want}"
    limited = whole.error is not None and whole.error.condition == "policy-violation"
    if limit is None and ORACLE and not limited:
        # the oracle knows no limits: a policy-violation (max_depth, the header limit) is
        # the framer's own rule, checked by tests/test_framer_limits.py instead
        framer_oracle.check_run(body, framer_oracle.judge(body), whole)


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    check(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
