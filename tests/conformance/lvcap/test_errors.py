"""Error reports (Annex 4 sections 7 and 8.2.4, Tables 10-11) against a running runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conformance.lvcap.conftest import (
    DSC_QUERY_EMPTY,
    DSC_QUERY_OK,
    ERRNO_JSON_INVALID,
    MODE_PARAMS,
    AppSpec,
    Runtime,
    RuntimePool,
    make_pool,
    shared,
    unique,
)

APPS = [AppSpec("reporter"), AppSpec("sloppy")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    pool = make_pool(tmp_path_factory, "errors", APPS, manager={"status_interval": 60.0})
    yield pool
    pool.close()


@pytest.fixture(params=MODE_PARAMS)
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


def test_error_report_is_stored(runtime: Runtime) -> None:
    """8.2.4 Table 10: storage/data/error/<IID> {"Errno", "Message", "Timestamp"} (QoS 1) logs an error to
    storage: it is in the storage database with its Errno, Message and the reporting IID."""
    app = runtime.client("reporter")
    message = "sensor bus timeout " + unique()
    app.publish(
        f"storage/data/error/{app.iid}", {"Errno": 11, "Message": message, "Timestamp": int(time.time())}, qos=1
    )
    error = runtime.wait_error(lambda e: e.get("Message") == message, 10, f"with Message {message!r}")
    assert error.get("Errno") == 11, error
    assert app.iid in {str(v) for v in error.values()}, f"the reporting IID is not recorded: {error}"
    # An error report without the optional keys is stored too (only Errno is required).
    app.publish(f"storage/data/error/{app.iid}", {"Errno": 12}, qos=1)
    runtime.wait_error(lambda e: e.get("Errno") == 12 and app.iid in {str(v) for v in e.values()}, 10, "Errno 12")


def test_invalid_json_is_not_stored_and_errno_json_invalid_is_recorded(runtime: Runtime) -> None:
    """Section 4.3 "All messages sent via the MQTT Broker must be valid JSON", Table 11 ERRNO_JSON_INVALID (1):
    an invalid payload on algorithm/data/<IID>/x is not stored, a JSON-invalid error is recorded, and the
    runtime keeps running (storage still answers and stores)."""
    app = runtime.client("sloppy")
    app.subscribe_ok(f"storage/response/{app.iid}", 1)
    sub = unique("bad")
    before = len(runtime.stored_errors())
    app.publish(f"algorithm/data/{app.iid}/{sub}", b'{"ToStore": true, "Value": 1.0,', qos=1)
    app.publish(f"storage/data/{app.iid}/{sub}", b"\xff\xfe not json", qos=2)
    runtime.wait_error(
        lambda e: e.get("Errno") == ERRNO_JSON_INVALID and app.iid in str(e), 10, "ERRNO_JSON_INVALID about it"
    )
    assert len(runtime.stored_errors()) > before
    assert runtime.running(), runtime.log()
    # Still working: a valid message on the same sub-topic is stored, and it is the only one there.
    good = {"ToStore": True, "Value": 2.0, "Valid": True, "Timestamp": 1}
    app.publish(f"algorithm/data/{app.iid}/{sub}", good, qos=1)
    deadline = time.monotonic() + 10
    while True:
        answer = app.query({"InstanceID": app.iid, "SubTopic": sub}).json()
        if answer["Status"] != DSC_QUERY_EMPTY or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer["Status"] == DSC_QUERY_OK, answer
    assert [row["Data"] for table in answer["Response"] for row in table["TableRows"]] == [good]
