"""SASL EXTERNAL (XEP-0178) in the two negotiation machines (sans-IO glue around sasl.py).

:class:`IncomingSasl` is the receiving server: it offers EXTERNAL when the peer's certificate
proves the domain its header claims, answers ``<auth/>`` (an empty ``<challenge/>`` when the
initial response is missing), ``<response/>`` and ``<abort/>``, and on success restarts the
stream with the pair authenticated. :class:`OutgoingSasl` is the initiating server: it sends
``<auth/>`` with our domain as the authorization identity when EXTERNAL is offered after TLS,
and on ``<failure/>`` falls back to dialback when the peer offered it too.

The classes are mixins of IncomingMachine / OutgoingMachine (they use the machine's attributes
and helpers); ``_on_sasl`` is named in each machine's transition table or stanza dispatch.
"""

from __future__ import annotations

import logging
from typing import Any

from s2sfast.protocol.errors import STREAM_NS, RemoteStreamError
from s2sfast.protocol.events import Action, Authenticated, RestartStream, SendBytes
from s2sfast.protocol.negotiation import new_stream_id
from s2sfast.protocol.sasl import (
    EXTERNAL,
    MAX_ATTEMPTS,
    SASL_NS,
    auth_bytes,
    challenge_bytes,
    failure_bytes,
    parse_sasl,
    response_bytes,
    success_bytes,
)

__all__ = ["IncomingSasl", "OutgoingSasl"]

#: each machine's lines keep its own logger (docs/logs.md names them): IncomingSasl logs to
#: ``log``, OutgoingSasl to ``_log``
log = logging.getLogger("s2sfast.incoming")
_log = logging.getLogger("s2sfast.outgoing")


class IncomingSasl:
    """The receiving server's SASL EXTERNAL."""

    __slots__ = ()  # a mixin of IncomingMachine: its fields are the machine's slots

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
        self._authorise((local, remote))
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


class OutgoingSasl:
    """The initiating server's SASL EXTERNAL."""

    __slots__ = ()  # a mixin of OutgoingMachine: its fields are the machine's slots

    def _sasl_due(self, features: Any) -> bool:
        """Try EXTERNAL: wanted, TLS up, not tried yet on this connection, and offered."""
        return bool(
            self.sasl_external
            and self.tls_active
            and self._sasl is None
            and features is not None
            and features.external
        )

    def _start_sasl(self, features: Any) -> list[Action]:
        """``<auth/>``; XEP-0178 section 2 step 6: our domain as the authorization identity."""
        self._sasl = "pending"
        self._features = features
        self.state = "WAIT_SASL"
        return [SendBytes(data=auth_bytes(self.local)), self._arm()]

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
            _log.info(
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
        _log.info(
            "SASL EXTERNAL %s -> %s failed (%s): falling back to dialback id=%s",
            self.local,
            self.remote,
            self.sasl_failure,
            self.stream_id,
        )
        return self._dialback()
