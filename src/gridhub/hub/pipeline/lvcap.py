"""Map LV-CAP Data Upload API rows (Annex 4, 8.5 and 9.1-9.4) to the hub's common model.

Pure: no I/O, deterministic. One upload row is ``(TableName, ID, Timestamp, SubTopic, Data)``
from a substation ("site"); :func:`map_rows` turns a batch of them into series, samples and
events of the site's substation asset (collection ``substations`` of the site's layer):

- ``(table IID, sub-topic)`` -> a :class:`~gridhub.hub.model.Series` keyed
  ``<site>/<IID>/<sub-topic>`` (``<site>/<IID>`` for the top-level topic ``/``). Its unit comes
  from the Data Series Metadata Object (9.4) of a ``.../meta`` row when the batch (or an earlier
  one: pass the known series) holds one, else from the topic conventions of the simulator tree
  (:func:`unit_for`); phase (``l1``/``l2``/``l3``/``n``), statistic (``-min``/``-max``/``-mean``)
  and interval (a leading ``60``/``10`` level, seconds) are parsed from the sub-topic.
- Scalar Object -> one sample at its Timestamp.
- Series Object whose StartPoint is a Unix time (within ten years of its Timestamp) and whose
  Interval is seconds -> one sample per value at ``StartPoint + i * Interval``, Confidence kept.
- Other Series Objects (spectra) and Co-ordinate Objects -> one structured sample (``data``).
- ``Valid=false`` -> the sample carries :attr:`Quality.INVALID`; it is kept, never dropped.
- Error records (an ``Errno`` member) -> ``lvcap-error`` events; other non-standard payloads
  -> ``lvcap-message`` events; standard objects that fail validation -> the row is *rejected*
  and stored as an ``lvcap-rejected`` event with the reason. So is a row whose Data holds what
  JSON or the store cannot hold (NaN, Infinity, -Infinity, a NUL character), its event payload
  holding the text form (``"NaN"``) of the value. Nothing is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gridhub.formats.lvcap import (
    CoordinateObject,
    Errno,
    ErrorReport,
    LvcapError,
    MetadataObject,
    ScalarObject,
    SeriesObject,
    parse_standard_object,
)
from gridhub.hub.model import Event, ModelError, Quality, Sample, Series, Statistic

__all__ = [
    "SUBSTATIONS",
    "MappedBatch",
    "UploadRow",
    "checked_sample",
    "json_safe",
    "map_rows",
    "phase_for",
    "series_key",
    "statistic_for",
    "unit_for",
]

SUBSTATIONS = "substations"
"""The collection of a site's layer that holds the substation assets."""

EVENT_ERROR = "lvcap-error"
EVENT_MESSAGE = "lvcap-message"
EVENT_REJECTED = "lvcap-rejected"

UNIT_FROM_META = "meta"
UNIT_FROM_TOPIC = "topic"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_SERIES_WINDOW = 10 * 366 * 86400  # StartPoint this close to Timestamp (s) is a Unix time
_STANDARD_KEYS = frozenset({"Value", "Coordinates", "StartPoint", "Interval"})
_STATISTIC_SUFFIX = re.compile(r"-(min|max|mean|avg|average)$", re.IGNORECASE)
_PHASES = {"l1": "L1", "l2": "L2", "l3": "L3", "n": "N", "phase1": "L1", "phase2": "L2", "phase3": "L3"}
_UNIT_LEVELS = {"A": "A", "V": "V", "W": "W", "var": "var", "VA": "VA", "Hz": "Hz", "degC": "°C"}

# Parameter (last sub-topic level, statistic suffix removed) -> SI unit, first match wins.
_PARAMETER_UNITS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), unit)
    for pattern, unit in (
        (r"^power-factor", "1"),
        (r"load-factor$", "1"),
        (r"^factor$", "1"),
        (r"^voltage", "V"),
        (r"^current", "A"),
        (r"^power-active", "W"),
        (r"^power-reactive", "var"),
        (r"^power-apparent", "VA"),
        (r"^power$", "W"),
        (r"^energy-active", "J"),
        (r"^energy-reactive", "var·s"),
        (r"^energy$", "J"),
        (r"^temperature", "°C"),
        (r"^frequency", "Hz"),
        (r"^loss-of-life", "h"),
        (r"^rate$", "1"),
    )
)
# Parameter group (an earlier level) -> unit, when the parameter itself says nothing.
_GROUP_UNITS = {"temperature": "°C", "rating": "A", "voltage": "V", "current": "A"}


@dataclass(frozen=True)
class UploadRow:
    """One Data Upload API row (Table 17): the source table (IID), ID, Timestamp, SubTopic and Data."""

    table: str
    id: int
    timestamp: int
    sub_topic: str
    data: Any

    @property
    def topic(self) -> str:
        """The sub-topic without the leading '/' ('' for the top-level topic)."""
        return self.sub_topic.strip("/")


@dataclass
class MappedBatch:
    """What a batch of rows maps to: series to create or update, samples, events and rejections.

    ``rows`` lists, per input row in order, the number of samples and events it produced;
    ``rejected`` maps (table, ID) to the reason a row was rejected (its event is in ``events``).
    """

    series: dict[str, Series] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rejected: dict[tuple[str, int], str] = field(default_factory=dict)


def series_key(site: str, table: str, sub_topic: str) -> str:
    """Return the stable series key ``<site>/<IID>/<sub-topic>`` (``<site>/<IID>`` without sub-topic)."""
    topic = sub_topic.strip("/")
    return f"{site}/{table}/{topic}" if topic else f"{site}/{table}"


def _levels(sub_topic: str) -> list[str]:
    return [level for level in sub_topic.strip("/").split("/") if level]


def unit_for(sub_topic: str) -> str:
    """Return the SI unit the topic conventions give a sub-topic ('' when they say nothing)."""
    levels = _levels(sub_topic)
    if not levels:
        return ""
    last = levels[-1]
    if last in _UNIT_LEVELS:
        return _UNIT_LEVELS[last]
    parameter = _STATISTIC_SUFFIX.sub("", last)
    for pattern, unit in _PARAMETER_UNITS:
        if pattern.search(parameter):
            return unit
    for level in reversed(levels[:-1]):
        group = _GROUP_UNITS.get(level.lower())
        if group is not None:
            return group
    return ""


def phase_for(sub_topic: str) -> str:
    """Return the phase named by a sub-topic level (L1, L2, L3, N) or ''."""
    for level in _levels(sub_topic):
        phase = _PHASES.get(level.lower())
        if phase is not None:
            return phase
    return ""


def statistic_for(sub_topic: str) -> Statistic:
    """Return the statistic of a sub-topic: -min/-max/-mean suffixes, energy per period as sum."""
    levels = _levels(sub_topic)
    if not levels:
        return Statistic.INSTANT
    match = _STATISTIC_SUFFIX.search(levels[-1])
    if match is not None:
        word = match.group(1).lower()
        return {"min": Statistic.MIN, "max": Statistic.MAX}.get(word, Statistic.MEAN)
    if levels[-1].lower().startswith("energy"):
        return Statistic.SUM  # the simulator's energy-active is the energy of the period, not a register
    return Statistic.INSTANT


def _interval_for(sub_topic: str) -> timedelta | None:
    levels = _levels(sub_topic)
    if levels and levels[0].isdigit() and 0 < int(levels[0]) <= 86400 * 366:
        return timedelta(seconds=int(levels[0]))
    return None


def _is_meta(row: UploadRow) -> bool:
    topic = row.topic
    return topic == "meta" or topic.endswith("/meta")


def _meta_target(row: UploadRow) -> str:
    topic = row.topic
    return "" if topic == "meta" else topic[: -len("/meta")]


def _time(seconds: float, where: str) -> datetime:
    if not math.isfinite(seconds):
        raise ModelError(f"{where}: expected a finite Unix time, got {seconds!r}")
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise ModelError(f"{where}: Unix time {seconds!r} is outside years 1-9999") from None


def _number(value: object) -> float:
    return float(value) if isinstance(value, bool | int | float) else math.nan


def _new_series(site: str, layer: str, row: UploadRow, topic: str, meta: MetadataObject | None, kind: str) -> Series:
    attributes: dict[str, Any] = {"table": row.table, "sub_topic": f"/{topic}", "kind": kind}
    unit = unit_for(topic)
    source = UNIT_FROM_TOPIC if unit else ""
    if meta is not None:
        if meta.units is not None:
            unit, source = meta.units, UNIT_FROM_META
        if meta.name is not None:
            attributes["title"] = meta.name
        if meta.display_units is not None:
            attributes["display_units"] = meta.display_units
        if meta.sig_figs is not None:
            attributes["sig_figs"] = meta.sig_figs
    if source:
        attributes["unit_source"] = source
    return Series(
        key=series_key(site, row.table, topic),
        layer=layer,
        asset=site,
        name=f"{row.table}/{topic}" if topic else row.table,
        unit=unit,
        phase=phase_for(topic),
        statistic=statistic_for(topic),
        interval=_interval_for(topic),
        source=f"lvcap:{site}/{row.table}",
        collection=SUBSTATIONS,
        attributes=attributes,
    )


def _merge(old: Series, new: Series) -> Series:
    """Keep what an earlier batch learnt (metadata units, kind) unless this batch says more."""
    if new.attributes.get("unit_source") == UNIT_FROM_META or old.attributes.get("unit_source") != UNIT_FROM_META:
        attributes = {**old.attributes, **new.attributes}
        return replace(new, attributes=attributes)
    keep = {k: v for k, v in old.attributes.items() if k in ("unit_source", "title", "display_units", "sig_figs")}
    attributes = {**old.attributes, **new.attributes, **keep}
    return replace(new, unit=old.unit, attributes=attributes)


def _unstorable(value: object) -> tuple[str, object] | None:
    """Return (path, value) of the first thing in a JSON value the hub cannot store, or None.

    That is a number JSON has no spelling for (NaN, Infinity, -Infinity: Python's json writes
    them) or text with a NUL character (PostgreSQL's text and jsonb refuse it). The path is in
    the form ``.Value[1]`` (``""``: the value itself).
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    if isinstance(value, str):
        return ("", value) if "\x00" in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return (f".{key!r}", key)
            found = _unstorable(item)
            if found is not None:
                return (f".{key}{found[0]}", found[1])
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _unstorable(item)
            if found is not None:
                return (f"[{i}]{found[0]}", found[1])
    return None


def _json_number(value: float) -> str:
    """Return how Python's json spells a non-finite number: NaN, Infinity or -Infinity."""
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def json_safe(value: Any) -> Any:
    """Return value with what the hub cannot store (see :func:`_unstorable`) turned into text.

    NaN, Infinity and -Infinity become the strings "NaN", "Infinity" and "-Infinity"; a NUL
    character becomes the six characters ``\\u0000``. Anything else is returned as it is.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else _json_number(value)
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, Mapping):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _unstorable_problem(row: UploadRow) -> str | None:
    """Return why a row's Data cannot be stored (naming the row ID and the field), or None."""
    found = _unstorable(row.data)
    if found is None:
        return None
    path, value = found
    where = f"{row.table} row {row.id}: Data{path}"
    if isinstance(value, float):
        return f"{where}: expected a finite number (JSON has no NaN or Infinity), got {_json_number(value)}"
    return f"{where}: text with a NUL character (U+0000) cannot be stored"


def _event(
    site: str, layer: str, row: UploadRow, kind: str, code: str, severity: int, extra: Mapping[str, Any]
) -> Event:
    data = row.data
    stamp = data.get("Timestamp") if isinstance(data, Mapping) else None
    seconds = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else row.timestamp
    try:
        when = _time(seconds, "Timestamp")
    except ModelError:
        when = _time(row.timestamp, "row Timestamp")
    payload: dict[str, Any] = {
        "table": row.table,
        "id": row.id,
        "row_timestamp": row.timestamp,
        "sub_topic": row.sub_topic,
        **extra,
        "data": data,
    }
    if _unstorable(payload) is not None:
        payload = json_safe(payload)
    return Event(layer=layer, asset=site, time=when, type=kind, code=code, severity=severity, payload=payload)


def row_marker(event: Event) -> tuple[str, int, int] | None:
    """Return the (table, ID, row Timestamp) an upload event was made from, or None."""
    payload = event.payload
    table, row_id, stamp = payload.get("table"), payload.get("id"), payload.get("row_timestamp")
    if isinstance(table, str) and isinstance(row_id, int) and isinstance(stamp, int):
        return table, row_id, stamp
    return None


def _error_event(site: str, layer: str, row: UploadRow) -> Event:
    try:
        report = ErrorReport.from_json(row.data, where=f"{row.table} row {row.id}: Data")
    except LvcapError as exc:
        return _event(site, layer, row, EVENT_ERROR, "", 500, {"problem": str(exc)})
    try:
        code = Errno(report.errno).name
    except ValueError:
        code = str(report.errno)
    extra = {"errno": report.errno, "message": report.message}
    return _event(site, layer, row, EVENT_ERROR, code, 500, extra)


_SCALAR_KEYS = frozenset({"Timestamp", "Value", "Valid", "ToStore", "Priority", "Signature"})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _plain_scalar(key: str, data: Mapping[str, Any], times: dict[int, datetime]) -> Sample | None:
    """Map the common, well-formed Scalar Object without building a ScalarObject; None: use the full parser.

    Accepts exactly what ScalarObject.from_json accepts for these keys (the bulk path of a drain).
    ``times`` caches the datetime of each Timestamp: the readings of one moment share it.
    """
    if not _SCALAR_KEYS.issuperset(data):
        return None
    stamp, value, valid = data.get("Timestamp"), data.get("Value"), data.get("Valid")
    if type(stamp) is not int or not _INT64_MIN <= stamp <= _INT64_MAX or type(valid) is not bool:
        return None
    if type(value) is float:
        if not math.isfinite(value):
            return None
    elif type(value) is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None
    elif type(value) is not bool:
        return None
    if "ToStore" in data and type(data["ToStore"]) is not bool:
        return None
    if "Priority" in data and type(data["Priority"]) is not int:
        return None
    if "Signature" in data:  # carried untouched by the parser: the full path checks that it can be stored
        return None
    ts = times.get(stamp)
    if ts is None:
        try:
            ts = times[stamp] = _EPOCH + timedelta(seconds=stamp)
        except OverflowError:
            return None
    return checked_sample(key, ts, float(value), _VALID if valid else Quality.INVALID)


_VALID = Quality(0)
_new_object = object.__new__
_set_field = object.__setattr__


def checked_sample(series: str, ts: datetime, value: float, quality: Quality) -> Sample:
    """Build a Sample from fields the caller has already checked, skipping ``Sample.__post_init__``.

    The bulk path of a drain: about 11 us of the sample's own validation saved per sample, i.e.
    a third of the hub's time per upload row. The caller guarantees what ``__post_init__`` would
    check: a non-empty series key, a UTC datetime, a finite float and a ``Quality``.
    """
    sample: Sample = _new_object(Sample)
    _set_field(sample, "series", series)
    _set_field(sample, "ts", ts)
    _set_field(sample, "value", value)
    _set_field(sample, "data", None)
    _set_field(sample, "quality", quality)
    _set_field(sample, "confidence", None)
    _set_field(sample, "cost", None)
    return sample


def _samples(key: str, obj: ScalarObject | SeriesObject | CoordinateObject, where: str) -> tuple[list[Sample], str]:
    quality = Quality(0) if obj.valid else Quality.INVALID
    if isinstance(obj, ScalarObject):
        return [Sample(key, _time(obj.timestamp, f"{where}.Timestamp"), _number(obj.value), quality=quality)], "scalar"
    if isinstance(obj, CoordinateObject):
        data: dict[str, Any] = {"Coordinates": list(obj.coordinates)}
        if obj.system is not None:
            data["System"] = obj.system
        stamp = _time(obj.timestamp, f"{where}.Timestamp")
        return [Sample(key, stamp, None, data=data, quality=quality)], "coordinates"
    start = float(obj.start_point)
    if abs(start - obj.timestamp) <= _TIME_SERIES_WINDOW and obj.interval > 0:
        confidence = obj.confidence
        out = []
        for i, value in enumerate(obj.value):
            ts = _time(start + i * float(obj.interval), f"{where}.StartPoint + {i} * Interval")
            level = None if confidence is None else float(confidence[i])
            out.append(Sample(key, ts, _number(value), quality=quality, confidence=level))
        return out, "time-series"
    spectrum: dict[str, Any] = {"StartPoint": obj.start_point, "Interval": obj.interval, "Value": list(obj.value)}
    if obj.confidence is not None:
        spectrum["Confidence"] = list(obj.confidence)
    return [Sample(key, _time(obj.timestamp, f"{where}.Timestamp"), None, data=spectrum, quality=quality)], "spectrum"


def map_rows(
    site: str,
    layer: str,
    rows: Sequence[UploadRow],
    known: Mapping[str, Series] | None = None,
) -> MappedBatch:
    """Map a batch of upload rows of one site; ``known`` holds series stored by earlier batches.

    Returns only series that are new or changed against ``known``. Never raises for a bad row:
    the row is rejected (with an event saying why) and the others are mapped.
    """
    known = known or {}
    out = MappedBatch()
    # What a (table, sub-topic) decides, worked out once per batch (a drain's batch has ~100 of them
    # for 15,000 rows): its topic, whether it is a metadata topic, and its series key.
    routes: dict[tuple[str, str], tuple[str, bool, str]] = {}

    def route(row: UploadRow) -> tuple[str, bool, str]:
        found = routes.get((row.table, row.sub_topic))
        if found is None:
            topic = row.topic
            found = routes[(row.table, row.sub_topic)] = (
                topic,
                topic == "meta" or topic.endswith("/meta"),
                series_key(site, row.table, topic),
            )
        return found

    def refused(row: UploadRow) -> bool:
        """Reject the row when its Data holds what the hub cannot store (NaN, Infinity, NUL); return True then."""
        problem = _unstorable_problem(row)
        if problem is None:
            return False
        out.rejected[(row.table, row.id)] = problem
        out.events.append(_event(site, layer, row, EVENT_REJECTED, "invalid", 300, {"error": problem}))
        return True

    metas: dict[tuple[str, str], MetadataObject] = {}
    for row in rows:
        if route(row)[1] and isinstance(row.data, Mapping):
            if refused(row):
                continue
            try:
                metas[(row.table, _meta_target(row))] = MetadataObject.from_json(
                    row.data, where=f"{row.table} row {row.id}: Data"
                )
            except LvcapError as exc:
                out.rejected[(row.table, row.id)] = str(exc)
                out.events.append(_event(site, layer, row, EVENT_REJECTED, "metadata", 300, {"error": str(exc)}))

    def remember(series: Series) -> None:
        previous = out.series.get(series.key) or known.get(series.key)
        merged = series if previous is None else _merge(previous, series)
        if merged != known.get(series.key):
            out.series[series.key] = merged
        elif series.key in out.series:
            del out.series[series.key]

    for (table, topic), meta in metas.items():
        row = next(r for r in rows if r.table == table and _is_meta(r) and _meta_target(r) == topic)
        previous = out.series.get(series_key(site, table, topic)) or known.get(series_key(site, table, topic))
        kind = str(previous.attributes.get("kind", "")) if previous is not None else ""
        remember(_new_series(site, layer, row, topic, meta, kind))

    times: dict[int, datetime] = {}
    kinds: dict[str, str] = {}  # series key -> the kind its series (in out.series or known) has been checked to have
    samples = out.samples
    for row in rows:
        topic, is_meta, key = route(row)
        if is_meta:
            if not isinstance(row.data, Mapping) and not refused(row):
                out.events.append(_event(site, layer, row, EVENT_MESSAGE, "metadata", 0, {}))
            continue
        data = row.data
        if not (type(data) is dict or isinstance(data, Mapping)) or _STANDARD_KEYS.isdisjoint(data):
            if refused(row):
                continue
            if isinstance(data, Mapping) and "Errno" in data:
                out.events.append(_error_event(site, layer, row))
            else:
                out.events.append(_event(site, layer, row, EVENT_MESSAGE, "non-standard", 0, {}))
            continue
        plain = _plain_scalar(key, data, times)
        if plain is not None:
            samples.append(plain)
            kind = "scalar"
        else:
            if refused(row):
                continue
            where = f"{row.table} row {row.id}: Data"
            try:
                more, kind = _samples(key, parse_standard_object(data, where=where), where)
            except (LvcapError, ModelError) as exc:
                out.rejected[(row.table, row.id)] = str(exc)
                out.events.append(_event(site, layer, row, EVENT_REJECTED, "invalid", 300, {"error": str(exc)}))
                continue
            samples.extend(more)
        if kinds.get(key) != kind:  # only out.series (remember, below) changes a series' kind in this loop
            current = out.series.get(key) or known.get(key)
            if current is None or current.attributes.get("kind") != kind:
                remember(_new_series(site, layer, row, topic, metas.get((row.table, topic)), kind))
            kinds[key] = kind
    return out


def upload_time(seconds: int) -> datetime:
    """Return the UTC datetime of an LV-CAP Unix timestamp in seconds (4.5)."""
    return _time(seconds, "Timestamp")
