"""atheris harness for the negotiation state machines (s2sfast.protocol.incoming and
.outgoing).

Fuzzed bytes go through a real StreamFramer and its events into an IncomingMachine or an
OutgoingMachine, interleaved with the non-wire events the asyncio layer produces (TlsUp after a
StartTls, TimerFired, VerifyResult / VerifyRequest, ConnectionLost). Any exception other than
the documented StreamError family (s2sfast.protocol.errors) is a bug, and so is any of these:

- an action that is not one of s2sfast.protocol.events' action types;
- Deliver of a stanza whose (to, from) domain pair is not authorised on the stream, or before
  TLS under use_starttls = required / required_trusted;
- a Close with a condition that is not an RFC 6120 stream-error condition, or that leaves the
  machine able to take more input.

Input layout: byte 0 = options (bits 0-1 use_starttls, bit 2 outgoing role, bit 3 TLS
available, bit 4 certificate trusted, bit 5 name matches), byte 1 = seed for chunking and event
injection, the rest = the peer's bytes. Run: ``python3 fuzz/fuzz_incoming.py [NEW_DIR]
fuzz/corpus/incoming [libFuzzer flags]`` (see fuzz/README.md).
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import lxml.etree  # noqa: F401,E402  (dependencies first: only the machines are instrumented)

from s2sfast.config import S2SOptions  # noqa: E402
from s2sfast.framing import FramingError, StreamFramer  # noqa: E402
from s2sfast.protocol.errors import STREAM_CONDITIONS, StreamError  # noqa: E402

with atheris.instrument_imports(
    include=[
        "s2sfast.protocol.incoming",
        "s2sfast.protocol.outgoing",
        "s2sfast.protocol.negotiation",
        "s2sfast.protocol.dialback",
        "s2sfast.protocol.features",
        "s2sfast.protocol.sasl_flow",
        "s2sfast.protocol.sm_flow",
        "s2sfast.protocol.bidi_flow",
    ]
):
    from s2sfast.protocol import dialback, events, incoming, negotiation, outgoing  # noqa: E402

MODES = ("false", "optional", "required", "required_trusted")
ACTIONS = (
    events.SendBytes,
    events.StartTls,
    events.SetTimer,
    events.VerifyKey,
    events.VerifyAnswered,
    events.Authenticated,
    events.AuthFailed,
    events.Deliver,
    events.Drop,
    events.Close,
)
#: our domains: the victim names of the tests plus the receiving domains in the captures
HOSTS = frozenset({"v.test", "v2.test", "a.test", "b.test", "e.test"})


@dataclass(frozen=True)
class Verdict:
    """What tls.verify_peer would conclude (the harness decides, from the options byte)."""

    trusted: bool
    name_matches: bool
    reason: str | None


def make_machine(opts: int):
    mode = MODES[opts & 3]
    tls_available = bool(opts & 8)
    verdict = Verdict(bool(opts & 16), bool(opts & 32), None if opts & 48 == 48 else "fuzzed")
    options = S2SOptions(use_starttls=mode, shared="fuzz-secret")
    if opts & 4:
        return outgoing.OutgoingMachine(
            local="v.test",
            remote="h.test",
            use_starttls=mode,
            secret="fuzz-secret",
            tls_available=tls_available,
            check_cert=lambda chain, domain: verdict,
            state_timeout=5.0,
        )
    return incoming.IncomingMachine(
        hosts=HOSTS,
        options_for=lambda domain: options,
        policy_allows=lambda local, remote: not remote.startswith("deny"),
        tls_available=tls_available,
        check_cert=lambda chain, domain: verdict,
        state_timeout=5.0,
    )


def side_event(machine, rng: random.Random):
    """A non-wire event the asyncio layer could deliver now."""
    kind = rng.randrange(5)
    if kind == 0:
        return events.TimerFired()
    if kind == 1:
        return events.ConnectionLost(reason="fuzz", retry=rng.random() < 0.5)
    if kind == 2:
        return events.TlsUp(chain=(), version="TLSv1.3")
    pending = sorted(getattr(machine, "pending_results", ()))
    receiving, originating = pending[0] if pending else ("v.test", "h.test")
    if kind == 3 and isinstance(machine, incoming.IncomingMachine):
        return events.VerifyResult(
            receiving=receiving,
            originating=originating,
            stream_id=machine.stream_id if rng.random() < 0.8 else "other",
            type=rng.choice(("valid", "invalid", "error")),
        )
    return events.VerifyRequest(
        receiving="v.test",
        originating="h.test",
        stream_id="sid",
        key=dialback.make_key("x", "v.test", "h.test", "sid"),
    )


def check_actions(machine, actions: list) -> None:
    for action in actions:
        assert isinstance(action, ACTIONS), f"unknown action {action!r}"
        if isinstance(action, events.Deliver):
            assert isinstance(machine, incoming.IncomingMachine), "outgoing machine delivered"
            st = action.stanza
            pair = (negotiation.jid_domain(st.to), negotiation.jid_domain(st.from_))
            assert pair in machine.authorised, f"delivered unauthorised {pair}"
            if machine.mode in ("required", "required_trusted"):
                assert machine.tls_active, "delivered before TLS under " + machine.mode
        elif isinstance(action, events.Close) and action.condition is not None:
            assert action.condition in STREAM_CONDITIONS, action.condition
            assert machine.closed, f"Close({action.condition}) but machine is {machine.state}"


def feed(machine, event) -> list:
    if machine.state in machine.FINAL:
        return []
    try:
        actions = machine.receive(event)
    except StreamError:
        return []
    check_actions(machine, actions)
    return actions


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    opts, seed, body = data[0], data[1], data[2:]
    rng = random.Random(seed)
    machine = make_machine(opts)
    check_actions(machine, machine.start())
    framer = StreamFramer(max_stanza_size=4096)
    i = 0
    while i < len(body) and machine.state not in machine.FINAL:
        n = rng.choice((1, 7, 64, 512, 4096))
        chunk, i = body[i : i + n], i + n
        try:
            evs = framer.feed(chunk)
        except FramingError as exc:
            check_actions(machine, machine.fail(exc))
            return
        for ev in evs:
            if rng.random() < 0.05:
                feed(machine, side_event(machine, rng))
            actions = feed(machine, ev)
            if any(isinstance(a, events.StartTls) for a in actions):
                # what follows would be TLS; the bytes after it play the decrypted stream
                feed(machine, events.TlsUp(chain=(b"not a certificate",), version="TLSv1.3"))
                framer = StreamFramer(max_stanza_size=4096)
                break
    if rng.random() < 0.5:
        feed(machine, side_event(machine, rng))


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    check(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
