"""Limits that keep one hostile peer from costing a node more than a bounded share.

Every limit here is a named default with its rationale (STYLE rule 8). The ones MongooseIM has
an option for come from the config instead (``[[listen.s2s]] max_stanza_size``,
``state_timeout``, ``max_connections``, the shaper); these are the ones it has none for.
:class:`ConnectionLimiter` is the sans-IO bookkeeping for the connection caps: it decides,
the asyncio layer (node.py) acts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = [
    "PRE_AUTH_MAX_STANZA",
    "IDLE_TIMEOUT",
    "MAX_NEGOTIATING_PER_ADDRESS",
    "MAX_PENDING_RESULTS_PER_STREAM",
    "MAX_PENDING_VERIFICATIONS",
    "MAX_WRITE_BUFFER",
    "WRITE_STALL_TIMEOUT",
    "HIGH_WATER",
    "LOW_WATER",
    "MAX_FSM_QUEUE",
    "MAX_QUEUE_BYTES",
    "COMPONENT_STALL_TIMEOUT",
    "COMPONENT_DRAIN_QUIET",
    "COMPONENT_DRAIN_TIMEOUT",
    "COMPONENT_CLOSE_TIMEOUT",
    "BOUNCE_LOG_INTERVAL",
    "PENDING_BUDGET",
    "PENDING_MIN_SHARE",
    "PENDING_HOLD_BYTES",
    "MAX_SERVED_PAIRS",
    "SM_MAX_UNACKED",
    "SM_ACK_EVERY",
    "SM_ACK_AFTER",
    "SM_ACK_TIMEOUT",
    "pre_auth_limit",
    "Refusal",
    "ConnectionLimiter",
]

#: bytes per top-level element until the stream has an authorised domain pair. The largest
#: honest pre-auth elements are stream features (a few hundred bytes) and a db:result or
#: db:verify with two domains (RFC 7622: at most 1023 octets each) and a 64-digit key, so
#: 10 KiB has ample headroom while an unauthenticated peer costs at most this much buffer
#: (Prosody and ejabberd apply their stanza limits before auth too; MongooseIM's
#: max_stanza_size defaults to infinity, which is why this exists).
PRE_AUTH_MAX_STANZA = 10 * 1024

#: seconds an authenticated stream may stay silent inbound (whitespace keepalives count as
#: traffic) before we close it with connection-timeout. ejabberd's s2s_timeout defaults to
#: one hour; peers keep streams alive with keepalives far more often (ours: 60 s).
IDLE_TIMEOUT = 3600.0

#: connections from one source address that may be negotiating (not yet authenticated) at
#: once. An honest server opens one stream per (its domain, our domain) pair plus short
#: dialback verify streams, and negotiates them in milliseconds; a large hosting provider
#: with many domains behind one address stays far below this. Authenticated streams do not
#: count: only max_connections bounds those.
MAX_NEGOTIATING_PER_ADDRESS = 64

#: db:result claims on one incoming stream awaiting the authoritative server's verdict.
#: Piggybacking (XEP-0220 section 2.5) carries one claim per (from, to) pair; honest peers
#: have a handful in flight. Each claim costs us a DNS lookup and possibly an outbound
#: connection, so the bound is what stops a db:result flood from fanning out.
MAX_PENDING_RESULTS_PER_STREAM = 16

#: dialback verifications in flight on the whole node (every stream's claims together);
#: beyond it new claims are answered type='error' (resource-constraint) at once.
MAX_PENDING_VERIFICATIONS = 1024

#: bytes queued for one peer, the unit of the write-side bounds: stream.py keeps senders
#: waiting above a smaller high-water mark (backpressure) and fails a stream whose buffer
#: passes a hard cap of a few times this (writers that ignore backpressure). 1 MiB is
#: ~1,000 typical stanzas.
MAX_WRITE_BUFFER = 1024 * 1024

#: seconds our write buffer may stay above its high-water mark without draining before we call
#: the peer deaf and fail the stream (resource-constraint); a reading server drains it in
#: milliseconds. Judged by lack of progress, never by one sample: an honest peer that reads
#: slower than a burst arrives still drains the backlog, and a burst must not be cut (the
#: interop suite lost 12,000 stanzas to Prosody that way). TCP itself gives up on a silent
#: peer after minutes; 30 s is far beyond any scheduling hiccup of a live server.
WRITE_STALL_TIMEOUT = 30.0

#: XEP-0198: stanzas one outbound stream may have sent and not yet seen acknowledged (each is
#: kept, raw, to be resent or bounced if the stream dies). Past it the router holds new stanzas
#: in the domain's pending queue until an ack opens the window. The window must cover rate x
#: ack round trip: 8,000 stanzas/s over a 100 ms path keeps ~800 + one request interval in
#: flight; 5,000 leaves room for a peer that acks late, and at ~0.5 KiB a stanza costs ~2.5 MiB
#: per stream at worst. ``[s2s] stream_management.buffer_max`` sets it (MongooseIM's name for
#: its c2s bound, whose default of 100 is sized for one client, not a federation link).
SM_MAX_UNACKED = 5000

#: XEP-0198: ask the peer for an ack (``<r/>``) after this many stanzas since the last request.
#: One 26-byte ``<r/>`` per 100 stanzas is noise on the wire, and at most one request interval
#: of stanzas is in doubt on top of those in flight. ``[s2s] stream_management.ack_freq``.
SM_ACK_EVERY = 100

#: XEP-0198: seconds of unacknowledged output before we ask for an ack anyway (a quiet stream
#: that sent fewer than SM_ACK_EVERY stanzas). Short enough that a low-rate stream holds its
#: stanzas briefly and learns of a dead peer within a second or two; long enough that a busy
#: stream never hits it (the count asks first).
SM_ACK_AFTER = 1.0

#: XEP-0198: seconds an ack request may stay unanswered while stanzas are unacknowledged before
#: the outbound stream is failed (connection-timeout) and its stanzas resent or bounced: a peer
#: that reads but never acks would otherwise hold our senders (they wait for the window) and
#: the stanzas forever. The same 30 s as WRITE_STALL_TIMEOUT, for the same reason: a live
#: server answers in milliseconds, a scheduling hiccup never lasts this long.
SM_ACK_TIMEOUT = 30.0

#: bytes in a connection's transport buffer above which asyncio pauses our writing (and we
#: hold further stanzas in our own counted queue), and below which it resumes. 256 KiB is
#: ~1,000 typical stanzas: enough to keep a loopback or LAN pipe full between two loop turns
#: (a 10 Gbit/s link moves 256 KiB in 0.2 ms), small enough that 1,000 congested streams
#: cost at most 256 MiB. LOW leaves room for a burst before the next pause.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

#: stanzas one connection (S2S stream or component) may hold in our own queue while its peer is
#: not reading, when neither ``[general] max_fsm_queue`` nor the listener's ``max_fsm_queue``
#: says otherwise (MongooseIM's own default is no limit, which is how a stuck component made a
#: daemon grow to 1.4 GiB). The sources feeding a congested connection stop being read at
#: once, so this queue only takes what was already read: one read of each source (<= 256 KiB
#: of stanzas each). 10,000 stanzas of ~1 KiB bound it at ~10 MiB per connection; past it
#: stanzas bounce with resource-constraint.
MAX_FSM_QUEUE = 10_000
#: the same queue's bound in bytes, for large stanzas (it bites first above 1.6 KiB a stanza).
MAX_QUEUE_BYTES = 16 * 1024 * 1024

#: seconds a component may leave its stream congested (not reading what we write) before we
#: close it with a resource-constraint stream error and bounce what waits for it. Below
#: WRITE_STALL_TIMEOUT so that a stuck component is cut before the S2S peers feeding it (whose
#: streams we stop reading meanwhile) call our side deaf; a live component that is merely slow
#: still drains its buffer within seconds.
COMPONENT_STALL_TIMEOUT = 15.0

#: shutdown (SIGTERM/SIGINT): seconds without a byte from a component after which what it sent
#: before the shutdown counts as read. Its reading resumes at once (backpressure may have
#: paused it, leaving megabytes in the kernel's socket buffers); a loop turn reads 256 KiB, so
#: a backlog of a few MiB is read within tens of milliseconds even on a busy machine, and
#: 0.25 s of silence means the kernel holds nothing more of it.
COMPONENT_DRAIN_QUIET = 0.25
#: shutdown: the longest each of the three component drains lasts: before the S2S streams
#: close (reading a component that never falls silent, a live flood; then cutting one that
#: stopped reading while S2S can still carry its bounces), and before the component streams
#: close (silent again, and caught up with the bounces we owe them; one still behind is cut and
#: what it never got bounced). Everything read meanwhile is routed or bounced on the still-open
#: stream. 5 s reads ~1 GB of loopback backlog; the three, the daemon's DRAIN_TIMEOUT S2S drain
#: (7 s + 3 s of closing) and COMPONENT_CLOSE_TIMEOUT + 1 keep SIGTERM-to-exit at 28 s at most,
#: under the unit file's TimeoutStopSec of 30 s.
COMPONENT_DRAIN_TIMEOUT = 5.0
#: shutdown: seconds we wait, after our ``</stream:stream>``, for the component's (RFC 6120
#: 4.4: the closing side keeps reading until the peer closes too) before we cut the TCP
#: connection. By then the component has read what we owed it (the drain waited for that), so
#: its answer is one round trip away; 2 s is the S2S streams' CLOSE_TIMEOUT too.
COMPONENT_CLOSE_TIMEOUT = 2.0
#: seconds between INFO lines about bounces of one kind to one destination: the first bounce
#: is logged at once, the rest of a flood as one line with its count per interval (each stanza
#: still at DEBUG). A flood bounces ~100,000 stanzas/s; a line each would cost more CPU than
#: the bounces, and drown the log.
BOUNCE_LOG_INTERVAL = 1.0

#: bytes of stanzas the whole node queues for remote domains whose stream is not up (connecting,
#: authenticating, backing off). Sized to ride out a peer restart at full rate: 30,000
#: stanzas/s of ~200 bytes is 6 MB/s, so 64 MiB carries ~10 s of a saturated link (or
#: minutes of ordinary traffic) before anything bounces; senders are held back well before.
PENDING_BUDGET = 64 * 1024 * 1024
#: the share of PENDING_BUDGET one remote domain can always have, however many domains wait:
#: each domain gets max(budget / waiting domains, this), so one dead domain cannot starve the
#: others and a domain alone may use the whole budget.
PENDING_MIN_SHARE = 4 * 1024 * 1024
#: bytes a domain's pending queue takes before the senders feeding it are held (their sockets
#: not read, Node.send waiting) until its stream is up: backpressure long before anything
#: bounces. 1 MiB is ~5,000 typical stanzas, a few reads of a busy source; the budget above is
#: what absorbs the reads already under way from every source and domain, so a peer restart
#: costs the senders a pause, not bounces.
PENDING_HOLD_BYTES = 1024 * 1024

#: (local, remote) pairs the router remembers as once authenticated, so that a refusal of one of
#: them (a restarting peer answering host-unknown until its components are back) is retried
#: within the pending deadline instead of bouncing the queue. ~100 bytes each: 100,000 pairs
#: cost ~10 MiB, beyond the pair count of any federation this node serves; past it, new pairs
#: are simply not remembered (their refusals bounce at once, as before).
MAX_SERVED_PAIRS = 100_000


def pre_auth_limit(max_stanza_size: int | None) -> int:
    """The framer limit for a stream that has no authorised pair yet.

    The smaller of :data:`PRE_AUTH_MAX_STANZA` and the configured ``max_stanza_size``
    (``None`` = infinity); the configured limit applies once the stream is authenticated.
    """
    if max_stanza_size is None:
        return PRE_AUTH_MAX_STANZA
    return min(PRE_AUTH_MAX_STANZA, max_stanza_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a new connection is refused: the stream error to send, and its text."""

    condition: str
    text: str


class ConnectionLimiter:
    """Counts a listener's connections: all of them, and the negotiating ones per address.

    Args:
        max_connections: ``[[listen.s2s]] max_connections`` (None: infinity).
        per_address: negotiating connections allowed per source address (None: no cap).
    """

    def __init__(
        self,
        max_connections: int | None,
        per_address: int | None = MAX_NEGOTIATING_PER_ADDRESS,
    ) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self.total = 0
        self._negotiating: Counter[str] = Counter()

    def admit(self, address: str) -> Refusal | None:
        """Count a new connection from *address*; a Refusal (not counted) when over a cap."""
        if self.max_connections is not None and self.total >= self.max_connections:
            return Refusal(
                condition="resource-constraint",
                text=f"listener is at max_connections ({self.max_connections})",
            )
        if self.per_address is not None and self._negotiating[address] >= self.per_address:
            return Refusal(
                condition="policy-violation",
                text=f"too many unauthenticated connections from {address}",
            )
        self.total += 1
        self._negotiating[address] += 1
        return None

    def authenticated(self, address: str) -> None:
        """The connection from *address* authenticated: it no longer counts per address."""
        self._forget(address)

    def closed(self, address: str, *, was_authenticated: bool) -> None:
        """A counted connection closed."""
        self.total = max(0, self.total - 1)
        if not was_authenticated:
            self._forget(address)

    def negotiating(self, address: str) -> int:
        return self._negotiating[address]

    def _forget(self, address: str) -> None:
        if self._negotiating[address] <= 1:
            self._negotiating.pop(address, None)
        else:
            self._negotiating[address] -= 1
