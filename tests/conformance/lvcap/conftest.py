"""LV-CAP conformance harness: a real `gridhub edge run` subprocess and plain paho-mqtt apps.

Everything here plays the part of a third-party application exactly as the LV-CAP Public API
(Annex 4) describes it: a plain paho-mqtt client (callback API version 2) with username and
client id set to the APID (Table 4), talking JSON on the Table 2/5/6/8/10/15/19 topics. Nothing
of gridhub's own SDK or client is used on the app side, so the suite checks the runtime against
the specification rather than against itself.

The runtime is started as a real subprocess from a TOML configuration written per test module
(or per test, where the rule under test changes an app's life) in one of three marketplace modes:

- ``embedded``: the in-process amqtt broker on a free port (ACLs enforced by the runtime);
- ``managed``: /usr/sbin/mosquitto on a free port with the generated password and ACL files;
- ``external``: the shared Mosquitto on 127.0.0.1:1883 (no ACLs: non-ACL rules only; vendors are
  random so Instance IDs never clash with another run).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, port_open

REPO = Path(__file__).resolve().parents[3]
GRIDHUB = REPO / ".venv" / "bin" / "gridhub"
MODES = ("embedded", "managed", "external")
ACL_MODES = ("embedded", "managed")
#: pytest params for the three marketplace modes: external touches the shared broker (serial).
MODE_PARAMS = [
    pytest.param("embedded", id="embedded"),
    pytest.param("managed", id="managed", marks=pytest.mark.mosquitto),
    pytest.param("external", id="external", marks=[pytest.mark.mosquitto, pytest.mark.serial]),
]
ACL_MODE_PARAMS = MODE_PARAMS[:2]
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
#: Topic names the LV-CAP API allows (4.4): ASCII letters, digits, hyphens, underscores, '/' levels.
TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
MAX_TOPIC_LENGTH = 220

# Status codes (Table 7), command codes (Table 9), errno (Table 11), query statuses (Table 18).
STATUS_MSG_OK, STATUS_MSG_FAIL, STATUS_MSG_ERR, STATUS_SHUT_DWN, STATUS_INITIAL, STATUS_RESTART = 1, 2, 3, 4, 5, 6
COMMAND_SHUT_DOWN = 1
ERRNO_JSON_INVALID = 1
DSC_QUERY_OK, DSC_QUERY_EMPTY, DSC_QUERY_TABLE_DENIED, DSC_QUERY_TOO_LONG = 1, 2, 3, 4
DSC_QUERY_MORE, DSC_QUERY_INVALID = 8, 9


# -- configuration --------------------------------------------------------------------------------


@dataclass
class AppSpec:
    """One [[app]] of the runtime configuration, as the test wants it."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    attached: bool = True
    script: str | None = None  # behaviour of a spawned script app (see APP_SCRIPT); None = attached
    version: str = "1.0.0"
    instance: str = "01"


@dataclass
class App:
    """A configured app of a running runtime: its identifiers and credentials."""

    name: str
    vendor: str
    version: str
    instance: str
    password: str
    attached: bool
    events_file: Path | None = None
    message: str = ""  # the Message a spawned script app sends with its failure status

    @property
    def iid(self) -> str:
        """Instance ID <Vendor>_<Application Name>_<Instance> (4.2)."""
        return f"{self.vendor}_{self.name}_{self.instance}"

    @property
    def apid(self) -> str:
        """Application ID <Vendor>_<Application Name>_<Application Version> (4.2)."""
        return f"{self.vendor}_{self.name}_{self.version}"

    def events(self) -> list[dict[str, Any]]:
        """Return what a spawned script app wrote to its events file so far."""
        if self.events_file is None or not self.events_file.exists():
            return []
        lines = self.events_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def toml_value(value: Any) -> str:
    """Render a Python value as TOML (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def toml_table(name: str, values: Mapping[str, Any]) -> str:
    """Render one [table] with key = value lines."""
    lines = [f"[{name}]"]
    lines += [f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# -- spawned script apps --------------------------------------------------------------------------

#: A plain paho-mqtt LV-CAP app started by the runtime. argv: behaviour, events file. It logs what
#: happens to it as JSON lines (start, config, command, sigterm) so the tests can see process-level
#: behaviour. Behaviours:
#:   ok               answer every status request with STATUS_MSG_OK; on command 1 send STATUS_SHUT_DWN
#:   ignore           answer status requests, ignore command 1 and SIGTERM (must be SIGKILLed)
#:   shut_self        after its configuration, send STATUS_SHUT_DWN (asks to be stopped for good)
#:   restart_once     first process: after configuration send STATUS_RESTART; later ones behave as ok
#:   fail_once        first process: after configuration send STATUS_MSG_FAIL with a Message; later ok
#:   err_once         the same with STATUS_MSG_ERR
#:   drop_once        first process: drop its socket without DISCONNECT (the broker sends its will
#:                    {"Status": 2}) and keep the process alive; later ones behave as ok
APP_SCRIPT = r"""
import json, os, signal, socket, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

behaviour, events_file, message = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()

def log(event, **kw):
    with lock, open(events_file, "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **kw}) + "\n")

def earlier_starts():
    try:
        with open(events_file) as f:
            return sum(1 for line in f if '"start"' in line)
    except FileNotFoundError:
        return 0

first = earlier_starts() == 0
log("start", env={k: v for k, v in os.environ.items() if k.startswith("LVCAP_") and k != "LVCAP_PASSWORD"})
if behaviour == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def on_term(signum, frame):
        log("sigterm")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)

iid, apid = os.environ["LVCAP_IID"], os.environ["LVCAP_APID"]
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=apid)
client.username_pw_set(apid, os.environ.get("LVCAP_PASSWORD") or None)
client.will_set("status/response/" + iid, json.dumps({"Status": 2}), qos=1, retain=False)
if os.environ.get("LVCAP_CA_FILE"):
    client.tls_set(ca_certs=os.environ["LVCAP_CA_FILE"], certfile=os.environ.get("LVCAP_CERT_FILE") or None,
                   keyfile=os.environ.get("LVCAP_KEY_FILE") or None)
state = {"configured": False}

def status(code, text=None):
    payload = {"Status": code, "Timestamp": int(time.time())}
    if text:
        payload["Message"] = text
    client.publish("status/response/" + iid, json.dumps(payload), qos=1)
    log("status-sent", status=code)

def on_connect(c, userdata, flags, reason_code, properties):
    log("connected", reason=str(reason_code))
    c.subscribe([("status/request", 0), ("config/response/" + iid, 1), ("command/" + iid, 1)])
    c.publish("config/request/" + iid, json.dumps({"Timestamp": int(time.time())}), qos=1)

def on_message(c, userdata, msg):
    text = msg.payload.decode("utf-8", "replace")
    if msg.topic == "config/response/" + iid:
        log("config", payload=text, qos=msg.qos, retain=msg.retain)
        if state["configured"]:
            return
        state["configured"] = True
        if behaviour == "shut_self":
            status(4)
        elif behaviour == "restart_once" and first:
            status(6)
        elif behaviour == "fail_once" and first:
            status(2, message)
        elif behaviour == "err_once" and first:
            status(3, message)
        elif behaviour == "drop_once" and first:
            status(1)
            def drop():
                time.sleep(0.3)
                sock = c.socket()
                c.loop_stop()  # no reconnect: the process stays alive but silent
                log("dropping-socket")
                sock.close()
            threading.Thread(target=drop, daemon=True).start()
        else:
            status(1)
    elif msg.topic == "status/request":
        if behaviour == "drop_once" and first:
            return
        if state["configured"] and behaviour != "shut_self":
            status(1)
    elif msg.topic == "command/" + iid:
        log("command", payload=text, qos=msg.qos, retain=msg.retain)
        if behaviour != "ignore":
            status(4)

client.on_connect = on_connect
client.on_message = on_message
client.connect(os.environ["LVCAP_BROKER_HOST"], int(os.environ["LVCAP_BROKER_PORT"]))
client.loop_start()
while True:
    time.sleep(1)
"""


# -- the runtime ----------------------------------------------------------------------------------


@dataclass
class Runtime:
    """A running `gridhub edge run` subprocess and what the tests need to reach it."""

    mode: str
    host: str
    port: int
    vendor: str
    workdir: Path
    config_path: Path
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    apps: dict[str, App]
    tls: dict[str, Path] | None = None
    clients: list[LvcapClient] = field(default_factory=list)

    def app(self, name: str) -> App:
        """Return the configured app called name."""
        return self.apps[name]

    def iid(self, name: str) -> str:
        """Return the IID of the configured app called name."""
        return self.apps[name].iid

    def log(self) -> str:
        """Return the tail of the runtime's own output (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text[-6000:]

    def running(self) -> bool:
        """Tell whether the runtime process is still alive."""
        return self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        """Return the runtime's status snapshot (status.json in data_dir)."""
        path = self.data_dir / "status.json"
        for _ in range(20):
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except (json.JSONDecodeError, FileNotFoundError):
                time.sleep(0.05)  # being replaced right now
        raise AssertionError(f"cannot read {path}\n{self.log()}")

    def app_status(self, name: str) -> dict[str, Any]:
        """Return the status snapshot row of one app."""
        data = self.status()
        apps = data.get("apps", data)
        iid = self.iid(name)
        if isinstance(apps, list):
            for row in apps:
                if row.get("iid") == iid:
                    return dict(row)
            raise AssertionError(f"{iid} not in status.json: {data}")
        assert iid in apps, f"{iid} not in status.json: {data}"
        return dict(apps[iid])

    def wait_app(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll status.json until the app's row satisfies predicate."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = self.app_status(name)
            if predicate(row):
                return row
            time.sleep(0.1)
        raise AssertionError(f"{self.iid(name)}: {what} did not happen; status row {row}\n{self.log()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `gridhub <args>` against this runtime's configuration."""
        env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
        return subprocess.run(
            [*gridhub_command(), *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.workdir,
            check=False,
            env=env,
        )

    def database(self) -> Path:
        """Return the storage database file."""
        candidates = sorted(self.data_dir.rglob("*.sqlite")) + sorted(self.data_dir.rglob("*.db"))
        assert candidates, f"no storage database under {self.data_dir}"
        named = [p for p in candidates if p.name.startswith("storage")]
        return (named or candidates)[0]

    def stored_errors(self) -> list[dict[str, Any]]:
        """Return every error stored in the storage database (any table with an error in its name)."""
        rows: list[dict[str, Any]] = []
        con = sqlite3.connect(f"file:{self.database()}?mode=ro", uri=True, timeout=5)
        try:
            con.row_factory = sqlite3.Row
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if "errors" in tables:
                tables = ["errors"]
            for table in tables:
                if "error" not in table.lower():
                    continue
                for row in con.execute(f'SELECT * FROM "{table}"'):
                    item = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row has no items()
                    item["_table"] = table
                    rows.append(item)
        finally:
            con.close()
        return rows

    def wait_error(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Poll the storage database until a stored error satisfies predicate."""
        deadline = time.monotonic() + timeout
        errors: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            errors = self.stored_errors()
            for error in errors:
                if predicate(error):
                    return error
            time.sleep(0.1)
        raise AssertionError(f"no stored error {what}; stored errors: {errors[-10:]}\n{self.log()}")

    def client(self, name: str, *, connect: bool = True, **kwargs: Any) -> LvcapClient:
        """Return a plain paho client playing the configured app called name (connected)."""
        app = self.apps[name]
        client = LvcapClient(self, app, **kwargs)
        self.clients.append(client)
        if connect:
            client.connect()
        return client

    def close_clients(self) -> None:
        """Disconnect every client a test opened (client ids are APIDs: two would kick each other)."""
        for client in self.clients:
            client.close()
        self.clients.clear()

    def stop(self) -> int | None:
        """Stop the runtime (SIGTERM, then SIGKILL) and close the test's clients."""
        self.close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def gridhub_command() -> list[str]:
    """Return the argv prefix that runs the `gridhub` command."""
    if GRIDHUB.exists():
        return [str(GRIDHUB)]
    return [sys.executable, "-m", "gridhub.cli"]


def new_vendor() -> str:
    """Return a random vendor name (so Instance IDs never clash on a shared broker)."""
    return "t" + secrets.token_hex(3)


def start_runtime(
    workdir: Path,
    mode: str,
    apps: Sequence[AppSpec],
    *,
    mosquitto: str | None = None,
    manager: Mapping[str, Any] | None = None,
    storage: Mapping[str, Any] | None = None,
    upload: Mapping[str, Sequence[str]] | None = None,
    read: Mapping[str, Sequence[str]] | None = None,
    tls: bool = False,
    vendor: str | None = None,
) -> Runtime:
    """Write edge.toml for apps in workdir, start `gridhub edge run` and wait until it is ready.

    ``upload`` and ``read`` are keyed by app name and list app names (or "*"); they become the
    [storage.upload] and [storage.read] tables with IIDs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    vendor = vendor or new_vendor()
    data_dir = workdir / "edge"
    host = "127.0.0.1"
    marketplace: dict[str, Any] = {"mode": mode, "host": host}
    tls_files: dict[str, Path] | None = None
    if mode == "external":
        port = 1883
        marketplace["port"] = port
    else:
        port = free_port()
        marketplace["port"] = port
        if mode == "managed":
            assert mosquitto, "managed mode needs the mosquitto binary"
            marketplace["mosquitto"] = mosquitto
        if tls:
            tls_files = make_certs(workdir / "certs")
            tls_port = free_port()
            marketplace.update(
                tls=True,
                tls_port=tls_port,
                ca_file=str(tls_files["ca_file"]),
                cert_file=str(tls_files["cert_file"]),
                key_file=str(tls_files["key_file"]),
            )
            port = tls_port
    manager_settings = {
        "status_interval": 0.4,
        "shutdown_grace": 2.0,
        "restart_backoff": 0.2,
        "restart_backoff_max": 1.0,
    }
    manager_settings.update(manager or {})
    apps_by_name: dict[str, App] = {}
    for spec in apps:
        app = App(
            name=spec.name,
            vendor=vendor,
            version=spec.version,
            instance=spec.instance,
            password="pw-" + secrets.token_hex(8),
            attached=spec.script is None and spec.attached,
        )
        if spec.script is not None:
            app.events_file = workdir / f"events-{spec.name}.jsonl"
            app.message = f"failure report {secrets.token_hex(4)}"
        apps_by_name[spec.name] = app

    def iids(names: Sequence[str]) -> list[str]:
        return [n if n == "*" else apps_by_name[n].iid for n in names]

    script_path = workdir / "lvcap_app.py"
    script_path.write_text(APP_SCRIPT)
    parts = [f'version = 1\ndata_dir = "{data_dir.name}"\n', toml_table("marketplace", marketplace)]
    parts.append(toml_table("manager", manager_settings))
    parts.append(toml_table("storage", dict(storage or {})))
    if upload:
        parts.append(toml_table("storage.upload", {apps_by_name[k].iid: iids(v) for k, v in upload.items()}))
    if read:
        parts.append(toml_table("storage.read", {apps_by_name[k].iid: iids(v) for k, v in read.items()}))
    for spec in apps:
        app = apps_by_name[spec.name]
        entry: dict[str, Any] = {
            "vendor": vendor,
            "name": spec.name,
            "version": spec.version,
            "instance": spec.instance,
            "password": app.password,
        }
        if spec.script is not None:
            assert app.events_file is not None
            entry["command"] = [sys.executable, str(script_path), spec.script, str(app.events_file), app.message]
        else:
            entry["attached"] = True
        lines = ["[[app]]"] + [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        parts.append("\n".join(lines) + "\n")
        if spec.config:
            parts.append(toml_table("app.config", spec.config))
    config_path = workdir / "edge.toml"
    config_path.write_text("\n".join(parts))
    log_path = workdir / "runtime.log"
    log_file = log_path.open("wb")
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        [*gridhub_command(), "edge", "run", "--config", str(config_path)],
        cwd=workdir,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log_file.close()
    runtime = Runtime(
        mode=mode,
        host=host,
        port=port,
        vendor=vendor,
        workdir=workdir,
        config_path=config_path,
        data_dir=data_dir,
        log_path=log_path,
        proc=proc,
        apps=apps_by_name,
        tls=tls_files,
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"gridhub edge run ({mode}) exited with {proc.returncode} before it was ready\n"
                f"{config_path.read_text()}\n{runtime.log()}"
            )
        if port_open(host, port) and (data_dir / "status.json").exists():
            return runtime
        time.sleep(0.1)
    runtime.stop()
    raise AssertionError(f"gridhub edge run ({mode}) not ready after {READY_TIMEOUT}s\n{runtime.log()}")


def make_certs(folder: Path) -> dict[str, Path]:
    """Create the marketplace CA and server certificate with gridhub.edge.certs; return the paths."""
    from gridhub.edge import certs

    ca = certs.ensure_ca(folder)
    server = certs.issue_server_cert(ca, folder)
    return {"ca_file": ca.cert_file, "ca_key": ca.key_file, "cert_file": server.cert_file, "key_file": server.key_file}


def client_cert(runtime: Runtime, apid: str) -> tuple[Path, Path]:
    """Issue a client certificate whose Common Name is apid, signed by the runtime's CA (Table 4)."""
    from gridhub.edge import certs

    assert runtime.tls is not None
    ca = certs.CertFiles(runtime.tls["ca_file"], runtime.tls["ca_key"])
    files = certs.issue_client_cert(apid, ca, runtime.workdir / "clients")
    return files.cert_file, files.key_file


# -- a plain paho-mqtt app ------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message an app received."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        """Decode the payload as JSON."""
        return json.loads(self.payload)


class ConnectRefused(AssertionError):
    """The marketplace refused the connection."""


class LvcapClient:
    """A third-party LV-CAP app played with plain paho-mqtt (callback API version 2)."""

    def __init__(
        self,
        runtime: Runtime,
        app: App,
        *,
        password: str | None = None,
        will: Mapping[str, Any] | None = None,
        client_id: str | None = None,
        username: str | None = None,
        tls_cert: tuple[Path, Path] | None = None,
        use_tls: bool | None = None,
    ) -> None:
        self.runtime = runtime
        self.app = app
        self.iid = app.iid
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or app.apid)
        self.client.username_pw_set(username or app.apid, app.password if password is None else password)
        if will is not None:
            self.client.will_set(f"status/response/{app.iid}", json.dumps(will), qos=1, retain=False)
        if runtime.tls is not None and use_tls is not False:
            certfile, keyfile = tls_cert if tls_cert else (None, None)
            self.client.tls_set(
                ca_certs=str(runtime.tls["ca_file"]),
                certfile=str(certfile) if certfile else None,
                keyfile=str(keyfile) if keyfile else None,
            )
        self.client.reconnect_delay_set(1, 2)
        self._cond = threading.Condition()
        self.messages: list[Received] = []
        self._connack: Any = None
        self._subacks: dict[int, list[Any]] = {}
        self._disconnected = False
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self._started = False
        #: When set, answer every status/request with this Status (as a live app does, 8.2.2).
        self.auto_status: int | None = None
        #: When set, answer command/<IID> {"Command": 1} with this Status (4 = STATUS_SHUT_DWN, section 6).
        self.answer_command: int | None = None

    # paho callbacks (network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._connack = reason_code
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        reply = None
        if msg.topic == "status/request" and self.auto_status is not None:
            reply = self.auto_status
        elif msg.topic == f"command/{self.iid}" and self.answer_command is not None:
            reply = self.answer_command
        if reply is not None:
            body = json.dumps({"Status": reply, "Timestamp": int(time.time())}, separators=(",", ":"))
            client.publish(f"status/response/{self.iid}", body, qos=1)
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._disconnected = True
            self._cond.notify_all()

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for a successful CONNACK; raise ConnectRefused otherwise."""
        try:
            self.client.connect(self.runtime.host, self.runtime.port, keepalive=30)
        except OSError as exc:  # includes ssl.SSLError
            raise ConnectRefused(f"{self.app.apid}: connection failed: {exc!r}") from exc
        self.client.loop_start()
        self._started = True
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._connack is None and not self._disconnected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            connack, disconnected = self._connack, self._disconnected
        if connack is None or connack.is_failure:
            self.close()
            raise ConnectRefused(f"{self.app.apid}: not connected (CONNACK {connack}, disconnected={disconnected})")

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe and return the SUBACK return code (granted QoS 0-2 or 0x80 failure)."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic}: {result}"
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._subacks:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._disconnected:
                    raise AssertionError(f"{self.app.apid}: no SUBACK for {topic} (disconnected={self._disconnected})")
                self._cond.wait(remaining)
            code = self._subacks.pop(mid)[0]
        return int(code.value) if hasattr(code, "value") else int(code)

    def subscribe_ok(self, topic: str, qos: int = 1) -> None:
        """Subscribe and require the broker to grant it."""
        code = self.subscribe(topic, qos)
        assert code < 0x80, f"{self.app.apid}: subscription to {topic} refused (SUBACK {code:#x})"

    def subscribe_table2(self) -> None:
        """Subscribe to the Table 2 topics every app needs (5.3)."""
        self.subscribe_ok("status/request", 0)
        self.subscribe_ok(f"config/response/{self.iid}", 1)
        self.subscribe_ok(f"command/{self.iid}", 1)

    def publish(
        self,
        topic: str,
        payload: bytes | str | Mapping[str, Any],
        qos: int = 1,
        retain: bool = False,
        *,
        require_ack: bool = True,
    ) -> None:
        """Publish and wait until the broker acknowledged it (for QoS > 0)."""
        if isinstance(payload, Mapping):
            data: bytes = json.dumps(payload, separators=(",", ":")).encode()
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = payload
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        if not require_ack:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2)
            return
        info.wait_for_publish(10)
        assert info.is_published() or qos == 0, f"{self.app.apid}: publish to {topic} not acknowledged"

    def status(self, code: int, message: str | None = None) -> None:
        """Send status/response/<IID> (8.2.2)."""
        payload: dict[str, Any] = {"Status": code, "Timestamp": int(time.time())}
        if message is not None:
            payload["Message"] = message
        self.publish(f"status/response/{self.iid}", payload, qos=1)

    def mark(self) -> int:
        """Return the index of the next message to arrive (to wait only for newer ones)."""
        with self._cond:
            return len(self.messages)

    def wait_for(
        self,
        topic_filter: str,
        predicate: Callable[[Received], bool] | None = None,
        *,
        timeout: float = 10.0,
        since: int = 0,
        what: str = "",
    ) -> Received:
        """Wait for a message matching topic_filter (and predicate) received at index >= since."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                while index < len(self.messages):
                    msg = self.messages[index]
                    index += 1
                    if mqtt.topic_matches_sub(topic_filter, msg.topic) and (predicate is None or predicate(msg)):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.topic for m in self.messages[since:]][-20:]
                    raise AssertionError(
                        f"{self.app.apid}: nothing on {topic_filter} {what} within {timeout}s; saw {seen}\n"
                        f"{self.runtime.log()}"
                    )
                self._cond.wait(remaining)

    def received(self, topic_filter: str, since: int = 0) -> list[Received]:
        """Return the messages received so far on topic_filter."""
        with self._cond:
            return [m for m in self.messages[since:] if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def request(
        self, request_topic: str, response_topic: str, payload: bytes | str | Mapping[str, Any], qos: int
    ) -> Received:
        """Publish a request and wait for the next message on the response topic."""
        since = self.mark()
        self.publish(request_topic, payload, qos=qos)
        return self.wait_for(response_topic, since=since, what=f"in answer to {request_topic}")

    def query(self, payload: bytes | str | Mapping[str, Any]) -> Received:
        """Send storage/request/<IID> and return storage/response/<IID> (8.6)."""
        return self.request(f"storage/request/{self.iid}", f"storage/response/{self.iid}", payload, qos=1)

    def newdata(self, payload: bytes | str | Mapping[str, Any]) -> Received:
        """Send storage/request/newdata/<IID> and return storage/response/newdata/<IID> (8.5)."""
        return self.request(
            f"storage/request/newdata/{self.iid}", f"storage/response/newdata/{self.iid}", payload, qos=2
        )

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker publishes the will (8.1.3)."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()
        self._started = False

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        if self._started:
            self._started = False
            try:
                self.client.disconnect()
            finally:
                self.client.loop_stop()


# -- fixtures -------------------------------------------------------------------------------------


def mode_services(request: pytest.FixtureRequest, mode: str) -> str | None:
    """Resolve the services a mode needs through the shared fixtures (they skip when absent)."""
    if mode == "managed":
        return str(request.getfixturevalue("mosquitto_binary"))
    if mode == "external":
        request.getfixturevalue("external_mosquitto")
    return None


class RuntimePool:
    """Runtimes shared by the tests of one module, one per mode, stopped at the module's end."""

    def __init__(self, workdir: Path, factory: Callable[[Path, str, str | None], Runtime]) -> None:
        self.workdir = workdir
        self.factory = factory
        self.runtimes: dict[str, Runtime] = {}

    def get(self, mode: str, mosquitto: str | None) -> Runtime:
        """Return the module's runtime for mode, starting it on first use."""
        runtime = self.runtimes.get(mode)
        if runtime is None:
            runtime = self.factory(self.workdir / mode, mode, mosquitto)
            self.runtimes[mode] = runtime
        assert runtime.running(), f"shared {mode} runtime died\n{runtime.log()}"
        return runtime

    def close(self) -> None:
        """Stop every runtime (all told at once, so their shutdown graces overlap)."""
        for runtime in self.runtimes.values():
            runtime.close_clients()
            if runtime.running():
                runtime.proc.send_signal(signal.SIGTERM)
        for runtime in self.runtimes.values():
            runtime.stop()


@pytest.fixture
def fresh_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Runtime]]:
    """Return a function starting a runtime of its own for one test; stopped at teardown."""
    started: list[Runtime] = []

    def start(mode: str, apps: Sequence[AppSpec], **kwargs: Any) -> Runtime:
        mosquitto = mode_services(request, mode)
        runtime = start_runtime(tmp_path / f"rt{len(started)}", mode, apps, mosquitto=mosquitto, **kwargs)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop()


def shared(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    """Yield the pool's runtime for the requested mode; close the test's clients afterwards."""
    mode = str(request.param)
    runtime = pool.get(mode, mode_services(request, mode))
    yield runtime
    runtime.close_clients()


def make_pool(
    tmp_path_factory: pytest.TempPathFactory, name: str, apps: Sequence[AppSpec], **kwargs: Any
) -> RuntimePool:
    """Create a module's runtime pool for apps with the given settings."""

    def factory(workdir: Path, mode: str, mosquitto: str | None) -> Runtime:
        return start_runtime(workdir, mode, apps, mosquitto=mosquitto, **kwargs)

    return RuntimePool(tmp_path_factory.mktemp(name), factory)


def pid_alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, runtime: Runtime | None = None) -> None:
    """Poll condition until it holds; fail saying what did not happen (with the runtime's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    if condition():
        return
    raise AssertionError(f"{what}: did not happen within {timeout}s\n{runtime.log() if runtime else ''}")


def unique(prefix: str = "x") -> str:
    """Return a unique topic level (so tests sharing a runtime never see each other's data)."""
    return prefix + secrets.token_hex(4)


def check_topic(topic: str) -> None:
    """Assert that topic is a valid LV-CAP topic name (4.4)."""
    assert len(topic) <= MAX_TOPIC_LENGTH, f"topic longer than {MAX_TOPIC_LENGTH}: {topic}"
    assert TOPIC_RE.match(topic), f"topic with characters outside letters/digits/-/_ or empty levels: {topic!r}"
