"""The ``gridhub`` command."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gridhub.demo import plural, write_demo_config
from gridhub.edge.settings import ConfigError
from gridhub.hub.cli import hub as hub_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="gridhub: open platform for LV network data.")
edge = typer.Typer(no_args_is_help=True, add_completion=False, help="The LV-CAP compatible edge runtime.")
app.add_typer(edge, name="edge")
app_kit = typer.Typer(no_args_is_help=True, add_completion=False, help="The LV-CAP app developer's kit.")
app.add_typer(app_kit, name="app")
app.add_typer(hub_app, name="hub")

CONFIG_ENV = "GRIDHUB_EDGE_CONFIG"
DEFAULT_CONFIGS = (Path("edge.toml"), Path("var/demo/edge.toml"))
DEMO_DIR = Path("var/demo")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The edge configuration file (TOML).")]
OptionalConfig = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"The edge configuration file (default: ${CONFIG_ENV}, ./edge.toml or the demo's var/demo/edge.toml).",
    ),
]


def _console() -> Console:
    # Wide enough off a terminal that table rows are never wrapped (scripts grep them).
    return Console() if sys.stdout.isatty() else Console(width=200)


def _err(message: str) -> None:
    Console(stderr=True, width=200).print(f"error: {message}", style="red", markup=False, highlight=False)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load(config: Path) -> Any:
    from gridhub.edge.config import load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None


def _find_config(config: Path | None) -> Path:
    if config is not None:
        return config
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    for candidate in DEFAULT_CONFIGS:
        if candidate.exists():
            return candidate
    _err(f"no configuration file: give --config FILE or set {CONFIG_ENV}")
    raise typer.Exit(2)


# -- gridhub edge ... ---------------------------------------------------------------------------


@edge.command("run")
def edge_run(
    config: ConfigOption,
    log_level: Annotated[str, typer.Option(help="Logging level (debug, info, warning, error).")] = "info",
) -> None:
    """Run the edge runtime until SIGINT/SIGTERM; SIGHUP reloads the configuration."""
    from gridhub.edge.runtime import EdgeRuntime, EdgeRuntimeError

    _setup_logging(log_level)
    edge_config = _load(config)
    runtime = EdgeRuntime(edge_config)
    try:
        runtime.run_forever()
    except EdgeRuntimeError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None


@edge.command("status")
def edge_status(
    config: OptionalConfig = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status snapshot.")] = False,
) -> None:
    """Show each app's state, last status, restarts and last error."""
    from gridhub.edge.manager import read_status
    from gridhub.edge.runtime import read_pid

    edge_config = _load(_find_config(config))
    try:
        snapshot = read_status(edge_config.data_dir)
    except FileNotFoundError:
        _err(f"no status in {edge_config.data_dir}: the runtime has not run with this configuration")
        raise typer.Exit(1) from None
    except (OSError, json.JSONDecodeError) as exc:
        _err(f"cannot read the status in {edge_config.data_dir}: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(snapshot, indent=1))
        return
    console = _console()
    pid = read_pid(edge_config.data_dir)
    updated = snapshot.get("updated")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(updated)) if isinstance(updated, int | float) else "?"
    alive = f"running (pid {pid})" if pid is not None else "not running"
    console.print(f"edge runtime: {alive}; status as of {when}", highlight=False)
    console.print(status_table(snapshot))


def status_table(snapshot: dict[str, Any]) -> Table:
    """Render the status snapshot as a table."""
    table = Table(title=None)
    for name in ("IID", "state", "pid", "last status", "status age", "restarts", "failures"):
        table.add_column(name, no_wrap=True)
    table.add_column("last error", overflow="fold")
    now = time.time()
    styles = {"running": "green", "failed-permanently": "red", "crash-looping": "red", "backoff": "yellow"}
    for iid, row in snapshot.get("apps", {}).items():
        state = str(row.get("state", "?"))
        status = row.get("last_status_name") or ("" if row.get("last_status") is None else str(row["last_status"]))
        seen = row.get("last_status_time")
        age = f"{now - seen:.0f} s" if isinstance(seen, int | float) else ""
        attached = " (attached)" if row.get("attached") else ""
        table.add_row(
            iid + attached,
            f"[{styles.get(state, 'white')}]{state}[/]",
            "" if row.get("pid") is None else str(row["pid"]),
            status,
            age,
            str(row.get("restarts", 0)),
            str(row.get("consecutive_failures", 0)),
            row.get("last_error") or "",
        )
    return table


@edge.command("reload")
def edge_reload(config: ConfigOption) -> None:
    """Make the running runtime re-read its configuration (sends it SIGHUP)."""
    from gridhub.edge.runtime import read_pid

    edge_config = _load(config)  # refuse a broken file before disturbing the runtime
    pid = read_pid(edge_config.data_dir)
    if pid is None:
        _err(f"no edge runtime is running for {config} (no live pid in {edge_config.data_dir / 'runtime.pid'})")
        raise typer.Exit(1)
    os.kill(pid, signal.SIGHUP)
    typer.echo(f"asked the edge runtime (pid {pid}) to reload {config}")


@edge.command("mosquitto-config")
def edge_mosquitto_config(
    config: ConfigOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for mosquitto.conf, acl and passwords.")],
) -> None:
    """Write mosquitto.conf, the ACL file and the password file for a managed/external Mosquitto."""
    from gridhub.edge.runtime import write_mosquitto_files

    edge_config = _load(config)
    try:
        written = write_mosquitto_files(edge_config, out)
    except (OSError, ValueError) as exc:
        _err(f"cannot write the Mosquitto files to {out}: {exc}")
        raise typer.Exit(1) from None
    for path in written:
        typer.echo(str(path))


@edge.command("certs")
def edge_certs(
    out: Annotated[Path, typer.Option("--out", help="Folder for the CA, server and client certificates.")],
    apids: Annotated[list[str] | None, typer.Option("--app", help="APID to issue a client certificate for.")] = None,
) -> None:
    """Create (or reuse) the marketplace CA and issue the server and client certificates."""
    from gridhub.edge import certs

    try:
        ca = certs.ensure_ca(out)
        server = certs.issue_server_cert(ca, out)
        typer.echo(f"CA:     {ca.cert_file}")
        typer.echo(f"server: {server.cert_file} {server.key_file}")
        for apid in apids or []:
            client = certs.issue_client_cert(apid, ca, out)
            typer.echo(f"{apid}: {client.cert_file} {client.key_file}")
    except (OSError, ValueError) as exc:
        _err(str(exc))
        raise typer.Exit(1) from None


# -- gridhub demo -----------------------------------------------------------------------------------


@app.command("demo")
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the demo configuration and data.")] = DEMO_DIR,
    substations: Annotated[
        int, typer.Option("--substations", min=1, max=20, help="How many simulated substations (1-20).")
    ] = 3,
    hub_port: Annotated[int, typer.Option("--hub-port", help="The hub's HTTP port (0: any free port).")] = 8080,
    port: Annotated[
        int, typer.Option(help="Marketplace port of the first substation, the next ones +1, +2... (0: free ports).")
    ] = 18830,
    clock_factor: Annotated[
        float, typer.Option(help="Simulated seconds per real second (60: a simulated hour a minute).")
    ] = 60.0,
    edge_only: Annotated[
        bool,
        typer.Option("--edge-only", help="Only one substation, in this process, with its measurements live; no hub."),
    ] = False,
) -> None:
    """Run the hub and simulated substations (simulator, thermal app, uploader) with a live view until Ctrl-C."""
    if not clock_factor > 0:
        _err(f"--clock-factor: expected a positive number, got {clock_factor}")
        raise typer.Exit(2)
    if edge_only:
        _demo_edge_only(folder, port or 18830, clock_factor)
        return
    from gridhub.demo import DEMO_ADMIN, DemoError, Platform, free_port, port_in_use, prepare_hub, site_profiles

    profiles = site_profiles(substations)
    hub_port = hub_port or free_port()
    ports = [free_port() for _ in profiles] if port == 0 else [port + i for i in range(len(profiles))]
    busy = [p for p in (hub_port, *ports) if port_in_use(p)]
    if busy:
        _err(f"port {busy[0]} on 127.0.0.1 is in use: is a demo already running? Otherwise choose others with "
             "--hub-port and --port (0 picks free ones)")  # fmt: skip
        raise typer.Exit(2)
    folder = folder.resolve()
    console = _console()
    reused = (folder / "hub").exists()
    try:
        account = prepare_hub(folder / "hub", [p.name for p in profiles])
    except (DemoError, OSError) as exc:
        _err(f"cannot prepare the demo hub in {folder / 'hub'}: {exc}")
        raise typer.Exit(1) from None
    platform = Platform(folder, hub_port, profiles, ports)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C, SIGTERM, or SIGHUP when the terminal closes: stop everything in order. SIGINT is set
    # explicitly too: a shell starting the demo in the background leaves it ignored.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in stop_signals}
    try:
        console.print(f"gridhub demo in {folder}{' (reused)' if reused else ''}: starting the hub...", highlight=False)
        platform.start_hub()
        platform.start_edges(clock_factor, account.tokens)
        _demo_banner(console, platform, folder, DEMO_ADMIN, account.password, clock_factor)
        _demo_watch(console, platform)
    except KeyboardInterrupt:
        pass
    except DemoError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    finally:
        for sig in stop_signals:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        platform.stop(sys.stdout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print(f"stopped; the data stays in {folder} (run again to continue)", highlight=False)


def _demo_banner(
    console: Console, platform: Any, folder: Path, user: str, password: str | None, clock_factor: float
) -> None:
    lines = [
        f"gridhub demo: the hub and {plural(len(platform.profiles), 'simulated substation')}"
        f" at {clock_factor:g}x real time",
        f"status page:  {platform.url}",
        f"user:         {user}",
    ]
    if password is not None:
        lines.append(f"password:     {password}   (generated now and shown only this once)")
    else:
        lines.append(
            f"password:     the one printed when {folder} was created; to start afresh with a new one, "
            f"stop the demo and delete {folder}"
        )
    lines += [
        f"folder:       {folder} (hub.log, <substation>/edge.log, <substation>/edge.toml)",
        "Ctrl-C stops the substations (LV-CAP section 6 shutdown), then the hub.",
    ]
    for line in lines:
        console.print(line, highlight=False, markup=False)
    sys.stdout.flush()


def _demo_view(platform: Any) -> Group:
    """Render the demo's console view: per substation, its runtime, apps and what the hub stored.

    The table fits an 80-column terminal (long cells wrap); a runtime that exited gets a line of
    its own below the table with the log to read, never cut short.
    """
    reachable = platform.hub_reachable()
    hub_state = "[green]reachable[/]" if reachable else "[red]not reachable[/]"
    table = Table(title=f"hub {platform.url}: {hub_state}", title_justify="left")
    table.add_column("substation", no_wrap=True)
    table.add_column("marketplace", overflow="fold")
    table.add_column("edge runtime", no_wrap=True, min_width=len("exited (255)"))
    table.add_column("apps")
    table.add_column("rows uploaded", justify="right", no_wrap=True)
    table.add_column("last upload")
    failures: list[Text] = []
    now = time.time()
    for row in platform.view():
        last = "-"
        if row.last_upload:
            with contextlib.suppress(ValueError):
                stamp = datetime.fromisoformat(row.last_upload.replace("Z", "+00:00")).timestamp()
                last = f"{max(0.0, now - stamp):.0f} s ago"
        runtime = Text(row.runtime, style="red" if row.failure else "")
        table.add_row(
            row.name,
            f"127.0.0.1:{row.port}",
            runtime,
            row.apps or "-",
            "-" if row.stored is None else f"{row.stored:,}",
            last,
        )
        if row.failure:
            failures.append(Text(f"{row.name}: {row.failure}", style="red", overflow="fold"))
    return Group(table, *failures)


def _demo_watch(console: Console, platform: Any) -> None:
    """Show the substations until interrupted (KeyboardInterrupt)."""
    if console.is_terminal:
        with Live(_demo_view(platform), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(2.0)
                live.update(_demo_view(platform))
    # Not a terminal (a log, a test): a snapshot every 30 s instead of a live view.
    while True:
        console.print(_demo_view(platform))
        sys.stdout.flush()
        time.sleep(30.0)


def _demo_edge_only(folder: Path, port: int, clock_factor: float) -> None:
    """Run one simulated substation in this process with its key measurements live (no hub)."""
    from gridhub.edge.runtime import EdgeRuntime

    _setup_logging("warning")
    config_path = write_demo_config(folder, port=port, clock_factor=clock_factor)
    edge_config = _load(config_path)
    runtime = EdgeRuntime(edge_config)
    console = Console()
    console.print(f"gridhub demo: configuration {config_path}; Ctrl-C to stop", highlight=False)
    stop = threading.Event()
    # Ctrl-C, SIGTERM, or SIGHUP when the terminal closes: shut the apps down properly (section 6).
    # SIGINT is set explicitly too: a shell starting the demo in the background leaves it ignored.
    # The handlers stay during the shutdown, so a second Ctrl-C does not cut it short.
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in stop_signals}
    try:
        runtime.start()
        with _watch(runtime) as view, Live(view.table(runtime), console=console, refresh_per_second=2) as live:
            while not stop.wait(0.5):
                live.update(view.table(runtime))
    finally:
        console.print("stopping the edge runtime...")
        try:
            runtime.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


DEMO_POINTS = (
    # (label, topic suffix below sensor/data/<simulator IID>/ or algorithm/data/<thermal IID>/)
    (
        "busbar voltage L1 / L2 / L3",
        ("60/busbar/l1/voltage-mean", "60/busbar/l2/voltage-mean", "60/busbar/l3/voltage-mean"),
    ),
    (
        "transformer current L1 / L2 / L3",
        ("60/transformer/l1/current-mean", "60/transformer/l2/current-mean", "60/transformer/l3/current-mean"),
    ),
    (
        "transformer active power L1 / L2 / L3",
        (
            "60/transformer/l1/power-active-mean",
            "60/transformer/l2/power-active-mean",
            "60/transformer/l3/power-active-mean",
        ),
    ),
    ("transformer power factor L1", ("60/transformer/l1/power-factor-mean",)),
    (
        "feeder 1 current L1 / L2 / L3 / N",
        (
            "60/feeder1/l1/current-mean",
            "60/feeder1/l2/current-mean",
            "60/feeder1/l3/current-mean",
            "60/feeder1/n/current-mean",
        ),
    ),
    ("ambient outdoor / indoor", ("10/ambient/temperature-outdoor", "10/ambient/temperature-indoor")),
    ("top oil measured", ("10/transformer/temperature-top-oil",)),
    ("hot spot / top oil (thermal model)", ("T1/temperature/hot-spot", "T1/temperature/top-oil")),
    ("load factor / continuous rating", ("T1/load/factor", "T1/rating/continuous")),
    ("ageing rate / loss of life", ("T1/ageing/rate", "T1/ageing/loss-of-life")),
)
DEMO_SIMULATOR = "gridhub_simulator_01"
DEMO_THERMAL = "gridhub_thermal_01"


class _MarketplaceView:
    """The demo's live view: key measurements with their units, simulated time and app states."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, tuple[Any, bool, int]] = {}  # suffix -> (value, valid, timestamp)
        self.units: dict[str, str] = {}
        self.messages = 0

    def seen(self, topic: str, payload: bytes) -> None:
        levels = topic.split("/")
        if len(levels) < 4 or levels[1] != "data" or levels[2] not in (DEMO_SIMULATOR, DEMO_THERMAL):
            return
        suffix = "/".join(levels[3:])
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = json.loads(payload)
            if not isinstance(body, dict):
                return
            with self.lock:
                self.messages += 1
                if suffix.endswith("/meta"):
                    self.units[suffix[: -len("/meta")]] = str(body.get("Units") or "")
                elif "Value" in body and not isinstance(body["Value"], list):
                    self.values[suffix] = (body["Value"], body.get("Valid") is not False, int(body.get("Timestamp", 0)))

    def table(self, runtime: Any) -> Table:
        with self.lock:
            values, units, messages = dict(self.values), dict(self.units), self.messages
        latest = max((stamp for _, _, stamp in values.values()), default=0)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(latest)) if latest else "waiting for data"
        table = Table(title=f"Simulated substation: {when}  ({messages} messages)", title_justify="left")
        table.add_column("measurement")
        table.add_column("value", justify="right")
        for label, suffixes in DEMO_POINTS:
            table.add_row(label, " / ".join(_shown(values.get(s), units.get(s, "")) for s in suffixes))
        apps = runtime.manager.snapshot().get("apps", {})
        table.caption = "apps: " + ", ".join(f"{iid} {info.get('state')}" for iid, info in sorted(apps.items()))
        return table


def _shown(reading: tuple[Any, bool, int] | None, unit: str) -> str:
    if reading is None:
        return "-"
    value, valid, _ = reading
    if unit == "1":  # dimensionless (a ratio)
        unit = ""
    if isinstance(value, float) and unit in ("W", "var", "VA", "J", "A") and abs(value) >= 1000:
        value, unit = value / 1000, "k" + unit
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip() + ("" if valid else " (invalid)")


@contextlib.contextmanager
def _watch(runtime: Any) -> Iterator[_MarketplaceView]:
    from gridhub.sdk.mqtt import MarketplaceClient

    view = _MarketplaceView()
    client = MarketplaceClient("gridhub-demo-console", runtime.core_address("gridhub-manager"))
    client.subscribe("+/data/#", 0, lambda message: view.seen(message.topic, message.payload))
    client.start()
    try:
        yield view
    finally:
        client.stop()


# -- gridhub app ... (developer's kit) ----------------------------------------------------------

AppArgument = Annotated[
    list[str],
    typer.Argument(
        help="The app: a project folder, 'package.module:Class', or -- COMMAND [ARGS...] for any language.",
        show_default=False,
    ),
]
VendorOption = Annotated[str | None, typer.Option("--vendor", help="Vendor (default: the project's, else 'dev').")]
NameOption = Annotated[
    str | None, typer.Option("--name", help="Application Name (default: the project's, else 'app').")
]
VersionOption = Annotated[
    str | None, typer.Option("--app-version", help="Application Version (default: the project's, else 0.1.0).")
]
InstanceOption = Annotated[str | None, typer.Option("--instance", help="Instance, 00-99 (default 01).")]
MapOption = Annotated[
    list[str] | None, typer.Option("--map", help="CSV input: COLUMN=TOPIC, once per value column to feed.")
]


def _target_and_identity(
    target_args: list[str], vendor: str | None, name: str | None, version: str | None, instance: str | None
) -> tuple[Any, Any]:
    from gridhub.sdk.replay import AppIdentity, ReplayError, resolve_target

    try:
        target = resolve_target(target_args)
        base = target.identity or AppIdentity()
        identity = AppIdentity(
            vendor=vendor or base.vendor,
            name=name or base.name,
            version=version or base.version,
            instance=instance or base.instance,
        )
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    return target, identity


def _inputs(path: Path | None, mapping: list[str] | None, timestamp_column: str | None) -> list[Any]:
    from gridhub.sdk.replay import ReplayError, parse_column_map, read_inputs

    if path is None:
        return []
    try:
        return read_inputs(path, parse_column_map(mapping or []), timestamp_column)
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None


def _config(path: Path | None, iid: str) -> dict[str, Any]:
    from gridhub.sdk.replay import ReplayError, load_config

    if path is None:
        return {}
    try:
        return load_config(path, iid)
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None


@app_kit.command("new")
def app_new(
    name: Annotated[str, typer.Argument(help="Application Name: lowercase letters, digits and hyphens (4.2).")],
    vendor: Annotated[str, typer.Option("--vendor", help="Vendor: lowercase letters, digits and hyphens.")],
    folder: Annotated[Path | None, typer.Option("--dir", help="Project folder to create (default ./NAME).")] = None,
    version: Annotated[str, typer.Option("--version", help="Application Version (digits, letters, '.', '-').")] = (
        "0.1.0"
    ),
    no_wheel: Annotated[
        bool, typer.Option("--no-wheel", help="Leave wheels/ without a gridhub wheel (you copy one there).")
    ] = False,
) -> None:
    """Create a complete LV-CAP app project: SDK app, config example, replay tests, Dockerfile, README."""
    from gridhub import __version__ as gridhub_version
    from gridhub.sdk.scaffold import WHEELS_DIR, ScaffoldError, scaffold

    if not no_wheel:
        typer.echo(f"creating the project with a wheel of gridhub {gridhub_version} in {WHEELS_DIR}/ ...")
    try:
        path = scaffold(name, vendor, directory=folder, version=version, wheel=not no_wheel)
    except ScaffoldError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except OSError as exc:
        _err(f"cannot create the project: {exc}")
        raise typer.Exit(1) from None
    wheels = sorted((path / WHEELS_DIR).glob("gridhub-*.whl"))
    typer.echo(f"created {vendor}/{name}:{version} in {path}")
    if wheels:
        typer.echo(
            f"{WHEELS_DIR}/{wheels[0].name}: gridhub for pip install --find-links {WHEELS_DIR} (and the Dockerfile)"
        )
    else:
        typer.echo(f"{WHEELS_DIR}/ has no gridhub wheel: copy one there before installing (see {WHEELS_DIR}/README.md)")
    typer.echo("next, in a virtual environment (python -m venv .venv && . .venv/bin/activate):")
    typer.echo(
        f"  cd {shlex.quote(str(path))} && python -m pip install --find-links {WHEELS_DIR} -e '.[dev]'"
        " && python -m pytest && gridhub app check . --config config.json"
    )


@app_kit.command("replay")
def app_replay(
    target_args: AppArgument,
    input_file: Annotated[Path, typer.Option("--input", "-i", help="Recorded inputs: FILE.jsonl or FILE.csv.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="ContainerConfig JSON file.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output JSONL (default: stdout).")] = None,
    mapping: MapOption = None,
    timestamp_column: Annotated[
        str | None, typer.Option("--timestamp-column", help="CSV: the timestamp column (default: auto).")
    ] = None,
    quiet_ms: Annotated[
        float, typer.Option("--quiet-ms", help="After each input also wait until the app is quiet this long.")
    ] = 0.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for start-up and for each input.")] = 15.0,
    vendor: VendorOption = None,
    name: NameOption = None,
    version: VersionOption = None,
    instance: InstanceOption = None,
) -> None:
    """Feed recorded messages into an app as fast as it consumes them; record everything it publishes."""
    from gridhub.sdk.replay import ReplayError, replay_target, write_jsonl

    target, identity = _target_and_identity(target_args, vendor, name, version, instance)
    inputs = _inputs(input_file, mapping, timestamp_column)
    container_config = _config(config, identity.iid)
    if output is not None and not output.parent.is_dir():
        _err(f"--output {output}: folder {output.parent} does not exist")
        raise typer.Exit(2)
    warnings: list[str] = []
    try:
        records = replay_target(
            target, identity, container_config, inputs, quiet_ms=quiet_ms, timeout=timeout, warn=warnings.append
        )
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    if output is None:
        write_jsonl(records, sys.stdout)
    else:
        with output.open("w", encoding="utf-8") as handle:
            write_jsonl(records, handle)
    where = "stdout" if output is None else str(output)
    stderr = Console(stderr=True)
    for warning in warnings:
        stderr.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    stderr.print(
        f"{identity.iid}: {len(inputs)} inputs fed, {len(records)} messages recorded to {where}", highlight=False
    )


@app_kit.command("record")
def app_record(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSONL.")],
    broker: Annotated[str, typer.Option("--broker", help="The marketplace as HOST:PORT.")] = "127.0.0.1:1883",
    username: Annotated[str | None, typer.Option("--username", help="MQTT username.")] = None,
    password: Annotated[str | None, typer.Option("--password", help="MQTT password.")] = None,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="Topic filter to record (repeatable; default #).")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", "-n", help="Stop after this many messages.")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after this many seconds.")] = None,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", help="TLS: the marketplace's CA certificate.")] = None,
    cert_file: Annotated[Path | None, typer.Option("--cert-file", help="TLS: client certificate.")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="TLS: client private key.")] = None,
) -> None:
    """Capture messages from a live marketplace as replayable JSONL (a topic sniffer)."""
    from gridhub.sdk.mqtt import BrokerAddress, TlsSettings
    from gridhub.sdk.replay import ReplayError, parse_broker, record

    try:
        host, port = parse_broker(broker)
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    if not output.parent.is_dir():
        _err(f"--output {output}: folder {output.parent} does not exist")
        raise typer.Exit(2)
    tls = None if ca_file is None else TlsSettings(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    if tls is None and (cert_file is not None or key_file is not None):
        _err("--cert-file/--key-file need --ca-file (TLS)")
        raise typer.Exit(2)
    address = BrokerAddress(host=host, port=port, username=username, password=password, tls=tls)
    try:
        with output.open("w", encoding="utf-8") as handle:
            written = record(address, handle, filters=filters or ["#"], count=count, duration=duration)
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        written = sum(1 for _ in output.open(encoding="utf-8"))
    typer.echo(f"recorded {written} messages to {output}")


@app_kit.command("check")
def app_check(
    target_args: AppArgument,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A valid ContainerConfig (JSON).")] = None,
    bad_config: Annotated[
        Path | None,
        typer.Option("--bad-config", help="A ContainerConfig the app must refuse (default: no configuration)."),
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", "-i", help="Inputs to feed while checking (JSONL or CSV).")
    ] = None,
    mapping: MapOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each expected reaction.")] = 5.0,
    poll_interval: Annotated[float, typer.Option(help="Status polls must be answered within this.")] = 1.0,
    grace: Annotated[float, typer.Option(help="Seconds allowed to shut down after the command.")] = 10.0,
    poll_gap: Annotated[
        float, typer.Option(help="missed-poll: seconds without polls before one that must still be answered.")
    ] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    vendor: VendorOption = None,
    name: NameOption = None,
    version: VersionOption = None,
    instance: InstanceOption = None,
) -> None:
    """Check an app (any language) against the LV-CAP Public API; exit 1 if a rule fails."""
    from gridhub.sdk.check import CheckOptions, check, report_json
    from gridhub.sdk.replay import ReplayError

    target, identity = _target_and_identity(target_args, vendor, name, version, instance)
    options = CheckOptions(
        timeout=timeout,
        poll_interval=poll_interval,
        grace=grace,
        poll_gap=poll_gap,
        bad_config=_config(bad_config, identity.iid) if bad_config is not None else None,
        inputs=_inputs(input_file, mapping, None),
    )
    try:
        report = check(target, identity, _config(config, identity.iid), options)
    except ReplayError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(report_json(report))
    else:
        console = _console()
        console.print(f"LV-CAP conformance check of {report.target} as {report.iid} (APID {report.apid})",
                      highlight=False, markup=False)  # fmt: skip
        console.print(check_table(report))
        verdict = "[green]PASS[/]" if report.passed else f"[red]FAIL[/]: {', '.join(report.failed())}"
        console.print(f"result: {verdict}", highlight=False)
        if not report.passed and report.app_output:
            console.print("last lines of the app's output:", highlight=False)
            console.print(report.app_output, markup=False, highlight=False)
    if not report.passed:
        raise typer.Exit(1)


def check_table(report: Any) -> Table:
    """Render a conformance report as a table: rule, API section, result, what was seen."""
    table = Table(title=None)
    table.add_column("rule", no_wrap=True)
    table.add_column("section", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("checks", overflow="fold", ratio=2)
    table.add_column("detail", overflow="fold", ratio=3)
    styles = {"pass": "[green]PASS[/]", "fail": "[red]FAIL[/]", "skip": "[yellow]SKIP[/]"}
    for result in report.results:
        table.add_row(result.rule.id, result.rule.section, styles[result.outcome], Text(result.rule.title),
                      Text(result.detail))  # fmt: skip
    return table


def main() -> None:
    """Run the gridhub command."""
    app()


if __name__ == "__main__":
    main()
