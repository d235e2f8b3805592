"""The capture recorder (record_captures.py) makes captures that replay like the committed ones.

Two scenarios are recorded from real Prosody into tmp_path: a.test <-> b.test with S2S TLS off
(s1plain) and with STARTTLS required (s3tls without ejabberd). Every recorded connection must
then hold up the way tests/data/captures does in the capture tests: the ``.chunks`` reads tile
both files; the framer gives the same events whole and split at the recorded reads; the
initiator's bytes negotiate in our IncomingMachine and the acceptor's bytes in our
OutgoingMachine as they did with the real peer (dialback authenticated, the stanzas delivered,
db:verify answered; with STARTTLS the plaintext part ends in TLS_PENDING).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from framer_oracle import run_framer
from record_captures import equivalent, load_chunks, record, steps, tls_offset
from servers import REQUIRE_ENV, required, server_missing

from s2sfast.config import S2SOptions
from s2sfast.framing import StreamFramer
from s2sfast.protocol.events import (
    Authenticated,
    AuthFailed,
    Deliver,
    SendBytes,
    StartTls,
    VerifyAnswered,
    VerifyKey,
    VerifyRequest,
    VerifyResult,
)
from s2sfast.protocol.incoming import IncomingMachine
from s2sfast.protocol.outgoing import OutgoingMachine

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _prosody_can_run() -> None:
    """Skip without Prosody (saying how to install it); fail under S2SFAST_REQUIRE_INTEROP=1."""
    why = server_missing("prosody")
    if why is None:
        return
    message = f"interop: prosody cannot run here: {why}"
    if required():
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes that a failure", pytrace=False)
    pytest.skip(message)


DB = "jabber:server:dialback"
SERVER = "jabber:server"
DIRS = ("c2a", "a2c")
#: linger long enough for one Prosody keepalive (read_timeout 6 s) on the idle streams
LINGER = 7.0
#: the committed captures the capture tests replay
BASELINE = Path(__file__).resolve().parent.parent / "data" / "captures"


def _check_like_baseline(out: Path, scenario: str, stems: list[str]) -> None:
    """Each committed capture of *scenario* between the recorded pairs has a recorded twin
    with the same negotiation steps (stream ids, features, dialback/TLS elements) both ways."""
    pairs = {s.split("-", 2)[2] for s in stems}
    committed = sorted(
        p.name[: -len(".c2a.xml")]
        for p in BASELINE.glob(f"*-{scenario}-*.c2a.xml")
        if p.name[: -len(".c2a.xml")].split("-", 2)[2] in pairs
    )
    assert committed, f"no committed {scenario} capture in {BASELINE}"
    for stem in committed:
        committed_steps = [steps((BASELINE / f"{stem}.{d}.xml").read_bytes())[0] for d in DIRS]
        assert equivalent(BASELINE, stem, out) is not None, f"{stem}: {committed_steps}"


def _stem_parts(stem: str) -> tuple[str, str]:
    """``01-s1plain-a.test-to-b.test`` -> (``a.test``, ``b.test``)."""
    initiator, acceptor = stem.split("-", 2)[2].split("-to-")
    return initiator, acceptor


def _plaintext(data: bytes) -> bytes:
    off = tls_offset(data)
    return data if off is None else data[:off]


def _check_files(out: Path, stem: str) -> dict[str, bytes]:
    """The reads in ``.chunks`` tile both files exactly, in order; the two directions."""
    data = {d: (out / f"{stem}.{d}.xml").read_bytes() for d in ("c2a", "a2c")}
    reads = load_chunks(out / f"{stem}.chunks")
    for d in ("c2a", "a2c"):
        mine = [(o, n) for dd, o, n in reads if dd == d]
        assert [o for o, _ in mine] == [sum(n for _, n in mine[:i]) for i in range(len(mine))]
        assert sum(n for _, n in mine) == len(data[d]) > 0
        assert all(n > 0 for _, n in mine)
    return data


def _check_framer(out: Path, stem: str, data: dict[str, bytes]) -> dict[str, list]:
    """Framed whole and split at the recorded reads: no error, the same events; the stanzas."""
    stanzas = {}
    reads = load_chunks(out / f"{stem}.chunks")
    for d, raw in data.items():
        plain = _plaintext(raw)
        chunks = [raw[o : o + n][: max(0, len(plain) - o)] for dd, o, n in reads if dd == d]
        chunks = [c for c in chunks if c]
        assert b"".join(chunks) == plain
        whole = run_framer([plain])
        split = run_framer(chunks)
        assert whole.error is None, f"{stem}.{d}: {whole.error}"
        assert split.error is None, f"{stem}.{d}: {split.error}"
        assert split.events == whole.events
        assert whole.events[0][0] == "open"
        stanzas[d] = whole.stanzas
    return stanzas


def _incoming(data: bytes, local: str, *, mode: str, tls: bool) -> tuple[IncomingMachine, list]:
    """Our acceptor fed the real initiator's bytes; dialback keys confirmed as our router would."""
    machine = IncomingMachine(
        hosts={local},
        options_for=lambda host: S2SOptions(use_starttls=mode, shared="s"),
        policy_allows=lambda lo, re: True,
        tls_available=tls,
        stream_id="our-id",
    )
    actions = list(machine.start())
    for ev in StreamFramer().feed(data):
        if machine.closed:
            break
        acts = machine.receive(ev)
        actions += acts
        for vk in (a for a in acts if isinstance(a, VerifyKey)):
            actions += machine.receive(
                VerifyResult(
                    receiving=vk.receiving,
                    originating=vk.originating,
                    stream_id=vk.stream_id,
                    type="valid",
                )
            )
    return machine, actions


def _outgoing(
    data: bytes, local: str, remote: str, *, mode: str, tls: bool, verify: list[VerifyRequest]
) -> tuple[OutgoingMachine, list]:
    """Our initiator fed the real acceptor's bytes, asked for the db:verify the real one sent."""
    machine = OutgoingMachine(
        local=local, remote=remote, use_starttls=mode, secret="s", tls_available=tls
    )
    actions = list(machine.start())
    for request in verify:
        actions += machine.receive(request)
    for ev in StreamFramer().feed(data):
        if machine.closed:
            break
        actions += machine.receive(ev)
    return machine, actions


def _of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def _sent(actions: list) -> bytes:
    return b"".join(a.data for a in _of(actions, SendBytes))


def _check_plain_machines(stem: str, data: dict[str, bytes], stanzas: dict[str, list]) -> None:
    initiator, acceptor = _stem_parts(stem)
    c2a, a2c = stanzas["c2a"], stanzas["a2c"]
    results = [s for s in c2a if (s.ns, s.name) == (DB, "result")]
    verifies = [s for s in c2a if (s.ns, s.name) == (DB, "verify")]
    traffic = [s for s in c2a if s.ns == SERVER]

    # the initiator's side into our acceptor
    machine, actions = _incoming(data["c2a"], acceptor, mode="false", tls=False)
    keys = _of(actions, VerifyKey)
    assert [(k.receiving, k.originating) for k in keys] == [(acceptor, initiator)] * len(results)
    assert [a.remote for a in _of(actions, Authenticated)] == [initiator] * bool(results)
    assert [a.stanza.raw for a in _of(actions, Deliver)] == [s.raw for s in traffic]
    for v in verifies:  # answered on the stream it came on
        assert f"id='{v.id}' type=".encode() in _sent(actions)

    # the acceptor's side into our initiator
    requests = [
        VerifyRequest(receiving=initiator, originating=acceptor, stream_id=v.id, key="k")
        for v in verifies
    ]
    valid = [s for s in a2c if (s.ns, s.name, s.type) == (DB, "result", "valid")]
    machine, actions = _outgoing(
        data["a2c"], initiator, acceptor, mode="false", tls=False, verify=requests
    )
    assert [a.remote for a in _of(actions, Authenticated)] == [acceptor] * bool(valid)
    assert not _of(actions, AuthFailed)
    answered = _of(actions, VerifyAnswered)
    assert [(a.stream_id, a.type) for a in answered] == [(v.id, "valid") for v in verifies]
    if valid:
        assert f"<db:result from='{initiator}' to='{acceptor}'>".encode() in _sent(actions)


def _check_tls_machines(stem: str, data: dict[str, bytes]) -> None:
    initiator, acceptor = _stem_parts(stem)
    machine, actions = _incoming(_plaintext(data["c2a"]), acceptor, mode="required", tls=True)
    sent = _sent(actions)
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in sent
    assert sent.endswith(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert [a.server_side for a in _of(actions, StartTls)] == [True]
    assert machine.state == "TLS_PENDING"

    machine, actions = _outgoing(
        _plaintext(data["a2c"]), initiator, acceptor, mode="required", tls=True, verify=[]
    )
    assert _sent(actions).endswith(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert [a.server_hostname for a in _of(actions, StartTls)] == [acceptor]
    assert machine.state == "TLS_PENDING"


async def test_recorded_prosody_plain_dialback_replays(tmp_path: Path) -> None:
    out = tmp_path / "captures"
    captures = await record("s1plain", out, tmp_path / "work", linger=LINGER)
    stems = [c.stem for c in captures]
    # a.test's stream to b.test, and b.test's own stream back (dialback crosses over both)
    assert sorted(stems) == ["01-s1plain-a.test-to-b.test", "02-s1plain-b.test-to-a.test"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{ext}" for s in stems for ext in ("c2a.xml", "a2c.xml", "chunks")
    )
    delivered = set()
    for stem in stems:
        data = _check_files(out, stem)
        assert all(tls_offset(raw) is None for raw in data.values())
        stanzas = _check_framer(out, stem, data)
        _check_plain_machines(stem, data, stanzas)
        delivered |= {s.id for s in stanzas["c2a"] if s.ns == SERVER}
    # the traffic the recorder drove crossed the proxies: alice's five stanzas, bob's reply
    assert {"m1", "m2", "m3", "s1", "p1", "r1"} <= delivered
    first = (out / "01-s1plain-a.test-to-b.test.c2a.xml").read_bytes()
    assert "grüße ☃ 日本語 😀 café".encode() in first
    # Prosody's whitespace keepalive on an idle stream (read_timeout set by the recorder)
    assert any(b"> <" in (out / f"{s}.c2a.xml").read_bytes() for s in stems)
    _check_like_baseline(out, "s1plain", stems)


async def test_recorded_prosody_starttls_replays(tmp_path: Path) -> None:
    out = tmp_path / "captures"
    captures = await record(
        "s3tls", out, tmp_path / "work", linger=1.0, domains={"a.test", "b.test"}
    )
    stems = [c.stem for c in captures]
    assert sorted(stems) == ["21-s3tls-a.test-to-b.test", "22-s3tls-b.test-to-a.test"]
    for stem in stems:
        data = _check_files(out, stem)
        for raw in data.values():
            off = tls_offset(raw)
            assert off is not None and len(raw) > off + 100  # a TLS handshake followed
            assert b"<message" not in raw and b"<db:" not in raw  # nothing in clear after it
        stanzas = _check_framer(out, stem, data)
        assert [s.name for s in stanzas["c2a"]] == ["starttls"]
        assert [s.name for s in stanzas["a2c"]] == ["features", "proceed"]
        _check_tls_machines(stem, data)
    _check_like_baseline(out, "s3tls", stems)
