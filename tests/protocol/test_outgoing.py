"""OutgoingMachine (originating role + our db:verify requests), sans-IO."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from machine_driver import MachineDriver, of, out

from s2sfast.protocol.dialback import make_key
from s2sfast.protocol.events import (
    Authenticated,
    AuthFailed,
    Close,
    ConnectionLost,
    StartTls,
    TimerFired,
    TlsUp,
    VerifyAnswered,
    VerifyRequest,
)
from s2sfast.protocol.outgoing import OutgoingMachine, parse_features

SECRET = "a-secret"
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='b.test' to='a.test' id='peer-id' version='1.0'>"
)
F_DIALBACK = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
F_TLS_REQ = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
)
F_TLS_OPT = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    b"<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
)
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


@dataclass
class Verdict:
    trusted: bool
    name_matches: bool
    reason: str | None = None


class Server(MachineDriver):
    """Drives an OutgoingMachine a.test -> b.test with the server's bytes."""

    def __init__(self, mode="false", *, tls=False, check=None, local="a.test", remote="b.test"):
        self.machine = OutgoingMachine(
            local=local,
            remote=remote,
            use_starttls=mode,
            secret=SECRET,
            tls_available=tls,
            check_cert=check,
        )
        super().__init__()
        self.opening = self.machine.start()


def test_opening_header():
    s = Server()
    data = out(s.opening)
    assert data.startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server'")
    assert b"from='a.test'" in data and b"to='b.test'" in data and b"version='1.0'" in data
    assert b"xmlns:db='jabber:server:dialback'" in data


def test_plain_dialback_success():
    s = Server()
    s.send(HEADER)
    acts = s.send(F_DIALBACK)
    key = make_key(SECRET, "b.test", "a.test", "peer-id")
    assert out(acts) == f"<db:result from='a.test' to='b.test'>{key}</db:result>".encode()
    acts = s.send(b"<db:result from='b.test' to='a.test' type='valid'/>")
    assert of(acts, Authenticated)[0].direction == "out"
    assert s.machine.established


@pytest.mark.parametrize(
    "answer, condition",
    [
        (b"<db:result from='b.test' to='a.test' type='invalid'/>", "remote-server-not-found"),
        (
            b"<db:result from='b.test' to='a.test' type='error'><error type='cancel'>"
            b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>",
            "service-unavailable",
        ),
    ],
)
def test_dialback_rejected(answer, condition):
    s = Server()
    s.send(HEADER)
    s.send(F_DIALBACK)
    acts = s.send(answer)
    (failed,) = of(acts, AuthFailed)
    assert failed.condition == condition
    assert of(acts, Close)


def test_result_for_another_pair_is_ignored():
    s = Server()
    s.send(HEADER)
    s.send(F_DIALBACK)
    acts = s.send(b"<db:result from='c.test' to='a.test' type='valid'/>")
    assert not of(acts, Authenticated)


@pytest.mark.parametrize("features", [F_TLS_REQ, F_TLS_OPT])
@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
def test_starttls_used_when_offered(mode, features):
    s = Server(mode, tls=True, check=lambda chain, domain: Verdict(True, True))
    s.send(HEADER)
    acts = s.send(features)
    assert out(acts) == b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    acts = s.send(PROCEED)
    (st,) = of(acts, StartTls)
    assert not st.server_side and st.server_hostname == "b.test"
    acts = s.tls_up()
    assert out(acts) == out(s.opening)  # the stream restarts with a fresh header
    s.send(HEADER.replace(b"peer-id", b"id2"))
    acts = s.send(F_DIALBACK)
    assert out(acts).startswith(b"<db:result from='a.test' to='b.test'>")
    assert make_key(SECRET, "b.test", "a.test", "id2").encode() in out(acts)


@pytest.mark.parametrize("mode", ["required", "required_trusted"])
def test_required_fails_without_starttls_offer(mode):
    s = Server(mode, tls=True)
    s.send(HEADER)
    acts = s.send(F_DIALBACK)
    assert of(acts, AuthFailed) and of(acts, Close)[-1].condition == "policy-violation"
    assert b"db:result" not in out(acts)


def test_false_refuses_a_peer_that_requires_tls():
    s = Server("false", tls=False)
    s.send(HEADER)
    acts = s.send(F_TLS_REQ)
    assert of(acts, AuthFailed)
    assert b"starttls" not in out(acts) and b"db:result" not in out(acts)


def test_false_skips_optional_tls():
    s = Server("false")
    s.send(HEADER)
    assert b"<db:result" in out(s.send(F_TLS_OPT))


def test_required_trusted_rejects_bad_certificate():
    s = Server(
        "required_trusted", tls=True, check=lambda c, d: Verdict(True, False, "name mismatch")
    )
    s.send(HEADER)
    s.send(F_TLS_REQ)
    s.send(PROCEED)
    acts = s.tls_up()
    assert of(acts, Close)[-1].condition == "policy-violation"
    assert "name mismatch" in of(acts, AuthFailed)[0].text
    # the stream error goes out after a fresh header on the new (TLS) stream
    assert out(acts) == out(s.opening)


def test_verify_requests_queue_until_ready_and_answers_must_match():
    s = Server()
    req = VerifyRequest(receiving="a.test", originating="b.test", stream_id="in-1", key="kk")
    assert s.event(req) == []  # not ready yet: queued
    s.send(HEADER)
    data = out(s.send(F_DIALBACK))
    assert b"<db:verify from='a.test' to='b.test' id='in-1'>kk</db:verify>" in data
    # a forged answer for another id is not accepted
    assert not of(
        s.send(b"<db:verify from='b.test' to='a.test' id='zz' type='valid'/>"), VerifyAnswered
    )
    acts = s.send(b"<db:verify from='b.test' to='a.test' id='in-1' type='valid'/>")
    (ans,) = of(acts, VerifyAnswered)
    assert (ans.receiving, ans.originating, ans.stream_id, ans.type) == (
        "a.test",
        "b.test",
        "in-1",
        "valid",
    )
    # answered once only
    assert not of(
        s.send(b"<db:verify from='b.test' to='a.test' id='in-1' type='valid'/>"), VerifyAnswered
    )


def test_failure_answers_pending_verifications_with_error():
    s = Server()
    s.send(HEADER)
    s.send(F_DIALBACK)
    s.event(VerifyRequest(receiving="a.test", originating="b.test", stream_id="x", key="k"))
    acts = s.event(ConnectionLost(reason="reset"))
    assert of(acts, VerifyAnswered)[0].type == "error"
    assert of(acts, AuthFailed)


def test_timeout_while_negotiating():
    s = Server()
    s.send(HEADER)
    acts = s.event(TimerFired())
    assert of(acts, Close)[-1].condition == "connection-timeout"
    assert of(acts, AuthFailed)[0].condition == "remote-server-timeout"


def test_peer_stream_error_fails_the_pair():
    s = Server()
    s.send(HEADER)
    acts = s.send(
        b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    )
    assert "host-unknown" in of(acts, AuthFailed)[0].text


def test_peer_stream_error_text_reaches_the_bounce_reason():
    s = Server()
    s.send(HEADER)
    acts = s.send(
        b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Your server's certificate is not"
        b" trusted</text></stream:error>"
    )
    failed = of(acts, AuthFailed)[0]
    assert failed.text == (
        "b.test sent stream error not-authorized (Your server's certificate is not trusted)"
    )


def test_features_in_either_order():
    a = parse_features(F_TLS_REQ)
    b = parse_features(
        b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        b"</stream:features>"
    )
    for f in (a, b):
        assert f.starttls and f.starttls_required and f.dialback


def test_missing_transition_names_role_state_and_event():
    s = Server()
    acts = s.send(HEADER + PROCEED)  # <proceed/> while waiting for features
    close = of(acts, Close)[-1]
    assert close.condition == "unsupported-stanza-type"
    s = Server()
    acts = s.event(TlsUp(chain=()))
    close = of(acts, Close)[-1]
    assert "outgoing" in close.text and "WAIT_HEADER" in close.text and "TlsUp" in close.text
    assert of(acts, AuthFailed)
