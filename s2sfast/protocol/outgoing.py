"""The originating side of an S2S stream (sans-IO): our header, the peer's features, STARTTLS,
SASL EXTERNAL when offered (XEP-0178, dialback when it is not or fails), our db:result
(originating role) and the db:verify requests we send (receiving role).

One machine per outbound stream for one (local, remote) domain pair. Events in: the framer's
StreamOpen / Stanza / StreamClose, plus TlsUp, TimerFired, VerifyRequest, ConnectionLost.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from lxml import etree

from s2sfast.limits import MAX_PENDING_RESULTS_PER_STREAM, SM_ACK_TIMEOUT
from s2sfast.protocol.bidi import offered, request_bytes
from s2sfast.protocol.dialback import (
    DIALBACK_NS,
    PendingVerifications,
    make_key,
    parse_dialback,
    result_bytes,
    verify_bytes,
)
from s2sfast.protocol.errors import (
    STREAM_NS,
    LocalStreamError,
    RemoteStreamError,
    StreamError,
    parse_stream_error,
)
from s2sfast.protocol.events import (
    Acked,
    Action,
    Authenticated,
    AuthFailed,
    Close,
    Deliver,
    Drop,
    Handled,
    RestartStream,
    SendBytes,
    SetTimer,
    StartTls,
    Unacked,
    VerifyAnswered,
    VerifyKey,
    VerifyRequest,
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
    SASL_NS,
    auth_bytes,
    parse_mechanisms,
    parse_sasl,
    response_bytes,
)
from s2sfast.protocol.sm import (
    ENABLE,
    REQUEST,
    SM_NS,
    HandledCountTooHigh,
    SmInbound,
    SmOutbound,
    ack_bytes,
    handled_count_too_high_bytes,
    parse_ack,
)
from s2sfast.protocol.stream_limits import StreamLimits, find_limits

__all__ = ["OutgoingMachine", "parse_features", "Features"]

log = logging.getLogger("s2sfast.outgoing")

_REQUIRED = frozenset({"required", "required_trusted"})
_DATA_STANZAS = frozenset({"message", "presence", "iq"})
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


class Features:
    """What a ``<stream:features/>`` offered (only the parts S2S cares about)."""

    __slots__ = ("starttls", "starttls_required", "dialback", "sm", "external", "bidi", "limits")

    def __init__(
        self,
        *,
        starttls: bool,
        starttls_required: bool,
        dialback: bool,
        sm: bool = False,
        external: bool = False,
        bidi: bool = False,
        limits: StreamLimits | None = None,
    ) -> None:
        self.starttls = starttls
        self.starttls_required = starttls_required
        self.dialback = dialback
        #: SASL EXTERNAL among the ``<mechanisms/>`` (XEP-0178)
        self.external = external
        #: XEP-0198 ``<sm xmlns='urn:xmpp:sm:3'/>``
        self.sm = sm
        #: XEP-0288 ``<bidi xmlns='urn:xmpp:features:bidi'/>``
        self.bidi = bidi
        #: XEP-0478: what the peer accepts on this stream (None: not announced)
        self.limits = limits


def parse_features(raw: bytes) -> Features:
    """Parse ``<stream:features>`` (control plane, lxml). Children may come in any order.

    Raises:
        RemoteStreamError: ``bad-format`` when it is not well-formed.
    """
    wrapped = b"<w xmlns:stream='" + STREAM_NS.encode() + b"'>" + raw + b"</w>"
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(wrapped, parser)
    except etree.XMLSyntaxError as exc:
        raise RemoteStreamError("bad-format", f"malformed stream features: {exc}") from exc
    features = root[0] if len(root) else root
    starttls = features.find(f"{{{TLS_NS}}}starttls")
    return Features(
        starttls=starttls is not None,
        starttls_required=starttls is not None
        and starttls.find(f"{{{TLS_NS}}}required") is not None,
        dialback=features.find("{urn:xmpp:features:dialback}dialback") is not None,
        sm=features.find(f"{{{SM_NS}}}sm") is not None,
        external=EXTERNAL in parse_mechanisms(features),
        bidi=offered(features),
        limits=find_limits(features),
    )


class OutgoingMachine(Machine):
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
        self.policy_allows = policy_allows
        #: XEP-0288: (local, peer domain) pairs the peer authenticated by dialback on this
        #: stream besides (remote -> local), and the peer domains whose keys are being verified
        self.reverse_pairs: set[tuple[str, str]] = set()
        self._reverse_pending: set[str] = set()
        #: dialback requests the peer made on this stream (the router's verify index)
        self.reverse_requests = 0
        #: XEP-0288: we want a bidirectional stream; ``bidi`` once we asked for one
        self.bidi_wanted = bidi
        self.bidi = False
        #: XEP-0478: what we accept (sent in <bidi/>) and what the peer announced
        self.limits = limits
        self.peer_limits: StreamLimits | None = None
        #: the peer's max-bytes (None: not announced): the router bounces larger stanzas
        self.peer_max_bytes: int | None = None
        self.sasl_external = sasl_external
        #: SASL EXTERNAL: None (not tried), "pending", "done" (restarted, authenticated), "failed"
        #: (what the peer said is in sasl_failure)
        self._sasl: str | None = None
        self._features: Features | None = None
        self.sasl_failure: str | None = None
        self.sm_options = sm if sm is not None and sm.enabled else None
        self.local = local.lower()
        self.remote = remote.lower()
        self.mode = use_starttls
        self.secret = secret
        self.tls_available = tls_available
        self.check_cert = check_cert
        self.tls_active = False
        #: the connection is Direct TLS (XEP-0368), set by start()
        self.direct_tls = False
        self.peer_cert: Any = None
        self.stream_id: str | None = None
        self.version = True
        self.pending = PendingVerifications()
        self._verify_queue: list[VerifyRequest] = []
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

    # --- XEP-0198 ------------------------------------------------------------------------------

    @property
    def window_full(self) -> bool:
        """Whether the unacked window is full: hold further stanzas until an ack (Acked)."""
        return self.sm_out is not None and self.sm_out.window_full

    def sent(self, raw: bytes) -> list[Action]:
        """A stanza was just written to this stream (the data path calls this directly: no
        event dispatch per stanza). With XEP-0198 on, it is counted and kept until acked.

        Returns:
            An ``<r/>`` when the request policy asks for one, and the ack timer when the
            unacked queue was empty.
        """
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

    def _on_ack_timer(self, ev: Any) -> list[Action]:
        """Unacked output for request_after seconds: ask (again) and keep the timer going."""
        sm = self.sm_out
        if sm is None or not sm.unacked:
            return []
        self._sm_silent = self._sm_silent + 1 if sm.awaiting else 0
        if self._sm_silent * sm.request_after >= SM_ACK_TIMEOUT:
            raise LocalStreamError(
                "connection-timeout", f"no XEP-0198 ack from {self.remote} for {SM_ACK_TIMEOUT:g} s"
            )
        sm.requested()
        return [SendBytes(data=REQUEST), SetTimer(seconds=sm.request_after)]

    def _enable_sm(self) -> list[Action]:
        """After dialback succeeded (XEP-0198 section 3): <enable/> when the peer offered it.

        Stanzas written from now on are counted: the peer starts its count on reading
        <enable/>, so they need not wait for <enabled/>.
        """
        opts = self.sm_options
        if opts is None or not self.sm_offered:
            return []
        self.sm_out = SmOutbound(max_unacked=opts.buffer_max, request_every=opts.ack_freq)
        return [SendBytes(data=ENABLE)]

    def _on_sm(self, st: Any) -> list[Action]:
        name = st.name
        sm = self.sm_out
        if sm is None:
            return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> without <enable/>", stanza=st)]
        if name == "a":
            try:
                count = sm.ack(parse_ack(st.raw))
            except HandledCountTooHigh as exc:
                return self._sm_fail(exc)
            self._sm_silent = 0
            actions: list[Action] = [Acked(count=count)] if count else []
            if self.state == "ESTABLISHED":
                actions.append(SetTimer(seconds=sm.request_after if sm.unacked else None))
            return actions
        if name == "enabled":
            self.sm_in = SmInbound()
            log.info("stream management enabled on %s -> %s", self.local, self.remote)
            return []
        if name == "failed":
            # the peer counts nothing: what we wrote is as good as on any plain stream
            count = len(sm.take_unacked())
            self.sm_out = None
            log.info("%s refused stream management", self.remote)
            return [Acked(count=count), SetTimer(seconds=None)]
        if name == "r":
            sm_in = self.sm_in
            return [SendBytes(data=ack_bytes(sm_in.h if sm_in is not None else 0))]
        return [Drop(reason=f"<{name} xmlns='{SM_NS}'/> is not used on S2S", stanza=st)]

    def _sm_release(self, reason: str) -> list[Action]:
        """The stream is over: hand back what the peer never acknowledged (once)."""
        sm, self.sm_out = self.sm_out, None
        if sm is None or not sm.unacked:
            return []
        raws = tuple(sm.take_unacked())
        log.warning(
            "%s -> %s: stream ended with %d unacknowledged stanza(s): %s",
            self.local,
            self.remote,
            len(raws),
            reason,
        )
        return [Unacked(local=self.local, remote=self.remote, raws=raws, reason=reason)]

    def _sm_fail(self, exc: HandledCountTooHigh) -> list[Action]:
        """XEP-0198 section 4: undefined-condition with <handled-count-too-high/>, then close."""
        self.error = exc
        self.state = "ERROR"
        return [
            SendBytes(data=handled_count_too_high_bytes(exc)),
            *self._sm_release(exc.text or "handled-count-too-high"),
            SetTimer(seconds=None),
            Close(condition=None, text=f"stream error undefined-condition: {exc.text}"),
        ]

    def _on_closing_stanza(self, st: Any) -> list[Action]:
        """While we close: the peer's last <a/> still counts (XEP-0198 section 4)."""
        if st.ns == SM_NS and st.name == "a" and self.sm_out is not None:
            return self._on_sm(st)
        return []

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
        for originating, receiving, stream_id in self.pending.drain():
            actions.append(
                VerifyAnswered(
                    receiving=receiving,
                    originating=originating,
                    stream_id=stream_id,
                    type="error",
                    text=text,
                )
            )
        for req in self._verify_queue:
            actions.append(
                VerifyAnswered(
                    receiving=req.receiving,
                    originating=req.originating,
                    stream_id=req.stream_id,
                    type="error",
                    text=text,
                )
            )
        self._verify_queue.clear()
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
            if self.mode in _REQUIRED:
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
        if (
            self.sasl_external
            and self.tls_active
            and self._sasl is None
            and features is not None
            and features.external
        ):
            # XEP-0178 section 2 step 6: our domain as the authorization identity
            self._sasl = "pending"
            self._features = features
            self.state = "WAIT_SASL"
            return [SendBytes(data=auth_bytes(self.local)), self._arm()]
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
        queued, self._verify_queue = self._verify_queue, []
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
        queued, self._verify_queue = self._verify_queue, []
        for req in queued:
            actions.extend(self._send_verify(req))
        return actions

    def _on_sasl(self, st: Any) -> list[Action]:
        """SASL EXTERNAL's outcome: success restarts the stream (RFC 6120 6.4.6), failure falls
        back to dialback when the peer offered it."""
        if st.ns == STREAM_NS and st.name == "error":
            return self._peer_error(st)
        name = st.name if st.ns == SASL_NS else None
        if name == "challenge":  # we sent an initial response; a server may still ask again
            return [SendBytes(data=response_bytes(self.local)), self._arm()]
        if name == "success":
            self._sasl = "done"
            self.header_sent = True
            self.state = "WAIT_HEADER"
            log.info(
                "SASL EXTERNAL %s -> %s succeeded id=%s", self.local, self.remote, self.stream_id
            )
            return [RestartStream(), SendBytes(data=self._header()), self._arm()]
        if name != "failure":
            raise RemoteStreamError(
                "unsupported-stanza-type", f"expected a SASL outcome, got <{st.name}>"
            )
        self._sasl = "failed"
        self.sasl_failure = parse_sasl(st.raw).condition or "failure"
        if self._features is None or not self._features.dialback:
            raise RemoteStreamError(
                "not-authorized",
                f"{self.remote} refused SASL EXTERNAL ({self.sasl_failure}) and offers no dialback",
            )
        log.info(
            "SASL EXTERNAL %s -> %s failed (%s): falling back to dialback id=%s",
            self.local,
            self.remote,
            self.sasl_failure,
            self.stream_id,
        )
        return self._dialback()

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
            try:
                db = parse_dialback(st.raw)
            except ValueError as exc:
                raise RemoteStreamError("bad-format", str(exc)) from exc
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
        if sm_in is not None and st.name in ("message", "presence", "iq"):
            ack = sm_in.handled(sm_in.receive())  # dropped is handled
            if ack is not None:
                actions.append(SendBytes(data=ack))
        return actions

    # --- XEP-0288 and XEP-0478 ------------------------------------------------------------------

    def _note_limits(self, features: Features | None) -> None:
        """The peer's limits hold until its next features (XEP-0478 section 4)."""
        if features is None:
            return
        self.peer_limits = features.limits
        self.peer_max_bytes = features.limits.max_bytes if features.limits is not None else None

    def _bidi_due(self, features: Features | None) -> bool:
        """Ask for bidi once: offered, wanted, and no authentication started yet."""
        if self.bidi or not self.bidi_wanted or features is None or not features.bidi:
            return False
        if self._sasl is not None:
            return False
        self.bidi = True
        log.info("requesting a bidirectional stream %s -> %s (XEP-0288)", self.local, self.remote)
        return True

    def _reverse_allowed(self, st: Any) -> bool:
        """A stanza from the peer on our bidi stream: only for the inverse of our pair (what we
        authenticated: the peer sends from *remote* to *local*, XEP-0288 section 2.2)."""
        if st.name not in _DATA_STANZAS or st.ns != SERVER_NS or st.to_domain != self.local:
            return False
        frm = st.from_domain
        return frm == self.remote or (self.local, frm) in self.reverse_pairs

    def _on_reverse_request(self, db: Any, st: Any) -> list[Action]:
        """XEP-0288 section 2.2: on a bidi stream the peer may authenticate another of its
        domains towards ours by dialback; we are the receiving server and ask that domain's
        authoritative server (never on this stream), answering with XEP-0220 errors."""
        if not self.bidi or self.state != "ESTABLISHED":
            return [Drop(reason="db:result request on an outbound stream", stanza=st)]
        local, originating = db.to.lower(), db.from_.lower()

        def error(condition: str) -> list[Action]:
            log.info(
                "dialback request %s -> %s on bidi stream %s refused: %s",
                originating,
                local,
                self.stream_id,
                condition,
            )
            answer = result_bytes(
                from_=local or self.local, to=originating, type="error", error_condition=condition
            )
            return [SendBytes(data=answer)]

        if local != self.local:
            return error("item-not-found")  # XEP-0220 section 2.4: not a domain of ours here
        if not valid_domain(originating) or not db.key:
            return error("bad-request")
        if self.policy_allows is not None and not self.policy_allows(local, originating):
            return error("policy-violation")
        if originating in self._reverse_pending:
            return [Drop(reason=f"dialback request for {originating} already pending", stanza=st)]
        if len(self._reverse_pending) >= MAX_PENDING_RESULTS_PER_STREAM:
            return error("resource-constraint")
        self._reverse_pending.add(originating)
        self.reverse_requests += 1
        return [
            VerifyKey(
                receiving=local,
                originating=originating,
                stream_id=self.stream_id or "",
                key=db.key,
            )
        ]

    def _on_reverse_verified(self, ev: VerifyResult) -> list[Action]:
        originating = ev.originating
        if (
            ev.stream_id != self.stream_id
            or ev.receiving != self.local
            or originating not in self._reverse_pending
        ):
            return [Drop(reason=f"unexpected verify result for {originating} on {ev.stream_id}")]
        self._reverse_pending.discard(originating)
        if ev.type == "valid":
            self.reverse_pairs.add((self.local, originating))
            log.info(
                "bidi: %s -> %s authenticated by dialback on our stream %s",
                originating,
                self.local,
                self.stream_id,
            )
            answer = result_bytes(from_=self.local, to=originating, type="valid")
        elif ev.type == "invalid":
            answer = result_bytes(from_=self.local, to=originating, type="invalid")
        else:
            answer = result_bytes(
                from_=self.local,
                to=originating,
                type="error",
                error_condition="remote-server-not-found",
            )
        return [SendBytes(data=answer)]

    def _bidi_final_ack(self) -> list[Action]:
        """XEP-0198 on a bidi stream: our last <a/> for the peer's stanzas before we close."""
        if not self.bidi or self.sm_in is None or self.state != "ESTABLISHED":
            return []
        return [SendBytes(data=self.sm_in.final_ack())]

    def _on_handled(self, ev: Handled) -> list[Action]:
        """XEP-0198 on a bidi stream: an inbound stanza we delivered has been handled."""
        sm_in = self.sm_in
        ack = sm_in.handled(ev.seq) if sm_in is not None else None
        return [SendBytes(data=ack)] if ack is not None else []

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
        if not self.pending.take(from_=db.from_.lower(), to=db.to.lower(), stream_id=db.id):
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
                VerifyAnswered(
                    receiving=req.receiving,
                    originating=req.originating,
                    stream_id=req.stream_id,
                    type="error",
                    text="the stream to the authoritative server is closing",
                )
            ]
        if self.state in ("AUTHENTICATING", "ESTABLISHED"):
            return self._send_verify(req)
        self._verify_queue.append(req)
        return []

    def _send_verify(self, req: VerifyRequest) -> list[Action]:
        try:
            self.pending.add(
                originating=req.originating, receiving=req.receiving, stream_id=req.stream_id
            )
        except OverflowError as exc:
            return [
                VerifyAnswered(
                    receiving=req.receiving,
                    originating=req.originating,
                    stream_id=req.stream_id,
                    type="error",
                    text=str(exc),
                )
            ]
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

    def _ignore(self, ev: Any) -> list[Action]:
        return []

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
