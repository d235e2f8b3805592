"""The effective configuration back as plain data keyed like the TOML (``check-config --json``).

Kept out of config.py, which reads the file; this only walks the frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2sfast.config.loader import Config, ListenS2S, S2SOptions

__all__ = ["config_to_dict"]


def _inf(value: int | None) -> int | str:
    return "infinity" if value is None else value


def _s2s_dict(o: S2SOptions) -> dict[str, Any]:
    return {
        "default_policy": o.default_policy,
        "host_policy": [{"host": p.host, "policy": p.policy} for p in o.host_policy],
        "use_starttls": o.use_starttls,
        "certfile": o.certfile,
        "shared": o.shared,
        "address": [
            {"host": a.host, "ip_address": a.ip_address, "port": a.port, "tls": a.tls}
            for a in o.address
        ],
        "ciphers": o.ciphers,
        "max_retry_delay": o.max_retry_delay,
        "outgoing": {
            "port": o.outgoing.port,
            "ip_versions": list(o.outgoing.ip_versions),
            "connection_timeout": _inf(o.outgoing.connection_timeout),
        },
        "dns": {"timeout": o.dns.timeout, "retries": o.dns.retries},
        "sasl_external": o.sasl_external,
        "dialback_cert_auth": o.dialback_cert_auth,
        "bidi": o.bidi,
        "stream_management": {
            "enabled": o.stream_management.enabled,
            "resend": o.stream_management.resend,
            "buffer_max": o.stream_management.buffer_max,
            "ack_freq": o.stream_management.ack_freq,
        },
    }


def _listener_dict(lst: ListenS2S) -> dict[str, Any]:
    out = {
        "port": lst.port,
        "ip_address": lst.ip_address,
        "max_stanza_size": _inf(lst.max_stanza_size),
        "shaper": lst.shaper,
        "backlog": lst.backlog,
        "max_connections": _inf(lst.max_connections),
        "state_timeout": lst.state_timeout,
        "tls": {
            "mode": lst.tls.mode,
            "cacertfile": lst.tls.cacertfile,
            "verify_mode": lst.tls.verify_mode,
            "ciphers": lst.tls.ciphers,
            "dhfile": lst.tls.dhfile,
            "certfile": lst.tls.certfile,
        },
    }
    if lst.max_fsm_queue is not None:  # not set: [general] max_fsm_queue applies
        out["max_fsm_queue"] = lst.max_fsm_queue
    return out


def _service_dict(service: Any) -> dict[str, Any]:
    out = {}
    for name in getattr(service, "__dataclass_fields__", {}):
        value = getattr(service, name)
        if name == "max_fsm_queue" and value is None:
            continue  # not set: [general] max_fsm_queue applies
        if name == "password":
            value = "(set)"
        elif name in ("max_stanza_size", "max_rate"):
            value = _inf(value)
        out[name] = value
    return out


def config_to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration keyed like the TOML, every default applied (``--json``).

    "infinity" stands for unlimited values, ``null`` for options that are not set.
    """
    listen: dict[str, Any] = {"s2s": [_listener_dict(lst) for lst in config.listen_s2s]}
    if config.listen_service:
        listen["service"] = [_service_dict(s) for s in config.listen_service if is_dataclass(s)]
    return {
        "general": {
            "hosts": list(config.hosts),
            "loglevel": config.loglevel,
            "max_fsm_queue": config.max_fsm_queue,
        },
        "listen": listen,
        "s2s": _s2s_dict(config.s2s),
        "host_config": [
            {"host": host, "s2s": _s2s_dict(opts)} for host, opts in config.host_s2s.items()
        ],
    }
