"""The hub's common information model: layers, assets, series, samples, events, resources.

Every type is a frozen dataclass validated in ``__post_init__``; documents coming from the
outside (X-FLEX ``_layers`` and collection documents) are read with ``from_document(doc, where=...)``
and written back with ``to_document()``. Invalid input raises :class:`ModelError`, whose message
names the place and what was expected, e.g. ``"layer 'grid': collections[1].name: expected a
non-empty string, got 3"``.

Time is UTC everywhere: every datetime must be timezone-aware and is converted to UTC. Dates in
documents are written in one canonical form (:func:`format_time`, ``2021-07-28T05:48:17.103000Z``),
so that they sort as text in both store backends; RFC 3339 strings with a zone are read as dates
(like MongoDB's ISODate in the X-FLEX examples) and rewritten in that form.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntFlag, StrEnum
from typing import Any

__all__ = [
    "LAYER_MINIMUM",
    "MEASUREMENTS",
    "Aggregate",
    "Asset",
    "CollectionSpec",
    "Event",
    "EventState",
    "Layer",
    "Measurement",
    "ModelError",
    "Quality",
    "Reading",
    "Resource",
    "Sample",
    "Series",
    "Statistic",
    "check_field_names",
    "format_time",
    "json_kind",
    "measurement_series_key",
    "normalise_dates",
    "parse_time",
]

MEASUREMENTS = "measurements"
"""The asset-document member holding real-time values ({name: {value, quality, timestamp}}, X-FLEX 3.1.2.2)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?(Z|z|[+-]\d\d:\d\d)$")
_RESERVED = ("_id", "_updated", "_expired")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAYER_MINIMUM = ("_id", "label", "description", "collections")
"""The members every ``_layers`` document has (X-FLEX 3.1.2.1, Table 3)."""


class ModelError(ValueError):
    """Invalid model input; the message says where and what was expected."""


def _fail(where: str, expected: str, got: object) -> ModelError:
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ModelError(f"{where}: expected {expected}, got {shown}")


def format_time(value: datetime) -> str:
    """Render a timezone-aware datetime in the canonical UTC form ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object, where: str) -> datetime:
    """Read a UTC datetime from a datetime, an RFC 3339 string with a zone, or epoch milliseconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _fail(where, "a timezone-aware datetime", value)
        return value.astimezone(UTC)
    if isinstance(value, bool):
        raise _fail(where, "a timestamp (RFC 3339 string with a zone, or epoch milliseconds)", value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _fail(where, "a finite number of epoch milliseconds", value)
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
        except OverflowError:
            raise _fail(where, "epoch milliseconds within years 1-9999", value) from None
    if isinstance(value, str) and _RFC3339.match(value):
        try:
            return datetime.fromisoformat(value.upper()).astimezone(UTC)
        except ValueError:
            raise _fail(where, "a valid RFC 3339 date and time", value) from None
    raise _fail(where, "a timestamp (RFC 3339 string with a zone, or epoch milliseconds)", value)


def _check_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _fail(where, "a name of 1-128 letters, digits, '_', '.' or '-' starting with a letter or digit", value)
    return value


def _check_text(value: object, where: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value) or "\x00" in value:
        raise _fail(where, ("a string" if empty else "a non-empty string") + " without NUL characters", value)
    return value


def _check_mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(where, "a JSON object", value)
    return dict(value)


def _check_json(value: object, where: str) -> None:
    """Refuse values that do not survive a JSON round trip."""
    if isinstance(value, str):
        if "\x00" in value:  # PostgreSQL text and jsonb cannot hold NUL
            raise _fail(where, "text without NUL characters", value)
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, "a finite number", value)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise _fail(where, "a JSON object with string keys without NUL characters", key)
            _check_json(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, datetime):
        return  # normalise_dates turns it into text
    raise _fail(where, "a JSON value", value)


def check_field_names(value: object, where: str, path: str = "") -> None:
    """Refuse member names no selector can address: containing '.' or starting with '$', at any depth.

    ``path`` is where value sits in the document; the error names the whole path of the member.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and ("." in key or key.startswith("$")):
                raise ModelError(
                    f"{where}: field {here!r}: a field name must not contain '.' or start with '$' "
                    "(selectors and sorts read '.' as a path separator and '$' as an operator)"
                )
            check_field_names(item, where, here)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_field_names(item, where, f"{path}[{i}]")


def normalise_dates(value: Any) -> Any:
    """Return a copy of a JSON value with datetimes and RFC 3339 strings in canonical UTC form."""
    if isinstance(value, datetime):
        return format_time(parse_time(value, "date"))
    if isinstance(value, str):
        if _RFC3339.match(value):
            try:
                return format_time(parse_time(value, "date"))
            except ModelError:
                return value
        return value
    if isinstance(value, Mapping):
        return {k: normalise_dates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise_dates(v) for v in value]
    return value


# -- layers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionSpec:
    """One collection a layer manages (X-FLEX ``_layers`` ``collections`` item)."""

    name: str
    geo: bool = False
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not isinstance(self.geo, bool):
            raise _fail("geo", "true or false", self.geo)
        for i, metric in enumerate(self.metrics):
            _check_text(metric, f"metrics[{i}]", empty=False)

    @classmethod
    def from_document(cls, doc: object, where: str) -> CollectionSpec:
        """Read a collections item."""
        data = _check_mapping(doc, where)
        metrics = data.get("metrics", [])
        if not isinstance(metrics, list):
            raise _fail(f"{where}.metrics", "a list of strings", metrics)
        try:
            return cls(name=data.get("name"), geo=data.get("geo", False), metrics=tuple(metrics))  # type: ignore[arg-type]
        except ModelError as exc:
            raise ModelError(f"{where}.{exc}") from None

    def to_document(self) -> dict[str, Any]:
        """Write the collections item."""
        doc: dict[str, Any] = {"name": self.name}
        if self.geo:
            doc["geo"] = True
        if self.metrics:
            doc["metrics"] = list(self.metrics)
        return doc


@dataclass(frozen=True)
class Layer:
    """A tenant or data domain: the X-FLEX ``_layers`` document.

    ``config.retention_days`` (a positive number) is the layer's sample retention; absent means
    samples are kept for ever. Members beyond the X-FLEX minimum set are kept in ``extra``.
    """

    id: str
    label: str
    description: str = ""
    owner: str = ""
    collections: tuple[CollectionSpec, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"layer {self.id!r}"
        _check_name(self.id, f"{where}: _id")
        _check_text(self.label, f"{where}: label")
        _check_text(self.description, f"{where}: description")
        _check_text(self.owner, f"{where}: owner")
        seen: set[str] = set()
        for i, spec in enumerate(self.collections):
            if not isinstance(spec, CollectionSpec):
                raise _fail(f"{where}: collections[{i}]", "a CollectionSpec", spec)
            if spec.name in seen:
                raise ModelError(f"{where}: collections[{i}].name: collection {spec.name!r} is listed twice")
            seen.add(spec.name)
        _check_mapping(self.config, f"{where}: config")
        _check_json(self.config, f"{where}: config")
        _check_json(self.extra, f"{where}")
        retention = self.config.get("retention_days")
        if retention is not None and (
            isinstance(retention, bool) or not isinstance(retention, int | float) or not 0 < retention < 1e6
        ):
            raise _fail(f"{where}: config.retention_days", "a positive number of days", retention)

    @property
    def retention(self) -> timedelta | None:
        """How long samples of this layer are kept (None: for ever)."""
        days = self.config.get("retention_days")
        return None if days is None else timedelta(days=days)

    def collection(self, name: str) -> CollectionSpec | None:
        """Return the named collection of this layer, or None when the layer does not list it."""
        return next((c for c in self.collections if c.name == name), None)

    @classmethod
    def from_document(cls, doc: object, where: str = "layer") -> Layer:
        """Read an X-FLEX ``_layers`` document; it must have the members of :data:`LAYER_MINIMUM`."""
        data = _check_mapping(doc, where)
        _check_json(data, where)
        missing = [key for key in LAYER_MINIMUM if key not in data and not (key == "_id" and "id" in data)]
        if missing:
            raise ModelError(
                f"{where}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
                "(X-FLEX 3.1.2.1 Table 3: a layer has at least _id, label, description and collections, "
                "which may be an empty list)"
            )
        layer_id = data.get("_id", data.get("id"))
        if "id" in data and "_id" in data and data["id"] != data["_id"]:
            raise ModelError(f"{where}: id {data['id']!r} differs from _id {layer_id!r}")
        collections = data["collections"]
        if not isinstance(collections, list):
            raise _fail(f"{where}.collections", "a list of collection objects", collections)
        config = data.get("config", {})
        if not isinstance(config, Mapping):
            raise _fail(f"{where}.config", "a JSON object", config)
        known = {"_id", "id", "label", "description", "owner", "collections", "config"}
        return cls(
            id=_check_name(layer_id, f"{where}._id"),
            label=_check_text(data["label"], f"{where}.label"),
            description=_check_text(data["description"], f"{where}.description"),
            owner=_check_text(data.get("owner", ""), f"{where}.owner"),
            collections=tuple(
                CollectionSpec.from_document(item, f"{where}.collections[{i}]") for i, item in enumerate(collections)
            ),
            config=dict(config),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_document(self) -> dict[str, Any]:
        """Write the ``_layers`` document."""
        doc: dict[str, Any] = {
            "_id": self.id,
            **self.extra,
            "label": self.label,
            "description": self.description,
            "owner": self.owner,
            "collections": [c.to_document() for c in self.collections],
        }
        if self.config:
            doc["config"] = dict(self.config)
        return doc


# -- assets --------------------------------------------------------------------------------------

_GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
_DEPTH = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}


def _positions(coords: object, depth: int, where: str) -> Iterator[tuple[float, float]]:
    if depth == 0:
        if (
            not isinstance(coords, list | tuple)
            or len(coords) < 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in coords)
        ):
            raise _fail(where, "a position [longitude, latitude]", coords)
        lon, lat = float(coords[0]), float(coords[1])
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise _fail(where, "longitude in [-180, 180] and latitude in [-90, 90]", coords)
        yield lon, lat
        return
    if not isinstance(coords, list | tuple) or not coords:
        raise _fail(where, "a non-empty list of coordinates", coords)
    for i, item in enumerate(coords):
        yield from _positions(item, depth - 1, f"{where}[{i}]")


def geometry_positions(geometry: Mapping[str, Any], where: str = "geometry") -> list[tuple[float, float]]:
    """Return the (longitude, latitude) positions of a GeoJSON geometry, validating it."""
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list) or not members:
            raise _fail(f"{where}.geometries", "a non-empty list of geometries", members)
        out: list[tuple[float, float]] = []
        for i, member in enumerate(members):
            out += geometry_positions(_check_mapping(member, f"{where}.geometries[{i}]"), f"{where}.geometries[{i}]")
        return out
    if kind not in _GEOMETRY_TYPES:
        raise _fail(f"{where}.type", f"a GeoJSON geometry type ({', '.join(_GEOMETRY_TYPES)})", kind)
    return list(_positions(geometry.get("coordinates"), _DEPTH[str(kind)], f"{where}.coordinates"))


@dataclass(frozen=True)
class Measurement:
    """One real-time value of an asset document: ``measurements.<name>`` = {value, quality, timestamp}."""

    name: str
    timestamp: datetime
    value: Any
    quality: Quality

    def sample(self, series: str) -> Sample:
        """Return the sample this measurement appends to the asset's series history."""
        if isinstance(self.value, int | float) and not isinstance(self.value, bool):
            return Sample(series, self.timestamp, float(self.value), quality=self.quality)
        if isinstance(self.value, bool):
            return Sample(series, self.timestamp, 1.0 if self.value else 0.0, quality=self.quality)
        return Sample(series, self.timestamp, None, data=self.value, quality=self.quality)


def measurement_series_key(layer: str, collection: str, asset: str, name: str) -> str:
    """Return the key of the series that keeps the history of one asset measurement."""
    return f"{layer}/{collection}/{asset}/{name}"


@dataclass(frozen=True)
class Asset:
    """One asset document of a collection: ``_id``, free JSON attributes, optional GeoJSON geometry.

    ``attributes`` holds every member except ``_id``, ``_updated`` and ``_expired`` (the geometry
    stays in ``attributes["geometry"]`` as written); dates in it are in canonical form.
    """

    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    updated: datetime | None = None
    expired: bool = False

    def __post_init__(self) -> None:
        where = f"document {self.id!r}"
        if not isinstance(self.id, str) or not self.id or len(self.id) > 256 or "\x00" in self.id:
            raise _fail("document: _id", "a non-empty string of at most 256 characters", self.id)
        _check_mapping(self.attributes, where)
        _check_json(self.attributes, where)
        for key in _RESERVED:
            if key in self.attributes:
                raise ModelError(f"{where}: {key} is a reserved member, not an attribute")
        if self.updated is not None:
            object.__setattr__(self, "updated", parse_time(self.updated, f"{where}: _updated"))
        if not isinstance(self.expired, bool):
            raise _fail(f"{where}: _expired", "true or false", self.expired)
        object.__setattr__(self, "attributes", normalise_dates(self.attributes))
        if self.geometry is not None:
            geometry_positions(self.geometry, f"{where}: geometry")
        self.measurements(default_time=_EPOCH)  # validates; a store write dates untimed items at the write time

    @property
    def geometry(self) -> Mapping[str, Any] | None:
        """The GeoJSON geometry, if the document has one."""
        value = self.attributes.get("geometry")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise _fail(f"document {self.id!r}: geometry", "a GeoJSON geometry object", value)
        return value

    def bounding_box(self) -> tuple[float, float, float, float] | None:
        """Return (min longitude, min latitude, max longitude, max latitude) of the geometry, or None."""
        if self.geometry is None:
            return None
        positions = geometry_positions(self.geometry)
        lons = [p[0] for p in positions]
        lats = [p[1] for p in positions]
        return min(lons), min(lats), max(lons), max(lats)

    def measurements(self, default_time: datetime | None = None) -> list[Measurement]:
        """Return the document's ``measurements`` (timestamp falls back to measurementsTimestamp, then default)."""
        where = f"document {self.id!r}: {MEASUREMENTS}"
        raw = self.attributes.get(MEASUREMENTS)
        if raw is None:
            return []
        if not isinstance(raw, Mapping):
            raise _fail(where, "a JSON object {name: {value, quality, timestamp}}", raw)
        fallback = self.attributes.get("measurementsTimestamp")
        out = []
        for name, item in raw.items():
            here = f"{where}.{name}"
            _check_name(name, f"{here} (name)")
            if not isinstance(item, Mapping):
                raise _fail(here, "a JSON object {value, quality, timestamp}", item)
            if "value" not in item:
                raise ModelError(f"{here}: value is missing")
            stamp = item.get("timestamp", fallback)
            if stamp is None:
                stamp = default_time or self.updated
            if stamp is None:
                raise ModelError(f"{here}: timestamp is missing (and the document has no measurementsTimestamp)")
            out.append(
                Measurement(name, parse_time(stamp, f"{here}.timestamp"), item["value"], _xflex_quality(item, here))
            )
        return out

    @classmethod
    def from_document(cls, doc: object, where: str = "document") -> Asset:
        """Read a collection document; a missing ``_id`` gets a new random one."""
        data = _check_mapping(doc, where)
        asset_id = data.get("_id")
        if asset_id is None:
            asset_id = uuid.uuid4().hex
        if isinstance(asset_id, int) and not isinstance(asset_id, bool):
            asset_id = str(asset_id)
        if not isinstance(asset_id, str) or not asset_id or len(asset_id) > 256:
            raise _fail(f"{where}._id", "a non-empty string of at most 256 characters", asset_id)
        updated = data.get("_updated")
        expired = data.get("_expired", False)
        try:
            return cls(
                id=asset_id,
                attributes={k: v for k, v in data.items() if k not in _RESERVED},
                updated=None if updated is None else parse_time(updated, f"{where}._updated"),
                expired=expired,
            )
        except ModelError as exc:
            if str(exc).startswith(("document", where)):
                raise
            raise ModelError(f"{where}: {exc}") from None

    def to_document(self) -> dict[str, Any]:
        """Write the document as stored and served."""
        doc: dict[str, Any] = {"_id": self.id, "_expired": self.expired}
        if self.updated is not None:
            doc["_updated"] = format_time(self.updated)
        doc.update(self.attributes)
        return doc


def _xflex_quality(item: Mapping[str, Any], where: str) -> Quality:
    """Map an X-FLEX measurement quality to flags: 1/true/absent good, 0/false INVALID, a flag set otherwise."""
    quality = item.get("quality", 1)
    if isinstance(quality, bool):
        return Quality(0) if quality else Quality.INVALID
    if isinstance(quality, int) and quality >= 0:
        if quality == 1:
            return Quality(0)
        if quality == 0:
            return Quality.INVALID
        return Quality(quality) & Quality.ALL
    raise _fail(f"{where}.quality", "1 (good), 0 (invalid) or a quality flag set", quality)


# -- series and samples ---------------------------------------------------------------------------


class Statistic(StrEnum):
    """How a series' values summarise the quantity over their interval."""

    INSTANT = "instant"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    SUM = "sum"
    ENERGY = "energy"  # an accumulated register (increasing total)
    COUNT = "count"


class Quality(IntFlag):
    """Sample quality flags: a bitmask, 0 = good. Nothing is dropped; bad values are flagged."""

    INVALID = 1  # LV-CAP Valid=false, ESPI invalid, X-FLEX quality 0
    SUSPECT = 2  # failed a plausibility rule
    ESTIMATED = 4  # estimated or forecast
    CURATED = 8  # changed by the curator
    SUBSTITUTED = 16  # replaced value (gap fill)
    ANONYMISED = 32  # changed by the anonymiser
    CALCULATED = 64  # derived (virtual sensor)
    MISSING = 128  # a gap marker; value is None
    ALL = 255


@dataclass(frozen=True)
class Series:
    """One measured or derived quantity of one asset, identified by a stable key.

    ``unit`` is an SI unit symbol (LV-CAP uses SI base units), ``interval`` the nominal spacing of
    samples (None: irregular), ``attributes`` free JSON (ESPI ReadingType members, topic, etc.).
    """

    key: str
    layer: str
    asset: str
    name: str
    unit: str = ""
    phase: str = ""
    statistic: Statistic = Statistic.INSTANT
    interval: timedelta | None = None
    source: str = ""
    collection: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"series {self.key!r}"
        if (
            not isinstance(self.key, str)
            or not self.key
            or len(self.key) > 512
            or self.key != self.key.strip()
            or "\x00" in self.key
        ):
            raise _fail("series: key", "a non-empty string of at most 512 characters without outer spaces", self.key)
        _check_name(self.layer, f"{where}: layer")
        _check_text(self.asset, f"{where}: asset", empty=False)
        _check_text(self.name, f"{where}: name", empty=False)
        for attr in ("unit", "phase", "source", "collection"):
            _check_text(getattr(self, attr), f"{where}: {attr}")
        try:
            object.__setattr__(self, "statistic", Statistic(self.statistic))
        except ValueError:
            raise _fail(
                f"{where}: statistic", f"one of {', '.join(s.value for s in Statistic)}", self.statistic
            ) from None
        if self.interval is not None and (not isinstance(self.interval, timedelta) or self.interval <= timedelta(0)):
            raise _fail(f"{where}: interval", "a positive timedelta or None", self.interval)
        _check_mapping(self.attributes, f"{where}: attributes")
        _check_json(self.attributes, f"{where}: attributes")


@dataclass(frozen=True)
class Sample:
    """One value of a series at one UTC time.

    ``value`` is the number (None for a gap or a structured value); ``data`` holds a structured
    JSON value (a spectrum, co-ordinates); ``quality`` is a :class:`Quality` bitmask.
    """

    series: str
    ts: datetime
    value: float | None = None
    data: Any = None
    quality: Quality = Quality(0)  # noqa: RUF009 - an immutable int flag
    confidence: float | None = None
    cost: float | None = None

    def __post_init__(self) -> None:
        where = f"sample {self.series!r}"
        if not isinstance(self.series, str) or not self.series:
            raise _fail("sample: series", "a series key", self.series)
        if not isinstance(self.ts, datetime) or self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise _fail(f"{where}: ts", "a timezone-aware datetime", self.ts)
        if self.ts.utcoffset():
            object.__setattr__(self, "ts", self.ts.astimezone(UTC))
        for attr in ("value", "confidence", "cost"):
            number = getattr(self, attr)
            if number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise _fail(f"{where} at {format_time(self.ts)}: {attr}", "a finite number or None", number)
            if type(number) is not float:
                object.__setattr__(self, attr, float(number))
        if self.data is not None:
            _check_json(self.data, f"{where} at {format_time(self.ts)}: data")
        if not isinstance(self.quality, int) or isinstance(self.quality, bool) or not 0 <= self.quality <= Quality.ALL:
            raise _fail(f"{where}: quality", "a Quality flag set", self.quality)
        if type(self.quality) is not Quality:
            object.__setattr__(self, "quality", Quality(self.quality))

    @property
    def valid(self) -> bool:
        """Tell whether the sample is not flagged INVALID."""
        return not self.quality & Quality.INVALID


class Reading(tuple[Any, ...]):
    """One row of a range read, a plain tuple for speed: (ts, value, quality[, data, confidence, cost]).

    A short (not detailed) reading answers None for data, confidence and cost.
    """

    __slots__ = ()

    @property
    def ts(self) -> datetime:
        ts: datetime = self[0]
        return ts

    @property
    def value(self) -> float | None:
        value: float | None = self[1]
        return value

    @property
    def quality(self) -> Quality:
        return Quality(self[2])

    @property
    def data(self) -> Any:
        return self[3] if len(self) > 3 else None

    @property
    def confidence(self) -> float | None:
        return self[4] if len(self) > 4 else None

    @property
    def cost(self) -> float | None:
        return self[5] if len(self) > 5 else None


@dataclass(frozen=True)
class Aggregate:
    """One time bucket of a series: statistics over its samples' numeric values (INVALID excluded)."""

    series: str
    start: datetime
    count: int
    min: float | None
    max: float | None
    mean: float | None
    sum: float | None


# -- events and resources -------------------------------------------------------------------------


class EventState(StrEnum):
    """Whether an event began or ended (PPMP / incidents)."""

    NEW = "NEW"
    ENDED = "ENDED"


@dataclass(frozen=True)
class Event:
    """Something that happened to an asset: a PPMP message, an LV-CAP error report, an incident."""

    layer: str
    asset: str
    time: datetime
    type: str
    code: str = ""
    severity: int = 0
    state: EventState = EventState.NEW
    payload: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    def __post_init__(self) -> None:
        where = f"event {self.type!r} of {self.asset!r}"
        _check_name(self.layer, f"{where}: layer")
        _check_text(self.asset, f"{where}: asset", empty=False)
        object.__setattr__(self, "time", parse_time(self.time, f"{where}: time"))
        _check_text(self.type, f"{where}: type", empty=False)
        _check_text(self.code, f"{where}: code")
        if isinstance(self.severity, bool) or not isinstance(self.severity, int) or not 0 <= self.severity <= 1000:
            raise _fail(f"{where}: severity", "an integer 0-1000", self.severity)
        try:
            object.__setattr__(self, "state", EventState(self.state))
        except ValueError:
            raise _fail(f"{where}: state", "NEW or ENDED", self.state) from None
        _check_mapping(self.payload, f"{where}: payload")
        _check_json(self.payload, f"{where}: payload")


@dataclass(frozen=True)
class Resource:
    """Metadata of a stored file (the bytes live in the file store, not here)."""

    id: str
    bucket: str
    filename: str
    content_type: str = "application/octet-stream"
    size: int = 0
    sha256: str = ""
    created: datetime | None = None
    owner: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"resource {self.filename!r}"
        _check_text(self.id, f"{where}: id", empty=False)
        _check_name(self.bucket, f"{where}: bucket")
        _check_text(self.filename, f"{where}: filename", empty=False)
        if "/" in self.filename or "\x00" in self.filename or self.filename in (".", ".."):
            raise _fail(f"{where}: filename", "a file name without '/' or NUL", self.filename)
        _check_text(self.content_type, f"{where}: content_type", empty=False)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise _fail(f"{where}: size", "a byte count >= 0", self.size)
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise _fail(f"{where}: sha256", "64 lower-case hex digits", self.sha256)
        if self.created is not None:
            object.__setattr__(self, "created", parse_time(self.created, f"{where}: created"))
        _check_text(self.owner, f"{where}: owner")
        _check_mapping(self.metadata, f"{where}: metadata")
        _check_json(self.metadata, f"{where}: metadata")


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def check_sequence(values: object, where: str) -> Sequence[Any]:
    """Return values if it is a list or tuple, else raise ModelError."""
    if not isinstance(values, list | tuple):
        raise _fail(where, "a list", values)
    return values


def json_kind(value: Any) -> str:
    """Name a JSON value's type as the REST API's messages do ("a number", "an array", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return "an object"
