"""Configuration (Annex 4 sections 5.2, 8.2.1 Table 5 and 9.5) against a running runtime."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest

from tests.conformance.lvcap.conftest import MODE_PARAMS, AppSpec, LvcapClient, Runtime, RuntimePool, make_pool, shared

CONFIG = {
    "input": "sensor/data/gridhub_simulator_01/transformer/temperature/top-oil",
    "threshold": 12.5,
    "enabled": True,
    "channels": [1, 2, 3],
    "limits": {"high": 90, "low": -5},
}
APPS = [AppSpec("cfg", config=CONFIG), AppSpec("bare")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    # A long status interval: these tests are about configuration, not status polling.
    pool = make_pool(tmp_path_factory, "config", APPS, manager={"status_interval": 60.0})
    yield pool
    pool.close()


@pytest.fixture(params=MODE_PARAMS)
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


def request_config(app: LvcapClient, payload: object) -> dict[str, object]:
    since = app.mark()
    app.publish(
        f"config/request/{app.iid}", payload if isinstance(payload, bytes | str) else json.dumps(payload), qos=1
    )
    msg = app.wait_for(f"config/response/{app.iid}", since=since, what="in answer to config/request")
    assert msg.qos == 1, f"config/response must be delivered at QoS 1 (8.2.1), got QoS {msg.qos}"
    assert not msg.retain, "config/response must not be retained (8.2.1)"
    body = msg.json()
    assert isinstance(body, dict)
    return body


def test_config_request_gets_configuration(runtime: Runtime) -> None:
    """5.2 steps 1-4, 8.2.1 Table 5, 9.5: config/request/<IID> is answered on config/response/<IID>.

    QoS 1, not retained, Configuration = {"ContainerName": <IID>, "ContainerConfig": {...}} exactly as
    configured; a second request (with an empty payload, "no required payload") gets it again.
    """
    app = runtime.client("cfg")
    app.subscribe_table2()
    iid = runtime.iid("cfg")
    first = request_config(app, {"Timestamp": int(time.time())})
    assert first["Configuration"] == {"ContainerName": iid, "ContainerConfig": CONFIG}, first
    if "Timestamp" in first:
        assert isinstance(first["Timestamp"], int)
    second = request_config(app, {})
    assert second["Configuration"] == {"ContainerName": iid, "ContainerConfig": CONFIG}, second


def test_config_request_without_app_config_gets_empty_container_config(runtime: Runtime) -> None:
    """9.5 Table 23: ContainerName and ContainerConfig are both required, even with no [app.config]."""
    app = runtime.client("bare")
    app.subscribe_table2()
    body = request_config(app, {"Timestamp": int(time.time())})
    assert body["Configuration"] == {"ContainerName": runtime.iid("bare"), "ContainerConfig": {}}, body


@pytest.mark.mosquitto
@pytest.mark.serial
def test_config_request_for_unknown_iid_gets_error_answer(
    request: pytest.FixtureRequest, pool: RuntimePool, external_mosquitto: tuple[str, int]
) -> None:
    """5.2 step 4: the response "will include an error message if the Container Manager is not aware
    of any configuration for the Application" - an unknown IID gets an answer, not silence.

    Only the external mode lets an unconfigured client publish at all (the ACL modes refuse it).
    """
    runtime = pool.get("external", None)
    from tests.conformance.lvcap.conftest import App

    ghost = App(
        name="ghost" + secrets.token_hex(2),
        vendor=runtime.vendor,
        version="1.0.0",
        instance="07",
        password="",
        attached=True,
    )
    client = LvcapClient(runtime, ghost)
    runtime.clients.append(client)
    try:
        client.connect()
        client.subscribe_table2()
        body = request_config(client, {"Timestamp": int(time.time())})
    finally:
        runtime.close_clients()
    configuration = body.get("Configuration")
    assert not (isinstance(configuration, dict) and "ContainerConfig" in configuration), (
        f"an unknown IID got a configuration: {body}"
    )
    text = json.dumps(body).lower()
    assert "error" in text or "unknown" in text or "no configuration" in text, f"no error in the answer: {body}"
    runtime.wait_error(lambda e: ghost.iid in str(e), 10, f"about the unknown {ghost.iid}")
