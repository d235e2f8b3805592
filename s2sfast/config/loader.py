"""MongooseIM's TOML configuration ([general] hosts, [[listen.s2s]], [s2s]) parsed into frozen
dataclasses (:mod:`s2sfast.config.options`, re-exported here).

The dataclasses are the contract between config loading and the rest of s2sfast: nothing
below node.py reads the file, each part takes the dataclass it needs. An operator's existing
``mongooseim.toml`` (MongooseIM 6.3 layout) loads unchanged: every S2S option keeps its syntax,
default and meaning, every other section is accepted and ignored (one info log line says which),
and anything invalid raises :class:`ConfigError` naming the option's dotted path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from s2sfast.config import checks as _checks
from s2sfast.config.checks import ConfigError
from s2sfast.config.checks import array as _array
from s2sfast.config.checks import enum as _enum
from s2sfast.config.checks import fail as _fail
from s2sfast.config.checks import ip as _ip
from s2sfast.config.checks import is_int as _is_int
from s2sfast.config.checks import known as _known
from s2sfast.config.checks import missing as _missing
from s2sfast.config.checks import non_negative as _non_negative
from s2sfast.config.checks import port as _port
from s2sfast.config.checks import positive as _positive
from s2sfast.config.checks import positive_or_infinity as _positive_or_infinity
from s2sfast.config.checks import run_check as _check
from s2sfast.config.checks import string as _string
from s2sfast.config.checks import table as _table
from s2sfast.config.dump import config_to_dict
from s2sfast.config.loglevel import parse_loglevel
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
from s2sfast.limits import MAX_FSM_QUEUE

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
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]

_log = logging.getLogger("s2sfast.config")

#: Characters that jid:nodeprep (applied by MongooseIM to [general] hosts) refuses.
_NODEPREP_FORBIDDEN = re.compile(r"[\s\"&'/:<>@\x00-\x1f\x7f]")
#: The dialback secret made when ``[s2s] shared`` is unset: 10 strong random bytes, as hex.
_SHARED_BYTES = 10

# --------------------------------------------------------------------------- [[listen.s2s]]

_LISTEN_KEYS = tuple(
    "port ip_address max_stanza_size shaper backlog max_connections state_timeout tls"
    " max_fsm_queue".split()
)
# MongooseIM 6.3 listener options with no counterpart in an asyncio process (the Erlang
# acceptor pool and process hibernation): accepted, validated and ignored.
_LISTEN_IGNORED = ("num_acceptors", "hibernate_after")
_LISTEN_COMPAT = ("proto", "ip_version", "proxy_protocol")
_TLS_KEYS = ("mode", "cacertfile", "verify_mode", "ciphers", "dhfile", "certfile")
_TLS_IGNORED = ("protocol_options",)  # fast_tls's OpenSSL flag names; Python sets its own


def _listener(
    item: Any, path: str, raw: Mapping[str, Any], ignored: list[str], allow_port_zero: bool
) -> ListenS2S:
    table = _table(item, path)
    _known(table, path, _LISTEN_KEYS + _LISTEN_IGNORED + _LISTEN_COMPAT)
    if "port" not in table:
        _missing(f"{path}.port", "a port number, an integer from 1 to 65535")
    port = _port(table["port"], f"{path}.port", allow_zero=allow_port_zero)

    proto = table.get("proto", "tcp")
    if proto != "tcp":
        _fail(f"{path}.proto", proto, 'the string "tcp"')
    if table.get("proxy_protocol", False) is not False:
        _fail(f"{path}.proxy_protocol", table["proxy_protocol"], "false (s2sfast has no PROXY)")
    version = table.get("ip_version")
    if version is not None and (not _is_int(version) or version not in (4, 6)):
        _fail(f"{path}.ip_version", version, "4 or 6")
    if "ip_address" in table:
        ip_address = _ip(table["ip_address"], f"{path}.ip_address")
        if version is not None and _checks.ip_version(ip_address) != version:
            _fail(f"{path}.ip_version", version, f"the version of ip_address {ip_address!r}")
    else:
        ip_address = "::" if version == 6 else "0.0.0.0"
    for key in _LISTEN_IGNORED:
        if key in table:
            if key == "num_acceptors":
                _positive(table[key], f"{path}.{key}")
            elif table[key] != "infinity":
                _non_negative(table[key], f"{path}.{key}")
            ignored.append(f"{path}.{key}")

    max_stanza = _positive_or_infinity(
        table.get("max_stanza_size", "infinity"), f"{path}.max_stanza_size", " (bytes)"
    )
    shaper = _string(table.get("shaper", "none"), f"{path}.shaper", 'an [access] rule or "none"')
    shaper_name, max_rate = _resolve_shaper(shaper, f"{path}.shaper", raw)
    return ListenS2S(
        port=port,
        ip_address=ip_address,
        max_stanza_size=max_stanza,
        shaper=shaper,
        max_rate=max_rate,
        shaper_name=shaper_name,
        backlog=_non_negative(table.get("backlog", 1024), f"{path}.backlog"),
        max_connections=_positive_or_infinity(
            table.get("max_connections", "infinity"), f"{path}.max_connections"
        ),
        state_timeout=_positive(
            table.get("state_timeout", 5000), f"{path}.state_timeout", " (milliseconds)"
        ),
        tls=_listen_tls(table.get("tls", {}), f"{path}.tls", ignored),
        max_fsm_queue=(
            _positive(table["max_fsm_queue"], f"{path}.max_fsm_queue", " (stanzas)")
            if "max_fsm_queue" in table
            else None
        ),
    )


def _listen_tls(value: Any, path: str, ignored: list[str]) -> ListenTls:
    table = _table(value, path)
    _known(table, path, _TLS_KEYS + _TLS_IGNORED)
    if "protocol_options" in table:
        options = _array(table["protocol_options"], f"{path}.protocol_options", "an array")
        for i, option in enumerate(options):
            _string(option, f"{path}.protocol_options[{i}]")
        ignored.append(f"{path}.protocol_options")
    verify_mode = None
    if "verify_mode" in table:
        verify_mode = table["verify_mode"]
        if verify_mode == "selfsigned_peer":
            _fail(
                f"{path}.verify_mode",
                verify_mode,
                '"peer" or "none"',
                problem="not supported by MongooseIM's S2S TLS (fast_tls)",
            )
        _enum(verify_mode, f"{path}.verify_mode", ("peer", "none"))
    modes = ("tls", "starttls", "starttls_required")
    mode = _enum(table.get("mode", "starttls"), f"{path}.mode", modes)
    return ListenTls(
        mode=mode,  # type: ignore[arg-type]
        cacertfile=_opt_checked(table, "cacertfile", path, _checks.check_cafile),
        verify_mode=verify_mode,
        ciphers=_opt_checked(table, "ciphers", path, _checks.check_ciphers),
        dhfile=_opt_checked(table, "dhfile", path, _checks.check_dhfile),
        certfile=_opt_checked(table, "certfile", path, _checks.check_certfile),
    )


def _opt_checked(table: Mapping[str, Any], key: str, path: str, check: Any) -> str | None:
    if key not in table:
        return None
    return _check(check, _string(table[key], f"{path}.{key}"), f"{path}.{key}")


def _resolve_shaper(rule: str, path: str, raw: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """Follow MongooseIM: the listener's shaper names an [access] rule, evaluated for a remote
    server's JID; of the usual clauses only ``acl = "all"`` matches a server, its value names a
    ``[shaper.NAME]`` (or is "none"). No matching clause means MongooseIM's "deny": no shaper.
    """
    if rule == "none":
        return None, None
    access = _table(raw.get("access", {}), "access")
    if rule not in access:
        _fail(path, rule, 'the name of a rule in the [access] section, or "none"', "unknown rule")
    clauses = _array(access[rule], f"access.{rule}", "an array of {acl = ..., value = ...} tables")
    value: Any = "deny"
    value_path = f"access.{rule}"
    for i, clause in enumerate(clauses):
        clause_path = f"access.{rule}[{i}]"
        clause = _table(clause, clause_path)
        _known(clause, clause_path, ("acl", "value"))
        for key in ("acl", "value"):
            if key not in clause:
                _missing(f"{clause_path}.{key}", "both acl and value in every access clause")
        _string(clause["acl"], f"{clause_path}.acl")
        if clause["acl"] == "all":
            value, value_path = clause["value"], f"{clause_path}.value"
            break
    if value in ("none", "deny"):
        return None, None
    shapers = _table(raw.get("shaper", {}), "shaper")
    if not isinstance(value, str) or value not in shapers:
        expected = 'the name of a [shaper.NAME] table, or "none"'
        _fail(value_path, value, expected, problem=f"{path} = {rule!r} leads to unknown shaper")
    table = _table(shapers[value], f"shaper.{value}")
    _known(table, f"shaper.{value}", ("max_rate",))
    if "max_rate" not in table:
        _missing(f"shaper.{value}.max_rate", "a positive integer (bytes per second)")
    return value, _positive(table["max_rate"], f"shaper.{value}.max_rate", " (bytes per second)")


# --------------------------------------------------------------------------- [s2s]

_S2S_KEYS = tuple(
    "default_policy host_policy use_starttls certfile shared "
    "address ciphers max_retry_delay outgoing dns sasl_external dialback_cert_auth"
    " stream_management bidi".split()
)


def _s2s(value: Any, path: str, base: S2SOptions) -> S2SOptions:
    """Read an ``[s2s]`` table; each option it names replaces the one in *base*."""
    table = _table(value, path)
    _known(table, path, _S2S_KEYS)
    changes: dict[str, Any] = {}
    if "default_policy" in table:
        changes["default_policy"] = _enum(
            table["default_policy"], f"{path}.default_policy", ("allow", "deny")
        )
    if "host_policy" in table:
        changes["host_policy"] = _host_policy(table["host_policy"], f"{path}.host_policy")
    if "use_starttls" in table:
        starttls = table["use_starttls"]
        if isinstance(starttls, bool):
            _fail(
                f"{path}.use_starttls",
                starttls,
                'one of the strings "false", "optional", "required", "required_trusted"',
                problem="a TOML boolean is not accepted, write the value as a string",
            )
        changes["use_starttls"] = _enum(
            starttls, f"{path}.use_starttls", ("false", "optional", "required", "required_trusted")
        )
    if "certfile" in table:
        certfile = _string(table["certfile"], f"{path}.certfile", "a path string")
        changes["certfile"] = _check(_checks.check_certfile, certfile, f"{path}.certfile")
    if "shared" in table:
        changes["shared"] = _string(table["shared"], f"{path}.shared")
    if "address" in table:
        changes["address"] = _address(table["address"], f"{path}.address")
    if "ciphers" in table:
        ciphers = _string(table["ciphers"], f"{path}.ciphers", "an OpenSSL cipher string")
        changes["ciphers"] = _check(_checks.check_ciphers, ciphers, f"{path}.ciphers")
    if "max_retry_delay" in table:
        changes["max_retry_delay"] = _positive(
            table["max_retry_delay"], f"{path}.max_retry_delay", " (seconds)"
        )
    if "outgoing" in table:
        changes["outgoing"] = _outgoing(table["outgoing"], f"{path}.outgoing", base.outgoing)
    if "dns" in table:
        sub = _table(table["dns"], f"{path}.dns")
        _known(sub, f"{path}.dns", ("timeout", "retries"))
        dns = {}
        if "timeout" in sub:
            dns["timeout"] = _positive(sub["timeout"], f"{path}.dns.timeout", " (seconds)")
        if "retries" in sub:
            dns["retries"] = _positive(sub["retries"], f"{path}.dns.retries")
        changes["dns"] = replace(base.dns, **dns)
    for key in ("sasl_external", "dialback_cert_auth", "bidi"):
        if key in table:
            if not isinstance(table[key], bool):
                _fail(f"{path}.{key}", table[key], "a boolean (true or false)")
            changes[key] = table[key]
    if "stream_management" in table:
        changes["stream_management"] = _stream_management(
            table["stream_management"], f"{path}.stream_management", base.stream_management
        )
    return replace(base, **changes)


def _stream_management(
    value: Any, path: str, base: StreamManagementOptions
) -> StreamManagementOptions:
    table = _table(value, path)
    _known(table, path, ("enabled", "resend", "buffer_max", "ack_freq"))
    changes: dict[str, Any] = {}
    for key in ("enabled", "resend"):
        if key in table:
            if not isinstance(table[key], bool):
                _fail(f"{path}.{key}", table[key], "a boolean (true or false)")
            changes[key] = table[key]
    if "buffer_max" in table:
        changes["buffer_max"] = _positive(table["buffer_max"], f"{path}.buffer_max", " (stanzas)")
    if "ack_freq" in table:
        changes["ack_freq"] = _positive(table["ack_freq"], f"{path}.ack_freq", " (stanzas)")
    return replace(base, **changes)


def _outgoing(value: Any, path: str, base: OutgoingOptions) -> OutgoingOptions:
    table = _table(value, path)
    _known(table, path, ("port", "ip_versions", "connection_timeout"))
    changes: dict[str, Any] = {}
    if "port" in table:
        changes["port"] = _port(table["port"], f"{path}.port")
    if "ip_versions" in table:
        versions = table["ip_versions"]
        expected = "a non-empty array of the integers 4 and/or 6, each at most once"
        if (
            not isinstance(versions, list)
            or not versions
            or any(not _is_int(v) or v not in (4, 6) for v in versions)
            or len(set(versions)) != len(versions)
        ):
            _fail(f"{path}.ip_versions", versions, expected)
        changes["ip_versions"] = tuple(versions)
    if "connection_timeout" in table:
        changes["connection_timeout"] = _positive_or_infinity(
            table["connection_timeout"], f"{path}.connection_timeout", " (milliseconds)"
        )
    return replace(base, **changes)


def _host_policy(value: Any, path: str) -> tuple[HostPolicy, ...]:
    items = _array(value, path, "an array of {host = ..., policy = ...} tables")
    seen: dict[str, int] = {}
    out = []
    for i, item in enumerate(items):
        entry = _table(item, f"{path}[{i}]")
        _known(entry, f"{path}[{i}]", ("host", "policy"))
        for key in ("host", "policy"):
            if key not in entry:
                _missing(f"{path}[{i}].{key}", "both host and policy in every host_policy entry")
        host = _string(entry["host"], f"{path}[{i}].host", "a non-empty host name")
        if host in seen:
            _fail(f"{path}[{i}].host", host, "each host once", f"duplicate of {path}[{seen[host]}]")
        seen[host] = i
        policy = _enum(entry["policy"], f"{path}[{i}].policy", ("allow", "deny"))
        out.append(HostPolicy(host=host, policy=policy))  # type: ignore[arg-type]
    return tuple(out)


def _address(value: Any, path: str) -> tuple[AddressOverride, ...]:
    items = _array(value, path, "an array of {host = ..., ip_address = ...} tables")
    seen: dict[str, int] = {}
    out = []
    for i, item in enumerate(items):
        entry = _table(item, f"{path}[{i}]")
        _known(entry, f"{path}[{i}]", ("host", "ip_address", "port", "tls"))
        if "host" not in entry:
            _missing(f"{path}[{i}].host", "the remote host name this address is for")
        if "ip_address" not in entry:
            _missing(f"{path}[{i}].ip_address", "an IP address string")
        host = _string(entry["host"], f"{path}[{i}].host", "a non-empty host name")
        if host in seen:
            _fail(f"{path}[{i}].host", host, "each host once", f"duplicate of {path}[{seen[host]}]")
        seen[host] = i
        port = _port(entry["port"], f"{path}[{i}].port") if "port" in entry else None
        ip_address = _ip(entry["ip_address"], f"{path}[{i}].ip_address")
        tls = entry.get("tls", False)
        if not isinstance(tls, bool):
            _fail(f"{path}[{i}].tls", tls, "true (Direct TLS) or false (STARTTLS)")
        out.append(AddressOverride(host=host, ip_address=ip_address, port=port, tls=tls))
    return tuple(out)


# --------------------------------------------------------------------------- whole document


def _hosts(raw: Mapping[str, Any], ignored: list[str]) -> tuple[str, ...]:
    if "general" not in raw:
        _missing("general.hosts", "a non-empty array of the local domain names")
    general = _table(raw["general"], "general")
    ignored.extend(
        f"general.{key}" for key in general if key not in ("hosts", "loglevel", "max_fsm_queue")
    )
    if "hosts" not in general:
        _missing("general.hosts", "a non-empty array of the local domain names")
    hosts = general["hosts"]
    expected = "a non-empty array of unique, non-empty domain name strings"
    if not isinstance(hosts, list) or not hosts:
        _fail("general.hosts", hosts, expected)
    out: list[str] = []
    for i, host in enumerate(hosts):
        _string(host, f"general.hosts[{i}]", "a non-empty domain name string")
        if _NODEPREP_FORBIDDEN.search(host):  # MongooseIM runs hosts through jid:nodeprep
            _fail(f"general.hosts[{i}]", host, "a domain name without spaces or \"&'/:<>@")
        if host.lower() in out:
            _fail(f"general.hosts[{i}]", host, expected, problem="duplicate host")
        out.append(host.lower())  # nodeprep lower-cases, so do we
    return tuple(out)


def _host_configs(
    raw: Mapping[str, Any], hosts: tuple[str, ...], base: S2SOptions, ignored: list[str]
) -> tuple[dict[str, S2SOptions], dict[str, str]]:
    """``[[host_config]]``: per-host s2s overrides (and where each came from, for messages)."""
    overrides: dict[str, S2SOptions] = {}
    paths: dict[str, str] = {}
    seen: dict[str, int] = {}
    entries = _array(raw.get("host_config", []), "host_config", "an array of tables")
    for i, item in enumerate(entries):
        path = f"host_config[{i}]"
        entry = _table(item, path)
        if ("host" in entry) == ("host_type" in entry):
            _fail(
                path,
                dict(entry),
                "exactly one of host or host_type",
                "cannot tell which host this is for",
            )
        key = "host" if "host" in entry else "host_type"
        name = _string(entry[key], f"{path}.{key}").lower()
        if name not in hosts:
            if key == "host_type":  # a dynamic-domain host type: S2S does not serve those
                ignored.append(path)
                continue
            _fail(f"{path}.host", name, "one of general.hosts: " + ", ".join(hosts))
        if name in seen:
            _fail(
                f"{path}.{key}",
                name,
                "one entry per host",
                f"duplicate of host_config[{seen[name]}]",
            )
        seen[name] = i
        ignored.extend(f"{path}.{k}" for k in entry if k not in ("host", "host_type", "s2s"))
        if "s2s" in entry:
            overrides[name] = _s2s(entry["s2s"], f"{path}.s2s", base)
            paths[name] = f"{path}.s2s"
    return overrides, paths


def _cross_checks(
    listeners: tuple[ListenS2S, ...], options: dict[str, tuple[S2SOptions, str]]
) -> None:
    """Checks that span sections: STARTTLS needs a certfile, required* needs a CA per listener.

    The CA rule is MongooseIM's ``missing_cacertfile`` check (``process_just_tls`` in
    mongoose_config_spec.erl; the listener docs say ``verify_mode = "peer"`` "requires a valid
    cacertfile"): give ``tls.cacertfile`` or turn peer verification off with ``tls.verify_mode =
    "none"``. MongooseIM 6.3 applies it to just_tls sections only (its S2S listener uses
    fast_tls); s2sfast applies it to every S2S listener once STARTTLS is required.
    """
    s2s, s2s_path = options[""]
    for i, listener in enumerate(listeners):
        if listener.tls.mode != "starttls" and s2s.use_starttls == "false":
            _fail(
                f"listen.s2s[{i}].tls.mode",
                listener.tls.mode,
                f'"starttls" while {s2s_path}.use_starttls is "false"',
                problem="this listener needs TLS, and [s2s] turns TLS off",
            )
    for opts, path in options.values():
        for j, address in enumerate(opts.address):
            if address.tls and opts.use_starttls == "false":
                _fail(
                    f"{path}.address[{j}].tls",
                    True,
                    f'false while {path}.use_starttls is "false"',
                    problem="a Direct TLS address needs TLS, and use_starttls turns it off",
                )
        if opts.use_starttls == "false":
            continue
        if opts.certfile is None:
            _missing(
                f"{path}.certfile",
                f"a PEM file with a certificate and an unencrypted private key, because "
                f'{path}.use_starttls is "{opts.use_starttls}"',
            )
        if opts.use_starttls in ("required", "required_trusted"):
            for i, listener in enumerate(listeners):
                if listener.tls.cacertfile is None and listener.tls.verify_mode != "none":
                    _missing(
                        f"listen.s2s[{i}].tls.cacertfile",
                        f"tls.cacertfile (CA certificates to verify peers) or tls.verify_mode = "
                        f'"none", because {path}.use_starttls is "{opts.use_starttls}"',
                    )


def config_from_dict(
    data: Mapping[str, Any], source: str | None = None, *, allow_port_zero: bool = False
) -> Config:
    """Build and validate a :class:`Config` from a parsed ``mongooseim.toml`` document.

    Args:
        data: the document as ``tomllib`` returns it (or an equivalent dict, e.g. the daemon's
            embedded defaults).
        source: where it came from, kept in ``Config.source``.
        allow_port_zero: accept ``listen.s2s[].port = 0`` (an OS-chosen port, for tests).

    Returns:
        The effective configuration with every default applied; ``[s2s] shared``, when unset,
        is 20 random hex characters made by this call.

    Raises:
        ConfigError: naming the dotted path of the first invalid option.
    """
    raw = _table(data, "(document)")
    ignored: list[str] = []
    hosts = _hosts(raw, ignored)
    loglevel = parse_loglevel(raw["general"])

    listen = _table(raw.get("listen", {}), "listen")
    services: tuple[Any, ...] = ()
    for kind in listen:
        if kind == "service" and importlib.util.find_spec("s2sfast.config.service"):
            from s2sfast.config.service import parse_listen_service

            services = parse_listen_service(raw)
        elif kind != "s2s":
            ignored.append(f"listen.{kind}")
    items = _array(listen.get("s2s", []), "listen.s2s", "an array of tables ([[listen.s2s]])")
    listeners = tuple(
        _listener(item, f"listen.s2s[{i}]", raw, ignored, allow_port_zero)
        for i, item in enumerate(items)
    )
    taken: dict[tuple[str, int], str] = {}
    named = [(f"listen.s2s[{i}]", x) for i, x in enumerate(listeners)]
    named += [(f"listen.service[{i}]", x) for i, x in enumerate(services)]
    for path, lst in named:
        key = (lst.ip_address, lst.port)
        if key in taken and lst.port != 0:
            _fail(
                f"{path}.port",
                lst.port,
                "a listening address no other listener uses",
                f"address already used by {taken[key]}",
            )
        taken[key] = path

    shared_generated = "shared" not in _table(raw.get("s2s", {}), "s2s")
    base = S2SOptions(shared=secrets.token_hex(_SHARED_BYTES))
    s2s = _s2s(raw.get("s2s", {}), "s2s", base)
    # As in MongooseIM 6.3 (mongoose_config_parser: only acl and access merge), a host's s2s
    # table replaces [s2s] whole, defaults filled in. Only the dialback secret carries over, so
    # that one node keys every host consistently when the host table names none.
    host_s2s, host_paths = _host_configs(raw, hosts, S2SOptions(shared=s2s.shared), ignored)
    checked = {"": (s2s, "s2s")} | {h: (o, host_paths[h]) for h, o in host_s2s.items()}
    _cross_checks(listeners, checked)

    read = {"general", "listen", "s2s", "host_config", "shaper", "access"}  # shapers: see above
    ignored[:0] = [key for key in raw if key not in read]
    if ignored:
        _log.info(
            "%signoring what s2sfast does not use: %s",
            f"{source}: " if source else "",
            ", ".join(ignored),
        )
    return Config(
        hosts=hosts,
        listen_s2s=listeners,
        s2s=s2s,
        host_s2s=host_s2s,
        source=source,
        listen_service=services,
        shared_generated=shared_generated,
        loglevel=loglevel,
        max_fsm_queue=_max_fsm_queue(raw["general"]),
    )


def _max_fsm_queue(general: Mapping[str, Any]) -> int:
    """``[general] max_fsm_queue``: a positive integer (MongooseIM's syntax); not set: the
    named default."""
    if "max_fsm_queue" not in general:
        return MAX_FSM_QUEUE
    return _positive(general["max_fsm_queue"], "general.max_fsm_queue", " (stanzas)")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a MongooseIM ``mongooseim.toml``.

    Relative file names inside it (certfile, cacertfile, dhfile) are relative to the working
    directory, as in MongooseIM.

    Raises:
        ConfigError: the file cannot be read, is not valid TOML (the message gives the line)
            or holds an invalid option; the message starts with the file name.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = blob.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{name}: line {line}: the file is not UTF-8 ({exc.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if "at end of document" in message:  # tomllib gives no line number for this case
            message += f" (line {text.count(chr(10)) + 1}, the last line)"
        raise ConfigError(f"{name}: TOML syntax error: {message}") from None
    try:
        return config_from_dict(data, source=name)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}", path=exc.path) from None
