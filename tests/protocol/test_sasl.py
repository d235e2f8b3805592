"""SASL EXTERNAL (XEP-0178) and dialback without the verify round trip (XEP-0344), sans-IO:
the elements in s2sfast.protocol.sasl and both machines, driven through a real framer that
restarts on TLS and on RestartStream as stream.py does."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

import pytest
from machine_driver import MachineDriver, of, out

from s2sfast.config import S2SOptions, StreamManagementOptions
from s2sfast.framing import StreamFramer
from s2sfast.protocol.dialback import make_key
from s2sfast.protocol.events import (
    Authenticated,
    AuthFailed,
    Close,
    Deliver,
    RestartStream,
    SendBytes,
    StartTls,
    VerifyKey,
    VerifyRequest,
)
from s2sfast.protocol.incoming import IncomingMachine
from s2sfast.protocol.outgoing import OutgoingMachine, parse_features
from s2sfast.protocol.sasl import (
    MAX_ATTEMPTS,
    SASL_NS,
    auth_bytes,
    failure_bytes,
    mechanisms_feature,
    parse_sasl,
    response_bytes,
)

SECRET = "s3cret"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
STARTTLS = f"<starttls xmlns='{TLS_NS}'/>".encode()
MECHANISMS = mechanisms_feature().encode()


def header(frm="a.test", to="b.test", id=None):
    ident = f" id='{id}'" if id else ""
    return (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        f"from='{frm}' to='{to}'{ident} version='1.0'>"
    ).encode()


def sasl(name, text=None, **attrs):
    a = "".join(f" {k}='{v}'" for k, v in attrs.items())
    if text is None:
        return f"<{name} xmlns='{SASL_NS}'{a}/>".encode()
    return f"<{name} xmlns='{SASL_NS}'{a}>{text}</{name}>".encode()


def b64(s):
    return base64.b64encode(s.encode()).decode()


@dataclass
class Verdict:
    trusted: bool
    name_matches: bool
    reason: str | None = None


GOOD = Verdict(True, True)
#: what verify_peer says of the test CA's expired, self-signed and wrong-name certificates
EXPIRED = Verdict(False, True, "the certificate expired at 2020-01-01 00:00:00 UTC")
SELF_SIGNED = Verdict(False, True, "the certificate is self-signed and not a trust anchor")
WRONG_NAME = Verdict(True, False, "the certificate does not name a.test (it names c.test)")


class Restarting(MachineDriver):
    """MachineDriver that also starts a new framer when the machine restarts the stream."""

    def send(self, data):
        actions = super().send(data)
        if of(actions, RestartStream):
            self.framer = StreamFramer()
        return actions


# --- the elements ----------------------------------------------------------------------------


def test_auth_carries_the_domain_as_authzid_and_parses_back():
    raw = auth_bytes("a.test")
    assert raw == f"<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{b64('a.test')}</auth>".encode()
    el = parse_sasl(raw)
    assert (el.name, el.mechanism, el.initial, el.authzid) == ("auth", "EXTERNAL", True, "a.test")
    assert parse_sasl(auth_bytes("")).authzid == ""  # "=": an empty initial response
    assert parse_sasl(auth_bytes("")).initial


@pytest.mark.parametrize(
    "text, initial, authzid",
    [
        (None, False, ""),
        ("=", True, ""),
        ("!!notbase64", True, None),
        (b64("é.test"), True, "é.test"),
    ],
)
def test_auth_initial_response_forms(text, initial, authzid):
    el = parse_sasl(sasl("auth", text, mechanism="EXTERNAL"))
    assert (el.initial, el.authzid) == (initial, authzid)


def test_non_utf8_and_oversized_authzid_are_unreadable():
    assert parse_sasl(sasl("auth", base64.b64encode(b"\xff\xfe").decode())).authzid is None
    assert parse_sasl(sasl("auth", "QUFB" * 600)).authzid is None


def test_failure_condition_and_response():
    assert parse_sasl(failure_bytes("not-authorized")).condition == "not-authorized"
    assert parse_sasl(sasl("failure")).condition is None
    assert parse_sasl(response_bytes("a.test")).authzid == "a.test"
    assert parse_sasl(b"<auth").name == "failure"  # unreadable: never trusted


def test_features_parse_mechanisms():
    f = parse_features(b"<stream:features>" + MECHANISMS + b"</stream:features>")
    assert f.external and not f.dialback
    other = f"<mechanisms xmlns='{SASL_NS}'><mechanism>PLAIN</mechanism></mechanisms>"
    assert not parse_features(f"<stream:features>{other}</stream:features>".encode()).external


# --- incoming: offering and accepting EXTERNAL ----------------------------------------------


class Peer(Restarting):
    """The receiving side b.test; the test plays a.test."""

    def __init__(self, verdict=GOOD, *, mode="required", allow=None, **options):
        self.checked = []

        def check(chain, domain):
            self.checked.append(domain)
            return verdict if not callable(verdict) else verdict(domain)

        opts = S2SOptions(use_starttls=mode, shared=SECRET, **options)
        self.machine = IncomingMachine(
            hosts={"b.test"},
            options_for=lambda host: opts,
            policy_allows=allow or (lambda local, remote: True),
            tls_available=True,
            check_cert=check,
            stream_id="sid1",
        )
        super().__init__()
        self.machine.start()

    def secure(self, frm="a.test"):
        """Header, STARTTLS, TLS up, header again: the features after TLS."""
        self.send(header(frm))
        self.send(STARTTLS)
        self.tls_up(chain=(b"leaf",))
        return out(self.send(header(frm)))


def test_external_offered_after_tls_for_a_proven_domain():
    p = Peer()
    before = out(p.send(header()))
    assert b"mechanisms" not in before  # never on the plain stream
    p.send(STARTTLS)
    p.tls_up()
    features = out(p.send(header()))
    assert MECHANISMS in features and b"urn:xmpp:features:dialback" in features
    assert p.checked == ["a.test"]


@pytest.mark.parametrize("verdict", [EXPIRED, SELF_SIGNED, WRONG_NAME, None])
def test_external_not_offered_unless_the_certificate_proves_the_domain(verdict):
    p = Peer(verdict, mode="optional")
    features = p.secure()
    assert b"mechanisms" not in features and b"dialback" in features
    acts = p.send(auth_bytes("a.test"))  # asked anyway
    assert out(acts) == failure_bytes("invalid-mechanism")
    assert not of(acts, Authenticated)


def test_external_not_offered_when_turned_off():
    assert b"mechanisms" not in Peer(sasl_external=False).secure()


def test_external_success_restarts_the_stream_and_authenticates():
    p = Peer()
    p.secure()
    acts = p.send(auth_bytes("a.test"))
    assert [type(a) for a in acts] == [SendBytes, Authenticated, RestartStream, type(acts[-1])]
    assert out(acts) == f"<success xmlns='{SASL_NS}'/>".encode()
    (auth,) = of(acts, Authenticated)
    assert (auth.local, auth.remote, auth.direction, auth.method) == (
        "b.test",
        "a.test",
        "in",
        "sasl-external",
    )
    old_id = "sid1"
    assert p.machine.stream_id != old_id and p.machine.state == "WAIT_HEADER"
    # the restarted stream: a new header with the new id, features without EXTERNAL
    reopened = out(p.send(header()))
    assert f"id='{p.machine.stream_id}'".encode() in reopened
    assert b"mechanisms" not in reopened and b"urn:xmpp:features:dialback" in reopened
    acts = p.send(b"<message from='u@a.test' to='v@b.test' id='m1'><body>x</body></message>")
    assert of(acts, Deliver)[0].stanza.id == "m1"


def test_empty_authzid_means_the_certificate_domain():
    p = Peer()
    p.secure()
    assert of(p.send(sasl("auth", "=", mechanism="EXTERNAL")), Authenticated)


def test_no_initial_response_gets_an_empty_challenge():
    p = Peer()
    p.secure()
    acts = p.send(sasl("auth", mechanism="EXTERNAL"))
    assert out(acts) == f"<challenge xmlns='{SASL_NS}'/>".encode()
    acts = p.send(response_bytes("a.test"))
    assert of(acts, Authenticated)[0].method == "sasl-external"


def test_abort_after_the_challenge():
    p = Peer()
    p.secure()
    p.send(sasl("auth", mechanism="EXTERNAL"))
    assert out(p.send(sasl("abort"))) == failure_bytes("aborted")
    assert of(p.send(auth_bytes("a.test")), Authenticated)  # may still try again


@pytest.mark.parametrize(
    "auth, condition",
    [
        (auth_bytes("c.test"), "invalid-authzid"),  # another domain than the certificate's
        (sasl("auth", "!!", mechanism="EXTERNAL"), "incorrect-encoding"),
        (sasl("auth", "=", mechanism="PLAIN"), "invalid-mechanism"),
    ],
)
def test_refused_auth_leaves_dialback_open(auth, condition):
    p = Peer()
    p.secure()
    acts = p.send(auth)
    assert out(acts) == failure_bytes(condition)
    assert not of(acts, Close) and p.machine.state == "OPEN"
    # the fallback: dialback on the same stream (answered at once: XEP-0344)
    key = make_key(SECRET, "b.test", "a.test", p.machine.stream_id)
    acts = p.send(f"<db:result from='a.test' to='b.test'>{key}</db:result>".encode())
    assert of(acts, Authenticated)[0].method == "dialback-cert"


def test_too_many_failed_attempts_close_the_stream():
    p = Peer()
    p.secure()
    for _ in range(MAX_ATTEMPTS):
        assert out(p.send(auth_bytes("c.test"))) == failure_bytes("invalid-authzid")
    acts = p.send(auth_bytes("c.test"))
    assert of(acts, Close)[-1].condition == "policy-violation"


def test_policy_deny_refuses_external():
    p = Peer(allow=lambda local, remote: remote != "a.test")
    p.secure()
    acts = p.send(auth_bytes("a.test"))
    assert out(acts).startswith(failure_bytes("not-authorized"))
    assert not of(acts, Authenticated)
    assert of(acts, Close)[-1].condition == "policy-violation"
    assert "policy" in of(acts, Close)[-1].text


def test_stanza_before_external_is_not_authorized():
    p = Peer()
    p.secure()
    acts = p.send(b"<message from='u@a.test' to='v@b.test'/>")
    assert of(acts, Close)[-1].condition == "not-authorized"


def test_second_auth_after_success_is_refused():
    p = Peer()
    p.secure()
    p.send(auth_bytes("a.test"))
    p.send(header())
    acts = p.send(auth_bytes("a.test"))
    assert out(acts) == failure_bytes("invalid-mechanism") and not of(acts, Authenticated)


# --- incoming: XEP-0344 --------------------------------------------------------------------


def _db_result(p, frm="a.test"):
    key = make_key(SECRET, "b.test", frm, p.machine.stream_id)
    return p.send(f"<db:result from='{frm}' to='b.test'>{key}</db:result>".encode())


def test_dialback_valid_at_once_when_the_certificate_proves_the_domain():
    p = Peer(sasl_external=False)
    p.secure()
    acts = _db_result(p)
    assert not of(acts, VerifyKey)
    assert out(acts) == b"<db:result from='b.test' to='a.test' type='valid'/>"
    assert of(acts, Authenticated)[0].method == "dialback-cert"
    assert ("b.test", "a.test") in p.machine.authorised


@pytest.mark.parametrize("verdict", [EXPIRED, SELF_SIGNED, WRONG_NAME])
def test_dialback_asks_the_authoritative_server_otherwise(verdict):
    p = Peer(verdict, mode="optional")
    p.secure()
    acts = _db_result(p)
    assert of(acts, VerifyKey) and not of(acts, Authenticated)


def test_dialback_cert_auth_off_asks_the_authoritative_server():
    p = Peer(sasl_external=False, dialback_cert_auth=False)
    p.secure()
    assert of(_db_result(p), VerifyKey)


def test_dialback_cert_auth_needs_tls():
    p = Peer(mode="optional")
    p.send(header())
    assert of(_db_result(p), VerifyKey)


def test_dialback_cert_auth_for_a_second_domain_on_the_stream():
    """The certificate is checked per claimed domain: one naming a.test does not vouch for
    c.test piggybacked on the same stream."""
    p = Peer(lambda domain: GOOD if domain == "a.test" else WRONG_NAME, sasl_external=False)
    p.secure()
    assert of(_db_result(p), Authenticated)
    acts = _db_result(p, "c.test")
    assert of(acts, VerifyKey) and not of(acts, Authenticated)


def test_policy_deny_comes_before_dialback_cert_auth():
    p = Peer(allow=lambda local, remote: False, sasl_external=False)
    p.secure()
    acts = _db_result(p)
    assert not of(acts, Authenticated)
    assert of(acts, Close)[-1].condition == "policy-violation"


# --- outgoing --------------------------------------------------------------------------------


def features(*parts):
    return b"<stream:features>" + b"".join(parts) + b"</stream:features>"


DIALBACK = b"<dialback xmlns='urn:xmpp:features:dialback'/>"
SM = b"<sm xmlns='urn:xmpp:sm:3'/>"


class Server(Restarting):
    """The originating side a.test; the test plays b.test."""

    def __init__(self, *, sasl_external=True, sm=None, direct_tls=False, check=None):
        self.machine = OutgoingMachine(
            local="a.test",
            remote="b.test",
            use_starttls="required",
            secret=SECRET,
            tls_available=True,
            check_cert=check or (lambda chain, domain: GOOD),
            sasl_external=sasl_external,
            sm=sm,
        )
        super().__init__()
        self.opening = self.machine.start(direct_tls=direct_tls)

    def secure(self, offered):
        self.send(header("b.test", "a.test", id="p1"))
        acts = self.send(features(f"<starttls xmlns='{TLS_NS}'><required/></starttls>".encode()))
        assert out(acts) == STARTTLS
        acts = self.send(f"<proceed xmlns='{TLS_NS}'/>".encode())
        assert of(acts, StartTls)
        self.tls_up()
        self.send(header("b.test", "a.test", id="p2"))
        return self.send(features(*offered))


def test_outgoing_uses_external_when_offered_then_restarts():
    s = Server()
    acts = s.secure([MECHANISMS, DIALBACK])
    assert out(acts) == auth_bytes("a.test") and s.machine.state == "WAIT_SASL"
    acts = s.send(f"<success xmlns='{SASL_NS}'/>".encode())
    assert of(acts, RestartStream) and not of(acts, Authenticated)
    assert out(acts).startswith(b"<?xml version='1.0'?><stream:stream")  # our new header
    s.send(header("b.test", "a.test", id="p3"))
    acts = s.send(features(DIALBACK))
    (auth,) = of(acts, Authenticated)
    assert (auth.direction, auth.method) == ("out", "sasl-external")
    assert s.machine.established and s.machine.stream_id == "p3"
    assert b"db:result" not in out(acts)  # no dialback at all


def test_outgoing_external_then_sm_on_the_restarted_stream():
    s = Server(sm=StreamManagementOptions())
    s.secure([MECHANISMS, DIALBACK])
    s.send(f"<success xmlns='{SASL_NS}'/>".encode())
    s.send(header("b.test", "a.test", id="p3"))
    acts = s.send(features(DIALBACK, SM))
    assert b"<enable xmlns='urn:xmpp:sm:3'" in out(acts)
    assert of(acts, Authenticated)[0].method == "sasl-external"


def test_outgoing_falls_back_to_dialback_on_failure():
    s = Server()
    s.secure([MECHANISMS, DIALBACK])
    acts = s.send(failure_bytes("not-authorized"))
    key = make_key(SECRET, "b.test", "a.test", "p2")
    assert out(acts) == f"<db:result from='a.test' to='b.test'>{key}</db:result>".encode()
    assert s.machine.sasl_failure == "not-authorized"
    acts = s.send(b"<db:result from='b.test' to='a.test' type='valid'/>")
    assert of(acts, Authenticated)[0].method == "dialback"


def test_outgoing_failure_without_dialback_fails_the_pair():
    s = Server()
    s.secure([MECHANISMS])
    acts = s.send(failure_bytes("not-authorized"))
    (failed,) = of(acts, AuthFailed)
    assert "refused SASL EXTERNAL (not-authorized)" in failed.text and not failed.retry
    assert of(acts, Close)[-1].condition == "not-authorized"


@pytest.mark.parametrize("offered", [[DIALBACK], [MECHANISMS, DIALBACK]])
def test_outgoing_dialback_when_not_offered_or_not_wanted(offered):
    s = Server(sasl_external=len(offered) == 1)  # not offered / offered but ours is not good
    acts = s.secure(offered)
    assert b"<db:result from='a.test' to='b.test'>" in out(acts)
    assert b"<auth" not in out(acts)


def test_outgoing_never_uses_external_before_tls():
    m = OutgoingMachine(
        local="a.test", remote="b.test", secret=SECRET, use_starttls="false", sasl_external=True
    )
    d = Restarting()
    d.machine = m
    m.start()
    d.send(header("b.test", "a.test", id="p1"))
    acts = d.send(features(MECHANISMS, DIALBACK))
    assert b"<auth" not in out(acts) and b"db:result" in out(acts)


def test_outgoing_answers_a_challenge():
    s = Server()
    s.secure([MECHANISMS, DIALBACK])
    acts = s.send(sasl("challenge"))
    assert out(acts) == response_bytes("a.test")


def test_outgoing_external_over_direct_tls():
    s = Server(direct_tls=True)
    assert of(s.opening, StartTls)
    acts = s.tls_up()
    assert out(acts).startswith(b"<?xml")
    s.send(header("b.test", "a.test", id="d1"))
    assert out(s.send(features(MECHANISMS, DIALBACK))) == auth_bytes("a.test")


def test_verify_requests_wait_for_external_then_go_out():
    s = Server()
    s.secure([MECHANISMS, DIALBACK])
    req = VerifyRequest(receiving="a.test", originating="b.test", stream_id="x1", key="k" * 64)
    assert s.event(req) == []  # queued while SASL is pending
    s.send(f"<success xmlns='{SASL_NS}'/>".encode())
    s.send(header("b.test", "a.test", id="p3"))
    acts = s.send(features(DIALBACK))
    assert b"<db:verify from='a.test' to='b.test' id='x1'>" in out(acts)


# --- both machines against each other --------------------------------------------------------


def test_two_machines_negotiate_external_end_to_end():
    """Outgoing a.test wired to incoming b.test (TLS as a framer restart on both sides):
    STARTTLS, EXTERNAL, restart; both sides authenticated, a stanza delivered, no dialback."""
    inc, outg = Peer(), Server()
    to_in, wire = out(outg.opening), []
    for _ in range(10):
        if outg.machine.established:
            break
        acts_in = inc.send(to_in)
        to_out = out(acts_in)
        if of(acts_in, StartTls):
            inc.tls_up(chain=(b"leaf",))
        acts_out = outg.send(to_out)
        to_in = out(acts_out)
        if of(acts_out, StartTls):
            to_in = out(outg.tls_up())
        wire += [to_in, to_out]
    assert outg.machine.established
    assert set(inc.machine.authorised) == {("b.test", "a.test")}
    assert not any(b"db:" in chunk for chunk in wire)
    acts = inc.send(b"<message from='u@a.test' to='v@b.test' id='e2e'/>")
    assert of(acts, Deliver)[0].stanza.id == "e2e"


def test_options_default_on():
    opts = S2SOptions()
    assert opts.sasl_external and opts.dialback_cert_auth
    assert not replace(opts, sasl_external=False).sasl_external
