"""Embedded defaults: data directory, self-signed certificate and component password, reused."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from s2sfast.server.defaults import (
    DEFAULT_COMPONENT_PORT,
    DEFAULT_S2S_PORT,
    default_data_dir,
    embedded_config,
    ensure_certificate,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "s2sfast"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "s2sfast"
    # the XDG spec says relative values are invalid and must be ignored
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "s2sfast"


def test_first_start_creates_private_files_and_a_localhost_config(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b"
    emb = embedded_config(data)
    assert _mode(data) == 0o700
    assert _mode(emb.certfile) == 0o600
    assert _mode(data / "component-password") == 0o600
    assert emb.certificate_created and emb.password_created

    cfg = emb.config
    assert cfg.hosts == ("localhost",)
    (listener,) = cfg.listen_s2s
    assert (listener.ip_address, listener.port) == ("127.0.0.1", DEFAULT_S2S_PORT)
    assert cfg.s2s.use_starttls == "optional"
    assert cfg.s2s.certfile == str(emb.certfile)
    assert len(cfg.s2s.shared) == 20
    (svc,) = emb.listen_service
    assert (svc.ip_address, svc.port) == ("127.0.0.1", DEFAULT_COMPONENT_PORT)
    assert len(svc.password) >= 20
    assert (data / "component-password").read_text().strip() == svc.password


def test_certificate_is_ec_p256_self_signed_for_localhost(tmp_path: Path) -> None:
    emb = embedded_config(tmp_path)
    cert = x509.load_pem_x509_certificate(emb.certfile.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.issuer == cert.subject
    public = (tmp_path / "s2s.crt").read_bytes()
    assert x509.load_pem_x509_certificate(public) == cert


def test_second_start_reuses_certificate_and_password(tmp_path: Path) -> None:
    first = embedded_config(tmp_path)
    pem, password = first.certfile.read_bytes(), first.listen_service[0].password
    second = embedded_config(tmp_path)
    assert not second.certificate_created and not second.password_created
    assert second.certfile.read_bytes() == pem
    assert second.listen_service[0].password == password


def test_broken_certificate_file_is_replaced(tmp_path: Path) -> None:
    path, created = ensure_certificate(tmp_path)
    assert created
    path.write_bytes(b"-----BEGIN GARBAGE-----\n")
    path2, created2 = ensure_certificate(tmp_path)
    assert created2 and path2 == path
    x509.load_pem_x509_certificate(path.read_bytes())


def test_certificate_for_another_host_is_replaced(tmp_path: Path) -> None:
    ensure_certificate(tmp_path, "other.test")
    _, created = ensure_certificate(tmp_path, "localhost")
    assert created


async def test_certificate_serves_tls_that_verifies_as_localhost(tmp_path: Path) -> None:
    emb = embedded_config(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(emb.certfile)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "s2s.crt"))
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert await reader.read() == b"ok"
        writer.close()
