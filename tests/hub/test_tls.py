"""Mutual TLS for sites, over real TLS: a uvicorn hub on 127.0.0.1 with HTTPS and httpx/uploader clients.

The site CA and the site certificates are made by the real commands (``gridhub hub site add --cert``,
``gridhub hub site cert``, ``gridhub hub site remove``); the server certificate comes from a CA of
its own, which the clients trust through ``tls_ca``.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from gridhub.edge.apps.upload_transport import HttpTransport, upload_body
from gridhub.edge.apps.uploader import UploaderSettings
from gridhub.formats.lvcap import TableResult, TableRow
from gridhub.hub.app import create_app
from gridhub.hub.cli import hub as hub_cli
from gridhub.hub.settings import HubConfigError, HubSettings
from gridhub.hub.tls import (
    SITE_CA_DIR,
    CertPair,
    ensure_site_ca,
    issue_server_certificate,
    issue_site_certificate,
    uvicorn_ssl_options,
)
from tests.conftest import free_port, port_open, wait_for

TABLE = "test_pub_01"
T0 = 1_704_067_200


def rows(first: int, count: int) -> list[TableResult]:
    """Return one table's upload rows, IDs first..first+count-1."""
    return [
        TableResult(
            TABLE,
            [
                TableRow(
                    i,
                    T0 + 60 * i,
                    "/60/busbar/l1/voltage-mean",
                    b'{"Timestamp":%d,"Value":230.5,"Valid":true}' % (T0 + 60 * i),
                )
                for i in range(first, first + count)
            ],
        )
    ]


def body(first: int, count: int) -> bytes:
    return upload_body(f"b{first}", rows(first, count))


def add_site(data_dir: Path, name: str, cert_dir: Path | None = None) -> str:
    """Run `gridhub hub site add` (with --cert) and return the token it prints."""
    args = ["site", "add", name, "--data-dir", str(data_dir)]
    if cert_dir is not None:
        args += ["--cert", str(cert_dir)]
    result = CliRunner().invoke(hub_cli, args)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[1]


@dataclass
class TlsHub:
    url: str
    data_dir: Path
    server_ca: Path
    site_cert: CertPair
    token: str

    def client(self, cert: CertPair | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.server_ca))
        if cert is not None:
            context.load_cert_chain(cert.cert_file, cert.key_file)
        return httpx.Client(base_url=self.url, verify=context, timeout=10)

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(hub_cli, [*args, "--data-dir", str(self.data_dir)])
        assert result.exit_code == 0, result.output
        return result.output


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[TlsHub]:
    data_dir = tmp_path / "hub"
    token = add_site(data_dir, "site-a", tmp_path / "site-a")
    server_ca = ensure_site_ca(tmp_path / "server-ca")
    server = issue_server_certificate(server_ca, tmp_path / "server")
    site_ca = data_dir / SITE_CA_DIR / "ca.crt"
    settings = HubSettings(
        data_dir=data_dir,
        tls_cert=str(server.cert_file),
        tls_key=str(server.key_file),
        tls_client_ca=str(site_ca),
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **uvicorn_ssl_options(server.cert_file, server.key_file, site_ca),
    )
    server_process = uvicorn.Server(config)
    thread = threading.Thread(target=server_process.run, daemon=True)
    thread.start()
    wait_for(lambda: server_process.started, "the HTTPS hub to start")
    pair = CertPair(tmp_path / "site-a" / "site-a.crt", tmp_path / "site-a" / "site-a.key")
    try:
        yield TlsHub(f"https://127.0.0.1:{port}", data_dir, server_ca.cert_file, pair, token)
    finally:
        server_process.should_exit = True
        thread.join(10)


def upload(client: httpx.Client, content: bytes, token: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/edge/v1/upload", content=content, headers=headers)


def test_site_certificate_authenticates_uploads_and_stats(tls_hub: TlsHub) -> None:
    assert tls_hub.site_cert.cert_file.exists() and tls_hub.site_cert.key_file.stat().st_mode & 0o077 == 0
    with tls_hub.client(tls_hub.site_cert) as client:
        answer = upload(client, body(1, 5))
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == {TABLE: [1, 2, 3, 4, 5]}, answer.text
        stats = client.get("/edge/v1/sites/site-a/stats").json()
        assert stats["stored"] == 5 and stats["received"] == 5
        # The certificate and the site's own token together are fine.
        assert upload(client, body(6, 1), tls_hub.token).status_code == 200


def test_certificate_of_another_ca_is_refused_in_the_handshake(tls_hub: TlsHub, tmp_path: Path) -> None:
    rogue_ca = ensure_site_ca(tmp_path / "rogue-ca")
    rogue = issue_site_certificate("site-a", rogue_ca, tmp_path / "rogue")
    with tls_hub.client(rogue) as client, pytest.raises(httpx.TransportError):
        upload(client, body(1, 1))
    with tls_hub.client(tls_hub.site_cert) as client:
        assert client.get("/edge/v1/sites/site-a/stats").json()["received"] == 0


def test_certificate_of_an_unknown_removed_or_replaced_site_is_refused(tls_hub: TlsHub, tmp_path: Path) -> None:
    site_ca = CertPair(tls_hub.data_dir / SITE_CA_DIR / "ca.crt", tls_hub.data_dir / SITE_CA_DIR / "ca.key")
    ghost = issue_site_certificate("ghost", site_ca, tmp_path / "ghost")
    with tls_hub.client(ghost) as client:
        answer = upload(client, body(1, 1))
    assert answer.status_code == 401
    assert "CN=ghost: no such site" in answer.json()["message"]

    # A new certificate replaces the old one at once.
    output = tls_hub.cli("site", "cert", "site-a", str(tmp_path / "new"))
    assert "tls.client_ca" in output
    new = CertPair(tmp_path / "new" / "site-a.crt", tmp_path / "new" / "site-a.key")
    with tls_hub.client(tls_hub.site_cert) as client:
        answer = upload(client, body(1, 1))
    assert answer.status_code == 401 and "not the site's current certificate" in answer.json()["message"]
    with tls_hub.client(new) as client:
        assert upload(client, body(1, 1)).status_code == 200

    # Removing the site refuses its certificate and its token.
    tls_hub.cli("site", "remove", "site-a")
    with tls_hub.client(new) as client:
        answer = upload(client, body(2, 1))
        assert answer.status_code == 401 and "CN=site-a: no such site" in answer.json()["message"]
    with tls_hub.client() as client:
        assert upload(client, body(2, 1), tls_hub.token).status_code == 401


def test_token_still_works_over_https_and_nothing_is_refused(tls_hub: TlsHub, tmp_path: Path) -> None:
    other_token = add_site(tls_hub.data_dir, "site-b")
    with tls_hub.client() as client:
        assert upload(client, body(1, 2), tls_hub.token).status_code == 200
        answer = upload(client, body(3, 1))
        assert answer.status_code == 401 and "site client certificate is required" in answer.json()["message"]
        assert upload(client, body(3, 1), "not.a-token").status_code == 401
        # No header can stand in for the certificate.
        spoofed = client.post(
            "/edge/v1/upload",
            content=body(3, 1),
            headers={"X-SSL-Client-Cert": quote(tls_hub.site_cert.cert_file.read_text())},  # as nginx sends it
        )
        assert spoofed.status_code == 401
    with tls_hub.client(tls_hub.site_cert) as client:
        answer = upload(client, body(3, 1), other_token)
        assert answer.status_code == 401
        assert "certificate is site 'site-a' but the token is site 'site-b'" in answer.json()["message"]
        assert client.get("/edge/v1/sites/site-a/stats").json()["stored"] == 2


def test_uploader_http_transport_with_a_client_certificate_and_no_token(tls_hub: TlsHub) -> None:
    settings = UploaderSettings.from_config(
        {
            "hub_url": tls_hub.url,
            "tls_cert": str(tls_hub.site_cert.cert_file),
            "tls_key": str(tls_hub.site_cert.key_file),
            "tls_ca": str(tls_hub.server_ca),
            "http_timeout": 5.0,
        }
    )
    assert settings.site_token == ""
    transport = HttpTransport(settings)
    try:
        batch, acknowledged = transport.post(rows(1, 20))
        assert acknowledged.rows == {TABLE: list(range(1, 21))} and acknowledged.rejected == 0
        assert transport.post(rows(1, 20)) == (batch, acknowledged)  # a retried batch: same id, same answer
    finally:
        transport.close()
    with tls_hub.client(tls_hub.site_cert) as client:
        stats = client.get("/edge/v1/sites/site-a/stats").json()
    assert stats["stored"] == 20 and stats["duplicates"] == 20


def test_uploader_tls_settings_are_checked(tmp_path: Path) -> None:
    cert = tmp_path / "c.crt"
    cert.write_text("x")
    from gridhub.sdk import ConfigurationError

    for config, words in (
        ({"hub_url": "https://h", "tls_cert": str(cert)}, "tls_key"),
        ({"hub_url": "https://h", "tls_cert": str(cert), "tls_key": str(tmp_path / "missing.key")}, "tls_key"),
        ({"hub_url": "http://h", "tls_cert": str(cert), "tls_key": str(cert)}, "https://"),
        ({"hub_url": "https://h"}, "site_token"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            UploaderSettings.from_config(config)


def test_hub_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match=r"tls\.cert and tls\.key"):
        HubSettings(tls_cert="a.crt")
    with pytest.raises(HubConfigError, match=r"tls\.client_ca"):
        HubSettings(tls_client_ca="ca.crt")
    config = tmp_path / "hub.toml"
    config.write_text('[tls]\ncert = "s.crt"\nkey = "s.key"\n')
    settings = HubSettings.load(config)
    assert settings.tls_cert == str(tmp_path / "s.crt") and settings.url.startswith("https://")


def test_hub_run_serves_https_with_client_certificates(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    add_site(data_dir, "site-a", tmp_path / "site-a")
    server_ca = ensure_site_ca(tmp_path / "server-ca")
    server = issue_server_certificate(server_ca, tmp_path / "server")
    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'data_dir = "hub"\n[http]\nport = {port}\n'
        f"[tls]\ncert = {json.dumps(str(server.cert_file))}\nkey = {json.dumps(str(server.key_file))}\n"
        f'client_ca = "hub/{SITE_CA_DIR}/ca.crt"\n'
    )
    command = [sys.executable, "-c", "from gridhub.hub.cli import hub; hub(prog_name='gridhub hub')"]
    process = subprocess.Popen([*command, "run", "--config", str(config), "--log-level", "warning"])
    try:
        wait_for(lambda: port_open("127.0.0.1", port), "gridhub hub run to listen")
        context = ssl.create_default_context(cafile=str(server_ca.cert_file))
        context.load_cert_chain(tmp_path / "site-a" / "site-a.crt", tmp_path / "site-a" / "site-a.key")
        with httpx.Client(verify=context, timeout=10) as client:
            answer = client.get(f"https://127.0.0.1:{port}/edge/v1/sites/site-a/stats")
        assert answer.status_code == 200 and answer.json()["site"] == "site-a"
    finally:
        process.terminate()
        process.wait(10)
