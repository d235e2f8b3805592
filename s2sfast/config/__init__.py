"""MongooseIM's TOML configuration as frozen dataclasses: the public face of s2sfast.config.

:func:`load_config` reads a ``mongooseim.toml`` once; everything below the node takes the
dataclass it needs (nothing else reads the file). Modules: ``options`` (the dataclasses),
``loader`` (the TOML walk), ``checks`` (value checks with dotted-path errors), ``service``
(``[[listen.service]]``), ``dump`` (the effective configuration back as plain data), ``errors``
(:class:`ConfigError`).
"""

from __future__ import annotations

from s2sfast.config.errors import ConfigError
from s2sfast.config.loader import config_from_dict, config_to_dict, load_config
from s2sfast.config.options import (
    AddressOverride,
    Config,
    DnsOptions,
    HostPolicy,
    ListenS2S,
    ListenTls,
    OutgoingOptions,
    S2SOptions,
    StreamManagementOptions,
)
from s2sfast.config.service import ListenService, parse_listen_service

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
    "ListenService",
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_listen_service",
]
