"""/gateway: hub services in-process, and over the NATS server on 127.0.0.1:4222 when it runs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridhub.hub.auth import Role
from gridhub.hub.settings import HubSettings
from tests.conftest import port_open, service_absent
from tests.hub.auth.conftest import Clock
from tests.hub.faces.xflex.conftest import API, Hub, start_hub

NATS_URL = "nats://127.0.0.1:4222"
GATEWAY = f"{API}/gateway"
METRICS = {
    "layer": "grid",
    "collection": "generators",
    "measures": ["activePower"],
    "period": "1h",
    "interval": "1h",
    "to": "2024-03-01T01:00:00Z",
}


def add_history(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    first = {"_id": "TSO", "measurements": {"activePower": {"value": 10.0, "timestamp": "2024-03-01T00:10:00Z"}}}
    assert hub.client.post(url, json=first, headers=hub.admin).status_code == 200
    later = {"measurements": {"activePower": {"value": 30.0, "timestamp": "2024-03-01T00:20:00Z"}}}
    assert hub.client.patch(f"{url}/TSO", json=later, headers=hub.admin).status_code == 200


def only_bucket(data: dict[str, Any]) -> dict[str, Any]:
    (metric,) = data["metrics"]
    (bucket,) = metric["buckets"]
    result: dict[str, Any] = bucket
    return result


def test_metrics_get_in_process(hub: Hub) -> None:
    add_history(hub)
    body = {"natsCredentials": "xxxxxxx", "subject": "metrics.get", "method": "request", "params": METRICS}
    response = hub.client.post(GATEWAY, json=body, headers=hub.admin)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"
    bucket = only_bucket(response.json()["data"])
    assert (bucket["count"], bucket["min"], bucket["max"], bucket["mean"]) == (2, 10.0, 30.0, 20.0)


def test_gateway_checks_the_caller_first(hub: Hub) -> None:
    add_history(hub)
    reader = hub.user("reader", Role.CONSUMER, ("grid/generators:read",))
    stranger = hub.user("stranger", Role.CONSUMER, ("grid/substations:read",))
    assert (
        hub.client.post(GATEWAY, json={"subject": "metrics.get", "params": METRICS}, headers=reader).status_code == 200
    )
    refused = hub.client.post(GATEWAY, json={"subject": "metrics.get", "params": METRICS}, headers=stranger)
    assert refused.status_code == 403 and "grid/generators" in refused.json()["message"]
    other = hub.client.post(GATEWAY, json={"subject": "weather.get"}, headers=reader)
    assert other.status_code == 403
    assert hub.client.post(GATEWAY, json={"subject": "metrics.get", "params": METRICS}).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"subject": "weather.get"}, 404, "no hub service answers subject 'weather.get'"),
        ({"subject": "metrics"}, 400, "<service>.<action>"),
        ({"subject": "metrics.>"}, 400, "no wildcards"),
        ({"subject": "metrics.get", "method": "call"}, 400, "method"),
        (
            {"subject": "metrics.get", "params": {"layer": "grid", "collection": "lines", "measures": ["a"]}},
            404,
            "collection 'lines'",
        ),
        ({"params": {}}, 400, "subject"),
    ],
)
def test_bad_gateway_calls(hub: Hub, body: dict[str, Any], status: int, message: str) -> None:
    response = hub.client.post(GATEWAY, json=body, headers=hub.admin)
    assert response.status_code == status, response.text
    assert response.json()["status"] == "error" and message in response.json()["message"]


# -- over NATS -----------------------------------------------------------------------------------


class NatsPeer:
    """A NATS client on its own event loop thread: responders and subscribers a test controls."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: Client = self.run(nats.connect(url))

    def run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=10)

    def respond(self, subject: str, answer: Callable[[dict[str, Any]], bytes]) -> None:
        async def handler(msg: Msg) -> None:
            await msg.respond(answer(json.loads(msg.data)))

        self.run(self._subscribe(subject, handler))

    def collect(self, subject: str) -> tuple[list[dict[str, Any]], threading.Event]:
        received: list[dict[str, Any]] = []
        arrived = threading.Event()

        async def handler(msg: Msg) -> None:
            received.append(json.loads(msg.data))
            arrived.set()

        self.run(self._subscribe(subject, handler))
        return received, arrived

    async def _subscribe(self, subject: str, handler: Callable[[Msg], Any]) -> None:
        await self.client.subscribe(subject, cb=handler)
        await self.client.flush()

    def close(self) -> None:
        self.run(self.client.drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def nats_peer() -> Iterator[NatsPeer]:
    if not port_open("127.0.0.1", 4222):
        service_absent("no NATS server on 127.0.0.1:4222")
    peer = NatsPeer(NATS_URL)
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def nats_hub(hub_settings: HubSettings, clock: Clock, nats_peer: NatsPeer) -> Iterator[Hub]:
    domain = f"gridhubtest{uuid.uuid4().hex[:10]}"  # unique subjects: tests never hear each other
    settings = dataclasses.replace(hub_settings, nats_url=NATS_URL, nats_domain=domain, nats_timeout=5.0)
    with start_hub(settings, clock) as hub:
        yield hub


def test_metrics_get_travels_over_nats_and_the_hub_answers(nats_hub: Hub, nats_peer: NatsPeer) -> None:
    add_history(nats_hub)
    domain = nats_hub.settings.nats_domain
    seen, arrived = nats_peer.collect(f"{domain}.metrics.get")  # a listener besides the hub's responder
    response = nats_hub.client.post(GATEWAY, json={"subject": "metrics.get", "params": METRICS}, headers=nats_hub.admin)
    assert response.status_code == 200, response.text
    assert only_bucket(response.json()["data"])["count"] == 2
    assert arrived.wait(5) and seen == [METRICS]


def test_any_service_on_nats_answers_through_the_gateway(nats_hub: Hub, nats_peer: NatsPeer) -> None:
    domain = nats_hub.settings.nats_domain
    nats_peer.respond(
        f"{domain}.weather.get",
        lambda p: json.dumps({"status": "success", "data": {"city": p["city"], "t": 21.5}}).encode(),
    )
    nats_peer.respond(
        f"{domain}.broken.get",
        lambda p: json.dumps({"status": "error", "code": 422, "message": "no such city"}).encode(),
    )
    nats_peer.respond(f"{domain}.plain.get", lambda p: b'{"raw": true}')
    call = nats_hub.client.post
    weather = call(GATEWAY, json={"subject": "weather.get", "params": {"city": "Bath"}}, headers=nats_hub.admin)
    assert weather.json() == {"status": "success", "data": {"city": "Bath", "t": 21.5}}
    broken = call(GATEWAY, json={"subject": "broken.get"}, headers=nats_hub.admin)
    assert broken.status_code == 422 and broken.json() == {"status": "error", "message": "no such city"}
    plain = call(GATEWAY, json={"subject": "plain.get"}, headers=nats_hub.admin)
    assert plain.json()["data"] == {"raw": True}
    nobody = call(GATEWAY, json={"subject": "nobody.get"}, headers=nats_hub.admin)
    assert nobody.status_code == 502 and "no service answers" in nobody.json()["message"]


def test_publish_is_fire_and_forget(nats_hub: Hub, nats_peer: NatsPeer) -> None:
    received, arrived = nats_peer.collect(f"{nats_hub.settings.nats_domain}.events.created")
    response = nats_hub.client.post(
        GATEWAY, json={"subject": "events.created", "method": "publish", "params": {"id": 7}}, headers=nats_hub.admin
    )
    assert response.json() == {"status": "success", "data": None}
    assert arrived.wait(5) and received == [{"id": 7}]


def test_unreachable_nats_answers_503(hub_settings: HubSettings, clock: Clock) -> None:
    from tests.conftest import free_port

    settings = dataclasses.replace(hub_settings, nats_url=f"nats://127.0.0.1:{free_port()}", nats_timeout=0.5)
    with start_hub(settings, clock) as hub:
        response = hub.client.post(GATEWAY, json={"subject": "weather.get"}, headers=hub.admin)
        assert response.status_code == 503 and "not reachable" in response.json()["message"]
