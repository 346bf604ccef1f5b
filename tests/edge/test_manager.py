"""The Container Manager: its state machine (pure) and real app processes on a real broker."""

from __future__ import annotations

import json
import os
import queue
import secrets
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridhub.edge.manager import (
    Action,
    ActionKind,
    AppEntry,
    AppRecord,
    AppState,
    ContainerManager,
    Event,
    EventKind,
    ManagerSettings,
    app_data_dir,
    app_log_path,
    read_status,
    transition,
)
from gridhub.edge.settings import ConfigError
from gridhub.formats.lvcap import AppId, InstanceId
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient, Message
from tests.conftest import wait_for

SETTINGS = ManagerSettings(
    status_interval=10.0,
    shutdown_grace=30.0,
    restart_backoff=1.0,
    restart_backoff_max=8.0,
    crash_loop_restarts=4,
    crash_loop_window=100.0,
)

SPAWN = Action(ActionKind.SPAWN)
SEND_CONFIG = Action(ActionKind.SEND_CONFIG)
SEND_SHUTDOWN = Action(ActionKind.SEND_SHUTDOWN)
TERMINATE = Action(ActionKind.TERMINATE)


class Machine:
    """One app's record driven through transition() with an explicit clock."""

    def __init__(self, *, attached: bool = False, settings: ManagerSettings = SETTINGS) -> None:
        self.record = AppRecord(iid="acme_thermal_01", attached=attached)
        self.settings = settings
        self.now = 1000.0

    def send(self, kind: EventKind, code: int | None = None, message: str | None = None) -> list[Action]:
        return transition(self.record, Event(kind, code=code, message=message), self.now, self.settings)

    def status(self, code: int | None, message: str | None = None) -> list[Action]:
        return self.send(EventKind.STATUS, code, message)

    def poll(self) -> list[Action]:
        return self.send(EventKind.POLL)

    def tick(self, seconds: float = 0.0) -> list[Action]:
        self.now += seconds
        return self.send(EventKind.TICK)

    def running(self) -> None:
        """Start the app and bring it to running."""
        assert self.send(EventKind.START) == ([] if self.record.attached else [SPAWN])
        assert self.send(EventKind.CONFIG_REQUEST) == [SEND_CONFIG]
        assert self.status(1) == []
        assert self.record.state is AppState.RUNNING

    def unanswered_polls(self, count: int) -> list[Action]:
        """Let `count` status requests go unanswered; return the actions of the last one judged."""
        actions: list[Action] = []
        self.poll()  # the request that will go unanswered
        for _ in range(count):
            actions = self.poll()
        return actions


# -- start-up (5.2) -----------------------------------------------------------------------------


def test_start_spawns_and_configuration_request_moves_to_waiting_config() -> None:
    m = Machine()
    assert m.send(EventKind.START) == [SPAWN]
    assert m.record.state is AppState.STARTING
    assert m.send(EventKind.CONFIG_REQUEST) == [SEND_CONFIG]
    assert m.record.state is AppState.WAITING_CONFIG
    assert m.status(1) == []
    assert m.record.state is AppState.RUNNING
    assert m.record.last_status == 1


def test_attached_app_is_not_spawned_but_configured() -> None:
    m = Machine(attached=True)
    assert m.send(EventKind.START) == []
    assert m.record.state is AppState.STARTING
    assert m.send(EventKind.CONFIG_REQUEST) == [SEND_CONFIG]
    assert m.record.state is AppState.WAITING_CONFIG


# -- every status code (Table 7) ------------------------------------------------------------------


def test_status_initial_resends_the_configuration_and_is_no_failure() -> None:
    m = Machine()
    m.running()
    m.record.consecutive_failures = 2
    assert m.status(5) == [SEND_CONFIG]
    assert m.record.state is AppState.WAITING_CONFIG
    assert m.record.consecutive_failures == 0


@pytest.mark.parametrize("code", [2, 3, 7, 99])
def test_failure_status_restarts_at_once_and_stores_the_message(code: int) -> None:
    m = Machine()
    m.running()
    actions = m.status(code, "sensor bus gone")
    assert actions == [Action(ActionKind.RECORD_ERROR, "sensor bus gone"), TERMINATE]
    assert m.record.state is AppState.RESTARTING
    assert m.record.consecutive_failures == 1
    assert m.record.restarts == 1
    assert "sensor bus gone" in (m.record.last_error or "")
    # Once the process is gone it waits its back-off, then is spawned again.
    assert m.send(EventKind.PROCESS_EXITED, 0) == []
    assert m.record.state is AppState.BACKOFF
    assert m.tick(0.5) == []
    assert m.tick(0.5) == [SPAWN]
    assert m.record.state is AppState.STARTING


def test_failure_status_without_message_stores_nothing_but_restarts() -> None:
    m = Machine()
    m.running()
    assert m.status(2) == [TERMINATE]


def test_status_shut_dwn_stops_until_the_configuration_changes() -> None:
    m = Machine()
    m.running()
    assert m.status(4) == [TERMINATE]
    assert m.record.state is AppState.STOPPING
    assert m.send(EventKind.PROCESS_EXITED, 0) == []
    assert m.record.state is AppState.SHUT_DOWN
    # Not restarted by time passing, polls or a new start request...
    assert m.tick(10_000) == []
    assert m.poll() == [] and m.poll() == []
    assert m.send(EventKind.START) == []
    assert m.record.state is AppState.SHUT_DOWN
    # ...only by a changed configuration.
    assert m.send(EventKind.CONFIG_CHANGED) == [SPAWN]
    assert m.record.state is AppState.STARTING


def test_status_restart_restarts_at_once_without_counting_a_failure() -> None:
    m = Machine()
    m.running()
    assert m.status(6, "new calibration saved") == [Action(ActionKind.RECORD_ERROR, "new calibration saved"), TERMINATE]
    assert m.record.state is AppState.RESTARTING
    assert m.send(EventKind.PROCESS_EXITED, 0) == [SPAWN]
    assert m.record.state is AppState.STARTING
    assert m.record.restarts == 1
    assert m.record.consecutive_failures == 0


def test_invalid_status_response_fails_the_poll_without_restarting() -> None:
    m = Machine()
    m.running()
    assert m.status(None, "Status: expected an Integer") == []
    assert m.record.consecutive_failures == 1
    assert m.record.state is AppState.RUNNING


# -- status polling (8.2.2) ----------------------------------------------------------------------


def test_three_unanswered_polls_restart_and_five_stop_for_good_with_stored_error() -> None:
    m = Machine()
    m.running()
    assert m.unanswered_polls(2) == []
    assert m.record.consecutive_failures == 2
    assert m.poll() == [TERMINATE]  # third failure
    assert m.record.state is AppState.RESTARTING
    assert m.send(EventKind.PROCESS_EXITED, -15) == []
    assert m.record.state is AppState.BACKOFF
    assert m.tick(SETTINGS.restart_backoff) == [SPAWN]
    # The restarted app still does not answer: failures 4 and 5.
    assert m.unanswered_polls(1) == []
    assert m.record.consecutive_failures == 4
    actions = m.poll()
    assert m.record.consecutive_failures == 5
    assert [a.kind for a in actions] == [ActionKind.RECORD_ERROR, ActionKind.SEND_SHUTDOWN, ActionKind.TERMINATE]
    assert "5 consecutive failures" in actions[0].message
    assert m.record.state is AppState.STOPPING
    assert m.send(EventKind.PROCESS_EXITED, 0) == []
    assert m.record.state is AppState.FAILED_PERMANENTLY
    assert m.tick(10_000) == [] and m.poll() == []
    assert m.record.state is AppState.FAILED_PERMANENTLY


def test_an_answer_resets_the_failure_count() -> None:
    m = Machine()
    m.running()
    m.unanswered_polls(2)
    m.status(1)
    assert m.record.consecutive_failures == 0
    assert m.unanswered_polls(2) == []
    assert m.record.state is AppState.RUNNING


def test_a_poll_answered_in_time_is_no_failure() -> None:
    m = Machine()
    m.running()
    for _ in range(6):
        assert m.poll() == []
        m.status(1)
    assert m.record.consecutive_failures == 0


def test_first_poll_after_spawn_counts_from_the_next_request() -> None:
    m = Machine()
    m.send(EventKind.START)
    assert m.poll() == []  # nothing was asked before this request
    assert m.record.consecutive_failures == 0


# -- failures detected without a poll ------------------------------------------------------------


def test_process_exiting_by_itself_is_a_failure_with_back_off() -> None:
    m = Machine()
    m.running()
    assert m.send(EventKind.PROCESS_EXITED, 1) == []
    assert m.record.state is AppState.BACKOFF
    assert m.record.consecutive_failures == 1
    assert "exited by itself with code 1" in (m.record.last_error or "")


def test_will_with_failure_status_restarts_and_is_counted_once() -> None:
    m = Machine()
    m.running()
    assert m.status(2) == [TERMINATE]  # the LWT
    assert m.send(EventKind.PROCESS_EXITED, -15) == []
    assert m.status(2) == []  # a second will while it is down changes nothing
    assert m.record.consecutive_failures == 1


def test_failure_status_before_the_configuration_request_is_a_stale_will() -> None:
    m = Machine()
    m.send(EventKind.START)
    assert m.status(2) == []
    assert m.record.state is AppState.STARTING
    assert m.record.consecutive_failures == 0


def test_crash_on_start_is_stopped_for_good_after_five_failures() -> None:
    m = Machine()
    m.send(EventKind.START)
    for _ in range(4):
        assert m.send(EventKind.PROCESS_EXITED, 1) == []
        assert m.record.state in (AppState.BACKOFF, AppState.CRASH_LOOPING)
        assert m.tick(SETTINGS.restart_backoff_max) == [SPAWN]
    actions = m.send(EventKind.PROCESS_EXITED, 1)
    assert [a.kind for a in actions] == [ActionKind.RECORD_ERROR]
    assert m.record.state is AppState.FAILED_PERMANENTLY


# -- back-off and crash loops ---------------------------------------------------------------------


def crash_after_running(m: Machine) -> float:
    """Run, crash, and return the back-off delay chosen."""
    m.send(EventKind.CONFIG_REQUEST)
    m.status(1)
    m.send(EventKind.PROCESS_EXITED, 1)
    assert m.record.next_start_at is not None
    delay = m.record.next_start_at - m.now
    assert m.tick(delay) == [SPAWN]
    return delay


def test_restarts_back_off_exponentially_then_crash_loop_at_the_cap() -> None:
    m = Machine()
    m.send(EventKind.START)
    delays = []
    states = []
    for _ in range(6):
        m.send(EventKind.CONFIG_REQUEST)
        m.status(1)
        m.send(EventKind.PROCESS_EXITED, 1)
        states.append(m.record.state)
        assert m.record.next_start_at is not None
        delay = m.record.next_start_at - m.now
        delays.append(delay)
        assert m.tick(delay - 0.01) == []
        assert m.tick(0.01) == [SPAWN]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert states[:3] == [AppState.BACKOFF] * 3
    assert states[3:] == [AppState.CRASH_LOOPING] * 3  # crash_loop_restarts = 4
    assert m.record.restarts == 6
    assert m.record.consecutive_failures == 1  # each crash followed a good status: never failed for good


def test_streak_resets_after_a_quiet_window() -> None:
    m = Machine()
    m.send(EventKind.START)
    assert crash_after_running(m) == 1.0
    assert crash_after_running(m) == 2.0
    m.send(EventKind.CONFIG_REQUEST)
    m.status(1)
    m.now += SETTINGS.crash_loop_window + 1
    assert crash_after_running(m) == 1.0


# -- shutdown (section 6) --------------------------------------------------------------------------


def test_shutdown_sends_the_command_and_terminates_on_shut_dwn() -> None:
    m = Machine()
    m.running()
    assert m.send(EventKind.STOP) == [SEND_SHUTDOWN]
    assert m.record.state is AppState.STOPPING
    assert m.status(4) == [TERMINATE]
    assert m.send(EventKind.PROCESS_EXITED, 0) == []
    assert m.record.state is AppState.STOPPED


def test_shutdown_terminates_after_the_grace_period_without_shut_dwn() -> None:
    m = Machine()
    m.running()
    m.send(EventKind.STOP)
    assert m.tick(SETTINGS.shutdown_grace - 1) == []
    assert m.poll() == []  # not polled while stopping
    assert m.tick(1) == [TERMINATE]
    m.send(EventKind.PROCESS_EXITED, -15)
    assert m.record.state is AppState.STOPPED


def test_shutdown_during_back_off_cancels_the_restart() -> None:
    m = Machine()
    m.running()
    m.send(EventKind.PROCESS_EXITED, 1)
    assert m.send(EventKind.STOP) == []
    assert m.record.state is AppState.STOPPED
    assert m.tick(100) == []


def test_shutdown_while_restarting_does_not_respawn() -> None:
    m = Machine()
    m.running()
    m.status(6)
    assert m.send(EventKind.STOP) == []
    assert m.send(EventKind.PROCESS_EXITED, 0) == []
    assert m.record.state is AppState.STOPPED


# -- attached apps -------------------------------------------------------------------------------


def test_attached_app_restart_asks_it_to_shut_down_and_waits_for_its_developer() -> None:
    m = Machine(attached=True)
    m.running()
    assert m.unanswered_polls(3) == [SEND_SHUTDOWN]
    assert m.record.state is AppState.RESTARTING
    assert m.record.restarts == 1
    assert m.poll() == []  # the 4th failure: counted, no action yet
    assert m.send(EventKind.CONFIG_REQUEST) == [SEND_CONFIG]  # the developer started it again
    assert m.record.state is AppState.WAITING_CONFIG
    assert m.poll() == []  # a request sent while it was down is not held against it
    assert m.status(1) == []
    assert m.record.state is AppState.RUNNING and m.record.consecutive_failures == 0


def test_attached_app_that_ignores_the_shutdown_command_fails_permanently_at_five() -> None:
    """8.2.2: an attached app that answers neither the polls nor the shutdown command is not left restarting."""
    m = Machine(attached=True)
    m.running()
    assert m.unanswered_polls(3) == [SEND_SHUTDOWN]
    assert m.record.state is AppState.RESTARTING
    assert m.poll() == []
    assert m.record.consecutive_failures == 4
    actions = m.poll()
    assert [a.kind for a in actions] == [ActionKind.RECORD_ERROR, ActionKind.SEND_SHUTDOWN]
    assert "stopped permanently after 5 consecutive failures" in actions[0].message
    assert m.record.state is AppState.FAILED_PERMANENTLY
    assert m.poll() == []  # no further counting once stopped for good
    assert m.record.consecutive_failures == 5


def test_attached_app_status_shut_dwn_while_restarting_marks_it_shut_down() -> None:
    m = Machine(attached=True)
    m.running()
    assert m.unanswered_polls(3) == [SEND_SHUTDOWN]
    assert m.status(4) == []  # it obeyed the shutdown command
    assert m.record.state is AppState.SHUT_DOWN
    assert m.poll() == [] and m.poll() == []  # down: polls are not failures
    assert m.record.consecutive_failures == 3
    assert m.send(EventKind.CONFIG_REQUEST) == [SEND_CONFIG]  # its developer started it again
    assert m.record.state is AppState.WAITING_CONFIG


def test_attached_app_shut_dwn_message_while_restarting_is_stored() -> None:
    m = Machine(attached=True)
    m.running()
    m.unanswered_polls(3)
    assert m.status(4, "bye") == [Action(ActionKind.RECORD_ERROR, "bye")]
    assert m.record.state is AppState.SHUT_DOWN


def test_spawned_app_restarting_ignores_status_and_is_not_polled() -> None:
    """A spawned app being terminated for a restart: its last words change nothing, polls count nothing."""
    m = Machine()
    m.running()
    assert m.unanswered_polls(3) == [TERMINATE]
    assert m.record.state is AppState.RESTARTING
    assert m.status(4) == []
    assert m.poll() == [] and m.poll() == []
    assert m.record.state is AppState.RESTARTING and m.record.consecutive_failures == 3


def test_attached_app_fails_permanently_after_five() -> None:
    m = Machine(attached=True)
    m.running()
    m.unanswered_polls(3)
    m.send(EventKind.CONFIG_REQUEST)
    m.unanswered_polls(1)
    actions = m.poll()
    assert [a.kind for a in actions] == [ActionKind.RECORD_ERROR, ActionKind.SEND_SHUTDOWN]
    assert m.record.state is AppState.FAILED_PERMANENTLY


def test_attached_app_shutdown_ends_at_shut_dwn_or_grace() -> None:
    m = Machine(attached=True)
    m.running()
    assert m.send(EventKind.STOP) == [SEND_SHUTDOWN]
    assert m.status(4) == []
    assert m.record.state is AppState.STOPPED
    other = Machine(attached=True)
    other.running()
    other.send(EventKind.STOP)
    assert other.tick(SETTINGS.shutdown_grace) == []
    assert other.record.state is AppState.STOPPED


def test_attached_app_status_shut_dwn_marks_it_shut_down() -> None:
    m = Machine(attached=True)
    m.running()
    assert m.status(4) == []
    assert m.record.state is AppState.SHUT_DOWN


def test_configuration_change_is_pushed_to_an_active_app() -> None:
    m = Machine()
    m.running()
    assert m.send(EventKind.CONFIG_CHANGED) == [SEND_CONFIG]
    assert m.record.state is AppState.RUNNING


# -- settings and entries -------------------------------------------------------------------------


def test_manager_settings_defaults_and_errors() -> None:
    assert ManagerSettings.from_mapping({}, where="[manager]", base_dir=Path()) == ManagerSettings()
    with pytest.raises(ConfigError, match=r"\[manager\] status_interval"):
        ManagerSettings.from_mapping({"status_interval": "fast"}, where="[manager]", base_dir=Path())
    with pytest.raises(ConfigError, match=r"\[manager\] restart_backoff_max"):
        ManagerSettings.from_mapping(
            {"restart_backoff": 10, "restart_backoff_max": 5}, where="[manager]", base_dir=Path()
        )
    with pytest.raises(ConfigError, match=r"\[manager\] crash_loop_restarts"):
        ManagerSettings.from_mapping({"crash_loop_restarts": 0}, where="[manager]", base_dir=Path())
    with pytest.raises(ConfigError, match="poll_interval"):
        ManagerSettings.from_mapping({"poll_interval": 1}, where="[manager]", base_dir=Path())


def test_app_entry_configuration_follows_section_9_5() -> None:
    entry = AppEntry.from_mapping(
        {
            "vendor": "acme",
            "name": "thermal",
            "version": "1.0.0",
            "instance": "01",
            "command": ["x"],
            "config": {"a": 1},
        },
        where="[[app]] #1",
        base_dir=Path("/srv"),
    )
    assert entry.iid == "acme_thermal_01"
    assert entry.apid == "acme_thermal_1.0.0"
    assert entry.configuration() == {"ContainerName": "acme_thermal_01", "ContainerConfig": {"a": 1}}
    assert entry.workdir == Path("/srv")


# -- real processes on a real broker ----------------------------------------------------------------

APP_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys, threading, time
    import paho.mqtt.client as mqtt

    mode = sys.argv[1]
    iid = os.environ["LVCAP_IID"]
    data = os.environ["LVCAP_DATA_DIR"]
    events = open(os.path.join(data, "events.jsonl"), "a")

    def note(kind, payload=None):
        events.write(json.dumps({"kind": kind, "pid": os.getpid(), "payload": payload}) + "\\n")
        events.flush()

    note("start", {k: v for k, v in os.environ.items() if k.startswith("LVCAP_")})
    print("app", iid, "started in", mode, "mode", flush=True)
    if mode == "crash":
        sys.exit(3)
    marker = os.path.join(data, "second-run")
    second = os.path.exists(marker)
    open(marker, "w").close()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=os.environ["LVCAP_APID"])
    client.username_pw_set(os.environ["LVCAP_USERNAME"], os.environ.get("LVCAP_PASSWORD") or None)
    client.will_set("status/response/" + iid, json.dumps({"Status": 2, "Message": "connection lost"}), qos=1)

    def status(code, message=None):
        body = {"Status": code, "Timestamp": int(time.time())}
        if message:
            body["Message"] = message
        client.publish("status/response/" + iid, json.dumps(body), qos=1)

    def vanish():
        # Drop the connection without DISCONNECT (the broker publishes the will), stay alive.
        client._sock.shutdown(socket.SHUT_RDWR)
        client.disconnect()

    def on_connect(client, userdata, flags, reason, properties):
        client.subscribe([("status/request", 0), ("config/response/" + iid, 1), ("command/" + iid, 1)])

    def on_subscribe(client, userdata, mid, codes, properties):
        client.publish("config/request/" + iid, json.dumps({"Timestamp": int(time.time())}), qos=1)

    def on_message(client, userdata, msg):
        payload = json.loads(msg.payload)
        note(msg.topic, payload)
        if msg.topic.startswith("config/response/"):
            if mode == "shutdown":
                status(4, "done for today")
            elif mode == "restart-once" and not second:
                status(6)
            elif mode == "lwt-once" and not second:
                status(1)
                threading.Timer(0.3, vanish).start()
            elif mode != "silent":
                status(1)
                if mode == "crash-after-ok":
                    threading.Timer(0.2, os._exit, (1,)).start()
        elif msg.topic == "status/request" and mode != "silent":
            status(1)
        elif msg.topic.startswith("command/") and payload.get("Command") == 1:
            status(4)
            client.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(os.environ["LVCAP_BROKER_HOST"], int(os.environ["LVCAP_BROKER_PORT"]))
    client.loop_forever()
    note("exit")
    if mode == "lwt-once":
        time.sleep(60)
    """
)

FAST = ManagerSettings(
    status_interval=0.25,
    shutdown_grace=3.0,
    restart_backoff=0.1,
    restart_backoff_max=0.4,
    crash_loop_restarts=3,
    crash_loop_window=30.0,
)


def unique_name() -> str:
    return "t" + secrets.token_hex(5)


class Harness:
    """A ContainerManager on the shared broker with plain-paho apps written to tmp_path."""

    def __init__(self, tmp_path: Path, broker: tuple[str, int], settings: ManagerSettings) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "edge"
        self.address = BrokerAddress(host=broker[0], port=broker[1])
        self.script = tmp_path / "app.py"
        self.script.write_text(APP_SCRIPT)
        self.client = MarketplaceClient(f"gridhub-manager-{unique_name()}", self.address)
        self.client.start()
        self.manager = ContainerManager(settings, self.data_dir, broker_for=lambda entry: self.address)
        self.manager.start(self.client)
        self.watchers: list[MarketplaceClient] = []

    def entry(self, mode: str, config: dict[str, Any] | None = None) -> AppEntry:
        name = unique_name()
        return AppEntry(
            app_id=AppId("test", name, "1.0"),
            instance_id=InstanceId("test", name, "01"),
            command=(sys.executable, str(self.script), mode),
            config=config or {"mode": mode},
            workdir=self.tmp_path,
        )

    def watch(self, topic: str) -> queue.Queue[Message]:
        inbox: queue.Queue[Message] = queue.Queue()
        watcher = MarketplaceClient(f"watch-{unique_name()}", self.address)
        watcher.start()
        watcher.subscribe(topic, 1, inbox.put)
        self.watchers.append(watcher)
        return inbox

    def app(self, iid: str) -> dict[str, Any]:
        snapshot = read_status(self.data_dir)
        row: dict[str, Any] = snapshot["apps"][iid]
        return row

    def state(self, iid: str) -> str:
        try:
            return str(self.app(iid)["state"])
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return ""

    def events(self, iid: str) -> list[dict[str, Any]]:
        path = app_data_dir(self.data_dir, iid) / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        self.manager.shutdown_apps(timeout=10)
        self.manager.stop()
        self.client.stop()
        for watcher in self.watchers:
            watcher.stop()


@pytest.fixture
def harness(tmp_path: Path, external_mosquitto: tuple[str, int]) -> Iterator[Harness]:
    h = Harness(tmp_path, external_mosquitto, FAST)
    yield h
    h.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.serial
def test_app_is_spawned_configured_polled_and_shut_down(harness: Harness) -> None:
    entry = harness.entry("ok", {"input": "sensor/data/x", "interval": 5})
    harness.manager.start_apps([entry])
    wait_for(lambda: harness.state(entry.iid) == "running", "running")
    events = harness.events(entry.iid)
    env = events[0]["payload"]
    assert env["LVCAP_IID"] == entry.iid and env["LVCAP_APID"] == entry.apid
    assert env["LVCAP_USERNAME"] == entry.apid and env["LVCAP_INSTANCE"] == "01"
    assert env["LVCAP_DATA_DIR"] == str(app_data_dir(harness.data_dir, entry.iid))
    # (On the shared broker another test's manager may answer "no configuration" too: skip those.)
    config = next(
        e["payload"] for e in events if e["kind"] == f"config/response/{entry.iid}" and e["payload"]["Configuration"]
    )
    assert config["Configuration"] == {
        "ContainerName": entry.iid,
        "ContainerConfig": {"input": "sensor/data/x", "interval": 5},
    }
    assert isinstance(config["Timestamp"], int)
    wait_for(lambda: sum(e["kind"] == "status/request" for e in harness.events(entry.iid)) >= 2, "two polls")
    assert harness.app(entry.iid)["consecutive_failures"] == 0
    assert "started in ok mode" in app_log_path(harness.data_dir, entry.iid).read_text()
    pid = harness.app(entry.iid)["pid"]

    assert harness.manager.shutdown_apps(timeout=8)
    assert any(e["payload"] and e["payload"].get("Command") == 1 for e in harness.events(entry.iid))
    assert harness.state(entry.iid) == "stopped"
    assert not pid_alive(pid)


@pytest.mark.serial
def test_app_that_never_answers_is_restarted_then_stopped_for_good(harness: Harness) -> None:
    entry = harness.entry("silent")
    errors = harness.watch(f"storage/data/error/{entry.iid}")
    harness.manager.start_apps([entry])
    wait_for(lambda: harness.state(entry.iid) == "failed-permanently", "failed-permanently")
    row = harness.app(entry.iid)
    assert row["restarts"] == 1
    assert row["consecutive_failures"] == 5
    assert "5 consecutive failures" in row["last_error"]
    assert len({e["pid"] for e in harness.events(entry.iid) if e["kind"] == "start"}) == 2
    report = json.loads(errors.get(timeout=5).payload)
    assert report["Errno"] == 8 and "5 consecutive failures" in report["Message"]
    assert row["pid"] is None


@pytest.mark.serial
def test_app_sending_shut_dwn_stays_stopped(harness: Harness) -> None:
    entry = harness.entry("shutdown")
    requests = harness.watch("status/request")
    harness.manager.start_apps([entry])
    wait_for(lambda: harness.state(entry.iid) == "shut-down", "shut-down")
    for _ in range(3):  # several more polls pass...
        requests.get(timeout=5)
    assert harness.state(entry.iid) == "shut-down"  # ...and it is not started again
    assert sum(e["kind"] == "start" for e in harness.events(entry.iid)) == 1
    assert "done for today" in harness.app(entry.iid)["last_error"]


@pytest.mark.serial
def test_app_sending_restart_is_restarted_at_once(harness: Harness) -> None:
    entry = harness.entry("restart-once")
    harness.manager.start_apps([entry])
    wait_for(lambda: sum(e["kind"] == "start" for e in harness.events(entry.iid)) == 2, "second start")
    wait_for(lambda: harness.state(entry.iid) == "running", "running")
    row = harness.app(entry.iid)
    assert row["restarts"] == 1 and row["consecutive_failures"] == 0
    first = harness.events(entry.iid)[0]["pid"]
    assert not pid_alive(first)


@pytest.mark.serial
def test_will_of_a_vanished_app_restarts_it(harness: Harness) -> None:
    entry = harness.entry("lwt-once")
    harness.manager.start_apps([entry])
    wait_for(lambda: sum(e["kind"] == "start" for e in harness.events(entry.iid)) == 2, "second start")
    wait_for(lambda: harness.state(entry.iid) == "running", "running")
    starts = [e["pid"] for e in harness.events(entry.iid) if e["kind"] == "start"]
    assert not pid_alive(starts[0])  # the process that lost its connection was terminated
    assert harness.app(entry.iid)["restarts"] == 1


@pytest.mark.serial
def test_app_crashing_on_start_is_stopped_for_good(harness: Harness) -> None:
    entry = harness.entry("crash")
    harness.manager.start_apps([entry])
    wait_for(lambda: harness.state(entry.iid) == "failed-permanently", "failed-permanently")
    row = harness.app(entry.iid)
    assert row["restarts"] == 4
    assert "exited by itself with code 3" in row["last_error"]
    assert sum(e["kind"] == "start" for e in harness.events(entry.iid)) == 5


@pytest.mark.serial
def test_app_crashing_after_start_is_shown_crash_looping(harness: Harness) -> None:
    entry = harness.entry("crash-after-ok")
    harness.manager.start_apps([entry])
    wait_for(lambda: harness.state(entry.iid) == "crash-looping", "crash-looping")
    assert harness.app(entry.iid)["restarts"] >= FAST.crash_loop_restarts
    # Still retried: it starts again after the capped back-off.
    starts = sum(e["kind"] == "start" for e in harness.events(entry.iid))
    wait_for(lambda: sum(e["kind"] == "start" for e in harness.events(entry.iid)) > starts, "another start")


@pytest.mark.serial
def test_changed_configuration_is_pushed_and_removed_app_stopped(harness: Harness) -> None:
    entry = harness.entry("ok", {"threshold": 1})
    harness.manager.start_apps([entry])
    wait_for(lambda: harness.state(entry.iid) == "running", "running")
    changed = AppEntry(
        app_id=entry.app_id,
        instance_id=entry.instance_id,
        command=entry.command,
        config={"threshold": 2},
        workdir=entry.workdir,
    )
    harness.manager.update_apps([changed])

    def configs() -> list[Any]:
        kind = f"config/response/{entry.iid}"
        return [
            e["payload"]["Configuration"]["ContainerConfig"]
            for e in harness.events(entry.iid)
            if e["kind"] == kind and e["payload"]["Configuration"]
        ]

    wait_for(lambda: configs()[-1] == {"threshold": 2}, "pushed configuration")
    assert sum(e["kind"] == "start" for e in harness.events(entry.iid)) == 1  # pushed, not restarted
    harness.manager.update_apps([])
    wait_for(lambda: entry.iid not in read_status(harness.data_dir)["apps"], "removal")
    assert any(e["payload"] and e["payload"].get("Command") == 1 for e in harness.events(entry.iid))


@pytest.mark.serial
def test_configuration_request_from_unknown_app_gets_an_error(harness: Harness) -> None:
    iid = f"test_{unique_name()}_07"
    responses = harness.watch(f"config/response/{iid}")
    harness.client.publish(f"config/request/{iid}", {"Timestamp": int(time.time())}, qos=1)
    response = json.loads(responses.get(timeout=5).payload)
    assert response["Configuration"] is None
    assert iid in response["Message"]
