"""X.509 certificates for the Data Marketplace's TLS listener (Table 4 of the LV-CAP API).

Table 4 asks for TLS v1.2 or higher with X.509 client certificates whose Common Name is the
Application ID <APID>, all signed by one Certificate Authority that the marketplace trusts. This
module creates that CA, the broker's server certificate (host names "marketplace" and
"localhost", IP 127.0.0.1) and the per-app client certificates. Keys are EC P-256, written with
mode 0600; certificates are PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_COMMON_NAME = "gridhub marketplace CA"
SERVER_HOST_NAMES: tuple[str, ...] = ("marketplace", "localhost")
SERVER_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1",)
CA_DAYS = 3650
CERT_DAYS = 825
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertificateError(ValueError):
    """A certificate or key could not be created or read."""


@dataclass(frozen=True)
class CertFiles:
    """A PEM certificate and its private key on disk."""

    cert_file: Path
    key_file: Path


def ensure_ca(directory: Path, *, common_name: str = CA_COMMON_NAME, days: int = CA_DAYS) -> CertFiles:
    """Return the CA in directory (ca.crt, ca.key), creating it when absent."""
    cert_file, key_file = directory / "ca.crt", directory / "ca.key"
    if cert_file.exists() and key_file.exists():
        _load_pair(CertFiles(cert_file, key_file))  # refuse a damaged CA rather than sign with it
        return CertFiles(cert_file, key_file)
    if cert_file.exists() or key_file.exists():
        raise CertificateError(f"{directory}: found only one of ca.crt and ca.key; restore or remove it")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(cert_file, key_file)
    _write_pair(files, cert, key)
    log.info("created marketplace CA %s", cert_file)
    return files


def issue_server_cert(
    ca: CertFiles,
    directory: Path,
    *,
    host_names: Sequence[str] = SERVER_HOST_NAMES,
    ip_addresses: Sequence[str] = SERVER_IP_ADDRESSES,
    name: str = "server",
    days: int = CERT_DAYS,
) -> CertFiles:
    """Issue the broker's server certificate (<name>.crt/.key) for the given host names and IPs."""
    _check_name(name, "server certificate name")
    if not host_names and not ip_addresses:
        raise CertificateError("server certificate: give at least one host name or IP address")
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in host_names]
    for ip in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertificateError(f"server certificate: {ip!r} is not an IP address") from None
    common_name = host_names[0] if host_names else ip_addresses[0]
    return _issue(ca, directory, name, common_name, sans, ExtendedKeyUsageOID.SERVER_AUTH, days)


def issue_client_cert(apid: str, ca: CertFiles, directory: Path, *, days: int = CERT_DAYS) -> CertFiles:
    """Issue a client certificate whose Common Name is the APID (<apid>.crt/.key in directory)."""
    _check_name(apid, "client certificate APID")
    return _issue(ca, directory, apid, apid, [], ExtendedKeyUsageOID.CLIENT_AUTH, days)


def certificate_common_name(cert_file: Path) -> str:
    """Return the subject Common Name of a PEM certificate."""
    cert = _load_cert(cert_file)
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        raise CertificateError(f"{cert_file}: certificate has no Common Name")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def server_ssl_context(ca: CertFiles | Path, server: CertFiles, *, require_certificate: bool = True) -> ssl.SSLContext:
    """Build a TLS 1.2+ server context that verifies client certificates against the CA."""
    ca_file = ca.cert_file if isinstance(ca, CertFiles) else ca
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(server.cert_file, server.key_file)
    context.load_verify_locations(cafile=str(ca_file))
    context.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
    return context


def client_ssl_context(ca_file: Path, client: CertFiles | None = None) -> ssl.SSLContext:
    """Build a TLS 1.2+ client context trusting the CA, with an optional client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


def _issue(
    ca: CertFiles,
    directory: Path,
    file_stem: str,
    common_name: str,
    sans: Iterable[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> CertFiles:
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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    san_list = list(sans)
    if san_list:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_list), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(directory / f"{file_stem}.crt", directory / f"{file_stem}.key")
    _write_pair(files, cert, key)
    log.info("issued certificate CN=%s at %s", common_name, files.cert_file)
    return files


def _load_cert(cert_file: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{cert_file}: cannot read a PEM certificate ({exc})") from exc


def _load_pair(files: CertFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _load_cert(files.cert_file)
    try:
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"{files.key_file}: cannot read an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{files.key_file}: expected an EC private key")
    cert_key = cert.public_key()
    if (
        not isinstance(cert_key, ec.EllipticCurvePublicKey)
        or key.public_key().public_numbers() != cert_key.public_numbers()
    ):
        raise CertificateError(f"{files.key_file}: key does not belong to {files.cert_file}")
    return cert, key


def _write_pair(files: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    os.chmod(files.key_file, 0o600)
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _check_name(name: str, what: str) -> None:
    if not _SAFE_NAME.match(name):
        raise CertificateError(
            f"{what}: {name!r} must be 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
