"""The originating side of an S2S stream (sans-IO): our header, the peer's features, STARTTLS,
SASL EXTERNAL when offered (XEP-0178, dialback when it is not or fails), our db:result
(originating role) and the db:verify requests we send (receiving role).

One machine per outbound stream for one (local, remote) domain pair. Events in: the framer's
StreamOpen / Stanza / StreamClose, plus TlsUp, TimerFired, VerifyRequest, ConnectionLost.

This module keeps the machine's one transition table, the header, STARTTLS, dialback and the
failure reporting; each feature's steps are mixins beside it: SASL EXTERNAL in
s2sfast.protocol.sasl_flow, XEP-0198 in sm_flow, XEP-0288 / XEP-0478 in bidi_flow.
``Features`` and ``parse_features`` live in s2sfast.protocol.features (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from s2sfast.protocol.bidi import request_bytes
from s2sfast.protocol.bidi_flow import OutgoingBidi
from s2sfast.protocol.dialback import (
    DIALBACK_NS,
    PendingVerifications,
    make_key,
    read_dialback,
    result_bytes,
    verify_bytes,
)
from s2sfast.protocol.errors import (
    STREAM_NS,
    RemoteStreamError,
    StreamError,
    parse_stream_error,
)
from s2sfast.protocol.events import (
    Action,
    Authenticated,
    AuthFailed,
    Close,
    Deliver,
    Drop,
    SendBytes,
    SetTimer,
    StartTls,
    VerifyAnswered,
    VerifyRequest,
)
from s2sfast.protocol.features import TLS_REQUIRED_MODES, Features, parse_features
from s2sfast.protocol.negotiation import (
    DATA_STANZAS,
    TLS_NS,
    CertChecker,
    Machine,
    check_header_namespaces,
    check_version,
    stream_header,
)
from s2sfast.protocol.sasl_flow import OutgoingSasl
from s2sfast.protocol.settings import SharedSettings, setting
from s2sfast.protocol.sm import REQUEST, SM_NS, SmInbound, SmOutbound
from s2sfast.protocol.sm_flow import OutgoingSm
from s2sfast.protocol.stream_limits import StreamLimits

__all__ = ["OutgoingMachine", "parse_features", "Features"]

#: a peer closing with one of these may well accept us on a later attempt
_TRANSIENT_STREAM_ERRORS = frozenset(
    {
        "connection-timeout",
        "internal-server-error",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "system-shutdown",
    }
)


def _verify_error(receiving: str, originating: str, stream_id: str, text: str) -> VerifyAnswered:
    """The owner's error answer for a verification this stream cannot carry (any longer)."""
    return VerifyAnswered(
        receiving=receiving, originating=originating, stream_id=stream_id, type="error", text=text
    )


#: one shared empty frozenset (``frozenset()`` makes a new 216-byte object each call since
#: Python 3.10) for the sets most streams never add to; bidi_flow makes a set on first add
_NO_PAIRS: Any = frozenset()


@dataclass(frozen=True, slots=True, weakref_slot=True)
class _Settings:
    """What an outgoing machine is told at construction and never changes on its own: the
    same for every stream of a local domain, so equal ones are one shared object."""

    policy_allows: Any
    bidi_wanted: bool
    limits: StreamLimits | None
    sasl_external: bool
    sm_options: Any
    mode: str
    secret: str
    tls_available: bool
    check_cert: CertChecker | None


#: the settings in use, each kept once, by their fields' values
_SHARED = SharedSettings(_Settings)


class OutgoingMachine(OutgoingSasl, OutgoingSm, OutgoingBidi, Machine):
    """One outbound stream from *local* to *remote*.

    Args:
        local, remote: the domain pair this stream authenticates.
        use_starttls: our ``use_starttls`` mode for *local*.
        secret: our dialback secret (``[s2s] shared``) for the key we send.
        tls_available: whether we have a client TLS context.
        check_cert: RFC 6125 verdict for the server's chain and *remote* (required_trusted).
        state_timeout: seconds the peer has for each negotiation step.
        sm: ``[s2s] stream_management`` (None: XEP-0198 off): enable it when offered.
        sasl_external: authenticate with SASL EXTERNAL (XEP-0178) when offered after TLS
            (the owner passes False when our own certificate cannot prove *local*).
        bidi: ask for a bidirectional stream (XEP-0288) when the peer offers one; the peer's
            stanzas for the inverse pair (*remote* -> *local*) are then delivered from this
            stream (``[s2s] bidi``).
        limits: what we accept (XEP-0478), announced inside our ``<bidi/>`` request.
        policy_allows: ``(local, remote) -> bool``, for the peer's own dialback requests on a
            bidi stream (XEP-0288 section 2.2: other domains of the peer asking to send to us).
    """

    role = "outgoing"
    TABLE: ClassVar[dict[tuple[str, str], str]] = {
        ("WAIT_HEADER", "StreamOpen"): "_on_header",
        ("WAIT_HEADER", "StreamClose"): "_on_peer_close",
        ("WAIT_FEATURES", "Stanza"): "_on_features",
        ("WAIT_FEATURES", "StreamClose"): "_on_peer_close",
        ("WAIT_PROCEED", "Stanza"): "_on_proceed",
        ("WAIT_PROCEED", "StreamClose"): "_on_peer_close",
        ("TLS_PENDING", "TlsUp"): "_on_tls_up",
        ("AUTHENTICATING", "Stanza"): "_on_stanza",
        ("AUTHENTICATING", "StreamClose"): "_on_peer_close",
        ("ESTABLISHED", "Stanza"): "_on_stanza",
        ("ESTABLISHED", "StreamClose"): "_on_peer_close",
        ("CLOSING", "StreamClose"): "_on_closed",
    }
    for _state in ("WAIT_HEADER", "WAIT_FEATURES", "WAIT_PROCEED", "TLS_PENDING", "AUTHENTICATING"):
        TABLE[(_state, "TimerFired")] = "_timeout"
    for _state in (
        "WAIT_HEADER",
        "WAIT_FEATURES",
        "WAIT_PROCEED",
        "TLS_PENDING",
        "AUTHENTICATING",
        "ESTABLISHED",
        "CLOSING",
    ):
        TABLE[(_state, "VerifyRequest")] = "_on_verify_request"
        TABLE[(_state, "ConnectionLost")] = "_on_lost"
    TABLE[("WAIT_SASL", "Stanza")] = "_on_sasl"
    TABLE[("WAIT_SASL", "StreamClose")] = "_on_peer_close"
    TABLE[("WAIT_SASL", "TimerFired")] = "_timeout"
    TABLE[("WAIT_SASL", "VerifyRequest")] = "_on_verify_request"
    TABLE[("WAIT_SASL", "ConnectionLost")] = "_on_lost"
    TABLE[("ESTABLISHED", "TimerFired")] = "_on_ack_timer"
    TABLE[("CLOSING", "TimerFired")] = "_on_closed"
    TABLE[("CLOSING", "Stanza")] = "_on_closing_stanza"
    TABLE[("ESTABLISHED", "Handled")] = "_on_handled"
    TABLE[("ESTABLISHED", "VerifyResult")] = "_on_reverse_verified"
    TABLE[("CLOSING", "VerifyResult")] = "_ignore"
    TABLE[("CLOSING", "Handled")] = "_ignore"
    del _state

    # Fields only a bidi stream (XEP-0288) or a refused SASL EXTERNAL sets are class defaults,
    # not slots: the few streams that set one keep it in their __dict__ (made then), and the
    # machine is 304 bytes instead of 336 (issue 14: 10,000 idle streams per node).
    #: XEP-0288: (local, peer domain) pairs the peer authenticated by dialback on this stream
    #: besides (remote -> local), and the peer domains whose keys are being verified (empty
    #: frozensets until first added to)
    reverse_pairs: set[tuple[str, str]] = _NO_PAIRS
    _reverse_pending: set[str] = _NO_PAIRS
    #: dialback requests the peer made on this stream (a count, for diagnostics)
    reverse_requests = 0
    #: what the peer answered a refused SASL EXTERNAL with
    sasl_failure: str | None = None

    # per-local-domain settings (see _Settings): one shared object, not nine slots per stream
    policy_allows = setting("policy_allows")
    bidi_wanted = setting("bidi_wanted")
    limits = setting("limits")
    sasl_external = setting("sasl_external")
    sm_options = setting("sm_options")
    mode = setting("mode")
    secret = setting("secret")
    tls_available = setting("tls_available")
    check_cert = setting("check_cert")

    __slots__ = (
        "_settings",
        "bidi",
        "peer_limits",
        "peer_max_bytes",
        "_sasl",
        "_features",
        "local",
        "remote",
        "tls_active",
        "direct_tls",
        "peer_cert",
        "stream_id",
        "version",
        "pending",
        "_verify_queue",
        "_failed_reported",
        "sm_offered",
        "sm_out",
        "sm_in",
        "_sm_silent",
        "__dict__",
    )

    def __init__(
        self,
        *,
        local: str,
        remote: str,
        use_starttls: str = "false",
        secret: str,
        tls_available: bool = False,
        check_cert: CertChecker | None = None,
        state_timeout: float | None = 5.0,
        sm: Any = None,
        sasl_external: bool = False,
        bidi: bool = False,
        limits: StreamLimits | None = None,
        policy_allows: Any = None,
    ) -> None:
        super().__init__(state_timeout=state_timeout)
        #: bidi_wanted: XEP-0288, we want a bidirectional stream (``bidi`` once we asked for
        #: one); limits: XEP-0478, what we accept (sent in <bidi/>)
        self._settings = _SHARED.share(
            _Settings(
                policy_allows=policy_allows,
                bidi_wanted=bidi,
                limits=limits,
                sasl_external=sasl_external,
                sm_options=sm if sm is not None and sm.enabled else None,
                mode=use_starttls,
                secret=secret,
                tls_available=tls_available,
                check_cert=check_cert,
            )
        )
        self.bidi = False
        #: XEP-0478: what the peer announced
        self.peer_limits: StreamLimits | None = None
        #: the peer's max-bytes (None: not announced): the router bounces larger stanzas
        self.peer_max_bytes: int | None = None
        #: SASL EXTERNAL: None (not tried), "pending", "done" (restarted, authenticated), "failed"
        #: (what the peer said is in sasl_failure)
        self._sasl: str | None = None
        self._features: Features | None = None
        # (the caller's strings when already lower-case: one object per domain per stream)
        low_local, low_remote = local.lower(), remote.lower()
        self.local = local if low_local == local else low_local
        self.remote = remote if low_remote == remote else low_remote
        self.tls_active = False
        #: the connection is Direct TLS (XEP-0368), set by start()
        self.direct_tls = False
        self.peer_cert: Any = None
        self.stream_id: str | None = None
        self.version = True
        #: db:verify requests we sent (made with the first one: most streams send none)
        self.pending: PendingVerifications | None = None
        #: verify requests waiting for the dialback step (a list once one waits)
        self._verify_queue: list[VerifyRequest] | tuple[()] = ()
        self._failed_reported = False
        #: XEP-0198: the peer's features offered <sm/>
        self.sm_offered = False
        #: XEP-0198 after our <enable/>: the stanzas we sent, kept until acknowledged
        self.sm_out: SmOutbound | None = None
        #: ... and after the peer's <enabled/>: what it sends us (acks for its <r/>)
        self.sm_in: SmInbound | None = None
        #: ack-timer periods in a row that found a request unanswered
        self._sm_silent = 0

    @property
    def established(self) -> bool:
        return self.state == "ESTABLISHED"

    def start(self, *, direct_tls: bool = False) -> list[Action]:
        """The connection is up: send our stream header.

        Args:
            direct_tls: the connection is Direct TLS (XEP-0368): the machine first asks for the
                TLS handshake (SNI = the remote domain) and sends its header once TlsUp says it
                is done; the features that follow are not asked for STARTTLS again, and the
                certificate is judged on TlsUp exactly as after STARTTLS.
        """
        self.direct_tls = direct_tls
        if direct_tls:
            self.state = "TLS_PENDING"
            return [StartTls(server_side=False, server_hostname=self.remote), self._arm()]
        self.header_sent = True
        return [SendBytes(data=self._header()), self._arm()]

    def _header(self) -> bytes:
        return stream_header(from_=self.local, to=self.remote)

    def _error_header(self) -> list[Action]:
        # after a TLS restart a stream error must follow a fresh header of ours
        self.header_sent = True
        return [SendBytes(data=self._header())]

    # --- failure reporting --------------------------------------------------------------------

    def _on_failure(self, exc: StreamError) -> list[Action]:
        timeout = exc.condition == "connection-timeout"
        condition = "remote-server-timeout" if timeout else "remote-server-not-found"
        text = exc.text or exc.condition
        return [*self._fail_all(condition, text, retry=timeout), *self._sm_release(text)]

    def _fail_all(self, condition: str, text: str, *, retry: bool = False) -> list[Action]:
        """Tell the owner that the pair and every pending verification failed (once)."""
        if self._failed_reported:
            return []
        self._failed_reported = True
        actions: list[Action] = []
        if self.state != "ESTABLISHED":
            actions.append(
                AuthFailed(
                    local=self.local,
                    remote=self.remote,
                    condition=condition,
                    text=text,
                    retry=retry,
                )
            )
        for originating, receiving, stream_id in self.pending.drain() if self.pending else ():
            actions.append(_verify_error(receiving, originating, stream_id, text))
        for req in self._verify_queue:
            actions.append(_verify_error(req.receiving, req.originating, req.stream_id, text))
        self._verify_queue = ()
        return actions

    # --- handlers ------------------------------------------------------------------------------

    def _on_header(self, ev: Any) -> list[Action]:
        check_header_namespaces(ev)
        self.version = check_version(ev.attrs.get("version"))
        self.stream_id = ev.attrs.get("id") or None
        if not self.version:
            return self._after_features(None)
        self.state = "WAIT_FEATURES"
        return [self._arm()]

    def _on_features(self, st: Any) -> list[Action]:
        if st.ns == STREAM_NS and st.name == "error":
            return self._peer_error(st)
        if st.ns != STREAM_NS or st.name != "features":
            raise RemoteStreamError(
                "unsupported-stanza-type", f"expected stream features, got <{st.name}>"
            )
        return self._after_features(parse_features(st.raw))

    def _after_features(self, features: Features | None) -> list[Action]:
        if not self.tls_active:
            offered = features is not None and features.starttls
            want = self.mode != "false" and self.tls_available
            if offered and want:
                self.state = "WAIT_PROCEED"
                return [SendBytes(data=f"<starttls xmlns='{TLS_NS}'/>".encode()), self._arm()]
            if self.mode in TLS_REQUIRED_MODES:
                raise RemoteStreamError(
                    "policy-violation",
                    f"{self.remote} does not offer STARTTLS but use_starttls={self.mode}",
                )
            if offered and features.starttls_required:
                raise RemoteStreamError(
                    "policy-violation",
                    f"{self.remote} requires STARTTLS but use_starttls={self.mode}",
                )
        self._note_limits(features)
        if self._bidi_due(features):  # XEP-0288 2.2: after TLS, before SASL or dialback
            return [SendBytes(data=request_bytes(self.limits)), *self._after_features(features)]
        self.sm_offered = features is not None and features.sm
        if self._sasl == "done":  # the features of the stream restarted after SASL success
            return self._established("sasl-external")
        if self._sasl_due(features):
            return self._start_sasl(features)
        return self._dialback()

    def _dialback(self) -> list[Action]:
        """Send our db:result (the originating role)."""
        if not self.stream_id:
            raise RemoteStreamError(
                "undefined-condition", "no stream id from the peer: dialback impossible"
            )
        key = make_key(self.secret, self.remote, self.local, self.stream_id)
        self.state = "AUTHENTICATING"
        actions: list[Action] = [
            SendBytes(data=result_bytes(from_=self.local, to=self.remote, key=key)),
            self._arm(),
        ]
        queued, self._verify_queue = self._verify_queue, ()
        for req in queued:
            actions.extend(self._send_verify(req))
        return actions

    def _established(self, method: str) -> list[Action]:
        self.state = "ESTABLISHED"
        actions: list[Action] = [
            SetTimer(seconds=None),
            *self._enable_sm(),  # before Authenticated: queued stanzas follow <enable/>
            Authenticated(local=self.local, remote=self.remote, direction="out", method=method),
        ]
        queued, self._verify_queue = self._verify_queue, ()
        for req in queued:
            actions.extend(self._send_verify(req))
        return actions

    def _on_proceed(self, st: Any) -> list[Action]:
        if st.ns == TLS_NS and st.name == "proceed":
            self.state = "TLS_PENDING"
            return [StartTls(server_side=False, server_hostname=self.remote), self._arm()]
        if st.ns == TLS_NS and st.name == "failure":
            raise RemoteStreamError("undefined-condition", f"{self.remote} refused STARTTLS")
        if st.ns == STREAM_NS and st.name == "error":
            return self._peer_error(st)
        raise RemoteStreamError("unsupported-stanza-type", f"expected <proceed/>, got <{st.name}>")

    def _on_tls_up(self, ev: Any) -> list[Action]:
        self.tls_active = True
        self.header_sent = False
        if self.check_cert is not None:
            self.peer_cert = self.check_cert(tuple(ev.chain), self.remote)
        if self.mode == "required_trusted":
            status = self.peer_cert
            if status is None or not (status.trusted and status.name_matches):
                reason = getattr(status, "reason", None) or "no certificate verification"
                raise RemoteStreamError(
                    "policy-violation", f"certificate of {self.remote} rejected: {reason}"
                )
        self.state = "WAIT_HEADER"
        self.header_sent = True
        return [SendBytes(data=self._header()), self._arm()]

    def _on_stanza(self, st: Any) -> list[Action]:
        if st.ns == DIALBACK_NS:
            db = read_dialback(st.raw)
            if db.kind == "result":
                return self._on_result(db, st)
            return self._on_verify_answer(db, st)
        if st.ns == STREAM_NS and st.name == "error":
            return self._peer_error(st)
        if st.ns == SM_NS:
            return self._on_sm(st)
        if self.bidi and self.state == "ESTABLISHED" and self._reverse_allowed(st):
            sm_in = self.sm_in
            return [Deliver(stanza=st, seq=sm_in.receive() if sm_in is not None else None)]
        actions: list[Action] = [
            Drop(reason=f"<{st.name}> on an outbound stream is not expected", stanza=st)
        ]
        sm_in = self.sm_in
        if sm_in is not None and st.name in DATA_STANZAS:
            ack = sm_in.handled(sm_in.receive())  # dropped is handled
            if ack is not None:
                actions.append(SendBytes(data=ack))
        return actions

    def _on_result(self, db: Any, st: Any) -> list[Action]:
        if db.type is None:
            return self._on_reverse_request(db, st)
        if db.from_.lower() != self.remote or db.to.lower() != self.local:
            return [Drop(reason=f"db:result for {db.from_}->{db.to} is not ours", stanza=st)]
        if self.state != "AUTHENTICATING" or db.type is None:
            return [Drop(reason=f"unexpected db:result type={db.type}", stanza=st)]
        if db.type == "valid":
            return self._established("dialback")
        if db.type == "invalid":
            text = f"{self.remote} rejected our dialback key"
            condition = "remote-server-not-found"
        else:
            cond = db.error_condition or "undefined-condition"
            text = f"{self.remote} answered dialback with error {cond}"
            condition = (
                "service-unavailable" if cond == "policy-violation" else ("remote-server-not-found")
            )
        actions = self._fail_all(condition, text)
        self.state = "CLOSING"
        return [*actions, SetTimer(seconds=None), self._close(text)]

    def _close(self, text: str) -> Close:
        return Close(condition=None, text=text)

    def _on_verify_answer(self, db: Any, st: Any) -> list[Action]:
        if db.type is None:
            return [Drop(reason="db:verify request on an outbound stream", stanza=st)]
        if self.pending is None or not self.pending.take(
            from_=db.from_.lower(), to=db.to.lower(), stream_id=db.id
        ):
            return [
                Drop(reason=f"db:verify answer matches no pending request ({db.id})", stanza=st)
            ]
        return [
            VerifyAnswered(
                receiving=db.to.lower(),
                originating=db.from_.lower(),
                stream_id=db.id or "",
                type=db.type if db.type in ("valid", "invalid") else "error",
                text=db.error_condition,
            )
        ]

    def _on_verify_request(self, req: VerifyRequest) -> list[Action]:
        if self.state == "CLOSING" or self._failed_reported:
            return [
                _verify_error(
                    req.receiving,
                    req.originating,
                    req.stream_id,
                    "the stream to the authoritative server is closing",
                )
            ]
        if self.state in ("AUTHENTICATING", "ESTABLISHED"):
            return self._send_verify(req)
        if self._verify_queue:
            self._verify_queue.append(req)  # type: ignore[union-attr]
        else:
            self._verify_queue = [req]
        return []

    def _send_verify(self, req: VerifyRequest) -> list[Action]:
        if self.pending is None:
            self.pending = PendingVerifications()
        try:
            self.pending.add(
                originating=req.originating, receiving=req.receiving, stream_id=req.stream_id
            )
        except OverflowError as exc:
            return [_verify_error(req.receiving, req.originating, req.stream_id, str(exc))]
        return [
            SendBytes(
                data=verify_bytes(
                    from_=req.receiving, to=req.originating, id=req.stream_id, key=req.key
                )
            )
        ]

    def _peer_error(self, st: Any) -> list[Action]:
        cond, peer_text = parse_stream_error(st.raw) or ("undefined-condition", None)
        text = f"{self.remote} sent stream error {cond}"
        if peer_text:  # the peer's own reason is what the operator needs to read in the bounce
            text += f" ({peer_text})"
        condition = (
            "service-unavailable"
            if cond == "policy-violation"
            else (
                "remote-server-timeout"
                if cond == "connection-timeout"
                else "remote-server-not-found"
            )
        )
        actions = self._fail_all(condition, text, retry=cond in _TRANSIENT_STREAM_ERRORS)
        actions += self._sm_release(text)
        self.state = "CLOSED"
        return [*actions, SetTimer(seconds=None), self._close(text)]

    def _on_peer_close(self, ev: Any) -> list[Action]:
        actions = self._bidi_final_ack()
        actions += self._fail_all(
            "remote-server-not-found", f"{self.remote} closed the stream", retry=True
        )
        actions += self._sm_release(f"{self.remote} closed the stream")
        self.state = "CLOSED"
        return [*actions, SetTimer(seconds=None), self._close("peer closed the stream")]

    def _on_closed(self, ev: Any) -> list[Action]:
        actions = self._fail_all("remote-server-not-found", "stream closed")
        actions += self._sm_release("stream closed")
        self.state = "CLOSED"
        return [*actions, SetTimer(seconds=None), self._close("closed")]

    def _on_lost(self, ev: Any) -> list[Action]:
        actions = self._fail_all("remote-server-not-found", ev.reason, retry=ev.retry)
        actions += self._sm_release(ev.reason)
        self.state = "CLOSED"
        return [*actions, SetTimer(seconds=None)]

    def close(self, reason: str = "closing") -> list[Action]:
        """We close the stream (shutdown or idle): ``</stream:stream>``, wait for the peer's."""
        if self.closed:
            return []
        actions = self._bidi_final_ack()
        actions += self._fail_all("remote-server-not-found", reason)
        if self.sm_out is not None and self.sm_out.unacked:
            actions.append(SendBytes(data=REQUEST))  # the peer's last <a/> settles the rest
        self.state = "CLOSING"
        return [*actions, self._close(reason)]
