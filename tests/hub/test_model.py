"""The common information model: X-FLEX documents in and out, validation with precise errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gridhub.hub.model import (
    Asset,
    Event,
    Layer,
    ModelError,
    Quality,
    Reading,
    Resource,
    Sample,
    Series,
    Statistic,
    check_field_names,
    format_time,
    parse_time,
)

# The _layers example of X-FLEX 3.1.2.1 (its "..." entries left out).
GRIDFLEX = {
    "_id": "gridflex",
    "id": "gridflex",
    "label": "GRIDFLEX",
    "description": "GRIDFLEX assets",
    "category": "energy",
    "collections": [
        {"name": "substations", "geo": True},
        {"name": "buses", "metrics": ["gridflex.buses", "gridflex.buses.forecast"]},
        {"name": "lines", "geo": True, "metrics": ["gridflex.lines", "gridflex.lines.forecast"]},
        {"name": "weather", "metrics": ["gridflex.weather", "gridflex.weather.forecast"]},
    ],
}

# The collection example of X-FLEX 3.1.2.2, its ISODate(...) values written as JSON strings.
TSO = {
    "_id": "TSO",
    "_expired": False,
    "_updated": "2021-07-28T07:48:17.111+02:00",
    "substation": "CR_I8",
    "voltageLevel": "CR_I8_1",
    "measurements": {
        "activePower": {"quality": 1, "value": 3660.165534732381, "timestamp": "2021-07-28T07:48:17.103+02:00"},
        "reactivePower": {"quality": 1, "value": 366.0165534732381, "timestamp": "2021-07-28T07:48:17.103+02:00"},
    },
    "measurementsTimestamp": "2021-07-28T07:48:17.103+02:00",
}


def test_layer_reads_the_xflex_example() -> None:
    layer = Layer.from_document(GRIDFLEX)
    assert layer.id == "gridflex" and layer.label == "GRIDFLEX"
    assert [c.name for c in layer.collections] == ["substations", "buses", "lines", "weather"]
    lines = layer.collection("lines")
    assert lines is not None and lines.geo and lines.metrics == ("gridflex.lines", "gridflex.lines.forecast")
    assert layer.collection("meters") is None
    assert layer.extra == {"category": "energy"}
    assert layer.retention is None
    again = Layer.from_document(layer.to_document())
    assert again == layer


def test_layer_retention_from_config() -> None:
    layer = Layer.from_document(
        {"_id": "ami", "label": "AMI", "description": "", "collections": [], "config": {"retention_days": 90}}
    )
    assert layer.retention == timedelta(days=90)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"_id": "bad id", "id": "bad id"}, "layer._id: expected a name"),
        ({"id": "other"}, "id 'other' differs from _id 'gridflex'"),
        ({"collections": {"name": "x"}}, "layer.collections: expected a list"),
        ({"collections": [{"name": "a"}, {"name": 3}]}, r"layer.collections\[1\].name: expected a name"),
        ({"collections": [{"name": "a"}, {"name": "a"}]}, r"collections\[1\].name: collection 'a' is listed twice"),
        ({"collections": [{"name": "a", "geo": "yes"}]}, r"collections\[0\].geo: expected true or false"),
        ({"config": {"retention_days": -1}}, "config.retention_days: expected a positive number of days"),
        ({"label": 5}, "layer.label: expected a string"),
    ],
)
def test_layer_errors_say_where(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Layer.from_document({**GRIDFLEX, **change})


def test_asset_reads_the_xflex_example() -> None:
    asset = Asset.from_document(TSO)
    assert asset.id == "TSO" and asset.expired is False
    assert asset.updated == datetime(2021, 7, 28, 5, 48, 17, 111000, tzinfo=UTC)
    doc = asset.to_document()
    assert doc["substation"] == "CR_I8"
    assert doc["_updated"] == "2021-07-28T05:48:17.111000Z"
    assert doc["measurements"]["activePower"]["timestamp"] == "2021-07-28T05:48:17.103000Z"  # canonical UTC
    measurements = asset.measurements()
    assert [(m.name, m.value, m.quality) for m in measurements] == [
        ("activePower", 3660.165534732381, Quality(0)),
        ("reactivePower", 366.0165534732381, Quality(0)),
    ]
    sample = measurements[0].sample("k")
    assert sample.ts == datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC) and sample.value == 3660.165534732381
    assert Asset.from_document(doc) == asset


def test_measurement_time_falls_back_to_measurements_timestamp() -> None:
    doc = {"_id": "a", "measurements": {"p": {"value": 1}}, "measurementsTimestamp": 1627451297103}
    (m,) = Asset.from_document(doc).measurements()
    assert m.timestamp == datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("quality", "flags"),
    [(1, Quality(0)), (True, Quality(0)), (0, Quality.INVALID), (False, Quality.INVALID), (6, Quality(6))],
)
def test_measurement_quality_becomes_flags(quality: object, flags: Quality) -> None:
    doc = {"_id": "a", "measurements": {"p": {"value": 1, "quality": quality, "timestamp": 0}}}
    assert Asset.from_document(doc).measurements()[0].quality == flags


def test_asset_without_id_gets_one() -> None:
    first, second = Asset.from_document({"x": 1}), Asset.from_document({"x": 1})
    assert first.id and first.id != second.id


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"_id": ""}, "document._id: expected a non-empty string"),
        ({"_id": "a", "_expired": "no"}, "_expired: expected true or false"),
        ({"_id": "a", "geometry": {"type": "Circle"}}, "geometry.type: expected a GeoJSON geometry type"),
        (
            {"_id": "a", "geometry": {"type": "Point", "coordinates": [200, 0]}},
            r"geometry.coordinates: expected longitude in \[-180, 180\]",
        ),
        ({"_id": "a", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1]]}}, r"coordinates\[1\]"),
        ({"_id": "a", "measurements": [1]}, "measurements: expected a JSON object"),
        ({"_id": "a", "measurements": {"p": {"quality": 1}}}, "measurements.p: value is missing"),
        ({"_id": "a", "measurements": {"p": {"value": 1, "timestamp": "2021-07-28T07:48:17"}}}, "with a zone"),
        ({"_id": "a", "measurements": {"p": {"value": 1, "timestamp": 0, "quality": -1}}}, "p.quality: expected"),
        ({"_id": "a", "x": float("nan")}, "document 'a'.x: expected a finite number"),
        ({"_id": "a", "x": ["ok", "nul\x00"]}, r"document 'a'.x\[1\]: expected text without NUL characters"),
    ],
)
def test_asset_errors_say_where(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Asset.from_document(doc)


def test_geometry_bounding_box() -> None:
    polygon = {"type": "Polygon", "coordinates": [[[-2.6, 51.4], [-2.5, 51.4], [-2.5, 51.5], [-2.6, 51.4]]]}
    assert Asset.from_document({"_id": "a", "geometry": polygon}).bounding_box() == (-2.6, 51.4, -2.5, 51.5)
    assert Asset.from_document({"_id": "b"}).bounding_box() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021-07-28T07:48:17.103+02:00", datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC)),
        ("2021-07-28T05:48:17Z", datetime(2021, 7, 28, 5, 48, 17, tzinfo=UTC)),
        ("2021-07-28t05:48:17.123456789z", datetime(2021, 7, 28, 5, 48, 17, 123456, tzinfo=UTC)),
        (1627451297103, datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC)),
        (datetime(2021, 7, 28, 7, tzinfo=timezone(timedelta(hours=2))), datetime(2021, 7, 28, 5, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_utc(value: object, expected: datetime) -> None:
    parsed = parse_time(value, "t")
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["2021-07-28", "2021-13-28T05:48:17Z", True, float("inf"), datetime(2021, 1, 1)])
def test_parse_time_refuses(value: object) -> None:
    with pytest.raises(ModelError, match=r"^when: expected"):
        parse_time(value, "when")


def test_format_time_sorts_as_text() -> None:
    times = [datetime(2021, 7, 28, 5, 48, 17, 103000, tzinfo=UTC), datetime(2021, 7, 28, 5, 48, 17, tzinfo=UTC)]
    assert sorted(format_time(t) for t in times) == [format_time(t) for t in sorted(times)]


def test_sample_validation() -> None:
    ts = datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    sample = Sample("k", ts, 5, quality=Quality.INVALID | Quality.CURATED)
    assert sample.ts == datetime(2024, 1, 1, tzinfo=UTC) and sample.value == 5.0 and type(sample.value) is float
    assert not sample.valid
    with pytest.raises(ModelError, match="sample 'k': ts: expected a timezone-aware datetime"):
        Sample("k", datetime(2024, 1, 1), 1.0)
    with pytest.raises(ModelError, match="value: expected a finite number or None"):
        Sample("k", ts, float("nan"))
    with pytest.raises(ModelError, match="quality: expected a Quality flag set"):
        Sample("k", ts, 1.0, quality=4096)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"data\.x: expected a JSON value"):
        Sample("k", ts, None, data={"x": {1, 2}})


def test_series_validation() -> None:
    series = Series(key="s/x", layer="grid", asset="s", name="x", statistic="mean")  # type: ignore[arg-type]
    assert series.statistic is Statistic.MEAN
    with pytest.raises(ModelError, match="series 's/x': statistic: expected one of instant, mean"):
        Series(key="s/x", layer="grid", asset="s", name="x", statistic="median")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="interval: expected a positive timedelta"):
        Series(key="s/x", layer="grid", asset="s", name="x", interval=timedelta(0))
    with pytest.raises(ModelError, match="series: key: expected a non-empty string"):
        Series(key=" s", layer="grid", asset="s", name="x")


def test_event_and_resource_validation() -> None:
    event = Event("grid", "s1", "2024-01-01T00:00:00Z", "alarm", state="ENDED")  # type: ignore[arg-type]
    assert event.time == datetime(2024, 1, 1, tzinfo=UTC) and event.state.value == "ENDED"
    with pytest.raises(ModelError, match="state: expected NEW or ENDED"):
        Event("grid", "s1", datetime(2024, 1, 1, tzinfo=UTC), "alarm", state="OPEN")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="filename: expected a file name without '/'"):
        Resource("r1", "bucket", "../etc/passwd")
    with pytest.raises(ModelError, match="sha256: expected 64 lower-case hex digits"):
        Resource("r1", "bucket", "a.csv", sha256="xyz")


def test_reading_names_its_fields() -> None:
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    reading = Reading((ts, 1.5, 1, {"a": 1}, 0.9, 0.2))
    assert (reading.ts, reading.value, reading.quality, reading.data, reading.confidence, reading.cost) == (
        ts,
        1.5,
        Quality.INVALID,
        {"a": 1},
        0.9,
        0.2,
    )


@pytest.mark.parametrize("missing", ["_id", "label", "description", "collections"])
def test_layer_needs_the_xflex_minimum_attributes(missing: str) -> None:
    document = {k: v for k, v in GRIDFLEX.items() if k not in (missing, "id" if missing == "_id" else "")}
    with pytest.raises(ModelError, match=rf"^layer: {missing} is missing \(X-FLEX 3.1.2.1 Table 3"):
        Layer.from_document(document)
    with pytest.raises(ModelError, match="label, description, collections are missing"):
        Layer.from_document({"_id": "bare"})
    empty = Layer.from_document({"_id": "empty", "label": "", "description": "", "collections": []})
    assert empty.collections == () and Layer.from_document(empty.to_document()) == empty


def test_an_untimed_measurement_is_dated_by_the_caller() -> None:
    asset = Asset.from_document({"_id": "a", "measurements": {"p": {"value": 1}}})
    with pytest.raises(ModelError, match=r"measurements\.p: timestamp is missing"):
        asset.measurements()
    when = datetime(2024, 5, 1, tzinfo=UTC)
    assert [(m.name, m.timestamp) for m in asset.measurements(default_time=when)] == [("p", when)]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"a.b": 1}, "a.b"),
        ({"$set": {"x": 1}}, "$set"),
        ({"site": {"name": "x", "geo.lat": 51}}, "site.geo.lat"),
        ({"rows": [{"ok": 1}, {"$bad": 2}]}, "rows[1].$bad"),
        ({"measurements": {"p.q": {"value": 1, "timestamp": 0}}}, "measurements.p.q"),
    ],
)
def test_field_names_selectors_cannot_reach_are_refused(document: dict[str, Any], path: str) -> None:
    with pytest.raises(ModelError, match=rf"^documents\[0\]: field '{re.escape(path)}': a field name must not"):
        check_field_names(document, "documents[0]")


def test_plain_field_names_pass() -> None:
    check_field_names({"a": {"b-c": [{"d_e": 1, "a$": 2}]}, "_id": "x"}, "doc")
