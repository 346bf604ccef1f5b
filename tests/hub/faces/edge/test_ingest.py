"""Exactly-once storage of upload rows: the dedupe ledger, ID reuse, events after a crash, order."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridhub.hub.faces.edge.ingest import BatchError, EdgeIngest, UploadBatch, ledger_key, parse_batch
from gridhub.hub.pipeline.lvcap import UploadRow, map_rows
from gridhub.hub.store import Store, open_store
from tests.hub.store.conftest import pg_database, pg_store, sqlite_store  # noqa: F401 - fixtures

SIM = "gridhub_simulator_01"
KEY = f"site-a/{SIM}/60/busbar/l1/voltage-mean"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as opened:
        yield opened


def batch(ids: list[int], stamp: int = 1_700_000_000, data: dict[str, Any] | None = None) -> UploadBatch:
    rows = [
        {
            "ID": i,
            "Timestamp": stamp + i,
            "SubTopic": "/60/busbar/l1/voltage-mean",
            "Data": data or {"Timestamp": stamp + 60 * i, "Value": float(i), "Valid": True},
        }
        for i in ids
    ]
    return parse_batch({"Batch": "t", "Tables": [{"TableName": SIM, "TableRows": rows}]})


def test_ids_reused_after_an_edge_database_reset_are_new_rows(store: Store) -> None:
    ingest = EdgeIngest(store)
    assert ingest.ingest("site-a", "edge", batch([1, 2, 3])).stored == 3
    later = ingest.ingest("site-a", "edge", batch([1, 2, 3], stamp=1_800_000_000))
    assert later.stored == 3 and later.duplicates == 0
    assert store.count_samples(KEY) == 6


def test_out_of_order_ids_from_a_priority_first_drain_are_each_stored_once(store: Store) -> None:
    ingest = EdgeIngest(store)
    ingest.ingest("site-a", "edge", batch([9, 5]))
    result = ingest.ingest("site-a", "edge", batch(list(range(1, 11))))
    assert (result.stored, result.duplicates) == (8, 2)
    assert result.accepted[SIM] == list(range(1, 11))
    assert ingest.counters("site-a", "edge").stored == 10


def test_a_restarted_hub_still_knows_what_it_stored(store: Store) -> None:
    EdgeIngest(store).ingest("site-a", "edge", batch([1, 2, 3]))
    again = EdgeIngest(store).ingest("site-a", "edge", batch([1, 2, 3, 4]))  # a new process: no memory
    assert (again.stored, again.duplicates) == (1, 3)


def test_events_written_before_a_crash_are_not_duplicated_by_the_retry(store: Store) -> None:
    error = {"Errno": 12, "Message": "link down", "Timestamp": 1_700_000_100}
    retry = batch([1], data=error)
    ingest = EdgeIngest(store)
    ingest.ingest("site-a", "edge", batch([100]))  # creates the site
    # The first attempt got as far as appending its events, then the process died before the commit.
    store.append_events(map_rows("site-a", "edge", retry.rows).events)
    result = ingest.ingest("site-a", "edge", retry)
    assert result.stored == 1 and result.events == 0
    assert len(store.query_events("edge", asset="site-a", type="lvcap-error")) == 1


def test_duplicate_rows_inside_one_batch_count_once(store: Store) -> None:
    result = EdgeIngest(store).ingest("site-a", "edge", batch([1, 1, 2]))
    assert (result.stored, result.duplicates) == (2, 1)
    assert result.accepted[SIM] == [1, 1, 2]


def test_parse_batch_names_the_bad_place() -> None:
    with pytest.raises(BatchError, match=r"Tables\[0\]\.TableRows\[1\]\.Timestamp"):
        parse_batch(
            {
                "Tables": [
                    {
                        "TableName": SIM,
                        "TableRows": [{"ID": 1, "Timestamp": 1, "Data": {}}, {"ID": 2, "Timestamp": True, "Data": {}}],
                    }
                ]
            }
        )
    with pytest.raises(BatchError, match=r"ID: 4294967296 is out of range"):
        parse_batch({"Tables": [{"TableName": SIM, "TableRows": [{"ID": 2**32, "Timestamp": 1, "Data": {}}]}]})


def test_parse_batch_normalises_sub_topics_and_names_the_first_bad_field() -> None:
    def parsed(*rows: Any) -> UploadBatch:
        return parse_batch({"Tables": [{"TableName": SIM, "TableRows": list(rows)}]})

    ok = parsed(
        {"ID": 1, "Timestamp": 5, "SubTopic": None, "Data": 1},
        {"ID": 2, "Timestamp": 5, "SubTopic": "a/b", "Data": {}},
        {"ID": 3, "Timestamp": 5, "Data": None},
    )
    assert [(r.id, r.sub_topic, r.data) for r in ok.rows] == [(1, "/", 1), (2, "/a/b", {}), (3, "/", None)]
    good = {"ID": 1, "Timestamp": 5, "Data": {}}
    with pytest.raises(BatchError, match=r"TableRows\[1\]\.ID: expected an integer, got 'x'"):
        parsed(good, {"ID": "x", "Timestamp": True})  # the ID is named first, before Timestamp and Data
    with pytest.raises(BatchError, match=r"TableRows\[1\]\.Data: required"):
        parsed(good, {"ID": 2, "Timestamp": 5})
    with pytest.raises(BatchError, match=r"TableRows\[2\]\.SubTopic: expected a string"):
        parsed(good, good, {"ID": 2, "Timestamp": 5, "SubTopic": 7, "Data": {}})
    with pytest.raises(BatchError, match=r"TableRows\[0\]: expected an object"):
        parsed([1, 5, "/", {}])


def test_a_deleted_substation_document_is_created_again_on_the_next_upload(store: Store) -> None:
    ingest = EdgeIngest(store)
    ingest.ingest("site-a", "edge", batch([1]))
    store.delete_document("edge", "substations", "site-a")
    result = ingest.ingest("site-a", "edge", batch([2]))
    assert result.stored == 1
    assert ingest.counters("site-a", "edge").stored == 1  # counting starts again with the new document


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest) -> Store:
    """The store, once per backend (PostgreSQL from tests/hub/store/conftest.py)."""
    found: Store = request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "pg_store")
    return found


class Killed(BaseException):
    """The hub process dying: nothing after it runs, the open transaction is never committed."""


def test_a_hub_killed_while_committing_a_batch_stores_and_counts_it_exactly_once(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = any_store
    EdgeIngest(store).ingest("site-a", "edge", batch([1, 2, 3]))
    commit = store.write_samples_and_patch

    def dying(samples: Any, layer: str, collection: str, document_id: str, changes: Any) -> Any:
        def counted_then_killed(document: Any) -> Any:
            changes(document)  # the new counters are computed, the samples and marks are in the transaction
            raise Killed

        return commit(samples, layer, collection, document_id, counted_then_killed)

    monkeypatch.setattr(store, "write_samples_and_patch", dying)
    with pytest.raises(Killed):
        EdgeIngest(store).ingest("site-a", "edge", batch([4, 5, 6]))
    monkeypatch.undo()
    assert store.count_samples(KEY) == 3 and store.count_samples(ledger_key("site-a", SIM)) == 3
    counters = EdgeIngest(store).counters("site-a", "edge")
    assert (counters.received, counters.stored, counters.duplicates) == (3, 3, 0)
    retry = EdgeIngest(store).ingest("site-a", "edge", batch([4, 5, 6]))  # the hub restarted, the edge re-sends
    assert (retry.stored, retry.duplicates, retry.accepted) == (3, 0, {SIM: [4, 5, 6]})
    counters = EdgeIngest(store).counters("site-a", "edge")
    assert (counters.received, counters.stored, counters.rejected, counters.duplicates) == (6, 6, 0, 0)
    assert store.count_samples(KEY) == 6 and store.count_samples(ledger_key("site-a", SIM)) == 6


NOT_JSON = {
    11: {"Timestamp": 1_700_000_060, "Value": math.nan, "Valid": True},
    12: {"Timestamp": 1_700_000_060, "Value": math.inf, "Valid": True},
    13: {"Timestamp": 1_700_000_060, "StartPoint": 1_700_000_000, "Interval": 60, "Value": [1.0, -math.inf]},
    14: {"Timestamp": 1_700_000_060, "StartPoint": 50, "Interval": 50, "Value": [0.5], "Confidence": [math.nan]},
    15: {"Alarm": {"levels": [1.0, math.nan]}},  # not a standard object: an lvcap-message event otherwise
    16: {"Errno": 12, "Message": "link down", "Detail": {"rate": -math.inf}},
    17: {"Timestamp": 1_700_000_060, "Value": 1.0, "Valid": True, "Signature": math.nan},
    18: {"Note": "nul \x00 inside"},
}
NOT_JSON_ERRORS = {
    11: "Data.Value: expected a finite number (JSON has no NaN or Infinity), got NaN",
    12: "Data.Value: expected a finite number (JSON has no NaN or Infinity), got Infinity",
    13: "Data.Value[1]: expected a finite number (JSON has no NaN or Infinity), got -Infinity",
    14: "Data.Confidence[0]: expected a finite number (JSON has no NaN or Infinity), got NaN",
    15: "Data.Alarm.levels[1]: expected a finite number (JSON has no NaN or Infinity), got NaN",
    16: "Data.Detail.rate: expected a finite number (JSON has no NaN or Infinity), got -Infinity",
    17: "Data.Signature: expected a finite number (JSON has no NaN or Infinity), got NaN",
    18: "Data.Note: text with a NUL character (U+0000) cannot be stored",
}


def test_rows_holding_nan_infinity_or_nul_are_rejected_and_the_rest_stored(any_store: Store) -> None:
    store = any_store
    good = batch([1, 2]).rows
    bad = [UploadRow(SIM, i, 1_700_000_000 + i, "/60/busbar/l1/voltage-mean", data) for i, data in NOT_JSON.items()]
    upload = UploadBatch("b", [good[0], *bad, good[1]])
    result = EdgeIngest(store).ingest("site-a", "edge", upload)
    assert result.accepted == {SIM: [1, 2]}
    assert result.rejected == {SIM: [{"ID": i, "error": f"{SIM} row {i}: {NOT_JSON_ERRORS[i]}"} for i in NOT_JSON]}
    assert store.count_samples(KEY) == 2
    events = store.query_events("edge", asset="site-a")
    assert {e.type for e in events} == {"lvcap-rejected"}
    data = {e.payload["id"]: e.payload["data"] for e in events}
    assert data[11]["Value"] == "NaN" and data[12]["Value"] == "Infinity"
    assert data[13]["Value"] == [1.0, "-Infinity"] and data[14]["Confidence"] == ["NaN"]
    assert data[15] == {"Alarm": {"levels": [1.0, "NaN"]}} and data[16]["Detail"] == {"rate": "-Infinity"}
    assert data[18] == {"Note": "nul \\u0000 inside"}
    again = EdgeIngest(store).ingest("site-a", "edge", upload)  # the retry: same answer, nothing added
    assert again.accepted == {SIM: [1, 2]}
    assert [r["ID"] for r in again.rejected[SIM]] == list(NOT_JSON)
    assert len(store.query_events("edge", asset="site-a")) == len(NOT_JSON) and store.count_samples(KEY) == 2
    counters = EdgeIngest(store).counters("site-a", "edge")
    assert (counters.stored, counters.rejected, counters.duplicates) == (2, len(NOT_JSON), len(NOT_JSON) + 2)
