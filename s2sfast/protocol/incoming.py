"""The receiving side of an S2S stream (sans-IO): header checks, features, STARTTLS, SASL
EXTERNAL (XEP-0178), and the receiving and authoritative dialback roles (XEP-0220, answered at
once when the peer's certificate already proves the domain: XEP-0344).

Events in: the framer's StreamOpen / Stanza / StreamClose, plus TlsUp, TimerFired,
VerifyResult and ConnectionLost. Actions out: see s2sfast.events. No sockets, no clock.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from s2sfast.config import S2SOptions
from s2sfast.framing import StreamFramer
from s2sfast.limits import MAX_PENDING_RESULTS_PER_STREAM
from s2sfast.protocol.bidi import BIDI_NS, BidiRoute, parse_request
from s2sfast.protocol.bidi import FEATURE as BIDI_FEATURE
from s2sfast.protocol.dialback import (
    DIALBACK_FEATURE_NS,
    DIALBACK_NS,
    key_matches,
    parse_dialback,
    result_bytes,
    verify_bytes,
)
from s2sfast.protocol.errors import STREAM_NS, RemoteStreamError
from s2sfast.protocol.events import (
    Acked,
    Action,
    Authenticated,
    Close,
    Deliver,
    Drop,
    Handled,
    RestartStream,
    SendBytes,
    SetTimer,
    StartTls,
    Unacked,
    VerifyKey,
    VerifyResult,
)
from s2sfast.protocol.jid import valid_domain
from s2sfast.protocol.negotiation import (
    SERVER_NS,
    TLS_NS,
    CertChecker,
    Machine,
    check_header_namespaces,
    check_version,
    stream_header,
)
from s2sfast.protocol.sasl import (
    EXTERNAL,
    MAX_ATTEMPTS,
    SASL_NS,
    challenge_bytes,
    failure_bytes,
    mechanisms_feature,
    parse_sasl,
    success_bytes,
)
from s2sfast.protocol.sm import (
    ENABLED,
    FEATURE,
    REQUEST,
    SM_NS,
    HandledCountTooHigh,
    SmInbound,
    SmOutbound,
    failed_bytes,
    handled_count_too_high_bytes,
    parse_ack,
)
from s2sfast.protocol.stream_limits import StreamLimits, limits_bytes

__all__ = ["IncomingMachine", "new_stream_id"]

log = logging.getLogger("s2sfast.incoming")

_DATA_STANZAS = frozenset({"message", "presence", "iq"})
_TLS_MODES_REQUIRED = frozenset({"required", "required_trusted"})


def new_stream_id() -> str:
    """A fresh, unguessable stream id (128 random bits)."""
    return secrets.token_hex(16)


class IncomingMachine(Machine):
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
        #: XEP-0478: our limits (announced) and the peer's (from its <bidi/> request)
        self.limits = limits
        self.peer_limits: StreamLimits | None = None
        #: the peer's max-bytes (None: not announced): the router bounces larger stanzas
        self.peer_max_bytes: int | None = None
        #: XEP-0288: the peer asked for a bidirectional stream (after we offered it)
        self.bidi = False
        self._bidi_offered = False
        #: pairs whose reverse direction the router was told about (BidiRoute)
        self._routed: set[tuple[str, str]] = set()
        #: live collection (the router may add domains at run time); lowercase domains
        self.hosts = hosts
        self.options_for = options_for
        self.policy_allows = policy_allows
        self.tls_available = tls_available
        self.check_cert = check_cert
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
        #: (local, remote) pairs authorised to send stanzas on this stream
        self.authorised: set[tuple[str, str]] = set()
        #: (local, remote) pairs whose db:result awaits the authoritative server's verdict
        self.pending_results: set[tuple[str, str]] = set()
        self._starttls_offered = False
        self._cert_verdicts: dict[str, Any] = {}
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
        self._sasl_attempts = 0

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

    def _step_timer(self) -> SetTimer:
        """Negotiating streams get state_timeout per step; authenticated ones no timer at all
        (a piggybacked db:result or a db:verify on them must not start a countdown)."""
        return SetTimer(seconds=None) if self.authorised else self._arm()

    def _tls_missing(self) -> bool:
        return self.mode in _TLS_MODES_REQUIRED and not self.tls_active

    def _require_tls(self, what: str) -> None:
        if self._tls_missing():
            raise RemoteStreamError(
                "policy-violation", f"STARTTLS is required before {what} (use_starttls={self.mode})"
            )

    def _check_trusted(self, domain: str) -> None:
        """Record the peer certificate's verdict for *domain*; required_trusted enforces it."""
        status = None
        if self.tls_active and self.check_cert is not None:
            status = self._cert_verdicts.get(domain)
            if status is None:  # one chain per stream: verify it once per claimed domain
                status = self._cert_verdicts[domain] = self.check_cert(self.tls_chain, domain)
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
        to = (attrs.get("to") or "").lower()
        frm = (attrs.get("from") or "").lower()
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
        parts = ["<stream:features>"]
        mode = self.mode
        self._starttls_offered = False
        if not self.tls_active and mode != "false" and self.tls_available:
            self._starttls_offered = True
            if mode in _TLS_MODES_REQUIRED:
                parts.append(f"<starttls xmlns='{TLS_NS}'><required/></starttls>")
            else:
                parts.append(f"<starttls xmlns='{TLS_NS}'/>")
        self._external_offered = self._external_allowed()
        self._sasl_challenged = False
        if self._external_offered:
            parts.append(mechanisms_feature())
        self._bidi_offered = self._bidi_allowed()
        if self._bidi_offered:
            parts.append(BIDI_FEATURE.decode())
        if self.limits is not None:
            parts.append(limits_bytes(self.limits).decode())
        if not self._tls_missing():
            parts.append(f"<dialback xmlns='{DIALBACK_FEATURE_NS}'><errors/></dialback>")
            self._sm_offered = self._sm_allowed()
            if self._sm_offered:
                # XEP-0198: offered now (dialback never restarts the stream to offer it after
                # authentication); <enable/> is refused until a pair is authenticated
                parts.append(FEATURE.decode())
        parts.append("</stream:features>")
        return "".join(parts).encode()

    def _on_stanza(self, st: Any) -> list[Action]:
        ns = st.ns
        if ns == DIALBACK_NS:
            if st.name == "result":
                return self._on_db_result(st)
            if st.name == "verify":
                return self._on_db_verify(st)
        elif ns == TLS_NS and st.name == "starttls":
            return self._on_starttls()
        elif ns == STREAM_NS and st.name == "error":
            self.state = "CLOSING"
            return [SetTimer(seconds=None), Close(condition=None, text="peer sent a stream error")]
        elif ns == SERVER_NS and st.name in _DATA_STANZAS:
            return self._on_data(st)
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
        self.tls_chain = tuple(ev.chain)
        self.header_sent = False
        self.state = "WAIT_HEADER"
        return [self._arm()]

    def _parse_db(self, st: Any):
        try:
            return parse_dialback(st.raw)
        except ValueError as exc:
            raise RemoteStreamError("bad-format", str(exc)) from exc

    def _on_db_result(self, st: Any) -> list[Action]:
        db = self._parse_db(st)
        if db.type is not None:
            return [
                Drop(reason=f"db:result answer type={db.type} on an incoming stream", stanza=st)
            ]
        self._require_tls("dialback")
        local, remote = db.to.lower(), db.from_.lower()
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
            self.authorised.add((local, remote))
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
        db = self._parse_db(st)
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
        local, remote = pair
        if ev.type == "valid":
            self.authorised.add(pair)
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
        status = self._cert_verdicts.get(domain)
        return bool(status is not None and status.trusted and status.name_matches)

    def _external_allowed(self) -> bool:
        """Offer EXTERNAL: no pair authenticated on this stream yet, and the certificate the
        peer presented proves the domain its header claims."""
        frm = self.peer_from
        if not frm or self.authorised or self._sasl_attempts >= MAX_ATTEMPTS:
            return False
        return self._cert_proves(frm, "sasl_external")

    def _on_sasl(self, st: Any) -> list[Action]:
        name = st.name
        if name == "abort" and self._sasl_challenged:
            self._sasl_challenged = False
            return [SendBytes(data=failure_bytes("aborted"))]
        if name == "auth" and not self._sasl_challenged:
            return self._on_sasl_auth(st)
        if name == "response" and self._sasl_challenged:
            self._sasl_challenged = False
            return self._sasl_authorize(parse_sasl(st.raw).authzid)
        raise RemoteStreamError(
            "unsupported-stanza-type", f"<{name} xmlns='{SASL_NS}'> is not expected here"
        )

    def _on_sasl_auth(self, st: Any) -> list[Action]:
        if not self._external_offered:
            return self._sasl_failure("invalid-mechanism", "SASL EXTERNAL was not offered")
        auth = parse_sasl(st.raw)
        if (auth.mechanism or "").upper() != EXTERNAL:
            return self._sasl_failure("invalid-mechanism", f"mechanism {auth.mechanism!r}")
        if not auth.initial:
            # RFC 6120 6.4.2: no initial response: an empty challenge asks for it
            self._sasl_challenged = True
            return [SendBytes(data=challenge_bytes())]
        return self._sasl_authorize(auth.authzid)

    def _sasl_failure(self, condition: str, why: str) -> list[Action]:
        """``<failure/>``: the stream stays as it was (the peer may try dialback); a peer
        that keeps failing is closed with policy-violation (RFC 6120 6.4.5)."""
        self._sasl_attempts += 1
        log.info(
            "SASL EXTERNAL refused for %s -> %s (%s: %s) id=%s",
            self.peer_from,
            self.local,
            condition,
            why,
            self.stream_id,
        )
        if self._sasl_attempts > MAX_ATTEMPTS:
            raise RemoteStreamError("policy-violation", f"{MAX_ATTEMPTS} SASL attempts failed")
        return [SendBytes(data=failure_bytes(condition))]

    def _sasl_authorize(self, authzid: str | None) -> list[Action]:
        local, remote = self.local or "", self.peer_from or ""
        if authzid is None:
            return self._sasl_failure("incorrect-encoding", "the authzid is not base64 UTF-8")
        if authzid and authzid.lower() != remote:
            # XEP-0178 section 2 step 7: the authzid must be the domain the certificate proves
            return self._sasl_failure("invalid-authzid", f"authzid {authzid!r} is not {remote}")
        if not self.policy_allows(local, remote):
            return self._deny(
                failure_bytes("not-authorized"),
                f"{remote} is not allowed to federate with {local} (policy)",
            )
        self._external_offered = False
        self.authorised.add((local, remote))
        # RFC 6120 6.4.6: <success/>, then the stream restarts over the same TLS session (a new
        # id; the peer sends the new header first)
        old_id = self.stream_id
        self.stream_id = new_stream_id()
        self.header_sent = False
        self.state = "WAIT_HEADER"
        log.info("SASL EXTERNAL: %s -> %s authenticated id=%s", remote, local, old_id)
        return [
            SendBytes(data=success_bytes()),
            Authenticated(local=local, remote=remote, direction="in", method="sasl-external"),
            RestartStream(),
            self._arm(),
        ]

    # --- XEP-0198 -------------------------------------------------------------------------------

    def _sm_allowed(self) -> bool:
        host = self.local or next(iter(sorted(self.hosts)), "")
        return bool(host) and self.options_for(host).stream_management.enabled

    def _on_sm(self, st: Any) -> list[Action]:
        name = st.name
        if name == "enable":
            if not self._sm_offered:
                return [SendBytes(data=failed_bytes("feature-not-implemented"))]
            if not self.authorised or self.sm_in is not None:
                # XEP-0198 section 3: only after authentication, and only once
                why = "already enabled" if self.sm_in is not None else "not authenticated yet"
                return [
                    SendBytes(data=failed_bytes("unexpected-request")),
                    Drop(reason=f"<enable/> refused on {self.stream_id}: {why}", stanza=st),
                ]
            opts = self.options_for(self.local or next(iter(self.authorised))[0])
            self.sm_in = SmInbound()
            self.sm_out = SmOutbound(
                max_unacked=opts.stream_management.buffer_max,
                request_every=opts.stream_management.ack_freq,
            )
            log.info("stream management enabled on incoming stream %s", self.stream_id)
            return [SendBytes(data=ENABLED)]
        if self.sm_in is None or self.sm_out is None:
            return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> before <enable/>", stanza=st)]
        if name == "r":
            ack = self.sm_in.request()
            return [SendBytes(data=ack)] if ack is not None else []
        if name == "a":
            try:
                count = self.sm_out.ack(parse_ack(st.raw))
            except HandledCountTooHigh as exc:
                return self._sm_fail(exc)
            return [Acked(count=count)] if count else []  # our bidi stanzas (XEP-0288)
        return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> is not used on S2S", stanza=st)]

    def _sm_fail(self, exc: HandledCountTooHigh) -> list[Action]:
        """XEP-0198 section 4: undefined-condition with <handled-count-too-high/>, then close."""
        self.error = exc
        self.state = "ERROR"
        return [
            SendBytes(data=handled_count_too_high_bytes(exc)),
            SetTimer(seconds=None),
            Close(condition=None, text=f"stream error undefined-condition: {exc.text}"),
        ]

    def _on_handled(self, ev: Handled) -> list[Action]:
        ack = self.sm_in.handled(ev.seq) if self.sm_in is not None else None
        return [SendBytes(data=ack)] if ack is not None else []

    def _final_ack(self) -> list[Action]:
        """XEP-0198: our last <a/> goes out before our </stream:stream>."""
        if self.sm_in is None:
            return []
        return [SendBytes(data=self.sm_in.final_ack())]

    def _on_peer_close(self, ev: Any) -> list[Action]:
        return [*self._final_ack(), *self._finish("peer closed the stream")]

    def _on_closed(self, ev: Any) -> list[Action]:
        self.state = "CLOSED"
        return [SetTimer(seconds=None), Close(condition=None, text="closed")]

    def _on_lost(self, ev: Any) -> list[Action]:
        self.state = "CLOSED"
        return [SetTimer(seconds=None)]

    def _ignore(self, ev: Any) -> list[Action]:
        return []

    def close(self, reason: str = "closing") -> list[Action]:
        """We close the stream (shutdown): ``</stream:stream>``, then wait for the peer's."""
        if self.closed:
            return []
        self.state = "CLOSING"
        actions = self._final_ack()
        if self.sm_out is not None and self.sm_out.unacked:
            actions.append(SendBytes(data=REQUEST))  # bidi: the peer's last <a/> settles the rest
        return [*actions, Close(condition=None, text=reason)]

    # --- XEP-0288: the reverse direction on this stream ------------------------------------

    def _receive_bidi(self, event: Any) -> list[Action]:
        """:meth:`receive` once the peer asked for bidi (installed on the instance then, so
        other streams keep the plain dispatch): also tell the router when a pair's reverse
        direction becomes usable, and hand back what the peer never acknowledged when the
        stream ends."""
        actions = Machine.receive(self, event)
        extra = self._bidi_release("the stream ended") if self.state in self.FINAL else None
        extra = extra or self._bidi_routes()
        if extra:
            return [*actions, *extra]
        return actions

    def _bidi_allowed(self) -> bool:
        """Offer bidi: ``[s2s] bidi`` is on, TLS is not still owed, nothing authenticated yet
        (XEP-0288 section 2.1: offered before and after TLS; requested before authentication)."""
        if self.bidi or self.authorised or self._tls_missing():
            return False
        host = self.local or next(iter(sorted(self.hosts)), "")
        return bool(host) and self.options_for(host).bidi

    def _on_bidi(self, st: Any) -> list[Action]:
        if not self._bidi_offered or self.authorised:
            why = "after authentication" if self.authorised else "without our offer"
            return [Drop(reason=f"<bidi/> request {why} ignored on {self.stream_id}", stanza=st)]
        self.bidi = True
        self.receive = self._receive_bidi  # type: ignore[method-assign]
        self.peer_limits = parse_request(st.raw)
        limits = self.peer_limits
        self.peer_max_bytes = limits.max_bytes if limits is not None else None
        log.info(
            "bidirectional stream requested by %s -> %s (XEP-0288) id=%s",
            self.peer_from,
            self.local,
            self.stream_id,
        )
        return []

    def _bidi_routes(self) -> list[Action]:
        """BidiRoute for each pair authenticated since the last call, once our (restarted)
        stream is open: never before the peer authenticated (XEP-0288 section 2.2)."""
        if len(self._routed) == len(self.authorised):
            return []
        if self.state != "OPEN" or not self.header_sent:
            return []
        actions: list[Action] = []
        for local, remote in sorted(self.authorised - self._routed):
            self._routed.add((local, remote))
            log.info(
                "bidi: %s -> %s now goes over incoming stream %s", local, remote, self.stream_id
            )
            actions.append(BidiRoute(local=local, remote=remote))
        return actions

    def sent(self, raw: bytes) -> list[Action]:
        """A stanza was just written to this (bidi) stream: with XEP-0198 on it is counted and
        kept until acknowledged, as on an outgoing stream."""
        sm = self.sm_out
        if sm is None:
            return []
        actions: list[Action] = []
        if not sm.unacked:
            actions.append(SetTimer(seconds=sm.request_after))
        if sm.record(raw):
            sm.requested()
            actions.append(SendBytes(data=REQUEST))
        return actions

    @property
    def window_full(self) -> bool:
        """Whether our unacked window is full (bidi with XEP-0198): the router holds stanzas."""
        return self.sm_out is not None and self.sm_out.window_full

    def _on_open_timer(self, ev: Any) -> list[Action]:
        """Negotiating: the step timed out. Authenticated (no step timer any more): our bidi
        stanzas wait for an ack, so ask (again)."""
        sm = self.sm_out
        if not self.authorised:
            return self._timeout(ev)
        if sm is None or not sm.unacked:
            return []
        sm.requested()
        return [SendBytes(data=REQUEST), SetTimer(seconds=sm.request_after)]

    def _on_closing_stanza(self, st: Any) -> list[Action]:
        """While we close: the peer's last <a/> still counts for our bidi stanzas."""
        if st.ns == SM_NS and st.name == "a" and self.sm_out is not None:
            return self._on_sm(st)
        return []

    def _on_failure(self, exc: Any) -> list[Action]:
        return self._bidi_release(exc.text or exc.condition)

    def _bidi_release(self, reason: str) -> list[Action]:
        """The stream is over: what we sent on it and the peer never acknowledged, per pair
        (once), for the router to resend or bounce."""
        sm = self.sm_out
        if sm is None or not sm.unacked or not self._routed:
            return []
        raws = sm.take_unacked()
        by_pair: dict[tuple[str, str], list[bytes]] = {}
        if len(self._routed) == 1:
            by_pair[next(iter(self._routed))] = raws
        else:
            framer = StreamFramer()
            framer.feed(
                b"<stream:stream xmlns='jabber:server' "
                b"xmlns:stream='http://etherx.jabber.org/streams'>"
            )
            for raw in raws:
                (st,) = framer.feed(raw)
                by_pair.setdefault((st.from_domain, st.to_domain), []).append(raw)
        log.warning(
            "bidi stream %s ended with %d unacknowledged stanza(s): %s",
            self.stream_id,
            len(raws),
            reason,
        )
        return [
            Unacked(local=local, remote=remote, raws=tuple(out), reason=reason)
            for (local, remote), out in by_pair.items()
        ]
