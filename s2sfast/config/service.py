"""MongooseIM's ``[[listen.service]]`` (XEP-0114 component listeners) as frozen dataclasses.

Kept apart from config.py so the component bridge's options have one owner. The syntax and
defaults follow MongooseIM 6.3's documentation: ``port`` and ``password`` are mandatory,
``ip_address`` defaults to all-zeros, ``access = "all"``, ``shaper_rule = "none"`` (it names a
``[shaper.NAME]`` table directly, unlike the c2s/s2s shapers that go through ``[access]``),
``check_from = true``, ``hidden_components = false``, ``conflict_behaviour = "disconnect"``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from s2sfast.config.checks import ConfigError

__all__ = ["ListenService", "parse_listen_service"]

ConflictBehaviour = Literal["disconnect", "kick_old"]

#: MongooseIM's default TCP backlog for XMPP listeners (raised from 100 to 1024 in 6.1).
_DEFAULT_BACKLOG = 1024

# Options accepted for MongooseIM compatibility whose effect is an Erlang runtime detail with no
# counterpart in an asyncio process (acceptor pool size, process hibernation).
_IGNORED = frozenset({"num_acceptors", "hibernate_after"})
_KNOWN = frozenset(
    {
        "port",
        "ip_address",
        "ip_version",
        "proto",
        "backlog",
        "proxy_protocol",
        "max_stanza_size",
        "access",
        "password",
        "shaper_rule",
        "check_from",
        "hidden_components",
        "conflict_behaviour",
        "max_fsm_queue",
    }
    | _IGNORED
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenService:
    """One ``[[listen.service]]`` listener: where external components connect and how."""

    port: int
    #: the shared secret of the XEP-0114 handshake (mandatory, never logged)
    password: str
    ip_address: str = "0.0.0.0"
    ip_version: Literal[4, 6] = 4
    backlog: int = _DEFAULT_BACKLOG
    #: bytes; None means "infinity"
    max_stanza_size: int | None = None
    #: who may send to the components; only "all" is supported
    access: str = "all"
    #: the [shaper.NAME] table name ("none" = no shaping)
    shaper_rule: str = "none"
    #: bytes per second from [shaper.<shaper_rule>] max_rate; None = unlimited
    max_rate: int | None = None
    #: verify that each stanza's 'from' is in the component's domain
    check_from: bool = True
    hidden_components: bool = False
    #: what a second component for an already served domain gets
    conflict_behaviour: ConflictBehaviour = "disconnect"
    #: stanzas queued for one component while it does not read; None: ``[general]
    #: max_fsm_queue``, else s2sfast.limits.MAX_FSM_QUEUE
    max_fsm_queue: int | None = None


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _int(path: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(path, f"expected an integer {bounds}, got {value}")
    return value


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {value!r}")
    return value


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"expected true or false, got {value!r}")
    return value


def _max_rate(path: str, rule: str, raw: Mapping[str, Any]) -> int | None:
    if rule == "none":
        return None
    shapers = raw.get("shaper", {})
    if not isinstance(shapers, Mapping) or rule not in shapers:
        raise _fail(path, f"shaper {rule!r} is not defined in the [shaper] section")
    table = shapers[rule]
    if not isinstance(table, Mapping) or "max_rate" not in table:
        raise _fail(f"shaper.{rule}", "expected a table with max_rate (bytes per second)")
    return _int(f"shaper.{rule}.max_rate", table["max_rate"], low=1)


def _one(index: int, item: Any, raw: Mapping[str, Any]) -> ListenService:
    base = f"listen.service[{index}]"
    if not isinstance(item, Mapping):
        raise _fail(base, f"expected a table, got {item!r}")
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        raise _fail(
            f"{base}.{unknown[0]}",
            f"unknown option; [[listen.service]] takes {', '.join(sorted(_KNOWN))}",
        )
    if "port" not in item:
        raise _fail(f"{base}.port", "missing; every listener needs a port")
    if "password" not in item:
        raise _fail(f"{base}.password", "missing; components authenticate with it (mandatory)")
    port = _int(f"{base}.port", item["port"], low=1, high=65535)
    password = _str(f"{base}.password", item["password"])
    if not password:
        raise _fail(f"{base}.password", "must not be empty")

    ip_text = _str(f"{base}.ip_address", item.get("ip_address", "0.0.0.0"))
    try:
        address = ipaddress.ip_address(ip_text)
    except ValueError:
        raise _fail(f"{base}.ip_address", f"expected an IP address, got {ip_text!r}") from None
    version = address.version
    if "ip_version" in item:
        version = _int(f"{base}.ip_version", item["ip_version"], low=4, high=6)
        if version not in (4, 6):
            raise _fail(f"{base}.ip_version", f"expected 4 or 6, got {version}")
        if "ip_address" not in item:
            ip_text = "::" if version == 6 else "0.0.0.0"
        elif version != address.version:
            raise _fail(
                f"{base}.ip_version",
                f"{version} contradicts ip_address {ip_text!r} (IPv{address.version})",
            )
    proto = _str(f"{base}.proto", item.get("proto", "tcp"))
    if proto != "tcp":
        raise _fail(f"{base}.proto", f'only "tcp" is accepted, got {proto!r}')
    if _bool(f"{base}.proxy_protocol", item.get("proxy_protocol", False)):
        raise _fail(f"{base}.proxy_protocol", "the PROXY protocol is not supported by s2sfast")

    max_stanza_size: int | None = None
    if "max_stanza_size" in item and item["max_stanza_size"] != "infinity":
        max_stanza_size = _int(f"{base}.max_stanza_size", item["max_stanza_size"], low=1)

    access = _str(f"{base}.access", item.get("access", "all"))
    if access != "all":
        raise _fail(
            f"{base}.access",
            f'only "all" is supported (s2sfast does not evaluate access rules), got {access!r}',
        )
    shaper_rule = _str(f"{base}.shaper_rule", item.get("shaper_rule", "none"))
    conflict = _str(f"{base}.conflict_behaviour", item.get("conflict_behaviour", "disconnect"))
    if conflict not in ("disconnect", "kick_old"):
        raise _fail(
            f"{base}.conflict_behaviour", f'expected "disconnect" or "kick_old", got {conflict!r}'
        )
    return ListenService(
        port=port,
        password=password,
        ip_address=ip_text,
        ip_version=version,  # type: ignore[arg-type]
        backlog=_int(f"{base}.backlog", item.get("backlog", _DEFAULT_BACKLOG), low=1),
        max_stanza_size=max_stanza_size,
        access=access,
        shaper_rule=shaper_rule,
        max_rate=_max_rate(f"{base}.shaper_rule", shaper_rule, raw),
        check_from=_bool(f"{base}.check_from", item.get("check_from", True)),
        hidden_components=_bool(f"{base}.hidden_components", item.get("hidden_components", False)),
        conflict_behaviour=conflict,  # type: ignore[arg-type]
        max_fsm_queue=(
            _int(f"{base}.max_fsm_queue", item["max_fsm_queue"], low=1)
            if "max_fsm_queue" in item
            else None
        ),
    )


def parse_listen_service(raw: Mapping[str, Any]) -> tuple[ListenService, ...]:
    """Parse every ``[[listen.service]]`` table of a whole parsed ``mongooseim.toml``.

    Args:
        raw: the document as ``tomllib.load`` returns it.

    Returns:
        One :class:`ListenService` per table, in file order (empty when there is none).

    Raises:
        ConfigError: an option is missing, unknown or invalid; the message names its dotted
            path (``listen.service[0].password``), the bad value and what was expected.
    """
    listen = raw.get("listen", {})
    if not isinstance(listen, Mapping):
        raise _fail("listen", f"expected a table, got {listen!r}")
    items = listen.get("service", [])
    if not isinstance(items, list):
        raise _fail("listen.service", "expected an array of tables ([[listen.service]])")
    services = tuple(_one(i, item, raw) for i, item in enumerate(items))
    seen: dict[tuple[str, int], int] = {}
    for i, service in enumerate(services):
        key = (service.ip_address, service.port)
        if key in seen:
            raise _fail(
                f"listen.service[{i}].port",
                f"{service.ip_address}:{service.port} is already taken by "
                f"listen.service[{seen[key]}]",
            )
        seen[key] = i
    return services
