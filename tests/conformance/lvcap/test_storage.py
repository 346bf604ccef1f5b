"""Data storage (Annex 4 sections 7, 8.4, 8.6, Tables 16-19) against a running runtime.

One runtime per mode is shared by the module; every test uses sub-topics of its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conformance.lvcap.conftest import (
    DSC_QUERY_EMPTY,
    DSC_QUERY_INVALID,
    DSC_QUERY_MORE,
    DSC_QUERY_OK,
    DSC_QUERY_TABLE_DENIED,
    DSC_QUERY_TOO_LONG,
    MODE_PARAMS,
    AppSpec,
    LvcapClient,
    Received,
    Runtime,
    RuntimePool,
    make_pool,
    shared,
    unique,
)

APPS = [AppSpec("writer"), AppSpec("reader"), AppSpec("stranger")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    pool = make_pool(tmp_path_factory, "storage", APPS, manager={"status_interval": 60.0}, read={"reader": ["writer"]})
    yield pool
    pool.close()


@pytest.fixture(params=MODE_PARAMS)
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


@pytest.fixture
def writer(runtime: Runtime) -> LvcapClient:
    app = runtime.client("writer")
    app.subscribe_ok(f"storage/response/{app.iid}", 1)
    return app


def subscribed(runtime: Runtime, name: str) -> LvcapClient:
    app = runtime.client(name)
    app.subscribe_ok(f"storage/response/{app.iid}", 1)
    return app


def ask(app: LvcapClient, body: bytes | str | dict[str, Any]) -> tuple[dict[str, Any], Received]:
    """Send storage/request/<IID>, check the response's QoS and retain flag (Table 19), decode it."""
    msg = app.query(body)
    assert msg.qos == 1, f"storage/response must be QoS 1 (Table 19), got {msg.qos}"
    assert not msg.retain, "storage/response must not be retained"
    answer = msg.json()
    assert isinstance(answer, dict) and "Status" in answer and "Response" in answer, answer
    assert isinstance(answer["Response"], list), answer
    return answer, msg


def ask_until(
    app: LvcapClient, body: dict[str, Any], done: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> tuple[dict[str, Any], Received]:
    """Repeat a query until its answer satisfies done (storage is asynchronous to the publisher)."""
    deadline = time.monotonic() + timeout
    while True:
        answer, msg = ask(app, body)
        if done(answer) or time.monotonic() > deadline:
            return answer, msg
        time.sleep(0.1)


def rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for table in answer["Response"] for row in table["TableRows"]]


def scalar(value: float, **extra: Any) -> dict[str, Any]:
    return {"Timestamp": int(time.time()), "Value": value, "Valid": True, **extra}


def test_algorithm_data_with_tostore_true_is_stored(writer: LvcapClient) -> None:
    """8.4: "If the JSON payload is to be stored ... it must have a KEY "ToStore" and the value set to true"."""
    sub = unique("alg") + "/T1/load"
    payload = json.dumps(scalar(240.5, ToStore=True), separators=(",", ":")).encode()
    writer.publish(f"algorithm/data/{writer.iid}/{sub}", payload, qos=1)
    answer, _ = ask_until(writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: a["Status"] == DSC_QUERY_OK)
    assert answer["Status"] == DSC_QUERY_OK, answer
    [row] = rows(answer)
    assert row["Data"] == json.loads(payload)
    assert row["SubTopic"] == "/" + sub


def test_algorithm_data_without_tostore_is_not_stored(writer: LvcapClient) -> None:
    """8.4: "If this is not present or is set to false then the data will not be stored"."""
    sub = unique("alg")
    topic = f"algorithm/data/{writer.iid}/{sub}"
    writer.publish(topic, scalar(1.0), qos=1)
    writer.publish(topic, scalar(2.0, ToStore=False), qos=1)
    writer.publish(topic, scalar(3.0, ToStore=True), qos=1)  # in-order marker: once it is stored, so were the others
    answer, _ = ask_until(writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: a["Status"] == DSC_QUERY_OK)
    assert [row["Data"]["Value"] for row in rows(answer)] == [3.0], answer


def test_storage_data_is_always_stored(writer: LvcapClient) -> None:
    """Table 19: storage/data/<IID>/<sub> (QoS 2) stores anything, "equivalent to publishing data on
    algorithm/data/<IID> with the ToStore flag true" - whatever ToStore says."""
    sub = unique("st")
    topic = f"storage/data/{writer.iid}/{sub}"
    refused = scalar(5.0, ToStore=False)
    writer.publish(topic, {"Anything": [1, 2, 3]}, qos=2)
    writer.publish(topic, refused, qos=2)
    answer, _ = ask_until(
        writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: len(rows(a)) >= 2 if a["Status"] == 1 else False
    )
    assert answer["Status"] == DSC_QUERY_OK, answer
    assert sorted(json.dumps(r["Data"], sort_keys=True) for r in rows(answer)) == sorted(
        [json.dumps({"Anything": [1, 2, 3]}), json.dumps(refused, sort_keys=True)]
    )


def test_storage_request_with_every_table_16_key_gets_every_table_17_key(writer: LvcapClient) -> None:
    """8.6, Tables 16 and 17: a query using every request key is answered with Status, Response[],
    TableName, TableRows[], ID, Timestamp, SubTopic (leading '/') and Data, filtered as asked."""
    sub = unique("all")
    topic = f"storage/data/{writer.iid}/{sub}"
    for value, extra in ((1.0, {"Priority": 1}), (2.0, {"Priority": 3}), (3.0, {"Priority": 5}), (4.0, {})):
        writer.publish(topic, scalar(value, **extra), qos=2)
    base = {"InstanceID": writer.iid, "SubTopic": sub}
    ask_until(writer, {**base, "MaxLength": 10}, lambda a: len(rows(a)) == 4)
    now = int(time.time())
    query = {
        "MaxLength": 10,
        "StartTime": now - 3600,
        "EndTime": now + 3600,
        "PreferOldest": True,
        "InstanceID": writer.iid,
        "SubTopic": sub,
        "MinPriority": 1,
        "MaxPriority": 3,
        "Timestamp": now,
        "Signature": {},
    }
    answer, _ = ask(writer, query)
    assert answer["Status"] == DSC_QUERY_OK, answer
    [table] = answer["Response"]
    assert table["TableName"] == writer.iid
    assert [row["Data"]["Value"] for row in table["TableRows"]] == [1.0, 2.0], "priority 1..3, oldest first"
    for row in table["TableRows"]:
        assert set(row) >= {"ID", "Timestamp", "SubTopic", "Data"}, row
        assert isinstance(row["ID"], int) and isinstance(row["Timestamp"], int)
        assert abs(row["Timestamp"] - now) < 3600
        assert row["SubTopic"] == "/" + sub
    later, _ = ask(writer, {**query, "StartTime": now + 1800})
    assert later["Status"] == DSC_QUERY_EMPTY, later
    earlier, _ = ask(writer, {**query, "EndTime": now - 1800})
    assert earlier["Status"] == DSC_QUERY_EMPTY, earlier


def test_query_status_empty(writer: LvcapClient) -> None:
    """Table 18: DSC_QUERY_EMPTY (2) "The query was valid, but found no records"."""
    answer, _ = ask(writer, {"InstanceID": writer.iid, "SubTopic": unique("nothing")})
    assert answer["Status"] == DSC_QUERY_EMPTY, answer
    assert rows(answer) == []


def test_query_status_table_denied(runtime: Runtime, writer: LvcapClient) -> None:
    """Table 18: DSC_QUERY_TABLE_DENIED (3) for a table the app may not read ([storage.read] grants it)."""
    sub = unique("den")
    writer.publish(f"storage/data/{writer.iid}/{sub}", scalar(9.0), qos=2)
    ask_until(writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: a["Status"] == DSC_QUERY_OK)
    stranger = subscribed(runtime, "stranger")
    denied, _ = ask(stranger, {"InstanceID": writer.iid, "SubTopic": sub})
    assert denied["Status"] == DSC_QUERY_TABLE_DENIED, denied
    assert denied["Response"] == [], "an error answer has an empty Response array (Table 15)"
    reader = subscribed(runtime, "reader")
    allowed, _ = ask(reader, {"InstanceID": writer.iid, "SubTopic": sub})
    assert allowed["Status"] == DSC_QUERY_OK, allowed
    assert [row["Data"]["Value"] for row in rows(allowed)] == [9.0]


def test_query_status_too_long(runtime: Runtime) -> None:
    """8.5.1: "a request for 16 000 records will always fail (DSC_QUERY_TOO_LONG ...), even if the table
    is empty"."""
    app = subscribed(runtime, "stranger")
    answer, _ = ask(app, {"MaxLength": 16000, "InstanceID": app.iid, "SubTopic": unique("none")})
    assert answer["Status"] == DSC_QUERY_TOO_LONG, answer
    assert answer["Response"] == []
    allowed, _ = ask(app, {"MaxLength": 100, "InstanceID": app.iid, "SubTopic": unique("none")})
    assert allowed["Status"] == DSC_QUERY_EMPTY, "8.5.1: A query for 100 records will always be permitted"


def test_query_status_more(writer: LvcapClient) -> None:
    """Table 18: DSC_QUERY_MORE (8): "there are more than MaxLength results. The first MaxLength results are
    returned"; newest by default, oldest with PreferOldest (Table 16)."""
    sub = unique("more")
    for value in (1.0, 2.0, 3.0):
        writer.publish(f"storage/data/{writer.iid}/{sub}", scalar(value), qos=2)
    base = {"InstanceID": writer.iid, "SubTopic": sub}
    ask_until(writer, base, lambda a: len(rows(a)) == 3)
    newest, _ = ask(writer, {**base, "MaxLength": 2})
    assert newest["Status"] == DSC_QUERY_MORE, newest
    assert sorted(row["Data"]["Value"] for row in rows(newest)) == [2.0, 3.0]
    oldest, _ = ask(writer, {**base, "MaxLength": 2, "PreferOldest": True})
    assert oldest["Status"] == DSC_QUERY_MORE, oldest
    assert sorted(row["Data"]["Value"] for row in rows(oldest)) == [1.0, 2.0]
    exact, _ = ask(writer, {**base, "MaxLength": 3})
    assert exact["Status"] == DSC_QUERY_OK, "OK when the results set is <= MaxLength"


@pytest.mark.parametrize(
    "body", [b"not json", b"", b"{}", b"[1, 2]"], ids=["not-json", "empty-payload", "empty-object", "not-an-object"]
)
def test_query_status_invalid(writer: LvcapClient, body: bytes) -> None:
    """Table 18: DSC_QUERY_INVALID (9) "The JSON query object is empty or not valid JSON and cannot be parsed"."""
    answer, _ = ask(writer, body)
    assert answer["Status"] == DSC_QUERY_INVALID, answer
    assert answer["Response"] == []


def test_subtopic_has_leading_slash_and_top_level_is_slash(writer: LvcapClient) -> None:
    """Table 17 / Figure 8: "the sub-topic string returned always starts with a '/' character. Messages with
    no sub-topic are returned with sub-topic string of '/'"; Table 16: SubTopic "" selects the top level."""
    sub = unique("deep") + "/a/b"
    top = scalar(11.0, Marker=unique("top"))
    writer.publish(f"storage/data/{writer.iid}", top, qos=2)
    writer.publish(f"storage/data/{writer.iid}/{sub}", scalar(12.0), qos=2)
    answer, _ = ask_until(
        writer,
        {"InstanceID": writer.iid, "SubTopic": "", "MaxLength": 100},
        lambda a: any(r["Data"].get("Marker") == top["Marker"] for r in rows(a)),
    )
    assert answer["Status"] in (DSC_QUERY_OK, DSC_QUERY_MORE), answer
    assert {row["SubTopic"] for row in rows(answer)} == {"/"}, answer
    deep, _ = ask_until(writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: a["Status"] == DSC_QUERY_OK)
    assert [row["SubTopic"] for row in rows(deep)] == ["/" + sub]


def test_subtopic_as_returned_with_its_leading_slash_selects_the_same_records(writer: LvcapClient) -> None:
    """Responses give SubTopic with a leading '/' (Table 17); a query that sends it back that way selects
    the same records as one without it (Table 16), and "/" alone means the top level, like ""."""
    sub = unique("slash") + "/x/y"
    writer.publish(f"storage/data/{writer.iid}/{sub}", scalar(21.0), qos=2)
    plain, _ = ask_until(writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: a["Status"] == DSC_QUERY_OK)
    slashed, _ = ask(writer, {"InstanceID": writer.iid, "SubTopic": "/" + sub})
    assert slashed["Status"] == DSC_QUERY_OK, slashed
    assert rows(slashed) == rows(plain) and [r["SubTopic"] for r in rows(slashed)] == ["/" + sub]
    top, _ = ask(writer, {"InstanceID": writer.iid, "SubTopic": "/", "MaxLength": 100})
    assert top["Status"] in (DSC_QUERY_OK, DSC_QUERY_MORE, DSC_QUERY_EMPTY), top
    assert {row["SubTopic"] for row in rows(top)} <= {"/"}, top


def test_stored_data_is_returned_byte_identical(writer: LvcapClient) -> None:
    """Section 7: "The payload an Application sends to be stored will be retrieved unaltered" (stored as a
    BLOB "so that no alterations are made to the JSON object"), whitespace and escapes included."""
    sub = unique("raw")
    payload = (
        '{ "Timestamp" : 1504110640,\n  "Value":240.0 ,"Valid": true,\t"ToStore":true,'
        ' "Text": "caf\\u00e9 \u00e9 \\"q\\"", "Big": 1.50e3, "Nested": {"a" : [ 1, 2 ]} }'
    ).encode("utf-8")
    writer.publish(f"algorithm/data/{writer.iid}/{sub}", payload, qos=1)
    answer, msg = ask_until(writer, {"InstanceID": writer.iid, "SubTopic": sub}, lambda a: a["Status"] == DSC_QUERY_OK)
    assert answer["Status"] == DSC_QUERY_OK, answer
    assert payload in msg.payload, f"stored payload altered: {msg.payload!r}"
    assert rows(answer)[0]["Data"] == json.loads(payload)
