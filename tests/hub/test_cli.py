"""The ``gridhub hub`` commands (the typer app), and one real ``hub run`` process hit over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from gridhub.hub.auth import AuthService
from gridhub.hub.cli import hub
from gridhub.hub.store import open_store
from tests.conftest import free_port

runner = CliRunner()


def invoke(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(hub, [*args, "--data-dir", str(data_dir)], input=stdin)
    return result.exit_code, result.output


def test_user_add_reads_the_password_from_stdin(tmp_path: Path) -> None:
    code, output = invoke(
        tmp_path, "user", "add", "admin", "--role", "admin", "--password-stdin", stdin="a long secret\n"
    )
    assert code == 0, output
    assert "user admin added with role admin" in output and "a long secret" not in output
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as store:
        session = AuthService(store).login("admin", "a long secret")
    assert session.user_id in output


def test_user_add_refusals_change_nothing(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "user", "add", "admin", "--role", "admin", "--password-stdin", stdin="short\n")
    assert code == 1 and "at least 8 characters" in output
    code, output = invoke(tmp_path, "user", "add", "admin", "--role", "root", "--password-stdin", stdin="x" * 10)
    assert code == 2 and "root" in output
    code, output = invoke(
        tmp_path,
        "user",
        "add",
        "bob",
        "--role",
        "consumer",
        "--grant",
        "grid",
        "--password-stdin",
        stdin="long enough\n",
    )
    assert code == 1 and "LAYER/COLLECTION:read" in output
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as store:
        assert AuthService(store).has_users() is False


def test_layer_add_from_a_layers_document(tmp_path: Path) -> None:
    document = tmp_path / "grid.json"
    document.write_text(
        json.dumps({"_id": "grid", "label": "Grid", "description": "", "collections": [{"name": "feeders"}]})
    )
    code, output = invoke(tmp_path, "layer", "add", str(document))
    assert code == 0 and "layer grid created (feeders)" in output
    code, output = invoke(tmp_path, "layer", "add", str(document))
    assert code == 0 and "layer grid replaced" in output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"_id": "grid", "label": "Grid", "description": "", "collections": [{"name": ""}]}))
    code, output = invoke(tmp_path, "layer", "add", str(bad))
    assert code == 1 and "collections[0].name" in output
    bad.write_text("{")
    code, output = invoke(tmp_path, "layer", "add", str(bad))
    assert code == 1 and "not valid JSON" in output
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as store:
        assert [c.name for c in store.get_layer("grid").collections] == ["feeders"]


def test_layer_add_refuses_the_identities_layer(tmp_path: Path) -> None:
    """Replacing the reserved layer would make every user, app and site unusable."""
    code, output = invoke(tmp_path, "site", "add", "substation-0042")
    assert code == 0, output
    document = tmp_path / "system.json"
    document.write_text(
        json.dumps({"_id": "system", "label": "x", "description": "", "collections": [{"name": "feeders"}]})
    )
    code, output = invoke(tmp_path, "layer", "add", str(document))
    assert code == 1 and "reserved" in output
    code, output = invoke(tmp_path, "site", "add", "substation-0043")
    assert code == 0, output


def test_site_add_prints_a_working_token_once(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "site", "add", "substation-0042")
    assert code == 0, output
    token = output.strip().splitlines()[-1]
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as store:
        site = AuthService(store).verify_site_token(token)
    assert site is not None and site.name == "substation-0042"
    code, output = invoke(tmp_path, "site", "add", "substation-0042")
    assert code == 1 and "--rotate" in output
    code, output = invoke(tmp_path, "site", "add", "substation-0042", "--rotate")
    assert code == 0 and output.strip().splitlines()[-1] != token


def test_app_add_prints_app_id_and_key_id(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "app", "add", "dashboard", "--role", "consumer", "--grant", "grid/feeders:read")
    assert code == 0, output
    lines = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as store:
        principal = AuthService(store).authenticate(lines["appId"], lines["keyId"])
    assert (principal.name, principal.kind) == ("dashboard", "app")


def test_bad_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[http]\nprot = 1\n")
    result = runner.invoke(hub, ["site", "add", "x", "--config", str(config)])
    assert result.exit_code == 1 and "unknown setting 'http.prot'" in result.output


@pytest.fixture
def log_level() -> str:
    """The --log-level of hub_process (a test overrides it with its own fixture)."""
    return "warning"


@pytest.fixture
def hub_process(tmp_path: Path, log_level: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real `gridhub hub run` on a free port over a fresh data dir."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gridhub.hub.cli",
            "run",
            "--data-dir",
            str(tmp_path / "hub"),
            "--port",
            str(port),
            "--log-level",
            log_level,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process, f"http://127.0.0.1:{port}/api/v2"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_hub_run_serves_the_api(hub_process: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    process, url = hub_process
    assert process.stdout is not None
    printed = [process.stdout.readline() for _ in range(3)]
    assert any("gridhub hub user add admin --role admin --password-stdin" in line for line in printed), printed
    assert any(url in line for line in printed), printed
    deadline = time.monotonic() + 30  # wait for the listener (bounded; not a speed assertion)
    with httpx2.Client(base_url=url) as client:
        while True:
            try:
                health = client.get("/health")
                break
            except httpx2.TransportError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the hub did not start listening"
                time.sleep(0.1)
        assert health.json() == {"status": "success", "data": "v2.0"}
        code, output = invoke(
            tmp_path / "hub", "user", "add", "admin", "--role", "admin", "--password-stdin", stdin="a long secret\n"
        )
        assert code == 0, output
        login = client.post("/login", json={"user": "admin", "password": "a long secret"})
        assert login.status_code == 200
        data = login.json()["data"]
        me = client.get("/me", headers={"X-User-ID": data["userId"], "X-Auth-Token": data["authToken"]})
        assert me.json()["data"]["username"] == "admin"
        assert client.get("/me").status_code == 401


def test_run_refuses_an_unreachable_store_with_a_message(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    config = tmp_path / "hub.toml"
    config.write_text(f'store = "postgresql://postgres@127.0.0.1:{port}/nothing"\n')
    result = runner.invoke(hub, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert f"cannot open the hub store postgresql://postgres@127.0.0.1:{port}/nothing" in result.output


def wait_until_listening(process: subprocess.Popen[str], client: httpx2.Client) -> None:
    deadline = time.monotonic() + 30  # bounded wait for the listener (not a speed assertion)
    while True:
        try:
            client.get("/health")
            return
        except httpx2.TransportError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the hub did not start listening"
            time.sleep(0.1)


@pytest.mark.parametrize("log_level", ["info"])
def test_hub_run_never_logs_credentials_from_the_query_string(
    hub_process: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, url = hub_process
    key_id = "0Q6tSecretKeyIdNeverToBeLogged"
    with httpx2.Client(base_url=url) as client:
        wait_until_listening(process, client)
        refused = client.get("/resources", params={"fs": "fs", "appId": "7dec0000", "keyId": key_id})
        assert refused.status_code == 401  # the request was served (and logged), the key is unknown
        client.get("/me", params={"token": "tok-secret-1", "access_token": "tok-secret-2", "password": "pw-secret"})
        client.get(f"/me?authToken=tok-secret-3&keyid={key_id}")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=20)
    assert '"GET /api/v2/resources?fs=fs&appId=7dec0000&keyId=*** HTTP/1.1" 401' in output, output
    assert "token=***&access_token=***&password=***" in output and "authToken=***&keyid=***" in output
    for secret in (key_id, "tok-secret-1", "tok-secret-2", "tok-secret-3", "pw-secret"):
        assert secret not in output
