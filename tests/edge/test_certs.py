"""Certificates for the marketplace's TLS listener (Table 4: TLS 1.2+, client CN = APID)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from gridhub.edge import certs


def test_ensure_ca_creates_once_and_reuses(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path / "ca")
    first = ca.cert_file.read_bytes()
    assert ca.key_file.stat().st_mode & 0o777 == 0o600
    again = certs.ensure_ca(tmp_path / "ca")
    assert again == ca
    assert again.cert_file.read_bytes() == first
    cert = x509.load_pem_x509_certificate(first)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ensure_ca_refuses_half_a_ca(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path)
    ca.key_file.unlink()
    with pytest.raises(certs.CertificateError, match=r"only one of ca\.crt and ca\.key"):
        certs.ensure_ca(tmp_path)


def test_server_cert_names_marketplace_localhost_and_loopback(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path)
    server = certs.issue_server_cert(ca, tmp_path)
    cert = x509.load_pem_x509_certificate(server.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["marketplace", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_file.read_bytes()))


def test_client_cert_common_name_is_the_apid(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path)
    client = certs.issue_client_cert("acme_thermal_1.0.0", ca, tmp_path / "clients")
    assert client.cert_file.name == "acme_thermal_1.0.0.crt"
    assert certs.certificate_common_name(client.cert_file) == "acme_thermal_1.0.0"
    cert = x509.load_pem_x509_certificate(client.cert_file.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_file.read_bytes()))


@pytest.mark.parametrize("apid", ["", "acme thermal", "../etc/passwd", "a/b"])
def test_client_cert_refuses_unsafe_names(tmp_path: Path, apid: str) -> None:
    ca = certs.ensure_ca(tmp_path)
    with pytest.raises(certs.CertificateError, match="client certificate APID"):
        certs.issue_client_cert(apid, ca, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_damaged_ca_key_is_reported(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path)
    ca.key_file.write_text("not a key")
    with pytest.raises(certs.CertificateError, match="cannot read an unencrypted PEM private key"):
        certs.issue_client_cert("acme_x_1", ca, tmp_path)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Run one TLS handshake on loopback; return the peer CN the server saw, or raise."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                seen["peer"] = peer
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="marketplace") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.recv(2)
    finally:
        thread.join(5)
        listener.close()
    if "error" in seen:
        raise ssl.SSLError(str(seen["error"]))
    peer = seen.get("peer")
    if not isinstance(peer, dict):
        return None
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def test_tls_handshake_with_client_certificate(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path)
    server = certs.issue_server_cert(ca, tmp_path)
    client = certs.issue_client_cert("acme_thermal_1.0.0", ca, tmp_path)
    common_name = _handshake(certs.server_ssl_context(ca, server), certs.client_ssl_context(ca.cert_file, client))
    assert common_name == "acme_thermal_1.0.0"


def test_tls_below_1_2_is_refused(tmp_path: Path) -> None:
    ca = certs.ensure_ca(tmp_path)
    server = certs.issue_server_cert(ca, tmp_path)
    client = certs.issue_client_cert("acme_thermal_1.0.0", ca, tmp_path)
    old = certs.client_ssl_context(ca.cert_file, client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.1 is the point of the test
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(certs.server_ssl_context(ca, server), old)
