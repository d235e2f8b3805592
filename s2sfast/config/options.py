"""The configuration's frozen dataclasses: the contract between config loading and the rest.

Nothing below node.py reads the file; each part takes the dataclass it needs. The loader
(:mod:`s2sfast.config.loader`) builds them from ``mongooseim.toml`` and checks every value on
the way in; a dataclass built in code (tests, the library) takes the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from s2sfast.config.loglevel import DEFAULT_LOGLEVEL
from s2sfast.limits import MAX_FSM_QUEUE, SM_ACK_EVERY, SM_MAX_UNACKED

if TYPE_CHECKING:
    from s2sfast.config.service import ListenService

__all__ = [
    "Config",
    "ListenS2S",
    "ListenTls",
    "S2SOptions",
    "HostPolicy",
    "AddressOverride",
    "OutgoingOptions",
    "DnsOptions",
    "StreamManagementOptions",
    "DEFAULT_CIPHERS",
]

Policy = Literal["allow", "deny"]
StartTls = Literal["false", "optional", "required", "required_trusted"]
#: ``[listen.s2s] tls.mode`` (MongooseIM 6.4): how peers start TLS on the listener
ListenTlsMode = Literal["starttls", "starttls_required", "tls"]

#: MongooseIM's default cipher string for S2S (fast_tls/OpenSSL syntax).
DEFAULT_CIPHERS = "TLSv1.2:TLSv1.3"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenTls:
    """``[listen.s2s.tls]``: how incoming S2S connections start TLS and verify peers."""

    #: MongooseIM 6.4's ``tls.mode``: "starttls" (plain TCP, STARTTLS as ``use_starttls``
    #: says), "starttls_required" (as starttls, and this listener requires STARTTLS even when
    #: ``use_starttls`` is "optional"), "tls" (Direct TLS, XEP-0368: TLS from the first byte,
    #: no STARTTLS step; the port an ``_xmpps-server._tcp`` SRV record points to)
    mode: ListenTlsMode = "starttls"
    cacertfile: str | None = None
    #: None: not set (MongooseIM's default "peer": verify against cacertfile)
    verify_mode: Literal["peer", "none"] | None = None
    #: None: not set (MongooseIM's fast_tls default is "TLSv1.2:TLSv1.3")
    ciphers: str | None = None
    dhfile: str | None = None
    #: fallback server certificate (+ key) for this listener; ``[s2s] certfile`` wins when set
    certfile: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenS2S:
    """One ``[[listen.s2s]]`` listener."""

    port: int
    ip_address: str = "0.0.0.0"
    #: bytes; None means "infinity"
    max_stanza_size: int | None = None
    #: the access rule name ("none" = no shaping)
    shaper: str = "none"
    #: bytes per second resolved from shaper -> [access] -> [shaper.X] max_rate; None = unlimited
    max_rate: int | None = None
    backlog: int = 1024
    #: None means "infinity"
    max_connections: int | None = None
    #: milliseconds a peer has for each negotiation step
    state_timeout: int = 5000
    tls: ListenTls = field(default_factory=ListenTls)
    #: the [shaper.NAME] the access rule resolves to for remote servers (None: no shaping)
    shaper_name: str | None = None
    #: stanzas one connection may hold while its peer is not reading; None: ``[general]
    #: max_fsm_queue``, else s2sfast.limits.MAX_FSM_QUEUE
    max_fsm_queue: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPolicy:
    host: str
    policy: Policy


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressOverride:
    host: str
    ip_address: str
    #: None: use outgoing.port
    port: int | None = None
    #: the address speaks Direct TLS (XEP-0368), as MongooseIM 6.4's ``address[].tls``
    tls: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingOptions:
    port: int = 5269
    ip_versions: tuple[int, ...] = (4, 6)
    #: milliseconds; None means "infinity"
    connection_timeout: int | None = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsOptions:
    #: seconds per lookup
    timeout: int = 10
    #: attempts per lookup
    retries: int = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamManagementOptions:
    """``[s2s] stream_management``: XEP-0198 on S2S streams (an s2sfast addition; MongooseIM
    has XEP-0198 for c2s only, and its ``mod_stream_management`` names lend the knob names).

    ``resend`` chooses what happens to the stanzas a dead stream's peer never acknowledged:
    true (the default) resends them on the next stream to that domain, false bounces each to its
    sender with ``recipient-unavailable``. Either way nothing vanishes silently; the difference
    is which mistake is possible. A stanza the peer handled but whose ack was lost with the
    stream comes out as a duplicate when resent, and as a bounce of a delivered stanza when
    bounced. Resend is the default because the window in doubt is small (at most the stanzas in
    flight plus one ack interval), receivers and clients tolerate a rare duplicate (message ids,
    XEP-0359), and a bounce makes a person or a bot resend anyway, usually later, or drop the
    message; stanzas that still find no stream within the pending deadline bounce regardless.
    """

    #: offer ``<sm/>`` on incoming streams and enable it on outgoing ones when offered
    enabled: bool = True
    #: resend (True) or bounce (False) what a dead stream left unacknowledged
    resend: bool = True
    #: unacknowledged stanzas one stream may hold (MongooseIM's ``buffer_max``)
    buffer_max: int = SM_MAX_UNACKED
    #: stanzas between ack requests (MongooseIM's ``ack_freq``)
    ack_freq: int = SM_ACK_EVERY


@dataclass(frozen=True, slots=True, kw_only=True)
class S2SOptions:
    """The ``[s2s]`` section (or a ``[[host_config]]`` override of it)."""

    default_policy: Policy = "allow"
    host_policy: tuple[HostPolicy, ...] = ()
    use_starttls: StartTls = "false"
    certfile: str | None = None
    #: the dialback secret; load_config fills in 20 random hex characters when unset
    shared: str = ""
    address: tuple[AddressOverride, ...] = ()
    ciphers: str = DEFAULT_CIPHERS
    #: seconds
    max_retry_delay: int = 300
    outgoing: OutgoingOptions = field(default_factory=OutgoingOptions)
    dns: DnsOptions = field(default_factory=DnsOptions)
    #: s2sfast additions (MongooseIM has no certificate authentication for S2S): authenticate
    #: with SASL EXTERNAL (XEP-0178) when TLS is up and the peer's certificate chains to the
    #: trust anchors and names its domain (offered on incoming streams, used on outgoing ones
    #: when offered and our certificate names our domain), dialback otherwise. On by default,
    #: as in Prosody and ejabberd; Prosody 0.12 uses XEP-0198 on S2S only on such streams.
    sasl_external: bool = True
    #: answer a db:result at once (type='valid') when TLS is up and the originating server's
    #: certificate chains to the trust anchors and names the originating domain, instead of
    #: asking its authoritative server over a verify stream (XEP-0344)
    dialback_cert_auth: bool = True
    stream_management: StreamManagementOptions = field(default_factory=StreamManagementOptions)
    #: s2sfast addition (MongooseIM has no XEP-0288): offer bidirectional streams on incoming
    #: connections and ask for them on outgoing ones, so one TCP connection (and one handshake)
    #: carries both directions between two servers. Off by default, as in Prosody (whose
    #: mod_s2s_bidi is opt-in): a peer's stanzas then arrive on our outbound stream too.
    bidi: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole effective configuration s2sfast runs on."""

    hosts: tuple[str, ...]
    listen_s2s: tuple[ListenS2S, ...] = ()
    s2s: S2SOptions = field(default_factory=S2SOptions)
    #: per-host [[host_config]] s2s overrides: host -> complete effective S2SOptions
    host_s2s: dict[str, S2SOptions] = field(default_factory=dict)
    #: where it was loaded from (None for an in-memory config)
    source: str | None = None
    #: ``[[listen.service]]`` component listeners (s2sfast.config.service)
    listen_service: tuple[ListenService, ...] = ()
    #: True when ``[s2s] shared`` was not set and a random secret was made for this load
    shared_generated: bool = False
    #: ``[general] loglevel``, MongooseIM's level names (s2sfast.config.loglevel): how much
    #: ``s2sfast run`` logs unless ``--log-level`` says otherwise
    loglevel: str = DEFAULT_LOGLEVEL
    #: ``[general] max_fsm_queue``: stanzas one connection may hold while its peer is not
    #: reading (a listener's own ``max_fsm_queue`` overrides it); not set: the named default
    #: s2sfast.limits.MAX_FSM_QUEUE (MongooseIM's own default is unlimited)
    max_fsm_queue: int = MAX_FSM_QUEUE

    def s2s_for(self, host: str) -> S2SOptions:
        """The effective [s2s] options for local *host* (its [[host_config]] override, if any)."""
        return self.host_s2s.get(host, self.s2s)
