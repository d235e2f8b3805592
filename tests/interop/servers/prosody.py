"""Debian's Prosody 0.12 as a throw-away S2S peer on loopback.

``ProsodyServer(domain, directory, tls=..., remotes=..., dns=...)`` writes its config from
``templates/prosody.cfg.lua`` into *directory* (also its data, certificates and ``prosody.log``),
runs ``prosody -F`` detached and stops it by PID. Prosody resolves remote domains with
libunbound, forwarded to a loopback DNS server (never the machine's resolver): the caller's
``dns`` zone, or a private one holding the ``remotes`` (see :mod:`servers` for the whole API).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from dnsserver import DnsServer

from ._process import INSTALL, LOOPBACK, ServerError, ServerProcess, Session, missing, render

__all__ = ["ProsodyServer", "prosody_missing", "s2s_sessions"]

_TLS = {
    "required": "s2s_require_encryption = true",
    "optional": "s2s_require_encryption = false",
    "off": "s2s_require_encryption = false\ns2s_allow_encryption = false",
}


@functools.cache
def prosody_missing() -> str | None:
    """Why Prosody cannot run here, or None."""
    why = missing("prosody", "prosodyctl")
    if why is None and not _has_lunbound():
        # without lua-unbound Prosody would ask the machine's resolver, never the test zone
        why = f"lua-unbound not installed ({INSTALL})"
    return why


def _has_lunbound() -> bool:
    """Whether Prosody's Lua (its script's interpreter) can load lua-unbound."""
    script = shutil.which("prosody")
    assert script is not None
    first = Path(script).read_text(errors="replace").split("\n", 1)[0]
    lua = first.split()[-1] if first.startswith("#!") else "lua"
    try:
        proc = subprocess.run(
            [lua, "-e", 'require "lunbound"'], capture_output=True, timeout=30, check=False
        )
    except OSError:
        return False
    return proc.returncode == 0


class ProsodyServer(ServerProcess):
    """One Prosody serving *domain* on 127.0.0.1.

    Args:
        domain: the VirtualHost it serves.
        directory: its state (config, certificates, data, log); created when missing.
        tls: S2S TLS policy: ``required`` (``s2s_require_encryption``), ``optional`` or ``off``
            (``s2s_allow_encryption = false``).
        remotes: remote domain -> loopback S2S port; published as SRV/A records in the DNS zone
            at :meth:`start`.
        dns: a running :class:`dnsserver.DnsServer` to resolve through (records added by the
            caller are seen at once); None: a private zone with just the ``remotes``.
        extra_config: Lua lines added to the global section (``s2s_ssl``, ``s2s_secure_domains``,
            ``network_settings``, ...).
        certificate: a tests/certs.py ``IssuedCert`` to present; None: a self-signed one for
            *domain*, made at the first start and kept across restarts.
        log_level: ``debug`` (default: the log shows every element sent and received) or
            ``info`` (not less: start() reads readiness from the log).
        direct_tls_port: a loopback port for Direct TLS S2S (XEP-0368, ``s2s_direct_tls_ports``;
            0: none). Prosody presents the host's certificate there, and itself asks for
            ``_xmpps-server._tcp`` before ``_xmpp-server._tcp`` when it connects out.
    """

    program = "prosody"

    def __init__(
        self,
        domain: str,
        directory: str | os.PathLike[str],
        *,
        tls: str = "required",
        remotes: dict[str, int] | None = None,
        dns: DnsServer | None = None,
        extra_config: str = "",
        certificate: Any = None,
        log_level: str = "debug",
        c2s_port: int = 0,
        s2s_port: int = 0,
        direct_tls_port: int = 0,
    ) -> None:
        if tls not in _TLS:
            raise ValueError(f"tls must be one of {sorted(_TLS)}, not {tls!r}")
        super().__init__(domain, Path(directory), c2s_port, s2s_port, remotes, dns)
        self.tls = tls
        self.extra_config = extra_config
        self.log_level = log_level
        self.direct_tls_port = direct_tls_port
        self._certificate = certificate

    # -- files ------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "prosody.cfg.lua"

    @property
    def cert_path(self) -> Path:
        """The certificate Prosody presents (PEM)."""
        return self.dir / "certs" / f"{self.domain}.crt"

    @property
    def key_path(self) -> Path:
        return self.dir / "certs" / f"{self.domain}.key"

    @property
    def log_path(self) -> Path:
        return self.dir / "prosody.log"

    def log(self) -> str:
        """Everything Prosody logged so far (at debug level: the elements on the wire)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_certificate(self) -> None:
        if self._certificate is None and self.cert_path.exists():
            return  # the self-signed one of an earlier start
        import certs  # tests/certs.py

        issued = self._certificate or certs.self_signed(self.domain)
        self.cert_path.parent.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(issued.cert_pem())
        self.key_path.write_bytes(issued.key_pem())
        self.key_path.chmod(0o600)

    def _state_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    def _ready(self) -> bool:
        log = self.log()
        return all(
            f"Activated service '{service}' on [{LOOPBACK}]:{port}" in log
            for service, port in (("s2s", self.s2s_port), ("c2s", self.c2s_port))
        )

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        why = prosody_missing()
        if why:
            raise ServerError(why)
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_certificate()
        zone = self._open_zone()
        dns = (
            "unbound = { resolvconf = false; hoststxt = false;\n"
            f'            forward = "{zone.host}@{zone.port}";\n'
            '            options = { ["local-zone:"] = "test. transparent" } }'
        )
        if self.log_path.exists():  # a restart: keep the earlier run's log beside
            self.log_path.replace(self.dir / "prosody.log.prev")
        self.config_path.write_text(
            render(
                "prosody.cfg.lua",
                DIR=self.dir,
                DOMAIN=self.domain,
                IFACE=LOOPBACK,
                C2S_PORT=self.c2s_port,
                S2S_PORT=self.s2s_port,
                S2S_DIRECT_TLS_PORTS=self.direct_tls_port or "",
                LOG_LEVEL=self.log_level,
                TLS=_TLS[self.tls],
                DNS=dns,
                EXTRA=self.extra_config,
            )
        )
        return ["prosody", "--config", str(self.config_path), "-F"], dict(os.environ)

    def s2s_sessions(self) -> dict[str, Session]:
        """Prosody's s2s sessions (``s2sin…``/``s2sout…``) by name, from its log."""
        return s2s_sessions(self.log())

    def adduser(self, user: str, password: str) -> None:
        """Create the account *user*@domain (``prosodyctl register``)."""
        self.run_tool(
            ["prosodyctl", "--config", str(self.config_path), "register", user, self.domain,
             password]
        )  # fmt: skip


# --- Prosody's log, read as s2s sessions ---------------------------------------------------

_LINE = re.compile(r"^\w+ +\d+ [\d:]+ (\S+)\t(\w+)\t(.*)$")
_COMPLETE = re.compile(r"^(Incoming|Outgoing) s2s connection (\S+)->(\S+) complete")


def s2s_sessions(log: str) -> dict[str, Session]:
    """Prosody's s2s sessions by name, from its debug or info log."""
    out: dict[str, Session] = {}
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m or not m.group(1).startswith(("s2sin", "s2sout")):
            continue
        name, _level, text = m.groups()
        s = out.setdefault(name, Session(name, "in" if name.startswith("s2sin") else "out"))
        s.lines.append(text)
        if text.startswith("Stream encrypted"):
            s.encrypted = True
        c = _COMPLETE.match(text)
        if c:
            s.completed.append((c.group(2), c.group(3)))
    return out
