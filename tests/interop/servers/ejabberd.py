"""Debian's ejabberd 23.01 as a throw-away S2S peer on loopback.

``EjabberdServer(domain, directory, tls=..., remotes=..., dns=...)`` writes ``ejabberd.yml``
(from ``templates/ejabberd.yml``) and an Erlang ``inetrc`` into *directory* (also its Mnesia
spool and ``logs/ejabberd.log``) and runs the Erlang VM with ejabberd directly, detached; the
PID it gets is the VM's (``erl`` execs ``beam.smp``), so it is stopped by that PID (SIGTERM:
Erlang's orderly shutdown) or killed.

Facts this relies on (ejabberd 23.01, Erlang 25):
- ``ejabberdctl`` is not used: started by root it switches to the ``ejabberd`` user (which cannot
  enter pytest's private temp dirs) and does not write the pidfile it is given; started by
  anyone else it refuses. The VM runs as the caller, without Erlang distribution (node
  ``nonode@nohost``: no epmd, no cookie, no extra port).
- Accounts are made through ejabberd's own admin command ``register`` over its HTTP API
  (``mod_http_api`` on a loopback port, allowed for 127.0.0.1 only) - the command ``ejabberdctl
  register`` runs, without distribution.
- ejabberd has no per-domain address override: it finds remote domains only through DNS.
  ``ERL_INETRC`` points Erlang's resolver at a loopback DNS server (the caller's ``dns`` zone, or
  a private one holding the ``remotes``), and the SRV lookups (``_xmpps-server``/
  ``_xmpp-server._tcp``, through ``inet_res``) go there. But addresses - of an SRV target name,
  or of a domain without an SRV record - come from ``net:getaddrinfo`` (p1_xmpp 1.6.1,
  ``xmpp_stream_out:a_lookup/5``): libc, the machine's resolver. So every domain ejabberd is
  to reach needs an SRV record whose target is an IP literal (``add_xmpp_domain``'s default),
  and a test must never make ejabberd look up a domain its zone does not know.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from dnsserver import DnsServer

from ._process import (
    INSTALL,
    LOOPBACK,
    ServerError,
    ServerProcess,
    Session,
    free_ports,
    missing,
    render,
)

__all__ = ["EjabberdServer", "ejabberd_missing", "ejabberd_sessions"]

#: run after ejabberd started: its file log handler (logger_std_h, opened with delayed_write, so
#: lines reach ejabberd.log up to 2 s late) is added again with a 1-byte write buffer, so the
#: tests read what ejabberd did as soon as it did it
_READY_MARK = "s2sfast harness: ejabberd.log unbuffered"
_UNBUFFERED_LOG = (
    "{ok, H = #{config := C}} = logger:get_handler_config(ejabberd_log),"
    " ok = logger:remove_handler(ejabberd_log),"
    " Keep = [file, max_no_bytes, max_no_files, file_check, sync_mode_qlen, drop_mode_qlen,"
    " flush_qlen, burst_limit_window_time, burst_limit_max_count, filesync_repeat_interval],"
    " ok = logger:add_handler(ejabberd_log, logger_std_h,"
    " (maps:with([level, formatter, filters, filter_default], H))#{config =>"
    " (maps:with(Keep, C))#{modes => [raw, append, {delayed_write, 1, 0}]}}),"
    f' logger:notice("{_READY_MARK}").'
)

#: tls= -> s2s_use_starttls
_TLS = {"off": "false", "optional": "optional", "required": "required"}


@functools.cache
def _ejabberd_lib() -> str | None:
    """Where ejabberd's Erlang application lives (the ERL_LIBS its ejabberdctl sets; Debian:
    the multiarch lib directory holding ejabberd-23.01/ebin)."""
    search = os.environ.get("PATH", "").split(os.pathsep)
    search += [d[: -len("bin")] + "sbin" for d in search if d.endswith("/bin")]  # root's tools
    ctl = shutil.which("ejabberdctl", path=os.pathsep.join(search))
    if ctl is None:
        return None
    m = re.search(r"^ERL_LIBS='?([^'\n]+)'?$", Path(ctl).read_text(errors="replace"), re.M)
    if m is None or not glob.glob(os.path.join(m.group(1), "ejabberd-*", "ebin")):
        return None
    return m.group(1)


def ejabberd_missing() -> str | None:
    """Why ejabberd cannot run here, or None."""
    why = missing("erl")
    if why is None and _ejabberd_lib() is None:
        why = f"ejabberd not installed ({INSTALL})"
    return why


class EjabberdServer(ServerProcess):
    """One ejabberd serving *domain* on 127.0.0.1.

    Args:
        domain: the host it serves.
        directory: its state (config, certificate, spool, logs); created when missing.
        tls: ``s2s_use_starttls``: ``required``, ``optional`` or ``off`` (false).
        remotes: remote domain -> loopback S2S port; published as SRV/A records in the DNS
            zone at :meth:`start`.
        dns: a running :class:`dnsserver.DnsServer` to resolve through; None: a private zone
            with just the ``remotes``.
        cafile: ``s2s_cafile``: the CA certificates it checks peers' certificates against.
        dialback: False unloads mod_s2s_dialback: peers must then authenticate with SASL
            EXTERNAL, i.e. a certificate ejabberd trusts (23.01 rewrites ``s2s_use_starttls:
            required_trusted`` into exactly that: ``required`` without dialback).
        extra_config: YAML lines added at the top level.
        certificate: a tests/certs.py ``IssuedCert`` to present; None: a self-signed one.
        log_level: ``info`` (default; not less: start() reads readiness from the log) or
            ``debug`` (every element sent and received).
    """

    program = "ejabberd"

    def __init__(
        self,
        domain: str,
        directory: str | os.PathLike[str],
        *,
        tls: str = "optional",
        remotes: dict[str, int] | None = None,
        dns: DnsServer | None = None,
        cafile: str | None = None,
        dialback: bool = True,
        extra_config: str = "",
        certificate: Any = None,
        log_level: str = "info",
        c2s_port: int = 0,
        s2s_port: int = 0,
        api_port: int = 0,
    ) -> None:
        if tls not in _TLS:
            raise ValueError(f"tls must be one of {sorted(_TLS)}, not {tls!r}")
        super().__init__(domain, Path(directory), c2s_port, s2s_port, remotes, dns)
        self.api_port = api_port or free_ports(1)[0]
        self.tls = tls
        self.cafile = cafile
        self.dialback = dialback
        self.extra_config = extra_config
        self.log_level = log_level
        self._certificate = certificate

    @property
    def config_path(self) -> Path:
        return self.dir / "ejabberd.yml"

    @property
    def cert_path(self) -> Path:
        """The certificate and key ejabberd presents (one PEM)."""
        return self.dir / f"{self.domain}.pem"

    @property
    def log_path(self) -> Path:
        return self.dir / "logs" / "ejabberd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _state_dirs(self) -> list[Path]:
        return [self.dir / "spool"]

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        why = ejabberd_missing()
        if why:
            raise ServerError(why)
        lib = _ejabberd_lib()
        assert lib is not None
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        spool = self.dir / "spool"
        spool.mkdir(exist_ok=True)
        if self._certificate is not None or not self.cert_path.exists():
            import certs  # tests/certs.py

            issued = self._certificate or certs.self_signed(self.domain)
            self.cert_path.write_bytes(issued.key_pem() + issued.cert_pem())
            self.cert_path.chmod(0o600)
        zone = self._open_zone()
        if zone.host != LOOPBACK:
            raise ServerError("ejabberd's resolver is pointed at 127.0.0.1 only")
        (self.dir / "inetrc").write_text(
            render("inetrc", NS_IP=LOOPBACK.replace(".", ","), NS_PORT=zone.port)
        )
        if self.log_path.exists():  # a restart: keep the earlier run's log beside
            self.log_path.replace(self.dir / "logs" / "ejabberd.log.prev")
        self.config_path.write_text(
            render(
                "ejabberd.yml",
                DIR=self.dir,
                DOMAIN=self.domain,
                IFACE=LOOPBACK,
                C2S_PORT=self.c2s_port,
                S2S_PORT=self.s2s_port,
                API_PORT=self.api_port,
                LOG_LEVEL=self.log_level,
                TLS=_TLS[self.tls],
                CAFILE=f's2s_cafile: "{self.cafile}"' if self.cafile else "",
                DIALBACK="  mod_s2s_dialback: {}" if self.dialback else "",
                EXTRA=self.extra_config,
            )
        )
        env = dict(os.environ)
        env.update(
            EJABBERD_CONFIG_PATH=str(self.config_path),
            EJABBERD_LOG_PATH=str(self.log_path),
            ERL_INETRC=str(self.dir / "inetrc"),
            ERL_LIBS=lib,
            ERL_CRASH_DUMP=str(self.dir / "logs" / "erl_crash.dump"),
            ERL_CRASH_DUMP_BYTES="0",
            HOME=str(self.dir),
        )
        argv = ["erl", "+K", "true", "-noinput", "-mnesia", "dir", f'"{spool}"', "-s", "ejabberd"]
        return [*argv, "-eval", _UNBUFFERED_LOG], env

    def _ready(self) -> bool:
        # the console copy of the log (stdout.log) is written at once; ejabberd.log becomes so
        # only once _UNBUFFERED_LOG has run, which it then says there
        try:
            console = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return _READY_MARK in self.log() and all(
            f"Start accepting TCP connections at {LOOPBACK}:{port} for {module}" in console
            for port, module in (
                (self.c2s_port, "ejabberd_c2s"),
                (self.s2s_port, "ejabberd_s2s_in"),
                (self.api_port, "ejabberd_http"),
            )
        )

    def s2s_sessions(self) -> dict[str, Session]:
        """ejabberd's s2s streams by Erlang process, from its log (info level suffices)."""
        return ejabberd_sessions(self.log())

    def command(self, name: str, **args: Any) -> Any:
        """Run an ejabberd admin command (as ``ejabberdctl NAME`` would) through the HTTP API."""
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.api_port}/api/{name}",
            data=json.dumps(args).encode(),
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
        try:
            with opener.open(request, timeout=30) as answer:
                return json.loads(answer.read() or b"null")
        except OSError as e:
            body = getattr(e, "read", lambda: b"")()
            raise ServerError(f"ejabberd command {name} {args} failed: {e} {body!r}") from e

    def adduser(self, user: str, password: str) -> None:
        """Create the account *user*@domain (the admin command ``register``)."""
        self.command("register", user=user, host=self.domain, password=password)


# ``2026-12-04 23:10:20.047250+00:00 [info] <0.481.0>@ejabberd_s2s_in:handle_auth_success/4:183
# (tls|<0.481.0>) Accepted inbound s2s dialback authentication a.test -> b.test (127.0.0.1)``
_LINE = re.compile(r"^\S+ \S+ \[(\w+)\] (<[\d.]+>)@(\w+):\S+ (.*)$")
_SOCKET = re.compile(r"^\((tls|tcp)\|<[\d.]+>\) ")
_ACCEPTED = re.compile(r"Accepted (inbound|outbound) s2s (\S+) authentication (\S+) -> (\S+)")


def ejabberd_sessions(log: str) -> dict[str, Session]:
    """ejabberd's s2s streams (the ``ejabberd_s2s_in``/``_out`` processes) from its log."""
    out: dict[str, Session] = {}
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        _level, proc, module, text = m.groups()
        s = out.get(proc)
        if s is None:
            if module not in ("ejabberd_s2s_in", "ejabberd_s2s_out", "mod_s2s_dialback"):
                continue
            s = out[proc] = Session(proc, "in" if module == "ejabberd_s2s_in" else "out")
        elif module == "ejabberd_s2s_in":
            s.direction = "in"
        sock = _SOCKET.match(text)
        if sock and sock.group(1) == "tls":
            s.encrypted = True
        s.lines.append(text[sock.end() :] if sock else text)
        a = _ACCEPTED.search(text)
        if a:
            s.completed.append((a.group(3), a.group(4)))
    return out
