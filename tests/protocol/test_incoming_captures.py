"""Replay the initiators' side of real Prosody/ejabberd captures into our IncomingMachine.

Each capture's c2a file is what a real initiating server sent; we play the acceptor and check
that we negotiate as the real acceptor did (same features path, same dialback outcome, the
same stanzas delivered). The authoritative answer the real peer got is injected as our
router would deliver it (VerifyResult valid).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from s2sfast.config import S2SOptions
from s2sfast.framing import StreamFramer
from s2sfast.protocol.events import (
    Authenticated,
    Close,
    Deliver,
    SendBytes,
    StartTls,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.incoming import IncomingMachine

#: the committed captures (a missing file fails the test that reads it)
CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"

#: where TLS starts in the scenario-3 initiator files (README.md)
TLS_OFFSET = {"21": 251, "22": 251, "23": 251, "24": 245}


def _file(prefix: str) -> bytes:
    (path,) = CAPTURES.glob(f"{prefix}-*.c2a.xml")
    return path.read_bytes()


def replay(data: bytes, *, local: str, mode="false", tls=False):
    machine = IncomingMachine(
        hosts={local},
        options_for=lambda host: S2SOptions(use_starttls=mode, shared="s"),
        policy_allows=lambda lo, re: True,
        tls_available=tls,
        stream_id="our-id",
    )
    actions: list = list(machine.start())
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


def sent(actions) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendBytes))


def test_prosody_plain_stream_with_empty_id_and_piggybacked_verify():
    machine, actions = replay(_file("01"), local="b.test")
    data = sent(actions)
    (vk,) = [a for a in actions if isinstance(a, VerifyKey)]
    assert (vk.receiving, vk.originating) == ("b.test", "a.test")
    assert vk.key == "a88c9dd10eb1df6702e339ed9b8306ffac1b324b2c0a6e73d28e69e5332f3913"
    # Prosody's db:verify for b's key: answered (invalid: it was made with b's real secret)
    assert (
        b"<db:verify from='b.test' to='a.test' id='c3260af9-f5b4-4e59-90bc-34dd68e6dd4d'"
        b" type='invalid'/>" in data
    )
    assert [a.remote for a in actions if isinstance(a, Authenticated)] == ["a.test"]
    delivered = [a.stanza for a in actions if isinstance(a, Deliver)]
    assert [s.id for s in delivered] == ["m1", "m2", "m3", "s1", "p1"]
    assert "grüße ☃ 日本語 😀 café".encode() in delivered[1].raw
    # Prosody ended with system-shutdown: we close without an error of our own
    closes = [a for a in actions if isinstance(a, Close)]
    assert closes and closes[-1].condition is None


def test_prosody_to_ejabberd_plain():
    machine, actions = replay(_file("11"), local="e.test")
    assert [a.remote for a in actions if isinstance(a, Authenticated)] == ["b.test"]
    delivered = [a.stanza for a in actions if isinstance(a, Deliver)]
    # 3 messages, subscribe, ping, then re-sent subscribe, unavailable, iq result, r1
    assert len(delivered) == 9
    assert delivered[-1].id == "r1"
    assert b"<db:verify from='e.test' to='b.test' id='50e4feb9" in sent(actions)


def test_ejabberd_verify_only_stream_without_id():
    machine, actions = replay(_file("12"), local="b.test")
    data = sent(actions)
    assert b"id='our-id'" in data
    assert b"<db:verify from='b.test' to='e.test' id='10393691592939471009' type=" in data
    assert not [a for a in actions if isinstance(a, Authenticated)]
    closes = [a for a in actions if isinstance(a, Close)]
    assert closes and closes[-1].condition is None  # ejabberd's </stream:stream> answered


@pytest.mark.parametrize(
    "prefix, local", [("21", "b.test"), ("22", "a.test"), ("23", "e.test"), ("24", "b.test")]
)
def test_starttls_required_plaintext_part(prefix, local):
    plain = _file(prefix)[: TLS_OFFSET[prefix]]
    machine, actions = replay(plain, local=local, mode="required", tls=True)
    data = sent(actions)
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in data
    assert data.endswith(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert [a for a in actions if isinstance(a, StartTls)][0].server_side
    assert machine.state == "TLS_PENDING"
