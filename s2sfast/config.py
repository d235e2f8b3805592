"""MongooseIM's TOML configuration ([general] hosts, [[listen.s2s]], [s2s]) as frozen dataclasses.

The dataclasses below are the contract between config loading and the rest of s2sfast: nothing
below node.py reads the file, each part takes the dataclass it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Config",
    "ListenS2S",
    "ListenTls",
    "S2SOptions",
    "HostPolicy",
    "AddressOverride",
    "OutgoingOptions",
    "DnsOptions",
    "ConfigError",
    "load_config",
]

Policy = Literal["allow", "deny"]
StartTls = Literal["false", "optional", "required", "required_trusted"]


class ConfigError(Exception):
    """An invalid configuration: the message names the option's dotted path, the bad value
    and what was expected (e.g. ``s2s.outgoing.ip_versions: ...``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenTls:
    """``[listen.s2s.tls]``: how incoming S2S connections verify peers."""

    cacertfile: str | None = None
    verify_mode: Literal["peer", "none"] | None = None
    ciphers: str | None = None
    dhfile: str | None = None


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
class S2SOptions:
    """The ``[s2s]`` section (or a ``[[host_config]]`` override of it)."""

    default_policy: Policy = "allow"
    host_policy: tuple[HostPolicy, ...] = ()
    use_starttls: StartTls = "false"
    certfile: str | None = None
    #: the dialback secret; load_config fills in 20 random hex characters when unset
    shared: str = ""
    address: tuple[AddressOverride, ...] = ()
    ciphers: str = "TLSv1.2:TLSv1.3"
    #: seconds
    max_retry_delay: int = 300
    outgoing: OutgoingOptions = field(default_factory=OutgoingOptions)
    dns: DnsOptions = field(default_factory=DnsOptions)


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

    def s2s_for(self, host: str) -> S2SOptions:
        """The effective [s2s] options for local *host* (its [[host_config]] override, if any)."""
        return self.host_s2s.get(host, self.s2s)
