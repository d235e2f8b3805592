"""Replay the acceptors' side of real Prosody/ejabberd captures into our OutgoingMachine.

Each a2c file is what a real accepting server sent back; we play the initiator and check that
we negotiate as the real initiator did: dialback after the features (empty ejabberd
mechanisms ignored), answers with or without the key echoed and with or without id, our
db:verify answered on the same stream, STARTTLS with the features in either order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from s2sfast.framing import StreamFramer
from s2sfast.protocol.events import (
    Authenticated,
    AuthFailed,
    SendBytes,
    StartTls,
    VerifyAnswered,
    VerifyRequest,
)
from s2sfast.protocol.outgoing import OutgoingMachine

#: the committed captures (a missing file fails the test that reads it)
CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"

TLS_OFFSET = {"21": 439, "22": 439, "23": 377, "24": 439}


def _file(prefix: str) -> bytes:
    (path,) = CAPTURES.glob(f"{prefix}-*.a2c.xml")
    return path.read_bytes()


def replay(data, *, local, remote, mode="false", tls=False, verify=None):
    machine = OutgoingMachine(
        local=local, remote=remote, use_starttls=mode, secret="s", tls_available=tls
    )
    actions = list(machine.start())
    if verify is not None:
        actions += machine.receive(verify)
    for ev in StreamFramer().feed(data):
        if machine.closed:
            break
        actions += machine.receive(ev)
    return machine, actions


def sent(actions) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendBytes))


def test_prosody_answers_with_key_echo_and_id():
    verify = VerifyRequest(
        receiving="a.test",
        originating="b.test",
        stream_id="c3260af9-f5b4-4e59-90bc-34dd68e6dd4d",
        key="5cccd4fb",
    )
    machine, actions = replay(_file("01"), local="a.test", remote="b.test", verify=verify)
    assert machine.stream_id == "2ddf209e-a1ac-4f94-a373-e16c0b073e0a"
    data = sent(actions)
    assert b"<db:result from='a.test' to='b.test'>" in data
    assert b"<db:verify from='a.test' to='b.test' id='c3260af9-" in data
    (ans,) = [a for a in actions if isinstance(a, VerifyAnswered)]
    assert ans.type == "valid" and ans.stream_id == verify.stream_id
    assert [a.remote for a in actions if isinstance(a, Authenticated)] == ["b.test"]
    assert not [a for a in actions if isinstance(a, AuthFailed)]


def test_ejabberd_empty_mechanisms_and_empty_answers_without_id():
    verify = VerifyRequest(
        receiving="b.test",
        originating="e.test",
        stream_id="50e4feb9-43b4-4b5f-9e8c-654d203378b5",
        key="47242c97",
    )
    machine, actions = replay(_file("11"), local="b.test", remote="e.test", verify=verify)
    assert machine.stream_id == "10393691592939471009"
    assert [a.remote for a in actions if isinstance(a, Authenticated)] == ["e.test"]
    (ans,) = [a for a in actions if isinstance(a, VerifyAnswered)]
    assert ans.type == "valid"


def test_prosody_answering_an_ejabberd_verify_connection():
    verify = VerifyRequest(
        receiving="e.test", originating="b.test", stream_id="10393691592939471009", key="292b4e1b"
    )
    machine, actions = replay(_file("12"), local="e.test", remote="b.test", verify=verify)
    (ans,) = [a for a in actions if isinstance(a, VerifyAnswered)]
    assert (ans.receiving, ans.originating, ans.type) == ("e.test", "b.test", "valid")


@pytest.mark.parametrize(
    "prefix, local, remote",
    [
        ("21", "a.test", "b.test"),
        ("22", "b.test", "a.test"),
        ("23", "b.test", "e.test"),
        ("24", "e.test", "b.test"),
    ],
)
def test_starttls_required_features_either_order(prefix, local, remote):
    plain = _file(prefix)[: TLS_OFFSET[prefix]]
    machine, actions = replay(plain, local=local, remote=remote, mode="required", tls=True)
    assert sent(actions).endswith(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    (st,) = [a for a in actions if isinstance(a, StartTls)]
    assert st.server_hostname == remote
    assert machine.state == "TLS_PENDING"


@pytest.mark.parametrize("prefix", ["21", "23"])
def test_tls_disabled_cannot_federate_with_peers_requiring_it(prefix):
    plain = _file(prefix)[: TLS_OFFSET[prefix]]
    _, actions = replay(plain, local="x.test", remote="y.test", mode="false")
    assert [a for a in actions if isinstance(a, AuthFailed)]
    assert b"starttls" not in sent(actions) and b"db:result" not in sent(actions)
