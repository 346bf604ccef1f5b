"""LV-CAP Public API codecs: identifiers, topic names and JSON payloads (Annex 4).

Pure and stdlib-only: nothing here does I/O or imports the rest of gridhub. Section numbers
in docstrings and error messages refer to the LV-CAP Public API (Annex 4 of the spec).

Every payload class is a frozen dataclass with ``from_json(data, where=...)`` (validating,
raising :class:`LvcapError` that names the object, the key and what was expected) and
``to_json()``. Keys the API does not define are kept in ``extra`` and written back, and the
reserved ``Signature`` member (8.1.2) is carried through untouched, so parse -> to_json
round trips lose nothing.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_IDENTITY_LENGTH",
    "MAX_MAX_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "MAX_TOPIC_LENGTH",
    "NO_PRIORITY",
    "QOS_ALGORITHM",
    "QOS_COMMAND",
    "QOS_CONFIG",
    "QOS_ERROR",
    "QOS_NEWDATA",
    "QOS_SENSOR",
    "QOS_STATUS_REQUEST",
    "QOS_STATUS_RESPONSE",
    "QOS_STORAGE_DATA",
    "QOS_STORAGE_REQUEST",
    "QOS_STORAGE_RESPONSE",
    "QOS_UPLOADED",
    "AppConfiguration",
    "AppId",
    "CommandCode",
    "CommandMessage",
    "ConfigRequest",
    "ConfigResponse",
    "CoordinateObject",
    "Errno",
    "ErrorReport",
    "InstanceId",
    "LvcapError",
    "MetadataObject",
    "QueryResponse",
    "QueryStatus",
    "ScalarObject",
    "ScalarValue",
    "SeriesObject",
    "StandardObject",
    "StatusCode",
    "StatusRequest",
    "StatusResponse",
    "StorageQuery",
    "TableResult",
    "TableRow",
    "UploadedNotice",
    "algorithm_data_topic",
    "command_topic",
    "config_request_topic",
    "config_response_topic",
    "decode_json_object",
    "effective_priority",
    "encode_json",
    "is_legacy_guid",
    "is_valid_priority",
    "newdata_request_topic",
    "newdata_response_topic",
    "parse_standard_object",
    "sensor_data_topic",
    "split_data_topic",
    "status_request_topic",
    "status_response_topic",
    "storage_data_topic",
    "storage_error_topic",
    "storage_request_topic",
    "storage_response_topic",
    "sub_topic_for_response",
    "sub_topic_from_response",
    "topic_iid",
    "topic_matches",
    "uploaded_topic",
    "validate_apid",
    "validate_iid",
    "validate_topic",
    "validate_topic_filter",
]


class LvcapError(ValueError):
    """A payload, identifier or topic does not follow the LV-CAP Public API.

    The message says where and what, e.g. ``Scalar.Valid: expected a boolean, got 'yes'``.
    """


# -- codes (Tables 7, 9, 11, 18) -----------------------------------------------------------


class StatusCode(IntEnum):
    """Status field values of status/response/<IID> (Table 7)."""

    MSG_OK = 1
    MSG_FAIL = 2
    MSG_ERR = 3
    SHUT_DWN = 4
    INITIAL = 5
    RESTART = 6

    @property
    def spec_name(self) -> str:
        """Return the name used in the API document, e.g. STATUS_MSG_OK."""
        return f"STATUS_{self.name}"


class CommandCode(IntEnum):
    """Command values of command/<IID> (Table 9)."""

    SHUT_DOWN = 1

    @property
    def spec_name(self) -> str:
        """Return the name used in the API document."""
        return "Shut Down"


class Errno(IntEnum):
    """Errno values of storage/data/error/<IID> (Table 11)."""

    JSON_INVALID = 1
    IO = 2
    ACCESS = 3
    NO_DEVICE = 4
    FILE_DIRECTORY = 5
    MQTT_SUBSCRIPTION = 6
    MQTT_PUBLISH = 7
    APPLICATION = 8
    CONFIGURATION = 9
    MQTT_CALLBACK = 10
    SENSOR = 11
    NETWORK = 12
    PORT = 13
    PROFILE = 14

    @property
    def spec_name(self) -> str:
        """Return the name used in the API document, e.g. ERRNO_JSON_INVALID."""
        return f"ERRNO_{self.name}"


class QueryStatus(IntEnum):
    """Status values of storage query responses (Table 18)."""

    UNANTICIPATED = 0
    OK = 1
    EMPTY = 2
    TABLE_DENIED = 3
    TOO_LONG = 4
    TOO_BIG = 5
    TOO_OLD = 6
    UNAVAILABLE = 7
    MORE = 8
    INVALID = 9

    @property
    def spec_name(self) -> str:
        """Return the name used in the API document, e.g. DSC_QUERY_OK."""
        if self is QueryStatus.UNANTICIPATED:
            return "0 (unanticipated error)"
        if self is QueryStatus.UNAVAILABLE:
            return "DSC_UNAVAILABLE"
        return f"DSC_QUERY_{self.name}"


# -- limits and QoS ------------------------------------------------------------------------

#: MaxPriority value meaning "only messages stored without a valid priority" (Table 16); also
#: the rank given to messages without a valid Priority, after all specified ones (4.9).
NO_PRIORITY = 6
#: Records returned when a query gives no MaxLength (8.5.1).
DEFAULT_MAX_LENGTH = 100
#: Highest MaxLength an operator may allow (8.5.1).
MAX_MAX_LENGTH = 15000
#: Largest MQTT payload, hence largest query response (8.5.1).
MAX_PAYLOAD_BYTES = 268_435_455
#: Longest topic name, '/' separators included (4.4).
MAX_TOPIC_LENGTH = 220
#: Vendor + Application Name + Application Version must total fewer characters than this (4.2).
MAX_IDENTITY_LENGTH = 44

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

QOS_CONFIG = 1  # Table 5
QOS_STATUS_REQUEST = 0  # Table 6
QOS_STATUS_RESPONSE = 1  # Table 6
QOS_COMMAND = 1  # Table 8
QOS_ERROR = 1  # Table 10
QOS_SENSOR = 1  # Tables 12, 13
QOS_ALGORITHM = 1  # Table 14
QOS_STORAGE_DATA = 2  # Table 19
QOS_STORAGE_REQUEST = 1  # Table 19
QOS_STORAGE_RESPONSE = 1  # Table 19
QOS_NEWDATA = 2  # Table 15
QOS_UPLOADED = 1  # Table 15


# -- value checks --------------------------------------------------------------------------

ScalarValue: TypeAlias = bool | int | float


def _show(value: object) -> str:
    """Render a received value for an error message, briefly."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    text = f"{len(value)} bytes" if isinstance(value, bytes | bytearray | memoryview) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(value: object, where: str, low: int, high: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LvcapError(f"{where}: expected {kind}, got {_show(value)}")
    if not low <= value <= high:
        raise LvcapError(f"{where}: {value} does not fit {kind} ({low}..{high})")
    return int(value)


def _int32(value: object, where: str) -> int:
    return _integer(value, where, INT32_MIN, INT32_MAX, "an Integer (32-bit signed)")


def _int64(value: object, where: str) -> int:
    return _integer(value, where, INT64_MIN, INT64_MAX, "an Int64 (64-bit signed integer)")


def _number(value: object, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LvcapError(f"{where}: expected a number, got {_show(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LvcapError(f"{where}: expected a finite number (JSON has no NaN or Infinity), got {value!r}")
        return float(value)
    return _int64(value, where)


def _scalar(value: object, where: str) -> ScalarValue:
    if isinstance(value, bool):
        return value
    if not isinstance(value, int | float):
        raise LvcapError(f"{where}: expected a scalar (boolean, integer or number), got {_show(value)}")
    return _number(value, where)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise LvcapError(f"{where}: expected a boolean, got {_show(value)}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise LvcapError(f"{where}: expected a string, got {_show(value)}")
    return value


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise LvcapError(f"{where}: expected a JSON object, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise LvcapError(f"{where}: object keys must be strings, got {_show(key)}")
    return dict(value)


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise LvcapError(f"{where}: expected an array, got {_show(value)}")
    return list(value)


def _scalar_array(value: object, where: str) -> list[ScalarValue]:
    return [_scalar(item, f"{where}[{i}]") for i, item in enumerate(_array(value, where))]


def _number_array(value: object, where: str) -> list[int | float]:
    return [_number(item, f"{where}[{i}]") for i, item in enumerate(_array(value, where))]


def _any(value: object, where: str) -> Any:
    return value


def _same(value: Any) -> Any:
    return value


def is_valid_priority(value: object) -> bool:
    """Return True when value is a valid Priority: an integer 1 (highest) to 5 (lowest) (4.9)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5


def effective_priority(value: object) -> int:
    """Rank a Priority value: 1..5 when valid, else NO_PRIORITY (6), after all specified (4.9).

    Anything but an integer 1..5 (0, 7, 2.5, "1", true, null, absent) counts as unspecified.
    """
    if isinstance(value, int) and is_valid_priority(value):
        return int(value)
    return NO_PRIORITY


def _priority(value: object, where: str) -> int:
    if not isinstance(value, int) or not is_valid_priority(value):
        raise LvcapError(f"{where}: expected an integer from 1 (highest) to 5 (lowest) (4.9), got {_show(value)}")
    return int(value)


# -- JSON ----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(text: str) -> Any:
    # One decoder for every call: json.loads with an argument builds a new decoder each time.
    return _DECODER.decode(text)


def decode_json_object(payload: bytes | bytearray | memoryview | str, where: str) -> dict[str, Any]:
    """Decode an MQTT payload that must be a UTF-8 JSON object (4.3, 4.6)."""
    if isinstance(payload, str):
        text = payload
    else:
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LvcapError(f"{where}: payload is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise LvcapError(f"{where}: empty payload, expected a JSON object")
    try:
        data = _loads(text)
    except json.JSONDecodeError as exc:
        raise LvcapError(f"{where}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise LvcapError(f"{where}: invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise LvcapError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LvcapError(f"{where}: expected a JSON object, got {type(data).__name__} {_show(data)}")
    return data


def _dumps(value: Any, where: str = "encode_json") -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise LvcapError(f"{where}: cannot encode as JSON: nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise LvcapError(f"{where}: cannot encode as JSON: {exc}") from None


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Serialise a JSON object compactly as UTF-8, without whitespace (4.3, 4.6)."""
    if not isinstance(obj, Mapping):
        raise LvcapError(f"encode_json: expected a JSON object (mapping), got {_show(obj)}")
    return _dumps(obj if isinstance(obj, dict) else dict(obj))


# -- identifiers (4.2) ---------------------------------------------------------------------

_DOCKER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_DOCKER_VERSION = re.compile(r"[a-z0-9][a-z0-9.-]*")
_INSTANCE = re.compile(r"[0-9]{2}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise LvcapError(f"{what}: expected a string, got {_show(value)}")
    if not value:
        raise LvcapError(f"{what}: must not be empty")
    if not _DOCKER_NAME.fullmatch(value):
        raise LvcapError(
            f"{what} {value!r}: only lowercase letters, digits and hyphens are allowed,"
            " and it may not start with a hyphen (4.2)"
        )
    return value


def _check_version(value: object) -> str:
    what = "Application Version"
    if not isinstance(value, str):
        raise LvcapError(f"{what}: expected a string, got {_show(value)}")
    if not value:
        raise LvcapError(f"{what}: must not be empty")
    if not _DOCKER_VERSION.fullmatch(value):
        raise LvcapError(
            f"{what} {value!r}: only lowercase letters, digits, hyphens and periods are allowed,"
            " and it may not start with a hyphen or a period (4.2)"
        )
    return value


def is_legacy_guid(s: str) -> bool:
    """Return True when s is a legacy GUID identifier such as 821b8e33-4eaa-480e-b205-30fa9572af1a (4.2.1)."""
    return isinstance(s, str) and _GUID.fullmatch(s) is not None


@dataclass(frozen=True)
class AppId:
    """Application ID <APID>: Vendor, Application Name and Application Version (4.2)."""

    vendor: str
    name: str
    version: str

    def __post_init__(self) -> None:
        _check_name(self.vendor, "Vendor")
        _check_name(self.name, "Application Name")
        _check_version(self.version)
        total = len(self.vendor) + len(self.name) + len(self.version)
        if total >= MAX_IDENTITY_LENGTH:
            raise LvcapError(
                f"APID {self.apid!r}: Vendor, Application Name and Application Version total {total} characters,"
                f" must be less than {MAX_IDENTITY_LENGTH} (4.2)"
            )

    @property
    def apid(self) -> str:
        """Return <Vendor>_<Application Name>_<Application Version>."""
        return f"{self.vendor}_{self.name}_{self.version}"

    @property
    def docker_tag(self) -> str:
        """Return the Docker image tag <Vendor>/<Application Name>:<Application Version>."""
        return f"{self.vendor}/{self.name}:{self.version}"

    def instance_id(self, instance: str) -> InstanceId:
        """Return the Instance ID of instance ("00".."99") of this application."""
        return InstanceId(self.vendor, self.name, instance)

    @classmethod
    def parse(cls, apid: str, where: str = "APID") -> AppId:
        """Parse <Vendor>_<Application Name>_<Application Version>; legacy GUIDs are refused here."""
        if not isinstance(apid, str):
            raise LvcapError(f"{where}: expected a string, got {_show(apid)}")
        if is_legacy_guid(apid):
            raise LvcapError(
                f"{where} {apid!r}: a legacy GUID identifier has no vendor, name or version (4.2.1);"
                " use validate_apid() to accept it"
            )
        parts = apid.split("_")
        if len(parts) != 3:
            raise LvcapError(f"{where} {apid!r}: expected <Vendor>_<Application Name>_<Application Version> (4.2)")
        try:
            return cls(*parts)
        except LvcapError as exc:
            raise LvcapError(f"{where} {apid!r}: {exc}") from None


@dataclass(frozen=True)
class InstanceId:
    """Instance ID <IID>: Vendor, Application Name and a two-digit Instance "00".."99" (4.2)."""

    vendor: str
    name: str
    instance: str

    def __post_init__(self) -> None:
        _check_name(self.vendor, "Vendor")
        _check_name(self.name, "Application Name")
        if not isinstance(self.instance, str) or not _INSTANCE.fullmatch(self.instance):
            raise LvcapError(f'Instance: expected two digits "00" to "99", got {_show(self.instance)} (4.2)')
        total = len(self.vendor) + len(self.name)
        if total >= MAX_IDENTITY_LENGTH - 1:
            # The Application Version needs at least one character of the 43 allowed.
            raise LvcapError(
                f"IID {self.iid!r}: Vendor and Application Name total {total} characters, leaving no room"
                f" for an Application Version within the {MAX_IDENTITY_LENGTH - 1} allowed (4.2)"
            )

    @property
    def iid(self) -> str:
        """Return <Vendor>_<Application Name>_<Instance>."""
        return f"{self.vendor}_{self.name}_{self.instance}"

    def app_id(self, version: str) -> AppId:
        """Return the Application ID of this instance running version."""
        return AppId(self.vendor, self.name, version)

    @classmethod
    def parse(cls, iid: str, where: str = "IID") -> InstanceId:
        """Parse <Vendor>_<Application Name>_<Instance>; legacy GUIDs are refused here."""
        if not isinstance(iid, str):
            raise LvcapError(f"{where}: expected a string, got {_show(iid)}")
        if is_legacy_guid(iid):
            raise LvcapError(
                f"{where} {iid!r}: a legacy GUID identifier has no vendor, name or instance (4.2.1);"
                " use validate_iid() to accept it"
            )
        parts = iid.split("_")
        if len(parts) != 3:
            raise LvcapError(f"{where} {iid!r}: expected <Vendor>_<Application Name>_<Instance> (4.2)")
        try:
            return cls(*parts)
        except LvcapError as exc:
            raise LvcapError(f"{where} {iid!r}: {exc}") from None


def validate_iid(iid: str, where: str = "IID") -> str:
    """Return iid when it is <Vendor>_<Application Name>_<NN> or a legacy GUID (4.2, 4.2.1)."""
    if is_legacy_guid(iid):
        return iid
    return InstanceId.parse(iid, where).iid


def validate_apid(apid: str, where: str = "APID") -> str:
    """Return apid when it is <Vendor>_<Application Name>_<Version> or a legacy GUID (4.2, 4.2.1)."""
    if is_legacy_guid(apid):
        return apid
    return AppId.parse(apid, where).apid


# -- topic names (4.4) ---------------------------------------------------------------------

_TOPIC_CHARS = frozenset(string.ascii_letters + string.digits + "-_")


def _check_levels(topic: object, where: str, wildcards: bool) -> str:
    if not isinstance(topic, str):
        raise LvcapError(f"{where}: expected a string, got {_show(topic)}")
    if not topic:
        raise LvcapError(f"{where}: must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise LvcapError(
            f"{where}: {len(topic)} characters, longer than the {MAX_TOPIC_LENGTH} allowed (4.4): {_show(topic)}"
        )
    levels = topic.split("/")
    position = 0
    for number, level in enumerate(levels, start=1):
        if not level:
            raise LvcapError(f"{where} {topic!r}: level {number} is empty (no leading, trailing or doubled '/') (4.4)")
        if wildcards and level in ("+", "#"):
            if level == "#" and number != len(levels):
                raise LvcapError(f"{where} {topic!r}: '#' is only allowed as the last level")
            position += len(level) + 1
            continue
        for offset, char in enumerate(level):
            if char in _TOPIC_CHARS:
                continue
            at = position + offset
            if char in "+#":
                hint = (
                    "a wildcard must be a whole level"
                    if wildcards
                    else "wildcards are only allowed in subscriptions (topic filters)"
                )
            elif char == " ":
                hint = "spaces are not permitted"
            elif not char.isascii():
                hint = "topic names are ASCII only"
            else:
                hint = "only ASCII letters, digits, '-' and '_' between '/' separators"
            raise LvcapError(f"{where} {topic!r}: character {char!r} at position {at}: {hint} (4.4)")
        position += len(level) + 1
    return topic


def validate_topic(topic: str, where: str = "topic") -> str:
    """Return topic when it is a valid LV-CAP topic name (4.4); wildcards are refused."""
    return _check_levels(topic, where, wildcards=False)


def validate_topic_filter(pattern: str, where: str = "topic filter") -> str:
    """Return pattern when it is a valid topic name or MQTT filter with whole-level '+' and a final '#'."""
    return _check_levels(pattern, where, wildcards=True)


def topic_matches(pattern: str, topic: str) -> bool:
    """Return True when topic matches the MQTT topic filter pattern ('+' one level, '#' the rest)."""
    pattern_levels = pattern.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and pattern_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(pattern_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(pattern_levels) == len(topic_levels)


def status_request_topic() -> str:
    """Return status/request (Table 6)."""
    return "status/request"


def config_request_topic(iid: str) -> str:
    """Return config/request/<IID> (Table 5)."""
    return f"config/request/{validate_iid(iid)}"


def config_response_topic(iid: str) -> str:
    """Return config/response/<IID> (Table 5)."""
    return f"config/response/{validate_iid(iid)}"


def status_response_topic(iid: str) -> str:
    """Return status/response/<IID> (Table 6)."""
    return f"status/response/{validate_iid(iid)}"


def command_topic(iid: str) -> str:
    """Return command/<IID> (Table 8)."""
    return f"command/{validate_iid(iid)}"


def _data_topic(prefix: str, iid: str, sub: str) -> str:
    base = f"{prefix}/{validate_iid(iid)}"
    if not isinstance(sub, str):
        raise LvcapError(f"{prefix} sub-topic: expected a string, got {_show(sub)}")
    if sub.startswith("/"):
        sub = sub[1:]  # the stored/response form of a sub-topic starts with '/' (Table 17)
    return validate_topic(f"{base}/{sub}" if sub else base, where=f"{prefix} topic")


def sensor_data_topic(iid: str, sub: str = "") -> str:
    """Return sensor/data/<IID>[/<sub>] (Table 12)."""
    return _data_topic("sensor/data", iid, sub)


def algorithm_data_topic(iid: str, sub: str = "") -> str:
    """Return algorithm/data/<IID>[/<sub>] (Table 14)."""
    return _data_topic("algorithm/data", iid, sub)


def storage_data_topic(iid: str, sub: str = "") -> str:
    """Return storage/data/<IID>[/<sub>] (Table 19)."""
    return _data_topic("storage/data", iid, sub)


def storage_error_topic(iid: str) -> str:
    """Return storage/data/error/<IID> (Table 10)."""
    return f"storage/data/error/{validate_iid(iid)}"


def storage_request_topic(iid: str) -> str:
    """Return storage/request/<IID> (Table 19)."""
    return f"storage/request/{validate_iid(iid)}"


def storage_response_topic(iid: str) -> str:
    """Return storage/response/<IID> (Table 19)."""
    return f"storage/response/{validate_iid(iid)}"


def newdata_request_topic(iid: str) -> str:
    """Return storage/request/newdata/<IID> (Table 15)."""
    return f"storage/request/newdata/{validate_iid(iid)}"


def newdata_response_topic(iid: str) -> str:
    """Return storage/response/newdata/<IID> (Table 15)."""
    return f"storage/response/newdata/{validate_iid(iid)}"


def uploaded_topic(iid: str) -> str:
    """Return storage/uploaded/<IID> (Table 15)."""
    return f"storage/uploaded/{validate_iid(iid)}"


_DATA_PREFIXES = ("sensor/data", "algorithm/data", "storage/data")
# Fixed-form topics ending in /<IID>, longest prefix first so newdata is not read as an IID.
_IID_PREFIXES = (
    "storage/request/newdata/",
    "storage/response/newdata/",
    "storage/data/error/",
    "storage/request/",
    "storage/response/",
    "storage/uploaded/",
    "config/request/",
    "config/response/",
    "status/response/",
    "command/",
)


def _is_iid(text: str) -> bool:
    try:
        validate_iid(text)
    except LvcapError:
        return False
    return True


def split_data_topic(topic: str) -> tuple[str, str, str] | None:
    """Split a data topic into (prefix, IID, sub-topic), e.g. ("algorithm/data", iid, "T1/load").

    Covers sensor/data, algorithm/data and storage/data; the sub-topic is "" at the top
    level. Returns None for any other topic, including storage/data/error/<IID>.
    """
    levels = topic.split("/")
    if len(levels) < 3 or "/".join(levels[:2]) not in _DATA_PREFIXES or not _is_iid(levels[2]):
        return None
    return "/".join(levels[:2]), levels[2], "/".join(levels[3:])


def topic_iid(topic: str) -> str | None:
    """Return the IID a Public API topic belongs to, or None when it names none."""
    for prefix in _IID_PREFIXES:
        if topic.startswith(prefix):
            rest = topic[len(prefix) :]
            return rest if _is_iid(rest) else None
    split = split_data_topic(topic)
    return None if split is None else split[1]


def sub_topic_for_response(stored: str | None) -> str:
    """Return a stored SubTopic in response form: leading '/', '/' when there is none (Table 17)."""
    if not stored:
        return "/"
    return stored if stored.startswith("/") else "/" + stored


def sub_topic_from_response(sub_topic: str) -> str:
    """Return the sub-topic of a response SubTopic without its leading '/' ("" for '/')."""
    return sub_topic[1:] if sub_topic.startswith("/") else sub_topic


# -- payload machinery ---------------------------------------------------------------------

_ALWAYS: Any = object()  # "omit" marker of keys that are always written


@dataclass(frozen=True)
class _Key:
    """How one JSON key maps to one dataclass attribute."""

    attr: str
    key: str
    check: Callable[[Any, str], Any]  # validates and normalises (raw JSON or typed value)
    required: bool = False
    omit: Any = None  # attribute value meaning "key absent"
    dump: Callable[[Any], Any] = _same
    soft: bool = False  # an invalid value counts as absent and is carried in extra (Priority, 4.9)


def _omitted(spec: _Key, value: object) -> bool:
    return spec.omit is not _ALWAYS and value is spec.omit


class _Payload:
    """Shared from_json / to_json / validation for the payload dataclasses."""

    _LABEL: ClassVar[str] = "payload"
    _KEYS: ClassVar[tuple[_Key, ...]] = ()
    extra: dict[str, Any]

    if TYPE_CHECKING:

        def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def __post_init__(self) -> None:
        label = self._LABEL
        for spec in self._KEYS:
            value = getattr(self, spec.attr)
            if _omitted(spec, value):
                if spec.required:
                    spec.check(value, f"{label}.{spec.key}")  # says what was expected, when it can
                    raise LvcapError(f"{label}.{spec.key}: required, got {_show(value)}")
                continue
            object.__setattr__(self, spec.attr, spec.check(value, f"{label}.{spec.key}"))
        extra = _object(self.extra, f"{label} extra keys")
        # A typed attribute wins over an extra key of the same name (e.g. after dataclasses.replace).
        for typed in self._KEYS:
            if typed.key in extra and not _omitted(typed, getattr(self, typed.attr)):
                del extra[typed.key]
        object.__setattr__(self, "extra", extra)
        self._check_together(label)

    def _check_together(self, where: str) -> None:
        """Check rules that involve more than one key."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str | None = None) -> Self:
        """Validate a decoded JSON object and build the payload; where prefixes error messages."""
        where = where or cls._LABEL
        if not isinstance(data, Mapping):
            raise LvcapError(f"{where}: expected a JSON object, got {_show(data)}")
        known = {spec.key: spec for spec in cls._KEYS}
        folded = {name.lower(): name for name in known}
        for required in cls._KEYS:
            if required.required and required.key not in data:
                lowered = required.key.lower()
                near = [name for name in data if isinstance(name, str) and name.lower() == lowered]
                hint = f" (found {near[0]!r}: key names are case-sensitive)" if near else ""
                raise LvcapError(f"{where}: missing required key {required.key!r}{hint}")
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, raw in data.items():
            if not isinstance(name, str):
                raise LvcapError(f"{where}: object keys must be strings, got {_show(name)}")
            spec = known.get(name)
            if spec is None:
                if name.lower() in folded:
                    raise LvcapError(
                        f"{where}.{name}: unknown key; key names are case-sensitive, did you mean"
                        f" {folded[name.lower()]!r}?"
                    )
                extra[name] = raw
                continue
            if raw is None and not spec.required and spec.omit is not _ALWAYS:
                extra[name] = raw  # null: treated as absent, written back as it came
                continue
            if spec.soft:
                try:
                    spec.check(raw, f"{where}.{name}")
                except LvcapError:
                    extra[name] = raw
                    continue
            if raw is spec.omit and not spec.required:
                extra[name] = raw  # e.g. an explicit "PreferOldest": false
                continue
            kwargs[spec.attr] = raw
        try:
            return cls(**kwargs, extra=extra)
        except LvcapError as exc:
            message = str(exc)
            label = cls._LABEL
            if where != label and message.startswith((label + ".", label + ":", label + " ")):
                message = where + message[len(label) :]
            raise LvcapError(message) from None

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview | str, where: str | None = None) -> Self:
        """Decode an MQTT payload and validate it (decode_json_object + from_json)."""
        where = where or cls._LABEL
        return cls.from_json(decode_json_object(payload, where), where)

    def to_json(self) -> dict[str, Any]:
        """Return the payload as a JSON object, keys in the API's order, extra keys after."""
        out: dict[str, Any] = {}
        for spec in self._KEYS:
            value = getattr(self, spec.attr)
            if not _omitted(spec, value):
                out[spec.key] = spec.dump(value)
        for name, value in self.extra.items():
            out.setdefault(name, value)
        return out

    def encode(self) -> bytes:
        """Return the payload as compact UTF-8 JSON bytes, ready to publish."""
        return _dumps(self.to_json(), self._LABEL)

    def _encode_with(self, raw: Mapping[str, bytes]) -> bytes:
        """Encode like to_json, splicing in already-encoded JSON for the keys in raw."""
        parts: list[bytes] = []
        written: set[str] = set()
        for spec in self._KEYS:
            value = getattr(self, spec.attr)
            if _omitted(spec, value):
                continue
            body = raw[spec.key] if spec.key in raw else _dumps(spec.dump(value), f"{self._LABEL}.{spec.key}")
            parts.append(_dumps(spec.key) + b":" + body)
            written.add(spec.key)
        for name, value in self.extra.items():
            if name not in written:
                parts.append(_dumps(name) + b":" + _dumps(value, f"{self._LABEL}.{name}"))
        return b"{" + b",".join(parts) + b"}"


_TIMESTAMP = _Key("timestamp", "Timestamp", _int64)
_REQUIRED_TIMESTAMP = _Key("timestamp", "Timestamp", _int64, required=True)
_VALID = _Key("valid", "Valid", _bool, required=True)
_TO_STORE = _Key("to_store", "ToStore", _bool)
_PRIORITY = _Key("priority", "Priority", _priority, soft=True)
_SIGNATURE = _Key("signature", "Signature", _any)


class _Ranked:
    """Priority helpers shared by the standard objects."""

    priority: int | None

    @property
    def effective_priority(self) -> int:
        """Return the Priority rank: 1..5, or NO_PRIORITY (6) when unspecified or invalid (4.9)."""
        return effective_priority(self.priority)


# -- standard objects (9.1-9.5) ------------------------------------------------------------


@dataclass(frozen=True)
class ScalarObject(_Ranked, _Payload):
    """Scalar Object: one value at one point in time (9.1, Table 20)."""

    timestamp: int
    value: ScalarValue
    valid: bool
    to_store: bool | None = None
    priority: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "Scalar"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _REQUIRED_TIMESTAMP,
        _Key("value", "Value", _scalar, required=True),
        _VALID,
        _TO_STORE,
        _PRIORITY,
        _SIGNATURE,
    )


@dataclass(frozen=True)
class SeriesObject(_Ranked, _Payload):
    """Series Object: a set of related values such as a profile or a spectrum (9.2, Table 21)."""

    timestamp: int
    start_point: int | float
    interval: float
    value: list[ScalarValue]
    valid: bool
    confidence: list[int | float] | None = None
    timestamp_start: int | None = None
    timestamp_end: int | None = None
    to_store: bool | None = None
    priority: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "Series"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _REQUIRED_TIMESTAMP,
        _Key("start_point", "StartPoint", _number, required=True),
        _Key("interval", "Interval", _number, required=True),
        _Key("value", "Value", _scalar_array, required=True, dump=list),
        _Key("confidence", "Confidence", _number_array, dump=list),
        _VALID,
        _Key("timestamp_start", "TimestampStart", _int64),
        _Key("timestamp_end", "TimestampEnd", _int64),
        _TO_STORE,
        _PRIORITY,
        _SIGNATURE,
    )

    def _check_together(self, where: str) -> None:
        if self.confidence is not None and len(self.confidence) != len(self.value):
            raise LvcapError(
                f"{where}.Confidence: has {len(self.confidence)} values but Value has {len(self.value)};"
                " they must be the same length (9.2)"
            )


@dataclass(frozen=True)
class CoordinateObject(_Ranked, _Payload):
    """Co-ordinate Object: a group of co-ordinates such as a position or a vector (9.3, Table 22)."""

    timestamp: int
    coordinates: list[int | float]
    valid: bool
    system: str | None = None
    to_store: bool | None = None
    priority: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "Coordinate"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _REQUIRED_TIMESTAMP,
        _Key("coordinates", "Coordinates", _number_array, required=True, dump=list),
        _Key("system", "System", _str),
        _VALID,
        _TO_STORE,
        _PRIORITY,
        _SIGNATURE,
    )


StandardObject: TypeAlias = ScalarObject | SeriesObject | CoordinateObject


@dataclass(frozen=True)
class MetadataObject(_Payload):
    """Data Series Metadata Object, published retained on a /meta sub-topic (9.4)."""

    name: str | None = None
    units: str | None = None
    display_units: str | None = None
    sig_figs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "Metadata"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("name", "Name", _str),
        _Key("units", "Units", _str),
        _Key("display_units", "DisplayUnits", _str),
        _Key("sig_figs", "SigFigs", _int32),
    )


def _iid_value(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise LvcapError(f"{where}: expected an Instance ID string, got {_show(value)}")
    return validate_iid(value, where)


@dataclass(frozen=True)
class AppConfiguration(_Payload):
    """Application configuration file: ContainerName (the IID) and ContainerConfig (9.5, Table 23)."""

    container_name: str
    container_config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "AppConfiguration"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("container_name", "ContainerName", _iid_value, required=True),
        _Key("container_config", "ContainerConfig", _object, required=True, dump=dict),
    )


def parse_standard_object(data: Mapping[str, Any], where: str | None = None) -> StandardObject:
    """Parse a Scalar, Series or Co-ordinate Object, chosen by the keys present (9.1-9.3).

    Coordinates -> Co-ordinate Object; StartPoint, Interval or an array Value -> Series
    Object; anything else -> Scalar Object (whose checks then say what is missing).
    """
    if not isinstance(data, Mapping):
        raise LvcapError(f"{where or 'standard object'}: expected a JSON object, got {_show(data)}")
    if "Coordinates" in data:
        if "Value" in data:
            raise LvcapError(
                f"{where or 'standard object'}: has both Coordinates and Value; expected a Co-ordinate Object"
                " (Coordinates) or a Scalar/Series Object (Value), not both"
            )
        return CoordinateObject.from_json(data, where)
    if "StartPoint" in data or "Interval" in data or isinstance(data.get("Value"), list | tuple):
        return SeriesObject.from_json(data, where)
    return ScalarObject.from_json(data, where)


# -- Core API payloads (8.2) ---------------------------------------------------------------


@dataclass(frozen=True)
class ConfigRequest(_Payload):
    """Payload of config/request/<IID> (Table 5)."""

    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "ConfigRequest"
    _KEYS: ClassVar[tuple[_Key, ...]] = (_TIMESTAMP, _SIGNATURE)


@dataclass(frozen=True)
class ConfigResponse(_Payload):
    """Payload of config/response/<IID>: the Configuration object read from the file (Table 5)."""

    configuration: dict[str, Any]
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "ConfigResponse"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("configuration", "Configuration", _object, required=True, dump=dict),
        _TIMESTAMP,
        _SIGNATURE,
    )


@dataclass(frozen=True)
class StatusRequest(_Payload):
    """Payload of status/request (Table 6)."""

    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "StatusRequest"
    _KEYS: ClassVar[tuple[_Key, ...]] = (_TIMESTAMP, _SIGNATURE)


@dataclass(frozen=True)
class StatusResponse(_Payload):
    """Payload of status/response/<IID> (Tables 6, 7).

    Any Integer Status is accepted; values other than MSG_OK and INITIAL are failures (8.2.2).
    """

    status: int
    message: str | None = None
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "StatusResponse"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("status", "Status", _int32, required=True),
        _Key("message", "Message", _str),
        _TIMESTAMP,
        _SIGNATURE,
    )

    @property
    def code(self) -> StatusCode | None:
        """Return the Status as a StatusCode, or None when it is not one of Table 7."""
        try:
            return StatusCode(self.status)
        except ValueError:
            return None


@dataclass(frozen=True)
class CommandMessage(_Payload):
    """Payload of command/<IID> (Tables 8, 9); unknown Command values are accepted, not obeyed."""

    command: int
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "CommandMessage"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("command", "Command", _int32, required=True),
        _TIMESTAMP,
        _SIGNATURE,
    )

    @property
    def code(self) -> CommandCode | None:
        """Return the Command as a CommandCode, or None when it is not one of Table 9."""
        try:
            return CommandCode(self.command)
        except ValueError:
            return None


@dataclass(frozen=True)
class ErrorReport(_Payload):
    """Payload of storage/data/error/<IID> (Tables 10, 11); Message is mandatory with ERRNO_APPLICATION."""

    errno: int
    message: str | None = None
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "ErrorReport"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("errno", "Errno", _int32, required=True),
        _Key("message", "Message", _str),
        _TIMESTAMP,
        _SIGNATURE,
    )

    def _check_together(self, where: str) -> None:
        if self.errno == Errno.APPLICATION and self.message is None:
            raise LvcapError(f"{where}.Message: required when Errno is 8 (ERRNO_APPLICATION, Table 11)")

    @property
    def code(self) -> Errno | None:
        """Return the Errno as an Errno, or None when it is not one of Table 11."""
        try:
            return Errno(self.errno)
        except ValueError:
            return None


# -- Data Upload and Data Storage API payloads (8.5, 8.6) ----------------------------------


def _positive_int32(value: object, where: str) -> int:
    number = _int32(value, where)
    if number < 1:
        raise LvcapError(f"{where}: expected a positive Integer (a number of records), got {number}")
    return number


def _query_instance(value: object, where: str) -> str:
    text = _str(value, where)
    return text if text == "" else validate_iid(text, where)


def _query_sub_topic(value: object, where: str) -> str:
    """Read a query's SubTopic: Table 16 spells it without the leading '/', but responses (Table 17)
    return it with one, so one leading '/' is accepted and dropped ("/" alone: the top level, like "")."""
    text = _str(value, where)
    if text.startswith("/"):
        text = text[1:]
    if text == "":
        return text
    if text.startswith("/"):
        raise LvcapError(
            f"{where} {value!r}: give the sub-topic with at most one leading '/' (e.g. 'alarm/highhigh'),"
            ' or "" for the top level only (Table 16)'
        )
    return validate_topic(text, where)


@dataclass(frozen=True)
class StorageQuery(_Payload):
    """Request of storage/request/<IID> and storage/request/newdata/<IID> (Table 16).

    instance_id None or "" means all tables; sub_topic None means all sub-topics and ""
    the top level only. MaxLength is not capped here: a request above the operator's limit
    is valid JSON that the Data Storage Application answers with DSC_QUERY_TOO_LONG.
    """

    max_length: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    prefer_oldest: bool = False
    instance_id: str | None = None
    sub_topic: str | None = None
    min_priority: int | None = None
    max_priority: int | None = None
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "StorageQuery"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("max_length", "MaxLength", _positive_int32),
        _Key("start_time", "StartTime", _int64),
        _Key("end_time", "EndTime", _int64),
        _Key("prefer_oldest", "PreferOldest", _bool, omit=False),
        _Key("instance_id", "InstanceID", _query_instance),
        _Key("sub_topic", "SubTopic", _query_sub_topic),
        _Key("min_priority", "MinPriority", _int32),
        _Key("max_priority", "MaxPriority", _int32),
        _TIMESTAMP,
        _SIGNATURE,
    )

    @property
    def effective_max_length(self) -> int:
        """Return MaxLength, or DEFAULT_MAX_LENGTH (100) when not given (8.5.1)."""
        return DEFAULT_MAX_LENGTH if self.max_length is None else self.max_length

    @property
    def all_tables(self) -> bool:
        """Return True when the query covers all tables (InstanceID empty or absent)."""
        return not self.instance_id

    def matches_sub_topic(self, stored: str | None) -> bool:
        """Return True when a record stored with this SubTopic (None/"" = top level) is selected."""
        if self.sub_topic is None:
            return True
        return sub_topic_from_response(stored or "") == self.sub_topic

    def matches_priority(self, priority: object) -> bool:
        """Return True when a record with this Priority value (raw, or its rank) is selected.

        Unspecified priorities rank 6, after all valid ones (4.9); MaxPriority 6 selects only
        them (Table 16).
        """
        rank = effective_priority(priority)
        if self.min_priority is not None and rank < self.min_priority:
            return False
        if self.max_priority == NO_PRIORITY:
            return rank == NO_PRIORITY
        return self.max_priority is None or rank <= self.max_priority


def _response_sub_topic(value: object, where: str) -> str:
    if value is not None and not isinstance(value, str):
        raise LvcapError(f"{where}: expected a string, got {_show(value)}")
    text = sub_topic_for_response(value)
    if text != "/":
        validate_topic(text[1:], where)
    return text


def _stored_payload(value: object, where: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            _loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LvcapError(f"{where}: stored payload is not UTF-8 text (byte {exc.start})") from None
        except RecursionError:
            raise LvcapError(f"{where}: stored payload is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise LvcapError(f"{where}: stored payload is not valid JSON: {exc}") from None
        return raw
    # A JSON value already decoded (QueryResponse.from_json): keep its compact encoding.
    return _dumps(value, where)


@dataclass(frozen=True)
class TableRow(_Payload):
    """One stored record in a query response (Tables 3, 17).

    data_raw is the stored payload exactly as received; encode() splices it in unaltered.
    sub_topic is kept in response form: leading '/', '/' for none (None and "" become '/').
    """

    id: int
    timestamp: int
    sub_topic: str
    data_raw: bytes
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "TableRow"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("id", "ID", _int32, required=True),
        _Key("timestamp", "Timestamp", _int64, required=True),
        _Key("sub_topic", "SubTopic", _response_sub_topic, required=True, omit=_ALWAYS),
        _Key("data_raw", "Data", _stored_payload, required=True, dump=lambda raw: _loads(raw.decode("utf-8"))),
    )

    @property
    def data(self) -> Any:
        """Return the stored payload decoded (normally a JSON object)."""
        return _loads(self.data_raw.decode("utf-8"))

    def encode(self) -> bytes:
        """Return the row as JSON bytes with the stored Data bytes spliced in unaltered."""
        return self._encode_with({"Data": self.data_raw})


def _table_rows(value: object, where: str) -> list[TableRow]:
    rows = _array(value, where)
    return [
        row if isinstance(row, TableRow) else TableRow.from_json(row, f"{where}[{i}]") for i, row in enumerate(rows)
    ]


@dataclass(frozen=True)
class TableResult(_Payload):
    """Rows from one table (one source IID) in a query response (Table 17)."""

    table_name: str
    rows: list[TableRow]
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "TableResult"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("table_name", "TableName", _iid_value, required=True),
        _Key("rows", "TableRows", _table_rows, required=True, dump=lambda rows: [row.to_json() for row in rows]),
    )

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str | None = None) -> Self:
        """Validate a decoded TableName/TableRows object (Table 17 also spells it TableRow)."""
        if isinstance(data, Mapping) and "TableRows" not in data and "TableRow" in data:
            data = {("TableRows" if key == "TableRow" else key): value for key, value in data.items()}
        return super().from_json(data, where)

    def encode(self) -> bytes:
        """Return the result as JSON bytes, each row's stored Data spliced in unaltered."""
        return self._encode_with({"TableRows": b"[" + b",".join(row.encode() for row in self.rows) + b"]"})


def _table_results(value: object, where: str) -> list[TableResult]:
    results = _array(value, where)
    return [
        item if isinstance(item, TableResult) else TableResult.from_json(item, f"{where}[{i}]")
        for i, item in enumerate(results)
    ]


@dataclass(frozen=True)
class QueryResponse(_Payload):
    """Response of storage/response/<IID> and storage/response/newdata/<IID> (Tables 17, 18).

    Response is always written (empty on errors); a received one without it parses as empty.
    """

    status: int
    response: list[TableResult] = field(default_factory=list)
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "QueryResponse"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key("status", "Status", _int32, required=True),
        _Key(
            "response",
            "Response",
            _table_results,
            omit=_ALWAYS,
            dump=lambda results: [result.to_json() for result in results],
        ),
        _TIMESTAMP,
        _SIGNATURE,
    )

    @property
    def code(self) -> QueryStatus | None:
        """Return the Status as a QueryStatus, or None when it is not one of Table 18."""
        try:
            return QueryStatus(self.status)
        except ValueError:
            return None

    def iter_rows(self) -> Iterator[tuple[str, TableRow]]:
        """Yield (table name, row) for every row of every table, in order."""
        for result in self.response:
            for row in result.rows:
                yield result.table_name, row

    def encode(self) -> bytes:
        """Return the response as JSON bytes, each row's stored Data bytes spliced in unaltered."""
        body = b"[" + b",".join(result.encode() for result in self.response) + b"]"
        return self._encode_with({"Response": body})


def _new_data(value: object, where: str) -> list[tuple[str, list[int]]]:
    out: list[tuple[str, list[int]]] = []
    for index, item in enumerate(_array(value, where)):
        at = f"{where}[{index}]"
        if isinstance(item, tuple) and len(item) == 2:
            pairs: Sequence[tuple[Any, Any]] = [item]
        elif isinstance(item, Mapping) and item:
            pairs = list(item.items())
        else:
            raise LvcapError(f'{at}: expected an object {{"<IID>": [<ID>, ...]}}, got {_show(item)}')
        for iid, ids in pairs:
            table = _iid_value(iid, f"{at} key")
            id_list = [_int32(number, f"{at}.{table}[{i}]") for i, number in enumerate(_array(ids, f"{at}.{table}"))]
            out.append((table, id_list))
    return out


@dataclass(frozen=True)
class UploadedNotice(_Payload):
    """Payload of storage/uploaded/<IID>: {"NewData": [{"<IID>": [ID, ...]}, ...]} (Table 15)."""

    new_data: list[tuple[str, list[int]]]
    timestamp: int | None = None
    signature: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    _LABEL: ClassVar[str] = "UploadedNotice"
    _KEYS: ClassVar[tuple[_Key, ...]] = (
        _Key(
            "new_data",
            "NewData",
            _new_data,
            required=True,
            dump=lambda pairs: [{table: list(ids)} for table, ids in pairs],
        ),
        _TIMESTAMP,
        _SIGNATURE,
    )

    def ids_by_table(self) -> dict[str, list[int]]:
        """Return the uploaded IDs per table, merging repeated tables."""
        merged: dict[str, list[int]] = {}
        for table, ids in self.new_data:
            merged.setdefault(table, []).extend(ids)
        return merged
