"""The ``s2sfast`` command: ``s2sfast check-config FILE [--json]`` and ``s2sfast run ...``.

Each subcommand registers itself on the parser made by :func:`build_parser` and sets
``func`` (a plain or ``async`` function taking the parsed arguments and returning the exit
code); :func:`main` dispatches on it. ``run`` comes from s2sfast.server.daemon, imported
only when the parser is built, so that ``check-config`` works even where the node cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from s2sfast import __version__
from s2sfast.config import Config, ConfigError, config_to_dict, load_config

__all__ = ["main", "build_parser", "COMMANDS"]

#: Exit status for an invalid configuration (argparse uses 2 for bad command lines).
EXIT_INVALID_CONFIG = 1


def _check_config(args: argparse.Namespace) -> int:
    """Load FILE exactly as ``run`` would; print a summary (or the effective config as JSON)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="s2sfast: %(levelname)s: %(message)s"
    )
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"s2sfast: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    if args.json:
        json.dump(config_to_dict(config), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(summary(config))
    return 0


def _rate(listener: Any) -> str:
    if listener.shaper == "none":
        return "no shaper"
    if listener.max_rate is None:
        return f"shaper rule {listener.shaper!r}: no shaping for servers"
    return f"shaper rule {listener.shaper!r} -> {listener.shaper_name} ({listener.max_rate} B/s)"


def summary(config: Config) -> str:
    """A few human lines saying what the configuration will do."""
    lines = [f"{config.source or 'configuration'}: valid"]
    lines.append(f"hosts: {', '.join(config.hosts)}; loglevel {config.loglevel}")
    if not config.listen_s2s:
        lines.append("listen.s2s: none (outgoing connections only)")
    for lst in config.listen_s2s:
        size = "infinity" if lst.max_stanza_size is None else f"{lst.max_stanza_size} B"
        addr = f"[{lst.ip_address}]" if ":" in lst.ip_address else lst.ip_address
        tls = {"tls": ", Direct TLS", "starttls_required": ", STARTTLS required"}
        lines.append(
            f"listen.s2s: {addr}:{lst.port}{tls.get(lst.tls.mode, '')}, "
            f"max_stanza_size {size}, {_rate(lst)}"
        )
    for svc in config.listen_service:
        lines.append(f"listen.service: {svc.ip_address}:{svc.port} (XEP-0114 components)")
    s = config.s2s
    timeout = s.outgoing.connection_timeout
    lines.append(
        f"s2s: use_starttls {s.use_starttls}, default_policy {s.default_policy}, "
        f"{len(s.host_policy)} host_policy, {len(s.address)} address, "
        f"shared {'random per start' if config.shared_generated else 'set'}"
    )
    lines.append(
        f"s2s.outgoing: port {s.outgoing.port}, ip_versions "
        f"{list(s.outgoing.ip_versions)}, connection_timeout "
        f"{'infinity' if timeout is None else f'{timeout} ms'}; "
        f"dns timeout {s.dns.timeout} s x {s.dns.retries}; max_retry_delay {s.max_retry_delay} s"
    )
    for host, opts in config.host_s2s.items():
        lines.append(
            f"host_config {host}: use_starttls {opts.use_starttls}, "
            f"default_policy {opts.default_policy}, {len(opts.host_policy)} host_policy"
        )
    return "\n".join(lines) + "\n"


def _add_check_config(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a mongooseim.toml and show what s2sfast will use",
        description="Validate FILE (a MongooseIM 6.3 mongooseim.toml) as `s2sfast run` would; "
        "exit 0 with a summary when valid, 1 with the reason on stderr when not.",
    )
    parser.add_argument("file", metavar="FILE", help="the mongooseim.toml to check")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the effective configuration (every default applied) as JSON",
    )
    parser.set_defaults(func=_check_config)


def _unavailable(reason: str) -> Callable[[argparse.Namespace], int]:
    def report(args: argparse.Namespace) -> int:
        print(f"s2sfast: {args.command} is not available here: {reason}", file=sys.stderr)
        return 1

    return report


def _lazy_command(name: str, module: str, adder: str, summary: str) -> Callable[[Any], None]:
    """A subcommand that lives in *module* (which needs the compiled framer): if the module
    cannot be imported, the subcommand still exists and says why when used."""

    def add(subparsers: Any) -> None:
        if importlib.util.find_spec(module) is None:
            reason = f"{module} is missing from this installation"
        else:
            try:
                add_parser = getattr(importlib.import_module(module), adder)
            except ImportError as exc:  # e.g. the compiled framer is not built
                reason = str(exc)
            else:
                add_parser(subparsers)
                return
        parser = subparsers.add_parser(name, help=f"{summary} (unavailable here)")
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=_unavailable(reason))

    return add


#: Subcommand name -> function adding it to the subparsers (it sets ``func``).
COMMANDS: dict[str, Callable[[Any], None]] = {
    "check-config": _add_check_config,
    "run": _lazy_command("run", "s2sfast.server.daemon", "add_run_parser", "run a federation node"),
    "probe": _lazy_command(
        "probe", "s2sfast.server.probe", "add_probe_parser", "check federation with a remote domain"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``s2sfast`` argument parser with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="s2sfast",
        description="A fast, strict XMPP server-to-server federation engine "
        "configured with MongooseIM's mongooseim.toml.",
    )
    parser.add_argument("--version", action="version", version=f"s2sfast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse *argv* (default: ``sys.argv[1:]``), run the subcommand, return its exit code."""
    args = build_parser().parse_args(argv)
    func = args.func
    try:
        if inspect.iscoroutinefunction(func):
            return asyncio.run(func(args))
        return func(args)
    except ImportError as exc:  # e.g. `run` where the compiled framer is not built
        print(f"s2sfast: {args.command}: {exc}", file=sys.stderr)
        return 1
