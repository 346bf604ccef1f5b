"""Hub services behind the gateway: metrics.get from series history, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gridhub.hub.faces.xflex.services import HubServices, ServiceError, metrics_get, parse_duration, resolve_collection
from gridhub.hub.model import CollectionSpec, Layer
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import Store, open_store


def power(minute: int, value: float, quality: int = 1) -> dict[str, object]:
    stamp = f"2024-03-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
    return {"activePower": {"value": value, "quality": quality, "timestamp": stamp}}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    opened.put_layer(Layer(id="grid", label="Grid", collections=(CollectionSpec("generators"),)))
    opened.insert_documents(
        "grid",
        "generators",
        [
            {"_id": "TSO", "kind": "wind", "measurements": power(0, 10.0)},
            {"_id": "G2", "kind": "solar", "measurements": power(0, 1.0)},
        ],
    )
    for minute, value, quality in [(10, 20.0, 1), (30, 30.0, 1), (50, 999.0, 0), (70, 40.0, 1)]:
        opened.patch_document("grid", "generators", "TSO", {"measurements": power(minute, value, quality)})
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def settings(tmp_path: Path) -> HubSettings:
    return HubSettings(data_dir=tmp_path)


def test_parse_duration() -> None:
    assert parse_duration("15m", "p") == timedelta(minutes=15)
    assert parse_duration("1d", "p") == timedelta(days=1)
    assert parse_duration("2w", "p") == timedelta(weeks=2)
    assert parse_duration(90, "p") == timedelta(seconds=90)
    for bad in ("", "1y", "-1h", 0, "0s", True):
        with pytest.raises(ServiceError, match="p: expected a duration"):
            parse_duration(bad, "p")


def test_metrics_are_bucketed_from_history_without_invalid_values(store: Store, settings: HubSettings) -> None:
    answer = metrics_get(
        store,
        settings,
        {
            "layer": "grid",
            "collection": "generators",
            "measures": ["activePower"],
            "period": "2h",
            "interval": "1h",
            "to": "2024-03-01T02:00:00Z",
            "filter": {"kind": ["wind"]},
        },
    )
    assert (answer["from"], answer["to"], answer["interval"]) == (
        "2024-03-01T00:00:00.000000Z",
        "2024-03-01T02:00:00.000000Z",
        3600.0,
    )
    (metric,) = answer["metrics"]
    assert (metric["_id"], metric["measure"], metric["series"]) == (
        "TSO",
        "activePower",
        "grid/generators/TSO/activePower",
    )
    first, second = metric["buckets"]
    assert first["timestamp"] == "2024-03-01T00:00:00.000000Z"
    assert (first["count"], first["min"], first["max"], first["mean"], first["sum"]) == (3, 10.0, 30.0, 20.0, 60.0)
    assert (second["count"], second["mean"]) == (1, 40.0)


def test_every_document_and_unknown_measures_are_skipped(store: Store, settings: HubSettings) -> None:
    answer = metrics_get(
        store,
        settings,
        {
            "layer": "grid",
            "collection": "x.grid.generators",
            "measures": ["activePower", "nothing"],
            "period": "1d",
            "to": "2024-03-02T00:00:00Z",
        },
    )
    assert answer["collection"] == "generators"
    assert sorted(m["_id"] for m in answer["metrics"]) == ["G2", "TSO"]
    assert answer["interval"] == 3600.0  # period / 24


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"layer": "nope", "collection": "generators", "measures": ["a"]}, 404, "layer 'nope'"),
        ({"layer": "grid", "collection": "lines", "measures": ["a"]}, 404, "collection 'lines'"),
        ({"layer": "grid", "collection": "generators", "measures": []}, 400, "params.measures"),
        ({"layer": "grid", "collection": "generators", "measures": ["a"], "period": "soon"}, 400, "params.period"),
        ({"layer": "grid", "collection": "generators", "measures": ["a"], "interval": "10ms"}, 400, "at least 1 s"),
        ({"layer": "grid", "collection": "generators", "measures": ["a"], "filter": {"a": {"$x": 1}}}, 400, "filter"),
        ({"layer": "grid", "collection": "generators", "measures": ["a"], "colour": 1}, 400, "unknown member"),
    ],
)
def test_bad_metrics_calls_say_what_is_wrong(
    store: Store, settings: HubSettings, params: dict[str, object], status: int, message: str
) -> None:
    with pytest.raises(ServiceError, match=message) as refused:
        metrics_get(store, settings, params)
    assert refused.value.status == status


def test_services_dispatch_by_subject(store: Store, settings: HubSettings) -> None:
    services = HubServices(store, settings)
    assert resolve_collection(store, "grid", "generators")[1] == "generators"
    answer = services.call("metrics.get", {"layer": "grid", "collection": "generators", "measures": ["activePower"]})
    assert answer["layer"] == "grid"
    with pytest.raises(ServiceError, match=r"no hub service answers subject 'weather\.get'") as refused:
        services.call("weather.get", {})
    assert refused.value.status == 404
