"""The store interface, run against both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gridhub.hub.model import Event, EventState, Layer, Quality, Resource, Sample, Series, Statistic
from gridhub.hub.store import NotFoundError, SelectorError, Store, StoreError, open_store

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LAYER = {
    "_id": "grid",
    "label": "Distribution grid",
    "description": "LV network assets",
    "owner": "dno",
    "collections": [{"name": "substations", "geo": True}, {"name": "generators", "metrics": ["grid.generators"]}],
    "config": {"retention_days": 30},
}


@pytest.fixture
def grid(store: Store) -> Store:
    """The store with the 'grid' layer."""
    store.put_layer(Layer.from_document(LAYER))
    return store


def ids(assets: list[Any]) -> list[str]:
    return [a.id for a in assets]


def make_series(store: Store, key: str = "substation-0042/transformer/L1/current/mean", layer: str = "grid") -> str:
    store.put_series(Series(key=key, layer=layer, asset="substation-0042", name="current", unit="A", phase="L1"))
    return key


def minutes(key: str, count: int, start: datetime = T0, step: timedelta = timedelta(minutes=1)) -> list[Sample]:
    return [Sample(key, start + i * step, float(i)) for i in range(count)]


# -- layers -------------------------------------------------------------------------------------


def test_layer_round_trips_and_replaces(store: Store) -> None:
    assert store.put_layer(Layer.from_document(LAYER)) is True
    assert store.get_layer("grid").to_document() == Layer.from_document(LAYER).to_document()
    changed = dict(LAYER, label="Grid v2", collections=[{"name": "feeders"}])
    assert store.put_layer(Layer.from_document(changed)) is False
    assert store.get_layer("grid").label == "Grid v2"
    assert [c.name for c in store.get_layer("grid").collections] == ["feeders"]
    store.put_layer(Layer.from_document({"_id": "ami", "label": "AMI", "description": "", "collections": []}))
    assert [layer.id for layer in store.list_layers()] == ["ami", "grid"]


def test_missing_layer_and_unlisted_collection_are_not_found(grid: Store) -> None:
    with pytest.raises(NotFoundError, match="layer 'nope' does not exist"):
        grid.get_layer("nope")
    with pytest.raises(NotFoundError, match="collection 'meters' is not listed in layer 'grid'"):
        grid.find_documents("grid", "meters")
    with pytest.raises(NotFoundError, match="collection 'meters' is not listed"):
        grid.insert_documents("grid", "meters", [{"_id": "m1"}])


def test_delete_layer_removes_its_documents_series_and_samples(grid: Store) -> None:
    grid.insert_documents("grid", "generators", [{"_id": "TSO", "measurements": {"p": {"value": 1, "timestamp": 0}}}])
    key = make_series(grid)
    grid.write_samples(minutes(key, 3))
    grid.append_events([Event("grid", "TSO", T0, "alarm")])
    grid.delete_layer("grid")
    with pytest.raises(NotFoundError):
        grid.get_layer("grid")
    assert grid.list_series() == []
    assert grid.count_samples() == 0
    assert grid.query_events("grid") == []


# -- documents ----------------------------------------------------------------------------------


def test_insert_reports_each_document(grid: Store) -> None:
    grid.insert_documents("grid", "generators", [{"_id": "A"}])
    report = grid.insert_documents(
        "grid",
        "generators",
        [{"_id": "B", "p": 1}, {"_id": "A"}, {"_id": "C", "geometry": {"type": "Point"}}, {"_id": "B"}, {"x": 1}],
    )
    assert report.inserted_ids[:1] == ["B"] and len(report.inserted_ids) == 2  # B and the generated id
    assert [(e.index, e.id) for e in report.errors] == [(1, "A"), (2, "C"), (3, "B")]
    assert "'A' already exists" in report.errors[0].message
    assert "geometry.coordinates" in report.errors[1].message
    assert "repeats documents[0]" in report.errors[2].message
    assert not report.ok
    assert grid.count_documents("grid", "generators") == 3
    with pytest.raises(NotFoundError):
        grid.get_document("grid", "generators", "C")


def test_document_gets_updated_time_and_keeps_attributes(grid: Store) -> None:
    before = datetime.now(UTC)
    grid.insert_documents("grid", "generators", [{"_id": "TSO", "site": {"name": "Bath"}, "_updated": 0}])
    doc = grid.get_document("grid", "generators", "TSO")
    assert doc.updated is not None and doc.updated >= before - timedelta(seconds=1)
    assert doc.to_document()["site"] == {"name": "Bath"}
    assert doc.expired is False


SITES: list[dict[str, Any]] = [
    {"_id": "s1", "kva": 500, "name": "Bath", "tags": {"zone": "west"}, "active": True, "commissioned": 2001},
    {"_id": "s2", "kva": 315, "name": "Bristol", "tags": {"zone": "west"}, "active": False, "note": None},
    {"_id": "s3", "kva": 1000, "name": "Cardiff", "tags": {"zone": "wales"}, "active": True},
    {"_id": "s4", "kva": "800", "name": "Derby"},
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, ["s1", "s2", "s3", "s4"]),
        ({"name": "Bath"}, ["s1"]),
        ({"tags.zone": "west"}, ["s1", "s2"]),
        ({"kva": {"$gt": 315}}, ["s1", "s3"]),  # the string "800" is not a number: not matched
        ({"kva": {"$gte": 315, "$lt": 1000}}, ["s1", "s2"]),
        ({"kva": {"$lte": 500}}, ["s1", "s2"]),
        ({"kva": "800"}, ["s4"]),
        ({"kva": 500.0}, ["s1"]),
        ({"name": {"$gt": "C"}}, ["s3", "s4"]),
        ({"name": {"$in": ["Bath", "Derby", "York"]}}, ["s1", "s4"]),
        ({"name": {"$nin": ["Bath", "Derby"]}}, ["s2", "s3"]),
        ({"tags.zone": {"$ne": "west"}}, ["s3", "s4"]),  # $ne matches a missing field too
        ({"active": True}, ["s1", "s3"]),
        ({"active": False}, ["s2"]),
        ({"note": None}, ["s1", "s2", "s3", "s4"]),  # null matches null and missing
        ({"note": {"$exists": True}}, ["s2"]),
        ({"commissioned": {"$exists": False}}, ["s2", "s3", "s4"]),
        ({"$or": [{"name": "Bath"}, {"kva": 1000}]}, ["s1", "s3"]),
        ({"$and": [{"tags.zone": "west"}, {"active": True}]}, ["s1"]),
        ({"_id": "s2"}, ["s2"]),
        ({"_id": {"$in": ["s3", "s9"]}}, ["s3"]),
        ({"_id": {"$gte": "s3"}}, ["s3", "s4"]),
        ({"tags.zone.deeper": "x"}, []),
    ],
)
def test_find_with_selector(grid: Store, selector: dict[str, Any], expected: list[str]) -> None:
    grid.insert_documents("grid", "substations", SITES)
    assert ids(grid.find_documents("grid", "substations", selector)) == expected
    assert grid.count_documents("grid", "substations", selector) == len(expected)


def test_sort_limit_skip(grid: Store) -> None:
    grid.insert_documents("grid", "substations", SITES[:3])
    assert ids(grid.find_documents("grid", "substations", sort=[("kva", -1)])) == ["s3", "s1", "s2"]
    assert ids(grid.find_documents("grid", "substations", sort=[("name", 1)], limit=2, skip=1)) == ["s2", "s3"]
    assert ids(grid.find_documents("grid", "substations", sort=[("_id", -1)], limit=1)) == ["s3"]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"kva": {"$regex": "^5"}}, r"selector\.kva\.\$regex: operator \$regex is not supported"),
        ({"$where": "1"}, r"operator \$where is not supported"),
        ({"tags": {"zone": "west"}}, "comparing with an object or array is not supported"),
        ({"kva": {"$in": 5}}, r"selector\.kva\.\$in: expected a list"),
        ({"kva": {"$gt": True}}, "expected a number, a string or a date"),
        ({"kva": {"$exists": 1}}, "expected true or false"),
        ({"a..b": 1}, "not a plain dotted field name"),
        ({"$or": []}, "expected a non-empty list of selectors"),
    ],
)
def test_unsupported_selector_is_refused_clearly(grid: Store, selector: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        grid.find_documents("grid", "substations", selector)


def test_patch_merges_and_removes(grid: Store) -> None:
    grid.insert_documents("grid", "substations", [SITES[0]])
    before = grid.get_document("grid", "substations", "s1").updated
    patched = grid.patch_document("grid", "substations", "s1", {"tags": {"owner": "wpd"}, "commissioned": None})
    doc = patched.to_document()
    assert doc["tags"] == {"zone": "west", "owner": "wpd"}
    assert "commissioned" not in doc
    assert patched.updated is not None and before is not None and patched.updated >= before
    assert grid.get_document("grid", "substations", "s1").to_document() == doc


def test_patch_many_by_selector(grid: Store) -> None:
    grid.insert_documents("grid", "substations", SITES)
    assert grid.patch_documents("grid", "substations", {"tags.zone": "west"}, {"_expired": True}) == 2
    assert ids(grid.find_documents("grid", "substations", {"_expired": True})) == ["s1", "s2"]


def test_invalid_patch_changes_nothing(grid: Store) -> None:
    grid.insert_documents("grid", "substations", SITES[:2])
    with pytest.raises(StoreError, match="geometry"):
        grid.patch_documents("grid", "substations", None, {"geometry": {"type": "Point", "coordinates": [500, 0]}})
    with pytest.raises(SelectorError, match="_id cannot be changed"):
        grid.patch_document("grid", "substations", "s1", {"_id": "s9"})
    assert grid.find_documents("grid", "substations", {"geometry": {"$exists": True}}) == []
    with pytest.raises(NotFoundError, match="'s9' does not exist"):
        grid.patch_document("grid", "substations", "s9", {"x": 1})


def test_delete_documents(grid: Store) -> None:
    grid.insert_documents("grid", "substations", SITES)
    assert grid.delete_document("grid", "substations", "s1") is True
    assert grid.delete_document("grid", "substations", "s1") is False
    assert grid.delete_documents("grid", "substations", {"tags.zone": "west"}) == 1
    assert ids(grid.find_documents("grid", "substations")) == ["s3", "s4"]


def test_range_by_time_field(grid: Store) -> None:
    grid.insert_documents(
        "grid",
        "generators",
        [
            {"_id": "a", "timestamp": "2021-07-28T07:48:17.103+02:00"},  # 05:48:17Z
            {"_id": "b", "timestamp": "2021-07-28T06:00:00Z"},
            {"_id": "c", "timestamp": 1627452000000},  # 2021-07-28T06:00:00Z in epoch ms
            {"_id": "d", "timestamp": "2021-07-28T09:00:00+00:00"},
            {"_id": "e", "when": "2021-07-28T06:30:00Z"},
        ],
    )
    start, end = datetime(2021, 7, 28, 5, tzinfo=UTC), datetime(2021, 7, 28, 7, tzinfo=UTC)
    # in time order within each JSON type; how numbers and strings interleave differs between backends
    assert sorted(ids(grid.range_documents("grid", "generators", start, end))) == ["a", "b", "c"]
    assert ids(grid.range_documents("grid", "generators", start, end, limit=5))[-1] != "d"
    assert ids(grid.range_documents("grid", "generators", start, end, field="when")) == ["e"]
    assert ids(grid.range_documents("grid", "generators", start, datetime(2021, 7, 28, 6, tzinfo=UTC))) == ["a"]


def test_near_finds_geometries_by_distance(grid: Store) -> None:
    bath = {"type": "Point", "coordinates": [-2.3590, 51.3811]}
    bristol = {"type": "Point", "coordinates": [-2.5879, 51.4545]}
    cardiff_line = {"type": "LineString", "coordinates": [[-3.30, 51.50], [-3.1791, 51.4816]]}
    grid.insert_documents(
        "grid",
        "substations",
        [
            {"_id": "bath", "geometry": bath},
            {"_id": "bristol", "geometry": bristol},
            {"_id": "cardiff", "geometry": cardiff_line},
            {"_id": "nogeo"},
        ],
    )
    found = grid.near_documents("grid", "substations", 51.4545, -2.5879, 20_000)
    assert [(a.id, round(m / 1000, 1)) for a, m in found] == [("bristol", 0.0), ("bath", 17.8)]
    wide = grid.near_documents("grid", "substations", 51.4545, -2.5879, 60_000)
    assert [a.id for a, _ in wide] == ["bristol", "bath", "cardiff"]  # Cardiff by its nearest vertex (~41 km)
    assert [a.id for a, _ in grid.near_documents("grid", "substations", 51.4545, -2.5879, 60_000, limit=1)] == [
        "bristol"
    ]
    with pytest.raises(SelectorError, match="near: lat"):
        grid.near_documents("grid", "substations", 95, 0, 10)


# -- measurements: document state and series history --------------------------------------------


def test_measurements_update_state_and_history(grid: Store) -> None:
    doc = {
        "_id": "TSO",
        "substation": "CR_I8",
        "measurements": {
            "activePower": {"quality": 1, "value": 3660.165534732381, "timestamp": "2021-07-28T07:48:17.103+02:00"},
            "reactivePower": {"quality": 0, "value": 366.0165534732381, "timestamp": "2021-07-28T07:48:17.103+02:00"},
        },
    }
    assert grid.insert_documents("grid", "generators", [doc]).ok
    key = "grid/generators/TSO/activePower"
    assert [x.key for x in grid.list_series(layer="grid", asset="TSO")] == [key, "grid/generators/TSO/reactivePower"]
    latest = grid.latest([key, "grid/generators/TSO/reactivePower"])
    assert latest[key].ts == datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC)
    assert latest[key].value == 3660.165534732381
    assert latest["grid/generators/TSO/reactivePower"].quality == Quality.INVALID  # quality 0: kept, flagged

    grid.patch_document(
        "grid",
        "generators",
        "TSO",
        {"measurements": {"activePower": {"value": 10, "timestamp": "2021-07-28T06:00:00Z"}}},
    )
    state = grid.get_document("grid", "generators", "TSO").to_document()["measurements"]
    assert state["activePower"]["value"] == 10
    assert state["reactivePower"]["value"] == 366.0165534732381  # untouched by the merge
    history = grid.read_range(key, datetime(2021, 7, 28, tzinfo=UTC), datetime(2021, 7, 29, tzinfo=UTC))
    assert history.values() == [3660.165534732381, 10.0]
    assert grid.latest([key])[key].value == 10.0
    assert grid.count_samples("grid/generators/TSO/reactivePower") == 1  # not re-appended by the patch


def test_refused_document_appends_no_history(grid: Store) -> None:
    bad = {"_id": "X", "measurements": {"p": {"value": 1, "timestamp": "yesterday"}}}
    report = grid.insert_documents("grid", "generators", [bad])
    assert "measurements.p.timestamp" in report.errors[0].message
    assert grid.list_series() == []


def test_structured_measurement_is_kept_as_data(grid: Store) -> None:
    spectrum = {"f": [50, 100, 150], "a": [1.0, 0.1, 0.05]}
    grid.insert_documents(
        "grid", "generators", [{"_id": "G", "measurements": {"h": {"value": spectrum, "timestamp": 0}}}]
    )
    reading = grid.latest(["grid/generators/G/h"])["grid/generators/G/h"]
    assert reading.value is None and reading.data == spectrum


# -- series and samples -------------------------------------------------------------------------


def test_series_upsert_keeps_id_and_updates_metadata(grid: Store) -> None:
    key = make_series(grid)
    first = grid.put_series(Series(key=key, layer="grid", asset="substation-0042", name="current", unit="A"))
    second = grid.put_series(
        Series(
            key=key,
            layer="grid",
            asset="substation-0042",
            name="current",
            unit="A",
            statistic=Statistic.MEAN,
            interval=timedelta(minutes=10),
            attributes={"topic": "sensor/data/x"},
        )
    )
    assert first == second
    stored = grid.get_series(key)
    assert stored.statistic is Statistic.MEAN and stored.interval == timedelta(minutes=10)
    assert stored.attributes == {"topic": "sensor/data/x"}
    with pytest.raises(NotFoundError, match="series 'nope' does not exist"):
        grid.get_series("nope")


def test_resent_samples_replace_never_duplicate(grid: Store) -> None:
    key = make_series(grid)
    assert grid.write_samples(minutes(key, 100)) == 100
    assert grid.write_samples(minutes(key, 100)) == 100  # the same batch again (a retried upload)
    assert grid.count_samples(key) == 100
    corrected = [Sample(key, T0 + timedelta(minutes=5), 99.5, quality=Quality.CURATED)]
    grid.write_samples(corrected + minutes(key, 3, start=T0 + timedelta(minutes=100)))  # mixed old and new
    assert grid.count_samples(key) == 103
    reading = grid.read_range(key, T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))[0]
    assert (reading.value, reading.quality) == (99.5, Quality.CURATED)


def test_repeated_key_in_one_batch_keeps_the_last(grid: Store) -> None:
    key = make_series(grid)
    grid.write_samples([Sample(key, T0, 1.0), Sample(key, T0, 2.0)])
    grid.write_samples([Sample(key, T0, 3.0), Sample(key, T0, 4.0)])
    assert grid.read_range(key, T0, T0 + timedelta(seconds=1)).values() == [4.0]


def test_repeated_key_keeps_the_last_across_plain_and_structured_samples(grid: Store) -> None:
    key = make_series(grid)
    t1 = T0 + timedelta(minutes=1)
    end = T0 + timedelta(minutes=2)
    spectrum = Sample(key, T0, None, data={"Value": [1, 2]}, quality=Quality.INVALID, confidence=0.5, cost=2)
    grid.write_samples([Sample(key, T0, 1.0), spectrum, Sample(key, t1, 5.0)])
    assert [tuple(r) for r in grid.read_range(key, T0, end, detail=True)] == [
        (T0, None, 1, {"Value": [1, 2]}, 0.5, 2.0),
        (t1, 5.0, 0, None, None, None),
    ]
    # A plain sample replacing a structured one leaves nothing of it (data, confidence, cost).
    grid.write_samples([Sample(key, t1, None, data={"x": 1}, cost=3), Sample(key, T0, 7.0), Sample(key, t1, 8.0)])
    assert [tuple(r) for r in grid.read_range(key, T0, end, detail=True)] == [
        (T0, 7.0, 0, None, None, None),
        (t1, 8.0, 0, None, None, None),
    ]


def test_unknown_series_writes_nothing(grid: Store) -> None:
    key = make_series(grid)
    with pytest.raises(NotFoundError, match="series 'ghost' does not exist"):
        grid.write_samples([Sample(key, T0, 1.0), Sample("ghost", T0, 1.0)])
    assert grid.count_samples() == 0


def test_range_read_is_half_open_and_complete(grid: Store) -> None:
    key = make_series(grid)
    other = make_series(grid, "substation-0042/transformer/L2/current/mean")
    samples = minutes(key, 10)
    samples[3] = Sample(key, samples[3].ts, None, data={"x": [1, 2]}, quality=Quality.INVALID, confidence=0.5, cost=2)
    grid.write_samples(samples + minutes(other, 10))
    got = grid.read_range(key, T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))
    assert [r.ts for r in got] == [T0 + timedelta(minutes=m) for m in (2, 3, 4)]
    assert tuple(got[1]) == (T0 + timedelta(minutes=3), None, 1)
    assert got[1].quality == Quality.INVALID and got[1].data is None
    assert [r.value for r in got[1:]] == [None, 4.0]
    assert got.values() == [2.0, None, 4.0]
    detailed = grid.read_range(key, T0 + timedelta(minutes=2), T0 + timedelta(minutes=5), detail=True)
    assert tuple(detailed[1]) == (T0 + timedelta(minutes=3), None, 1, {"x": [1, 2]}, 0.5, 2.0)
    assert tuple(detailed[0]) == (T0 + timedelta(minutes=2), 2.0, 0, None, None, None)
    assert len(grid.read_range(key, T0, T0 + timedelta(hours=1), limit=4)) == 4
    assert len(grid.read_range(key, T0 - timedelta(days=1), T0)) == 0
    with pytest.raises(StoreError, match="start: expected a timezone-aware datetime"):
        grid.read_range(key, datetime(2024, 1, 1), T0)


def test_samples_across_months(grid: Store) -> None:
    key = make_series(grid)
    grid.write_samples(minutes(key, 5, start=datetime(2024, 1, 31, 23, 58, tzinfo=UTC)))
    got = grid.read_range(key, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
    assert [r.ts.month for r in got] == [1, 1, 2, 2, 2]


def test_latest_per_series(grid: Store) -> None:
    a = make_series(grid, "a/x")
    b = make_series(grid, "b/x")
    c = make_series(grid, "c/x")
    grid.write_samples(minutes(a, 5) + minutes(b, 2))
    latest = grid.latest([a, b, c])
    assert set(latest) == {a, b}
    assert (latest[a].ts, latest[a].value) == (T0 + timedelta(minutes=4), 4.0)
    assert latest[b].value == 1.0


def test_aggregate_per_interval(grid: Store) -> None:
    key = make_series(grid)
    samples = minutes(key, 3 * 1440, start=T0 - timedelta(days=1))  # 3 days, values 0..4319
    samples[10] = Sample(key, samples[10].ts, 1e9, quality=Quality.INVALID)  # a bad value, excluded
    grid.write_samples(samples)
    days = grid.aggregate(key, T0 - timedelta(days=1), T0 + timedelta(days=2), timedelta(days=1))
    assert [d.start for d in days] == [T0 - timedelta(days=1), T0, T0 + timedelta(days=1)]
    first = days[0]
    assert (first.count, first.min, first.max) == (1439, 0.0, 1439.0)
    assert first.sum == sum(range(1440)) - 10
    assert first.mean == pytest.approx(first.sum / 1439)
    assert (days[1].min, days[1].max, days[1].count) == (1440.0, 2879.0, 1440)
    with_bad = grid.aggregate(key, T0 - timedelta(days=1), T0, timedelta(days=1), include_invalid=True)
    assert with_bad[0].max == 1e9 and with_bad[0].count == 1440
    hours = grid.aggregate(key, T0, T0 + timedelta(hours=3), timedelta(hours=1), origin=T0 + timedelta(minutes=30))
    assert [(h.start, h.count) for h in hours] == [
        (T0 - timedelta(minutes=30), 30),
        (T0 + timedelta(minutes=30), 60),
        (T0 + timedelta(minutes=90), 60),
        (T0 + timedelta(minutes=150), 30),
    ]
    assert grid.aggregate(key, T0 + timedelta(days=5), T0 + timedelta(days=6), timedelta(days=1)) == []


def test_delete_series_deletes_its_samples(grid: Store) -> None:
    a, b = make_series(grid, "a/x"), make_series(grid, "b/x")
    grid.write_samples(minutes(a, 5) + minutes(b, 5))
    grid.delete_series(a)
    assert grid.count_samples() == 5
    with pytest.raises(NotFoundError):
        grid.read_range(a, T0, T0 + timedelta(days=1))


def test_retention_per_layer(grid: Store) -> None:
    grid.put_layer(Layer(id="archive", label="Archive"))  # no retention: kept for ever
    now = T0 + timedelta(days=40)
    kept = make_series(grid, "archive/x", layer="archive")
    trimmed = make_series(grid)
    daily = timedelta(days=1)
    grid.write_samples(minutes(trimmed, 40, step=daily) + minutes(kept, 40, step=daily))
    assert grid.apply_retention(now) == {"grid": 10}
    assert grid.read_range(trimmed, T0, now)[0].ts == now - timedelta(days=30)
    assert grid.count_samples(kept) == 40


# -- events and resources -----------------------------------------------------------------------


def test_events_append_and_query(grid: Store) -> None:
    ids_ = grid.append_events(
        [
            Event("grid", "s1", T0, "lvcap.error", code="8", severity=3, payload={"Message": "boom"}),
            Event("grid", "s1", T0 + timedelta(hours=1), "lvcap.error", code="8", state=EventState.ENDED),
            Event("grid", "s2", T0 + timedelta(hours=2), "ppmp.message", code="E42"),
        ]
    )
    assert len(set(ids_)) == 3
    assert [e.code for e in grid.query_events("grid")] == ["8", "8", "E42"]
    first = grid.query_events("grid", asset="s1", state=EventState.NEW)
    assert len(first) == 1 and first[0].payload == {"Message": "boom"} and first[0].time == T0
    assert first[0].id == ids_[0]
    assert [e.asset for e in grid.query_events("grid", start=T0 + timedelta(minutes=30), type="ppmp.message")] == ["s2"]
    assert len(grid.query_events("grid", end=T0 + timedelta(hours=2), limit=1)) == 1


def test_resources_metadata(store: Store) -> None:
    store.put_resource(
        Resource("r1", "reports", "a.csv", "text/csv", size=10, created=T0, metadata={"rows": 2}, owner="u1")
    )
    store.put_resource(Resource("r2", "reports", "b.csv", created=T0 + timedelta(1)))
    store.put_resource(Resource("r1", "reports", "a.csv", "text/csv", size=12, created=T0))  # replaced
    assert store.get_resource("r1").size == 12
    assert [r.id for r in store.find_resources("reports")] == ["r2", "r1"]
    assert [r.id for r in store.find_resources(filename="a.csv")] == ["r1"]
    assert store.delete_resource("r1") is True and store.delete_resource("r1") is False
    with pytest.raises(NotFoundError, match="resource 'r1' does not exist"):
        store.get_resource("r1")


def test_open_store_refuses_unknown_url() -> None:
    with pytest.raises(StoreError, match="expected sqlite:///PATH, a file path or postgresql://"):
        open_store("mysql://localhost/hub")


# -- samples and a document patch in one transaction ---------------------------------------------


class Killed(BaseException):
    """What a hub killed inside a transaction looks like to the store: the transaction never ends well."""


def counted(by: int) -> Any:
    """Return a patch function adding by to the document's counter (as the upload face counts rows)."""

    def patch(document: Any) -> dict[str, Any]:
        return {"upload": {"stored": document.get("upload", {}).get("stored", 0) + by}}

    return patch


def test_samples_and_patch_are_written_together(grid: Store) -> None:
    key = make_series(grid)
    grid.insert_documents("grid", "substations", [{"_id": "s1", "name": "Bath"}])
    patched = grid.write_samples_and_patch(minutes(key, 3), "grid", "substations", "s1", counted(3))
    assert patched.attributes["upload"] == {"stored": 3} and patched.attributes["name"] == "Bath"
    grid.write_samples_and_patch(minutes(key, 2, T0 + timedelta(hours=1)), "grid", "substations", "s1", counted(2))
    grid.write_samples_and_patch([], "grid", "substations", "s1", {"note": "static patches work too"})
    document = grid.get_document("grid", "substations", "s1")
    assert document.attributes["upload"] == {"stored": 5} and document.attributes["note"] == "static patches work too"
    assert grid.count_samples(key) == 5


def test_a_failure_inside_the_transaction_commits_neither_samples_nor_patch(grid: Store) -> None:
    key = make_series(grid)
    grid.insert_documents("grid", "substations", [{"_id": "s1"}])
    grid.write_samples_and_patch(minutes(key, 2), "grid", "substations", "s1", counted(2))

    def killed_after_the_samples_were_written(document: Any) -> dict[str, Any]:
        raise Killed  # the patch is computed after the samples are in the transaction

    later = minutes(key, 3, T0 + timedelta(hours=1))
    with pytest.raises(Killed):
        grid.write_samples_and_patch(later, "grid", "substations", "s1", killed_after_the_samples_were_written)
    assert grid.count_samples(key) == 2
    assert grid.get_document("grid", "substations", "s1").attributes["upload"] == {"stored": 2}
    with pytest.raises(SelectorError, match=r"must not contain '\.'"):  # a refused patch: nothing written either
        grid.write_samples_and_patch(later, "grid", "substations", "s1", {"a.b": 1})
    assert grid.count_samples(key) == 2
    grid.write_samples_and_patch(later, "grid", "substations", "s1", counted(3))  # the retry
    assert grid.count_samples(key) == 5
    assert grid.get_document("grid", "substations", "s1").attributes["upload"] == {"stored": 5}


def test_samples_and_patch_need_the_document_and_the_series(grid: Store) -> None:
    key = make_series(grid)
    grid.insert_documents("grid", "substations", [{"_id": "s1"}])
    with pytest.raises(NotFoundError, match="document 'gone' does not exist in grid/substations"):
        grid.write_samples_and_patch(minutes(key, 2), "grid", "substations", "gone", counted(2))
    assert grid.count_samples(key) == 0
    with pytest.raises(NotFoundError, match="series 'nope' does not exist"):
        grid.write_samples_and_patch([Sample("nope", T0, 1.0)], "grid", "substations", "s1", counted(1))
    assert "upload" not in grid.get_document("grid", "substations", "s1").attributes


def test_counters_patched_by_concurrent_writers_add_up(grid: Store) -> None:
    key = make_series(grid)
    grid.insert_documents("grid", "substations", [{"_id": "s1"}])
    other = open_store(grid.url)  # a second hub process on the same database
    batches = 15

    def writer(store: Store, offset: int) -> None:
        for i in range(batches):
            start = T0 + timedelta(hours=offset + i)
            store.write_samples_and_patch(minutes(key, 2, start), "grid", "substations", "s1", counted(2))

    try:
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(writer, grid, 0), pool.submit(writer, other, 100)]
            for future in done:
                future.result(timeout=300)
    finally:
        other.close()
    assert grid.count_samples(key) == 2 * 2 * batches
    assert grid.get_document("grid", "substations", "s1").attributes["upload"] == {"stored": 2 * 2 * batches}
