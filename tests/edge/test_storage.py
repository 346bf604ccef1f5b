"""Tests of the Data Storage Application: the database directly, then the service over a real broker."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.edge.settings import ConfigError
from gridhub.edge.storage import (
    STORAGE_SOURCE,
    ErrorRecord,
    StorageDB,
    StorageService,
    StorageSettings,
    StoreRecord,
    _decode_object,
    storage_client,
)
from gridhub.formats import lvcap
from gridhub.formats.lvcap import Errno, LvcapError, QueryStatus, StorageQuery, UploadedNotice
from gridhub.sdk.mqtt import BrokerAddress

APP = "acme_thermal_01"
OTHER = "acme_profiler_04"
SIM = "gridhub_simulator_01"
UP1 = "gridhub_uploader_01"
UP2 = "nortech_ihost_01"
T0 = 1_700_000_000


def q(**keys: Any) -> StorageQuery:
    """A StorageQuery from Table 16 keys, as an app would send it."""
    return StorageQuery.from_json(keys, where="test query")


def decoded(db: StorageDB, requester: str, query: StorageQuery, allowed: list[str], **kw: Any) -> dict[str, Any]:
    """The response payload as the requesting app would parse it."""
    result: dict[str, Any] = json.loads(db.query_payload(requester, query, allowed, **kw))
    return result


def ids(response: dict[str, Any], table: str | None = None) -> list[int]:
    return [
        row["ID"] for group in response["Response"] if table in (None, group["TableName"]) for row in group["TableRows"]
    ]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StorageDB]:
    database = StorageDB(tmp_path / "storage.sqlite", max_length=1000, upload={UP1: ["*"], UP2: [APP]})
    yield database
    database.close()


def fill(db: StorageDB, table: str, count: int, *, start: int = T0, step: int = 10, priority: int = 6) -> list[int]:
    return [
        db.store(table, "reading", json.dumps({"n": n}).encode(), priority, timestamp=start + n * step)
        for n in range(count)
    ]


# -- StorageDB: stored data comes back unaltered ------------------------------------------


def test_data_bytes_come_back_byte_identical_with_subtopics(db: StorageDB) -> None:
    odd = '{ "Value" :\t42 ,\n  "Name": "Température 🌡 \\u00e9", "ToStore":true }  '.encode()
    first = db.store(APP, None, odd, 6, timestamp=T0)
    second = db.store(APP, "T1/forecast/4h/capacity", b'{"Value":[1, 2.50, 3e2]}', 2, timestamp=T0 + 1)

    response = decoded(db, APP, q(PreferOldest=True), [])
    assert response["Status"] == QueryStatus.OK
    [group] = response["Response"]
    assert group["TableName"] == APP
    assert [(r["ID"], r["Timestamp"], r["SubTopic"]) for r in group["TableRows"]] == [
        (first, T0, "/"),
        (second, T0 + 1, "/T1/forecast/4h/capacity"),
    ]
    raw = db.query_payload(APP, q(PreferOldest=True, MaxLength=1), [])
    assert odd in raw  # spliced verbatim, whitespace and escapes untouched
    assert group["TableRows"][0]["Data"]["Name"] == "Température 🌡 é"


def test_write_checked_stores_rows_in_order_with_their_upload_bits(db: StorageDB) -> None:
    """The service's path: executemany per table, errors alongside, upload queues as write_batch's."""
    fill(db, APP, 1)
    db.write_checked(
        [
            StoreRecord(APP, "a", b'{"n":1}', 2, T0 + 1),
            StoreRecord(OTHER, None, b'{"n":2}'),
            ErrorRecord(APP, Errno.JSON_INVALID, "broken", timestamp=T0),
            StoreRecord(APP, "a/b", b'{"n":3}', 6, T0 + 2),
        ]
    )
    assert db.count(APP) == 3 and db.count(OTHER) == 1
    assert [(e.errno, e.message) for e in db.errors() if e.source_iid == APP] == [(Errno.JSON_INVALID, "broken")]
    rows = decoded(db, APP, q(PreferOldest=True), [APP])["Response"][0]["TableRows"]
    assert [(r["Data"]["n"], r["SubTopic"]) for r in rows[1:]] == [(1, "/a"), (3, "/a/b")]
    [high] = decoded(db, APP, q(MaxPriority=2), [APP])["Response"][0]["TableRows"]
    assert high["Data"]["n"] == 1
    # UP1 uploads every table, UP2 only APP: both queues hold the new APP rows, only UP1's the OTHER row.
    up1 = decoded(db, UP1, q(PreferOldest=True), ["*"], for_upload=UP1)
    up2 = decoded(db, UP2, q(PreferOldest=True), [APP], for_upload=UP2)
    assert len(ids(up1, APP)) == 3 and len(ids(up1, OTHER)) == 1
    assert len(ids(up2, APP)) == 3 and ids(up2, OTHER) == []


@pytest.mark.parametrize(
    "payload",
    [
        b'{"Timestamp":1504110640,"Value":240.0,"Valid":true,"ToStore":true}',
        b' {"a": [1, {"b": null}], "\\u00e9": "\\u00e9"} ',
        '{"Note":"\u00e9"}'.encode(),
        b"",
        b"   ",
        b"[1, 2]",
        b'"text"',
        b'{"Value": NaN}',
        b'{"Value": Infinity}',
        b'{"Value": 1',
        b"\xff\xfe{}",
        "\ufeff{}".encode(),
        b"{}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_the_fast_json_path_accepts_and_refuses_exactly_what_lvcap_does(payload: bytes) -> None:
    try:
        expected: object = lvcap.decode_json_object(payload, where="t")
    except LvcapError as exc:
        expected = str(exc)
    try:
        got: object = _decode_object(payload, "t")
    except LvcapError as exc:
        got = str(exc)
    assert got == expected


def test_repeated_identical_query_returns_the_same_data(db: StorageDB) -> None:
    fill(db, APP, 30)
    first = db.query_payload(UP1, q(MaxLength=10, PreferOldest=True), ["*"], for_upload=UP1)
    second = db.query_payload(UP1, q(MaxLength=10, PreferOldest=True), ["*"], for_upload=UP1)
    assert first == second


# -- Table 16 keys -----------------------------------------------------------------------


def test_max_length_defaults_to_100_and_more_reports_the_rest(db: StorageDB) -> None:
    fill(db, APP, 150)
    response = decoded(db, APP, q(PreferOldest=True), [])
    assert response["Status"] == QueryStatus.MORE
    assert len(ids(response)) == 100
    exact = decoded(db, APP, q(MaxLength=150), [])
    assert exact["Status"] == QueryStatus.OK and len(ids(exact)) == 150


def test_max_length_over_the_operator_limit_is_too_long_even_on_an_empty_table(tmp_path: Path) -> None:
    database = StorageDB(tmp_path / "s.sqlite", max_length=15000)
    try:
        assert decoded(database, APP, q(MaxLength=16000), []) == {"Status": QueryStatus.TOO_LONG, "Response": []}
        assert decoded(database, APP, q(MaxLength=15000), [])["Status"] == QueryStatus.EMPTY
    finally:
        database.close()
    small = StorageDB(tmp_path / "t.sqlite")  # the default limit: 100
    try:
        assert decoded(small, APP, q(MaxLength=101), [])["Status"] == QueryStatus.TOO_LONG
        assert decoded(small, APP, q(MaxLength=100), [])["Status"] == QueryStatus.EMPTY
    finally:
        small.close()


def test_start_and_end_time_select_on_the_stored_timestamp(db: StorageDB) -> None:
    stored = fill(db, APP, 10, step=10)  # T0, T0+10, ... T0+90
    response = decoded(db, APP, q(StartTime=T0 + 20, EndTime=T0 + 50, PreferOldest=True), [])
    assert ids(response) == stored[2:5]
    assert [row["Timestamp"] for row in response["Response"][0]["TableRows"]] == [T0 + 20, T0 + 30, T0 + 40]


def test_prefer_oldest_else_newest_first(db: StorageDB) -> None:
    stored = fill(db, APP, 10)
    assert ids(decoded(db, APP, q(MaxLength=3, PreferOldest=True), [])) == stored[:3]
    assert ids(decoded(db, APP, q(MaxLength=3), [])) == stored[::-1][:3]
    assert ids(decoded(db, APP, q(MaxLength=3, PreferOldest=False), [])) == stored[::-1][:3]


def test_instance_id_restricts_to_one_permitted_table(db: StorageDB) -> None:
    own = fill(db, APP, 2)
    sim = fill(db, SIM, 3)
    fill(db, OTHER, 4)
    assert decoded(db, APP, q(InstanceID=OTHER), [SIM]) == {"Status": QueryStatus.TABLE_DENIED, "Response": []}
    assert sorted(ids(decoded(db, APP, q(InstanceID=SIM), [SIM]))) == sim
    assert sorted(ids(decoded(db, APP, q(InstanceID=APP), [SIM]))) == own  # own table always readable
    everything = decoded(db, APP, q(InstanceID=""), [SIM])
    assert {group["TableName"] for group in everything["Response"]} == {APP, SIM}
    assert decoded(db, APP, q(InstanceID="acme_absent_07"), ["*"])["Status"] == QueryStatus.EMPTY


def test_subtopic_exact_empty_means_top_level_absent_means_all(db: StorageDB) -> None:
    top = db.store(APP, None, b"{}", timestamp=T0)
    alarm = db.store(APP, "alarm/highhigh", b"{}", timestamp=T0 + 1)
    db.store(APP, "alarm/highhigh/extra", b"{}", timestamp=T0 + 2)
    assert ids(decoded(db, APP, q(SubTopic=""), [])) == [top]
    assert ids(decoded(db, APP, q(SubTopic="alarm/highhigh"), [])) == [alarm]
    assert len(ids(decoded(db, APP, q(), []))) == 3


def test_priority_filters_and_six_means_no_priority(db: StorageDB) -> None:
    by_priority = {p: db.store(APP, "x", b"{}", p, timestamp=T0 + p) for p in range(1, 7)}
    assert ids(decoded(db, APP, q(MaxPriority=1), [])) == [by_priority[1]]
    assert ids(decoded(db, APP, q(MaxPriority=6), [])) == [by_priority[6]]
    assert ids(decoded(db, APP, q(MinPriority=4, PreferOldest=True), [])) == [by_priority[p] for p in (4, 5, 6)]
    both = decoded(db, APP, q(MinPriority=2, MaxPriority=3, PreferOldest=True), [])
    assert ids(both) == [by_priority[2], by_priority[3]]
    assert decoded(db, APP, q(MaxPriority=7), [])["Status"] == QueryStatus.INVALID


# -- Table 18 statuses -------------------------------------------------------------------


def test_too_old_when_start_time_is_beyond_the_maximum_age(tmp_path: Path) -> None:
    database = StorageDB(tmp_path / "s.sqlite", max_age_days=1)
    try:
        now = int(time.time())
        database.store(APP, None, b"{}", timestamp=now - 3 * 86_400)  # older than the limit, not yet purged
        recent = database.store(APP, None, b"{}", timestamp=now - 60)
        assert decoded(database, APP, q(StartTime=now - 2 * 86_400), [])["Status"] == QueryStatus.TOO_OLD
        assert ids(decoded(database, APP, q(), [])) == [recent]  # the operator's limit applies without StartTime
    finally:
        database.close()


def test_too_big_when_the_response_exceeds_the_payload_limit(tmp_path: Path) -> None:
    database = StorageDB(tmp_path / "s.sqlite", max_payload_bytes=2000)
    try:
        for n in range(5):
            database.store(APP, None, json.dumps({"pad": "x" * 500, "n": n}).encode(), timestamp=T0 + n)
        assert decoded(database, APP, q(), []) == {"Status": QueryStatus.TOO_BIG, "Response": []}
        assert decoded(database, APP, q(MaxLength=2), [])["Status"] == QueryStatus.MORE
    finally:
        database.close()


def test_empty_ok_and_invalid_statuses(db: StorageDB) -> None:
    assert decoded(db, APP, q(), []) == {"Status": QueryStatus.EMPTY, "Response": []}
    fill(db, APP, 1)
    assert decoded(db, APP, q(), [])["Status"] == QueryStatus.OK
    assert decoded(db, APP, q(MinPriority=0), [])["Status"] == QueryStatus.INVALID


def test_payload_encoding_matches_the_formats_encoder(db: StorageDB) -> None:
    fill(db, APP, 3)
    db.store(SIM, None, '{"é" : [1,\t2]}'.encode(), 1, timestamp=T0)
    for query in (q(PreferOldest=True), q(MaxLength=2), q(InstanceID=SIM)):
        assert db.query_payload(APP, query, [SIM]) == db.query(APP, query, [SIM]).encode()


def test_store_refuses_what_queries_could_not_return(db: StorageDB) -> None:
    with pytest.raises(ValueError, match="data"):
        db.store(APP, None, b'{"not": json')
    with pytest.raises(ValueError, match="sub-topic"):
        db.store(APP, "bad topic/with space", b"{}")
    assert db.count(APP) == 0


def test_internal_failure_answers_unavailable_not_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    database = StorageDB(tmp_path / "s.sqlite")
    database.store(APP, None, b"{}")
    database.close()  # a closed connection: every SQL call now fails
    assert decoded(database, APP, q(), []) == {"Status": QueryStatus.UNAVAILABLE, "Response": []}
    assert "answering UNAVAILABLE" in caplog.text


def test_rows_from_several_tables_are_grouped_by_table_in_time_order(db: StorageDB) -> None:
    a = db.store(APP, None, b"{}", timestamp=T0 + 1)
    s = db.store(SIM, None, b"{}", timestamp=T0 + 2)
    b = db.store(APP, None, b"{}", timestamp=T0 + 3)
    response = decoded(db, UP1, q(PreferOldest=True, MaxLength=2), ["*"], for_upload=UP1)
    assert response["Status"] == QueryStatus.MORE
    assert [(g["TableName"], [r["ID"] for r in g["TableRows"]]) for g in response["Response"]] == [
        (APP, [a]),
        (SIM, [s]),
    ]
    newest = decoded(db, UP1, q(MaxLength=2), ["*"], for_upload=UP1)
    assert [(g["TableName"], [r["ID"] for r in g["TableRows"]]) for g in newest["Response"]] == [(APP, [b]), (SIM, [s])]


# -- upload queues (8.5) -----------------------------------------------------------------


def test_merged_tables_answer_the_first_rows_in_time_order_with_ties_and_gaps(db: StorageDB) -> None:
    rows: list[tuple[int, int, str]] = []  # (Timestamp, ID, table): equal Timestamps across the tables
    for n in range(30):
        table = SIM if n % 3 == 0 else APP
        rows.append((T0 + n // 2, db.store(table, f"t{n}", b'{"n": %d}' % n, timestamp=T0 + n // 2), table))
    gone = [rows[4], rows[5], rows[9]]  # rows in the middle already uploaded
    for table in (APP, SIM):
        db.mark_uploaded(UP1, UploadedNotice(new_data=[(table, [i for _, i, t in gone if t == table])]))
    pending = sorted(row for row in rows if row not in gone)

    def answer(response: dict[str, Any]) -> set[tuple[str, int]]:
        for group in response["Response"]:  # each table's rows in time order
            stamps = [(r["Timestamp"], r["ID"]) for r in group["TableRows"]]
            assert stamps == sorted(stamps) or stamps == sorted(stamps, reverse=True)
        return {(g["TableName"], r["ID"]) for g in response["Response"] for r in g["TableRows"]}

    oldest = decoded(db, UP1, q(PreferOldest=True, MaxLength=12), ["*"], for_upload=UP1)
    assert oldest["Status"] == QueryStatus.MORE
    assert answer(oldest) == {(t, i) for _, i, t in pending[:12]}
    newest = decoded(db, UP1, q(MaxLength=12), ["*"], for_upload=UP1)
    assert answer(newest) == {(t, i) for _, i, t in pending[-12:]}
    # A plain query over both tables (no upload queue) from a StartTime on: uploaded rows too.
    later = decoded(db, APP, q(PreferOldest=True, StartTime=T0 + 10, MaxLength=100), ["*"])
    assert answer(later) == {(t, i) for ts, i, t in rows if ts >= T0 + 10}


def test_each_upload_app_has_its_own_queue(db: StorageDB) -> None:
    app_rows = fill(db, APP, 3)
    sim_rows = fill(db, SIM, 2)
    first = decoded(db, UP1, q(PreferOldest=True), ["*"], for_upload=UP1)
    assert sorted(ids(first, APP)) == app_rows and sorted(ids(first, SIM)) == sim_rows
    # UP2 may upload only APP's table.
    assert sorted(ids(decoded(db, UP2, q(PreferOldest=True), [APP], for_upload=UP2))) == app_rows
    assert decoded(db, UP2, q(InstanceID=SIM), [APP], for_upload=UP2)["Status"] == QueryStatus.TABLE_DENIED

    notice = UploadedNotice.from_json({"NewData": [{APP: app_rows}, {SIM: sim_rows[:1]}]}, where="test")
    assert db.mark_uploaded(UP1, notice) == 4
    assert ids(decoded(db, UP1, q(), ["*"], for_upload=UP1)) == sim_rows[1:]
    # UP2's queue is untouched by UP1's confirmations; plain queries still see everything.
    assert sorted(ids(decoded(db, UP2, q(), [APP], for_upload=UP2))) == app_rows
    assert len(ids(decoded(db, APP, q(), [SIM]))) == 5

    rest = UploadedNotice.from_json({"NewData": [{SIM: sim_rows[1:]}]}, where="test")
    db.mark_uploaded(UP1, rest)
    assert decoded(db, UP1, q(), ["*"], for_upload=UP1) == {"Status": QueryStatus.EMPTY, "Response": []}


def test_uploaded_marks_exactly_the_listed_rows_in_runs_gaps_and_repeats(db: StorageDB) -> None:
    stored = fill(db, APP, 1200)
    # Two long runs, a gap between them, lone IDs (as a priority-first drain sends), repeats,
    # an ID marked before and an ID that does not exist.
    listed = [*stored[10:700], *stored[702:1100], stored[1150], stored[1152], stored[5], stored[5], stored[1199]]
    assert db.mark_uploaded(UP1, UploadedNotice(new_data=[(APP, [stored[5]])])) == 1
    marked = db.mark_uploaded(UP1, UploadedNotice(new_data=[(APP, [*listed, stored[-1] + 1000])]))
    assert marked == len(set(listed)) - 1  # stored[5] was already marked
    pending = sorted(ids(decoded(db, UP1, q(MaxLength=1000), ["*"], for_upload=UP1)))
    assert pending == sorted(set(stored) - set(listed))
    assert stored[700] in pending and stored[701] in pending and stored[1151] in pending


def test_newdata_for_an_unconfigured_upload_app_is_denied(db: StorageDB) -> None:
    fill(db, APP, 1)
    assert decoded(db, OTHER, q(), ["*"], for_upload=OTHER)["Status"] == QueryStatus.TABLE_DENIED


def test_queues_survive_reopen_and_follow_configuration_changes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = StorageDB(path, upload={UP1: ["*"]})
    stored = fill(first, APP, 3)
    first.mark_uploaded(UP1, UploadedNotice.from_json({"NewData": [{APP: stored[:1]}]}, where="test"))
    first.close()
    # UP2 is configured later: everything already stored is waiting for it; UP1 keeps its state.
    second = StorageDB(path, upload={UP1: ["*"], UP2: [APP]})
    try:
        assert sorted(ids(decoded(second, UP1, q(), ["*"], for_upload=UP1))) == stored[1:]
        assert sorted(ids(decoded(second, UP2, q(), [APP], for_upload=UP2))) == stored
    finally:
        second.close()


# -- integrity, purge, durability ---------------------------------------------------------


def test_damaged_file_is_moved_aside_and_a_fresh_database_started(tmp_path: Path) -> None:
    path = tmp_path / "storage.sqlite"
    database = StorageDB(path)
    fill(database, APP, 200)
    database.close()
    with path.open("r+b") as handle:  # scribble over the pages after the header page
        handle.seek(4096)
        handle.write(b"\xde\xad\xbe\xef" * 4096)

    reopened = StorageDB(path)
    try:
        aside = list(tmp_path.glob("storage.sqlite.corrupt-*"))
        assert len(aside) == 1 and aside[0].stat().st_size > 0
        assert reopened.count(APP) == 0
        [error] = reopened.errors()
        assert error.source_iid == STORAGE_SOURCE and error.errno == Errno.IO and "damaged" in (error.message or "")
        reopened.store(APP, None, b"{}")
        assert reopened.count(APP) == 1
    finally:
        reopened.close()


def test_file_that_is_not_a_database_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "storage.sqlite"
    path.write_bytes(b"this is not an sqlite file at all" * 200)
    database = StorageDB(path)
    try:
        assert list(tmp_path.glob("storage.sqlite.corrupt-*"))
        assert database.store(APP, None, b"{}") >= 1
    finally:
        database.close()


def test_purge_by_age(tmp_path: Path) -> None:
    database = StorageDB(tmp_path / "s.sqlite", max_age_days=1)
    try:
        now = T0 + 10 * 86_400
        database.store(APP, None, b'{"old":1}', timestamp=now - 2 * 86_400)
        young = database.store(APP, None, b'{"young":1}', timestamp=now - 3600)
        result = database.purge(now)
        assert result.expired == 1
        assert ids(decoded(database, APP, q(), [], now=now)) == [young]
    finally:
        database.close()


def test_purge_by_quota_deletes_oldest_and_records_unconfirmed_losses(tmp_path: Path) -> None:
    database = StorageDB(tmp_path / "s.sqlite", quota_mb=0.25, upload={UP1: [APP]})
    try:
        payload = json.dumps({"pad": "y" * 2000}).encode()
        stored = [database.store(APP, None, payload, timestamp=T0 + n) for n in range(300)]  # ~700 kB
        database.mark_uploaded(UP1, UploadedNotice.from_json({"NewData": [{APP: stored[:50]}]}, where="test"))
        result = database.purge(T0 + 400)
        assert result.over_quota > 50
        assert database.used_bytes() <= 0.25 * 1024 * 1024
        assert database.count(APP) == 300 - result.over_quota
        oldest_left = ids(decoded(database, APP, q(MaxLength=1, PreferOldest=True), []))
        assert oldest_left == [stored[result.over_quota]]  # the oldest went first
        assert result.not_uploaded == result.over_quota - 50
        [error] = database.errors()
        assert str(result.not_uploaded) in (error.message or "") and "quota" in (error.message or "")
    finally:
        database.close()


_CHILD = """
import sys
from pathlib import Path
from gridhub.edge.storage import StorageDB
db = StorageDB(Path(sys.argv[1]))
for n in range(50):
    db.store("acme_thermal_01", "k", b'{"n":%d}' % n)
print("stored", flush=True)
sys.stdin.read()
"""


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "storage.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"stored"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    database = StorageDB(path)
    try:
        assert database.count(APP) == 50
        assert not list(tmp_path.glob("*.corrupt-*"))
    finally:
        database.close()


# -- settings ----------------------------------------------------------------------------


def test_settings_from_mapping(tmp_path: Path) -> None:
    settings = StorageSettings.from_mapping(
        {
            "database": "db/storage.sqlite",
            "max_length": 15000,
            "max_age_days": 30,
            "store": ["sensor/data/+/#"],
            "refuse": ["algorithm/data/acme_noisy_01/#"],
            "upload": {UP1: ["*"]},
            "read": {APP: [SIM]},
        },
        where="edge.toml [storage]",
        base_dir=tmp_path,
    )
    assert settings.database == tmp_path / "db/storage.sqlite"
    assert settings.max_length == 15000 and settings.upload == {UP1: ("*",)}
    assert settings.readable_tables(APP) == (APP, SIM) and settings.readable_tables(SIM) == (SIM,)
    defaults = StorageSettings.from_mapping({}, where="[storage]", base_dir=tmp_path)
    assert defaults.max_length == 100 and defaults.store == ("sensor/data/+/#",) and defaults.quota_mb == 1024


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_length": 16000}, "max_length"),
        ({"upload": {"not an iid": ["*"]}}, "upload.not an iid"),
        ({"read": {APP: ["bad table"]}}, f"read.{APP}"),
        ({"upload": {UP1: "*"}}, f"upload.{UP1}"),
        ({"quota": 5}, "unknown key"),
        ({"store": ["sensor/data/+/#", 3]}, "store"),
    ],
)
def test_settings_refuse_bad_values_saying_where(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"edge\.toml") as info:
        StorageSettings.from_mapping(data, where="edge.toml [storage]", base_dir=tmp_path)
    assert message in str(info.value)


# -- StorageService over a real broker ---------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class AppClient:
    """A plain paho client playing an LV-CAP app (or an upload app)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.messages: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{secrets.token_hex(4)}")
        self.client.on_message = self._on_message
        self.client.connect(*address)
        self.client.loop_start()
        assert wait_for(self.client.is_connected)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.setdefault(msg.topic, []).append(bytes(msg.payload))

    def subscribe(self, topic: str, qos: int) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(5)

    def publish(self, topic: str, payload: bytes | dict[str, Any], qos: int = 1) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, body, qos=qos).wait_for_publish(5)

    def request(self, request_topic: str, response_topic: str, query: bytes | dict[str, Any], qos: int) -> Any:
        with self.lock:
            before = len(self.messages.get(response_topic, []))
        self.publish(request_topic, query, qos)
        assert wait_for(lambda: len(self.messages.get(response_topic, [])) > before)
        with self.lock:
            return json.loads(self.messages[response_topic][before])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def iids() -> tuple[str, str]:
    vendor = f"t{secrets.token_hex(4)}"
    return f"{vendor}_app_01", f"{vendor}_uploader_01"


@pytest.fixture
def service(tmp_path: Path, external_mosquitto: tuple[str, int], iids: tuple[str, str]) -> Iterator[StorageService]:
    app, uploader = iids
    settings = StorageSettings.from_mapping(
        {
            "store": [f"sensor/data/{app}/#"],
            "refuse": [f"algorithm/data/{app}/noisy/#"],
            "upload": {uploader: [app]},
            "purge_interval": 0.5,
        },
        where="[storage]",
        base_dir=tmp_path,
    )
    database = StorageDB.from_settings(settings)
    client_id = f"gridhub-storage-{secrets.token_hex(4)}"
    svc = StorageService(settings, database, storage_client(BrokerAddress(*external_mosquitto), client_id))
    svc.start()
    yield svc
    svc.stop()
    database.close()
    # Remove the persistent session from the shared broker.
    cleaner = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    cleaner.connect(*external_mosquitto)
    cleaner.disconnect()


@pytest.mark.serial
def test_service_stores_what_the_api_says_and_answers_requests(
    service: StorageService, external_mosquitto: tuple[str, int], iids: tuple[str, str]
) -> None:
    app, _ = iids
    peer = AppClient(external_mosquitto)
    try:
        peer.subscribe(f"storage/response/{app}", 1)
        peer.publish(f"algorithm/data/{app}/T1/forecast", {"Value": 1, "ToStore": True, "Priority": 2})
        peer.publish(f"algorithm/data/{app}/T1/forecast", {"Value": 2, "ToStore": False})
        peer.publish(f"algorithm/data/{app}/T1/forecast", {"Value": 3})
        peer.publish(f"algorithm/data/{app}/noisy/x", {"Value": 4, "ToStore": True})
        peer.publish(f"storage/data/{app}", b'{"Value": 5 ,  "Note":"\xc3\xa9"}', qos=2)
        peer.publish(f"sensor/data/{app}/temperature", {"Value": 6, "Valid": True})
        peer.publish(f"algorithm/data/{app}/broken", b'{"Value": 7, "ToStore": tru')
        peer.publish(f"storage/data/{app}/after", {"Value": 8}, qos=2)
        assert wait_for(lambda: service.db.count(app) == 4)

        response = peer.request(f"storage/request/{app}", f"storage/response/{app}", {"PreferOldest": True}, 1)
        assert response["Status"] == QueryStatus.OK
        rows = response["Response"][0]["TableRows"]
        # QoS 1 and QoS 2 messages may overtake each other: compare regardless of arrival order.
        assert sorted((row["Data"]["Value"], row["SubTopic"]) for row in rows) == [
            (1, "/T1/forecast"),
            (5, "/"),
            (6, "/temperature"),
            (8, "/after"),
        ]
        [forecast] = [row["ID"] for row in rows if row["Data"]["Value"] == 1]
        assert ids(peer.request(f"storage/request/{app}", f"storage/response/{app}", {"MaxPriority": 2}, 1)) == [
            forecast
        ]
        invalid = peer.request(f"storage/request/{app}", f"storage/response/{app}", b"not json", 1)
        assert invalid == {"Status": QueryStatus.INVALID, "Response": []}
        empty = peer.request(f"storage/request/{app}", f"storage/response/{app}", b"{}", 1)
        assert empty == {"Status": QueryStatus.INVALID, "Response": []}
        zero = peer.request(f"storage/request/{app}", f"storage/response/{app}", {"MaxLength": 0}, 1)
        assert zero == {"Status": QueryStatus.INVALID, "Response": []}

        # Invalid JSON anywhere is an ERRNO_JSON_INVALID record: the data message and the "not json" query
        # (the valid-JSON but invalid queries, {} and MaxLength 0, are answered Status 9 only).
        wait_for(lambda: len([e for e in service.db.errors() if e.source_iid == app]) == 2)
        query_error, data_error = [e for e in service.db.errors() if e.source_iid == app]  # newest first
        assert data_error.errno == Errno.JSON_INVALID and "broken" in (data_error.message or "")
        assert query_error.errno == Errno.JSON_INVALID and "invalid storage query" in (query_error.message or "")
    finally:
        peer.close()


@pytest.mark.serial
def test_service_upload_queue_error_reports_and_manager_errors(
    service: StorageService, external_mosquitto: tuple[str, int], iids: tuple[str, str]
) -> None:
    app, uploader = iids
    peer = AppClient(external_mosquitto)
    try:
        peer.subscribe(f"storage/response/newdata/{uploader}", 2)
        peer.subscribe(f"storage/response/newdata/{app}", 2)
        for n in range(3):
            peer.publish(f"storage/data/{app}/reading", {"n": n}, qos=2)
        assert wait_for(lambda: service.db.count(app) == 3)

        request, response = f"storage/request/newdata/{uploader}", f"storage/response/newdata/{uploader}"
        first = peer.request(request, response, {"PreferOldest": True, "MaxLength": 2}, 2)
        assert first["Status"] == QueryStatus.MORE and first["Response"][0]["TableName"] == app
        got = ids(first)
        assert peer.request(request, response, {"PreferOldest": True, "MaxLength": 2}, 2) == first
        peer.publish(f"storage/uploaded/{uploader}", {"NewData": [{app: got}]})
        assert wait_for(lambda: len(ids(peer.request(request, response, {"PreferOldest": True}, 2))) == 1)
        last = peer.request(request, response, {"PreferOldest": True}, 2)
        peer.publish(f"storage/uploaded/{uploader}", {"NewData": [{app: ids(last)}]})
        assert wait_for(
            lambda: peer.request(request, response, {"PreferOldest": True}, 2)["Status"] == QueryStatus.EMPTY
        )

        denied = peer.request(
            f"storage/request/newdata/{app}", f"storage/response/newdata/{app}", {"PreferOldest": True}, 2
        )
        assert denied == {"Status": QueryStatus.TABLE_DENIED, "Response": []}

        peer.publish(f"storage/data/error/{app}", {"Errno": 11, "Message": "sensor unplugged", "Timestamp": T0})
        peer.publish(f"storage/data/error/{app}", {"Message": "no errno"})
        service.record_error(app, Errno.APPLICATION, "stopped after 5 failed status requests")
        assert wait_for(lambda: len([e for e in service.db.errors() if e.source_iid == app]) == 3)
        errors = {(e.errno, e.message, e.reported) for e in service.db.errors() if e.source_iid == app}
        assert (11, "sensor unplugged", T0) in errors
        assert (Errno.APPLICATION, "stopped after 5 failed status requests", None) in errors
        assert any(errno == Errno.JSON_INVALID for errno, _, _ in errors)
        assert service.db.count(app) == 3  # error reports are not data
    finally:
        peer.close()


@pytest.mark.serial
def test_service_stores_a_burst_whole_and_in_order_and_skips_a_bad_sub_topic(
    service: StorageService, external_mosquitto: tuple[str, int], iids: tuple[str, str]
) -> None:
    """Many messages handed to the writer in runs: all committed, in arrival order, none twice.

    Arrival order is the order the storage received them: mosquitto itself only promises to keep
    a topic's QoS 1 messages in order with max_inflight_messages 1 (its manual), and the shared
    test broker runs its default of 20, so it may deliver a few out of the published order.
    """
    app, _ = iids
    arrived: list[int] = []
    submit = service._submit

    def recording_submit(record: Any, ack: Any = None, *, checked: bool = False) -> None:
        if isinstance(record, StoreRecord) and record.iid == app:
            arrived.append(json.loads(record.data)["n"])
        submit(record, ack, checked=checked)

    service._submit = recording_submit  # type: ignore[method-assign]
    peer = AppClient(external_mosquitto)
    count = 800  # under the test broker's max_queued_messages (1000), beyond which it drops QoS 1 messages
    try:
        for n in range(count):
            peer.client.publish(f"algorithm/data/{app}/burst", json.dumps({"n": n, "ToStore": True}), qos=1)
            if n == count // 2:  # a sub-topic LV-CAP does not allow (4.4): not stored, the rest is
                peer.client.publish(f"algorithm/data/{app}/bad level", b'{"n": -1, "ToStore": true}', qos=1)
        peer.publish(f"storage/data/{app}/last", {"n": count})
        assert wait_for(lambda: service.db.count(app) == count + 1, timeout=30)
        with contextlib.closing(sqlite3.connect(service.db.path)) as conn:
            stored = [json.loads(data)["n"] for (data,) in conn.execute(f'SELECT Data FROM "{app}" ORDER BY ID')]
        assert sorted(stored) == list(range(count + 1))  # whole, none twice, the bad sub-topic skipped
        assert stored == arrived  # in the order the storage received them
        time.sleep(0.3)
        assert service.db.count(app) == count + 1
    finally:
        peer.close()
