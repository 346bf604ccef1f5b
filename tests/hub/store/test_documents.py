"""Document rules both backends share: one sort order across JSON types, refused field names, measurements,
$in/$nin of any length."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from gridhub.hub.faces.live.selector import matches
from gridhub.hub.model import Layer
from gridhub.hub.store import SelectorError, Store, StoreError

LAYER = {"_id": "grid", "label": "Grid", "description": "", "collections": [{"name": "things"}]}

# One document per kind of value of "n"; the expected order is MongoDB's: missing/null, numbers,
# strings (by code point), objects, arrays, booleans (false < true); ties by _id.
VALUES: dict[str, Any] = {
    "s1": "1",
    "n1": 1,
    "n25": 2.5,
    "nneg": -3,
    "sB": "B",
    "sa": "a",
    "se": "\u00e9",
    "o": {"a": 1},
    "a": [1],
    "t": True,
    "f": False,
    "z": None,
}
ASCENDING = ["m", "z", "nneg", "n1", "n25", "s1", "sB", "sa", "se", "o", "a", "f", "t"]
DESCENDING = ["t", "f", "a", "o", "se", "sa", "sB", "s1", "n25", "n1", "nneg", "m", "z"]


@pytest.fixture
def things(store: Store) -> Store:
    store.put_layer(Layer.from_document(LAYER))
    docs = [{"_id": key, "n": value} for key, value in VALUES.items()] + [{"_id": "m"}]
    assert store.insert_documents("grid", "things", docs).ok
    return store


def order(store: Store, direction: int, **page: int) -> list[str]:
    return [a.id for a in store.find_documents("grid", "things", sort=[("n", direction)], **page)]


def test_sort_orders_json_types_like_mongodb_on_both_backends(things: Store) -> None:
    assert order(things, 1) == ASCENDING
    assert order(things, -1) == DESCENDING  # ties (null and missing) stay by _id ascending


@pytest.mark.parametrize("direction", [1, -1])
def test_pages_cover_the_order_exactly_once(things: Store, direction: int) -> None:
    pages = [order(things, direction, limit=2, skip=skip) for skip in range(0, 14, 2)]
    assert [doc for page in pages for doc in page] == (ASCENDING if direction == 1 else DESCENDING)


def test_the_issue_example_pages_the_same_on_both_backends(store: Store) -> None:
    store.put_layer(Layer.from_document(LAYER))
    store.insert_documents("grid", "things", [{"_id": "F1", "n": 1}, {"_id": "F2", "n": "1"}, {"_id": "F3", "n": 2.5}])
    assert [a.id for a in store.find_documents("grid", "things", sort=[("n", -1)], limit=2)] == ["F2", "F3"]
    assert [a.id for a in store.find_documents("grid", "things", sort=[("n", -1)], skip=2)] == ["F1"]


def test_sort_by_two_fields_and_a_nested_one(store: Store) -> None:
    store.put_layer(Layer.from_document(LAYER))
    docs = [
        {"_id": "d1", "zone": "south", "site": {"kva": 400}},
        {"_id": "d2", "zone": "north", "site": {"kva": "400"}},
        {"_id": "d3", "zone": "north", "site": {"kva": 800}},
        {"_id": "d4", "zone": "south"},
    ]
    store.insert_documents("grid", "things", docs)
    found = store.find_documents("grid", "things", sort=[("zone", 1), ("site.kva", -1)])
    assert [a.id for a in found] == ["d2", "d3", "d1", "d4"]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"a.b": 1}, "a.b"),
        ({"$set": 1}, "$set"),
        ({"site": {"zone.name": "x"}}, "site.zone.name"),
        ({"rows": [{"ok": 1}, {"$where": "x"}]}, "rows[1].$where"),
    ],
)
def test_unreachable_field_names_are_refused_per_document(store: Store, document: dict[str, Any], path: str) -> None:
    store.put_layer(Layer.from_document(LAYER))
    report = store.insert_documents("grid", "things", [{"_id": "ok"}, {"_id": "bad", **document}])
    assert report.inserted_ids == ["ok"]
    [error] = report.errors
    assert (error.index, error.id) == (1, "bad")
    assert error.message.startswith(
        f"documents[1]: field '{path}': a field name must not contain '.' or start with '$'"
    )
    with pytest.raises(SelectorError, match=f"^patch of grid/things: field '{re.escape(path)}'"):
        store.patch_document("grid", "things", "ok", document)
    assert store.get_document("grid", "things", "ok").attributes == {}
    assert [a.id for a in store.find_documents("grid", "things")] == ["ok"]


def test_measurement_patch_replaces_the_item_and_keeps_history(store: Store) -> None:
    store.put_layer(Layer.from_document({**LAYER, "collections": [{"name": "generators"}]}))
    t0 = "2021-07-28T05:48:17.103000Z"
    doc = {"_id": "TSO", "measurements": {"p": {"value": 4100.0, "quality": 0, "timestamp": t0}}}
    assert store.insert_documents("grid", "generators", [doc]).ok
    store.patch_document(
        "grid", "generators", "TSO", {"measurements": {"p": {"value": 7, "timestamp": "2020-01-01T00:00:00Z"}}}
    )
    assert store.get_document("grid", "generators", "TSO").attributes["measurements"]["p"]["value"] == 4100.0
    after = store.patch_document("grid", "generators", "TSO", {"measurements": {"p": {"value": 5}}})
    item = after.attributes["measurements"]["p"]
    assert set(item) == {"value", "timestamp"} and item["value"] == 5
    key = "grid/generators/TSO/p"
    history = store.read_range(key, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert history.values() == [7.0, 4100.0, 5.0]
    assert store.latest([key])[key].ts == datetime.fromisoformat(item["timestamp"])
    with pytest.raises(StoreError, match=r"measurements\.p\.timestamp: expected a timestamp"):
        store.patch_document("grid", "generators", "TSO", {"measurements": {"p": {"value": 1, "timestamp": "soon"}}})
    assert store.count_samples(key) == 3


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"n": {"$in": [1, "a", True, None]}}, ["m", "n1", "sa", "t", "z"]),  # null matches missing too
        ({"n": {"$in": [1.0, "1"]}}, ["n1", "s1"]),  # 1.0 is the number 1; "1" only the string
        ({"n": {"$in": [0, 1]}}, ["n1"]),  # booleans are not numbers
        ({"n": {"$in": [False, -3, "\u00e9"]}}, ["f", "nneg", "se"]),
        ({"n": {"$in": []}}, []),
        ({"n": {"$nin": [1, "a", None]}}, ["a", "f", "n25", "nneg", "o", "s1", "sB", "se", "t"]),
        ({"n": {"$nin": ["B", 2.5]}}, ["a", "f", "m", "n1", "nneg", "o", "s1", "sa", "se", "t", "z"]),
        ({"n": {"$nin": []}}, sorted([*VALUES, "m"])),
        ({"_id": {"$in": ["n1", 1, None, "zz", "n1"]}}, ["n1"]),  # an _id is a string: other types never match
        ({"_id": {"$nin": ["n1", "sa", 5]}}, sorted(set(VALUES) - {"n1", "sa"} | {"m"})),
    ],
)
def test_in_and_nin_keep_json_types_and_agree_with_live_matching(
    things: Store, selector: dict[str, Any], expected: list[str]
) -> None:
    docs = [{"_id": key, "n": value} for key, value in VALUES.items()] + [{"_id": "m"}]
    assert [a.id for a in things.find_documents("grid", "things", selector)] == expected
    assert things.count_documents("grid", "things", selector) == len(expected)
    assert sorted(d["_id"] for d in docs if matches(selector, d)) == expected  # live subscriptions agree


def test_in_and_nin_take_lists_of_any_length(store: Store) -> None:
    # One OR term per value nested SQLite's expression tree past its depth limit of 1000 (the hub
    # answered 503) and one parameter per value would stop at SQLite's 32,766: 40,000 values here.
    store.put_layer(Layer.from_document(LAYER))
    docs = [{"_id": f"d{i:05d}", "n": i if i % 2 == 0 else str(i)} for i in range(2500)]
    assert len(store.insert_documents("grid", "things", docs).inserted_ids) == 2500
    every_id = [f"d{i:05d}" for i in range(40_000)]

    def found(selector: dict[str, Any]) -> list[str]:
        return [a.id for a in store.find_documents("grid", "things", selector)]

    assert found({"_id": {"$in": every_id}}) == [d["_id"] for d in docs]
    assert store.count_documents("grid", "things", {"_id": {"$in": every_id[1::2]}}) == 1250
    assert found({"n": {"$in": list(range(0, 40_000, 4))}}) == [f"d{i:05d}" for i in range(0, 2500, 4)]
    assert found({"n": {"$in": [str(i) for i in range(40_000)]}}) == [f"d{i:05d}" for i in range(1, 2500, 2)]
    assert found({"n": {"$nin": list(range(40_000))}}) == [f"d{i:05d}" for i in range(1, 2500, 2)]
    assert found({"$or": [{"n": {"$in": [0, 1, 2]}}, {"_id": {"$nin": every_id[3:]}}]}) == [
        "d00000",
        "d00001",
        "d00002",
    ]
    patched = store.patch_documents("grid", "things", {"_id": {"$in": every_id[:1200]}}, {"seen": True})
    assert patched == 1200 and store.count_documents("grid", "things", {"seen": True}) == 1200
    assert store.delete_documents("grid", "things", {"_id": {"$in": [*every_id[:1500], "x", "y"]}}) == 1500
    assert found({}) == [f"d{i:05d}" for i in range(1500, 2500)]


def test_long_and_or_lists_many_fields_and_deep_nesting(store: Store) -> None:
    # A flat chain of n terms is n levels deep for SQLite, which refuses more than 1000 (a 503 for ever).
    store.put_layer(Layer.from_document(LAYER))
    store.insert_documents("grid", "things", [{"_id": f"d{i:04d}", "n": i} for i in range(50)])

    def found(selector: dict[str, Any]) -> list[str]:
        return [a.id for a in store.find_documents("grid", "things", selector)]

    assert found({"$or": [{"_id": f"d{i:04d}"} for i in range(0, 3000, 3)]}) == [f"d{i:04d}" for i in range(0, 50, 3)]
    assert found({"$and": [{"n": {"$ne": i}} for i in range(1, 1100)]}) == ["d0000"]
    assert len(found({f"f{i}": None for i in range(1100)})) == 50  # null matches a missing field
    selector: dict[str, Any] = {"n": {"$in": [7, 8]}}
    for level in range(32):
        selector = {"$or": [selector, {"n": -level}]} if level % 2 else {"$and": [selector, {"z": {"$ne": level}}]}
    assert found(selector) == ["d0007", "d0008"]
    with pytest.raises(SelectorError, match=r"^selector: \$and/\$or nested more than 32 deep$"):
        store.count_documents("grid", "things", {"$and": [selector]})
