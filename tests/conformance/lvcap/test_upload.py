"""Data Upload API (Annex 4 section 8.5, Tables 15-18) against a running runtime.

One runtime per mode is shared by the module; each test writes into a source table of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conformance.lvcap.conftest import (
    DSC_QUERY_EMPTY,
    DSC_QUERY_MORE,
    DSC_QUERY_OK,
    DSC_QUERY_TABLE_DENIED,
    MODE_PARAMS,
    AppSpec,
    LvcapClient,
    Runtime,
    RuntimePool,
    make_pool,
    shared,
)

APPS = [AppSpec(n) for n in ("srca", "srcb", "srcc", "upa", "upb", "noup")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    pool = make_pool(
        tmp_path_factory, "upload", APPS, manager={"status_interval": 60.0}, upload={"upa": ["*"], "upb": ["*"]}
    )
    yield pool
    pool.close()


@pytest.fixture(params=MODE_PARAMS)
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


def uploader(runtime: Runtime, name: str) -> LvcapClient:
    app = runtime.client(name)
    app.subscribe_ok(f"storage/response/newdata/{app.iid}", 2)
    return app


def newdata(app: LvcapClient, body: dict[str, Any]) -> dict[str, Any]:
    """Send storage/request/newdata/<IID> (QoS 2) and return the decoded response (QoS 2, Table 15)."""
    msg = app.newdata(body)
    assert msg.qos == 2, f"storage/response/newdata must be QoS 2 (Table 15), got {msg.qos}"
    assert not msg.retain
    answer = msg.json()
    assert isinstance(answer, dict) and isinstance(answer.get("Response"), list), answer
    return dict(answer)


def rows(answer: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(table["TableName"], row) for table in answer["Response"] for row in table["TableRows"]]


def uploaded(app: LvcapClient, answer: dict[str, Any]) -> None:
    """Tell the storage what was uploaded: storage/uploaded/<IID> {"NewData": [{"<IID>": [IDs]}]} (QoS 1)."""
    new_data = [{table["TableName"]: [row["ID"] for row in table["TableRows"]]} for table in answer["Response"]]
    app.publish(f"storage/uploaded/{app.iid}", {"NewData": new_data, "Timestamp": int(time.time())}, qos=1)


def store(runtime: Runtime, name: str, payloads: list[dict[str, Any]], total: int | None = None) -> None:
    """Publish payloads on storage/data/<IID>/series (QoS 2) and wait until the table holds total rows."""
    total = len(payloads) if total is None else total
    app = runtime.client(name)
    app.subscribe_ok(f"storage/response/{app.iid}", 1)
    for payload in payloads:
        app.publish(f"storage/data/{app.iid}/series", payload, qos=2)
    deadline = time.monotonic() + 10
    while True:
        answer = app.query({"InstanceID": app.iid, "MaxLength": 100}).json()
        count = sum(len(t["TableRows"]) for t in answer["Response"])
        if count >= total:
            break
        assert time.monotonic() < deadline, f"only {count} of {total} stored: {answer}\n{runtime.log()}"
        time.sleep(0.1)
    app.close()
    runtime.clients.remove(app)


def values(found: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    return sorted(row["Data"]["Value"] for _, row in found)


def drain(app: LvcapClient, body: dict[str, Any], check: Callable[[dict[str, Any]], None] | None = None) -> list[Any]:
    """Query, mark uploaded and repeat until DSC_QUERY_EMPTY (8.5 steps 1-4); return the statuses seen."""
    statuses = []
    for _ in range(200):
        answer = newdata(app, body)
        statuses.append(answer["Status"])
        if check:
            check(answer)
        if answer["Status"] == DSC_QUERY_EMPTY:
            return statuses
        assert answer["Status"] in (DSC_QUERY_OK, DSC_QUERY_MORE), answer
        uploaded(app, answer)
    raise AssertionError(f"never reached DSC_QUERY_EMPTY: {statuses[-10:]}")


def test_upload_app_drains_newdata_until_empty(runtime: Runtime) -> None:
    """8.5: request new data, upload, mark with storage/uploaded, "Continue querying until a response of
    DSC_QUERY_EMPTY"; MORE means more than MaxLength; uploaded records are never returned again."""
    source = runtime.iid("srca")
    payloads = [{"Timestamp": 1504110640 + i, "Value": float(i), "Valid": True} for i in range(5)]
    store(runtime, "srca", payloads)
    app = uploader(runtime, "upa")
    seen: list[tuple[str, dict[str, Any]]] = []
    body = {"MaxLength": 2, "PreferOldest": True, "InstanceID": source}

    def check(answer: dict[str, Any]) -> None:
        found = rows(answer)
        if answer["Status"] == DSC_QUERY_MORE:
            assert len(found) == 2, f"MORE returns the first MaxLength results: {answer}"
        if answer["Status"] == DSC_QUERY_OK:
            assert 1 <= len(found) <= 2, answer
        assert all(table == source for table, _ in found)
        seen.extend(found)

    statuses = drain(app, body, check)
    assert statuses == [DSC_QUERY_MORE, DSC_QUERY_MORE, DSC_QUERY_OK, DSC_QUERY_EMPTY], statuses
    assert values(seen) == [0.0, 1.0, 2.0, 3.0, 4.0], "every record exactly once, oldest first"
    assert [row["Data"] for _, row in seen] == payloads
    # Drain everything else queued for this upload app (all permitted tables), then nothing comes back.
    drain(app, {"MaxLength": 50})
    assert newdata(app, {"MaxLength": 100})["Status"] == DSC_QUERY_EMPTY
    # New data is queued again.
    store(runtime, "srca", [{"Timestamp": 1504110700, "Value": 99.0, "Valid": True}], total=len(payloads) + 1)
    fresh = newdata(app, {"InstanceID": source})
    assert fresh["Status"] == DSC_QUERY_OK and values(rows(fresh)) == [99.0], fresh


def test_newdata_honours_max_and_min_priority(runtime: Runtime) -> None:
    """Table 16 and 4.9: MaxPriority returns priorities <= it, 6 only messages stored without a valid
    Priority; MinPriority returns priorities >= it; both together must both hold."""
    source = runtime.iid("srcb")
    priorities: list[Any] = [1, 2, 4, 5, None, 7]
    payloads = []
    for i, priority in enumerate(priorities):
        payload: dict[str, Any] = {"Timestamp": 1504110640 + i, "Value": float(i), "Valid": True}
        if priority is not None:
            payload["Priority"] = priority
        payloads.append(payload)
    store(runtime, "srcb", payloads)
    app = uploader(runtime, "upa")
    base = {"InstanceID": source}
    high = newdata(app, {**base, "MaxPriority": 2})
    assert high["Status"] == DSC_QUERY_OK and values(rows(high)) == [0.0, 1.0], high
    unprioritised = newdata(app, {**base, "MaxPriority": 6})
    assert values(rows(unprioritised)) == [4.0, 5.0], "6: only messages with no (valid) Priority"
    low = newdata(app, {**base, "MinPriority": 4, "MaxPriority": 5})
    assert values(rows(low)) == [2.0, 3.0], low
    top = newdata(app, {**base, "MinPriority": 1, "MaxPriority": 1})
    assert values(rows(top)) == [0.0], top
    # The request "does not modify the database at all": the same request gives the same data.
    assert values(rows(newdata(app, {**base, "MaxPriority": 2}))) == [0.0, 1.0]


def test_second_upload_app_has_its_own_queue(runtime: Runtime) -> None:
    """8.5: "A separate (virtual) queue is maintained for each Upload Application": what one upload app
    marked as uploaded is still queued for the other."""
    source = runtime.iid("srcc")
    store(runtime, "srcc", [{"Timestamp": 1504110640 + i, "Value": float(i), "Valid": True} for i in range(3)])
    first = uploader(runtime, "upa")
    drain(first, {"InstanceID": source})
    assert newdata(first, {"InstanceID": source})["Status"] == DSC_QUERY_EMPTY
    second = uploader(runtime, "upb")
    answer = newdata(second, {"InstanceID": source})
    assert answer["Status"] == DSC_QUERY_OK, answer
    assert values(rows(answer)) == [0.0, 1.0, 2.0]
    drain(second, {"InstanceID": source})
    assert newdata(second, {"InstanceID": source})["Status"] == DSC_QUERY_EMPTY


def test_unauthorised_upload_app_gets_table_denied(runtime: Runtime) -> None:
    """8.5: upload apps "must be explicitly authorised by the system operator in the Data Storage
    Application configuration"; Table 18 DSC_QUERY_TABLE_DENIED (3), with an empty Response array."""
    store(runtime, "srca", [{"Timestamp": 1504110640, "Value": 1.0, "Valid": True}])
    app = uploader(runtime, "noup")
    for body in ({"MaxLength": 10}, {"InstanceID": runtime.iid("srca")}):
        answer = newdata(app, body)
        assert answer["Status"] == DSC_QUERY_TABLE_DENIED, answer
        assert answer["Response"] == [], json.dumps(answer)
