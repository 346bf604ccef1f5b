"""``gridhub demo`` (``make run``): the hub and three simulated substations, end to end, and its parts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import httpx
import psutil
from typer.testing import CliRunner

from gridhub.cli import app
from gridhub.demo import DEMO_SITES, prepare_hub, site_profiles, write_demo_config
from gridhub.hub.auth import AuthService
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import open_store
from tests.conftest import wait_for

runner = CliRunner()


class Output:
    """The lines a child process prints, collected by a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> str | None:
        for line in list(self.lines):
            match = re.search(pattern, line)
            if match:
                return match.group(1)
        return None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _ready(client: httpx.Client) -> list[dict[str, Any]]:
    """The sites of /status.json that have uploaded rows, busbar voltages and a hot-spot temperature."""
    response = client.get("/status.json")
    if response.status_code != 200:
        return []
    ready = []
    for site in response.json()["sites"]:
        latest = {row["label"]: row["values"] for row in site["latest"]}
        voltages = latest.get("busbar voltage L1 / L2 / L3", [])
        thermal = latest.get("top oil / hot spot (thermal model)", [None, None])
        if site["upload"]["stored"] > 0 and voltages and all(voltages) and thermal[1] is not None:
            ready.append(site)
    return ready


def test_demo_runs_the_hub_and_three_substations_and_stops_every_process(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "gridhub.cli", "demo", "--dir", str(folder), "--substations", "3",
         "--hub-port", "0", "--port", "0", "--clock-factor", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    output = Output(process)
    descendants: list[psutil.Process] = []
    try:
        wait_for(lambda: output.find(r"^password:\s+(\S+)") or process.poll() is not None, "the banner", 60)
        assert process.poll() is None, output.text
        url, password = output.find(r"^status page:\s+(\S+)"), output.find(r"^password:\s+(\S+)")
        assert url and password, output.text
        assert "user:         admin" in output.text

        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/", follow_redirects=False).headers["location"] == "/login"
            login = client.post("/login", data={"user": "admin", "password": password}, follow_redirects=True)
            assert login.status_code == 200 and "Substations" in login.text, login.text  # followed to /
            try:
                wait_for(lambda: len(_ready(client)) == 3, "three sites with uploaded rows and latest values", 60)
            except AssertionError:
                raise AssertionError(f"{client.get('/status.json').text[:3000]}\n{output.text}") from None
            page = client.get("/").text
            for profile in DEMO_SITES:
                assert profile.name in page
            sites = {site["name"]: site for site in _ready(client)}
            assert set(sites) == {"substation-01", "substation-02", "substation-03"}
            assert all(site["series"] > 50 for site in sites.values())

        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 13  # the hub, 3 edge runtimes with 3 apps each (and brokers)
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, output.text
        output.thread.join(5)
        assert "stopping the hub" in output.text
        text = output.text
        assert text.index("stopping 3 edge runtimes") < text.index("stopping the hub")
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()
        for child in descendants:
            if child.is_running():
                child.kill()
    # The edge configuration holds the site's token: readable by its owner only.
    assert (folder / "substation-01" / "edge.toml").stat().st_mode & 0o077 == 0


def test_prepare_hub_creates_the_admin_once_and_rotates_site_tokens(tmp_path: Path) -> None:
    first = prepare_hub(tmp_path / "hub", ["substation-01", "substation-02"])
    assert first.password is not None and len(first.password) >= 16
    second = prepare_hub(tmp_path / "hub", ["substation-01", "substation-02"])
    assert second.password is None  # the admin exists: reused, never a new or default password
    assert second.tokens["substation-01"] != first.tokens["substation-01"]
    settings = HubSettings.load(None, data_dir=tmp_path / "hub")
    with open_store(settings.store) as store:
        auth = AuthService(store)
        assert auth.login("admin", first.password).user_id
        assert [s.name for s in auth.list_sites()] == ["substation-01", "substation-02"]
        assert auth.verify_site_token(first.tokens["substation-01"]) is None  # replaced
        site = auth.verify_site_token(second.tokens["substation-01"])
        assert site is not None and site.name == "substation-01"


def test_substation_configs_differ_and_carry_the_uploader(tmp_path: Path) -> None:
    from gridhub.edge.config import load_config

    profiles = site_profiles(4)
    assert [p.name for p in profiles] == ["substation-01", "substation-02", "substation-03", "substation-04"]
    assert len({p.seed for p in profiles}) == 4
    uploader = {"hub_url": "http://127.0.0.1:1", "site_token": "abc.def"}
    path = write_demo_config(tmp_path, port=18999, clock_factor=30.0, seed=2, simulator=profiles[2].simulator,
                             uploader=uploader)  # fmt: skip
    config = load_config(path)
    assert [a.iid for a in config.apps] == ["gridhub_simulator_01", "gridhub_thermal_01", "gridhub_uploader_01"]
    assert config.apps[0].config["rated_power"] == 315_000.0 and config.apps[0].config["seed"] == 2
    assert config.apps[1].config["rated_power"] == 315_000.0  # the thermal app rates the same transformer
    assert config.apps[2].config == uploader
    assert "gridhub_uploader_01" in config.storage.upload
    assert tomllib.loads(path.read_text())["marketplace"]["port"] == 18999
    assert path.stat().st_mode & 0o077 == 0


def test_demo_refuses_a_busy_port_and_bad_options(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        result = runner.invoke(app, ["demo", "--dir", str(tmp_path), "--hub-port", str(busy), "--port", "0"])
    assert result.exit_code == 2 and f"port {busy}" in result.output
    assert not (tmp_path / "hub").exists()  # refused before anything was created
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path), "--substations", "0"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path), "--clock-factor", "0"])
    assert result.exit_code == 2 and "--clock-factor" in result.output


def test_write_demo_config_quotes_strings(tmp_path: Path) -> None:
    value = 'say "hi" \\ [x]\nnext = 1'
    path = write_demo_config(tmp_path, port=1, clock_factor=1.0, simulator={"note": value})
    assert tomllib.loads(path.read_text())["app"][0]["config"]["note"] == value  # a string, never TOML syntax


def _simulate_and_store(config_path: Path, minutes: int) -> int:
    """Run the substation's simulator model as its edge.toml says and store what it publishes, as the edge does.

    Return the newest reading's simulated time. After the readings come the metadata rows a
    later start publishes (more than a page of them), as when a run stopped right after starting.
    """
    from gridhub.edge.apps.simulator import SimulatorConfig, SubstationModel
    from gridhub.edge.config import load_config
    from gridhub.edge.storage import StorageDB
    from gridhub.formats.lvcap import encode_json

    config = load_config(config_path)
    model = SubstationModel(SimulatorConfig.from_container_config(config.apps[0].config))
    storage = StorageDB(config.storage.database)
    try:
        newest = 0
        for _ in range(minutes):
            for reading in model.step_minute():
                storage.store("gridhub_simulator_01", reading.sub_topic, encode_json(reading.obj.to_json()))
                newest = max(newest, reading.timestamp)
        meta_rows = 0
        while meta_rows <= 1000:  # the reader goes back page by page (1000 rows) past them
            for point in model.points:
                meta = encode_json(point.metadata().to_json())
                storage.store("gridhub_simulator_01", f"{point.sub_topic}/meta", meta)
                meta_rows += 1
    finally:
        storage.close()
    return newest


def test_a_second_run_in_the_same_folder_continues_the_simulated_clock(tmp_path: Path) -> None:
    import time

    from gridhub.edge.apps.simulator import SimulatorConfig, SubstationModel
    from gridhub.edge.config import load_config

    folder = tmp_path / "substation-01"
    first = write_demo_config(folder, port=18999, clock_factor=60.0, seed=1, uploader={"hub_url": "http://x"})
    first_start = SimulatorConfig.from_container_config(load_config(first).apps[0].config).start
    assert abs(first_start - (time.time() - 7 * 86400)) < 3600  # a fresh folder simulates from a week ago
    newest = _simulate_and_store(first, minutes=90)
    assert newest == first_start + 90 * 60

    second = write_demo_config(folder, port=18999, clock_factor=60.0, seed=1, uploader={"hub_url": "http://x"})
    settings = SimulatorConfig.from_container_config(load_config(second).apps[0].config)
    assert settings.start == newest  # continues where the stored readings end...
    following = SubstationModel(settings).step_minute()
    assert min(r.timestamp for r in following) == newest + 10  # ...with the next tick: no period simulated twice
    assert tomllib.loads(second.read_text())["app"][0]["config"]["start"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest)
    )


def test_a_folder_without_stored_readings_starts_a_week_ago(tmp_path: Path) -> None:
    import calendar
    import time

    from gridhub.demo import simulated_time_reached

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "storage.sqlite").write_bytes(b"")  # an empty file: no tables, nothing stored
    assert simulated_time_reached(tmp_path) is None
    config = tomllib.loads(write_demo_config(tmp_path, port=1, clock_factor=1.0).read_text())
    start = config["app"][0]["config"]["start"]
    assert abs(calendar.timegm(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ")) - (time.time() - 7 * 86400)) < 3600
