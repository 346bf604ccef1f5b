"""The uploader over the MQTT bridge, end to end: a real edge runtime, the real Mosquitto and a hub process.

The edge runtime and the hub (``gridhub hub run`` with an ``[mqtt]`` section naming the broker and a
topic prefix unique to the test) are those of tests/edge/apps/test_uploader.py; only the uploader's
transport differs. Exactly once is checked the same way: nothing left pending at the edge, each row
stored once by the hub, one sample per reading.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gridhub.edge.apps.uploader import UploaderSettings
from gridhub.sdk import ConfigurationError
from tests.conftest import port_open, wait_for
from tests.edge.apps.test_uploader import HUB_CLI, UPLOADER, Edge, Hub, assert_exactly_once

BROKER = "mqtt://127.0.0.1:1883"


class MqttHub(Hub):
    """The hub process with the MQTT upload bridge on."""

    def __init__(self, tmp_path: Path, prefix: str) -> None:
        super().__init__(tmp_path)
        self.prefix = prefix
        self.config = tmp_path / "hub.toml"
        self.config.write_text(f'[mqtt]\nurl = "{BROKER}"\ntopic_prefix = "{prefix}"\n')

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *HUB_CLI,
                "run",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), "the hub to listen")


@pytest.fixture
def hub(tmp_path: Path, external_mosquitto: tuple[str, int]) -> Iterator[MqttHub]:
    started = MqttHub(tmp_path, f"test/{uuid.uuid4().hex[:10]}/upload")
    yield started
    started.kill()


@pytest.fixture
def make_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    edges: list[Edge] = []

    def make(hub: MqttHub, **uploader: Any) -> Edge:
        mqtt = {"transport": "mqtt", "mqtt_url": BROKER, "site": "site-a", "topic_prefix": hub.prefix}
        edges.append(Edge(tmp_path, hub, **mqtt, **uploader))
        return edges[-1]

    yield make
    for edge in edges:
        edge.runtime.stop()


def test_mqtt_settings_are_checked_naming_the_key() -> None:
    base = {"transport": "mqtt", "mqtt_url": BROKER, "site": "site-a", "site_token": "t"}
    settings = UploaderSettings.from_config(base)
    assert (settings.transport, settings.topic_prefix, settings.hub_url) == ("mqtt", "gridhub/upload", "")
    for changes, words in (
        ({"transport": "amqp"}, "transport"),
        ({"mqtt_url": "http://broker"}, "mqtt_url"),
        ({"site": ""}, "site"),
        ({"site": "a/b"}, "site"),
        ({"site_token": ""}, "site_token"),
        ({"topic_prefix": "gridhub/#"}, "topic_prefix"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            UploaderSettings.from_config({**base, **changes})


@pytest.mark.mosquitto
def test_hub_not_subscribed_then_up_everything_arrives_exactly_once(
    hub: MqttHub, make_edge: Callable[..., Edge]
) -> None:
    edge = make_edge(hub, http_timeout=1.0)
    edge.start()
    edge.publish(240)
    # Nobody is subscribed: the broker drops the batches, no ack comes, the uploader keeps the rows and retries.
    wait_for(lambda: "no ack from the hub" in str(edge.app(UPLOADER).get("last_message") or ""), "a retrying status")
    assert edge.pending() == 240
    uploader = edge.app(UPLOADER)
    assert uploader["last_status"] == 1 and uploader["restarts"] == 0
    hub.start()
    assert_exactly_once(hub, edge, 240)


@pytest.mark.mosquitto
def test_hub_killed_mid_drain_over_mqtt_loses_and_duplicates_nothing(
    hub: MqttHub, make_edge: Callable[..., Edge]
) -> None:
    edge = make_edge(hub, max_length=20, http_timeout=1.0)
    edge.start()
    edge.publish(600)
    hub.start()
    wait_for(lambda: hub.stored() >= 100, "the drain to begin")
    hub.kill()  # kill -9: a batch may be committed but its ack never published
    time.sleep(0.5)
    hub.start()
    assert_exactly_once(hub, edge, 600)
