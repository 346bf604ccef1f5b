"""The live face's in-Python selector matching agrees with the store's selectors (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from gridhub.hub.faces.live.selector import matches
from gridhub.hub.model import CollectionSpec, Layer
from gridhub.hub.store import Store
from tests.hub.store.conftest import pg_database, pg_store, sqlite_store, store  # noqa: F401 - fixtures

DOCUMENTS: list[dict[str, Any]] = [
    {"_id": "a", "kv": 11, "name": "north", "ok": True, "meta": {"zone": "z1", "rank": 2}},
    {"_id": "b", "kv": 0.4, "name": "south", "ok": False, "meta": {"zone": "z2"}},
    {"_id": "c", "kv": "11", "name": None, "tags": ["x", "y"]},
    {"_id": "d", "kv": 33, "installed": "2024-05-01T00:00:00Z"},
    {"_id": "e"},
]

SELECTORS: list[dict[str, Any]] = [
    {"kv": 11},
    {"kv": "11"},
    {"kv": {"$gte": 10}},
    {"kv": {"$lt": 1}},
    {"kv": {"$gt": "1"}},
    {"kv": {"$ne": 11}},
    {"kv": {"$in": [0.4, 33]}},
    {"kv": {"$nin": [0.4, 33]}},
    {"name": None},
    {"name": {"$exists": True}},
    {"name": {"$exists": False}},
    {"ok": True},
    {"ok": {"$eq": False}},
    {"meta.zone": "z1"},
    {"meta.rank": {"$gte": 2}},
    {"meta.zone": {"$exists": True}, "kv": {"$lt": 20}},
    {"$or": [{"name": "south"}, {"kv": 33}]},
    {"$and": [{"kv": {"$gt": 1}}, {"kv": {"$lt": 20}}]},
    {"installed": {"$gte": "2024-01-01T00:00:00Z"}},
    {"_id": {"$in": ["a", "e"]}},
]


@pytest.mark.parametrize("selector", SELECTORS, ids=[str(s) for s in SELECTORS])
def test_matches_selects_what_the_store_selects(store: Store, selector: dict[str, Any]) -> None:  # noqa: F811
    store.put_layer(Layer(id="grid", label="grid", collections=(CollectionSpec("subs"),)))
    assert store.insert_documents("grid", "subs", DOCUMENTS).ok
    expected = sorted(a.id for a in store.find_documents("grid", "subs", selector))
    stored = [a.to_document() for a in store.find_documents("grid", "subs")]
    assert sorted(doc["_id"] for doc in stored if matches(selector, doc)) == expected


def test_no_selector_matches_everything_and_unknown_operators_are_refused() -> None:
    assert matches(None, {"_id": "x"})
    with pytest.raises(ValueError, match=r"\$regex"):
        matches({"name": {"$regex": "n"}}, {"_id": "x", "name": "n"})
