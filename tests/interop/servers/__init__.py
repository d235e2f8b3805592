"""Real XMPP servers as federation peers for the interop tests: Debian's Prosody 0.12 and
ejabberd 23.01, each a throw-away process on 127.0.0.1 with its state in one directory.

API (the same for both servers)::

    from servers import ProsodyServer, EjabberdServer, need_server

    peer = ProsodyServer("b.test", tmp_path / "b", tls="required", remotes={"a.test": 5269})
    peer = EjabberdServer("b.test", tmp_path / "b", tls="optional", remotes={"a.test": 5269})
    peer.start()                 # returns once its c2s and s2s ports listen; ServerError if not
    peer.adduser("bob", "pw")    # an account for interop_c2s.C2SClient (SASL PLAIN, no TLS)
    peer.c2s_port, peer.s2s_port, peer.domain, peer.pid, peer.log(), peer.cert_path
    peer.s2s_sessions(), peer.completed_sessions("in")   # its S2S streams, from its log
    peer.stop()                  # SIGTERM by PID, wait (SIGKILL after stop_timeout)
    peer.stop(wait=False); ...; peer.wait_stopped()   # Prosody takes ~1.5 s to exit
    peer.kill()                  # SIGKILL by PID: a crash, for fault tests
    peer.start()                 # again: same ports, certificate, accounts (a restart)

The first start() of an object wipes its accounts/spool (a fresh server); remotes added to
``peer.remotes`` before start() are published then. The SRV target is the IP literal
(``add_xmpp_domain(zone, domain, port, srv_target="domain")`` for a name: Prosody only, see
tests/interop/README.md).

Constructor keywords (both): ``tls`` (``required`` | ``optional`` | ``off``), ``remotes``
(remote domain -> loopback S2S port), ``dns`` (a running ``dnsserver.DnsServer`` zone to
resolve through), ``extra_config`` (lines for the global section: Lua for Prosody, YAML for
ejabberd), ``certificate`` (a tests/certs.py ``IssuedCert``; default: self-signed for the
domain), ``log_level``, ``c2s_port``/``s2s_port`` (default: fresh free ports). ejabberd also
takes ``cafile`` (``s2s_cafile``), ``dialback=False`` (SASL EXTERNAL only: what its
``required_trusted`` means in 23.01) and ``api_port``, and has ``command(name, **args)`` (its
admin commands over loopback HTTP).

Both servers find remote domains through DNS only, never the machine's resolver: SRV/A records
for ``remotes`` in ``dns`` if given, else in a private loopback zone (tests/dnsserver.py) that
lives while the server runs. Prosody asks it through libunbound, ejabberd through Erlang's
resolver (``ERL_INETRC``) - for SRV records only: ejabberd looks up addresses with libc, so give
it IP-literal SRV targets (the default) and no domain its zone lacks. Neither server reads
the system's Prosody or ejabberd configuration, and both run as the calling user (root
included), so Debian's system instances are irrelevant except for ports.

Skipping: ``need_server("prosody"|"ejabberd")`` in a test skips it when that server cannot run
here, with the reason and how to install it (``INSTALL``); under ``S2SFAST_REQUIRE_INTEROP=1``
(``required()``; CI sets it) it fails the test instead. ``server_missing(name)`` is the reason
alone (None when the server can run).
"""

from ._process import (
    INSTALL,
    LOOPBACK,
    REQUIRE_ENV,
    ServerError,
    ServerProcess,
    Session,
    free_ports,
    required,
)
from .dns import add_xmpp_domain
from .ejabberd import EjabberdServer, ejabberd_missing, ejabberd_sessions
from .prosody import ProsodyServer, prosody_missing, s2s_sessions

__all__ = [
    "INSTALL",
    "LOOPBACK",
    "REQUIRE_ENV",
    "SERVERS",
    "EjabberdServer",
    "ProsodyServer",
    "ServerError",
    "ServerProcess",
    "Session",
    "add_xmpp_domain",
    "ejabberd_missing",
    "ejabberd_sessions",
    "free_ports",
    "need_server",
    "prosody_missing",
    "required",
    "s2s_sessions",
    "server_missing",
]

#: server name -> class
SERVERS = {"prosody": ProsodyServer, "ejabberd": EjabberdServer}


def server_missing(name: str) -> str | None:
    """Why the server *name* ("prosody" or "ejabberd") cannot run here, or None."""
    return {"prosody": prosody_missing, "ejabberd": ejabberd_missing}[name]()


def need_server(name: str) -> None:
    """In a test: skip it when the server *name* cannot run here (the reason says how to
    install it), or fail it instead under ``S2SFAST_REQUIRE_INTEROP=1``."""
    import pytest

    why = server_missing(name)
    if why is None:
        return
    message = f"interop: {name} cannot run here: {why}"
    if required():
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes that a failure", pytrace=False)
    pytest.skip(message)
