"""``gridhub demo`` (what ``make run`` runs): a hub and simulated substations on one machine.

The demo folder (default ``var/demo``) holds everything, and a second run reuses it::

    var/demo/
      hub/               the hub's data folder (SQLite store)
      hub.log            the hub's output
      substation-01/     one folder per substation: edge.toml (mode 0600: it holds the site
        edge.toml        token), the runtime's data and edge.log
        edge.log
        data/

:func:`prepare_hub` creates the admin user (a generated password, shown once) and the sites,
issuing each a fresh upload token through the same AuthService call as ``gridhub hub site
add``; :class:`Platform` starts ``gridhub hub run`` and one ``gridhub edge run`` per substation
as child processes in their own sessions (so a Ctrl-C in the terminal reaches only the demo)
and stops them in order: every edge runtime first (its apps shut down as LV-CAP section 6
says, the uploader last acknowledging what the hub stored), then the hub.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from gridhub import __version__

__all__ = [
    "DEMO_ADMIN",
    "DEMO_SITES",
    "DemoError",
    "HubAccount",
    "Platform",
    "SiteProfile",
    "free_port",
    "plural",
    "prepare_hub",
    "simulated_time_reached",
    "site_profiles",
    "write_demo_config",
]

DEMO_ADMIN = "admin"
"""The demo hub's admin user."""
UPLOADER = "gridhub_uploader_01"
SIMULATOR = "gridhub_simulator_01"


class DemoError(Exception):
    """The demo cannot start; the message says what and what to do."""


@dataclass(frozen=True)
class SiteProfile:
    """A simulated substation: its site name, seed and what makes it different from the others."""

    name: str
    seed: int
    description: str
    simulator: Mapping[str, Any] = field(default_factory=dict)  # ContainerConfig of the simulator


DEMO_SITES: tuple[SiteProfile, ...] = (
    SiteProfile("substation-01", 1, "urban, indoor, 500 kVA, one monitored feeder", {"peak_load": 0.7}),
    SiteProfile(
        "substation-02",
        2,
        "suburban with rooftop PV (reverse flow at midday), two feeders",
        {
            "peak_load": 0.55,
            "pv_capacity": 180_000.0,
            "feeders": [{"share": 0.5, "neutral": True}, {"share": 0.35, "neutral": False}],
        },
    ),
    SiteProfile(
        "substation-03",
        3,
        "rural, outdoor, 315 kVA, heavily loaded",
        {"peak_load": 0.95, "rated_power": 315_000.0, "indoor": False},
    ),
)


def site_profiles(count: int) -> list[SiteProfile]:
    """Return count substations: the three demo profiles, then more of them with other seeds."""
    out = []
    for i in range(count):
        base = DEMO_SITES[i % len(DEMO_SITES)]
        out.append(SiteProfile(f"substation-{i + 1:02d}", i + 1, base.description, base.simulator))
    return out


def _toml(value: Any) -> str:
    """Render a value as TOML (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table(values: Mapping[str, Any]) -> str:
    return "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())


def plural(n: int, noun: str) -> str:
    """``1 simulated substation``, ``3 simulated substations``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def write_demo_config(
    folder: Path,
    *,
    port: int,
    clock_factor: float,
    seed: int = 42,
    simulator: Mapping[str, Any] | None = None,
    uploader: Mapping[str, Any] | None = None,
    python: str = "python",
) -> Path:
    """Write a simulated substation's edge.toml and return its path.

    The simulator (seed, at clock_factor, plus the simulator settings given) and the thermal rating
    app (rated for the same transformer); with ``uploader`` (its ContainerConfig: hub_url,
    site_token, ...) also the uploader, allowed to upload every table. The simulated clock starts
    a week ago, or, when the folder's edge storage already holds readings of the simulator (a
    second run in the same folder), at the newest of them, so it continues where the last run
    stopped instead of simulating (and uploading) the same period again. The marketplace is a
    managed Mosquitto when ``mosquitto`` is installed, else the embedded broker.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mode = "managed" if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else "embedded"
    reached = simulated_time_reached(folder)
    start_time = reached if reached is not None else int(time.time()) - 86400 * 7
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_time))
    simulator_config = {"seed": seed, "start": start, "clock_factor": clock_factor, **(simulator or {})}
    thermal_config: dict[str, Any] = {}
    if "rated_power" in simulator_config:
        thermal_config["rated_power"] = simulator_config["rated_power"]
    text = f"""# gridhub demo configuration (written by `gridhub demo`): a simulated substation
version = 1
data_dir = "data"

[marketplace]
mode = "{mode}"
host = "127.0.0.1"
port = {port}

[manager]
status_interval = 5.0
shutdown_grace = 5.0

[storage]
store = ["sensor/data/+/#"]
"""
    if uploader is not None:
        text += f'max_length = 2000\n\n[storage.upload]\n"{UPLOADER}" = ["*"]\n'
    apps = [("simulator", simulator_config), ("thermal", thermal_config)]
    if uploader is not None:
        apps.append(("uploader", dict(uploader)))
    for name, config in apps:
        command = [python, "-m", f"gridhub.edge.apps.{name}"]
        text += (
            f'\n[[app]]\nvendor = "gridhub"\nname = "{name}"\nversion = "{__version__}"\ninstance = "01"\n'
            f"command = {_toml(command)}\n\n[app.config]\n{_table(config)}"
        )
    path = folder / "edge.toml"
    # The file may hold a site token: readable by its owner only, from the moment it exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)
    return path


def simulated_time_reached(folder: Path) -> int | None:
    """Return the newest simulated time (UTC seconds) of the simulator's readings stored in folder's edge, if any.

    The edge storage's own ``Timestamp`` column is the wall-clock time a row was stored; the
    simulated time is the reading's ``Timestamp`` in the payload. Rows are read newest first, a
    page at a time, until one holds a reading (metadata rows, published at every start, hold none).
    """
    database = folder / "data" / "storage.sqlite"
    if not database.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            before = 2**63 - 1  # above every ID
            while True:
                page = conn.execute(
                    f'SELECT ID, Data FROM "{SIMULATOR}" WHERE ID < ? ORDER BY ID DESC LIMIT 1000', (before,)
                ).fetchall()
                if not page:
                    return None
                stamps = [stamp for _, data in page if (stamp := _reading_time(data)) is not None]
                if stamps:
                    return max(stamps)
                before = page[-1][0]
    except sqlite3.Error:  # no such table yet, or not a storage database: nothing to continue from
        return None


def _reading_time(data: bytes) -> int | None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        body = json.loads(data)
        if isinstance(body, dict):
            stamp = body.get("Timestamp")
            if isinstance(stamp, int) and not isinstance(stamp, bool):
                return stamp
    return None


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """Tell whether something already listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class HubAccount:
    """What prepare_hub did: the admin's password (None when the admin existed) and each site's token."""

    password: str | None
    tokens: dict[str, str]


def prepare_hub(data_dir: Path, sites: Sequence[str]) -> HubAccount:
    """Create the demo hub's store, its admin (first run only) and sites; issue every site a fresh token.

    A site that exists keeps its data and gets a new token (as ``gridhub hub site add --rotate``);
    the old token stops working, and the edge.toml written next carries the new one.
    """
    from gridhub.hub.auth import AuthService, IdentityError, Role
    from gridhub.hub.settings import HubSettings
    from gridhub.hub.store import open_store

    settings = HubSettings.load(None, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.store)
    try:
        auth = AuthService(
            store,
            token_ttl=settings.token_ttl,
            password_time_cost=settings.password_time_cost,
            password_memory_kib=settings.password_memory_kib,
        )
        password = None
        if not auth.has_users():
            password = secrets.token_urlsafe(12)
            auth.add_user(DEMO_ADMIN, password, Role.ADMIN)
        try:
            tokens = {name: auth.issue_site_token(name) for name in sites}
        except IdentityError as exc:
            raise DemoError(str(exc)) from None
    finally:
        store.close()
    return HubAccount(password, tokens)


@dataclass
class Child:
    """A child process of the demo with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    handle: Any


@dataclass
class SubstationView:
    """What the console shows of one substation."""

    name: str
    port: int
    runtime: str = "starting"
    failure: str | None = None  # why the runtime stopped and where its log is, for a line of its own
    apps: str = ""
    stored: int | None = None
    received: int | None = None
    last_upload: str | None = None


class Platform:
    """The hub and the substations as child processes, started and stopped in order."""

    def __init__(self, folder: Path, hub_port: int, profiles: Sequence[SiteProfile], ports: Sequence[int]) -> None:
        self.folder = folder
        self.hub_port = hub_port
        self.profiles = list(profiles)
        self.ports = list(ports)
        self.hub: Child | None = None
        self.edges: list[Child] = []
        self.tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        """The hub's base URL (its status page)."""
        return f"http://127.0.0.1:{self.hub_port}/"

    def edge_folder(self, name: str) -> Path:
        """The folder of one substation."""
        return self.folder / name

    def _spawn(self, name: str, args: list[str], log: Path) -> Child:
        handle = log.open("ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "gridhub.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo only, which stops the children in order
            )
        except BaseException:
            handle.close()
            raise
        return Child(name, process, log, handle)

    def start_hub(self, timeout: float = 60.0) -> None:
        """Start ``gridhub hub run`` and wait until it answers /api/v2/health."""
        hub_dir = self.folder / "hub"
        args = ["hub", "run", "--data-dir", str(hub_dir), "--port", str(self.hub_port), "--log-level", "warning"]
        self.hub = self._spawn("hub", args, self.folder / "hub.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hub.process.poll() is not None:
                raise DemoError(f"the hub exited with code {self.hub.process.returncode}:\n{_tail(self.hub.log)}")
            if self.hub_reachable():
                return
            time.sleep(0.2)
        raise DemoError(f"the hub did not answer within {timeout:.0f} s; see {self.hub.log}")

    def start_edges(self, clock_factor: float, tokens: Mapping[str, str]) -> None:
        """Write each substation's edge.toml and start its ``gridhub edge run``."""
        self.tokens = dict(tokens)
        for profile, port in zip(self.profiles, self.ports, strict=True):
            folder = self.edge_folder(profile.name)
            uploader = {
                "hub_url": self.url.rstrip("/"),
                "site_token": tokens[profile.name],
                "max_length": 1000,
                "poll_interval": 1.0,
                "retry_initial": 0.5,
                "retry_max": 10.0,
                "progress_interval": 60.0,
            }
            config = write_demo_config(
                folder,
                port=port,
                clock_factor=clock_factor,
                seed=profile.seed,
                simulator=profile.simulator,
                uploader=uploader,
                python=sys.executable,
            )
            args = ["edge", "run", "--config", str(config), "--log-level", "warning"]
            self.edges.append(self._spawn(profile.name, args, folder / "edge.log"))

    def hub_reachable(self) -> bool:
        """Tell whether the hub answers its health check."""
        try:
            return httpx.get(f"{self.url}api/v2/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def view(self) -> list[SubstationView]:
        """Return what the console shows of each substation (edge status file, hub upload counters)."""
        from gridhub.edge.manager import read_status

        out = []
        for profile, port, child in zip(self.profiles, self.ports, self.edges, strict=False):
            row = SubstationView(profile.name, port)
            code = child.process.poll()
            if code is None:
                row.runtime = "running"
            else:
                row.runtime = f"exited ({code})"
                row.failure = f"edge runtime exited with code {code}; see {child.log}"
            with contextlib.suppress(OSError, ValueError, KeyError):
                apps = read_status(self.edge_folder(profile.name) / "data").get("apps", {})
                running = sum(1 for info in apps.values() if info.get("state") == "running")
                row.apps = f"{running}/{len(apps)} running"
            token = self.tokens.get(profile.name)
            if token:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = httpx.get(
                        f"{self.url}edge/v1/sites/{profile.name}/stats",
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=2.0,
                    )
                    if response.status_code == 200:
                        stats = response.json()
                        row.stored, row.received = int(stats["stored"]), int(stats["received"])
                        row.last_upload = stats.get("last_upload")
            out.append(row)
        return out

    def children(self) -> list[Child]:
        """Every child process started, edges first."""
        return [*self.edges, *([self.hub] if self.hub else [])]

    def stop(self, out: TextIO | None = None, edge_timeout: float = 40.0, hub_timeout: float = 20.0) -> None:
        """Stop every edge runtime (SIGTERM: section 6 shutdown of its apps), then the hub; kill what hangs."""

        def say(text: str) -> None:
            if out is not None:
                out.write(text + "\n")
                out.flush()

        if self.edges:
            say(f"stopping {plural(len(self.edges), 'edge runtime')} (apps shut down as LV-CAP section 6 says)...")
        for child in self.edges:
            _signal(child, signal.SIGTERM)
        for child in self.edges:
            _wait(child, edge_timeout, say)
        if self.hub is not None:
            say("stopping the hub...")
            _signal(self.hub, signal.SIGTERM)
            _wait(self.hub, hub_timeout, say)
        for child in self.children():
            child.handle.close()


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(sig)


def _wait(child: Child, timeout: float, say: Any) -> None:
    try:
        child.process.wait(timeout)
    except subprocess.TimeoutExpired:
        say(f"{child.name} did not stop within {timeout:.0f} s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)  # its own session: the process and anything it left
        child.process.wait(10)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
