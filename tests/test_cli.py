"""The gridhub command: edge run/status/reload, mosquitto-config, certs."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from gridhub.cli import app
from gridhub.edge.manager import app_data_dir, read_status
from tests.conftest import free_port
from tests.edge.test_runtime import seen, state, wait_for, write_config

runner = CliRunner()


def test_edge_run_status_reload_and_sigterm(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, {"cli": {"level": 1}}, port)
    data_dir = tmp_path / "edge"
    iid = "test_cli_01"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridhub.cli", "edge", "run", "--config", str(path), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: state(data_dir, iid) == "running", "app running", timeout=15)
        result = runner.invoke(app, ["edge", "status", "--config", str(path)])
        assert result.exit_code == 0, result.output
        line = next(ln for ln in result.output.splitlines() if iid in ln)
        assert "running" in line and "STATUS_MSG_OK" in line
        assert f"running (pid {proc.pid})" in result.output
        as_json = json.loads(runner.invoke(app, ["edge", "status", "--config", str(path), "--json"]).output)
        assert as_json["apps"][iid]["state"] == "running"

        write_config(tmp_path, {"cli": {"level": 5}}, port)
        result = runner.invoke(app, ["edge", "reload", "--config", str(path)])
        assert result.exit_code == 0, result.output
        wait_for(
            lambda: any(
                m["payload"].get("Configuration", {}).get("ContainerConfig") == {"level": 5}  # type: ignore[union-attr]
                for m in seen(data_dir, iid)
            ),
            "reloaded configuration",
        )
        app_pid = read_status(data_dir)["apps"][iid]["pid"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    commands = [m["payload"] for m in seen(data_dir, iid) if m["topic"] == f"command/{iid}"]
    assert commands and commands[0]["Command"] == 1  # type: ignore[index]
    try:
        os.kill(app_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    assert state(data_dir, iid) == "stopped"
    assert app_data_dir(data_dir, iid).is_dir()
    assert (data_dir / "logs" / f"{iid}.log").exists()


def test_bad_configuration_is_reported_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("version = 1\n[manager]\nstatus_interval = 'often'\n")
    result = runner.invoke(app, ["edge", "status", "--config", str(path)])
    assert result.exit_code == 2
    assert "[manager] status_interval" in result.output


def test_status_without_a_run_and_reload_without_a_runtime(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("version = 1\n")
    result = runner.invoke(app, ["edge", "status", "--config", str(path)])
    assert result.exit_code == 1 and "has not run" in result.output
    result = runner.invoke(app, ["edge", "reload", "--config", str(path)])
    assert result.exit_code == 1 and "no edge runtime is running" in result.output


def test_mosquitto_config_writes_conf_acl_and_passwords(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"acl": {"x": 1}}, 18999)
    out = tmp_path / "mosquitto"
    result = runner.invoke(app, ["edge", "mosquitto-config", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    conf = (out / "mosquitto.conf").read_text()
    assert "acl_file" in conf and "password_file" in conf and "allow_anonymous false" in conf
    assert "test_acl_1" in (out / "acl").read_text()
    passwords = (out / "passwords").read_text()
    assert "test_acl_1:" in passwords and "gridhub-manager:" in passwords
    assert (out / "passwords").stat().st_mode & 0o077 == 0


def test_certs_issues_ca_server_and_client_certificates(tmp_path: Path) -> None:
    from gridhub.edge.certs import certificate_common_name

    out = tmp_path / "certs"
    result = runner.invoke(app, ["edge", "certs", "--out", str(out), "--app", "acme_thermal_1.0.0"])
    assert result.exit_code == 0, result.output
    client = next(
        Path(p) for ln in result.output.splitlines() if ln.startswith("acme_thermal_1.0.0:") for p in ln.split()[1:2]
    )
    assert certificate_common_name(client) == "acme_thermal_1.0.0"
    assert any(out.glob("ca*"))
    bad = runner.invoke(app, ["edge", "certs", "--out", str(out), "--app", "../evil"])
    assert bad.exit_code == 1


def test_demo_config_runs_the_simulator_and_thermal_apps(tmp_path: Path) -> None:
    from gridhub.cli import write_demo_config
    from gridhub.edge.config import load_config

    config = load_config(write_demo_config(tmp_path, port=18830, clock_factor=120.0))
    assert [a.iid for a in config.apps] == ["gridhub_simulator_01", "gridhub_thermal_01"]
    assert config.apps[0].config["clock_factor"] == 120.0
    assert "sensor/data/+/#" in config.storage.store


def test_demo_edge_only_stops_on_ctrl_c_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    log = tmp_path / "demo.out"
    command = [sys.executable, "-m", "gridhub.cli", "demo", "--edge-only", "--dir", str(folder),
               "--port", str(free_port())]  # fmt: skip
    # As a shell's background job or nohup starts it: SIGINT ignored, which exec passes on.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", f"trap '' INT; exec {shlex.join(command)}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    data_dir = folder / "data"
    try:
        wait_for(lambda: state(data_dir, "gridhub_simulator_01") == "running" or proc.poll() is not None,
                 "the simulator running", timeout=60)  # fmt: skip
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:  # SIGTERM stops the runtime and its apps (their own sessions)
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "stopping the edge runtime" in log.read_text()
    assert state(data_dir, "gridhub_simulator_01") == "stopped"  # shut down as section 6 says, not killed
    assert state(data_dir, "gridhub_thermal_01") == "stopped"


def test_demo_view_fits_80_columns_and_names_the_log_of_a_runtime_that_exited(tmp_path: Path) -> None:
    from rich.console import Console

    from gridhub.cli import _demo_view
    from gridhub.demo import Child, Platform, site_profiles

    profiles = site_profiles(2)
    platform = Platform(tmp_path / "demo", free_port(), profiles, [18830, 18831])  # no hub listens there
    for profile, script in zip(profiles, ("import time; time.sleep(300)", "raise SystemExit(3)"), strict=True):
        log = platform.edge_folder(profile.name) / "edge.log"
        log.parent.mkdir(parents=True)
        handle = log.open("ab")
        process = subprocess.Popen([sys.executable, "-c", script], stdout=handle, stderr=subprocess.STDOUT)
        platform.edges.append(Child(profile.name, process, log, handle))
    try:
        platform.edges[1].process.wait(timeout=30)
        console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
        console.print(_demo_view(platform))
        text = console.export_text()
    finally:
        platform.stop(edge_timeout=10)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert "hub" in lines[0] and "not reachable" in lines[0]
    assert "edge runtime" in text
    first = next(line for line in lines if "substation-01" in line)
    second = next(line for line in lines if "substation-02" in line)
    assert "running" in first
    assert "exited (3)" in second  # the runtime column keeps its width
    # Below the table, the failure and its whole log path (folded over lines, never cut short).
    unfolded = "".join(text.split())
    assert f"substation-02:edgeruntimeexitedwithcode3;see{platform.edges[1].log}" in unfolded, text
