"""Real TLS handshakes between contexts from s2sfast.net.tls, over ssl.MemoryBIO pairs.

This is how stream.py drives TLS (SSLObject + MemoryBIO), so these tests exercise the exact
objects the node uses: certificates from tests/certs.py, no mocks.
"""

from __future__ import annotations

import ctypes
import ssl
import subprocess

import pytest
from certs import make_ca
from tls_pair import Pair
from tls_pair import client_context as client
from tls_pair import server_context as server

from s2sfast.config import ConfigError, ListenS2S, ListenTls, S2SOptions
from s2sfast.net.tls import (
    make_client_context,
    make_server_context,
    peer_chain,
    requests_peer_certificate,
    verify_peer,
)

# --- modes and basic properties ---------------------------------------------------------------


def test_false_means_no_context(pki):
    assert make_client_context(S2SOptions(use_starttls="false", certfile=pki["a"])) is None
    assert make_server_context(S2SOptions(use_starttls="false"), ListenS2S(port=1)) is None


@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
def test_hygiene_flags(pki, mode):
    for ctx in (client(pki, mode), server(pki, mode)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.options & ssl.OP_NO_TICKET
    c = client(pki, mode)
    assert c.check_hostname is False
    expected = ssl.CERT_REQUIRED if mode == "required_trusted" else ssl.CERT_NONE
    assert c.verify_mode == expected
    assert requests_peer_certificate(server(pki, mode))


def test_valid_chain_both_ways_with_intermediate(pki):
    pair = Pair(client(pki), server(pki)).ok()
    assert pair.client.version() == "TLSv1.3"
    assert pair.client.compression() is None and pair.server.compression() is None
    # What each side received from the other, leaf first.
    to_server = peer_chain(pair.server)
    to_client = peer_chain(pair.client)
    assert len(to_server) == 2  # a.test's leaf + the intermediate, on the server side too
    assert len(to_client) == 1
    assert verify_peer(to_server, "a.test", cafile=pki["cafile"]).ok
    assert verify_peer(to_client, "b.test", cafile=pki["cafile"]).ok
    assert pair.send(pair.client, pair.server, b"<stream:stream>") == b"<stream:stream>"
    assert pair.send(pair.server, pair.client, b"\xf0\x9f\x98\x80") == "😀".encode()


def test_peer_chain_leaf_is_what_getpeercert_returns(pki):
    pair = Pair(client(pki), server(pki)).ok()
    assert peer_chain(pair.server)[0] == pair.server.getpeercert(binary_form=True)
    assert peer_chain(pair.client)[0] == pair.client.getpeercert(binary_form=True)


# --- outbound: the client judges the server -------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "message"),
    [("b_expired", "certificate has expired"), ("b_self", "self-signed certificate")],
)
def test_required_trusted_client_refuses_bad_server_chain(pki, cert, message):
    client_err, server_err = Pair(client(pki), server(pki, cert=cert)).handshake()
    assert isinstance(client_err, ssl.SSLCertVerificationError)
    assert message in str(client_err)
    assert server_err is not None  # the server got the alert


@pytest.mark.parametrize("cert", ["b_expired", "b_self", "b_wrong"])
def test_optional_client_connects_and_reports_status(pki, cert):
    pair = Pair(client(pki, "optional"), server(pki, "optional", cert=cert)).ok()
    status = verify_peer(peer_chain(pair.client), "b.test", cafile=pki["cafile"])
    assert not status.ok and status.reason


def test_wrong_name_passes_openssl_but_not_our_check(pki):
    pair = Pair(client(pki), server(pki, cert="b_wrong")).ok()  # check_hostname is off
    status = verify_peer(peer_chain(pair.client), "b.test", cafile=pki["cafile"])
    assert status.trusted and not status.name_matches
    assert "does not name b.test" in status.reason


@pytest.mark.parametrize(
    ("cert", "domain"),
    [("b_wild", "x.b.test"), ("b_srv", "b.test"), ("b_xmpp", "b.test")],
)
def test_wildcard_srv_id_and_xmpp_addr_identities(pki, cert, domain):
    pair = Pair(client(pki), server(pki, cert=cert), sni=domain).ok()
    assert verify_peer(peer_chain(pair.client), domain, cafile=pki["cafile"]).ok
    assert not verify_peer(peer_chain(pair.client), "other.test", cafile=pki["cafile"]).ok


# --- inbound: the server asks for the peer's certificate but decides itself --------------------


@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
def test_server_accepts_untrusted_client_certificate_and_lets_us_decide(pki, mode):
    # OpenSSL alone would abort this handshake (unknown issuer); our server must not.
    pair = Pair(client(pki, "optional", cert="a_self"), server(pki, mode)).ok()
    chain = peer_chain(pair.server)
    assert len(chain) == 1
    status = verify_peer(chain, "a.test", cafile=pki["cafile"])
    assert not status.trusted and status.name_matches
    assert status.reason == "the certificate is self-signed and not a trust anchor"


def test_server_sees_client_without_certificate(pki):
    pair = Pair(client(pki, "optional", cert=None), server(pki)).ok()
    assert peer_chain(pair.server) == []
    status = verify_peer(peer_chain(pair.server), "a.test", cafile=pki["cafile"])
    assert status.reason == "the peer presented no certificate"


def test_verify_mode_none_does_not_request_certificates(pki):
    ctx = server(pki, "required", verify_mode="none")
    assert not requests_peer_certificate(ctx)
    pair = Pair(client(pki, "optional"), ctx).ok()
    assert peer_chain(pair.server) == []
    # required_trusted needs the certificate whatever verify_mode says.
    assert requests_peer_certificate(server(pki, "required_trusted", verify_mode="none"))


def test_plain_openssl_server_would_abort_the_same_handshake(pki):
    """Control for the test above: why the accept-all callback is needed."""
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(pki["b"])
    plain.load_verify_locations(pki["cafile"])
    plain.verify_mode = ssl.CERT_OPTIONAL
    _, server_err = Pair(client(pki, "optional", cert="a_self"), plain).handshake()
    assert isinstance(server_err, ssl.SSLCertVerificationError)


# --- versions and ciphers ----------------------------------------------------------------------


def _old_client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = max_version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_refused_by_our_server(pki):
    _, server_err = Pair(_old_client(ssl.TLSVersion.TLSv1_1), server(pki, cert="b_rsa")).handshake()
    assert server_err is not None
    assert "version" in str(server_err).lower() or "protocol" in str(server_err).lower()

    # Control: a permissive server does speak TLS 1.1 with that client here.
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.load_cert_chain(pki["b_rsa"])
    lax.minimum_version = ssl.TLSVersion.TLSv1
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    pair = Pair(_old_client(ssl.TLSVersion.TLSv1_1), lax).ok()
    assert pair.client.version() == "TLSv1.1"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_server_refused_by_our_client(pki):
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(pki["b_rsa"])
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    client_err, _ = Pair(client(pki, "optional"), old).handshake()
    assert client_err is not None


def _tls12_server(pki, cert="b", **tls):
    ctx = server(pki, "optional", cert=cert, **tls)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # a peer that stops at TLS 1.2
    return ctx


@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_s2s_ciphers_apply_to_outgoing(pki, cipher):
    pair = Pair(client(pki, "optional", ciphers=cipher), _tls12_server(pki)).ok()
    assert pair.client.version() == "TLSv1.2"
    assert pair.client.cipher()[0] == cipher


def test_listener_ciphers_apply_to_incoming(pki):
    pair = Pair(
        client(pki, "optional"), _tls12_server(pki, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    ).ok()
    assert pair.server.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_no_common_cipher_fails(pki):
    client_err, server_err = Pair(
        client(pki, "optional", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"),
        _tls12_server(pki, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"),
    ).handshake()
    assert client_err is not None and server_err is not None


def test_tls13_only_cipher_string(pki):
    only13 = client(pki, "optional", ciphers="TLSv1.3")
    assert only13.minimum_version == ssl.TLSVersion.TLSv1_3
    assert Pair(only13, server(pki, "optional")).ok().client.version() == "TLSv1.3"
    client_err, _ = Pair(only13, _tls12_server(pki)).handshake()
    assert client_err is not None


def test_default_ciphers_negotiate_tls13_and_tls12(pki):
    assert Pair(client(pki, "optional"), server(pki, "optional")).ok().client.version() == "TLSv1.3"
    assert Pair(client(pki, "optional"), _tls12_server(pki)).ok().client.version() == "TLSv1.2"


def test_dhfile_enables_dhe(pki, tmp_path):
    dhfile = tmp_path / "dh.pem"
    subprocess.run(
        ["openssl", "dhparam", "-dsaparam", "-out", str(dhfile), "2048"],
        check=True,
        capture_output=True,
    )
    ctx = _tls12_server(pki, cert="b_rsa", dhfile=str(dhfile))
    pair = Pair(client(pki, "optional", ciphers="DHE-RSA-AES128-GCM-SHA256"), ctx).ok()
    assert pair.client.cipher()[0] == "DHE-RSA-AES128-GCM-SHA256"
    # Without the dhfile that cipher cannot be chosen.
    client_err, _ = Pair(
        client(pki, "optional", ciphers="DHE-RSA-AES128-GCM-SHA256"),
        _tls12_server(pki, cert="b_rsa"),
    ).handshake()
    assert client_err is not None


# --- renegotiation -----------------------------------------------------------------------------


def _ssl_ptr(sslobj: ssl.SSLObject) -> int:
    """The SSL* of an SSLObject: _ssl._SSLSocket is PyObject_HEAD, a weakref, then SSL*."""
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_get_version.restype = ctypes.c_char_p
    lib.SSL_get_version.argtypes = [ctypes.c_void_p]
    inner = sslobj._sslobj
    ptr = ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + 8).value
    assert lib.SSL_get_version(ptr).decode() == sslobj.version()  # it really is the SSL*
    return ptr


def _renegotiate(initiator: ssl.SSLObject, pair: Pair) -> tuple[bool, Exception | None]:
    """Ask OpenSSL to renegotiate from *initiator*; return (renegotiated?, first error)."""
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_renegotiate.argtypes = [ctypes.c_void_p]
    lib.SSL_renegotiate_pending.argtypes = [ctypes.c_void_p]
    ptr = _ssl_ptr(initiator)
    if lib.SSL_renegotiate(ptr) != 1:
        return False, None
    error = None
    try:
        initiator.do_handshake()  # sends the ClientHello (client) or HelloRequest (server)
    except ssl.SSLWantReadError:
        pass
    for _ in range(20):
        pair.shuttle()
        for side in (pair.client, pair.server):
            try:
                side.read(1024)  # both sides process the handshake messages in SSL_read
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                error = error or e
        if not pair.shuttle():
            break
    return error is None and lib.SSL_renegotiate_pending(ptr) == 0, error


#: OpenSSL 3.0 refuses client-initiated renegotiation unless this option is set.
_OP_ALLOW_CLIENT_RENEGOTIATION = 1 << 8


def _plain(side: str, pki, cert: str) -> ssl.SSLContext:
    proto = ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(proto)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options &= ~ssl.OP_NO_RENEGOTIATION
    if side == "server":
        ctx.options |= _OP_ALLOW_CLIENT_RENEGOTIATION
        ctx.load_cert_chain(pki[cert])
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_our_server_refuses_client_renegotiation(pki):
    control = Pair(_plain("client", pki, ""), _plain("server", pki, "b")).ok()
    assert _renegotiate(control.client, control)[0] is True  # renegotiation works in general

    pair = Pair(_plain("client", pki, ""), _tls12_server(pki)).ok()
    renegotiated, _ = _renegotiate(pair.client, pair)
    assert renegotiated is False


def test_our_client_refuses_server_renegotiation(pki):
    control = Pair(_plain("client", pki, ""), _plain("server", pki, "b")).ok()
    assert _renegotiate(control.server, control)[0] is True

    pair = Pair(client(pki, "optional"), _plain("server", pki, "b")).ok()
    renegotiated, _ = _renegotiate(pair.server, pair)
    assert renegotiated is False


# --- configuration errors ----------------------------------------------------------------------


def test_server_needs_a_certfile():
    with pytest.raises(ConfigError, match="s2s.certfile: required"):
        make_server_context(S2SOptions(use_starttls="optional"), ListenS2S(port=1))


def test_unreadable_files_are_config_errors(pki, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_client_context(S2SOptions(use_starttls="optional", certfile=str(tmp_path / "x")))
    only_cert = tmp_path / "cert-only.pem"
    only_cert.write_bytes(open(pki["cafile"], "rb").read())
    with pytest.raises(ConfigError, match="unencrypted private key"):
        make_server_context(
            S2SOptions(use_starttls="required", certfile=str(only_cert)), ListenS2S(port=1)
        )
    with pytest.raises(ConfigError, match="cacertfile"):
        make_client_context(
            S2SOptions(use_starttls="required_trusted", certfile=pki["a"]), str(tmp_path / "no")
        )
    with pytest.raises(ConfigError, match="dhfile"):
        server(pki, "optional", dhfile=str(tmp_path / "no-dh.pem"))


def test_bad_ciphers_are_config_errors(pki):
    with pytest.raises(ConfigError, match="s2s.ciphers"):
        client(pki, "optional", ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ConfigError, match="listen.s2s.tls.ciphers"):
        server(pki, "optional", ciphers="NO-SUCH-CIPHER")


# --- sessions, listener certfile, peer_chain fallback ------------------------------------------


def test_server_sends_no_session_tickets(pki):
    pair = Pair(client(pki, "optional"), server(pki, "optional")).ok()
    pair.send(pair.server, pair.client, b"x")  # lets the client read any NewSessionTicket
    assert not pair.client.session.has_ticket

    # Control: a default Python server context does hand out TLS 1.3 tickets.
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(pki["b"])
    pair = Pair(client(pki, "optional"), plain).ok()
    pair.send(pair.server, pair.client, b"x")
    assert pair.client.session.has_ticket


def test_listener_certfile_is_the_fallback_identity(pki):
    ctx = make_server_context(
        S2SOptions(use_starttls="optional"),
        ListenS2S(port=1, tls=ListenTls(certfile=pki["b_wild"])),
    )
    pair = Pair(client(pki, "optional"), ctx).ok()
    assert verify_peer(peer_chain(pair.client), "x.b.test", cafile=pki["cafile"]).ok
    # [s2s] certfile wins over the listener's.
    ctx = make_server_context(
        S2SOptions(use_starttls="optional", certfile=pki["b"]),
        ListenS2S(port=1, tls=ListenTls(certfile=pki["b_wild"])),
    )
    pair = Pair(client(pki, "optional"), ctx).ok()
    assert verify_peer(peer_chain(pair.client), "b.test", cafile=pki["cafile"]).ok


class _LeafOnly:
    """An SSLObject seen through getpeercert only (what peer_chain falls back to)."""

    def __init__(self, sslobj: ssl.SSLObject) -> None:
        self._real = sslobj

    def getpeercert(self, binary_form: bool = False):
        return self._real.getpeercert(binary_form)


def test_peer_chain_falls_back_to_the_leaf(pki):
    pair = Pair(client(pki), server(pki)).ok()
    full = peer_chain(pair.server)
    assert len(full) == 2
    leaf_only = peer_chain(_LeafOnly(pair.server))
    assert leaf_only == full[:1]
    # Issued by an intermediate, the leaf alone does not verify; the full chain does.
    assert not verify_peer(leaf_only, "a.test", cafile=pki["cafile"]).trusted
    assert verify_peer(full, "a.test", cafile=pki["cafile"]).trusted
    # Before any handshake there is nothing.
    fresh = client(pki).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="b.test")
    assert peer_chain(fresh) == []


def test_no_tls13_cipher_string_negotiates_tls12(pki):
    pair = Pair(client(pki, "optional", ciphers="TLSv1.2:!TLSv1.3"), server(pki, "optional")).ok()
    assert pair.client.version() == "TLSv1.2"


def test_host_config_certificates_are_chosen_by_sni(pki, tmp_path):
    ca_cert = make_ca("per-host CA")
    cafile = ca_cert.write_pem(tmp_path)
    c_file = ca_cert.issue(["c.test"]).write_pem(tmp_path, "c.pem")
    d_file = ca_cert.issue(["d.test"]).write_pem(tmp_path, "d.pem")
    default = ca_cert.issue(["b.test"]).write_pem(tmp_path, "default.pem")
    s2s = S2SOptions(use_starttls="optional", certfile=default)
    hosts = {
        "c.test": S2SOptions(use_starttls="optional", certfile=c_file),
        "D.test": S2SOptions(use_starttls="required_trusted", certfile=d_file),
        "plain.test": S2SOptions(use_starttls="false"),
        "same.test": s2s,
    }
    ctx = make_server_context(
        s2s, ListenS2S(port=1, tls=ListenTls(verify_mode="none")), hosts=hosts
    )
    for sni, expected in [
        ("c.test", "c.test"),
        ("d.test", "d.test"),
        ("b.test", "b.test"),
        ("plain.test", "b.test"),
        ("unknown.test", "b.test"),
        (None, "b.test"),
    ]:
        pair = Pair(client(pki, "optional", cert="a_self"), ctx, sni=sni).ok()
        status = verify_peer(peer_chain(pair.client), expected, cafile=cafile)
        assert status.ok, (sni, status.reason)
        # d.test is required_trusted, so the whole listener asks for the peer's certificate,
        # and an untrusted one never breaks the handshake, whichever context SNI picked.
        status = verify_peer(peer_chain(pair.server), "a.test", cafile=pki["cafile"])
        assert status.reason == "the certificate is self-signed and not a trust anchor"


def test_hosts_without_certificate_requests_keep_the_listener_quiet(pki):
    s2s = S2SOptions(use_starttls="optional", certfile=pki["b"])
    hosts = {"c.test": S2SOptions(use_starttls="required", certfile=pki["b_wild"])}
    ctx = make_server_context(
        s2s, ListenS2S(port=1, tls=ListenTls(verify_mode="none")), hosts=hosts
    )
    assert not requests_peer_certificate(ctx)
    pair = Pair(client(pki, "optional"), ctx, sni="c.test").ok()
    assert peer_chain(pair.server) == []
    assert verify_peer(peer_chain(pair.client), "x.b.test", cafile=pki["cafile"]).ok


def test_without_the_callback_the_server_does_not_ask(pki, monkeypatch):
    """If the accept-all callback cannot be installed, no certificate is requested at all, so
    OpenSSL can never abort a handshake over one (required_trusted then sees no certificate)."""
    import s2sfast.net.tls as tls_module

    monkeypatch.setattr(tls_module, "_accept_any_peer_chain", lambda ctx: False)
    ctx = server(pki, "required_trusted")
    assert not requests_peer_certificate(ctx)
    pair = Pair(client(pki, "optional", cert="a_self"), ctx).ok()
    status = verify_peer(peer_chain(pair.server), "a.test", cafile=pki["cafile"])
    assert status.reason == "the peer presented no certificate"
