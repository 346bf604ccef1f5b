"""sdk.App against a real broker (the Mosquitto on 127.0.0.1:1883), with this file playing the
Container Manager (and, for one test, the Data Storage Application) through plain paho-mqtt.

LV-CAP topic names have no prefix, so these tests are serial; each test uses its own IID.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.sdk import (
    App,
    BrokerAddress,
    ConfigurationError,
    CoordinateObject,
    Errno,
    Input,
    MetadataObject,
    QueryStatus,
    ScalarObject,
    SeriesObject,
    StatusCode,
    StorageQuery,
)
from tests.conftest import free_port, port_open

pytestmark = pytest.mark.serial

WAIT = 10.0
SRC_DIR = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Peer:
    """A plain paho-mqtt client that records everything it receives, per topic, in order."""

    def __init__(self, host: str, port: int, client_id: str | None = None) -> None:
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"peer-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv311,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._cond = threading.Condition()
        self._inbox: list[Received] = []
        self._subacks: set[int] = set()
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self._inbox.append(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, codes: object, props: object) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def subscribe(self, topic: str, qos: int = 2) -> None:
        with self._cond:
            _, mid = self._client.subscribe(topic, qos)
            assert self._cond.wait_for(lambda: mid in self._subacks, WAIT), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | dict[str, Any], qos: int = 1, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._client.publish(topic, body, qos=qos, retain=retain).wait_for_publish(WAIT)

    def next(self, topic: str, where: Callable[[Received], bool] = lambda r: True) -> Received:
        """Remove and return the first message received on topic that satisfies where."""

        def find() -> Received | None:
            for item in self._inbox:
                if item.topic == topic and where(item):
                    return item
            return None

        with self._cond:
            assert self._cond.wait_for(lambda: find() is not None, WAIT), f"nothing on {topic}: {self._inbox}"
            item = find()
            assert item is not None
            self._inbox.remove(item)
            return item

    def pending(self, topic: str) -> list[Received]:
        """Messages received on topic and not yet taken by next()."""
        with self._cond:
            return [item for item in self._inbox if item.topic == topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Manager(Peer):
    """The Container Manager side of sections 5.2, 6 and 8.2, for one app instance."""

    def __init__(self, host: str, port: int, iid: str) -> None:
        super().__init__(host, port)
        self.iid = iid
        self.subscribe(f"config/request/{iid}", 1)
        self.subscribe(f"status/response/{iid}", 1)
        self.subscribe(f"storage/data/error/{iid}", 1)

    def send_config(self, container_config: dict[str, Any], container_name: str | None = None) -> None:
        configuration = {"ContainerName": container_name or self.iid, "ContainerConfig": container_config}
        self.publish(f"config/response/{self.iid}", {"Configuration": configuration, "Timestamp": int(time.time())})

    def status(self, code: int | None = None, containing: str = "") -> dict[str, Any]:
        """Next status/response (with that Status and a Message containing that text, when given)."""

        def wanted(r: Received) -> bool:
            body = r.json()
            return (code is None or body.get("Status") == code) and containing in body.get("Message", "")

        item = self.next(f"status/response/{self.iid}", wanted)
        assert item.qos == 1 and not item.retain
        body: dict[str, Any] = item.json()
        return body

    def poll(self) -> dict[str, Any]:
        """Send status/request (QoS 0) and return the app's answer."""
        with self._cond:
            self._inbox = [r for r in self._inbox if r.topic != f"status/response/{self.iid}"]
        self.publish("status/request", {"Timestamp": int(time.time())}, qos=0)
        return self.status()

    def error(self, errno: int, containing: str = "") -> dict[str, Any]:
        """Next error report with that Errno (and a Message containing that text)."""

        def wanted(r: Received) -> bool:
            body = r.json()
            return bool(body.get("Errno") == errno and containing in (body.get("Message") or ""))

        body: dict[str, Any] = self.next(f"storage/data/error/{self.iid}", wanted).json()
        return body

    def command(self, value: int) -> None:
        self.publish(f"command/{self.iid}", {"Command": value, "Timestamp": int(time.time())})


class RecordingApp(App):
    """An app that records its hooks and can be told to refuse a configuration or feel unwell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configured: list[dict[str, Any]] = []
        self.starts = 0
        self.stops = 0
        self.unwell: str | None = None
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()

    def configure(self, config: dict[str, Any]) -> None:
        if "interval" not in config:
            raise ConfigurationError("ContainerConfig.interval: required")
        self.configured.append(config)
        self.events.put("configure")

    def start(self) -> None:
        self.starts += 1

    def stop(self) -> None:
        self.stops += 1

    def health(self) -> tuple[StatusCode, str | None]:
        if self.unwell:
            return StatusCode.MSG_FAIL, self.unwell
        return StatusCode.MSG_OK, None


def _identity() -> tuple[str, str]:
    vendor = f"t{uuid.uuid4().hex[:8]}"
    return f"{vendor}_app_01", f"{vendor}_app_1.0.0"


A = TypeVar("A", bound=App)


class Running(Generic[A]):
    """An app running in a background thread, with its Container Manager."""

    def __init__(self, app: A, manager: Manager) -> None:
        self.app = app
        self.manager = manager
        self.result: list[StatusCode] = []
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result.append(self.app.run())
        except BaseException as exc:
            self.error.append(exc)

    def configure_ok(self, config: dict[str, Any] | None = None) -> None:
        self.manager.next(f"config/request/{self.app.iid}")
        self.manager.send_config(config or {"interval": 1})
        assert self.manager.status(1)["Status"] == 1

    def join(self) -> StatusCode:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "run() did not return"
        assert not self.error, self.error
        return self.result[0]


@pytest.fixture
def broker(external_mosquitto: tuple[str, int]) -> BrokerAddress:
    host, port = external_mosquitto
    return BrokerAddress(host=host, port=port)


@pytest.fixture
def private_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[BrokerAddress]:
    """A Mosquitto of this test alone, for checks that need no other storage service answering."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([mosquitto_binary, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if port_open("127.0.0.1", port) or proc.poll() is not None:
                break
            time.sleep(0.025)
        if not port_open("127.0.0.1", port):
            proc.terminate()
            _, err = proc.communicate(timeout=WAIT)
            log = err.decode(errors="replace") if err else ""
            pytest.fail(f"mosquitto did not start on port {port}: {log}")
        yield BrokerAddress(host="127.0.0.1", port=port)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(WAIT)
        if proc.stderr is not None:
            proc.stderr.close()


class Starter(Protocol):
    def __call__(self, cls: type[A]) -> Running[A]: ...


def _start_app(broker: BrokerAddress, tmp_path: Path, started: list[Running[Any]], peers: list[Peer]) -> Starter:
    def start(cls: type[A]) -> Running[A]:
        iid, apid = _identity()
        manager = Manager(broker.host, broker.port, iid)
        peers.append(manager)
        app = cls(iid, apid, broker=broker, data_dir=tmp_path / iid)
        running = Running(app, manager)
        started.append(running)
        return running

    return start


def _stop_all(started: list[Running[Any]], peers: list[Peer]) -> None:
    for running in started:
        if running.thread.is_alive():
            running.app.request_shutdown()
            running.thread.join(WAIT)
    for peer in peers:
        peer.close()


@pytest.fixture
def start_private_app(private_broker: BrokerAddress, tmp_path: Path) -> Iterator[Starter]:
    started: list[Running[Any]] = []
    peers: list[Peer] = []
    yield _start_app(private_broker, tmp_path, started, peers)
    _stop_all(started, peers)


@pytest.fixture
def start_app(broker: BrokerAddress, tmp_path: Path) -> Iterator[Starter]:
    started: list[Running[Any]] = []
    peers: list[Peer] = []
    yield _start_app(broker, tmp_path, started, peers)
    _stop_all(started, peers)


def test_start_up_requests_configuration_reports_initial_then_ok(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    request = run.manager.next(f"config/request/{run.app.iid}")
    assert request.qos == 1 and not request.retain
    assert isinstance(request.json()["Timestamp"], int)
    # Before configuration the app answers polls with STATUS_INITIAL (5.2).
    assert run.manager.poll()["Status"] == StatusCode.INITIAL
    # The config request came after the subscriptions of Table 2: a non-retained answer reaches it.
    run.manager.send_config({"interval": 5, "inputs": ["sensor/data/x_y_01/a"]})
    assert run.manager.status(1)["Status"] == StatusCode.MSG_OK
    assert run.app.configured == [{"interval": 5, "inputs": ["sensor/data/x_y_01/a"]}]
    assert run.app.starts == 1
    assert run.manager.poll()["Status"] == StatusCode.MSG_OK
    assert run.app.status is StatusCode.MSG_OK and run.app.running


def test_refused_configuration_reports_initial_and_error_then_a_good_one_starts(
    start_app: Starter,
) -> None:
    run = start_app(RecordingApp)
    iid = run.app.iid
    run.manager.next(f"config/request/{iid}")
    run.manager.send_config({"speed": 3})
    run.manager.status(5, containing="ContainerConfig.interval: required")
    error = run.manager.error(Errno.CONFIGURATION, containing="ContainerConfig.interval: required")
    assert isinstance(error["Timestamp"], int)
    # The Container Manager resends on every STATUS_INITIAL: the same refusal is not repeated
    # (that would loop), but polls are still answered STATUS_INITIAL.
    run.manager.send_config({"speed": 3})
    assert run.manager.poll()["Status"] == StatusCode.INITIAL
    run.manager.send_config({"interval": 2})
    run.manager.status(1)
    assert run.app.configured == [{"interval": 2}]
    assert run.app.starts == 1
    repeated = [r for r in run.manager.pending(f"storage/data/error/{iid}") if b"interval" in r.payload]
    assert repeated == []


def test_configuration_for_another_instance_missing_or_not_json_is_refused(
    start_app: Starter,
) -> None:
    run = start_app(RecordingApp)
    iid = run.app.iid
    run.manager.next(f"config/request/{iid}")
    run.manager.send_config({"interval": 1}, container_name="other_app_02")
    run.manager.error(Errno.CONFIGURATION, containing="ContainerName: expected")
    run.manager.status(5, containing="ContainerName: expected")
    # 5.2 step 4: the Container Manager's answer when it has no configuration for the app.
    run.manager.publish(f"config/response/{iid}", {"Configuration": None, "Message": "not in the edge config"})
    run.manager.error(Errno.CONFIGURATION, containing="(Container Manager: not in the edge config)")
    run.manager.publish(f"config/response/{iid}", b"{not json")
    run.manager.error(Errno.JSON_INVALID, containing=f"config/response/{iid}")
    run.manager.publish(f"config/response/{iid}", {"Timestamp": 1})
    run.manager.error(Errno.CONFIGURATION, containing="missing required key 'Configuration'")
    run.manager.status(5, containing="missing required key")
    assert run.app.configured == [] and run.app.starts == 0
    run.manager.send_config({"interval": 1})
    run.manager.status(1)


def test_duplicate_configuration_is_harmless_and_a_new_one_reconfigures(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    run.configure_ok({"interval": 1})
    run.manager.send_config({"interval": 1})  # QoS 1 redelivery
    run.manager.send_config({"interval": 7})  # pushed reconfiguration
    assert run.app.events.get(timeout=WAIT) == "configure"  # the first one
    assert run.app.events.get(timeout=WAIT) == "configure"
    assert run.app.configured == [{"interval": 1}, {"interval": 7}]
    assert run.app.starts == 1
    # A bad pushed reconfiguration is reported and the app keeps running on the previous one.
    run.manager.send_config({"speed": 1})
    run.manager.error(Errno.CONFIGURATION, containing="interval")
    assert run.manager.poll()["Status"] == StatusCode.MSG_OK
    assert run.app.configured[-1] == {"interval": 7}


def test_status_polls_carry_health(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    run.configure_ok()
    answer = run.manager.poll()
    assert answer["Status"] == 1 and isinstance(answer["Timestamp"], int)
    app: RecordingApp = run.app
    app.unwell = "sensor bus silent for 300 s"
    answer = run.manager.poll()
    assert answer == {"Status": 2, "Message": "sensor bus silent for 300 s", "Timestamp": answer["Timestamp"]}


def test_shutdown_command_stops_reports_and_returns(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    run.configure_ok()
    run.manager.command(1)
    run.manager.status(StatusCode.SHUT_DWN)
    assert run.join() is StatusCode.SHUT_DWN
    app: RecordingApp = run.app
    assert app.stops == 1
    assert run.app.status is StatusCode.SHUT_DWN and not run.app.running


def test_unknown_command_is_ignored_with_an_error_report(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    run.configure_ok()
    run.manager.command(7)
    assert "Command 7" in run.manager.error(Errno.MQTT_CALLBACK)["Message"]
    run.manager.publish(f"command/{run.app.iid}", b"shutdown please")
    run.manager.error(Errno.JSON_INVALID)
    assert run.manager.poll()["Status"] == StatusCode.MSG_OK
    assert run.thread.is_alive()
    run.manager.command(1)
    assert run.join() is StatusCode.SHUT_DWN


def test_app_initiated_shutdown_and_restart(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    run.configure_ok()
    run.app.request_restart("new calibration table")
    answer = run.manager.status(StatusCode.RESTART)
    assert answer["Message"] == "new calibration table"
    assert run.join() is StatusCode.RESTART

    before_config = start_app(RecordingApp)
    before_config.manager.next(f"config/request/{before_config.app.iid}")
    before_config.app.request_shutdown()
    before_config.manager.status(StatusCode.SHUT_DWN)
    assert before_config.join() is StatusCode.SHUT_DWN
    app: RecordingApp = before_config.app
    assert app.stops == 0  # stop() belongs to a started app only


def test_killed_connection_publishes_the_last_will(start_app: Starter) -> None:
    run = start_app(RecordingApp)
    run.configure_ok()
    run.app.client.abort()
    will = run.manager.status(StatusCode.MSG_FAIL)
    assert will["Status"] == 2 and run.app.iid in will["Message"]


class Publisher(App):
    role = "algorithm"


def test_publish_helpers_use_the_standard_objects_topics_and_qos(start_app: Starter, broker: BrokerAddress) -> None:
    run = start_app(Publisher)
    run.configure_ok()
    iid = run.app.iid
    watcher = Peer(broker.host, broker.port)
    try:
        watcher.subscribe(f"sensor/data/{iid}/#", 2)
        watcher.subscribe(f"algorithm/data/{iid}/#", 2)
        watcher.subscribe(f"storage/data/{iid}/#", 2)
        watcher.subscribe(f"storage/data/error/{iid}", 2)
        run.app.publish_scalar("Tx1/load/A", 412.5, timestamp=1504110640, to_store=True, priority=2, role="sensor")
        run.app.publish_scalar("Tx1/overload", False, timestamp=1504110640, valid=False)
        run.app.publish_series(
            "Tx1/forecast/4h/load",
            [120.0, 122.5],
            start_point=1488983405,
            interval=1800.0,
            timestamp=1488983405,
            confidence=[1.0, 0.85],
            timestamp_start=1486564200,
            timestamp_end=1488380400,
        )
        run.app.publish_coordinates("Tx1/pq", [1.5, -0.25], timestamp=1504110641, system="Cartesian")
        run.app.store("history/daily", {"Day": "2017-08-30", "Peak": 431.0})
        run.app.report_error(Errno.SENSOR, "CT on L2 reads out of range")

        scalar = watcher.next(f"sensor/data/{iid}/Tx1/load/A")
        assert (scalar.qos, scalar.retain) == (1, False)
        assert scalar.payload == b'{"Timestamp":1504110640,"Value":412.5,"Valid":true,"ToStore":true,"Priority":2}'
        flag = watcher.next(f"algorithm/data/{iid}/Tx1/overload")
        assert (flag.qos, flag.json()) == (1, {"Timestamp": 1504110640, "Value": False, "Valid": False})
        series = watcher.next(f"algorithm/data/{iid}/Tx1/forecast/4h/load")
        assert series.json() == {
            "Timestamp": 1488983405,
            "StartPoint": 1488983405,
            "Interval": 1800.0,
            "Value": [120.0, 122.5],
            "Confidence": [1.0, 0.85],
            "Valid": True,
            "TimestampStart": 1486564200,
            "TimestampEnd": 1488380400,
        }
        assert isinstance(SeriesObject.from_json(series.json(), where="test"), SeriesObject)
        coordinates = watcher.next(f"algorithm/data/{iid}/Tx1/pq")
        assert CoordinateObject.from_json(coordinates.json(), where="test").coordinates == [1.5, -0.25]
        stored = watcher.next(f"storage/data/{iid}/history/daily")
        assert (stored.qos, stored.json()) == (2, {"Day": "2017-08-30", "Peak": 431.0})
        error = watcher.next(f"storage/data/error/{iid}")
        assert error.qos == 1
        assert error.json()["Errno"] == 11 and error.json()["Message"] == "CT on L2 reads out of range"
        with pytest.raises(ValueError, match="spaces are not permitted"):
            run.app.publish_scalar("bad topic/with space", 1.0)
    finally:
        watcher.close()


def test_metadata_is_retained_for_late_subscribers(start_app: Starter, broker: BrokerAddress) -> None:
    run = start_app(Publisher)
    run.configure_ok()
    topic = f"algorithm/data/{run.app.iid}/Tx1/temperature/hst/meta"
    run.app.publish_metadata(
        "Tx1/temperature/hst",
        MetadataObject(name="Hot spot temperature", units="degC", display_units="°C", sig_figs=3),
    )
    late = Peer(broker.host, broker.port)
    try:
        late.subscribe(topic, 1)
        meta = late.next(topic)
        assert meta.retain
        assert meta.json() == {"Name": "Hot spot temperature", "Units": "degC", "DisplayUnits": "°C", "SigFigs": 3}
    finally:
        late.publish(topic, b"", retain=True)  # clear the retained message off the shared broker
        late.close()


class Follower(App):
    """Records what its input handler is given."""

    role = "algorithm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: queue.SimpleQueue[tuple[str, Input]] = queue.SimpleQueue()
        self.source = ""

    def configure(self, config: dict[str, Any]) -> None:
        self.source = config["input"]

    def start(self) -> None:
        self.subscribe(self.source + "/#", self.on_input)

    def on_input(self, topic: str, obj: Input) -> None:
        if isinstance(obj, dict) and obj.get("explode"):
            raise RuntimeError("boom")
        self.seen.put((topic, obj))


def test_inputs_are_parsed_and_bad_ones_reported(start_app: Starter, broker: BrokerAddress) -> None:
    run = start_app(Follower)
    source = f"sensor/data/{uuid.uuid4().hex[:8]}_src_01"
    run.configure_ok({"input": source})
    app: Follower = run.app
    sensor = Peer(broker.host, broker.port)
    try:
        sensor.publish(f"{source}/a", b'{"Timestamp":1,"Value":')
        sensor.publish(f"{source}/a", {"Timestamp": 2, "Value": 1.0, "Valid": "yes"})
        sensor.publish(f"{source}/a", {"explode": True})
        sensor.publish(f"{source}/a", {"Timestamp": 3, "Value": 230.1, "Valid": True})
        sensor.publish(f"{source}/a/meta", {"Name": "Voltage", "Units": "V"})
        sensor.publish(f"{source}/b", {"Anything": [1, 2]})
        run.manager.error(Errno.JSON_INVALID)
        assert "Valid" in run.manager.error(Errno.SENSOR)["Message"]
        assert "boom" in run.manager.error(Errno.MQTT_CALLBACK)["Message"]
        topic, scalar = app.seen.get(timeout=WAIT)
        assert topic == f"{source}/a"
        assert scalar == ScalarObject(timestamp=3, value=230.1, valid=True)
        topic, meta = app.seen.get(timeout=WAIT)
        assert isinstance(meta, MetadataObject) and meta.units == "V"
        assert app.seen.get(timeout=WAIT) == (f"{source}/b", {"Anything": [1, 2]})
    finally:
        sensor.close()


class Ticker(App):
    def start(self) -> None:
        self.ticks = 0
        self.every(0.05, self.tick)

    def tick(self) -> None:
        self.ticks += 1
        self.publish_scalar("count", self.ticks, timestamp=1000 + self.ticks)
        if self.ticks == 3:
            self.request_shutdown()


def test_every_runs_periodic_work_after_start(start_app: Starter, broker: BrokerAddress) -> None:
    run = start_app(Ticker)
    watcher = Peer(broker.host, broker.port)
    try:
        watcher.subscribe(f"sensor/data/{run.app.iid}/count", 1)
        run.configure_ok({})
        assert [watcher.next(f"sensor/data/{run.app.iid}/count").json()["Value"] for _ in range(3)] == [1, 2, 3]
        assert run.join() is StatusCode.SHUT_DWN
    finally:
        watcher.close()


class Responder(Peer):
    """Answers storage requests of one IID the way the Data Storage Application does (8.5, 8.6)."""

    def __init__(self, host: str, port: int, iid: str) -> None:
        super().__init__(host, port)
        self.iid = iid
        self.requests: queue.SimpleQueue[Received] = queue.SimpleQueue()
        self._client.on_message = self._answer
        self.subscribe(f"storage/request/{iid}", 1)
        self.subscribe(f"storage/request/newdata/{iid}", 2)
        self.subscribe(f"storage/uploaded/{iid}", 1)

    def _answer(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.requests.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
        row = (
            '{"ID":101,"Timestamp":1504110640,"SubTopic":"/alarm/highhigh",'
            '"Data":{"Timestamp":1504110640,"Value":240.0}}'
        )
        body = '{"Status":1,"Response":[{"TableName":"eatl_profiler_04","TableRows":[' + row + "]}]}"
        if msg.topic == f"storage/request/{self.iid}":
            client.publish(f"storage/response/{self.iid}", body.encode(), qos=1)
        elif msg.topic == f"storage/request/newdata/{self.iid}":
            client.publish(f"storage/response/newdata/{self.iid}", b'{"Status":2,"Response":[]}', qos=2)


class Querier(App):
    """Queries storage from inside an input handler (the dispatcher thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: queue.SimpleQueue[object] = queue.SimpleQueue()

    def start(self) -> None:
        self.subscribe(f"algorithm/data/{self.iid}-trigger", self.on_trigger)

    def on_trigger(self, topic: str, obj: Input) -> None:
        self.answers.put(self.query_storage(StorageQuery(max_length=1), timeout=WAIT))


def test_storage_and_upload_apis_round_trip(start_private_app: Starter, private_broker: BrokerAddress) -> None:
    # A broker of its own: on a shared one a running storage service would answer as well.
    broker = private_broker
    run = start_private_app(Querier)
    iid = run.app.iid
    responder = Responder(broker.host, broker.port, iid)
    try:
        run.configure_ok({})
        query = StorageQuery(max_length=10, instance_id="eatl_profiler_04", sub_topic="alarm/highhigh", max_priority=1)
        answer = run.app.query_storage(query, timeout=WAIT)
        request = responder.requests.get(timeout=WAIT)
        assert (request.topic, request.qos) == (f"storage/request/{iid}", 1)
        body = request.json()
        assert {k: body[k] for k in ("MaxLength", "InstanceID", "SubTopic", "MaxPriority")} == {
            "MaxLength": 10,
            "InstanceID": "eatl_profiler_04",
            "SubTopic": "alarm/highhigh",
            "MaxPriority": 1,
        }
        assert isinstance(body["Timestamp"], int)
        assert answer.status == QueryStatus.OK
        [table] = answer.response
        assert table.table_name == "eatl_profiler_04"
        assert [(r.id, r.sub_topic) for r in table.rows] == [(101, "/alarm/highhigh")]
        assert json.loads(table.rows[0].data_raw) == {"Timestamp": 1504110640, "Value": 240.0}

        # From an input handler too: the answer must not wait behind the handler that asked for it.
        responder.publish(f"algorithm/data/{iid}-trigger", {"Go": 1})
        from_handler = run.app.answers.get(timeout=WAIT)
        assert getattr(from_handler, "status", None) == QueryStatus.OK

        empty = run.app.query_newdata(StorageQuery(prefer_oldest=True), timeout=WAIT)
        assert empty.status == QueryStatus.EMPTY and empty.response == []
        request = responder.requests.get(timeout=WAIT)
        while request.topic != f"storage/request/newdata/{iid}":
            request = responder.requests.get(timeout=WAIT)
        assert request.qos == 2 and request.json()["PreferOldest"] is True

        run.app.mark_uploaded({"eatl_profiler_04": [101, 102]})
        request = responder.requests.get(timeout=WAIT)
        assert (request.topic, request.qos) == (f"storage/uploaded/{iid}", 1)
        assert request.json()["NewData"] == [{"eatl_profiler_04": [101, 102]}]
    finally:
        responder.close()


def test_query_without_an_answer_times_out(start_private_app: Starter) -> None:
    run = start_private_app(RecordingApp)
    run.configure_ok()
    with pytest.raises(TimeoutError, match=f"storage/response/{run.app.iid}"):
        run.app.query_storage(StorageQuery(), timeout=0.3)


def test_identity_and_data_dir_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "LVCAP_IID": "acme_thermal_01",
        "LVCAP_APID": "acme_thermal_1.0.0",
        "LVCAP_BROKER_HOST": "127.0.0.1",
        "LVCAP_BROKER_PORT": "1884",
        "LVCAP_PASSWORD": "s3cret",
        "LVCAP_DATA_DIR": str(tmp_path / "state"),
    }
    app = App(env=env)
    assert (app.iid, app.apid) == ("acme_thermal_01", "acme_thermal_1.0.0")
    assert (app.broker.port, app.broker.username, app.broker.password) == (1884, "acme_thermal_1.0.0", "s3cret")
    assert app.data_dir == tmp_path / "state" and app.data_dir.is_dir()
    parts = {"LVCAP_VENDOR": "acme", "LVCAP_NAME": "thermal", "LVCAP_VERSION": "2.0", "LVCAP_INSTANCE": "03"}
    app = App(env=parts)
    assert (app.iid, app.apid) == ("acme_thermal_03", "acme_thermal_2.0")
    with pytest.raises(ValueError, match="LVCAP_IID"):
        App(env={"LVCAP_APID": "acme_thermal_1.0.0"})
    with pytest.raises(ValueError):
        App("Acme Thermal", "acme_thermal_1.0.0", env={})
    with pytest.raises(RuntimeError, match="run\\(\\)"):
        App("acme_thermal_01", "acme_thermal_1.0.0", env={}).publish_scalar("x", 1)


def test_main_shuts_down_cleanly_on_sigterm(broker: BrokerAddress, tmp_path: Path) -> None:
    iid, apid = _identity()
    manager = Manager(broker.host, broker.port, iid)
    script = tmp_path / "sigterm_app.py"
    script.write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from gridhub.sdk import App

            class Saver(App):
                def stop(self):
                    (self.data_dir / "state.json").write_text('{"saved": true}')

            if __name__ == "__main__":
                Saver.main()
            """
        )
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(SRC_DIR),
        LVCAP_IID=iid,
        LVCAP_APID=apid,
        LVCAP_BROKER_HOST=broker.host,
        LVCAP_BROKER_PORT=str(broker.port),
        LVCAP_DATA_DIR=str(tmp_path / "data"),
    )
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        manager.next(f"config/request/{iid}")
        manager.send_config({})
        manager.status(1)
        proc.send_signal(signal.SIGTERM)
        manager.status(StatusCode.SHUT_DWN)
        assert proc.wait(WAIT) == 0
        assert (tmp_path / "data" / "state.json").read_text() == '{"saved": true}'
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()


def test_queries_against_the_real_data_storage_application(
    start_private_app: Starter, private_broker: BrokerAddress, tmp_path: Path
) -> None:
    # A broker of its own: on a shared one another storage service would answer as well.
    storage = pytest.importorskip("gridhub.edge.storage")
    broker = private_broker
    run = start_private_app(Publisher)
    iid = run.app.iid
    settings = storage.StorageSettings(database=tmp_path / "storage.sqlite", upload={iid: ("*",)})
    db = storage.StorageDB.from_settings(settings)
    client_id = f"gridhub-storage-{uuid.uuid4().hex[:8]}"
    service = storage.StorageService(settings, db, storage.storage_client(broker, client_id=client_id))
    service.start()
    try:
        run.configure_ok({})
        run.app.publish_scalar("Tx1/load", 412.5, timestamp=1504110640, to_store=True, priority=1)
        run.app.publish_scalar("Tx1/load", 415.0, timestamp=1504110700, to_store=True)
        run.app.store("history/daily", {"Peak": 431.0})

        def own(sub_topic: str) -> Any:
            return run.app.query_storage(StorageQuery(sub_topic=sub_topic, prefer_oldest=True), timeout=WAIT)

        answer = own("Tx1/load")
        for _ in range(100):  # records are committed by the storage writer thread, asynchronously
            if len([r for t in answer.response for r in t.rows]) == 2:
                break
            time.sleep(0.05)
            answer = own("Tx1/load")
        assert answer.status == QueryStatus.OK
        [table] = answer.response
        assert table.table_name == iid
        assert [json.loads(r.data_raw)["Value"] for r in table.rows] == [412.5, 415.0]
        assert {r.sub_topic for r in table.rows} == {"/Tx1/load"}
        assert own("nothing/here").status == QueryStatus.EMPTY

        # The same app as an upload app (8.5): newdata, then mark uploaded, then nothing is left.
        upload_query = StorageQuery(instance_id=iid, max_priority=1)
        pending = run.app.query_newdata(upload_query, timeout=WAIT)
        assert pending.status == QueryStatus.OK
        ids = [r.id for t in pending.response for r in t.rows]
        assert len(ids) == 1
        run.app.mark_uploaded({iid: ids})
        for _ in range(100):
            if run.app.query_newdata(upload_query, timeout=WAIT).status == QueryStatus.EMPTY:
                break
            time.sleep(0.05)
        assert run.app.query_newdata(upload_query, timeout=WAIT).status == QueryStatus.EMPTY
    finally:
        service.stop()
        db.close()


def test_the_module_docstring_example_works(start_app: Starter, broker: BrokerAddress) -> None:
    import gridhub.sdk.app as module

    assert module.__doc__ is not None
    example = textwrap.dedent(module.__doc__.split("::\n", 1)[1].split("\nThreads:", 1)[0])
    namespace: dict[str, Any] = {"__name__": "example"}
    exec(compile(example, "gridhub.sdk.app example", "exec"), namespace)
    run = start_app(namespace["OverTemperature"])
    source = f"sensor/data/{uuid.uuid4().hex[:8]}_probe_01/top-oil"
    run.manager.next(f"config/request/{run.app.iid}")
    run.manager.send_config({"input": source})
    run.manager.status(5, containing="ContainerConfig: need input and limit")
    run.manager.send_config({"input": source, "limit": 98.0})
    run.manager.status(1)
    watcher = Peer(broker.host, broker.port)
    try:
        watcher.subscribe(f"algorithm/data/{run.app.iid}/alarm", 1)
        watcher.publish(source, {"Timestamp": 1504110640, "Value": 99.5, "Valid": True})
        alarm = watcher.next(f"algorithm/data/{run.app.iid}/alarm").json()
        assert alarm == {"Timestamp": 1504110640, "Value": True, "Valid": True, "ToStore": True, "Priority": 1}
    finally:
        watcher.close()


class Broken(App):
    """Starts badly: its hardware is missing."""

    def start(self) -> None:
        raise OSError("/dev/ttyUSB0: no such device")


def test_failing_start_reports_failure_and_run_raises(start_app: Starter) -> None:
    run = start_app(Broken)
    run.manager.next(f"config/request/{run.app.iid}")
    run.manager.send_config({})
    run.manager.status(1)
    failed = run.manager.status(2)
    assert failed["Message"] == "start() failed: OSError: /dev/ttyUSB0: no such device"
    run.manager.error(Errno.APPLICATION, containing="/dev/ttyUSB0")
    run.thread.join(WAIT)
    assert not run.thread.is_alive()
    assert isinstance(run.error[0], OSError)
