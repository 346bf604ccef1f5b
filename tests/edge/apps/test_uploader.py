"""The uploader app end to end: a real edge runtime, a real hub HTTP server, outages and restarts.

Each test runs an EdgeRuntime (embedded marketplace on a free port, Data Storage Application,
the uploader spawned by the manager) and a plain paho publisher whose readings are stored, against
the hub as its own process (``gridhub hub run`` over a SQLite store, the site's token from
``gridhub hub site add``). "Exactly once" is
checked three ways: every row is acknowledged at the edge (nothing left pending), the hub counted
each row as stored once, and the hub holds exactly one sample per reading.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.edge.apps.uploader import UploaderSettings, read_newdata, upload_body
from gridhub.edge.config import load_config
from gridhub.edge.manager import read_status
from gridhub.edge.runtime import EdgeRuntime
from gridhub.formats.lvcap import TableResult, TableRow
from gridhub.hub.store import open_store
from gridhub.sdk import ConfigurationError
from tests.conftest import free_port, port_open, wait_for

UPLOADER = "gridhub_uploader_01"
PUBLISHER = "test_pub_01"
TOPIC = f"sensor/data/{PUBLISHER}/60/busbar/l1/voltage-mean"
SERIES = f"site-a/{PUBLISHER}/60/busbar/l1/voltage-mean"
T0 = 1_704_067_200

HUB_CLI = [sys.executable, "-c", "from gridhub.hub.cli import hub; hub(prog_name='gridhub hub')"]
"""``gridhub hub ...`` (the hub's own command line, run as its own process)."""


class Hub:
    """The hub (``gridhub hub run``) as its own process, which the tests kill and start again."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "hub"
        self.database = self.data_dir / "hub.sqlite"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        added = subprocess.run(
            [*HUB_CLI, "site", "add", "site-a", "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.token = added.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*HUB_CLI, "run", "--data-dir", str(self.data_dir), "--port", str(self.port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), "the hub to listen")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stats(self) -> dict[str, Any]:
        try:
            response = httpx.get(
                f"{self.url}/edge/v1/sites/site-a/stats", headers={"Authorization": f"Bearer {self.token}"}, timeout=5
            )
        except httpx.HTTPError:
            return {}
        return dict(response.json()) if response.status_code == 200 else {}

    def stored(self) -> int:
        return int(self.stats().get("stored", 0))


class Edge:
    """An edge runtime with the uploader and an attached publisher app."""

    def __init__(self, tmp_path: Path, hub: Hub, **uploader: Any) -> None:
        config = {
            "hub_url": hub.url,
            "site_token": hub.token,
            "max_length": 50,
            "poll_interval": 0.2,
            "retry_initial": 0.1,
            "retry_max": 0.4,
            "http_timeout": 3.0,
            "query_timeout": 3.0,
            "progress_interval": 1.0,
            **uploader,
        }
        (tmp_path / "edge.toml").write_text(
            'version = 1\ndata_dir = "edge"\n'
            f'[marketplace]\nmode = "embedded"\nport = {free_port()}\n'
            # 1 s between polls: a restarted uploader on a loaded machine may need a few seconds to start,
            # and five unanswered polls stop an app for good (8.2.2)
            "[manager]\nstatus_interval = 1.0\nshutdown_grace = 3\nrestart_backoff = 0.1\n"
            f'[storage]\nmax_length = 1000\n[storage.upload]\n"{UPLOADER}" = ["*"]\n'
            '[[app]]\nvendor = "test"\nname = "pub"\nversion = "1"\ninstance = "01"\nattached = true\npassword = "pw"\n'
            '[[app]]\nvendor = "gridhub"\nname = "uploader"\nversion = "1.0.0"\ninstance = "01"\n'
            f"command = {json.dumps([sys.executable, '-m', 'gridhub.edge.apps.uploader'])}\n"
            "[app.config]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items())
        )
        self.runtime = EdgeRuntime(load_config(tmp_path / "edge.toml"))
        self.data_dir = self.runtime.config.data_dir
        self.database = self.runtime.config.storage.database

    def start(self) -> None:
        self.runtime.start()
        wait_for(lambda: self.app(UPLOADER).get("state") == "running", "the uploader to run")

    def app(self, iid: str) -> dict[str, Any]:
        try:
            return dict(read_status(self.data_dir)["apps"][iid])
        except (FileNotFoundError, KeyError, ValueError):
            return {}

    def publish(self, count: int, priorities: Callable[[int], int | None] = lambda i: None) -> None:
        """Publish count readings (one a minute of simulated time) and wait until all are stored."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test_pub_1")
        client.username_pw_set("test_pub_1", "pw")
        client.connect("127.0.0.1", self.runtime.config.marketplace.port)
        client.loop_start()
        try:
            infos = []
            for i in range(count):
                reading: dict[str, Any] = {"Timestamp": T0 + 60 * i, "Value": 230.0 + i % 10, "Valid": i % 7 != 3}
                priority = priorities(i)
                if priority is not None:
                    reading["Priority"] = priority
                infos.append(client.publish(TOPIC, json.dumps(reading), qos=1))
            for info in infos:
                info.wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()
        wait_for(lambda: self.rows() == count, f"{count} rows stored at the edge")

    def _count(self, where: str) -> int:
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as conn:
                return int(conn.execute(f'SELECT COUNT(*) FROM "{PUBLISHER}" {where}').fetchone()[0])
        except sqlite3.OperationalError:
            return -1

    def rows(self) -> int:
        return self._count("")

    def pending(self) -> int:
        return self._count("WHERE Pending != 0")

    def kill_uploader(self) -> None:
        pid = self.app(UPLOADER).get("pid")
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    started = Hub(tmp_path)
    yield started
    started.kill()


@pytest.fixture
def make_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    edges: list[Edge] = []

    def make(hub: Hub, **uploader: Any) -> Edge:
        edges.append(Edge(tmp_path, hub, **uploader))
        return edges[-1]

    yield make
    for edge in edges:
        edge.runtime.stop()


def assert_exactly_once(hub: Hub, edge: Edge, count: int) -> None:
    try:
        wait_for(lambda: hub.stored() == count, f"the hub to store {count} rows", timeout=30)
        wait_for(lambda: edge.pending() == 0, "every row to be acknowledged at the edge")
    except AssertionError as exc:
        log = (edge.data_dir / "logs" / f"{UPLOADER}.log").read_text()[-3000:]
        raise AssertionError(f"{exc}; hub {hub.stats()}; {edge.pending()} pending; uploader log:\n{log}") from None
    stats = hub.stats()
    assert stats["stored"] == count and stats["rejected"] == 0
    assert stats["received"] == count + stats["duplicates"]
    hub.kill()
    with open_store(f"sqlite:///{hub.database}") as store:
        assert store.count_samples(SERIES) == count
        assert store.count_samples(f"site-a/{PUBLISHER}#upload") == count
        readings = store.read_range(SERIES, store_time(T0), store_time(T0 + 60 * count))
        assert [r.ts for r in readings] == [store_time(T0 + 60 * i) for i in range(count)]
        assert sum(1 for r in readings if not r.quality) == sum(1 for i in range(count) if i % 7 != 3)
        assert store.get_series(SERIES).unit == "V"


def store_time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_settings_are_checked_naming_the_key() -> None:
    assert UploaderSettings.from_config({"hub_url": "http://h:8080", "site_token": "t"}).prefer_oldest is True
    for config, words in (
        ({"site_token": "t"}, "hub_url"),
        ({"hub_url": "ftp://h", "site_token": "t"}, "hub_url"),
        ({"hub_url": "http://h", "site_token": " "}, "site_token"),
        ({"hub_url": "http://h", "site_token": "t", "max_length": 20000}, "max_length"),
        ({"hub_url": "http://h", "site_token": "t", "retry_initial": 5, "retry_max": 1}, "retry_max"),
        ({"hub_url": "http://h", "site_token": "t", "hub": "x"}, "unknown key"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            UploaderSettings.from_config(config)


def test_gzip_is_on_by_default_except_towards_a_hub_or_broker_on_loopback() -> None:
    def gzip_of(**config: Any) -> bool:
        return UploaderSettings.from_config({"site_token": "t", **config}).gzip

    assert gzip_of(hub_url="https://hub.example.net") is True
    assert gzip_of(hub_url="http://10.1.2.3:8080") is True
    assert gzip_of(hub_url="http://127.0.0.1:8080") is False
    assert gzip_of(hub_url="http://localhost:8080") is False
    assert gzip_of(hub_url="http://[::1]:8080") is False
    assert gzip_of(hub_url="http://127.0.0.1:8080", gzip=True) is True  # an explicit setting wins
    assert gzip_of(hub_url="https://hub.example.net", gzip=False) is False
    mqtt = {"transport": "mqtt", "site": "site-a", "hub_url": "http://127.0.0.1"}
    assert gzip_of(**mqtt, mqtt_url="mqtt://127.0.0.1:1883") is False
    assert gzip_of(**mqtt, mqtt_url="mqtts://broker.example.net") is True  # the broker decides, not hub_url


def test_hub_down_then_up_everything_arrives_exactly_once(hub: Hub, make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(hub)
    edge.start()
    edge.publish(240)
    # The hub is not there: the uploader keeps the rows queued, retries, and says so while staying OK.
    wait_for(lambda: "retrying" in str(edge.app(UPLOADER).get("last_message") or ""), "a retrying status message")
    assert edge.pending() == 240
    uploader = edge.app(UPLOADER)
    assert uploader["last_status"] == 1 and uploader["restarts"] == 0
    hub.start()
    assert_exactly_once(hub, edge, 240)
    assert edge.app(UPLOADER)["restarts"] == 0


def test_uploader_killed_mid_drain_loses_and_duplicates_nothing(hub: Hub, make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(hub, max_length=20)
    edge.start()
    edge.publish(800)  # the hub is still down: a backlog builds up
    hub.start()
    wait_for(lambda: hub.stored() >= 100, "the drain to begin")
    edge.kill_uploader()
    assert hub.stored() < 800, "the drain finished before the uploader was killed"
    wait_for(lambda: edge.app(UPLOADER).get("restarts", 0) >= 1, "the manager to restart the uploader")
    assert_exactly_once(hub, edge, 800)


def test_hub_restarted_mid_drain_loses_and_duplicates_nothing(hub: Hub, make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(hub, max_length=20)
    edge.start()
    edge.publish(800)
    hub.start()
    wait_for(lambda: hub.stored() >= 100, "the drain to begin")
    hub.kill()  # kill -9: a batch may be committed but not acknowledged
    time.sleep(0.5)
    hub.start()
    assert_exactly_once(hub, edge, 800)


def test_priority_first_drains_every_priority_and_the_unprioritised(hub: Hub, make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(hub, priority_first=True, max_length=25, gzip=True)  # off by default on loopback
    edge.start()
    edge.publish(150, priorities=lambda i: (None, 1, 3, 5, 9)[i % 5])  # 9 is not a valid priority: as none
    hub.start()
    assert_exactly_once(hub, edge, 150)


def test_upload_body_splices_each_stored_payload_byte_for_byte() -> None:
    rows = [
        TableRow(101, 1504110640, "/60/busbar/l1/voltage-mean", b'{"Timestamp":1504110640,"Value":2.4E2,"Valid":true}'),
        TableRow(102, 1504110641, "/", b'{ "Errno" : 11 }'),
    ]
    results = [TableResult("eatl_profiler_04", rows), TableResult("acme_thermal_01", [])]
    body = upload_body("batch-1", results)
    assert b'"Data":{"Timestamp":1504110640,"Value":2.4E2,"Valid":true}' in body
    assert b'"Data":{ "Errno" : 11 }' in body
    assert json.loads(body) == {
        "Batch": "batch-1",
        "Tables": [{"TableName": "eatl_profiler_04", "TableRows": [row.to_json() for row in rows]}],
    }


def test_a_newdata_answer_is_sent_with_each_data_as_stored_and_the_subtopics_normalised() -> None:
    payload = (
        b'{"Status":6,"Response":[{"TableName":"eatl_profiler_04","TableRows":['
        b'{"ID":101,"Timestamp":1504110640,"SubTopic":"/60/busbar/l1/voltage-mean",'
        b'"Data":{ "Timestamp" : 1504110640, "Value": 2.4E2, "Valid": true, "Name": "Temp\xc3\xa9rature"}},'
        b'{"ID":102,"Timestamp":1504110641,"SubTopic":"","Data":{"Errno":11}},'
        b'{"ID":103,"Timestamp":1504110642,"SubTopic":"alarm","Data":[1,{"a":null}]}]},'
        b'{"TableName":"acme_thermal_01","TableRows":[]}]}'
    )
    status, results = read_newdata(payload, "storage/response/newdata/gridhub_uploader_01")
    body = upload_body("batch-1", results)
    rows = [
        {
            "ID": 101,
            "Timestamp": 1504110640,
            "SubTopic": "/60/busbar/l1/voltage-mean",
            "Data": {"Timestamp": 1504110640, "Value": 240.0, "Valid": True, "Name": "Température"},
        },
        {"ID": 102, "Timestamp": 1504110641, "SubTopic": "/", "Data": {"Errno": 11}},
        {"ID": 103, "Timestamp": 1504110642, "SubTopic": "/alarm", "Data": [1, {"a": None}]},
    ]
    assert status == 6
    assert json.loads(body) == {"Batch": "batch-1", "Tables": [{"TableName": "eatl_profiler_04", "TableRows": rows}]}
    # Each row's stored bytes, when asked for, are its Data re-encoded compactly: splicing them gives the same body.
    first = results[0].rows[0]
    assert first.data_raw == '{"Timestamp":1504110640,"Value":240.0,"Valid":true,"Name":"Température"}'.encode()
    spliced = [
        TableResult(r.table_name, [TableRow(x.id, x.timestamp, x.sub_topic, x.data_raw) for x in r.rows])
        for r in results
    ]
    assert json.loads(upload_body("batch-1", spliced)) == json.loads(body)
