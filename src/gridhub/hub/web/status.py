"""What the status page shows: per substation, upload counters, series, latest key values and charts.

Pure over the :class:`~gridhub.hub.store.Store` interface and the access policy: a caller sees a
site only when it may read the ``substations`` collection of the site's layer (the same rule as
the X-FLEX API), and admins and operators also see registered sites that have not uploaded yet.
The key values and charts are described declaratively (:data:`KEY_POINTS`, :data:`CHARTS`) by
patterns on a series' sub-topic, so any app publishing the simulator's or the thermal app's tree
is shown, whatever its instance ID.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gridhub.hub.auth import AuthService, PolicyError, Principal
from gridhub.hub.auth.policy import Access, can_access, is_reserved_layer, require_view_site_stats
from gridhub.hub.faces.edge.ingest import LEDGER_SUFFIX, EdgeIngest
from gridhub.hub.model import Quality, Series, format_time, parse_time
from gridhub.hub.pipeline.lvcap import SUBSTATIONS
from gridhub.hub.store import Store
from gridhub.hub.web.sparkline import Sparkline, sparkline

__all__ = [
    "CHARTS",
    "KEY_POINTS",
    "Chart",
    "ChartSpec",
    "KeyPoint",
    "PointRow",
    "PointValue",
    "SiteStatus",
    "collect_status",
    "format_age",
    "format_value",
    "site_status",
    "status_json",
]

UPLOAD_SOURCE = "lvcap-upload"
"""The ``source`` member of the substation documents the edge upload face creates."""


@dataclass(frozen=True)
class KeyPoint:
    """One line of a site's key values: a label and the series (sub-topic patterns) it shows, in order."""

    label: str
    patterns: tuple[str, ...]
    total: bool = False  # also show the sum of the values (the three phases of a power)


@dataclass(frozen=True)
class ChartSpec:
    """A small chart of a site: the mean per bucket over ``span`` before the site's newest sample.

    With several patterns the chart is their sum per bucket (buckets where every series has a value).
    """

    label: str
    patterns: tuple[str, ...]
    span: timedelta = timedelta(days=1)
    bucket: timedelta = timedelta(minutes=15)


def _phases(template: str) -> tuple[str, ...]:
    return tuple(template.format(phase=p) for p in ("l1", "l2", "l3"))


KEY_POINTS: tuple[KeyPoint, ...] = (
    KeyPoint("busbar voltage L1 / L2 / L3", _phases("60/busbar/{phase}/voltage-mean")),
    KeyPoint("transformer current L1 / L2 / L3", _phases("60/transformer/{phase}/current-mean")),
    KeyPoint("transformer active power L1 / L2 / L3", _phases("60/transformer/{phase}/power-active-mean"), True),
    KeyPoint("ambient temperature", ("10/ambient/temperature-outdoor",)),
    KeyPoint("top oil (measured)", ("10/transformer/temperature-top-oil",)),
    KeyPoint("top oil / hot spot (thermal model)", ("*/temperature/top-oil", "*/temperature/hot-spot")),
    KeyPoint("load factor / continuous rating", ("*/load/factor", "*/rating/continuous")),
)
"""The key values of a substation: busbar voltages, transformer current and power, temperatures."""

CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("transformer active power", _phases("60/transformer/{phase}/power-active-mean")),
    ChartSpec("hot-spot temperature", ("*/temperature/hot-spot",)),
)
"""The charts of a substation: the last simulated (or real) day before its newest sample."""


@dataclass(frozen=True)
class PointValue:
    """The newest sample of one series, with its unit."""

    series: str
    value: float | None
    unit: str
    time: datetime
    valid: bool

    @property
    def text(self) -> str:
        """The value with its unit, for display."""
        return format_value(self.value, self.unit) + ("" if self.valid else " (invalid)")

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form of /status.json."""
        return {
            "series": self.series,
            "value": self.value,
            "unit": self.unit,
            "time": format_time(self.time),
            "valid": self.valid,
        }


@dataclass(frozen=True)
class PointRow:
    """One line of key values: its label, one value per pattern (None: no such series or no sample yet)."""

    label: str
    values: tuple[PointValue | None, ...]
    total: PointValue | None = None

    @property
    def text(self) -> str:
        """The values joined with ' / ' (and the total), for display."""
        shown = " / ".join("-" if v is None else v.text for v in self.values)
        return shown if self.total is None else f"{shown} (total {self.total.text})"


@dataclass(frozen=True)
class Chart:
    """A chart of one site: its label, unit, the buckets it drew and the sparkline."""

    label: str
    unit: str
    points: tuple[tuple[datetime, float], ...]
    line: Sparkline | None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form of /status.json."""
        return {
            "label": self.label,
            "unit": self.unit,
            "points": [[format_time(ts), value] for ts, value in self.points],
        }


@dataclass(frozen=True)
class SiteStatus:
    """Everything the status page shows of one substation."""

    name: str
    layer: str
    received: int = 0
    stored: int = 0
    rejected: int = 0
    duplicates: int = 0
    last_upload: datetime | None = None
    series: int = 0
    newest: datetime | None = None
    points: tuple[PointRow, ...] = ()
    charts: tuple[Chart, ...] = ()
    registered_only: bool = False  # a site that has not uploaded yet (admins and operators see it)

    def to_json(self, now: datetime) -> dict[str, Any]:
        """Return the JSON form of /status.json."""
        return {
            "name": self.name,
            "layer": self.layer,
            "upload": {
                "received": self.received,
                "stored": self.stored,
                "rejected": self.rejected,
                "duplicates": self.duplicates,
                "last_upload": None if self.last_upload is None else format_time(self.last_upload),
                "age_seconds": None if self.last_upload is None else (now - self.last_upload).total_seconds(),
            },
            "series": self.series,
            "newest_sample": None if self.newest is None else format_time(self.newest),
            "latest": [
                {"label": row.label, "values": [None if v is None else v.to_json() for v in row.values]}
                | ({} if row.total is None else {"total": row.total.to_json()})
                for row in self.points
            ],
            "charts": [chart.to_json() for chart in self.charts],
        }


@dataclass
class _SiteSeries:
    """A site's series, found by sub-topic pattern."""

    by_topic: dict[str, Series] = field(default_factory=dict)

    def find(self, pattern: str) -> Series | None:
        if pattern in self.by_topic:
            return self.by_topic[pattern]
        for topic in sorted(self.by_topic):
            if fnmatch.fnmatchcase(topic, pattern):
                return self.by_topic[topic]
        return None


def _sub_topic(series: Series) -> str:
    """Return the series' sub-topic: its name without the leading table IID."""
    _, _, topic = series.name.partition("/")
    return topic


def format_value(value: float | None, unit: str) -> str:
    """Render a value with its SI unit, in k or M for large powers, energies and currents."""
    if value is None:
        return "-"
    if unit == "1":  # dimensionless (a ratio)
        unit = ""
    if unit in ("W", "var", "VA", "J", "A", "var·s") and abs(value) >= 1000:
        if abs(value) >= 1_000_000:
            value, unit = value / 1_000_000, "M" + unit
        else:
            value, unit = value / 1000, "k" + unit
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        text = str(int(value))
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}".strip()


def format_age(seconds: float) -> str:
    """Render an age in seconds as '12 s', '4 min', '3 h' or '2 d' (negative: 'in the future')."""
    if seconds < 0:
        return "in the future"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _latest_rows(store: Store, site_series: _SiteSeries) -> tuple[tuple[PointRow, ...], datetime | None]:
    wanted: dict[str, Series] = {}
    for point in KEY_POINTS:
        for pattern in point.patterns:
            found = site_series.find(pattern)
            if found is not None:
                wanted[found.key] = found
    readings = store.latest(list(wanted)) if wanted else {}
    newest = max((r.ts for r in readings.values()), default=None)
    rows = []
    for point in KEY_POINTS:
        values: list[PointValue | None] = []
        for pattern in point.patterns:
            found = site_series.find(pattern)
            reading = None if found is None else readings.get(found.key)
            if found is None or reading is None:
                values.append(None)
                continue
            valid = not reading.quality & Quality.INVALID
            values.append(PointValue(found.key, reading.value, found.unit, reading.ts, valid))
        total = None
        present = [v for v in values if v is not None and v.value is not None]
        if point.total and present and len(present) == len(values):
            total = PointValue(
                "+".join(v.series for v in present),
                math.fsum(v.value for v in present if v.value is not None),
                present[0].unit,
                max(v.time for v in present),
                all(v.valid for v in present),
            )
        rows.append(PointRow(point.label, tuple(values), total))
    return tuple(rows), newest


def _chart(store: Store, site_series: _SiteSeries, spec: ChartSpec, end: datetime) -> Chart | None:
    found = [site_series.find(p) for p in spec.patterns]
    series = [s for s in found if s is not None]
    if not series or len(series) != len(found):
        return None
    start = end - spec.span
    sums: dict[datetime, list[float]] = {}
    for one in series:
        for bucket in store.aggregate(one.key, start, end + timedelta(microseconds=1), spec.bucket):
            if bucket.mean is not None:
                sums.setdefault(bucket.start, []).append(bucket.mean)
    points = tuple((ts, math.fsum(values)) for ts, values in sorted(sums.items()) if len(values) == len(series))
    return Chart(spec.label, series[0].unit, points, sparkline(points))


def _upload_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value, "upload.last_upload")
    except ValueError:
        return None


def site_status(store: Store, ingest: EdgeIngest, layer: str, site: str) -> SiteStatus:
    """Return the status of one site of a layer (the caller checked that it may read it)."""
    counters = ingest.counters(site, layer)
    site_series = _SiteSeries()
    count = 0
    for series in store.list_series(layer, asset=site):
        if series.name.endswith(LEDGER_SUFFIX):  # the upload dedupe ledger, not data
            continue
        count += 1
        site_series.by_topic.setdefault(_sub_topic(series), series)
    points, newest = _latest_rows(store, site_series)
    charts: list[Chart] = []
    if newest is not None:
        for spec in CHARTS:
            chart = _chart(store, site_series, spec, newest)
            if chart is not None:
                charts.append(chart)
    return SiteStatus(
        name=site,
        layer=layer,
        received=counters.received,
        stored=counters.stored,
        rejected=counters.rejected,
        duplicates=counters.duplicates,
        last_upload=_upload_time(counters.last_upload),
        series=count,
        newest=newest,
        points=points,
        charts=tuple(charts),
    )


def collect_status(
    store: Store, auth: AuthService, principal: Principal, *, upload_layer: str, limit: int = 1000
) -> list[SiteStatus]:
    """Return the status of every site the principal may read, by layer and name.

    A site is a substation document the edge upload face created (``source`` lvcap-upload) in a
    layer's ``substations`` collection. Admins and operators also see the registered sites that
    have not uploaded yet (in ``upload_layer``, where their first upload will go).
    """
    ingest = EdgeIngest(store)
    out: list[SiteStatus] = []
    seen: set[str] = set()
    for layer in store.list_layers():
        if is_reserved_layer(layer.id) or layer.collection(SUBSTATIONS) is None:
            continue
        if not can_access(principal, layer, SUBSTATIONS, Access.READ):
            continue
        documents = store.find_documents(layer.id, SUBSTATIONS, {"source": UPLOAD_SOURCE}, limit=limit)
        for document in documents:
            out.append(site_status(store, ingest, layer.id, document.id))
            seen.add(document.id)
    try:
        require_view_site_stats(principal)
    except PolicyError:
        return out
    for registered in auth.list_sites():
        if registered.name not in seen:
            out.append(SiteStatus(name=registered.name, layer=upload_layer, registered_only=True))
    return out


def status_json(sites: Sequence[SiteStatus], now: datetime, user: Mapping[str, str]) -> dict[str, Any]:
    """Return the body of /status.json."""
    return {
        "generated": format_time(now),
        "user": dict(user),
        "sites": [site.to_json(now) for site in sites],
    }
