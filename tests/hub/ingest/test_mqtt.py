"""The MQTT upload bridge against the real Mosquitto on 127.0.0.1:1883, each test under its own topic prefix.

The hub runs in-process (``create_app`` with its lifespan, or the bridge itself over a SQLite store);
batches are published and acks read with a plain paho client, as a site's uploader would.
"""

from __future__ import annotations

import gzip
import json
import queue
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.hub.app import create_app
from gridhub.hub.auth import AuthService
from gridhub.hub.faces.edge.ingest import EdgeIngest
from gridhub.hub.ingest.mqtt import MqttUploadBridge
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import Store, open_store
from tests.conftest import wait_for

pytestmark = pytest.mark.mosquitto

TABLE = "test_pub_01"
SERIES = f"site-a/{TABLE}/60/busbar/l1/voltage-mean"
T0 = 1_704_067_200


def batch_payload(batch: str, token: str, ids: range, *, gzipped: bool = True, valid: bool = True) -> bytes:
    rows = [
        {
            "ID": i,
            "Timestamp": T0 + 60 * i,
            "SubTopic": "/60/busbar/l1/voltage-mean",
            "Data": {"Timestamp": T0 + 60 * i, "Value": 230.0 + i, "Valid": valid},
        }
        for i in ids
    ]
    text = json.dumps({"Token": token, "Batch": batch, "Tables": [{"TableName": TABLE, "TableRows": rows}]}).encode()
    return gzip.compress(text) if gzipped else text


class Site:
    """A paho client publishing batches and collecting acks under one topic prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.acks: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-site-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.acks.put((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/+/ack/#", qos=1)

    def publish(self, site: str, payload: bytes) -> None:
        self.client.publish(f"{self.prefix}/{site}/batch", payload, qos=1).wait_for_publish(5)

    def ack(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        return self.acks.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Hub:
    settings: HubSettings
    store: Store
    auth: AuthService
    ingest: EdgeIngest
    token_a: str
    token_b: str

    def bridge(self) -> MqttUploadBridge:
        bridge = MqttUploadBridge(self.settings, self.auth, self.ingest)
        bridge.start()
        assert bridge.connected.wait(10), "the bridge did not subscribe"
        return bridge


@pytest.fixture
def prefix(external_mosquitto: tuple[str, int]) -> str:
    return f"test/{uuid.uuid4().hex[:10]}/upload"


@pytest.fixture
def site(prefix: str) -> Iterator[Site]:
    client = Site(prefix)
    yield client
    client.close()


@pytest.fixture
def hub(tmp_path: Path, prefix: str) -> Iterator[Hub]:
    settings = HubSettings(
        data_dir=tmp_path,
        mqtt_url="mqtt://127.0.0.1:1883",
        mqtt_topic_prefix=prefix,
        mqtt_group=f"g{uuid.uuid4().hex[:8]}",
        password_time_cost=1,
        password_memory_kib=8192,
    )
    store = open_store(settings.store)
    auth = AuthService(store, password_time_cost=1, password_memory_kib=8192)
    token_a, token_b = auth.issue_site_token("site-a"), auth.issue_site_token("site-b")
    yield Hub(settings, store, auth, EdgeIngest(store), token_a, token_b)
    store.close()


def test_a_batch_through_the_hub_app_is_stored_then_acked(tmp_path: Path, prefix: str, site: Site) -> None:
    settings = HubSettings(data_dir=tmp_path, mqtt_url="mqtt://127.0.0.1:1883", mqtt_topic_prefix=prefix)
    app = create_app(settings)
    token = app.state.ctx.auth.issue_site_token("site-a")
    with TestClient(app) as client:
        assert app.state.mqtt_bridge.connected.wait(10)
        site.publish("site-a", batch_payload("batch-1", token, range(1, 11)))
        topic, ack = site.ack()
        assert topic == f"{prefix}/site-a/ack/batch-1"
        assert ack == {"status": "success", "accepted": {TABLE: list(range(1, 11))}, "rejected": {}}
        # The ack was sent after the commit: the rows are there already.
        stats = client.get("/edge/v1/sites/site-a/stats", headers={"Authorization": f"Bearer {token}"}).json()
        assert stats["stored"] == 10
        assert app.state.ctx.store.count_samples(SERIES) == 10
    assert not app.state.mqtt_bridge.connected.is_set()


def test_duplicate_delivery_stores_nothing_twice(hub: Hub, site: Site) -> None:
    bridge = hub.bridge()
    try:
        payload = batch_payload("dup", hub.token_a, range(1, 21), gzipped=False)
        site.publish("site-a", payload)
        site.publish("site-a", payload)
        first, second = site.ack()[1], site.ack()[1]
    finally:
        bridge.stop()
    assert first == second == {"status": "success", "accepted": {TABLE: list(range(1, 21))}, "rejected": {}}
    assert hub.store.count_samples(SERIES) == 20
    counters = hub.ingest.counters("site-a", "edge")
    assert (counters.received, counters.stored, counters.duplicates) == (40, 20, 20)


def test_a_token_of_another_site_gets_an_error_ack_and_nothing_is_stored(hub: Hub, site: Site) -> None:
    bridge = hub.bridge()
    try:
        site.publish("site-a", batch_payload("stolen", hub.token_b, range(1, 5)))
        topic, ack = site.ack()
        site.publish("site-a", batch_payload("no-token", "", range(1, 5)))
        missing = site.ack()[1]
        site.publish("site-a", gzip.compress(b'{"Token": "%s", "Batch": "bad", "Tables": 7}' % hub.token_a.encode()))
        malformed = site.ack()[1]
    finally:
        bridge.stop()
    assert topic == f"{site.prefix}/site-a/ack/stolen"
    assert ack["status"] == "error" and ack["code"] == 401
    assert "belongs to site 'site-b', not to 'site-a'" in ack["message"]
    assert missing["code"] == 401 and "Token: required" in missing["message"]
    assert malformed["code"] == 400 and "Tables" in malformed["message"]
    assert hub.ingest.counters("site-a", "edge").received == 0
    assert hub.ingest.counters("site-b", "edge").received == 0


def test_replicas_in_one_group_share_the_batches(hub: Hub, site: Site) -> None:
    bridges = [hub.bridge(), hub.bridge()]
    try:
        for n in range(12):
            site.publish("site-a", batch_payload(f"b{n}", hub.token_a, range(10 * n + 1, 10 * n + 11)))
        acks = [site.ack() for _ in range(12)]
        wait_for(lambda: hub.ingest.counters("site-a", "edge").stored == 120, "120 rows stored")
        with pytest.raises(queue.Empty):
            site.ack(timeout=0.5)  # one ack per batch: each went to one replica only
    finally:
        for bridge in bridges:
            bridge.stop()
    assert sorted(topic.rsplit("/", 1)[1] for topic, _ in acks) == sorted(f"b{n}" for n in range(12))
    assert all(ack["status"] == "success" for _, ack in acks)
    assert hub.ingest.counters("site-a", "edge").duplicates == 0
    assert hub.store.count_samples(SERIES) == 120
