"""Exactly-once storage of upload rows: the dedupe ledger, ID reuse, events after a crash, order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridhub.hub.faces.edge.ingest import BatchError, EdgeIngest, UploadBatch, parse_batch
from gridhub.hub.pipeline.lvcap import map_rows
from gridhub.hub.store import Store, open_store

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
