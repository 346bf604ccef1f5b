"""Reproducible app tests: feed recorded messages into an app and record what it publishes.

Section 4.5 of the API recommends that apps use the timestamps of their inputs "in preference to
referencing system time ... This will make it much easier to test Applications in a reproducible
manner by simply replaying a fixed sequence of input messages". This module is that test bench:

- ``Harness`` starts an embedded Data Marketplace on a free port (gridhub.edge.marketplace, with
  the app's own ACL account), plays a minimal Container Manager (answers config/request with the
  given ContainerConfig, polls status/request, sends the shut-down command) and runs the app as a
  separate process with the LVCAP_* environment the real manager gives. A broker hook sees every
  CONNECT, SUBSCRIBE and PUBLISH of the app in the order the broker handled them, with the ACL
  decision for each; ``gridhub app check`` builds on the same log.
- ``replay()`` feeds a recorded input sequence (JSONL of topic + payload, or a CSV of timestamped
  values mapped to topics) into the app in order, as fast as the app consumes it, and returns
  every message the app published, numbered in order (``RecordedMessage``).
- ``record()`` captures such a JSONL file from a live marketplace (a topic sniffer).

Flow control ("as fast as the app consumes them"): each input is published at QoS 1 and the
harness waits for the broker's PUBACK; then it sends a status/request as a marker and waits
for the app's status/response. Every LV-CAP app must answer status requests (8.2.2), and an app
that handles its messages one at a time in arrival order (the SDK's dispatcher thread, paho's
network loop) answers the marker only after it has handled the input before it, so every
output of input N is published before the next input is sent. Outputs are recorded from the
broker's own view, in the order the broker received them, and numbered with a sequence number
(never a wall-clock time), so a replay of the same inputs gives the same file. An app that hands
inputs to worker threads can publish after answering the marker: ``quiet_ms`` then also waits
until the app has published nothing for that long after each input. The status answers to the
markers are flow control, not output, and are left out of the recording unless they report
something other than STATUS_MSG_OK.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from gridhub.edge import marketplace as mp
from gridhub.formats.lvcap import (
    QOS_COMMAND,
    QOS_CONFIG,
    QOS_STATUS_REQUEST,
    AppId,
    CommandCode,
    InstanceId,
    LvcapError,
    ScalarObject,
    command_topic,
    config_request_topic,
    config_response_topic,
    encode_json,
    status_request_topic,
    status_response_topic,
    storage_error_topic,
    topic_matches,
    validate_topic,
    validate_topic_filter,
)
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient, MarketplaceError, Message

log = logging.getLogger(__name__)

MANAGER_CLIENT_ID = "gridhub-manager"
DEFAULT_TIMEOUT = 15.0
"""Seconds to wait for the app to connect, be configured, answer a marker or exit."""
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_SHUTDOWN_GRACE = 10.0
STATUS_OK = 1
STATUS_INITIAL = 5
FAILURE_STATUSES = frozenset({2, 3})
TIMESTAMP_COLUMNS = ("timestamp", "Timestamp", "TIMESTAMP", "time", "datetime")
_CLASS_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class ReplayError(RuntimeError):
    """The replay could not be done; the message says what went wrong and where."""


# -- identities and targets --------------------------------------------------------------------


@dataclass(frozen=True)
class AppIdentity:
    """Who the app under test is: Vendor, Application Name, Application Version and Instance (4.2)."""

    vendor: str = "dev"
    name: str = "app"
    version: str = "0.1.0"
    instance: str = "01"

    def __post_init__(self) -> None:
        try:
            AppId(self.vendor, self.name, self.version)
            InstanceId(self.vendor, self.name, self.instance)
        except LvcapError as exc:
            raise ReplayError(f"app identity: {exc}") from None

    @property
    def apid(self) -> str:
        """Return the Application ID <Vendor>_<Name>_<Version>."""
        return AppId(self.vendor, self.name, self.version).apid

    @property
    def iid(self) -> str:
        """Return the Instance ID <Vendor>_<Name>_<Instance>."""
        return InstanceId(self.vendor, self.name, self.instance).iid


@dataclass(frozen=True)
class AppTarget:
    """How to start the app: argv, working folder, extra PYTHONPATH entries and its identity."""

    argv: tuple[str, ...]
    cwd: Path | None = None
    pythonpath: tuple[str, ...] = ()
    identity: AppIdentity | None = None  # known from the project's pyproject.toml
    description: str = ""


def class_command(spec: str) -> tuple[str, ...]:
    """Return the argv running ``pkg.module:Class`` (an sdk App subclass) with this Python."""
    module, _, qualname = spec.partition(":")
    code = (
        "import importlib; from functools import reduce; "
        f"cls = reduce(getattr, {qualname.split('.')!r}, importlib.import_module({module!r})); cls.main()"
    )
    return (sys.executable, "-c", code)


def _parent_pythonpath() -> tuple[str, ...]:
    return tuple(p for p in sys.path if p and os.path.isdir(p))


def read_project(folder: Path) -> AppTarget:
    """Find the entry point of a scaffolded app project (``[tool.gridhub.app]`` in pyproject.toml).

    Without that table, a single package with a ``__main__.py`` (under src/ or the folder) is
    run with ``python -m``; its identity then has to be given separately.
    """
    folder = folder.resolve()
    source = folder / "src" if (folder / "src").is_dir() else folder
    pyproject = folder / "pyproject.toml"
    identity: AppIdentity | None = None
    entry = ""
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ReplayError(f"{pyproject}: cannot read it: {exc}") from None
        table = data.get("tool", {}).get("gridhub", {}).get("app", {})
        if not isinstance(table, dict):
            raise ReplayError(f"{pyproject} [tool.gridhub.app]: expected a table")
        if table:
            try:
                identity = AppIdentity(
                    vendor=str(table["vendor"]),
                    name=str(table["name"]),
                    version=str(table.get("version") or data.get("project", {}).get("version", "")),
                    instance=str(table.get("instance", "01")),
                )
                entry = str(table["entry"])
            except KeyError as exc:
                raise ReplayError(f"{pyproject} [tool.gridhub.app]: missing key {exc.args[0]!r}") from None
            if not _CLASS_SPEC.fullmatch(entry):
                raise ReplayError(
                    f"{pyproject} [tool.gridhub.app] entry: expected 'package.module:Class', got {entry!r}"
                )
    if entry:
        argv = class_command(entry)
    else:
        mains = sorted(p.parent.name for p in source.glob("*/__main__.py"))
        if len(mains) != 1:
            found = ", ".join(mains) or "none"
            raise ReplayError(
                f"{folder}: cannot find the app's entry point: no [tool.gridhub.app] entry in pyproject.toml and "
                f"not exactly one package with a __main__.py (found {found})"
            )
        argv = (sys.executable, "-m", mains[0])
    return AppTarget(
        argv=argv,
        cwd=folder,
        pythonpath=(str(source), *_parent_pythonpath()),
        identity=identity,
        description=f"project {folder}",
    )


def resolve_target(app: str | Path | type | Sequence[str]) -> AppTarget:
    """Turn APP into an AppTarget: a project folder, ``pkg.module:Class``, an App subclass or an argv."""
    if isinstance(app, type):
        spec = f"{app.__module__}:{app.__qualname__}"
        return AppTarget(argv=class_command(spec), pythonpath=_parent_pythonpath(), description=spec)
    if isinstance(app, str | Path):
        parts: list[str] = [str(app)]
    else:
        parts = [str(part) for part in app]
    if not parts:
        raise ReplayError("APP: give a project folder, a 'package.module:Class' or -- COMMAND...")
    if len(parts) == 1:
        only = parts[0]
        if Path(only).is_dir():
            return read_project(Path(only))
        if _CLASS_SPEC.fullmatch(only) and not Path(only).exists():
            return AppTarget(argv=class_command(only), pythonpath=_parent_pythonpath(), description=only)
    if shutil.which(parts[0]) is None and not Path(parts[0]).is_file():
        raise ReplayError(
            f"APP {' '.join(parts)!r}: not a project folder, not 'package.module:Class' and "
            f"{parts[0]!r} is not an executable"
        )
    return AppTarget(argv=tuple(parts), description=" ".join(parts))


# -- messages in and out -----------------------------------------------------------------------


@dataclass(frozen=True)
class InputMessage:
    """One message to feed into the app: a topic and the payload bytes."""

    topic: str
    payload: bytes

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> InputMessage:
        """Read {"topic": ..., "payload": {...}} or {"topic": ..., "payload_raw": "..."}."""
        topic = data.get("topic")
        if not isinstance(topic, str):
            raise ReplayError(f"{where}: topic: expected a string, got {topic!r}")
        try:
            validate_topic(topic, where=f"{where}: topic")
        except LvcapError as exc:
            raise ReplayError(str(exc)) from None
        if "payload" in data:
            body = data["payload"]
            if not isinstance(body, dict):
                raise ReplayError(f"{where}: payload: expected a JSON object (use payload_raw for other bytes)")
            return cls(topic, encode_json(body))
        raw = data.get("payload_raw")
        if not isinstance(raw, str):
            raise ReplayError(f"{where}: expected a 'payload' object or a 'payload_raw' string")
        return cls(topic, raw.encode("utf-8"))


MessageKind = Literal["data", "status", "error", "config", "storage", "other"]


@dataclass(frozen=True)
class RecordedMessage:
    """One message the app published, as the broker received it.

    ``seq`` numbers the recording from 1; ``after_input`` is how many inputs had been fed when
    the broker received it (0: before the first). ``payload`` is the JSON object, or None when
    the bytes are not a JSON object, in which case ``payload_raw`` holds them as text.
    """

    seq: int
    topic: str
    payload: dict[str, Any] | None
    payload_raw: str | None = None
    qos: int = 0
    retain: bool = False
    after_input: int = 0
    denied: bool = False  # the marketplace's ACL refused it (not the app's topic)

    @property
    def kind(self) -> MessageKind:
        """Say which API the topic belongs to: data, status, error, config, storage or other."""
        topic = self.topic
        if topic.startswith(("sensor/data/", "algorithm/data/")):
            return "data"
        if topic.startswith("status/response/"):
            return "status"
        if topic.startswith("storage/data/error/"):
            return "error"
        if topic.startswith("config/request/"):
            return "config"
        if topic.startswith("storage/"):
            return "storage"
        return "other"

    @classmethod
    def of(
        cls, seq: int, topic: str, payload: bytes, qos: int, retain: bool, after_input: int = 0, denied: bool = False
    ) -> RecordedMessage:
        """Make a record, decoding the payload when it is a JSON object."""
        body: dict[str, Any] | None = None
        raw: str | None = None
        try:
            decoded = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            decoded = None
        if isinstance(decoded, dict):
            body = decoded
        else:
            raw = payload.decode("utf-8", errors="replace")
        return cls(seq, topic, body, raw, qos, retain, after_input, denied)

    def to_json(self) -> dict[str, Any]:
        """Return the JSONL form: seq, topic, payload or payload_raw, qos, retain (+ after_input, denied)."""
        out: dict[str, Any] = {"seq": self.seq, "topic": self.topic}
        if self.payload is not None:
            out["payload"] = self.payload
        else:
            out["payload_raw"] = self.payload_raw
        out["qos"] = self.qos
        out["retain"] = self.retain
        out["after_input"] = self.after_input
        if self.denied:
            out["denied"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "record") -> RecordedMessage:
        """Read a record written by to_json."""
        message = InputMessage.from_json(data, where)
        seq = data.get("seq", 0)
        record = cls.of(
            int(seq) if isinstance(seq, int) else 0,
            message.topic,
            message.payload,
            int(data.get("qos", 0)),
            bool(data.get("retain", False)),
            int(data.get("after_input", 0)),
            bool(data.get("denied", False)),
        )
        return record


def write_jsonl(records: Iterable[RecordedMessage], out: TextIO) -> int:
    """Write records as JSON lines; return how many."""
    count = 0
    for record in records:
        out.write(json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False) + "\n")
        count += 1
    return count


def read_jsonl_inputs(text: str, where: str) -> list[InputMessage]:
    """Parse JSONL input lines (blank lines and lines starting with # are skipped)."""
    messages = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        here = f"{where}:{number}"
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise ReplayError(f"{here}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ReplayError(f"{here}: expected a JSON object with topic and payload")
        messages.append(InputMessage.from_json(data, here))
    return messages


def parse_column_map(items: Iterable[str]) -> dict[str, str]:
    """Parse ``COLUMN=TOPIC`` items (--map) into an ordered mapping, checking each topic."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, topic = item.partition("=")
        column, topic = column.strip(), topic.strip()
        if not sep or not column or not topic:
            raise ReplayError(f"--map {item!r}: expected COLUMN=TOPIC")
        try:
            validate_topic(topic, where=f"--map {column}")
        except LvcapError as exc:
            raise ReplayError(str(exc)) from None
        mapping[column] = topic
    return mapping


def _csv_timestamp(text: str, where: str) -> int:
    text = text.strip()
    try:
        return int(float(text)) if re.fullmatch(r"-?\d+(\.\d*)?", text) else _iso_timestamp(text)
    except ValueError:
        raise ReplayError(f"{where}: expected a Unix timestamp or an ISO 8601 date-time, got {text!r}") from None


def _iso_timestamp(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def _csv_value(text: str, where: str) -> bool | int | float | None:
    text = text.strip()
    if not text:
        return None
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ReplayError(f"{where}: expected a number or true/false, got {text!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ReplayError(f"{where}: expected a finite number, got {text!r}")
    return number


def read_csv_inputs(
    text: str, where: str, column_map: Mapping[str, str], timestamp_column: str | None = None
) -> list[InputMessage]:
    """Turn CSV rows into Scalar Objects (9.1): one per mapped value column, with the row's Timestamp.

    Empty cells give no message; the messages of a row follow the order of ``column_map``.
    """
    if not column_map:
        raise ReplayError(f"{where}: a CSV input needs --map COLUMN=TOPIC for each value column to feed")
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    if not columns:
        raise ReplayError(f"{where}: no header row")
    if timestamp_column is None:
        timestamp_column = next((c for c in TIMESTAMP_COLUMNS if c in columns), columns[0])
    elif timestamp_column not in columns:
        raise ReplayError(f"{where}: no timestamp column {timestamp_column!r} (columns: {', '.join(columns)})")
    missing = [column for column in column_map if column not in columns]
    if missing:
        raise ReplayError(
            f"{where}: --map names columns not in the header: {', '.join(missing)} (columns: {', '.join(columns)})"
        )
    messages = []
    for number, row in enumerate(reader, 2):
        here = f"{where}:{number}"
        stamp = row.get(timestamp_column)
        if stamp is None:
            raise ReplayError(f"{here}: row has fewer cells than the header")
        timestamp = _csv_timestamp(stamp, f"{here} {timestamp_column}")
        for column, topic in column_map.items():
            value = _csv_value(row.get(column) or "", f"{here} {column}")
            if value is None:
                continue
            obj = ScalarObject(timestamp=timestamp, value=value, valid=True)
            messages.append(InputMessage(topic, encode_json(obj.to_json())))
    return messages


def read_inputs(
    path: str | Path, column_map: Mapping[str, str] | None = None, timestamp_column: str | None = None
) -> list[InputMessage]:
    """Read an input file: .jsonl (topic + payload lines) or .csv (timestamped values mapped to topics)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{path}: cannot read it: {exc}") from None
    if path.suffix.lower() == ".csv":
        return read_csv_inputs(text, str(path), column_map or {}, timestamp_column)
    if column_map:
        raise ReplayError(f"{path}: --map applies to CSV inputs only")
    return read_jsonl_inputs(text, str(path))


def _as_inputs(inputs: str | Path | Iterable[InputMessage | Mapping[str, Any]]) -> list[InputMessage]:
    if isinstance(inputs, str | Path):
        return read_inputs(inputs)
    out = []
    for index, item in enumerate(inputs, 1):
        out.append(item if isinstance(item, InputMessage) else InputMessage.from_json(item, f"inputs[{index}]"))
    return out


def load_config(path: str | Path, iid: str | None = None) -> dict[str, Any]:
    """Read a ContainerConfig from JSON: a bare object, or the 9.5 form with ContainerName/ContainerConfig."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReplayError(f"{path}: cannot read a JSON configuration: {exc}") from None
    if not isinstance(data, dict):
        raise ReplayError(f"{path}: expected a JSON object (the ContainerConfig)")
    return container_config(data, str(path), iid)


def container_config(data: Mapping[str, Any], where: str, iid: str | None = None) -> dict[str, Any]:
    """Return the ContainerConfig of data: data itself, or its ContainerConfig in the 9.5 form."""
    if "ContainerConfig" in data:
        inner = data["ContainerConfig"]
        if not isinstance(inner, dict):
            raise ReplayError(f"{where}: ContainerConfig: expected a JSON object")
        name = data.get("ContainerName")
        if iid is not None and name is not None and name != iid:
            log.warning("%s: ContainerName %r replaced by the app's IID %r", where, name, iid)
        return dict(inner)
    return dict(data)


def config_payload(iid: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the config/response payload (8.2.1) carrying ContainerConfig for iid (9.5)."""
    return {"Configuration": {"ContainerName": iid, "ContainerConfig": dict(config)}, "Timestamp": int(time.time())}


# -- the broker hook ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerEvent:
    """One thing a client did, as the harness's broker saw it, numbered in the order handled."""

    index: int
    kind: Literal["connect", "subscribe", "publish", "disconnect"]
    client_id: str
    username: str | None
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    allowed: bool = True
    will_topic: str | None = None  # connect: the Last Will, when set
    will_payload: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    clean: bool = True  # disconnect: the client sent DISCONNECT (no will)
    time: float = 0.0  # monotonic clock, for timing rules


class BrokerLog:
    """The broker hook's record of client activity (connections, subscriptions, publishes)."""

    def __init__(self, users: Mapping[str, mp.MarketplaceUser], ignore: Iterable[str] = ()) -> None:
        self.users = dict(users)
        self.ignore = set(ignore)
        self.condition = threading.Condition()
        self.events: list[BrokerEvent] = []
        self._usernames: dict[str, str | None] = {}
        self.listeners: list[Callable[[BrokerEvent], None]] = []

    def add(
        self, kind: Literal["connect", "subscribe", "publish", "disconnect"], client_id: str, **fields: Any
    ) -> None:
        """Record an event (called on the broker's event loop) and wake waiters."""
        if client_id in self.ignore:
            return
        with self.condition:
            username = fields.pop("username", None) or self._usernames.get(client_id)
            if kind == "connect":
                self._usernames[client_id] = username
            event = BrokerEvent(len(self.events), kind, client_id, username, time=time.monotonic(), **fields)
            self.events.append(event)
            for listener in self.listeners:
                listener(event)
            self.condition.notify_all()

    def snapshot(self) -> list[BrokerEvent]:
        """Return the events so far."""
        with self.condition:
            return list(self.events)

    def wait(self, predicate: Callable[[list[BrokerEvent]], bool], timeout: float) -> bool:
        """Wait until predicate(events) holds; return False on timeout."""
        with self.condition:
            return self.condition.wait_for(lambda: predicate(self.events), timeout)

    def allowed(self, username: str | None, action: mp.AclAction, topic: str) -> bool:
        """Apply the marketplace's own ACL rule (the same function its broker plugin uses)."""
        return mp.acl_allows(self.users.get(username or ""), action, topic)


_LOGS: dict[str, BrokerLog] = {}


class BrokerLogAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt plugin recording each CONNECT (client id, username, will); decides nothing."""

    @dataclass
    class Config:
        log: str = ""

    async def authenticate(self, *, session: Session) -> bool | None:
        """Record the connection attempt; None leaves the decision to the marketplace's plugin."""
        broker_log = _LOGS.get(self.config.log)
        if broker_log is not None:
            will = session.will_topic if session.will_flag else None
            broker_log.add(
                "connect",
                session.client_id or "",
                username=session.username,
                will_topic=will,
                will_payload=bytes(session.will_message or b"") if will else b"",
                will_qos=int(session.will_qos or 0) if will else 0,
                will_retain=bool(session.will_retain) if will else False,
            )
        return None


class BrokerLogTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt plugin recording publishes with the marketplace's ACL decision, and disconnects."""

    @dataclass
    class Config:
        log: str = ""

    async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
        """Record a PUBLISH with its payload, QoS, retain flag and whether the ACL allows it."""
        broker_log = _LOGS.get(self.config.log)
        if broker_log is None or message is None:
            return
        topic = str(message.topic or "")
        username = broker_log._usernames.get(client_id)
        broker_log.add(
            "publish",
            client_id,
            topic=topic,
            payload=bytes(message.data or b""),
            qos=int(message.qos or 0),
            retain=bool(message.retain),
            allowed=broker_log.allowed(username, "publish", topic),
        )

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any = None) -> None:
        """Record the end of a connection."""
        broker_log = _LOGS.get(self.config.log)
        if broker_log is not None:
            broker_log.add("disconnect", client_id)


class _LoggedBroker(mp._EmbeddedBroker):
    """The marketplace's embedded broker with the harness's recording plugins added."""

    def __init__(
        self,
        settings: mp.MarketplaceSettings,
        paths: mp.MarketplacePaths,
        users: Iterable[mp.MarketplaceUser],
        log_key: str,
    ) -> None:
        super().__init__(settings, paths, users)
        self._log_key = log_key
        self.observer = self._observe

    def _observe(self, client_id: str, username: str | None, action: str, topic: str, allowed: bool) -> None:
        """Record each SUBSCRIBE with the marketplace's ACL decision (publishes come from the plugin)."""
        broker_log = _LOGS.get(self._log_key)
        if broker_log is not None and action == "subscribe":
            broker_log.add("subscribe", client_id, username=username, topic=topic, allowed=allowed)

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["plugins"][f"{__name__}.BrokerLogAuthPlugin"] = {"log": self._log_key}
        config["plugins"][f"{__name__}.BrokerLogTopicPlugin"] = {"log": self._log_key}
        return config


class HarnessMarketplace(mp.Marketplace):
    """An embedded Data Marketplace whose broker reports client activity to a BrokerLog."""

    def __init__(self, port: int, data_dir: Path, users: Iterable[mp.MarketplaceUser], broker_log: BrokerLog) -> None:
        settings = mp.MarketplaceSettings(mode="embedded", host="127.0.0.1", port=port)
        super().__init__(settings, data_dir, users, paths=mp.MarketplacePaths.under(data_dir, dynsec_plugin=None))
        self.broker_log = broker_log
        self._log_key = uuid.uuid4().hex

    def start(self, users: Iterable[mp.MarketplaceUser] | None = None) -> None:
        """Start the embedded broker with the recording plugins."""
        if users is not None:
            self.update_users(users)
        _LOGS[self._log_key] = self.broker_log
        broker = _LoggedBroker(self.settings, self.paths, self.users, self._log_key)
        try:
            broker.start()
        except Exception:
            _LOGS.pop(self._log_key, None)
            raise
        self._broker = broker

    def stop(self) -> None:
        """Stop the broker and forget its log key."""
        try:
            super().stop()
        finally:
            _LOGS.pop(self._log_key, None)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the harness -------------------------------------------------------------------------------


ConfigPolicy = Callable[[int], Mapping[str, Any] | None]
"""Given the number of the config/request (1, 2, ...), return the config/response payload or None."""


class Harness:
    """An embedded marketplace, a minimal Container Manager and the app under test as a process."""

    def __init__(
        self,
        target: AppTarget,
        identity: AppIdentity | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        work_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        log_level: str = "WARNING",
    ) -> None:
        self.target = target
        self.identity = identity or target.identity or AppIdentity()
        self.iid = self.identity.iid
        self.apid = self.identity.apid
        self.config: dict[str, Any] = dict(config or {})
        self.timeout = timeout
        self.log_level = log_level
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="gridhub-app-")) if work_dir is None else work_dir
        self.password = secrets.token_urlsafe(16)
        self.app_user = mp.MarketplaceUser(username=self.apid, password=self.password, iid=self.iid)
        self.manager_user = mp.MarketplaceUser.core_service(mp.MANAGER_USER)
        users = {u.username: u for u in (self.app_user, self.manager_user)}
        self.broker_log = BrokerLog(users, ignore=[MANAGER_CLIENT_ID])
        self.port = free_port()
        self.marketplace = HarnessMarketplace(self.port, self.work_dir, users.values(), self.broker_log)
        self.config_policy: ConfigPolicy = lambda number: config_payload(self.iid, self.config)
        self.config_requests = 0
        self.config_sent_at: int | None = None  # broker log index when a config/response was last sent
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_dir / "app.log"
        self._client: MarketplaceClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Harness:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the marketplace and the Container Manager's connection."""
        try:
            self.marketplace.start()
            client = MarketplaceClient(MANAGER_CLIENT_ID, self.marketplace.address_for(self.manager_user))
            client.start(timeout=self.timeout)
            client.subscribe(config_request_topic(self.iid), QOS_CONFIG, self._on_config_request)
        except MarketplaceError as exc:
            self.close()
            raise ReplayError(f"cannot start the embedded marketplace: {exc}") from exc
        self._client = client

    def close(self) -> None:
        """Stop the app (forcibly if needed), the manager connection and the marketplace."""
        self.kill()
        if self._client is not None:
            self._client.stop()
            self._client = None
        self.marketplace.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def client(self) -> MarketplaceClient:
        """The Container Manager's marketplace connection."""
        if self._client is None:
            raise ReplayError("the harness is not started")
        return self._client

    @property
    def address(self) -> BrokerAddress:
        """Where the app connects, with its credentials."""
        return self.marketplace.address_for(self.app_user)

    def environment(self) -> dict[str, str]:
        """Return the environment for the app: the LVCAP_* variables the Container Manager sets."""
        identity = self.identity
        data_dir = self.work_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "LVCAP_IID": self.iid,
                "LVCAP_APID": self.apid,
                "LVCAP_VENDOR": identity.vendor,
                "LVCAP_NAME": identity.name,
                "LVCAP_VERSION": identity.version,
                "LVCAP_INSTANCE": identity.instance,
                "LVCAP_BROKER_HOST": "127.0.0.1",
                "LVCAP_BROKER_PORT": str(self.port),
                "LVCAP_USERNAME": self.apid,
                "LVCAP_CLIENT_ID": self.apid,
                "LVCAP_PASSWORD": self.password,
                "LVCAP_DATA_DIR": str(data_dir),
                "LVCAP_LOG_LEVEL": self.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.target.pythonpath:
            extra = [*self.target.pythonpath, *filter(None, [env.get("PYTHONPATH", "")])]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(extra))
        return env

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the app's process (its output goes to log_path)."""
        if self.process is not None and self.process.poll() is None:
            raise ReplayError("the app is already running")
        with self.log_path.open("ab") as log_file:
            try:
                self.process = subprocess.Popen(
                    list(self.target.argv),
                    cwd=self.target.cwd,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ReplayError(f"cannot start {self.target.description or self.target.argv[0]}: {exc}") from None
        log.info("started %s as pid %s", self.target.description, self.process.pid)
        return self.process

    def alive(self) -> bool:
        """Tell whether the app's process is running."""
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the app's process to end; return its exit code, or None if it is still running."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        """Send a signal to the app's process group."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """End the app at once (SIGKILL to its process group) if it is running."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5.0)

    def shutdown(self, grace: float = DEFAULT_SHUTDOWN_GRACE) -> int | None:
        """Send the shut-down command (8.2.3); SIGTERM then SIGKILL if the app outlives grace."""
        if not self.alive():
            return self.wait_exit(0)
        self.send_command(int(CommandCode.SHUT_DOWN))
        code = self.wait_exit(grace)
        if code is None:
            self.signal(signal.SIGTERM)
            code = self.wait_exit(2.0)
        if code is None:
            self.kill()
        return code

    def log_tail(self, lines: int = 15) -> str:
        """Return the last lines the app wrote to stdout/stderr."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no output)"
        tail = text.splitlines()[-lines:]
        return "\n".join(tail) if tail else "(no output)"

    # -- the Container Manager role ----------------------------------------------------------

    def _on_config_request(self, message: Message) -> None:
        self.config_requests += 1
        payload = self.config_policy(self.config_requests)
        if payload is not None:
            self.config_sent_at = self.mark()
            self.client.publish(config_response_topic(self.iid), encode_json(payload), qos=QOS_CONFIG)

    def send_config(self, payload: Mapping[str, Any] | None = None) -> None:
        """Push a config/response (default: the good configuration) as the manager does."""
        body = config_payload(self.iid, self.config) if payload is None else payload
        self.config_sent_at = self.mark()
        self.client.publish(config_response_topic(self.iid), encode_json(body), qos=QOS_CONFIG, wait=True)

    def poll(self) -> None:
        """Publish a status/request (QoS 0, 8.2.2)."""
        self.client.publish(status_request_topic(), {"Timestamp": int(time.time())}, qos=QOS_STATUS_REQUEST)

    def send_command(self, command: int) -> None:
        """Publish a command (QoS 1, 8.2.3) to the app."""
        body = {"Command": command, "Timestamp": int(time.time())}
        self.client.publish(command_topic(self.iid), body, qos=QOS_COMMAND, wait=True)

    # -- observing the app -------------------------------------------------------------------

    def app_publishes(self, since: int = 0) -> list[BrokerEvent]:
        """Return the app's publishes with event index >= since."""
        return [e for e in self.broker_log.snapshot() if e.kind == "publish" and e.index >= since]

    def statuses(self, since: int = 0) -> list[tuple[BrokerEvent, int | None]]:
        """Return the app's status/response publishes since an event index, with their Status."""
        topic = status_response_topic(self.iid)
        return [(e, status_of(e.payload)) for e in self.app_publishes(since) if e.topic == topic]

    def error_reports(self, since: int = 0) -> list[BrokerEvent]:
        """Return the app's storage/data/error publishes since an event index."""
        topic = storage_error_topic(self.iid)
        return [e for e in self.app_publishes(since) if e.topic == topic]

    def mark(self) -> int:
        """Return the index the next broker event will get."""
        return len(self.broker_log.snapshot())

    def wait_status(self, since: int, accept: Callable[[int | None], bool], timeout: float) -> int | None:
        """Wait for a status/response since an index whose Status passes accept; return it or None."""
        topic = status_response_topic(self.iid)

        def found(events: list[BrokerEvent]) -> bool:
            return (
                any(
                    e.kind == "publish" and e.topic == topic and e.index >= since and accept(status_of(e.payload))
                    for e in events
                )
                or not self.alive()
            )

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.broker_log.wait(found, min(0.2, max(0.0, deadline - time.monotonic())))
            for _event, status in self.statuses(since):
                if accept(status):
                    return status if status is not None else -1
            if not self.alive():
                return None
        return None

    def wait_configured(self, timeout: float | None = None, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Wait until the app reports STATUS_MSG_OK; poll status meanwhile. Raise ReplayError on failure.

        STATUS_INITIAL counts as a refusal only after a configuration was sent (before that it
        is the right answer to a poll); STATUS_MSG_FAIL/ERR always does.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic() + poll_interval
        while True:
            for event, status in self.statuses():
                if status == STATUS_OK:
                    return
                sent = self.config_sent_at
                if status in FAILURE_STATUSES or (status == STATUS_INITIAL and sent is not None and event.index > sent):
                    errors = "; ".join(_payload_text(e.payload) for e in self.error_reports())
                    raise ReplayError(
                        f"the app refused its configuration (status {status}): {errors or 'no error report'}"
                    )
            if not self.alive():
                code = self.process.returncode if self.process is not None else None
                raise ReplayError(
                    f"the app exited (code {code}) before it was configured; its output:\n{self.log_tail()}"
                )
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_poll:
                self.poll()
                next_poll = now + poll_interval
            self._wait_new_event(min(0.1, deadline - now))
        raise ReplayError(
            f"the app was not configured within {timeout:g} s (no STATUS_MSG_OK on "
            f"{status_response_topic(self.iid)}); config requests seen: {self.config_requests}; "
            f"its output:\n{self.log_tail()}"
        )

    def _wait_new_event(self, timeout: float) -> None:
        seen = self.mark()
        self.broker_log.wait(lambda events: len(events) > seen, timeout)


def status_of(payload: bytes) -> int | None:
    """Return the integer Status of a status/response payload, or None when it has none."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    status = data.get("Status") if isinstance(data, dict) else None
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _payload_text(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace")


# -- replay ------------------------------------------------------------------------------------


class _Recorder:
    """Turns the app's publishes into RecordedMessages while a replay runs.

    Left out: config/request and every STATUS_MSG_OK status/response (start-up protocol, answers
    to the flow-control markers); everything else the app publishes is recorded, including
    status reports other than OK and error reports.
    """

    def __init__(self, iid: str) -> None:
        self.status_topic = status_response_topic(iid)
        self.request_topic = config_request_topic(iid)
        self.records: list[RecordedMessage] = []
        self.after_input = 0
        self.filters: list[str] = []  # the app's granted subscriptions so far
        self.refused: list[str] = []  # the subscriptions the ACL refused
        self.unmatched: dict[str, int] = {}  # input topic -> inputs fed while no subscription matched it
        self.answered = 0  # status/responses seen (answers to markers and polls)
        self.last_activity = time.monotonic()
        self.seq = itertools.count(1)

    def on_event(self, event: BrokerEvent) -> None:
        # Runs on the broker's event loop, under BrokerLog's lock.
        if event.kind not in ("publish", "subscribe"):
            return
        self.last_activity = time.monotonic()
        if event.kind == "subscribe":
            self._subscribed(event)
            return
        if event.topic == self.request_topic:
            return
        if event.topic == self.status_topic:
            self.answered += 1
            if status_of(event.payload) == STATUS_OK:
                return
        self.records.append(
            RecordedMessage.of(
                next(self.seq), event.topic, event.payload, event.qos, event.retain, self.after_input, not event.allowed
            )
        )

    def _subscribed(self, event: BrokerEvent) -> None:
        (self.filters if event.allowed else self.refused).append(event.topic)

    def note_input(self, topic: str) -> None:
        """Count an input about to be fed when none of the app's subscriptions matches its topic."""
        if not any(topic_matches(topic_filter, topic) for topic_filter in self.filters):
            self.unmatched[topic] = self.unmatched.get(topic, 0) + 1

    def unmatched_warning(self) -> str | None:
        """Say which input topics no subscription of the app matched, with how many inputs each."""
        if not self.unmatched:
            return None
        total = sum(self.unmatched.values())
        topics = ", ".join(f"{topic} ({count})" for topic, count in self.unmatched.items())
        text = (
            f"{total} input{'s' if total != 1 else ''} went to topics no subscription of the app matched, so it "
            f"never received {'them' if total != 1 else 'it'}: {topics}. Its subscriptions: "
            + (", ".join(dict.fromkeys(self.filters)) or "none")
        )
        refused = [f for f in dict.fromkeys(self.refused) if any(topic_matches(f, t) for t in self.unmatched)]
        if refused:
            text += f"; refused by the marketplace ACL: {', '.join(refused)}"
        return text

    def attach(self, broker_log: BrokerLog) -> None:
        """Start recording what the broker log sees (subscriptions made before count too)."""
        with broker_log.condition:
            for event in broker_log.events:
                if event.kind == "subscribe":
                    self._subscribed(event)
            broker_log.listeners.append(self.on_event)

    def detach(self, broker_log: BrokerLog) -> None:
        """Stop recording."""
        with broker_log.condition:
            if self.on_event in broker_log.listeners:
                broker_log.listeners.remove(self.on_event)


SETTLE_QUIET = 0.1
"""Seconds without a new subscription or publish from the app before the first input is sent."""


def run_replay(
    harness: Harness,
    inputs: Sequence[InputMessage],
    *,
    quiet_ms: float = 0.0,
    recorder: _Recorder | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[RecordedMessage]:
    """Feed inputs into the app of a started harness (already configured) and return its outputs.

    Before the first input the app is given time to subscribe to its inputs (an SDK app does so
    in start(), after reporting STATUS_MSG_OK): until each input topic matches one of its
    subscriptions, or it has been quiet for a while, then one marker round trip. Inputs fed on a
    topic none of the app's subscriptions matched at that moment are named in one warning, passed
    to warn (default: this module's logger).
    """
    own = recorder is None
    recorder = recorder or _Recorder(harness.iid)
    broker_log = harness.broker_log
    if own:
        recorder.attach(broker_log)
    try:
        _settle(harness, recorder, inputs)
        for index, message in enumerate(inputs, 1):
            with broker_log.condition:
                recorder.after_input = index
                recorder.note_input(message.topic)
            try:
                harness.client.publish(message.topic, message.payload, qos=1)
            except MarketplaceError as exc:
                raise ReplayError(f"input {index} ({message.topic}): {exc}") from None
            _barrier(harness, recorder, index, quiet_ms)
        # A final quiet period catches output the app publishes after its last marker answer.
        _quiet(harness, recorder, max(quiet_ms, 100.0))
    finally:
        recorder.detach(broker_log)
    with broker_log.condition:
        warning = recorder.unmatched_warning()
        records = list(recorder.records)
    if warning is not None:
        (warn or log.warning)(f"{harness.iid}: {warning}")
    return records


def _settle(harness: Harness, recorder: _Recorder, inputs: Sequence[InputMessage]) -> None:
    topics = {message.topic for message in inputs}

    def subscribed(events: list[BrokerEvent]) -> bool:
        filters = [e.topic for e in events if e.kind == "subscribe" and e.allowed]
        return all(any(topic_matches(f, topic) for f in filters) for topic in topics)

    deadline = time.monotonic() + harness.timeout
    while time.monotonic() < deadline and harness.alive():
        if harness.broker_log.wait(subscribed, SETTLE_QUIET):
            break
        with harness.broker_log.condition:
            if time.monotonic() - recorder.last_activity >= 3 * SETTLE_QUIET:
                break
    _quiet(harness, recorder, SETTLE_QUIET * 1000)
    _barrier(harness, recorder, 0, 0.0)


def _barrier(harness: Harness, recorder: _Recorder, index: int, quiet_ms: float) -> None:
    broker_log = harness.broker_log
    with broker_log.condition:
        target = recorder.answered + 1
    harness.poll()
    if not broker_log.wait(lambda _: recorder.answered >= target or not harness.alive(), harness.timeout):
        where = f"after input {index}" if index else "before the first input"
        raise ReplayError(
            f"{where} the app did not answer status/request within {harness.timeout:g} s "
            f"(the replay uses it as a flow-control marker; LV-CAP apps must answer it, 8.2.2)"
        )
    if not harness.alive():
        code = harness.process.returncode if harness.process is not None else None
        raise ReplayError(f"the app exited (code {code}) after input {index}; its output:\n{harness.log_tail()}")
    if quiet_ms > 0:
        _quiet(harness, recorder, quiet_ms)


def _quiet(harness: Harness, recorder: _Recorder, quiet_ms: float) -> None:
    quiet = quiet_ms / 1000.0
    deadline = time.monotonic() + harness.timeout
    while time.monotonic() < deadline:
        with harness.broker_log.condition:
            idle = time.monotonic() - recorder.last_activity
        if idle >= quiet:
            return
        time.sleep(min(quiet - idle, 0.05) + 0.001)


def replay(
    app: str | Path | type | Sequence[str],
    inputs: str | Path | Iterable[InputMessage | Mapping[str, Any]],
    config: Mapping[str, Any] | str | Path | None = None,
    *,
    identity: AppIdentity | None = None,
    quiet_ms: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    warn: Callable[[str], None] | None = None,
) -> list[RecordedMessage]:
    """Run app under the harness, feed inputs in order and return every message it published.

    app: a project folder, ``"package.module:Class"``, an App subclass or an argv list.
    inputs: a .jsonl/.csv file (CSV needs ``read_inputs`` with a column map) or messages.
    config: the ContainerConfig (a mapping or a JSON file). Raises ReplayError when the app
    cannot be started or configured, or stops answering. warn gets the warning naming inputs
    on topics the app had not subscribed to (default: logged).
    """
    target = resolve_target(app)
    messages = _as_inputs(inputs)
    ident = identity or target.identity or AppIdentity()
    if isinstance(config, str | Path):
        config = load_config(config, ident.iid)
    return replay_target(
        target,
        ident,
        config or {},
        messages,
        quiet_ms=quiet_ms,
        timeout=timeout,
        shutdown_grace=shutdown_grace,
        warn=warn,
    )


def replay_target(
    target: AppTarget,
    identity: AppIdentity,
    config: Mapping[str, Any],
    inputs: Sequence[InputMessage],
    *,
    quiet_ms: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    warn: Callable[[str], None] | None = None,
) -> list[RecordedMessage]:
    """Start the app under a harness, configure it, feed inputs, shut it down; return its outputs.

    Recording starts when the app is launched, so what it publishes in start() (metadata, for
    instance) is recorded too, with ``after_input`` 0.
    """
    with Harness(target, identity, config, timeout=timeout) as harness:
        recorder = _Recorder(harness.iid)
        recorder.attach(harness.broker_log)
        harness.launch()
        harness.wait_configured()
        records = run_replay(harness, inputs, quiet_ms=quiet_ms, recorder=recorder, warn=warn)
        harness.shutdown(shutdown_grace)
    return records


# -- record ------------------------------------------------------------------------------------


def parse_broker(text: str) -> tuple[str, int]:
    """Parse HOST:PORT (port 1883 when omitted)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, "1883"
    try:
        port = int(port_text)
    except ValueError:
        raise ReplayError(f"--broker {text!r}: expected HOST:PORT") from None
    if not host or not 0 < port < 65536:
        raise ReplayError(f"--broker {text!r}: expected HOST:PORT")
    return host, port


def record(
    address: BrokerAddress,
    out: TextIO,
    *,
    filters: Sequence[str] = ("#",),
    count: int | None = None,
    duration: float | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Write every message on the filters to out as JSONL until count messages or duration seconds.

    Returns how many messages were written. Runs until ``stop`` is set when neither limit is given.
    """
    for topic_filter in filters:
        try:
            validate_topic_filter(topic_filter, where="--filter")
        except LvcapError as exc:
            raise ReplayError(str(exc)) from None
    if count is not None and count < 1:
        raise ReplayError(f"--count: expected a positive number, got {count}")
    if duration is not None and not duration > 0:
        raise ReplayError(f"--duration: expected a positive number of seconds, got {duration}")
    stop = stop or threading.Event()
    lock = threading.Lock()
    written = 0
    seq = itertools.count(1)

    def on_message(message: Message) -> None:
        nonlocal written
        with lock:
            if stop.is_set():
                return
            rec = RecordedMessage.of(next(seq), message.topic, message.payload, message.qos, message.retain)
            write_jsonl([rec], out)
            out.flush()
            written += 1
            if count is not None and written >= count:
                stop.set()

    try:
        client = MarketplaceClient(f"gridhub-record-{secrets.token_hex(4)}", address)
    except (OSError, ValueError) as exc:  # TLS files missing or unreadable
        raise ReplayError(f"cannot record from {address.host}:{address.port}: {exc}") from None
    try:
        client.start()
        for topic_filter in filters:
            client.subscribe(topic_filter, 1, on_message)
    except (MarketplaceError, OSError) as exc:
        client.stop()
        raise ReplayError(f"cannot record from {address.host}:{address.port}: {exc}") from None
    try:
        if on_ready is not None:
            on_ready()
        stop.wait(duration)
    finally:
        stop.set()
        client.stop()
    return written


__all__ = [
    "AppIdentity",
    "AppTarget",
    "BrokerEvent",
    "BrokerLog",
    "Harness",
    "InputMessage",
    "RecordedMessage",
    "ReplayError",
    "load_config",
    "parse_column_map",
    "read_inputs",
    "record",
    "replay",
    "replay_target",
    "resolve_target",
    "run_replay",
]
