"""Mapping LV-CAP upload rows to series, samples and events, row by row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gridhub.formats.lvcap import LvcapError, ScalarObject
from gridhub.hub.model import Quality, Series, Statistic
from gridhub.hub.pipeline.lvcap import (
    EVENT_ERROR,
    EVENT_MESSAGE,
    EVENT_REJECTED,
    SUBSTATIONS,
    UploadRow,
    map_rows,
    phase_for,
    series_key,
    statistic_for,
    unit_for,
)

SITE = "substation-0042"
LAYER = "edge"
SIM = "gridhub_simulator_01"


def row(sub_topic: str, data: Any, row_id: int = 1, table: str = SIM, stamp: int = 1_700_000_000) -> UploadRow:
    return UploadRow(table, row_id, stamp, sub_topic, data)


def at(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def test_scalar_becomes_one_sample_of_a_series_keyed_by_site_table_and_sub_topic() -> None:
    data = {"Timestamp": 1504110640, "Value": 240.0, "Valid": True, "ToStore": True}
    out = map_rows(SITE, LAYER, [row("/60/busbar/l1/voltage-mean", data, 101)])
    key = "substation-0042/gridhub_simulator_01/60/busbar/l1/voltage-mean"
    assert [(s.series, s.ts, s.value, s.quality) for s in out.samples] == [(key, at(1504110640), 240.0, Quality(0))]
    series = out.series[key]
    assert (series.layer, series.collection, series.asset) == (LAYER, SUBSTATIONS, SITE)
    assert (series.unit, series.phase, series.statistic) == ("V", "L1", Statistic.MEAN)
    assert series.interval == timedelta(seconds=60)
    assert series.attributes["unit_source"] == "topic" and series.attributes["kind"] == "scalar"
    assert not out.events and not out.rejected


def test_invalid_reading_is_kept_with_the_invalid_flag() -> None:
    data = {"Timestamp": 1700000060, "Value": 0, "Valid": False}
    out = map_rows(SITE, LAYER, [row("/60/feeder1/l2/current-max", data)])
    assert len(out.samples) == 1
    assert out.samples[0].quality == Quality.INVALID and out.samples[0].value == 0.0


def test_boolean_scalar_is_stored_as_one_or_zero() -> None:
    out = map_rows(SITE, LAYER, [row("/alarm/highhigh", {"Timestamp": 1, "Value": True, "Valid": True})])
    assert out.samples[0].value == 1.0


@pytest.mark.parametrize(
    ("sub_topic", "unit"),
    [
        ("/60/busbar/l3/voltage-min", "V"),
        ("/60/transformer/l1/current-mean", "A"),
        ("/60/feeder2/l1/power-active-mean", "W"),
        ("/60/feeder2/l1/power-reactive-mean", "var"),
        ("/60/transformer/l2/power-factor-mean", "1"),
        ("/60/transformer/l2/energy-active", "J"),
        ("/60/transformer/l2/energy-reactive", "var·s"),
        ("/10/transformer/temperature-top-oil", "°C"),
        ("/10/ambient/temperature-outdoor", "°C"),
        ("/10/thermocouple3/temperature", "°C"),
        ("/temperature/hot-spot", "°C"),
        ("/rating/continuous", "A"),
        ("/rating/continuous-load-factor", "1"),
        ("/ageing/loss-of-life", "h"),
        ("/Number1Tx/load/A", "A"),
        ("/10/analogue1/value", ""),
        ("/", ""),
    ],
)
def test_units_follow_the_topic_conventions(sub_topic: str, unit: str) -> None:
    assert unit_for(sub_topic) == unit


def test_phase_and_statistic_come_from_the_sub_topic() -> None:
    assert phase_for("/60/feeder1/n/current-mean") == "N"
    assert phase_for("/10/ambient/temperature-outdoor") == ""
    assert statistic_for("/60/busbar/l1/voltage-max") == Statistic.MAX
    assert statistic_for("/60/busbar/l1/voltage-min") == Statistic.MIN
    assert statistic_for("/60/transformer/l1/energy-active") == Statistic.SUM
    assert statistic_for("/10/transformer/temperature-top-oil") == Statistic.INSTANT


def test_metadata_row_gives_the_unit_and_names_even_after_the_data() -> None:
    topic = "/10/analogue1/value"
    rows = [
        row(topic, {"Timestamp": 10, "Value": 4.2, "Valid": True}, 1),
        row(topic + "/meta", {"Name": "Analogue 1", "Units": "mA", "DisplayUnits": "mA", "SigFigs": 3}, 2),
    ]
    out = map_rows(SITE, LAYER, rows)
    series = out.series[series_key(SITE, SIM, topic)]
    assert series.unit == "mA" and series.attributes["unit_source"] == "meta"
    assert series.attributes["title"] == "Analogue 1" and series.attributes["sig_figs"] == 3
    assert len(out.samples) == 1 and not out.events


def test_metadata_from_an_earlier_batch_is_kept_and_unchanged_series_are_not_returned() -> None:
    topic = "/10/analogue1/value"
    first = map_rows(
        SITE,
        LAYER,
        [row(topic + "/meta", {"Units": "mA"}, 1), row(topic, {"Timestamp": 1, "Value": 1, "Valid": True}, 2)],
    )
    known: dict[str, Series] = dict(first.series)
    second = map_rows(SITE, LAYER, [row(topic, {"Timestamp": 2, "Value": 2, "Valid": True}, 3)], known)
    assert second.series == {}  # nothing new to store: the metadata unit stands
    assert second.samples[0].series == series_key(SITE, SIM, topic)


def test_time_series_gives_one_sample_per_value_with_confidence() -> None:
    data = {  # Figure 12: a load prediction, half-hourly
        "Timestamp": 1488983405,
        "StartPoint": 1488983405,
        "Interval": 1800.0,
        "Value": [120.0, 122.5, 125.7, 130.9, 124.8, 121.4, 118.6, 115.3],
        "Confidence": [1.0, 1.0, 1.0, 1.0, 0.85, 0.75, 1.0, 1.0],
        "Valid": True,
        "TimestampStart": 1486564200,
        "TimestampEnd": 1488380400,
    }
    out = map_rows(SITE, LAYER, [row("/forecast/load", data)])
    assert [s.ts for s in out.samples] == [at(1488983405 + i * 1800) for i in range(8)]
    assert [s.value for s in out.samples] == data["Value"]
    assert [s.confidence for s in out.samples] == data["Confidence"]
    assert out.series[series_key(SITE, SIM, "/forecast/load")].attributes["kind"] == "time-series"


def test_spectrum_is_one_structured_sample() -> None:
    data = {  # Figure 13: a harmonic spectrum
        "Timestamp": 1488711600,
        "StartPoint": 50,
        "Interval": 50,
        "Value": [76423.0, 122.5, 86.7, 57.9, 12.4],
        "Valid": True,
        "TimestampStart": 1488711000,
        "TimestampEnd": 1488711599,
        "ToStore": True,
        "Priority": 5,
    }
    out = map_rows(SITE, LAYER, [row("/harmonics/l1", data)])
    [sample] = out.samples
    assert sample.ts == at(1488711600) and sample.value is None
    assert sample.data == {"StartPoint": 50, "Interval": 50, "Value": data["Value"]}


def test_coordinates_are_one_structured_sample_and_invalid_is_flagged() -> None:
    data = {"Timestamp": 1700000000, "Coordinates": [51.45, -2.58], "System": "WGS84", "Valid": False}
    [sample] = map_rows(SITE, LAYER, [row("/position", data)]).samples
    assert sample.data == {"Coordinates": [51.45, -2.58], "System": "WGS84"}
    assert sample.quality == Quality.INVALID


def test_error_record_becomes_an_event() -> None:
    data = {"Errno": 11, "Message": "sensor 3 not answering", "Timestamp": 1700000100}
    out = map_rows(SITE, LAYER, [row("/error", data, 7)])
    [event] = out.events
    assert (event.type, event.code, event.asset, event.layer) == (EVENT_ERROR, "SENSOR", SITE, LAYER)
    assert event.time == at(1700000100)
    assert event.payload["table"] == SIM and event.payload["id"] == 7 and event.payload["message"] == data["Message"]
    assert not out.samples and not out.rejected


def test_non_standard_payload_becomes_an_event_not_a_rejection() -> None:
    out = map_rows(SITE, LAYER, [row("/state", {"mode": "boost"}), row("/raw", [1, 2, 3], 2)])
    assert [e.type for e in out.events] == [EVENT_MESSAGE, EVENT_MESSAGE]
    assert out.events[1].payload["data"] == [1, 2, 3]
    assert not out.rejected


def test_a_bad_standard_object_is_rejected_with_a_reason_and_kept_as_an_event() -> None:
    rows = [
        row("/60/busbar/l1/voltage-mean", {"Timestamp": 1, "Value": 230.0, "Valid": "yes"}, 1),
        row("/60/busbar/l1/voltage-mean", {"Timestamp": 2, "Value": 231.0, "Valid": True}, 2),
    ]
    out = map_rows(SITE, LAYER, rows)
    assert list(out.rejected) == [(SIM, 1)] and "Valid" in out.rejected[(SIM, 1)]
    [event] = out.events
    assert event.type == EVENT_REJECTED and event.payload["data"] == rows[0].data
    assert [s.value for s in out.samples] == [231.0]


def test_top_level_topic_and_mapping_is_deterministic() -> None:
    rows = [row("/", {"Timestamp": 5, "Value": 1.5, "Valid": True})]
    first, second = map_rows(SITE, LAYER, rows), map_rows(SITE, LAYER, rows)
    assert list(first.series) == [f"{SITE}/{SIM}"]
    assert first.samples == second.samples and first.series == second.series


@pytest.mark.parametrize(
    "data",
    [
        {"Timestamp": 1700000000, "Value": 231.5, "Valid": True},
        {"Timestamp": 1700000000, "Value": 7, "Valid": False, "ToStore": True, "Priority": 2, "Signature": {}},
        {"Timestamp": 1700000000, "Value": 1.0, "Valid": True, "Priority": 9},
        {"Timestamp": 1700000000, "Value": 1.0, "Valid": True, "Priority": "high"},
        {"Timestamp": 1700000000, "Value": 1.0, "Valid": True, "ToStore": "yes"},
        {"Timestamp": 1700000000, "Value": 1.0, "Valid": True, "Comment": "kept by the parser"},
        {"Timestamp": True, "Value": 1.0, "Valid": True},
        {"Timestamp": 2**63, "Value": 1.0, "Valid": True},
        {"Timestamp": 1700000000, "Value": 2**64, "Valid": True},
        {"Timestamp": 1700000000, "Value": "230", "Valid": True},
        {"Timestamp": 1700000000, "Value": 1.0},
    ],
)
def test_scalars_are_accepted_or_rejected_exactly_as_the_lvcap_parser_says(data: dict[str, Any]) -> None:
    out = map_rows(SITE, LAYER, [row("/60/busbar/l1/voltage-mean", data)])
    try:
        parsed = ScalarObject.from_json(data, where="Data")
    except LvcapError:
        assert out.rejected and not out.samples
        return
    [sample] = out.samples
    assert not out.rejected
    assert sample.ts == at(parsed.timestamp) and sample.value == float(parsed.value)
    assert sample.quality == (Quality(0) if parsed.valid else Quality.INVALID)
