"""Tests for gridhub.formats.lvcap against the examples and rules of the LV-CAP Public API (Annex 4)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gridhub.formats import lvcap
from gridhub.formats.lvcap import (
    AppConfiguration,
    AppId,
    CommandCode,
    CommandMessage,
    ConfigRequest,
    ConfigResponse,
    CoordinateObject,
    Errno,
    ErrorReport,
    InstanceId,
    LvcapError,
    MetadataObject,
    QueryResponse,
    QueryStatus,
    ScalarObject,
    SeriesObject,
    StatusCode,
    StatusRequest,
    StatusResponse,
    StorageQuery,
    TableResult,
    TableRow,
    UploadedNotice,
    decode_json_object,
    effective_priority,
    encode_json,
    is_legacy_guid,
    parse_standard_object,
    sub_topic_for_response,
    sub_topic_from_response,
    topic_matches,
    validate_apid,
    validate_iid,
    validate_topic,
    validate_topic_filter,
)

IID = "eatl_profiler_04"
GUID = "821b8e33-4eaa-480e-b205-30fa9572af1a"  # Glossary, GUID/UUID example
GUID_4_4 = "0ca2eadb-b128-4dff-9bd7-cbb15e21b8b1"  # 4.4 topic example

# Figure 5 as printed uses Python's True, which is not JSON; the corrected payload.
FIGURE_5_PRINTED = b'{  \n  "PreferOldest": True  \n}'
FIGURE_5 = b'{\n  "PreferOldest": true\n}'
FIGURE_6 = b'{\n  "MaxLength": 50,\n  "InstanceID": "eat1_profiler_04"\n}'
FIGURE_7 = (
    b'{\n  "MaxLength": 10,\n  "InstanceID": "eat1_profiler_04",\n  "SubTopic": "alarm/highhigh",\n'
    b'  "MaxPriority": 1\n}'
)
FIGURE_8_DATA = b'{"Timestamp":1504110640, "Value":240.0, "Valid":true, "ToStore":true}'
FIGURE_8 = (
    b"""{
  "Status": 1,
  "Response": [
    {
      "TableName": "eatl_profiler_04",
      "TableRows": [
        {
          "ID": 101,
          "Timestamp": 1504110640,
          "SubTopic": "/60/busbar/13/voltage-mean",
          "Data": %s
        }
      ]
    }
  ]
}"""
    % FIGURE_8_DATA
)
FIGURE_9 = b'{\n  "NewData": [\n    {"eatl_profiler_04": [101]}\n  ]\n}'
FIGURE_12 = b"""{
  "Timestamp": 1488983405,
  "StartPoint": 1488983405,
  "Interval" : 1800.0,
  "Value": [120.0, 122.5, 125.7, 130.9, 124.8, 121.4, 118.6, 115.3],
  "Confidence": [1.0, 1.0, 1.0, 1.0, 0.85, 0.75, 1.0, 1.0],
  "Valid": true,
  "TimestampStart": 1486564200,
  "TimestampEnd": 1488380400
}"""
FIGURE_13 = b"""{
  "Timestamp": 1488711600,
  "StartPoint": 50,
  "Interval" : 50,
  "Value": [76423.0, 122.5, 86.7, 57.9, 12.4],
  "Valid": true,
  "TimestampStart": 1488711000,
  "TimestampEnd": 1488711599,
  "ToStore": true,
  "Priority": 5
}"""
# Figure 16 with its placeholders filled in.
FIGURE_16 = b"""{
  "ContainerName": "eatl_profiler_04",
  "ContainerConfig":
  {
    "input": "sensor/data/eatl_modbusrtusensor_01/Number1Tx/load/A",
    "interval": 30,
    "thresholds": {"high": 250.0}
  }
}"""
SIGNATURE = {"Algorithm": "ed25519", "Value": "q83v", "Nested": [1, {"x": None}]}


def error_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(LvcapError) as info:
        call(*args, **kwargs)
    return str(info.value)


# -- JSON (4.3, 4.6) -----------------------------------------------------------------------


def test_decode_json_object_accepts_pretty_printed_objects() -> None:
    assert decode_json_object(FIGURE_6, "storage/request/x") == {"MaxLength": 50, "InstanceID": "eat1_profiler_04"}


def test_figure_5_as_printed_is_not_json_and_is_refused_naming_the_topic() -> None:
    message = error_of(decode_json_object, FIGURE_5_PRINTED, "storage/request/newdata/x")
    assert message.startswith("storage/request/newdata/x: invalid JSON")
    assert decode_json_object(FIGURE_5, "q") == {"PreferOldest": True}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "empty payload"),
        (b"   ", "empty payload"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"Value": NaN}', "NaN is not valid JSON"),
        (b'{"Value": -Infinity}', "-Infinity is not valid JSON"),
        (b'\xef\xbb\xbf{"a": 1}', "invalid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
        (b'{"a": 1', "invalid JSON"),
    ],
)
def test_decode_json_object_refuses_what_is_not_a_utf8_json_object(payload: bytes, expected: str) -> None:
    assert expected in error_of(decode_json_object, payload, "topic/x")


def test_encode_json_is_compact_utf8() -> None:
    encoded = encode_json({"Name": "Température", "Value": [1, 2.5], "Valid": True})
    assert encoded == '{"Name":"Température","Value":[1,2.5],"Valid":true}'.encode()


@pytest.mark.parametrize("bad", [{"Value": float("nan")}, {"Value": {1, 2}}, {"Value": float("inf")}])
def test_encode_json_refuses_what_json_cannot_carry(bad: dict[str, Any]) -> None:
    assert "cannot encode as JSON" in error_of(encode_json, bad)


# -- identifiers (4.2, 4.2.1) --------------------------------------------------------------


def test_app_id_builds_apid_and_docker_tag() -> None:
    app = AppId("eatl", "profiler", "1.2.3")
    assert app.apid == "eatl_profiler_1.2.3"
    assert app.docker_tag == "eatl/profiler:1.2.3"
    assert AppId.parse("eatl_profiler_1.2.3") == app
    assert app.instance_id("04").iid == IID


@pytest.mark.parametrize(
    ("vendor", "name", "version", "expected"),
    [
        ("EATL", "profiler", "1", "Vendor 'EATL'"),
        ("ea_tl", "profiler", "1", "Vendor 'ea_tl'"),
        ("-eatl", "profiler", "1", "Vendor '-eatl'"),
        ("ea.tl", "profiler", "1", "Vendor 'ea.tl'"),
        ("", "profiler", "1", "Vendor: must not be empty"),
        ("eatl", "pro filer", "1", "Application Name 'pro filer'"),
        ("eatl", "profiler.2", "1", "Application Name 'profiler.2'"),
        ("eatl", "-profiler", "1", "Application Name '-profiler'"),
        ("eatl", "profiler", "-1", "Application Version '-1'"),
        ("eatl", "profiler", ".1", "Application Version '.1'"),
        ("eatl", "profiler", "1.2_3", "Application Version '1.2_3'"),
        ("eatl", "profiler", "V1", "Application Version 'V1'"),
        ("eatl", "profiler", "", "Application Version: must not be empty"),
    ],
)
def test_app_id_refuses_names_docker_would_refuse(vendor: str, name: str, version: str, expected: str) -> None:
    assert expected in error_of(AppId, vendor, name, version)


def test_app_id_allows_hyphens_digits_and_version_periods() -> None:
    assert AppId("ea-tl2", "load-4cast", "2017.10-rc1").apid == "ea-tl2_load-4cast_2017.10-rc1"


def test_app_id_total_length_must_be_less_than_44() -> None:
    assert AppId("v" * 20, "n" * 20, "1.0").apid  # 43 characters
    message = error_of(AppId, "v" * 20, "n" * 20, "1.00")
    assert "total 44 characters, must be less than 44" in message


@pytest.mark.parametrize("bad", ["eatl_profiler", "eatl_profiler_1_2", "eatl-profiler-1", GUID, ""])
def test_app_id_parse_names_the_expected_form(bad: str) -> None:
    message = error_of(AppId.parse, bad)
    assert message.startswith(f"APID {bad!r}")


def test_instance_id_round_trips_and_accepts_00_to_99() -> None:
    for instance in ("00", "01", "42", "99"):
        iid = f"eatl_profiler_{instance}"
        assert InstanceId.parse(iid) == InstanceId("eatl", "profiler", instance)
        assert validate_iid(iid) == iid
    assert InstanceId("eatl", "profiler", "04").app_id("1.0").apid == "eatl_profiler_1.0"


@pytest.mark.parametrize("bad", ["eatl_profiler_4", "eatl_profiler_100", "eatl_profiler_ab", "eatl_profiler", "x"])
def test_instance_id_refuses_anything_but_two_digits(bad: str) -> None:
    message = error_of(validate_iid, bad, "ContainerName")
    assert message.startswith(f"ContainerName {bad!r}")


def test_instance_id_leaves_room_for_a_version() -> None:
    assert InstanceId("v" * 21, "n" * 21, "01")
    assert "leaving no room" in error_of(InstanceId, "v" * 22, "n" * 21, "01")


@pytest.mark.parametrize("guid", [GUID, GUID_4_4, GUID.upper()])
def test_legacy_guid_is_accepted_as_both_iid_and_apid(guid: str) -> None:
    assert is_legacy_guid(guid)
    assert validate_iid(guid) == guid
    assert validate_apid(guid) == guid
    assert "legacy GUID" in error_of(InstanceId.parse, guid)


@pytest.mark.parametrize("bad", ["821b8e33-4eaa-480e-b205-30fa9572af1", "821b8e334eaa480eb20530fa9572af1a", "g" * 36])
def test_malformed_guids_are_not_legacy_identifiers(bad: str) -> None:
    assert not is_legacy_guid(bad)
    with pytest.raises(LvcapError):
        validate_iid(bad)


# -- priority (4.9) ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2, 3, 4, 5])
def test_valid_priorities_rank_as_themselves(value: int) -> None:
    assert effective_priority(value) == value


@pytest.mark.parametrize("value", [0, 6, 7, -1, 2.5, 2.0, "1", True, False, None, [1]])
def test_invalid_priorities_count_as_unspecified_and_rank_6(value: object) -> None:
    assert effective_priority(value) == lvcap.NO_PRIORITY == 6


def test_unspecified_priority_ranks_after_all_specified() -> None:
    priorities: list[object] = [None, 5, 7, 1, "1", 3, 0, True, 2]
    ranked = sorted(priorities, key=effective_priority)
    assert ranked == [1, 2, 3, 5, None, 7, "1", 0, True]  # unspecified ones keep their order
    assert [effective_priority(p) for p in ranked] == [1, 2, 3, 5, 6, 6, 6, 6, 6]


def test_invalid_priority_in_a_received_object_is_kept_but_unspecified() -> None:
    data = {"Timestamp": 1, "Value": 1.5, "Valid": True, "Priority": 7}
    obj = ScalarObject.from_json(data)
    assert obj.priority is None
    assert obj.effective_priority == 6
    assert obj.to_json() == data


def test_building_an_object_with_an_invalid_priority_is_refused() -> None:
    message = error_of(ScalarObject, timestamp=1, value=1, valid=True, priority=7)
    assert message == "Scalar.Priority: expected an integer from 1 (highest) to 5 (lowest) (4.9), got 7"
    assert ScalarObject(timestamp=1, value=1, valid=True, priority=2).effective_priority == 2


# -- Integer / Int64 (8.1.1) ---------------------------------------------------------------


@pytest.mark.parametrize("status", [lvcap.INT32_MIN, -1, 0, 42, lvcap.INT32_MAX])
def test_integer_keys_accept_the_whole_int32_range(status: int) -> None:
    assert StatusResponse.from_json({"Status": status}).status == status


@pytest.mark.parametrize("status", [lvcap.INT32_MAX + 1, lvcap.INT32_MIN - 1])
def test_integer_keys_refuse_values_beyond_int32(status: int) -> None:
    message = error_of(StatusResponse.from_json, {"Status": status})
    assert message.startswith(f"StatusResponse.Status: {status} does not fit an Integer (32-bit signed)")


@pytest.mark.parametrize("timestamp", [lvcap.INT64_MIN, 0, 1504110640, lvcap.INT64_MAX])
def test_int64_keys_accept_the_whole_int64_range(timestamp: int) -> None:
    assert ConfigRequest.from_json({"Timestamp": timestamp}).timestamp == timestamp


@pytest.mark.parametrize("timestamp", [lvcap.INT64_MAX + 1, lvcap.INT64_MIN - 1])
def test_int64_keys_refuse_values_beyond_int64(timestamp: int) -> None:
    assert "does not fit an Int64" in error_of(ConfigRequest.from_json, {"Timestamp": timestamp})


@pytest.mark.parametrize(("value", "shown"), [(True, "true"), (1.0, "1.0"), ("1", "'1'"), (None, "null")])
def test_booleans_floats_and_strings_are_not_integers(value: object, shown: str) -> None:
    message = error_of(CommandMessage.from_json, {"Command": value})
    assert message == f"CommandMessage.Command: expected an Integer (32-bit signed), got {shown}"
    message = error_of(ScalarObject.from_json, {"Timestamp": value, "Value": 1, "Valid": True})
    assert message == f"Scalar.Timestamp: expected an Int64 (64-bit signed integer), got {shown}"


# -- topic names (4.4) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        f"algorithm/data/{GUID_4_4}/Number1Tx/state/hst",
        "sensor/data/eatl_modbusrtusensor_01/Number1Tx/load/A",
        "algorithm/data/eatl_profiler_04/T1/forecast/4h/capacity",
        "status/request",
        "a" * 220,
    ],
)
def test_valid_topic_names(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("sensor/data/Melrose Avenue", "character ' ' at position 19: spaces are not permitted"),
        ("sensor/data/Température", "topic names are ASCII only"),
        ("sensor/data/v1.2", "character '.' at position 14"),
        ("sensor//data", "level 2 is empty"),
        ("/sensor/data", "level 1 is empty"),
        ("sensor/data/", "level 3 is empty"),
        ("sensor/+/x", "wildcards are only allowed in subscriptions"),
        ("sensor/#", "wildcards are only allowed in subscriptions"),
        ("a" * 221, "221 characters, longer than the 220 allowed"),
        ("", "must not be empty"),
    ],
)
def test_invalid_topic_names_are_refused_saying_why(topic: str, expected: str) -> None:
    message = error_of(validate_topic, topic, "Configuration.input")
    assert message.startswith("Configuration.input")
    assert expected in message


@pytest.mark.parametrize("pattern", ["sensor/data/+/#", "#", "+", "+/data/#", "algorithm/data/eatl_profiler_04"])
def test_valid_topic_filters(pattern: str) -> None:
    assert validate_topic_filter(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("sensor/#/x", "'#' is only allowed as the last level"),
        ("sensor/data+/x", "a wildcard must be a whole level"),
        ("sensor/data#", "a wildcard must be a whole level"),
        ("sensor//+", "level 2 is empty"),
        ("sensor/da ta/#", "spaces are not permitted"),
    ],
)
def test_invalid_topic_filters_are_refused(pattern: str, expected: str) -> None:
    assert expected in error_of(validate_topic_filter, pattern)


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("sensor/data/+/#", "sensor/data/eatl_modbus_01/Number1Tx/load/A", True),
        ("sensor/data/+/#", "sensor/data/eatl_modbus_01", True),
        ("sensor/data/+/#", "sensor/data", False),
        ("sensor/data/+", "sensor/data/eatl_modbus_01", True),
        ("sensor/data/+", "sensor/data/eatl_modbus_01/load", False),
        ("sensor/+/eatl_modbus_01/load", "sensor/data/eatl_modbus_01/load", True),
        ("+/+", "status/request", True),
        ("+", "status/request", False),
        ("#", "status/request", True),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("status/request", "status/request", True),
        ("status/request", "status/Request", False),
        ("status/request", "status/request/x", False),
        ("algorithm/data/#", "sensor/data/x", False),
    ],
)
def test_topic_matches_follows_mqtt_wildcards(pattern: str, topic: str, matches: bool) -> None:
    assert topic_matches(pattern, topic) is matches


def test_topic_builders_give_the_public_api_topics() -> None:
    assert lvcap.status_request_topic() == "status/request"
    assert lvcap.config_request_topic(IID) == "config/request/eatl_profiler_04"
    assert lvcap.config_response_topic(IID) == "config/response/eatl_profiler_04"
    assert lvcap.status_response_topic(IID) == "status/response/eatl_profiler_04"
    assert lvcap.command_topic(IID) == "command/eatl_profiler_04"
    assert lvcap.sensor_data_topic(IID) == "sensor/data/eatl_profiler_04"
    assert lvcap.sensor_data_topic(IID, "Number1Tx/load/A") == "sensor/data/eatl_profiler_04/Number1Tx/load/A"
    assert lvcap.algorithm_data_topic(IID, "alarm/highhigh") == "algorithm/data/eatl_profiler_04/alarm/highhigh"
    assert lvcap.storage_data_topic(IID) == "storage/data/eatl_profiler_04"
    assert lvcap.storage_data_topic(IID, "/60/busbar") == "storage/data/eatl_profiler_04/60/busbar"
    assert lvcap.storage_error_topic(IID) == "storage/data/error/eatl_profiler_04"
    assert lvcap.storage_request_topic(IID) == "storage/request/eatl_profiler_04"
    assert lvcap.storage_response_topic(IID) == "storage/response/eatl_profiler_04"
    assert lvcap.newdata_request_topic(IID) == "storage/request/newdata/eatl_profiler_04"
    assert lvcap.newdata_response_topic(IID) == "storage/response/newdata/eatl_profiler_04"
    assert lvcap.uploaded_topic(IID) == "storage/uploaded/eatl_profiler_04"
    assert lvcap.command_topic(GUID) == f"command/{GUID}"


def test_topic_builders_refuse_bad_iids_and_sub_topics() -> None:
    assert "IID 'eatl_profiler'" in error_of(lvcap.command_topic, "eatl_profiler")
    assert "IID '+'" in error_of(lvcap.status_response_topic, "+")
    assert "spaces are not permitted" in error_of(lvcap.algorithm_data_topic, IID, "T1 load")
    room = 220 - len(f"sensor/data/{IID}/")
    assert len(lvcap.sensor_data_topic(IID, "x" * room)) == 220
    assert "221 characters" in error_of(lvcap.sensor_data_topic, IID, "x" * (room + 1))


def test_qos_constants_follow_the_tables() -> None:
    assert (lvcap.QOS_CONFIG, lvcap.QOS_STATUS_REQUEST, lvcap.QOS_STATUS_RESPONSE, lvcap.QOS_COMMAND) == (1, 0, 1, 1)
    assert (lvcap.QOS_ERROR, lvcap.QOS_SENSOR, lvcap.QOS_ALGORITHM) == (1, 1, 1)
    assert (lvcap.QOS_STORAGE_DATA, lvcap.QOS_STORAGE_REQUEST, lvcap.QOS_STORAGE_RESPONSE) == (2, 1, 1)
    assert (lvcap.QOS_NEWDATA, lvcap.QOS_UPLOADED) == (2, 1)


def test_topic_iid_and_split_data_topic_find_the_instance() -> None:
    assert lvcap.topic_iid("storage/request/newdata/eatl_profiler_04") == IID
    assert lvcap.topic_iid("storage/data/error/eatl_profiler_04") == IID
    assert lvcap.topic_iid("status/response/eatl_profiler_04") == IID
    assert lvcap.topic_iid(f"algorithm/data/{GUID_4_4}/Number1Tx/state/hst") == GUID_4_4
    assert lvcap.topic_iid("status/response/not-an-iid") is None
    assert lvcap.topic_iid("status/request") is None
    assert lvcap.split_data_topic("algorithm/data/eatl_profiler_04/alarm/highhigh") == (
        "algorithm/data",
        IID,
        "alarm/highhigh",
    )
    assert lvcap.split_data_topic("storage/data/eatl_profiler_04") == ("storage/data", IID, "")
    assert lvcap.split_data_topic("storage/data/error/eatl_profiler_04") is None
    assert lvcap.split_data_topic("config/request/eatl_profiler_04") is None


def test_sub_topic_response_form_has_a_leading_slash() -> None:
    assert sub_topic_for_response(None) == "/"
    assert sub_topic_for_response("") == "/"
    assert sub_topic_for_response("60/busbar/13/voltage-mean") == "/60/busbar/13/voltage-mean"
    assert sub_topic_for_response("/60/busbar") == "/60/busbar"
    assert sub_topic_from_response("/60/busbar") == "60/busbar"
    assert sub_topic_from_response("/") == ""


# -- standard objects (9.1-9.4) ------------------------------------------------------------


def test_figure_12_load_prediction_series() -> None:
    data = decode_json_object(FIGURE_12, "algorithm/data/x")
    series = SeriesObject.from_json(data)
    assert series.timestamp == 1488983405
    assert series.interval == 1800.0
    assert len(series.value) == len(series.confidence or []) == 8
    assert series.confidence is not None and series.confidence[5] == 0.75
    assert (series.timestamp_start, series.timestamp_end) == (1486564200, 1488380400)
    assert series.to_store is None and series.effective_priority == 6
    assert series.to_json() == data
    assert parse_standard_object(data) == series


def test_figure_13_harmonic_spectrum_series_with_integer_interval() -> None:
    data = decode_json_object(FIGURE_13, "algorithm/data/x")
    series = SeriesObject.from_json(data)
    assert (series.start_point, series.interval) == (50, 50)
    assert series.confidence is None
    assert series.to_store is True and series.priority == 5
    assert series.to_json() == data
    assert json.loads(series.encode()) == data


def test_figure_8_data_is_a_scalar_object() -> None:
    scalar = parse_standard_object(json.loads(FIGURE_8_DATA))
    assert scalar == ScalarObject(timestamp=1504110640, value=240.0, valid=True, to_store=True)
    assert scalar.encode() == b'{"Timestamp":1504110640,"Value":240.0,"Valid":true,"ToStore":true}'


@pytest.mark.parametrize("value", [True, False, 0, -3, 240.0, 1e-9])
def test_scalar_value_may_be_any_scalar(value: object) -> None:
    data = {"Timestamp": 1, "Value": value, "Valid": True}
    assert ScalarObject.from_json(data).to_json() == data


@pytest.mark.parametrize(("value", "shown"), [("240", "'240'"), (None, "null"), ({"a": 1}, "{'a': 1}")])
def test_scalar_value_must_be_a_scalar(value: object, shown: str) -> None:
    message = error_of(ScalarObject.from_json, {"Timestamp": 1, "Value": value, "Valid": True})
    assert message == f"Scalar.Value: expected a scalar (boolean, integer or number), got {shown}"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"Timestamp": 1, "Value": 1, "Valid": "yes"}, "Scalar.Valid: expected a boolean, got 'yes'"),
        ({"Timestamp": 1, "Value": 1}, "Scalar: missing required key 'Valid'"),
        ({"Value": 1, "Valid": True}, "Scalar: missing required key 'Timestamp'"),
        (
            {"timestamp": 1, "Value": 1, "Valid": True},
            "Scalar: missing required key 'Timestamp' (found 'timestamp': key names are case-sensitive)",
        ),
        ({"Timestamp": 1.5, "Value": 1, "Valid": True}, "Scalar.Timestamp: expected an Int64"),
        ({"Timestamp": 1, "Value": 1, "Valid": True, "ToStore": 1}, "Scalar.ToStore: expected a boolean, got 1"),
        (
            {"Timestamp": 1, "Value": 1, "Valid": True, "tostore": True},
            "Scalar.tostore: unknown key; key names are case-sensitive, did you mean 'ToStore'?",
        ),
    ],
)
def test_scalar_object_errors_name_the_key(data: dict[str, Any], expected: str) -> None:
    assert error_of(ScalarObject.from_json, data).startswith(expected)


def test_errors_are_prefixed_with_where() -> None:
    message = error_of(parse_standard_object, {"Timestamp": 1, "Value": 1, "Valid": "yes"}, "sensor/data/a_b_01/t")
    assert message == "sensor/data/a_b_01/t.Valid: expected a boolean, got 'yes'"


def test_signature_and_unknown_keys_are_carried_through_untouched() -> None:
    data = {"Timestamp": 5, "Value": False, "Valid": False, "Signature": SIGNATURE, "Vendor-Note": {"a": [1]}}
    obj = ScalarObject.from_json(data)
    assert obj.signature == SIGNATURE
    assert obj.extra == {"Vendor-Note": {"a": [1]}}
    assert obj.to_json() == data
    assert list(obj.to_json()) == list(data)


def test_null_optional_keys_count_as_absent_and_are_written_back() -> None:
    data = {"Timestamp": 5, "Value": 1, "Valid": True, "ToStore": None, "Signature": None}
    obj = ScalarObject.from_json(data)
    assert obj.to_store is None and obj.signature is None
    assert obj.to_json() == data


def test_series_errors_name_the_element() -> None:
    base = {"Timestamp": 1, "StartPoint": 0, "Interval": 1.0, "Valid": True}
    assert error_of(SeriesObject.from_json, {**base, "Value": [1, 2, "x"]}) == (
        "Series.Value[2]: expected a scalar (boolean, integer or number), got 'x'"
    )
    assert error_of(SeriesObject.from_json, {**base, "Value": 3}) == "Series.Value: expected an array, got 3"
    message = error_of(SeriesObject.from_json, {**base, "Value": [1, 2], "Confidence": [1.0]})
    assert message == "Series.Confidence: has 1 values but Value has 2; they must be the same length (9.2)"
    message = error_of(SeriesObject.from_json, {**base, "Value": [1], "Confidence": [True]})
    assert message == "Series.Confidence[0]: expected a number, got true"
    assert "Series: missing required key 'Interval'" in error_of(
        SeriesObject.from_json, {"Timestamp": 1, "StartPoint": 0, "Value": [1], "Valid": True}
    )


def test_series_accepts_mixed_scalars_and_an_empty_value() -> None:
    data = {"Timestamp": 1, "StartPoint": 0.5, "Interval": 0.02, "Value": [True, 1, 2.5], "Valid": True}
    assert SeriesObject.from_json(data).to_json() == data
    empty = {**data, "Value": [], "Confidence": []}
    assert SeriesObject.from_json(empty).value == []


def test_coordinate_object_round_trip_and_checks() -> None:
    data = {
        "Timestamp": 1488711600,
        "Coordinates": [52.8, -1.3],
        "System": "WGS84",
        "Valid": True,
        "ToStore": True,
        "Priority": 2,
        "Signature": SIGNATURE,
    }
    obj = CoordinateObject.from_json(data)
    assert obj.coordinates == [52.8, -1.3] and obj.system == "WGS84" and obj.priority == 2
    assert obj.to_json() == data
    assert parse_standard_object(data) == obj
    assert error_of(CoordinateObject.from_json, {**data, "Coordinates": [1, True]}) == (
        "Coordinate.Coordinates[1]: expected a number, got true"
    )
    assert error_of(CoordinateObject.from_json, {**data, "System": 4326}) == (
        "Coordinate.System: expected a string, got 4326"
    )


def test_parse_standard_object_refuses_ambiguous_objects() -> None:
    message = error_of(parse_standard_object, {"Timestamp": 1, "Coordinates": [1], "Value": 1, "Valid": True})
    assert "both Coordinates and Value" in message


def test_built_objects_refuse_non_finite_numbers() -> None:
    assert "finite" in error_of(ScalarObject, timestamp=1, value=float("nan"), valid=False)


def test_sdk_style_construction_and_replace_revalidate() -> None:
    obj = SeriesObject(timestamp=1, start_point=0, interval=1.0, value=[1.0, 2.0], valid=True, confidence=[1.0, 0.5])
    assert obj.to_json() == {
        "Timestamp": 1,
        "StartPoint": 0,
        "Interval": 1.0,
        "Value": [1.0, 2.0],
        "Confidence": [1.0, 0.5],
        "Valid": True,
    }
    with pytest.raises(LvcapError, match=r"Series\.Confidence: has 2 values but Value has 1"):
        dataclasses.replace(obj, value=[1.0])


def test_metadata_object() -> None:
    data = {"Name": "Top oil temperature", "Units": "degC", "DisplayUnits": "°C", "SigFigs": 3}
    meta = MetadataObject.from_json(data)
    assert (meta.name, meta.units, meta.display_units, meta.sig_figs) == ("Top oil temperature", "degC", "°C", 3)
    assert meta.to_json() == data
    assert MetadataObject.from_json({}).to_json() == {}
    assert error_of(MetadataObject.from_json, {"SigFigs": "3"}) == (
        "Metadata.SigFigs: expected an Integer (32-bit signed), got '3'"
    )
    assert error_of(MetadataObject.from_json, {"Units": 1}) == "Metadata.Units: expected a string, got 1"


# -- configuration (9.5, Table 5) ----------------------------------------------------------


def test_figure_16_configuration_file() -> None:
    data = decode_json_object(FIGURE_16, "config.json")
    config = AppConfiguration.from_json(data)
    assert config.container_name == IID
    assert config.container_config["thresholds"] == {"high": 250.0}
    assert config.to_json() == data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"ContainerConfig": {}}, "AppConfiguration: missing required key 'ContainerName'"),
        ({"ContainerName": IID}, "AppConfiguration: missing required key 'ContainerConfig'"),
        ({"ContainerName": "Profiler", "ContainerConfig": {}}, "AppConfiguration.ContainerName 'Profiler'"),
        ({"ContainerName": IID, "ContainerConfig": []}, "AppConfiguration.ContainerConfig: expected a JSON object"),
    ],
)
def test_configuration_file_errors(data: dict[str, Any], expected: str) -> None:
    assert error_of(AppConfiguration.from_json, data).startswith(expected)


def test_config_request_and_response_payloads() -> None:
    assert ConfigRequest.from_json({}).to_json() == {}
    request = {"Timestamp": 1504110640, "Signature": {}}
    assert ConfigRequest.from_json(request).to_json() == request
    configuration = json.loads(FIGURE_16)
    response = {"Configuration": configuration, "Timestamp": 1504110641, "Signature": {}}
    parsed = ConfigResponse.from_json(response, where="config/response/eatl_profiler_04")
    assert AppConfiguration.from_json(parsed.configuration).container_name == IID
    assert parsed.to_json() == response
    assert ConfigResponse.decode(parsed.encode()) == parsed
    message = error_of(ConfigResponse.from_json, {"Configuration": "x"}, "config/response/eatl_profiler_04")
    assert message == "config/response/eatl_profiler_04.Configuration: expected a JSON object, got 'x'"


# -- status, command, error (Tables 6-11) --------------------------------------------------


def test_status_request_and_response_payloads() -> None:
    assert StatusRequest.from_json({"Timestamp": 1504110640, "Signature": {}}).timestamp == 1504110640
    data = {"Status": 2, "Message": "sensor unplugged", "Timestamp": 1504110640, "Signature": {}}
    response = StatusResponse.from_json(data)
    assert response.code is StatusCode.MSG_FAIL
    assert response.to_json() == data
    assert StatusResponse(status=StatusCode.SHUT_DWN).encode() == b'{"Status":4}'
    assert StatusResponse.from_json({"Status": 42}).code is None
    assert error_of(StatusResponse.from_json, {"Message": "x"}) == "StatusResponse: missing required key 'Status'"
    assert error_of(StatusResponse.from_json, {"Status": 1, "Message": 5}) == (
        "StatusResponse.Message: expected a string, got 5"
    )


def test_status_code_values_and_names() -> None:
    assert [int(code) for code in StatusCode] == [1, 2, 3, 4, 5, 6]
    assert StatusCode.SHUT_DWN.spec_name == "STATUS_SHUT_DWN"
    assert Errno.JSON_INVALID.spec_name == "ERRNO_JSON_INVALID" and int(Errno.PROFILE) == 14
    assert QueryStatus.OK.spec_name == "DSC_QUERY_OK" and QueryStatus.UNAVAILABLE.spec_name == "DSC_UNAVAILABLE"


def test_command_payload() -> None:
    data = {"Command": 1, "Timestamp": 1504110640, "Signature": {}}
    command = CommandMessage.from_json(data)
    assert command.code is CommandCode.SHUT_DOWN
    assert command.to_json() == data
    assert CommandMessage.from_json({"Command": 9}).code is None


def test_error_payload() -> None:
    data = {"Errno": 9, "Message": "ContainerConfig.input missing", "Timestamp": 1504110640, "Signature": {}}
    report = ErrorReport.from_json(data)
    assert report.code is Errno.CONFIGURATION
    assert report.to_json() == data
    assert ErrorReport.from_json({"Errno": 2}).message is None
    assert error_of(ErrorReport.from_json, {"Message": "x"}) == "ErrorReport: missing required key 'Errno'"
    message = error_of(ErrorReport.from_json, {"Errno": 8}, "storage/data/error/eatl_profiler_04")
    assert message == (
        "storage/data/error/eatl_profiler_04.Message: required when Errno is 8 (ERRNO_APPLICATION, Table 11)"
    )


# -- storage queries (Table 16) ------------------------------------------------------------


def test_figure_5_query_oldest_from_all_applications() -> None:
    query = StorageQuery.decode(FIGURE_5)
    assert query.prefer_oldest is True
    assert query.effective_max_length == 100
    assert query.all_tables and query.sub_topic is None
    assert query.to_json() == {"PreferOldest": True}


def test_figure_6_query_for_one_instance() -> None:
    query = StorageQuery.decode(FIGURE_6)
    assert (query.max_length, query.instance_id) == (50, "eat1_profiler_04")
    assert not query.all_tables and not query.prefer_oldest
    assert query.to_json() == json.loads(FIGURE_6)


def test_figure_7_query_for_one_topic_and_priority() -> None:
    query = StorageQuery.decode(FIGURE_7)
    assert (query.max_length, query.sub_topic, query.max_priority) == (10, "alarm/highhigh", 1)
    assert query.matches_sub_topic("alarm/highhigh")
    assert not query.matches_sub_topic("alarm/high")
    assert not query.matches_sub_topic(None)
    assert query.matches_priority(1)
    assert not query.matches_priority(2)
    assert not query.matches_priority(None)
    assert query.to_json() == json.loads(FIGURE_7)


def test_storage_query_with_every_table_16_key_round_trips() -> None:
    data = {
        "MaxLength": 15000,
        "StartTime": 1504110000,
        "EndTime": 1504119999,
        "PreferOldest": False,
        "InstanceID": GUID,
        "SubTopic": "",
        "MinPriority": 2,
        "MaxPriority": 6,
        "Timestamp": 1504120000,
        "Signature": SIGNATURE,
    }
    query = StorageQuery.from_json(data)
    assert query.prefer_oldest is False and query.instance_id == GUID and query.sub_topic == ""
    assert query.to_json() == data
    assert StorageQuery.decode(encode_json(data)) == query


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"MaxLength": "10"}, "StorageQuery.MaxLength: expected an Integer (32-bit signed), got '10'"),
        ({"MaxLength": 10.0}, "StorageQuery.MaxLength: expected an Integer (32-bit signed), got 10.0"),
        ({"MaxLength": 0}, "StorageQuery.MaxLength: expected a positive Integer"),
        ({"StartTime": "yesterday"}, "StorageQuery.StartTime: expected an Int64"),
        ({"EndTime": True}, "StorageQuery.EndTime: expected an Int64"),
        ({"PreferOldest": "true"}, "StorageQuery.PreferOldest: expected a boolean, got 'true'"),
        ({"InstanceID": 4}, "StorageQuery.InstanceID: expected a string, got 4"),
        ({"InstanceID": "profiler"}, "StorageQuery.InstanceID 'profiler'"),
        ({"SubTopic": "//alarm/highhigh"}, "give the sub-topic with at most one leading '/'"),
        ({"SubTopic": "alarm/+"}, "StorageQuery.SubTopic 'alarm/+'"),
        ({"SubTopic": 3}, "StorageQuery.SubTopic: expected a string, got 3"),
        ({"MinPriority": "1"}, "StorageQuery.MinPriority: expected an Integer"),
        ({"MaxPriority": 1.5}, "StorageQuery.MaxPriority: expected an Integer"),
        ({"maxLength": 10}, "StorageQuery.maxLength: unknown key; key names are case-sensitive, did you mean"),
        ({"InstanceId": IID}, "did you mean 'InstanceID'?"),
    ],
)
def test_storage_query_refuses_wrong_types_naming_the_key(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(StorageQuery.from_json, data)


def test_storage_query_sub_topic_accepts_the_leading_slash_responses_carry() -> None:
    """Table 17 returns SubTopic as "/alarm/highhigh": a query may send it back the same way."""
    query = StorageQuery.from_json({"SubTopic": "/alarm/highhigh"})
    assert query.sub_topic == "alarm/highhigh"
    assert query.matches_sub_topic("alarm/highhigh") and not query.matches_sub_topic("alarm")
    top_only = StorageQuery.from_json({"SubTopic": "/"})
    assert top_only.sub_topic == ""
    assert top_only.matches_sub_topic(None) and not top_only.matches_sub_topic("alarm/highhigh")


def test_storage_query_leaves_the_max_length_limit_to_the_storage_application() -> None:
    # 8.5.1: a request for 16 000 records is valid JSON that must be answered DSC_QUERY_TOO_LONG.
    assert StorageQuery.from_json({"MaxLength": 16000}).effective_max_length == 16000


def test_storage_query_instance_and_sub_topic_selection() -> None:
    assert StorageQuery.from_json({"InstanceID": ""}).all_tables
    assert StorageQuery.from_json({"InstanceID": ""}).to_json() == {"InstanceID": ""}
    everything = StorageQuery()
    assert everything.all_tables and everything.to_json() == {}
    assert everything.matches_sub_topic(None) and everything.matches_sub_topic("alarm/highhigh")
    top_only = StorageQuery(sub_topic="")
    assert top_only.matches_sub_topic(None) and top_only.matches_sub_topic("") and top_only.matches_sub_topic("/")
    assert not top_only.matches_sub_topic("alarm/highhigh")


@pytest.mark.parametrize(
    ("min_priority", "max_priority", "selected"),
    [
        (None, None, [1, 2, 3, 4, 5, None, 7, "1"]),
        (None, 1, [1]),
        (None, 3, [1, 2, 3]),
        (None, 5, [1, 2, 3, 4, 5]),
        (None, 6, [None, 7, "1"]),
        (3, None, [3, 4, 5, None, 7, "1"]),
        (2, 4, [2, 3, 4]),
        (6, None, [None, 7, "1"]),
    ],
)
def test_storage_query_priority_selection(
    min_priority: int | None, max_priority: int | None, selected: list[object]
) -> None:
    query = StorageQuery(min_priority=min_priority, max_priority=max_priority)
    stored: list[object] = [1, 2, 3, 4, 5, None, 7, "1"]
    assert [p for p in stored if query.matches_priority(p)] == selected


def test_sdk_adds_a_timestamp_with_replace() -> None:
    query = StorageQuery.from_json({"PreferOldest": False, "MaxLength": 5})
    stamped = dataclasses.replace(query, timestamp=1504110640, prefer_oldest=True)
    assert stamped.to_json() == {"MaxLength": 5, "PreferOldest": True, "Timestamp": 1504110640}


# -- query responses (Tables 17, 18) -------------------------------------------------------


def test_figure_8_response_parses() -> None:
    response = QueryResponse.decode(FIGURE_8, "storage/response/newdata/eatl_uploader_01")
    assert response.code is QueryStatus.OK
    [(table, row)] = list(response.iter_rows())
    assert table == IID
    assert (row.id, row.timestamp, row.sub_topic) == (101, 1504110640, "/60/busbar/13/voltage-mean")
    assert row.data == json.loads(FIGURE_8_DATA)
    assert response.to_json() == json.loads(FIGURE_8)


def test_response_encode_splices_the_stored_bytes_unaltered() -> None:
    row = TableRow(id=101, timestamp=1504110640, sub_topic="60/busbar/13/voltage-mean", data_raw=FIGURE_8_DATA)
    response = QueryResponse(status=QueryStatus.OK, response=[TableResult(IID, [row])])
    encoded = response.encode()
    assert b'"Data":' + FIGURE_8_DATA + b"}" in encoded
    assert encoded.startswith(b'{"Status":1,"Response":[{"TableName":"eatl_profiler_04","TableRows":[{"ID":101,')
    assert json.loads(encoded) == json.loads(FIGURE_8)


def test_response_encode_keeps_odd_but_valid_stored_json_exactly() -> None:
    stored = [b'{"b":1,"a":1.50,"a":2}', '{"Name":"Temp\\u00e9rature","x":"é"}'.encode(), b' {"Value": 1e3} ']
    rows = [TableRow(id=i, timestamp=10, sub_topic=None, data_raw=raw) for i, raw in enumerate(stored)]  # type: ignore[arg-type]
    response = QueryResponse(status=8, response=[TableResult(GUID, rows)], timestamp=11, signature=SIGNATURE)
    encoded = response.encode()
    for raw in stored:
        assert raw in encoded
    decoded = json.loads(encoded)
    assert [r["SubTopic"] for r in decoded["Response"][0]["TableRows"]] == ["/", "/", "/"]
    assert decoded["Timestamp"] == 11 and decoded["Signature"] == SIGNATURE
    assert QueryResponse.decode(encoded).code is QueryStatus.MORE


def test_error_response_has_an_empty_response_array() -> None:
    assert QueryResponse(status=QueryStatus.TABLE_DENIED).encode() == b'{"Status":3,"Response":[]}'
    assert QueryResponse(status=9).to_json() == {"Status": 9, "Response": []}
    assert QueryResponse.from_json({"Status": 7}).response == []


def test_table_row_refuses_stored_bytes_that_are_not_json() -> None:
    assert "stored payload is not valid JSON" in error_of(TableRow, id=1, timestamp=1, sub_topic="", data_raw=b"{x")
    assert "not UTF-8" in error_of(TableRow, id=1, timestamp=1, sub_topic="", data_raw=b'{"a":"\xff"}')
    assert "NaN is not valid JSON" in error_of(TableRow, id=1, timestamp=1, sub_topic="", data_raw=b'{"a":NaN}')


def test_table_row_sub_topic_is_kept_in_response_form() -> None:
    assert TableRow(id=1, timestamp=1, sub_topic="", data_raw=b"{}").sub_topic == "/"
    assert TableRow(id=1, timestamp=1, sub_topic="a/b", data_raw=b"{}").sub_topic == "/a/b"
    assert "level 2 is empty" in error_of(TableRow, id=1, timestamp=1, sub_topic="/a//b", data_raw=b"{}")


def test_response_errors_name_the_nested_key() -> None:
    data = json.loads(FIGURE_8)
    data["Response"][0]["TableRows"][0]["ID"] = "101"
    message = error_of(QueryResponse.from_json, data, "storage/response/eatl_uploader_01")
    assert message == (
        "storage/response/eatl_uploader_01.Response[0].TableRows[0].ID: expected an Integer (32-bit signed), got '101'"
    )
    data["Response"][0]["TableRows"][0]["ID"] = 101
    data["Response"][0]["TableName"] = "profiler"
    assert "QueryResponse.Response[0].TableName 'profiler'" in error_of(QueryResponse.from_json, data)
    assert error_of(QueryResponse.from_json, {"Status": 1, "Response": {}}) == (
        "QueryResponse.Response: expected an array, got {}"
    )


def test_response_accepts_table_17_spelling_table_row() -> None:
    data = json.loads(FIGURE_8)
    data["Response"][0]["TableRow"] = data["Response"][0].pop("TableRows")
    assert QueryResponse.from_json(data).to_json() == json.loads(FIGURE_8)


# -- uploaded notices (Table 15) -----------------------------------------------------------


def test_figure_9_uploaded_notice() -> None:
    notice = UploadedNotice.decode(FIGURE_9)
    assert notice.new_data == [(IID, [101])]
    assert notice.to_json() == json.loads(FIGURE_9)


def test_uploaded_notice_several_tables_round_trip() -> None:
    data = {"NewData": [{IID: [1, 2]}, {GUID: []}, {IID: [3]}], "Timestamp": 1504110640, "Signature": {}}
    notice = UploadedNotice.from_json(data)
    assert notice.ids_by_table() == {IID: [1, 2, 3], GUID: []}
    assert notice.to_json() == data
    built = UploadedNotice(new_data=[(IID, [1, 2])], timestamp=5)
    assert built.encode() == b'{"NewData":[{"eatl_profiler_04":[1,2]}],"Timestamp":5}'


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "UploadedNotice: missing required key 'NewData'"),
        ({"NewData": {IID: [1]}}, "UploadedNotice.NewData: expected an array"),
        ({"NewData": [{}]}, "UploadedNotice.NewData[0]: expected an object"),
        ({"NewData": [{IID: ["1"]}]}, "UploadedNotice.NewData[0].eatl_profiler_04[0]: expected an Integer"),
        ({"NewData": [{IID: 1}]}, "UploadedNotice.NewData[0].eatl_profiler_04: expected an array"),
        ({"NewData": [{"profiler": [1]}]}, "UploadedNotice.NewData[0] key 'profiler'"),
    ],
)
def test_uploaded_notice_errors(data: dict[str, Any], expected: str) -> None:
    assert error_of(UploadedNotice.from_json, data).startswith(expected)
