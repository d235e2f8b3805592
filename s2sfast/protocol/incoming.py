"""The receiving side of an S2S stream (sans-IO): header checks, features, STARTTLS, SASL
EXTERNAL (XEP-0178), and the receiving and authoritative dialback roles (XEP-0220, answered at
once when the peer's certificate already proves the domain: XEP-0344).

Events in: the framer's StreamOpen / Stanza / StreamClose, plus TlsUp, TimerFired,
VerifyResult and ConnectionLost. Actions out: see s2sfast.events. No sockets, no clock.

This module keeps the machine's one transition table, the header, STARTTLS, the dialback roles
and the data stanzas; each feature's steps are mixins beside it: SASL EXTERNAL in
s2sfast.protocol.sasl_flow, XEP-0198 in sm_flow, XEP-0288 in bidi_flow, and the features
element in s2sfast.protocol.features.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from s2sfast.config import S2SOptions
from s2sfast.limits import MAX_PENDING_RESULTS_PER_STREAM
from s2sfast.protocol.bidi import BIDI_NS
from s2sfast.protocol.bidi_flow import IncomingBidi
from s2sfast.protocol.dialback import (
    DIALBACK_NS,
    key_matches,
    read_dialback,
    result_bytes,
    verify_bytes,
)
from s2sfast.protocol.errors import STREAM_NS, RemoteStreamError
from s2sfast.protocol.events import (
    Action,
    Authenticated,
    Close,
    Deliver,
    Drop,
    SendBytes,
    SetTimer,
    StartTls,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.features import TLS_REQUIRED_MODES, features_bytes
from s2sfast.protocol.jid import valid_domain
from s2sfast.protocol.negotiation import (
    DATA_STANZAS,
    SERVER_NS,
    TLS_NS,
    CertChecker,
    Machine,
    check_header_namespaces,
    check_version,
    new_stream_id,
    stream_header,
)
from s2sfast.protocol.sasl import SASL_NS
from s2sfast.protocol.sasl_flow import IncomingSasl
from s2sfast.protocol.settings import SharedSettings, setting
from s2sfast.protocol.sm import REQUEST, SM_NS, SmInbound, SmOutbound
from s2sfast.protocol.sm_flow import IncomingSm
from s2sfast.protocol.stream_limits import StreamLimits

__all__ = ["IncomingMachine", "new_stream_id"]

log = logging.getLogger("s2sfast.incoming")


#: one shared empty frozenset (``frozenset()`` makes a new object each call since Python 3.10):
#: a field that is an empty set on most streams until first added to (216 bytes a set)
_NO_PAIRS: Any = frozenset()
#: authorised pairs are a tuple up to this many (most streams carry one: a 1-tuple is 48
#: bytes, a set 216), a set beyond (a lookup per stanza stays O(1) on a stream carrying many)
_PAIRS_AS_TUPLE = 8

#: Peer chains kept to be shared: a stream keeps its peer's chain (DER, a few KB with
#: intermediates) for the domains claimed later, and one peer server's streams (one per
#: domain pair, both directions) present the same chain: equal chains are one tuple. The
#: most recently seen ones, bounded (an evicted chain stays with its streams, unshared).
_SHARED_CHAINS = 256
_chains: OrderedDict[tuple[bytes, ...], tuple[bytes, ...]] = OrderedDict()


def _lower(value: str | None, known: str | None) -> str:
    """*value* lower-cased, as one string object per domain on a stream: *known* when equal
    (the header's domain again, in a db:result), else *value* itself when already lower-case."""
    low = (value or "").lower()
    if low == known:
        return known
    return value if value == low else low  # type: ignore[return-value]


def _shared_chain(chain: Iterable[bytes]) -> tuple[bytes, ...]:
    """*chain* as a tuple: an equal one seen lately, or this one (then remembered)."""
    key = tuple(chain)
    hit = _chains.get(key)
    if hit is not None:
        _chains.move_to_end(key)
        return hit
    _chains[key] = key
    if len(_chains) > _SHARED_CHAINS:
        _chains.popitem(last=False)
    return key


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class _Settings:
    """What an incoming machine is told at construction and never changes on its own: the
    same for every connection to a listener, so one object is shared (see _SHARED)."""

    hosts: Collection[str]
    options_for: Callable[[str], S2SOptions]
    policy_allows: Callable[[str, str], bool]
    tls_available: bool
    check_cert: CertChecker | None
    limits: StreamLimits | None


#: the settings in use, each kept once: by the identity of ``hosts`` (a live set) and the
#: other fields' values
_SHARED = SharedSettings(_Settings, by_identity=("hosts",))


class IncomingMachine(IncomingSasl, IncomingSm, IncomingBidi, Machine):
    """One accepted TCP connection, from the peer's header to its close.

    Args:
        hosts: our local domains (``[general] hosts``).
        options_for: the effective ``[s2s]`` options for a local domain (use_starttls, shared).
        policy_allows: ``(local, remote) -> bool`` from s2sfast.policy.
        tls_available: whether we have a server TLS context (a certfile) to offer STARTTLS.
        check_cert: RFC 6125 verdict for a peer chain and domain (required_trusted).
        stream_id: our id for this stream (random when omitted).
        state_timeout: seconds a peer has for each negotiation step.
        limits: what we accept (XEP-0478: the listener's max_stanza_size, our idle timeout),
            announced in our stream features.
    """

    role = "incoming"
    TABLE: ClassVar[dict[tuple[str, str], str]] = {
        ("WAIT_HEADER", "StreamOpen"): "_on_header",
        ("WAIT_HEADER", "StreamClose"): "_on_peer_close",
        ("WAIT_HEADER", "TimerFired"): "_timeout",
        ("WAIT_HEADER", "VerifyResult"): "_on_verify_result",
        ("WAIT_HEADER", "ConnectionLost"): "_on_lost",
        ("OPEN", "Stanza"): "_on_stanza",
        ("OPEN", "StreamClose"): "_on_peer_close",
        ("OPEN", "TimerFired"): "_on_open_timer",
        ("OPEN", "VerifyResult"): "_on_verify_result",
        ("OPEN", "ConnectionLost"): "_on_lost",
        ("OPEN", "Handled"): "_on_handled",
        ("TLS_PENDING", "TlsUp"): "_on_tls_up",
        ("TLS_PENDING", "TimerFired"): "_timeout",
        ("TLS_PENDING", "VerifyResult"): "_on_verify_result",
        ("TLS_PENDING", "ConnectionLost"): "_on_lost",
        ("CLOSING", "StreamClose"): "_on_closed",
        ("CLOSING", "Stanza"): "_on_closing_stanza",
        ("CLOSING", "VerifyResult"): "_ignore",
        ("CLOSING", "TimerFired"): "_on_closed",
        ("CLOSING", "ConnectionLost"): "_on_lost",
        ("CLOSING", "Handled"): "_ignore",
    }

    # Fields only a bidi stream (XEP-0288) or a failed SASL attempt sets are class defaults,
    # not slots: the few streams that set one keep it in their __dict__ (made then), and the
    # machine is 272 bytes instead of 312 (issue 14: 10,000 idle streams per node).
    #: XEP-0478: the peer's limits (from its <bidi/> request) and its max-bytes (None: not
    #: announced): the router bounces larger stanzas
    peer_limits: StreamLimits | None = None
    peer_max_bytes: int | None = None
    #: XEP-0288: the peer asked for a bidirectional stream (after we offered it)
    bidi = False
    #: pairs whose reverse direction the router was told about (BidiRoute; a set once added to)
    _routed: set[tuple[str, str]] = _NO_PAIRS
    #: SASL EXTERNAL attempts that failed
    _sasl_attempts = 0

    # per-listener settings (see _Settings): one shared object, not six slots per stream
    hosts = setting("hosts")
    options_for = setting("options_for")
    policy_allows = setting("policy_allows")
    tls_available = setting("tls_available")
    check_cert = setting("check_cert")
    limits = setting("limits")

    __slots__ = (
        "_settings",
        "_bidi_offered",
        "stream_id",
        "tls_active",
        "direct_tls",
        "tls_chain",
        "peer_cert",
        "local",
        "peer_from",
        "version",
        "authorised",
        "pending_results",
        "_starttls_offered",
        "_cert_verdicts",
        "sm_in",
        "sm_out",
        "_sm_offered",
        "_external_offered",
        "_sasl_challenged",
        "__dict__",  # the rare fields above, and ``receive`` on a bidi stream (bidi_flow)
    )

    def __init__(
        self,
        *,
        hosts: Collection[str],
        options_for: Callable[[str], S2SOptions],
        policy_allows: Callable[[str, str], bool],
        tls_available: bool = False,
        check_cert: CertChecker | None = None,
        stream_id: str | None = None,
        state_timeout: float | None = 5.0,
        limits: StreamLimits | None = None,
    ) -> None:
        super().__init__(state_timeout=state_timeout)
        #: hosts: a live collection (the router may add domains at run time), lowercase
        #: domains; limits: XEP-0478, ours (announced)
        self._settings = _SHARED.share(
            _Settings(
                hosts=hosts,
                options_for=options_for,
                policy_allows=policy_allows,
                tls_available=tls_available,
                check_cert=check_cert,
                limits=limits,
            )
        )
        self._bidi_offered = False
        self.stream_id = stream_id or new_stream_id()
        self.tls_active = False
        #: the connection is Direct TLS (XEP-0368), set by start()
        self.direct_tls = False
        self.tls_chain: tuple[bytes, ...] = ()
        #: the peer's certificate verdict for the last domain checked (for connections())
        self.peer_cert: Any = None
        self.local: str | None = None
        self.peer_from: str | None = None
        self.version = True
        #: (local, remote) pairs authorised to send stanzas on this stream: a tuple, a set past
        #: _PAIRS_AS_TUPLE (only ``in``, ``len`` and iteration are used; see _authorise)
        self.authorised: tuple[tuple[str, str], ...] | set[tuple[str, str]] = ()
        #: (local, remote) pairs whose db:result awaits the authoritative server's verdict
        self.pending_results: set[tuple[str, str]] = _NO_PAIRS
        self._starttls_offered = False
        #: the peer certificate's verdicts: None, the one domain checked (most streams; its
        #: verdict is peer_cert), or a dict of them (see _cert_verdict)
        self._cert_verdicts: Any = None
        #: XEP-0198, once the peer enabled it: what we received (and handled) on this stream
        self.sm_in: SmInbound | None = None
        #: ... and what we sent (nothing: S2S stanzas flow on the peer's own stream; kept to
        #: check its acks)
        self.sm_out: SmOutbound | None = None
        self._sm_offered = False
        #: SASL EXTERNAL offered in the features just sent (XEP-0178)
        self._external_offered = False
        #: an <auth/> without initial response got our empty <challenge/>
        self._sasl_challenged = False

    # --- helpers -------------------------------------------------------------------------------

    def start(self, *, direct_tls: bool = False) -> list[Action]:
        """Arm the timer for the peer's stream header.

        Args:
            direct_tls: a Direct TLS listener (XEP-0368): the TLS handshake comes first, and the
                stream opened after TlsUp offers no STARTTLS (TLS is already up).
        """
        self.direct_tls = direct_tls
        if direct_tls:
            self.state = "TLS_PENDING"
            return [StartTls(server_side=True), self._arm()]
        return [self._arm()]

    @property
    def mode(self) -> str:
        host = self.local or next(iter(sorted(self.hosts)), "")
        return self.options_for(host).use_starttls if host else "false"

    def _authorise(self, pair: tuple[str, str]) -> None:
        """*pair* may send stanzas on this stream from now on."""
        pairs = self.authorised
        if pair in pairs:
            return
        if type(pairs) is tuple and len(pairs) < _PAIRS_AS_TUPLE:
            self.authorised = (*pairs, pair)
            return
        if type(pairs) is tuple:
            pairs = self.authorised = set(pairs)
        pairs.add(pair)  # type: ignore[union-attr]

    def _cert_verdict(self, domain: str) -> Any:
        """The peer certificate's verdict for *domain*, if checked already (else None)."""
        verdicts = self._cert_verdicts
        if verdicts is None:
            return None
        if type(verdicts) is str:
            return self.peer_cert if verdicts == domain else None
        return verdicts.get(domain)

    def _remember_verdict(self, domain: str, status: Any) -> None:
        """Record *status* for *domain* (before peer_cert becomes *status*)."""
        verdicts = self._cert_verdicts
        if verdicts is None:
            self._cert_verdicts = domain
        elif type(verdicts) is str:
            self._cert_verdicts = {verdicts: self.peer_cert, domain: status}
        else:
            verdicts[domain] = status

    def _step_timer(self) -> SetTimer:
        """Negotiating streams get state_timeout per step; authenticated ones no timer at all
        (a piggybacked db:result or a db:verify on them must not start a countdown)."""
        return SetTimer(seconds=None) if self.authorised else self._arm()

    def _tls_missing(self) -> bool:
        return self.mode in TLS_REQUIRED_MODES and not self.tls_active

    def _require_tls(self, what: str) -> None:
        if self._tls_missing():
            raise RemoteStreamError(
                "policy-violation", f"STARTTLS is required before {what} (use_starttls={self.mode})"
            )

    def _check_trusted(self, domain: str) -> None:
        """Record the peer certificate's verdict for *domain*; required_trusted enforces it."""
        status = None
        if self.tls_active and self.check_cert is not None:
            status = self._cert_verdict(domain)
            if status is None:  # one chain per stream: verify it once per claimed domain
                status = self.check_cert(self.tls_chain, domain)
                self._remember_verdict(domain, status)
            self.peer_cert = status
        if self.mode != "required_trusted":
            return
        if status is None:
            raise RemoteStreamError("policy-violation", "no certificate verification available")
        if not (status.trusted and status.name_matches):
            reason = status.reason or "certificate not trusted"
            raise RemoteStreamError(
                "policy-violation", f"certificate of {domain} rejected: {reason}"
            )

    def _error_header(self) -> list[Action]:
        self.header_sent = True
        return [
            SendBytes(
                data=stream_header(
                    from_=self.local, to=self.peer_from, id=self.stream_id, version=self.version
                )
            )
        ]

    # --- handlers ------------------------------------------------------------------------------

    def _on_header(self, ev: Any) -> list[Action]:
        attrs = ev.attrs
        to = _lower(attrs.get("to"), self.local)
        frm = _lower(attrs.get("from"), self.peer_from)
        # Remember what we can first: an error must be preceded by a header naming us.
        if to in self.hosts:
            self.local = to
        if frm and valid_domain(frm):
            self.peer_from = frm
        check_header_namespaces(ev)
        self.version = check_version(attrs.get("version"))
        if not to:
            raise RemoteStreamError("improper-addressing", "the stream header has no 'to'")
        if to not in self.hosts:
            raise RemoteStreamError("host-unknown", f"{to} is not served here")
        if frm and not valid_domain(frm):
            raise RemoteStreamError("invalid-from", f"{frm!r} is not a domain")
        if frm and self.tls_active:
            self._check_trusted(frm)  # before our header: a failure sends its own first
        actions: list[Action] = [
            SendBytes(
                data=stream_header(
                    from_=to, to=frm or None, id=self.stream_id, version=self.version
                )
            )
        ]
        self.header_sent = True
        if self.version:
            actions.append(SendBytes(data=self._features()))
        self.state = "OPEN"
        actions.append(self._step_timer())  # authenticated already after a SASL restart
        return actions

    def _features(self) -> bytes:
        """Our ``<stream:features/>`` for this stream; records what it offers."""
        mode = self.mode
        self._starttls_offered = not self.tls_active and mode != "false" and self.tls_available
        self._external_offered = self._external_allowed()
        self._sasl_challenged = False
        self._bidi_offered = self._bidi_allowed()
        dialback = not self._tls_missing()
        if dialback:
            # XEP-0198: offered now (dialback never restarts the stream to offer it after
            # authentication); <enable/> is refused until a pair is authenticated
            self._sm_offered = self._sm_allowed()
        return features_bytes(
            starttls=self._starttls_offered,
            starttls_required=mode in TLS_REQUIRED_MODES,
            external=self._external_offered,
            bidi=self._bidi_offered,
            limits=self.limits,
            dialback=dialback,
            sm=dialback and self._sm_offered,
        )

    def _on_stanza(self, st: Any) -> list[Action]:
        ns = st.ns
        if ns == SERVER_NS:  # the data stanzas first: all but a handful on a stream
            if st.name in DATA_STANZAS:
                return self._on_data(st)
        elif ns == DIALBACK_NS:
            if st.name == "result":
                return self._on_db_result(st)
            if st.name == "verify":
                return self._on_db_verify(st)
        elif ns == TLS_NS and st.name == "starttls":
            return self._on_starttls()
        elif ns == STREAM_NS and st.name == "error":
            self.state = "CLOSING"
            return [SetTimer(seconds=None), Close(condition=None, text="peer sent a stream error")]
        elif ns == SM_NS:
            return self._on_sm(st)
        elif ns == SASL_NS:
            return self._on_sasl(st)
        elif ns == BIDI_NS and st.name == "bidi":
            return self._on_bidi(st)
        raise RemoteStreamError(
            "unsupported-stanza-type", f"<{st.name} xmlns='{ns}'> is not supported here"
        )

    def _on_starttls(self) -> list[Action]:
        if self.tls_active or not self._starttls_offered:
            self.state = "CLOSED"
            return [
                SendBytes(data=f"<failure xmlns='{TLS_NS}'/>".encode()),
                SetTimer(seconds=None),
                Close(condition=None, text="STARTTLS was not offered"),
            ]
        self.state = "TLS_PENDING"
        return [
            SendBytes(data=f"<proceed xmlns='{TLS_NS}'/>".encode()),
            StartTls(server_side=True),
            self._arm(),
        ]

    def _on_tls_up(self, ev: Any) -> list[Action]:
        self.tls_active = True
        self.stream_id = new_stream_id()  # RFC 6120 4.3.3: a restarted stream gets a new id
        self.tls_chain = _shared_chain(ev.chain)
        self.header_sent = False
        self.state = "WAIT_HEADER"
        return [self._arm()]

    def _on_db_result(self, st: Any) -> list[Action]:
        db = read_dialback(st.raw)
        if db.type is not None:
            return [
                Drop(reason=f"db:result answer type={db.type} on an incoming stream", stanza=st)
            ]
        self._require_tls("dialback")
        local, remote = _lower(db.to, self.local), _lower(db.from_, self.peer_from)
        if not local or not remote:
            raise RemoteStreamError("improper-addressing", "db:result without 'to' or 'from'")
        if local not in self.hosts:
            raise RemoteStreamError("host-unknown", f"{local} is not served here")
        if not valid_domain(remote):
            raise RemoteStreamError("invalid-from", f"{remote!r} is not a domain")
        if not self.policy_allows(local, remote):
            return self._deny(
                result_bytes(
                    from_=local, to=remote, type="error", error_condition="policy-violation"
                ),
                f"{remote} is not allowed to federate with {local} (policy)",
            )
        self._check_trusted(remote)
        if not db.key:
            raise RemoteStreamError("bad-format", "db:result without a key")
        if self._cert_proves(remote, "dialback_cert_auth"):
            # XEP-0344 section 2.4: the certificate already proves the originating domain, so
            # the authoritative server need not be asked (no verify stream, no round trip)
            self._authorise((local, remote))
            log.info(
                "dialback: %s -> %s valid at once: its certificate names it (XEP-0344) id=%s",
                remote,
                local,
                self.stream_id,
            )
            return [
                SendBytes(data=result_bytes(from_=local, to=remote, type="valid")),
                SetTimer(seconds=None),
                Authenticated(local=local, remote=remote, direction="in", method="dialback-cert"),
            ]
        if (local, remote) not in self.pending_results and (
            len(self.pending_results) >= MAX_PENDING_RESULTS_PER_STREAM
        ):
            raise RemoteStreamError(
                "policy-violation",
                f"more than {MAX_PENDING_RESULTS_PER_STREAM} dialback requests pending on one "
                "stream",
            )
        if not self.pending_results:
            self.pending_results = set()
        self.pending_results.add((local, remote))
        return [
            VerifyKey(receiving=local, originating=remote, stream_id=self.stream_id, key=db.key),
            self._step_timer(),
        ]

    def _deny(self, answer: bytes, text: str) -> list[Action]:
        self.error = RemoteStreamError("policy-violation", text)
        self.state = "ERROR"
        return [
            SendBytes(data=answer),
            SetTimer(seconds=None),
            Close(condition="policy-violation", text=text),
        ]

    def _on_db_verify(self, st: Any) -> list[Action]:
        """Authoritative role: recompute the key we would have generated and answer."""
        db = read_dialback(st.raw)
        if db.type is not None:
            return [
                Drop(reason=f"db:verify answer type={db.type} on an incoming stream", stanza=st)
            ]
        self._require_tls("dialback")
        ours, asker = db.to.lower(), db.from_.lower()
        if not ours or not asker or db.id is None:
            raise RemoteStreamError("improper-addressing", "db:verify without 'to', 'from' or 'id'")
        if ours not in self.hosts:
            raise RemoteStreamError("host-unknown", f"{ours} is not served here")
        if not valid_domain(asker):
            raise RemoteStreamError("invalid-from", f"{asker!r} is not a domain")
        if not self.policy_allows(ours, asker):
            return self._deny(
                verify_bytes(
                    from_=ours, to=asker, id=db.id, type="error", error_condition="policy-violation"
                ),
                f"{asker} is not allowed to federate with {ours} (policy)",
            )
        self._check_trusted(asker)
        secret = self.options_for(ours).shared
        valid = key_matches(secret, asker, ours, db.id, db.key)
        verdict = "valid" if valid else "invalid"
        log.info("dialback: verified key %s -> %s id=%s: %s", ours, asker, db.id, verdict)
        return [
            SendBytes(data=verify_bytes(from_=ours, to=asker, id=db.id, type=verdict)),
            self._step_timer(),
        ]

    def _on_verify_result(self, ev: VerifyResult) -> list[Action]:
        pair = (ev.receiving, ev.originating)
        if ev.stream_id != self.stream_id or pair not in self.pending_results:
            return [Drop(reason=f"unexpected verify result for {pair} on {ev.stream_id}")]
        self.pending_results.discard(pair)
        if not self.pending_results:
            self.pending_results = _NO_PAIRS  # an idle stream keeps no empty set
        local, remote = pair
        if ev.type == "valid":
            self._authorise(pair)
            return [
                SendBytes(data=result_bytes(from_=local, to=remote, type="valid")),
                SetTimer(seconds=None),
                Authenticated(local=local, remote=remote, direction="in"),
            ]
        if ev.type == "invalid":
            actions: list[Action] = [
                SendBytes(data=result_bytes(from_=local, to=remote, type="invalid"))
            ]
            if not self.authorised and not self.pending_results:
                self.error = RemoteStreamError(
                    "not-authorized", f"invalid dialback key from {remote}"
                )
                self.state = "ERROR"
                actions += [
                    SetTimer(seconds=None),
                    Close(condition="not-authorized", text=f"invalid dialback key from {remote}"),
                ]
            return actions
        return [
            SendBytes(
                data=result_bytes(
                    from_=local, to=remote, type="error", error_condition="remote-server-not-found"
                )
            ),
            Drop(reason=f"could not verify {remote}'s key: {ev.text or 'error'}"),
        ]

    def _on_data(self, st: Any) -> list[Action]:
        if not self.tls_active:  # (with TLS up nothing is missing: no options lookup per stanza)
            self._require_tls("stanzas")
        if not self.authorised:  # RFC 6120 4.9.3.12
            raise RemoteStreamError("not-authorized", "stanza before the stream was authenticated")
        pair = (st.to_domain, st.from_domain)  # the framer's, computed once per stanza
        sm = self.sm_in
        if pair in self.authorised:
            if sm is None:
                return [Deliver(stanza=st)]
            return [Deliver(stanza=st, seq=sm.receive())]
        actions: list[Action] = [
            Drop(
                reason=f"stanza from {pair[1] or '?'} to {pair[0] or '?'} is not authorised on "
                f"stream {self.stream_id}",
                stanza=st,
            )
        ]
        if sm is not None:  # dropped is handled: nothing of it stays in our memory
            ack = sm.handled(sm.receive())
            if ack is not None:
                actions.append(SendBytes(data=ack))
        return actions

    # --- certificates: SASL EXTERNAL (XEP-0178) and dialback without a verify (XEP-0344) ----

    def _cert_proves(self, domain: str, option: str) -> bool:
        """Whether TLS is up, ``[s2s] <option>`` is on for our domain, and the peer's
        certificate chains to our trust anchors and names *domain* (RFC 6125)."""
        if not (self.tls_active and self.local) or not getattr(
            self.options_for(self.local), option
        ):
            return False
        status = self._cert_verdict(domain)
        return bool(status is not None and status.trusted and status.name_matches)

    # --- closing -------------------------------------------------------------------------------

    def _on_peer_close(self, ev: Any) -> list[Action]:
        return [*self._final_ack(), *self._finish("peer closed the stream")]

    def _on_closing_stanza(self, st: Any) -> list[Action]:
        """While we close: the peer may still send what it wrote before it read our
        ``</stream:stream>`` (RFC 6120 4.4 lets it finish). Without XEP-0198 nobody would
        resend it, so it is delivered as on an open stream (routed, or answered with an error
        while our outbound streams still carry it); with XEP-0198 it stays unacknowledged
        and the peer resends or bounces it (delivering it too would duplicate it)."""
        if (
            self.sm_in is None
            and st.ns == SERVER_NS
            and st.name in DATA_STANZAS
            and not self._tls_missing()
            and (st.to_domain, st.from_domain) in self.authorised
        ):
            return [Deliver(stanza=st)]
        return super()._on_closing_stanza(st)

    def _on_closed(self, ev: Any) -> list[Action]:
        self.state = "CLOSED"
        return [SetTimer(seconds=None), Close(condition=None, text="closed")]

    def _on_lost(self, ev: Any) -> list[Action]:
        self.state = "CLOSED"
        return [SetTimer(seconds=None)]

    def close(self, reason: str = "closing") -> list[Action]:
        """We close the stream (shutdown): ``</stream:stream>``, then wait for the peer's."""
        if self.closed:
            return []
        self.state = "CLOSING"
        actions = self._final_ack()
        if self.sm_out is not None and self.sm_out.unacked:
            actions.append(SendBytes(data=REQUEST))  # bidi: the peer's last <a/> settles the rest
        return [*actions, Close(condition=None, text=reason)]

    def _on_failure(self, exc: Any) -> list[Action]:
        """A failing bidi stream hands back what the peer never acknowledged."""
        return self._bidi_release(exc.text or exc.condition)
