"""IncomingMachine (receiving + authoritative roles), sans-IO: peer bytes -> framer -> actions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from machine_driver import MachineDriver, of, out

from s2sfast.config import S2SOptions
from s2sfast.protocol.dialback import make_key
from s2sfast.protocol.errors import LocalStreamError
from s2sfast.protocol.events import (
    Authenticated,
    Close,
    Deliver,
    Drop,
    SetTimer,
    StartTls,
    TimerFired,
    TlsUp,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.incoming import IncomingMachine

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    b"from='a.test' to='b.test' version='1.0'>"
)
SECRET = "b-secret"


@dataclass
class Verdict:
    trusted: bool
    name_matches: bool
    reason: str | None = None


class Peer(MachineDriver):
    """Drives an IncomingMachine with the peer's bytes, as stream.py does."""

    def __init__(self, mode="false", *, allow=None, tls=False, check=None, hosts=("b.test",)):
        self.machine = IncomingMachine(
            hosts=set(hosts),
            options_for=lambda host: S2SOptions(use_starttls=mode, shared=SECRET),
            policy_allows=allow or (lambda local, remote: True),
            tls_available=tls,
            check_cert=check,
            stream_id="sid1",
        )
        super().__init__()
        self.machine.start()


def close_condition(actions):
    closes = of(actions, Close)
    assert closes, f"no Close in {actions}"
    return closes[-1].condition


def db_result(frm="a.test", to="b.test", key="k" * 64):
    return f"<db:result from='{frm}' to='{to}'>{key}</db:result>".encode()


def test_header_features_plain():
    p = Peer()
    acts = p.send(HEADER)
    data = out(acts)
    assert b"id='sid1'" in data and b"from='b.test'" in data and b"to='a.test'" in data
    assert b"<dialback xmlns='urn:xmpp:features:dialback'>" in data
    assert b"starttls" not in data
    assert p.machine.state == "OPEN"


@pytest.mark.parametrize(
    "header, condition",
    [
        (HEADER.replace(b"xmlns='jabber:server'", b"xmlns='jabber:client'"), "invalid-namespace"),
        (HEADER.replace(b"version='1.0'>", b"version='2.0'>"), "unsupported-version"),
        (HEADER.replace(b" to='b.test'", b""), "improper-addressing"),
        (HEADER.replace(b"to='b.test'", b"to='x.test'"), "host-unknown"),
        (HEADER.replace(b"from='a.test'", b"from='u@a.test'"), "invalid-from"),
    ],
)
def test_header_errors(header, condition):
    p = Peer()
    acts = p.send(header)
    assert close_condition(acts) == condition
    # a stream error is always preceded by our own header
    assert out(acts).startswith(b"<?xml version='1.0'?><stream:stream")
    assert p.machine.state == "ERROR"
    with pytest.raises(LocalStreamError):
        p.event(TimerFired())


def test_required_offers_starttls_and_refuses_dialback_and_stanzas_before_tls():
    p = Peer("required", tls=True)
    data = out(p.send(HEADER))
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in data
    assert b"urn:xmpp:features:dialback" not in data
    acts = p.send(db_result())
    assert close_condition(acts) == "policy-violation"
    assert not of(acts, VerifyKey)

    p = Peer("required", tls=True)
    p.send(HEADER)
    acts = p.send(b"<message from='u@a.test' to='v@b.test'><body>x</body></message>")
    assert close_condition(acts) == "policy-violation"
    assert not of(acts, Deliver)


def test_optional_offers_starttls_without_required():
    data = out(Peer("optional", tls=True).send(HEADER))
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in data
    assert b"dialback" in data


def test_false_never_offers_and_refuses_starttls():
    p = Peer("false", tls=True)
    assert b"starttls" not in out(p.send(HEADER))
    acts = p.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in out(acts)
    assert of(acts, Close) and not of(acts, StartTls)


def test_starttls_then_restart_offers_dialback():
    p = Peer("required", tls=True)
    p.send(HEADER)
    acts = p.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert out(acts) == b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert of(acts, StartTls)[0].server_side
    p.tls_up()
    data = out(p.send(HEADER))
    assert b"starttls" not in data and b"dialback" in data
    acts = p.send(db_result())
    assert of(acts, VerifyKey)


def test_receiving_role_valid_then_only_authorised_pairs_deliver():
    p = Peer()
    p.send(HEADER)
    acts = p.send(db_result(key="abc"))
    (vk,) = of(acts, VerifyKey)
    assert (vk.receiving, vk.originating, vk.stream_id, vk.key) == (
        "b.test",
        "a.test",
        "sid1",
        "abc",
    )
    acts = p.event(
        VerifyResult(receiving="b.test", originating="a.test", stream_id="sid1", type="valid")
    )
    assert b"<db:result from='b.test' to='a.test' type='valid'/>" == out(acts)
    assert of(acts, Authenticated)[0].remote == "a.test"
    good = p.send(b"<message from='u@a.test/r' to='v@b.test'><body>hi</body></message>")
    assert of(good, Deliver)[0].stanza.raw.endswith(b"<body>hi</body></message>")
    spoofed = p.send(b"<message from='u@c.test' to='v@b.test'><body>x</body></message>")
    assert not of(spoofed, Deliver) and of(spoofed, Drop)


def test_verify_result_must_match_pending():
    p = Peer()
    p.send(HEADER)
    p.send(db_result())
    wrong_id = p.event(
        VerifyResult(receiving="b.test", originating="a.test", stream_id="other", type="valid")
    )
    wrong_pair = p.event(
        VerifyResult(receiving="b.test", originating="c.test", stream_id="sid1", type="valid")
    )
    assert not of(wrong_id + wrong_pair, Authenticated)
    assert of(wrong_id, Drop) and of(wrong_pair, Drop)


def test_invalid_key_answers_invalid_and_closes():
    p = Peer()
    p.send(HEADER)
    p.send(db_result())
    acts = p.event(
        VerifyResult(receiving="b.test", originating="a.test", stream_id="sid1", type="invalid")
    )
    assert b"type='invalid'" in out(acts)
    assert close_condition(acts) == "not-authorized"


def test_verify_error_answers_error():
    p = Peer()
    p.send(HEADER)
    p.send(db_result())
    acts = p.event(
        VerifyResult(receiving="b.test", originating="a.test", stream_id="sid1", type="error")
    )
    assert b"type='error'" in out(acts) and b"remote-server-not-found" in out(acts)
    assert not of(acts, Authenticated)


def test_policy_denied_incoming_gets_error_result_and_stream_error():
    p = Peer(allow=lambda local, remote: remote != "a.test")
    p.send(HEADER)
    acts = p.send(db_result())
    assert b"<db:result from='b.test' to='a.test' type='error'>" in out(acts)
    assert close_condition(acts) == "policy-violation"
    assert not of(acts, VerifyKey)


def test_unknown_receiving_domain_in_db_result():
    p = Peer()
    p.send(HEADER)
    assert close_condition(p.send(db_result(to="x.test"))) == "host-unknown"


def test_authoritative_role_correct_and_wrong_key():
    p = Peer()
    p.send(HEADER)
    key = make_key(SECRET, "a.test", "b.test", "their-id")
    ok = p.send(f"<db:verify from='a.test' to='b.test' id='their-id'>{key}</db:verify>".encode())
    assert out(ok) == b"<db:verify from='b.test' to='a.test' id='their-id' type='valid'/>"
    bad = p.send(
        b"<db:verify from='a.test' to='b.test' id='their-id'>" + b"0" * 64 + b"</db:verify>"
    )
    assert b"type='invalid'" in out(bad)
    other = p.send(f"<db:verify from='a.test' to='b.test' id='x'>{key}</db:verify>".encode())
    assert b"type='invalid'" in out(other)
    unknown = p.send(f"<db:verify from='a.test' to='q.test' id='x'>{key}</db:verify>".encode())
    assert close_condition(unknown) == "host-unknown"


def test_piggybacked_domains_each_authorised_separately():
    p = Peer(hosts=("b.test", "b2.test"))
    p.send(HEADER)
    p.send(db_result("a.test", "b.test"))
    p.send(db_result("c.test", "b2.test"))
    for pair in (("b.test", "a.test"), ("b2.test", "c.test")):
        p.event(
            VerifyResult(receiving=pair[0], originating=pair[1], stream_id="sid1", type="valid")
        )
    assert set(p.machine.authorised) == {("b.test", "a.test"), ("b2.test", "c.test")}
    assert of(p.send(b"<iq from='c.test' to='b2.test' type='get' id='1'/>"), Deliver)
    assert of(p.send(b"<iq from='a.test' to='b.test' type='get' id='2'/>"), Deliver)
    # pairs are not mixed: c.test was not authorised towards b.test
    assert of(p.send(b"<iq from='c.test' to='b.test' type='get' id='3'/>"), Drop)


def test_timeout_closes_with_connection_timeout():
    p = Peer()
    p.send(HEADER)
    assert close_condition(p.event(TimerFired())) == "connection-timeout"


def test_required_trusted_rejects_untrusted_certificate_with_reason():
    p = Peer(
        "required_trusted",
        tls=True,
        check=lambda chain, domain: Verdict(False, True, "self-signed certificate"),
    )
    p.send(HEADER)
    p.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    p.tls_up()
    acts = p.send(HEADER)
    assert close_condition(acts) == "policy-violation"
    assert "self-signed certificate" in of(acts, Close)[-1].text
    assert out(acts).startswith(b"<?xml version='1.0'?><stream:stream")  # header first


def test_required_trusted_accepts_trusted_certificate():
    seen = []

    def check(chain, domain):
        seen.append((chain, domain))
        return Verdict(True, True)

    p = Peer("required_trusted", tls=True, check=check)
    p.send(HEADER)
    p.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    p.tls_up(chain=(b"leaf",))
    p.send(HEADER)
    # the certificate proves a.test: valid at once, no verify (XEP-0344, dialback_cert_auth)
    assert of(p.send(db_result()), Authenticated)[0].method == "dialback-cert"
    assert seen[0] == ((b"leaf",), "a.test")


def test_peer_close_is_answered():
    p = Peer()
    p.send(HEADER)
    acts = p.send(b"</stream:stream>")
    assert of(acts, Close) and of(acts, Close)[0].condition is None


def test_missing_transition_names_role_state_and_event():
    p = Peer("required", tls=True)
    p.send(HEADER)
    p.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert p.machine.state == "TLS_PENDING"
    acts = p.event(
        VerifyResult(receiving="b.test", originating="a.test", stream_id="x", type="valid")
    )
    assert of(acts, Drop)  # a late verify answer is legal here
    acts = p.event(TimerFired())
    assert close_condition(acts) == "connection-timeout"

    p = Peer()
    acts = p.event(TlsUp(chain=()))  # TLS cannot come up before the header
    close = of(acts, Close)[-1]
    assert close.condition == "undefined-condition"
    assert "incoming" in close.text and "WAIT_HEADER" in close.text and "TlsUp" in close.text


def test_stream_id_changes_when_tls_restarts_the_stream():
    p = Peer("required", tls=True)
    first = out(p.send(HEADER))
    p.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    p.tls_up()
    second = out(p.send(HEADER))
    assert b"id='sid1'" in first and b"id='sid1'" not in second
    assert f"id='{p.machine.stream_id}'".encode() in second
    (vk,) = of(p.send(db_result()), VerifyKey)
    assert vk.stream_id == p.machine.stream_id


def test_no_countdown_on_an_authenticated_stream():
    p = Peer(hosts=("b.test", "b2.test"))
    p.send(HEADER)
    p.send(db_result())
    p.event(VerifyResult(receiving="b.test", originating="a.test", stream_id="sid1", type="valid"))
    key = make_key(SECRET, "a.test", "b.test", "their-id")
    acts = p.send(f"<db:verify from='a.test' to='b.test' id='their-id'>{key}</db:verify>".encode())
    acts += p.send(db_result("c.test", "b2.test"))
    timers = [a.seconds for a in acts if isinstance(a, SetTimer)]
    assert timers and all(t is None for t in timers)


def test_stanza_before_any_authentication_is_not_authorized():
    p = Peer()
    p.send(HEADER)
    acts = p.send(b"<message from='u@a.test' to='v@b.test'><body>x</body></message>")
    assert close_condition(acts) == "not-authorized" and not of(acts, Deliver)


def test_db_result_flood_on_one_stream_is_bounded():
    from s2sfast.limits import MAX_PENDING_RESULTS_PER_STREAM

    p = Peer()
    p.send(HEADER)
    for i in range(MAX_PENDING_RESULTS_PER_STREAM):
        assert of(p.send(db_result(f"d{i}.test")), VerifyKey)
    acts = p.send(db_result("one-too-many.test"))
    assert close_condition(acts) == "policy-violation" and not of(acts, VerifyKey)


def _authenticated_peer() -> Peer:
    p = Peer()
    p.send(HEADER)
    p.send(db_result(key="abc"))
    p.event(VerifyResult(receiving="b.test", originating="a.test", stream_id="sid1", type="valid"))
    return p


def test_stanzas_after_our_close_are_delivered_without_sm():
    """Shutdown: we sent </stream:stream>; what the peer wrote before reading it still arrives.
    Without XEP-0198 nobody would resend it: it is delivered (authorised pairs only)."""
    p = _authenticated_peer()
    assert of(p.machine.close("shutdown"), Close)
    late = p.send(b"<message from='u@a.test/r' to='v@b.test'><body>late</body></message>")
    assert of(late, Deliver)[0].stanza.raw.endswith(b"<body>late</body></message>")
    spoofed = p.send(b"<message from='u@c.test' to='v@b.test'><body>x</body></message>")
    assert not of(spoofed, Deliver)
    assert of(p.send(b"</stream:stream>"), Close)


def test_stanzas_after_our_close_stay_unacked_with_sm():
    """With XEP-0198 the peer resends (or bounces) what we never acknowledged: delivering it
    after our final <a/> would duplicate it."""
    from s2sfast.protocol.sm import SmInbound

    p = _authenticated_peer()
    p.machine.sm_in = SmInbound()
    p.machine.close("shutdown")
    late = p.send(b"<message from='u@a.test/r' to='v@b.test'><body>late</body></message>")
    assert not of(late, Deliver)
