"""Document measurements through the X-FLEX API: real-time state and series history stay consistent.

A written ``measurements.<name>`` item ({value, quality, timestamp}) replaces the document's item
whole when it is not older than it, and is always appended to the series
``<layer>/<collection>/<_id>/<name>``; both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gridhub.hub.model import Quality, parse_time, utc_now
from gridhub.hub.store import Store
from tests.hub.faces.xflex.conftest import API, Hub

URL = f"{API}/grid/generators"
KEY = "grid/generators/TSO/activePower"
T2021 = "2021-07-28T05:48:17.103000Z"
EVER = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def store_of(hub: Hub) -> Store:
    store: Store = hub.client.app.state.ctx.store  # type: ignore[attr-defined]
    return store


def insert_tso(hub: Hub, **item: Any) -> None:
    doc = {"_id": "TSO", "measurements": {"activePower": {"value": 4100.0, "quality": 0, "timestamp": T2021, **item}}}
    response = hub.client.post(URL, json=doc, headers=hub.admin)
    assert response.status_code == 200, response.text


def patch(hub: Hub, body: dict[str, Any]) -> None:
    response = hub.client.patch(f"{URL}/TSO", json=body, headers=hub.admin)
    assert response.status_code == 200, response.text


def state(hub: Hub, name: str = "activePower") -> dict[str, Any]:
    item: dict[str, Any] = hub.client.get(f"{URL}/TSO", headers=hub.admin).json()["data"]["measurements"][name]
    return item


def history(hub: Hub, key: str = KEY) -> list[tuple[datetime, float | None, Quality]]:
    return [(r.ts, r.value, r.quality) for r in store_of(hub).read_range(key, *EVER)]


def assert_consistent(hub: Hub, name: str = "activePower") -> None:
    """The document's item is the newest sample of its series."""
    item = state(hub, name)
    latest = store_of(hub).latest([f"grid/generators/TSO/{name}"])[f"grid/generators/TSO/{name}"]
    assert (parse_time(item["timestamp"], "timestamp"), float(item["value"])) == (latest.ts, latest.value)


def test_patch_without_timestamp_replaces_the_item_at_the_write_time(hub: Hub) -> None:
    insert_tso(hub)
    before = utc_now()
    patch(hub, {"measurements": {"activePower": {"value": 5}}})
    after = utc_now()
    item = state(hub)
    # The whole item is replaced: no old timestamp, no inherited quality 0 (invalid).
    assert set(item) == {"value", "timestamp"} and item["value"] == 5
    assert before <= parse_time(item["timestamp"], "timestamp") <= after
    old, new = history(hub)
    assert old == (datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC), 4100.0, Quality.INVALID)  # past kept
    assert new[1:] == (5.0, Quality(0)) and before <= new[0] <= after
    assert_consistent(hub)


def test_patch_without_timestamp_takes_the_patch_measurements_timestamp(hub: Hub) -> None:
    insert_tso(hub)
    patch(hub, {"measurementsTimestamp": "2022-01-01T00:00:00Z", "measurements": {"activePower": {"value": 6}}})
    assert state(hub) == {"value": 6, "timestamp": "2022-01-01T00:00:00.000000Z"}
    assert [h[:2] for h in history(hub)][-1] == (datetime(2022, 1, 1, tzinfo=UTC), 6.0)
    assert_consistent(hub)


def test_an_older_patch_goes_to_the_history_only(hub: Hub) -> None:
    insert_tso(hub, quality=1)
    patch(hub, {"measurements": {"activePower": {"value": 7, "timestamp": "2020-01-01T00:00:00Z"}}})
    assert state(hub) == {"value": 4100.0, "quality": 1, "timestamp": T2021}  # real-time state unchanged
    assert [h[:2] for h in history(hub)] == [
        (datetime(2020, 1, 1, tzinfo=UTC), 7.0),
        (datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC), 4100.0),
    ]
    assert_consistent(hub)
    # The same time replaces the item (and the sample: last write wins); a newer one too.
    patch(hub, {"measurements": {"activePower": {"value": 8, "timestamp": T2021}}})
    assert state(hub)["value"] == 8 and history(hub)[-1][1] == 8.0
    patch(hub, {"measurements": {"activePower": {"value": 9, "timestamp": "2021-07-28T06:00:00Z"}}})
    assert state(hub) == {"value": 9, "timestamp": "2021-07-28T06:00:00.000000Z"}
    assert len(history(hub)) == 3
    assert_consistent(hub)


def test_an_older_measurements_timestamp_does_not_move_the_document_back(hub: Hub) -> None:
    response = hub.client.post(
        URL,
        json={"_id": "TSO", "measurementsTimestamp": T2021, "measurements": {"activePower": {"value": 1}}},
        headers=hub.admin,
    )
    assert response.status_code == 200, response.text
    patch(hub, {"measurementsTimestamp": "2020-01-01T00:00:00Z", "measurements": {"activePower": {"value": 2}}})
    doc = hub.client.get(f"{URL}/TSO", headers=hub.admin).json()["data"]
    assert doc["measurementsTimestamp"] == T2021 and doc["measurements"]["activePower"]["value"] == 1
    assert [h[1] for h in history(hub)] == [2.0, 1.0]


def test_other_measurements_and_attributes_are_kept_and_null_removes_an_item(hub: Hub) -> None:
    doc = {
        "_id": "TSO",
        "substation": "CR_I8",
        "measurements": {
            "activePower": {"value": 1.0, "timestamp": T2021},
            "reactivePower": {"value": 2.0, "unit": "var", "timestamp": T2021},
        },
    }
    assert hub.client.post(URL, json=doc, headers=hub.admin).status_code == 200
    patch(
        hub,
        {"substation": "CR_J1", "measurements": {"activePower": {"value": 3.0, "timestamp": "2022-01-01T00:00:00Z"}}},
    )
    got = hub.client.get(f"{URL}/TSO", headers=hub.admin).json()["data"]
    assert got["substation"] == "CR_J1"
    assert got["measurements"]["reactivePower"] == {"value": 2.0, "unit": "var", "timestamp": T2021}
    assert len(history(hub, "grid/generators/TSO/reactivePower")) == 1  # not re-appended
    patch(hub, {"measurements": {"reactivePower": None}})
    got = hub.client.get(f"{URL}/TSO", headers=hub.admin).json()["data"]
    assert set(got["measurements"]) == {"activePower"}
    assert len(history(hub, "grid/generators/TSO/reactivePower")) == 1  # the history stays


def test_an_inserted_item_without_timestamp_keeps_its_time_across_later_writes(hub: Hub) -> None:
    before = utc_now()
    response = hub.client.post(
        URL, json={"_id": "TSO", "measurements": {"activePower": {"value": 1}}}, headers=hub.admin
    )
    assert response.status_code == 200, response.text
    stamped = state(hub)["timestamp"]  # the write time, written into the item
    assert before <= parse_time(stamped, "timestamp") <= utc_now()
    patch(hub, {"substation": "CR_I8"})  # changes _updated, not the measurement's time
    assert state(hub) == {"value": 1, "timestamp": stamped}
    assert_consistent(hub)


def test_a_patch_item_without_value_is_refused_and_changes_nothing(hub: Hub) -> None:
    insert_tso(hub)
    response = hub.client.patch(f"{URL}/TSO", json={"measurements": {"activePower": {"quality": 1}}}, headers=hub.admin)
    assert response.status_code == 400
    assert (
        response.json()["status"] == "error"
        and "measurements.activePower: value is missing" in response.json()["message"]
    )
    assert state(hub)["value"] == 4100.0 and len(history(hub)) == 1


def test_patch_of_many_documents_applies_the_same_rules(hub: Hub) -> None:
    insert_tso(hub)
    body = [
        {"_id": "TSO", "measurements": {"activePower": {"value": 11, "timestamp": "2019-01-01T00:00:00Z"}}},
        {"_id": "TSO", "measurements": {"activePower": {"value": 12, "timestamp": "2023-01-01T00:00:00Z"}}},
    ]
    response = hub.client.patch(URL, json=body, headers=hub.admin)
    assert response.status_code == 200 and response.json()["data"]["ok"] == 2
    assert state(hub) == {"value": 12, "timestamp": "2023-01-01T00:00:00.000000Z"}
    assert [h[1] for h in history(hub)] == [11.0, 4100.0, 12.0]
    assert_consistent(hub)
