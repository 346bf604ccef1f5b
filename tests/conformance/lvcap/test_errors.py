"""Error reports (Annex 4 sections 7 and 8.2.4, Tables 10-11) against a running runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conformance.lvcap.conftest import (
    DSC_QUERY_EMPTY,
    DSC_QUERY_INVALID,
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

APPS = [AppSpec("reporter"), AppSpec("sloppy"), AppSpec("garbler")]
ERRNO_SENSOR = 11


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


def last_error_id(runtime: Runtime) -> int:
    return max((int(e.get("ID") or 0) for e in runtime.stored_errors()), default=0)


def test_invalid_json_status_response_records_errno_json_invalid(runtime: Runtime) -> None:
    """Invalid JSON anywhere is recorded as ERRNO_JSON_INVALID (Table 11): a status/response/<IID> that does not
    parse is a failed status request for the Container Manager (8.2.2) and an error in storage."""
    app = runtime.client("garbler")
    since = last_error_id(runtime)
    app.publish(f"status/response/{app.iid}", b'{"Status": 1, "Message"', qos=1)
    error = runtime.wait_error(
        lambda e: int(e["ID"]) > since and e.get("SourceIID") == app.iid and "status/response" in str(e["Message"]),
        10,
        "about the invalid status response",
    )
    assert error.get("Errno") == ERRNO_JSON_INVALID, error
    assert runtime.running(), runtime.log()


@pytest.mark.parametrize("newdata", [False, True], ids=["storage-request", "newdata-request"])
def test_invalid_json_storage_request_answers_invalid_and_records_errno_json_invalid(
    runtime: Runtime, newdata: bool
) -> None:
    """A storage/request/<IID> or storage/request/newdata/<IID> that is not JSON is answered DSC_QUERY_INVALID
    (Table 18) and recorded as ERRNO_JSON_INVALID (Table 11); a well-formed but invalid query only gets Status 9."""
    app = runtime.client("garbler")
    suffix = "newdata/" if newdata else ""
    app.subscribe_ok(f"storage/response/{suffix}{app.iid}", 1)
    ask = app.newdata if newdata else app.query
    since = last_error_id(runtime)
    answer = ask(b'{"MaxLength": 5,').json()
    assert answer["Status"] == DSC_QUERY_INVALID and answer["Response"] == [], answer
    error = runtime.wait_error(
        lambda e: int(e["ID"]) > since and e.get("SourceIID") == app.iid and "invalid storage query" in str(e),
        10,
        f"about the invalid {suffix}request",
    )
    assert error.get("Errno") == ERRNO_JSON_INVALID, error
    assert f"storage/request/{suffix}{app.iid}" in str(error.get("Message")), error
    # Valid JSON but an invalid query: Status 9 only. The next invalid-JSON request's error is the one
    # stored right after the first, so nothing was recorded in between.
    wrong = ask({"MaxLength": 0}).json()
    assert wrong["Status"] == DSC_QUERY_INVALID, wrong
    ask(b"not json")
    following = runtime.wait_error(lambda e: int(e["ID"]) > int(error["ID"]), 10, "after the first one")
    assert following.get("Errno") == ERRNO_JSON_INVALID, following
    assert "Expecting value" in str(following.get("Message")), following


def test_storage_data_that_is_valid_json_but_not_an_object_is_refused_with_errno_sensor(runtime: Runtime) -> None:
    """Section 9: every message is a JSON object, and the stored Data is returned as a JSON Object (Tables 17,
    19). [1,2,3] on storage/data/<IID>/arr parses, so it is not ERRNO_JSON_INVALID but Table 11's errno for a
    valid payload of the wrong type (ERRNO_SENSOR, 11); nothing is stored."""
    app = runtime.client("garbler")
    app.subscribe_ok(f"storage/response/{app.iid}", 1)
    sub = unique("arr")
    app.publish(f"storage/data/{app.iid}/{sub}", b"[1,2,3]", qos=2)
    error = runtime.wait_error(
        lambda e: e.get("SourceIID") == app.iid and sub in str(e.get("Message")), 10, "an error about the array"
    )
    assert error.get("Errno") == ERRNO_SENSOR, error
    assert app.query({"InstanceID": app.iid, "SubTopic": sub}).json()["Status"] == DSC_QUERY_EMPTY


def test_error_report_with_an_errno_outside_table_11_is_stored(runtime: Runtime) -> None:
    """Table 10: Errno is an Integer; one that Table 11 does not list is still stored as given."""
    app = runtime.client("reporter")
    message = "vendor-specific " + unique()
    app.publish(f"storage/data/error/{app.iid}", {"Errno": 99, "Message": message}, qos=1)
    error = runtime.wait_error(lambda e: e.get("Message") == message, 10, f"with Message {message!r}")
    assert error.get("Errno") == 99, error
