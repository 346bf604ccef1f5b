"""HTTPS for the hub and mutual-TLS site authentication.

The hub serves HTTPS when ``tls.cert`` and ``tls.key`` are set; with ``tls.client_ca`` it also
*requests* (``CERT_OPTIONAL``) a client certificate and verifies it against that CA during the
handshake, so a certificate of another CA never reaches the application (a TLS error) while a
client without a certificate can still use its token. A site certificate's subject Common Name
is the site name; the hub records each issued certificate's SHA-256 fingerprint in the site's
identity document, so removing a site or issuing it a new certificate refuses the old one.

The site CA lives under ``<data_dir>/site-ca`` (``ca.crt``, ``ca.key``) and is created by
``gridhub hub site add NAME --cert DIR`` or ``gridhub hub site cert NAME DIR`` on first use.
Keys are EC P-256 written with mode 0600; certificates are PEM. (The edge has its own CA code
for its marketplace, :mod:`gridhub.edge.certs`; hub and edge never import each other.)

Getting the peer certificate into the ASGI app: uvicorn (0.54) does not implement the ASGI TLS
extension (uvicorn PRs #1119, #2586, #3132 and #3133 are open; issue #745). :func:`http_protocol`
returns a small subclass of uvicorn's HTTP protocol that, once the handshake is done
(``connection_made``), wraps the connection's ASGI app so each request scope carries
``scope["extensions"]["tls"]`` as that extension (version 0.2) describes it: the verified client
certificate as ``client_cert_chain[0]`` (PEM; CPython only exposes the leaf before 3.13), its
subject as ``client_cert_name``, ``tls_version``, ``cipher_suite`` and ``client_cert_error``
(always None: a failed verification aborts the handshake). No request header is ever trusted
for this.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "SITE_CA_DIR",
    "CertPair",
    "TlsError",
    "certificate_common_name",
    "certificate_fingerprint",
    "ensure_site_ca",
    "http_protocol",
    "issue_server_certificate",
    "issue_site_certificate",
    "peer_certificate",
    "pem_to_der",
    "tls_extension",
    "uvicorn_ssl_options",
]

log = logging.getLogger(__name__)

SITE_CA_DIR = "site-ca"
"""Folder of the site CA under the hub's data_dir."""
CA_COMMON_NAME = "gridhub hub site CA"
CA_DAYS = 3650
CERT_DAYS = 825
MAX_COMMON_NAME = 64  # X.520 ub-common-name
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class TlsError(ValueError):
    """A certificate or key could not be created or read; the message names the file."""


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its private key on disk."""

    cert_file: Path
    key_file: Path


# -- the site CA and certificates -----------------------------------------------------------


def ensure_site_ca(directory: Path) -> CertPair:
    """Return the site CA in directory (ca.crt, ca.key), creating it when absent."""
    pair = CertPair(directory / "ca.crt", directory / "ca.key")
    if pair.cert_file.exists() and pair.key_file.exists():
        _load_pair(pair)  # refuse a damaged CA rather than sign with it
        return pair
    if pair.cert_file.exists() or pair.key_file.exists():
        raise TlsError(f"{directory}: found only one of ca.crt and ca.key; restore or remove it")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(pair, cert, key)
    log.info("created the hub's site CA %s", pair.cert_file)
    return pair


def issue_site_certificate(site: str, ca: CertPair, directory: Path, *, days: int = CERT_DAYS) -> CertPair:
    """Issue a client certificate whose Common Name is the site name (<site>.crt/.key in directory)."""
    if not site or len(site) > MAX_COMMON_NAME or "/" in site or site != site.strip():
        raise TlsError(f"site name {site!r}: a certificate needs 1-{MAX_COMMON_NAME} characters without '/'")
    return _issue(ca, directory, _file_stem(site), site, [], ExtendedKeyUsageOID.CLIENT_AUTH, days)


def issue_server_certificate(
    ca: CertPair,
    directory: Path,
    *,
    host_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    name: str = "server",
    days: int = CERT_DAYS,
) -> CertPair:
    """Issue a server certificate (<name>.crt/.key) for the given host names and IP addresses."""
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in host_names]
    for ip in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise TlsError(f"server certificate: {ip!r} is not an IP address") from None
    if not sans:
        raise TlsError("server certificate: give at least one host name or IP address")
    common_name = host_names[0] if host_names else ip_addresses[0]
    return _issue(ca, directory, name, common_name, sans, ExtendedKeyUsageOID.SERVER_AUTH, days)


def certificate_fingerprint(der: bytes) -> str:
    """Return the SHA-256 fingerprint (lower-case hex) of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def certificate_common_name(der: bytes) -> str | None:
    """Return the subject Common Name of a DER certificate, or None when it has none or is unreadable."""
    try:
        cert = x509.load_der_x509_certificate(der)
        values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def pem_to_der(pem: str | bytes) -> bytes:
    """Return the DER bytes of a PEM certificate (TlsError when it is not one)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise TlsError(f"not a PEM certificate ({exc})") from None
    return cert.public_bytes(serialization.Encoding.DER)


# -- the peer certificate in the ASGI scope ---------------------------------------------------


def peer_certificate(scope: Mapping[str, Any]) -> bytes | None:
    """Return the verified client certificate (DER) of a request's TLS connection, or None."""
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    if not isinstance(tls, Mapping):
        return None
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return pem_to_der(chain[0])
    except TlsError:
        return None


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """Return the ASGI TLS extension (0.2) of a connection, or None when it is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
    version = ssl_object.version()
    return {
        "server_cert": None,  # CPython cannot read back the server's own certificate from a context
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate failing verification aborts the handshake
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,  # CPython gives the suite's name, not its IANA number
    }


def _with_tls(app: Any, extension: dict[str, Any]) -> Any:
    async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
        await app(scope, receive, send)

    return app_with_tls


def http_protocol() -> type[asyncio.Protocol]:
    """Return uvicorn's HTTP protocol class extended to put the ASGI TLS extension in each scope."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools is optional in uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class TlsScopeProtocol(Base):
        """Uvicorn's protocol, adding scope["extensions"]["tls"] to every request of a TLS connection."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            extension = tls_extension(transport)
            if extension is not None:  # asyncio calls connection_made after the TLS handshake
                self.app = _with_tls(self.app, extension)

    return TlsScopeProtocol


def uvicorn_ssl_options(cert: Path, key: Path, client_ca: Path | None) -> dict[str, Any]:
    """Return the uvicorn.run keyword arguments serving HTTPS, requesting client certificates when a CA is given."""
    for what, path in (("tls.cert", cert), ("tls.key", key), ("tls.client_ca", client_ca)):
        if path is not None and not path.is_file():
            raise TlsError(f"{what}: {path} is not a readable file")
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "http": http_protocol()}
    if client_ca is not None:
        options["ssl_ca_certs"] = str(client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL  # sites with a token only still connect
    return options


# -- helpers ---------------------------------------------------------------------------------


def _file_stem(site: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in site)
    return safe.lstrip(".") or "site"


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca: CertPair,
    directory: Path,
    file_stem: str,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> CertPair:
    ca_cert, ca_key = _load_pair(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TlsError(f"{directory}: cannot create the folder: {exc.strerror or exc}") from None
    pair = CertPair(directory / f"{file_stem}.crt", directory / f"{file_stem}.key")
    _write_pair(pair, cert, key)
    log.info("issued certificate CN=%s at %s", common_name, pair.cert_file)
    return pair


def _load_pair(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(pair.cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{pair.cert_file}: cannot read a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(pair.key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"{pair.key_file}: cannot read an unencrypted PEM private key ({exc})") from None
    public = cert.public_key()
    if (
        not isinstance(key, ec.EllipticCurvePrivateKey)
        or not isinstance(public, ec.EllipticCurvePublicKey)
        or key.public_key().public_numbers() != public.public_numbers()
    ):
        raise TlsError(f"{pair.key_file}: not the EC key of {pair.cert_file}")
    return cert, key


def _write_pair(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(pair.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        os.chmod(pair.key_file, 0o600)
        pair.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise TlsError(f"{pair.key_file.parent}: cannot write the certificate: {exc.strerror or exc}") from None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
