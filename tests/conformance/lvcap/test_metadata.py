"""Retained metadata (Annex 4 sections 8.3.2 and 9.4) against a running runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conformance.lvcap.conftest import MODE_PARAMS, AppSpec, Runtime, RuntimePool, make_pool, shared, unique

APPS = [AppSpec("sensor"), AppSpec("late")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    pool = make_pool(tmp_path_factory, "meta", APPS, manager={"status_interval": 60.0})
    yield pool
    pool.close()


@pytest.fixture(params=MODE_PARAMS)
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


def test_retained_metadata_reaches_late_subscriber(runtime: Runtime) -> None:
    """8.3.2 (QoS 1, retention flag true) and 9.4: "the Data Marketplace will automatically send a copy of the
    latest metadata to any new client which subscribes the /meta/ sub-topic"."""
    sensor = runtime.client("sensor")
    sub = unique("tx")
    top_oil = {"Name": "Top oil", "Units": "C", "DisplayUnits": "degC", "SigFigs": 3}
    topics = {
        f"sensor/data/{sensor.iid}/{sub}/top-oil/meta": top_oil,
        f"algorithm/data/{sensor.iid}/{sub}/hst/meta": {"Name": "Hot spot", "Units": "C", "SigFigs": 2},
    }
    payloads = {topic: json.dumps(meta, separators=(",", ":")).encode() for topic, meta in topics.items()}
    try:
        for topic, payload in payloads.items():
            sensor.publish(topic, {"Name": "stale"}, qos=1, retain=True)
            sensor.publish(topic, payload, qos=1, retain=True)  # only the latest is kept
        sensor.close()
        late = runtime.client("late")
        for topic, payload in payloads.items():
            assert late.subscribe(topic.rsplit("/", 2)[0] + "/+/meta", 1) == 1
            msg = late.wait_for(topic, what="(retained metadata)")
            assert msg.retain, "a late subscriber gets the metadata as a retained message"
            assert msg.qos == 1
            assert msg.payload == payload
            assert len(late.received(topic)) == 1, "only the latest retained metadata"
    finally:
        cleaner = runtime.client("sensor")
        for topic in payloads:
            cleaner.publish(topic, b"", qos=1, retain=True)  # clear the retained message (shared brokers)
