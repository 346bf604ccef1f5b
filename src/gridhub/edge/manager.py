"""The Container Manager: registry, start-up, configuration, status polling and shutdown of apps.

Annex 4 sections 5, 6 and 8.2. Apps are local processes (spawned here, in their own process
group) or *attached* processes started by a developer; both are configured, polled and managed
over the Data Marketplace in exactly the same way.

Each app is a small state machine. :func:`transition` is pure (it mutates only the app's
:class:`AppRecord` and returns :class:`Action` s), takes the time as an argument and knows
nothing of MQTT or processes, so every rule below is testable on its own:

- status poll (8.2.2): a poll fails when no ``status/response/<IID>`` arrived before the next
  poll, or the status was not STATUS_MSG_OK (1) or STATUS_INITIAL (5). Three consecutive
  failures restart the app; five stop it for good (state ``failed-permanently``) and the error
  is stored in the Data Storage Application.
- status 2/3 (and unknown codes, a failed LWT, a process that exits by itself) count as a
  failure and restart the app at once; status 5 resends the configuration; status 4 stops the
  app until its configuration changes or the manager restarts; status 6 restarts it at once.
- restarts after failures back off exponentially (``restart_backoff`` doubling up to
  ``restart_backoff_max``); an app restarted ``crash_loop_restarts`` times with less than
  ``crash_loop_window`` seconds between restarts is shown as ``crash-looping`` and retried at
  the capped back-off, never silently restarted forever.
- shutdown (6): command 1 on ``command/<IID>``, wait up to ``shutdown_grace`` for
  STATUS_SHUT_DWN, then SIGTERM the process group and SIGKILL it a few seconds later.

:class:`ContainerManager` is the boundary: it feeds MQTT messages, process exits and clock ticks
into the state machine on one thread and carries out the actions.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gridhub.edge.settings import (
    ConfigError,
    get_bool,
    get_int,
    get_number,
    get_str,
    get_table,
    reject_unknown,
)
from gridhub.formats.lvcap import (
    QOS_COMMAND,
    QOS_CONFIG,
    QOS_STATUS_REQUEST,
    QOS_STATUS_RESPONSE,
    AppId,
    CommandCode,
    Errno,
    InstanceId,
    LvcapError,
    StatusCode,
    command_topic,
    config_response_topic,
    decode_json_object,
    status_request_topic,
    storage_error_topic,
    validate_iid,
)
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient, Message

log = logging.getLogger(__name__)

#: Consecutive failed status requests after which an app is restarted (8.2.2).
RESTART_AFTER_FAILURES = 3
#: Consecutive failed status requests after which an app is stopped for good (8.2.2).
STOP_AFTER_FAILURES = 5
#: Seconds between SIGTERM and SIGKILL when a process must be terminated.
KILL_GRACE = 3.0
#: Seconds between two passes of the manager loop (process exits, deadlines).
LOOP_INTERVAL = 0.05


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagerSettings:
    """The ``[manager]`` section: status polling, shutdown and restart policy."""

    status_interval: float = 120.0
    shutdown_grace: float = 60.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 300.0
    crash_loop_restarts: int = 5
    crash_loop_window: float = 600.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "[manager]", base_dir: Path) -> ManagerSettings:
        """Read the section, refusing unknown keys and out-of-range values."""
        reject_unknown(data, [f.name for f in cls.__dataclass_fields__.values()], where)
        backoff = get_number(data, "restart_backoff", cls.restart_backoff, where, minimum=0.0)
        backoff_max = get_number(data, "restart_backoff_max", cls.restart_backoff_max, where, minimum=0.0)
        if backoff_max < backoff:
            raise ConfigError(
                f"{where} restart_backoff_max: must not be less than restart_backoff ({backoff:g}), got {backoff_max:g}"
            )
        return cls(
            status_interval=get_number(data, "status_interval", cls.status_interval, where, minimum=0.05),
            shutdown_grace=get_number(data, "shutdown_grace", cls.shutdown_grace, where, minimum=0.0),
            restart_backoff=backoff,
            restart_backoff_max=backoff_max,
            crash_loop_restarts=get_int(data, "crash_loop_restarts", cls.crash_loop_restarts, where, minimum=1),
            crash_loop_window=get_number(data, "crash_loop_window", cls.crash_loop_window, where, minimum=0.0),
        )


@dataclass(frozen=True)
class AppEntry:
    """One ``[[app]]`` of the configuration: which app instance to run and its configuration."""

    app_id: AppId
    instance_id: InstanceId
    command: tuple[str, ...] = ()
    attached: bool = False
    password: str = field(default="", repr=False)
    config: Mapping[str, Any] = field(default_factory=dict)
    workdir: Path = Path(".")
    client_id: str = ""  # MQTT client id when not the APID (several instances of one APID)

    KEYS = ("vendor", "name", "version", "instance", "command", "attached", "password", "config")

    @property
    def iid(self) -> str:
        """The Instance ID <IID> (4.2)."""
        return self.instance_id.iid

    @property
    def apid(self) -> str:
        """The Application ID <APID> (4.2): username and client id on the marketplace."""
        return self.app_id.apid

    def configuration(self) -> dict[str, Any]:
        """Return the Application Configuration (9.5) sent as ``Configuration``."""
        return {"ContainerName": self.iid, "ContainerConfig": dict(self.config)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str, base_dir: Path) -> AppEntry:
        """Read one ``[[app]]`` table; base_dir (the config file's folder) is the working directory."""
        reject_unknown(data, cls.KEYS, where)
        vendor = get_str(data, "vendor", None, where)
        name = get_str(data, "name", None, where)
        version = get_str(data, "version", None, where)
        instance = get_str(data, "instance", None, where)
        try:
            app_id = AppId(vendor, name, version)
        except LvcapError as exc:
            raise ConfigError(f"{where} vendor/name/version: {exc}") from exc
        try:
            instance_id = InstanceId(vendor, name, instance)
        except LvcapError as exc:
            raise ConfigError(f"{where} instance: {exc}") from exc
        attached = get_bool(data, "attached", False, where)
        password = get_str(data, "password", "", where)
        raw_command = data.get("command", [])
        if not isinstance(raw_command, list) or not all(isinstance(arg, str) and arg for arg in raw_command):
            raise ConfigError(f"{where} command: expected a list of non-empty strings, got {raw_command!r}")
        if not attached and not raw_command:
            raise ConfigError(f"{where} command: required unless attached = true (the argv to spawn)")
        if attached and not password:
            raise ConfigError(f"{where} password: required when attached = true (the app connects by itself)")
        config = get_table(data, "config", where)
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            # TOML dates/times have no JSON form; the configuration travels as JSON (9.5).
            raise ConfigError(f"{where} config: not representable as JSON ({exc})") from exc
        return cls(
            app_id=app_id,
            instance_id=instance_id,
            command=tuple(raw_command),
            attached=attached,
            password=password,
            config=dict(config),
            workdir=base_dir,
        )


# -- the state machine ----------------------------------------------------------------------


class AppState(enum.StrEnum):
    """Where an app is in its life, as shown by ``gridhub edge status``."""

    STARTING = "starting"  # spawned (or expected, when attached); no configuration request yet
    WAITING_CONFIG = "waiting-config"  # asked for its configuration or said STATUS_INITIAL
    RUNNING = "running"  # last status STATUS_MSG_OK
    RESTARTING = "restarting"  # being terminated before a restart (attached: told to shut down)
    BACKOFF = "backoff"  # stopped after a failure, waiting before it is started again
    CRASH_LOOPING = "crash-looping"  # like backoff, but restarting again and again: capped delay
    STOPPING = "stopping"  # shutdown command sent, waiting for STATUS_SHUT_DWN or the process to end
    STOPPED = "stopped"  # stopped by the operator (runtime shutdown, removed from the config)
    FAILED_PERMANENTLY = "failed-permanently"  # five consecutive failures: not started again
    SHUT_DOWN = "shut-down"  # the app said STATUS_SHUT_DWN: stopped until its configuration changes


#: States in which the app is expected to answer status requests.
ACTIVE_STATES = frozenset({AppState.STARTING, AppState.WAITING_CONFIG, AppState.RUNNING})
#: States with no process and nothing pending.
FINAL_STATES = frozenset({AppState.STOPPED, AppState.FAILED_PERMANENTLY, AppState.SHUT_DOWN})


class EventKind(enum.Enum):
    """What happened to an app."""

    START = "start"  # the manager starts it (first start, or after a configuration change)
    CONFIG_REQUEST = "config-request"  # config/request/<IID> arrived
    STATUS = "status"  # status/response/<IID> arrived (code, message)
    POLL = "poll"  # a status request is about to be sent: judge the previous one
    PROCESS_EXITED = "process-exited"  # the spawned process ended (code)
    TICK = "tick"  # time passed: back-off and shutdown deadlines
    STOP = "stop"  # the operator stops it (runtime shutdown, removal)
    CONFIG_CHANGED = "config-changed"  # its configuration changed on reload


@dataclass(frozen=True)
class Event:
    """One input of the state machine."""

    kind: EventKind
    code: int | None = None  # STATUS: the Status value; PROCESS_EXITED: the exit code
    message: str | None = None  # STATUS: the optional Message


class ActionKind(enum.Enum):
    """What the manager must do for an app."""

    SPAWN = "spawn"  # start the process
    SEND_CONFIG = "send-config"  # publish config/response/<IID>
    SEND_SHUTDOWN = "send-shutdown"  # publish {"Command": 1} on command/<IID>
    TERMINATE = "terminate"  # SIGTERM the process group, SIGKILL it KILL_GRACE seconds later
    RECORD_ERROR = "record-error"  # store an error in the Data Storage Application


@dataclass(frozen=True)
class Action:
    """One output of the state machine."""

    kind: ActionKind
    message: str = ""


@dataclass
class AppRecord:
    """The live status of one app: the state machine's memory and the status snapshot's row."""

    iid: str
    attached: bool = False
    state: AppState = AppState.STOPPED
    pid: int | None = None
    last_status: int | None = None
    last_status_time: float | None = None  # Unix time (for people), set by the manager
    last_message: str | None = None
    consecutive_failures: int = 0
    restarts: int = 0
    last_error: str | None = None
    # internal bookkeeping
    restart_streak: int = 0
    last_restart_at: float | None = None
    restart_delay: float = 0.0
    crash_looping: bool = False
    next_start_at: float | None = None
    stop_deadline: float | None = None
    after_stop: AppState = AppState.STOPPED
    polled: bool = False
    answered: bool = False

    def snapshot(self) -> dict[str, Any]:
        """Return the row written to status.json."""
        return {
            "state": self.state.value,
            "attached": self.attached,
            "pid": self.pid,
            "last_status": self.last_status,
            "last_status_name": _status_name(self.last_status),
            "last_status_time": self.last_status_time,
            "last_message": self.last_message,
            "consecutive_failures": self.consecutive_failures,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


def transition(record: AppRecord, event: Event, now: float, settings: ManagerSettings) -> list[Action]:
    """Apply one event to an app's record and return what the manager must do.

    ``now`` is a monotonic time in seconds; the function reads no clock and does no I/O.
    """
    kind = event.kind
    if kind is EventKind.START:
        return _start(record)
    if kind is EventKind.CONFIG_REQUEST:
        if record.state is AppState.STARTING:
            record.state = AppState.WAITING_CONFIG
        elif record.attached and record.state in (AppState.RESTARTING, AppState.SHUT_DOWN):
            # Its developer started it again: manage it again, judging only requests from now on.
            record.state = AppState.WAITING_CONFIG
            record.polled = record.answered = False
        return [Action(ActionKind.SEND_CONFIG)]
    if kind is EventKind.STATUS:
        return _on_status(record, event.code, event.message, now, settings)
    if kind is EventKind.POLL:
        actions: list[Action] = []
        if _polled_state(record) and record.polled and not record.answered:
            actions = _fail(record, "no status response to the status request", now, settings, immediate=False)
        record.polled = _polled_state(record)
        record.answered = False
        return actions
    if kind is EventKind.PROCESS_EXITED:
        return _on_exit(record, event.code, event.message, now, settings)
    if kind is EventKind.TICK:
        return _on_tick(record, now)
    if kind is EventKind.STOP:
        return _stop(record, AppState.STOPPED, now, settings)
    if kind is EventKind.CONFIG_CHANGED:
        if record.state in ACTIVE_STATES:
            return [Action(ActionKind.SEND_CONFIG)]
        if record.state in (AppState.SHUT_DOWN, AppState.FAILED_PERMANENTLY):
            return _start(record, again=True)
        return []
    raise AssertionError(f"unhandled event {kind}")  # pragma: no cover


def _polled_state(record: AppRecord) -> bool:
    """Tell whether an unanswered status request counts as a failure in the record's state.

    An attached app told to shut down before a restart (RESTARTING) is still connected until it
    says STATUS_SHUT_DWN or its developer restarts it; one that neither does nor answers keeps
    failing and is stopped for good at STOP_AFTER_FAILURES (8.2.2), instead of waiting forever.
    """
    return record.state in ACTIVE_STATES or (record.attached and record.state is AppState.RESTARTING)


def _start(record: AppRecord, *, again: bool = False) -> list[Action]:
    """Start a stopped app; ``again`` also starts one stopped for good or shut down (new configuration)."""
    if record.state is not AppState.STOPPED and not (again and record.state in FINAL_STATES):
        return []
    record.state = AppState.STARTING
    record.consecutive_failures = 0
    record.restart_streak = 0
    record.polled = record.answered = False
    record.next_start_at = record.stop_deadline = None
    return [] if record.attached else [Action(ActionKind.SPAWN)]


def _on_status(
    record: AppRecord, code: int | None, message: str | None, now: float, settings: ManagerSettings
) -> list[Action]:
    if record.state is AppState.STOPPING and code == StatusCode.SHUT_DWN:
        # Section 6: the app finished its shutdown; stop it now rather than at the deadline.
        record.last_status, record.last_message = code, message
        if record.attached:
            record.state = record.after_stop
            return []
        record.stop_deadline = None
        return [Action(ActionKind.TERMINATE)]
    if record.state is AppState.RESTARTING and record.attached and code == StatusCode.SHUT_DWN:
        # It obeyed the shutdown command sent before the restart: it is down until its developer
        # starts it again (a configuration request resumes it).
        record.last_status, record.last_message = code, message
        record.answered = True
        record.state = AppState.SHUT_DOWN
        return [Action(ActionKind.RECORD_ERROR, message)] if message else []
    if record.state not in ACTIVE_STATES:
        # A late message from a process that is going or gone, e.g. the will the broker sends
        # when a process that already said STATUS_SHUT_DWN is terminated: not its last status.
        return []
    if (
        code is not None
        and code not in (StatusCode.MSG_OK, StatusCode.INITIAL, StatusCode.SHUT_DWN, StatusCode.RESTART)
        and record.state is AppState.STARTING
        and not record.attached
    ):
        # Before its configuration request a fresh process has said nothing yet (5.2): this is
        # the will of the process it replaced, already handled by the exit watcher.
        return []
    record.last_status = code
    record.last_message = message
    record.answered = True
    if code is None:
        # Not a status response at all: the status request failed, but it is no request to restart.
        return _fail(record, f"invalid status response{_suffix(message)}", now, settings, immediate=False)
    if code == StatusCode.MSG_OK:
        record.consecutive_failures = 0
        record.state = AppState.RUNNING
        return []
    if code == StatusCode.INITIAL:
        record.consecutive_failures = 0
        record.state = AppState.WAITING_CONFIG
        return [Action(ActionKind.SEND_CONFIG)]
    actions = [Action(ActionKind.RECORD_ERROR, message)] if message else []
    if code == StatusCode.SHUT_DWN:
        record.last_error = f"stopped at its own request (STATUS_SHUT_DWN){_suffix(message)}"
        if record.attached:
            record.state = AppState.SHUT_DOWN
            return actions
        record.state = AppState.STOPPING
        record.after_stop = AppState.SHUT_DOWN
        record.stop_deadline = None
        return [*actions, Action(ActionKind.TERMINATE)]
    if code == StatusCode.RESTART:
        record.restarts += 1
        record.state = AppState.RESTARTING
        if record.attached:
            return actions  # it stopped itself; its developer starts it again
        record.after_stop = AppState.STARTING
        return [*actions, Action(ActionKind.TERMINATE)]
    # STATUS_MSG_FAIL, STATUS_MSG_ERR, a failed LWT or an unknown value: a failure (Table 7).
    name = _status_name(code) or f"status {code}"
    return [*actions, *_fail(record, f"{name}{_suffix(message)}", now, settings, immediate=True)]


def _on_exit(
    record: AppRecord, code: int | None, message: str | None, now: float, settings: ManagerSettings
) -> list[Action]:
    record.pid = None
    if record.state in ACTIVE_STATES:
        reason = message or f"process exited by itself with code {code}"
        return _fail(record, reason, now, settings, immediate=True, gone=True)
    if record.state is AppState.RESTARTING:
        return _restart_gone(record, now)
    if record.state is AppState.STOPPING:
        record.state = record.after_stop
        record.stop_deadline = None
    return []


def _on_tick(record: AppRecord, now: float) -> list[Action]:
    if (
        record.state in (AppState.BACKOFF, AppState.CRASH_LOOPING)
        and record.next_start_at is not None
        and now >= record.next_start_at
    ):
        record.state = AppState.STARTING
        record.next_start_at = None
        record.polled = record.answered = False
        return [] if record.attached else [Action(ActionKind.SPAWN)]
    if record.state is AppState.STOPPING and record.stop_deadline is not None and now >= record.stop_deadline:
        record.stop_deadline = None
        if record.attached:
            record.state = record.after_stop
            return []
        return [Action(ActionKind.TERMINATE)]
    return []


def _stop(record: AppRecord, final: AppState, now: float, settings: ManagerSettings) -> list[Action]:
    if record.state in ACTIVE_STATES:
        record.state = AppState.STOPPING
        record.after_stop = final
        record.stop_deadline = now + settings.shutdown_grace
        return [Action(ActionKind.SEND_SHUTDOWN)]
    if record.state in (AppState.RESTARTING, AppState.STOPPING):
        if record.attached:
            record.state = final if record.state is AppState.RESTARTING else record.after_stop
        else:
            record.after_stop = final  # its process is already being terminated
            record.state = AppState.STOPPING
        return []
    if record.state in (AppState.BACKOFF, AppState.CRASH_LOOPING):
        record.state = final
        record.next_start_at = None
    return []


def _fail(
    record: AppRecord,
    reason: str,
    now: float,
    settings: ManagerSettings,
    *,
    immediate: bool,
    gone: bool = False,
) -> list[Action]:
    """Count one failure; restart or stop the app for good when the count says so (8.2.2)."""
    record.consecutive_failures += 1
    record.last_error = reason
    failures = record.consecutive_failures
    if failures >= STOP_AFTER_FAILURES:
        error = f"{record.iid} stopped permanently after {failures} consecutive failures; last: {reason}"
        record.last_error = error
        actions = [Action(ActionKind.RECORD_ERROR, error)]
        if gone or record.attached:
            record.state = AppState.FAILED_PERMANENTLY
            return [*actions, Action(ActionKind.SEND_SHUTDOWN)] if record.attached else actions
        record.state = AppState.STOPPING
        record.after_stop = AppState.FAILED_PERMANENTLY
        record.stop_deadline = None
        return [*actions, Action(ActionKind.SEND_SHUTDOWN), Action(ActionKind.TERMINATE)]
    if not immediate and failures != RESTART_AFTER_FAILURES:
        return []
    _count_restart(record, now, settings)
    record.state = AppState.RESTARTING
    if record.attached:
        # Nothing to terminate: ask it to shut down and wait for its developer to start it again.
        return [Action(ActionKind.SEND_SHUTDOWN)]
    if gone:
        return _restart_gone(record, now)
    record.after_stop = AppState.BACKOFF
    return [Action(ActionKind.TERMINATE)]


def _count_restart(record: AppRecord, now: float, settings: ManagerSettings) -> None:
    """Grow the back-off: restarts less than crash_loop_window apart form a streak."""
    if record.last_restart_at is not None and now - record.last_restart_at > settings.crash_loop_window:
        record.restart_streak = 0
    record.restart_streak += 1
    record.last_restart_at = now
    record.restarts += 1
    record.crash_looping = record.restart_streak >= settings.crash_loop_restarts
    if record.crash_looping:
        record.restart_delay = settings.restart_backoff_max
    else:
        delay = settings.restart_backoff * 2 ** (record.restart_streak - 1)
        record.restart_delay = min(delay, settings.restart_backoff_max)


def _restart_gone(record: AppRecord, now: float) -> list[Action]:
    """The process is gone: start it again now, or after its back-off."""
    if record.after_stop is AppState.STARTING:
        record.state = AppState.STARTING
        record.polled = record.answered = False
        return [Action(ActionKind.SPAWN)]
    record.state = AppState.CRASH_LOOPING if record.crash_looping else AppState.BACKOFF
    record.next_start_at = now + record.restart_delay
    return []


def _suffix(message: str | None) -> str:
    return f": {message}" if message else ""


def _status_name(code: int | None) -> str | None:
    if code is None:
        return None
    try:
        return f"STATUS_{StatusCode(code).name}"
    except ValueError:
        return None


# -- the boundary: processes, MQTT, the status snapshot ---------------------------------------


class RunningProcess(Protocol):
    """A started app process."""

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        ...

    def poll(self) -> int | None:
        """Return the exit code once the process has ended, else None."""
        ...

    def signal_group(self, signum: int) -> None:
        """Send a signal to the process group."""
        ...


class ProcessLauncher(Protocol):
    """Start an app process with its argv, environment, working directory and log file."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> RunningProcess:
        """Start the process."""
        ...


class SpawnedProcess:
    """A subprocess in its own process group (so its children are signalled with it)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self._popen.pid

    def poll(self) -> int | None:
        """Return the exit code once the process has ended, else None."""
        return self._popen.poll()

    def signal_group(self, signum: int) -> None:
        """Send a signal to the process group (ignored once it is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)


def spawn_process(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> SpawnedProcess:
    """Start argv in a new session, appending its stdout and stderr to log_path.

    A bare ``python`` or ``python3`` as the command means the runtime's own interpreter, so
    the built-in apps and apps installed beside gridhub run from a fresh checkout whatever
    the PATH holds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = list(argv)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return SpawnedProcess(popen)


def app_client_id(entry: AppEntry) -> str:
    """Return the MQTT client id an app instance connects with (LVCAP_CLIENT_ID; the marketplace binds it)."""
    return entry.client_id or entry.apid


def app_environment(entry: AppEntry, address: BrokerAddress, data_dir: Path) -> dict[str, str]:
    """Return the LVCAP_* variables given to an app (see the shared contract)."""
    env = {
        "LVCAP_IID": entry.iid,
        "LVCAP_APID": entry.apid,
        "LVCAP_VENDOR": entry.app_id.vendor,
        "LVCAP_NAME": entry.app_id.name,
        "LVCAP_VERSION": entry.app_id.version,
        "LVCAP_INSTANCE": entry.instance_id.instance,
        "LVCAP_BROKER_HOST": address.host,
        "LVCAP_BROKER_PORT": str(address.port),
        "LVCAP_USERNAME": address.username or entry.apid,
        "LVCAP_CLIENT_ID": app_client_id(entry),
        "LVCAP_PASSWORD": address.password or "",
        "LVCAP_DATA_DIR": str(data_dir),
    }
    if address.tls is not None:
        env["LVCAP_CA_FILE"] = str(address.tls.ca_file)
        if address.tls.cert_file is not None:
            env["LVCAP_CERT_FILE"] = str(address.tls.cert_file)
        if address.tls.key_file is not None:
            env["LVCAP_KEY_FILE"] = str(address.tls.key_file)
    return env


ErrorRecorder = Callable[[str, int, str], None]
"""Store an error (IID, Errno of Table 11, message) in the Data Storage Application."""


def app_data_dir(data_dir: Path, iid: str) -> Path:
    """Return an app's private data directory (4.7)."""
    return data_dir / "apps" / iid / "data"


def app_log_path(data_dir: Path, iid: str) -> Path:
    """Return the file an app's stdout and stderr go to."""
    return data_dir / "logs" / f"{iid}.log"


def status_path(data_dir: Path) -> Path:
    """Return the status snapshot file read by ``gridhub edge status``."""
    return data_dir / "status.json"


class ContainerManager:
    """Start, configure, poll, restart and shut down the configured apps.

    Every state change happens on one loop thread; MQTT handlers and callers only queue work
    for it. ``broker_for`` gives each app its marketplace address and credentials;
    ``record_error`` stores errors (by default they are published on storage/data/error/<IID>).
    ``launcher`` and ``clock`` are the process and time boundaries.
    """

    def __init__(
        self,
        settings: ManagerSettings,
        data_dir: Path,
        *,
        broker_for: Callable[[AppEntry], BrokerAddress],
        record_error: ErrorRecorder | None = None,
        launcher: ProcessLauncher = spawn_process,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self._broker_for = broker_for
        self._record_error = record_error
        self._launcher = launcher
        self._clock = clock
        self._client: MarketplaceClient | None = None
        self._entries: dict[str, AppEntry] = {}
        self._records: dict[str, AppRecord] = {}
        self._processes: dict[str, RunningProcess] = {}
        self._kill_at: dict[str, float] = {}
        self._replace: dict[str, AppEntry | None] = {}  # once stopped: start this entry / remove (None)
        self._work: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._quiet = threading.Event()  # no process alive and every app in a final state
        self._next_poll: float | None = None
        self._snapshot: dict[str, Any] = {}
        self._written: dict[str, Any] | None = None
        # status.json is first written once the configured apps are registered, so a reader that
        # sees the file (``gridhub edge status``, a supervisor) never sees a runtime without its apps.
        self._registered = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, client: MarketplaceClient) -> None:
        """Start the loop and answer configuration requests and status responses via client."""
        if self._thread is not None:
            return
        self._client = client
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._running.set()
        self._thread = threading.Thread(target=self._loop, name="container-manager", daemon=True)
        self._thread.start()
        client.subscribe("config/request/+", QOS_CONFIG, self._on_config_request)
        client.subscribe("status/response/+", QOS_STATUS_RESPONSE, self._on_status_response)

    def start_apps(self, entries: Sequence[AppEntry]) -> None:
        """Register apps and start them in the given order (5.1.2)."""
        self._call(lambda: self._start_apps(list(entries)))

    def update_apps(self, entries: Sequence[AppEntry]) -> None:
        """Apply a reloaded app list: push changed configurations, start new apps, stop removed ones."""
        self._call(lambda: self._update_apps(list(entries)))

    def shutdown_apps(self, timeout: float | None = None) -> bool:
        """Shut every app down (section 6) and wait; return False when some did not stop in time."""
        if self._thread is None:
            return True
        self._quiet.clear()
        self._call(self._stop_all)
        limit = self.settings.shutdown_grace + 2 * KILL_GRACE + 1.0 if timeout is None else timeout
        done = self._quiet.wait(limit)
        if not done:
            log.warning("apps still running %.1f s after the shutdown request; killing them", limit)
            self._call(self._kill_all)
            time.sleep(2 * LOOP_INTERVAL)
        return done

    def stop(self) -> None:
        """Stop the manager loop (after shutdown_apps) and its subscriptions."""
        if self._thread is None:
            return
        self._running.clear()
        self._thread.join(timeout=10)
        self._thread = None
        if self._client is not None:
            for topic in ("config/request/+", "status/response/+"):
                with contextlib.suppress(Exception):
                    self._client.unsubscribe(topic)

    def snapshot(self) -> dict[str, Any]:
        """Return the latest status snapshot (what status.json holds)."""
        return self._snapshot

    # -- MQTT handlers (dispatcher thread): queue work for the loop --------------------------

    def _on_config_request(self, message: Message) -> None:
        iid = message.topic.split("/", 2)[2]
        try:
            validate_iid(iid)
        except LvcapError as exc:
            log.warning("ignoring configuration request on %s: %s", message.topic, exc)
            return
        self._call(lambda: self._config_requested(iid))

    def _on_status_response(self, message: Message) -> None:
        iid = message.topic.split("/", 2)[2]
        received = time.time()
        code: int | None
        text: str | None
        try:
            body = decode_json_object(message.payload, message.topic)
        except LvcapError as exc:
            # "Invalid JSON anywhere": a failed status request, and an ERRNO_JSON_INVALID error.
            error = str(exc)
            self._call(lambda: self._status_received(iid, None, error, received, errno=Errno.JSON_INVALID))
            return
        try:
            status = body.get("Status")
            if isinstance(status, bool) or not isinstance(status, int):
                raise LvcapError(f"{message.topic} Status: expected an Integer, got {status!r}")
            text = body.get("Message")
            if text is not None and not isinstance(text, str):
                raise LvcapError(f"{message.topic} Message: expected a string, got {text!r}")
            code = status
        except LvcapError as exc:
            code, text = None, str(exc)
        self._call(lambda: self._status_received(iid, code, text, received))

    # -- the loop thread -----------------------------------------------------------------

    def _call(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def _loop(self) -> None:
        while self._running.is_set():
            try:
                work = self._work.get(timeout=LOOP_INTERVAL)
            except queue.Empty:
                work = None
            try:
                if work is not None:
                    work()
                    while True:
                        try:
                            self._work.get_nowait()()
                        except queue.Empty:
                            break
                self._pass()
            except Exception:
                log.exception("container manager loop error")

    def _pass(self) -> None:
        now = self._clock()
        for iid, process in list(self._processes.items()):
            code = process.poll()
            if code is not None:
                del self._processes[iid]
                self._kill_at.pop(iid, None)
                log.info("%s: process %d ended with code %s", iid, process.pid, code)
                self._handle(iid, Event(EventKind.PROCESS_EXITED, code=code))
            elif iid in self._kill_at and now >= self._kill_at[iid]:
                log.warning("%s: process %d ignored SIGTERM; sending SIGKILL", iid, process.pid)
                process.signal_group(signal.SIGKILL)
                del self._kill_at[iid]
        for iid in list(self._records):
            self._handle(iid, Event(EventKind.TICK))
        if self._next_poll is not None and now >= self._next_poll:
            self._next_poll = now + self.settings.status_interval
            self._poll()
        self._write_snapshot()
        quiet = not self._processes and all(r.state in FINAL_STATES for r in self._records.values())
        if quiet:
            self._quiet.set()

    def _poll(self) -> None:
        for iid in list(self._records):
            self._handle(iid, Event(EventKind.POLL))
        self._publish(status_request_topic(), {"Timestamp": int(time.time())}, QOS_STATUS_REQUEST)

    def _handle(self, iid: str, event: Event) -> None:
        record = self._records.get(iid)
        if record is None:
            return
        before = record.state
        actions = transition(record, event, self._clock(), self.settings)
        if record.state is not before:
            log.info("%s: %s -> %s (%s)", iid, before.value, record.state.value, event.kind.value)
        for action in actions:
            self._execute(iid, action)
        if record.state in FINAL_STATES and iid in self._replace:
            self._replaced(iid)

    def _execute(self, iid: str, action: Action) -> None:
        entry = self._entries[iid]
        if action.kind is ActionKind.SPAWN:
            self._spawn(entry)
        elif action.kind is ActionKind.SEND_CONFIG:
            payload = {"Configuration": entry.configuration(), "Timestamp": int(time.time())}
            self._publish(config_response_topic(iid), payload, QOS_CONFIG)
        elif action.kind is ActionKind.SEND_SHUTDOWN:
            payload = {"Command": int(CommandCode.SHUT_DOWN), "Timestamp": int(time.time())}
            self._publish(command_topic(iid), payload, QOS_COMMAND)
        elif action.kind is ActionKind.TERMINATE:
            process = self._processes.get(iid)
            if process is None:
                self._handle(iid, Event(EventKind.PROCESS_EXITED))
            elif iid not in self._kill_at:
                process.signal_group(signal.SIGTERM)
                self._kill_at[iid] = self._clock() + KILL_GRACE
        elif action.kind is ActionKind.RECORD_ERROR:
            self._store_error(iid, action.message)

    def _spawn(self, entry: AppEntry) -> None:
        iid = entry.iid
        data = app_data_dir(self.data_dir, iid)
        try:
            data.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **app_environment(entry, self._broker_for(entry), data)}
            process = self._launcher(entry.command, env, entry.workdir, app_log_path(self.data_dir, iid))
        except OSError as exc:
            log.error("%s: cannot start %s: %s", iid, " ".join(entry.command), exc)
            self._handle(iid, Event(EventKind.PROCESS_EXITED, message=f"cannot be started: {exc}"))
            return
        self._processes[iid] = process
        self._records[iid].pid = process.pid
        log.info("%s: started process %d: %s", iid, process.pid, " ".join(entry.command))

    def _store_error(self, iid: str, message: str, errno: int = Errno.APPLICATION) -> None:
        log.warning("%s: %s", iid, message)
        if self._record_error is not None:
            try:
                self._record_error(iid, int(errno), message)
            except Exception:
                log.exception("%s: cannot store error", iid)
            return
        report = {"Errno": int(errno), "Message": message, "Timestamp": int(time.time())}
        self._publish(storage_error_topic(iid), report, 1)

    def _publish(self, topic: str, payload: Mapping[str, Any], qos: int) -> None:
        if self._client is None:
            return
        try:
            self._client.publish(topic, payload, qos=qos, retain=False)
        except Exception as exc:
            log.error("cannot publish on %s: %s", topic, exc)

    def _config_requested(self, iid: str) -> None:
        if iid in self._records:
            self._handle(iid, Event(EventKind.CONFIG_REQUEST))
            return
        # 5.2 step 4: the response "will include an error message" when there is no configuration.
        message = f"no configuration for {iid}: it is not in the edge configuration"
        payload = {"Configuration": None, "Message": message, "Timestamp": int(time.time())}
        self._publish(config_response_topic(iid), payload, QOS_CONFIG)
        self._store_error(iid, message)

    def _status_received(
        self, iid: str, code: int | None, text: str | None, received: float, *, errno: int | None = None
    ) -> None:
        record = self._records.get(iid)
        if record is None:
            log.debug("status from unknown app %s ignored", iid)
            return
        if errno is not None and text is not None:
            self._store_error(iid, text, errno)
        record.last_status_time = received
        self._handle(iid, Event(EventKind.STATUS, code=code, message=text))

    def _start_apps(self, entries: list[AppEntry]) -> None:
        for entry in entries:
            self._add(entry)
        if self._next_poll is None:
            self._next_poll = self._clock() + self.settings.status_interval
        self._registered = True
        self._write_snapshot()

    def _add(self, entry: AppEntry) -> None:
        iid = entry.iid
        self._entries[iid] = entry
        if iid not in self._records:
            self._records[iid] = AppRecord(iid=iid, attached=entry.attached)
        self._records[iid].attached = entry.attached
        self._handle(iid, Event(EventKind.START))

    def _update_apps(self, entries: list[AppEntry]) -> None:
        wanted = {entry.iid: entry for entry in entries}
        for iid in list(self._entries):
            if iid not in wanted:
                log.info("%s: removed from the configuration; stopping it", iid)
                self._replace[iid] = None
                self._handle(iid, Event(EventKind.STOP))
        for entry in entries:
            old = self._entries.get(entry.iid)
            if old is None:
                self._add(entry)
            elif old == entry:
                continue
            elif _same_process(old, entry):
                log.info("%s: configuration changed; pushing it", entry.iid)
                self._entries[entry.iid] = entry
                self._handle(entry.iid, Event(EventKind.CONFIG_CHANGED))
            else:
                log.info("%s: command or version changed; restarting it", entry.iid)
                self._replace[entry.iid] = entry
                self._handle(entry.iid, Event(EventKind.STOP))
        # Keep the configured order in the registry (and in status.json).
        order = [iid for iid in wanted if iid in self._entries] + [i for i in self._entries if i not in wanted]
        self._entries = {iid: self._entries[iid] for iid in order}
        self._records = {iid: self._records[iid] for iid in order}

    def _replaced(self, iid: str) -> None:
        entry = self._replace.pop(iid)
        if entry is None:
            self._entries.pop(iid, None)
            self._records.pop(iid, None)
            return
        self._entries[iid] = entry
        record = self._records[iid]
        record.attached = entry.attached
        record.state = AppState.STOPPED
        self._handle(iid, Event(EventKind.START))

    def _stop_all(self) -> None:
        self._replace.clear()
        self._next_poll = None
        for iid in list(self._records):
            self._handle(iid, Event(EventKind.STOP))

    def _kill_all(self) -> None:
        for process in self._processes.values():
            process.signal_group(signal.SIGKILL)

    def _write_snapshot(self) -> None:
        if not self._registered:
            return
        apps = {iid: record.snapshot() for iid, record in self._records.items()}
        if apps == self._written:
            return
        self._written = apps
        self._snapshot = {"updated": time.time(), "runtime_pid": os.getpid(), "apps": apps}
        write_json_atomic(status_path(self.data_dir), self._snapshot)


def _same_process(old: AppEntry, new: AppEntry) -> bool:
    """Tell whether only the configuration differs (pushed live) or the process must change."""
    return (old.app_id, old.command, old.attached, old.password) == (
        new.app_id,
        new.command,
        new.attached,
        new.password,
    )


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to path so that readers see the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    os.replace(tmp, path)


def read_status(data_dir: Path) -> dict[str, Any]:
    """Read the status snapshot written by a running manager."""
    with open(status_path(data_dir), encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data
