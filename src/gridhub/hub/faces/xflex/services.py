"""Hub services the X-FLEX gateway reaches by subject (``<service>.<action>``), in-process or over NATS.

``metrics.get`` answers from series history: for the documents of a collection that match a
filter, the time-bucketed statistics (count, min, max, mean, sum; computed in the database) of
the named measurements over a period::

    {"layer": "grid", "collection": "transformers", "measures": ["activePower"],
     "period": "1d", "interval": "1h", "to": "2024-05-01T00:00:00Z", "filter": {"_id": ["T1"]}}

``period`` is how far back from ``to`` (default now) to look (``30s``, ``15m``, ``1h``, ``1d``,
``2w`` or seconds); ``interval`` the bucket length (default period/24, at least 1 s); ``filter``
maps document fields to a value or a list of accepted values. ``collection`` may also be written
with dotted prefixes (``xflex.grid.transformers``): the longest listed suffix is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gridhub.hub.model import Layer, ModelError, format_time, measurement_series_key, parse_time, utc_now
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import NotFoundError, Store, StoreError

__all__ = ["HubServices", "ServiceError", "metrics_get", "parse_duration", "resolve_collection"]

_DURATION = re.compile(r"^(?P<n>\d+(\.\d+)?)(?P<unit>ms|s|m|h|d|w)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class ServiceError(Exception):
    """A service refused or failed a call; status is the HTTP code the gateway answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_duration(value: object, where: str) -> timedelta:
    """Read ``30s``, ``15m``, ``1h``, ``1d``, ``2w`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match["n"]) <= 0:
        raise ServiceError(400, f"{where}: expected a duration such as 15m, 1h, 1d or seconds, got {value!r}")
    return timedelta(seconds=float(match["n"]) * _UNITS[match["unit"]])


def resolve_collection(store: Store, layer_id: object, collection: object) -> tuple[Layer, str]:
    """Return the layer and the collection name a metrics call names."""
    if not isinstance(layer_id, str) or not layer_id or layer_id.startswith("_"):
        raise ServiceError(400, f"params.layer: expected a layer id, got {layer_id!r}")
    if not isinstance(collection, str) or not collection:
        raise ServiceError(400, f"params.collection: expected a collection name, got {collection!r}")
    try:
        layer = store.get_layer(layer_id)
    except NotFoundError:
        raise ServiceError(404, f"layer {layer_id!r} does not exist") from None
    parts = collection.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[i:])
        if layer.collection(name) is not None:
            return layer, name
    raise ServiceError(404, f"collection {collection!r} is not listed in layer {layer_id!r}")


def _selector(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ServiceError(400, f"params.filter: expected an object of field: value or [values], got {value!r}")
    return {str(k): ({"$in": list(v)} if isinstance(v, list) else v) for k, v in value.items()} or None


def metrics_get(store: Store, settings: HubSettings, params: Mapping[str, Any]) -> dict[str, Any]:
    """Answer ``metrics.get``: bucketed statistics of measurements' history."""
    known = {"layer", "collection", "measures", "period", "interval", "to", "filter"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ServiceError(400, f"params: unknown member(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    layer, collection = resolve_collection(store, params.get("layer"), params.get("collection"))
    measures = params.get("measures")
    if not isinstance(measures, list) or not measures or not all(isinstance(m, str) and m for m in measures):
        raise ServiceError(400, f"params.measures: expected a non-empty list of measurement names, got {measures!r}")
    period = parse_duration(params.get("period", "1d"), "params.period")
    interval = parse_duration(params["interval"], "params.interval") if "interval" in params else period / 24
    if interval < timedelta(seconds=1):
        raise ServiceError(400, f"params.interval: expected at least 1 s, got {interval.total_seconds()} s")
    try:
        end = parse_time(params["to"], "params.to") if "to" in params else utc_now()
    except ModelError as exc:
        raise ServiceError(400, str(exc)) from None
    start = end - period
    cap = settings.query_limit
    try:
        documents = store.find_documents(layer.id, collection, _selector(params.get("filter")), limit=cap + 1)
    except StoreError as exc:
        raise ServiceError(400, f"params.filter: {exc}") from None
    if len(documents) > cap:
        raise ServiceError(400, f"more than {cap} documents match params.filter; narrow it")
    out = []
    for document in documents:
        units = {s.key: s.unit for s in store.list_series(layer.id, document.id)}
        for measure in measures:
            key = measurement_series_key(layer.id, collection, document.id, measure)
            if key not in units:
                continue
            buckets = store.aggregate(key, start, end, interval)
            out.append(
                {
                    "_id": document.id,
                    "measure": measure,
                    "series": key,
                    "unit": units[key],
                    "buckets": [
                        {
                            "timestamp": format_time(b.start),
                            "count": b.count,
                            "min": b.min,
                            "max": b.max,
                            "mean": b.mean,
                            "sum": b.sum,
                        }
                        for b in buckets
                    ],
                }
            )
    return {
        "layer": layer.id,
        "collection": collection,
        "from": format_time(start),
        "to": format_time(end),
        "interval": interval.total_seconds(),
        "metrics": out,
    }


@dataclass
class HubServices:
    """The services the gateway calls by subject."""

    store: Store
    settings: HubSettings

    @property
    def handlers(self) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
        """Return the handler of each subject (without the domain)."""
        return {"metrics.get": lambda params: metrics_get(self.store, self.settings, params)}

    def call(self, subject: str, params: Mapping[str, Any]) -> Any:
        """Call the service answering a subject; ServiceError 404 when none does."""
        handler = self.handlers.get(subject)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            raise ServiceError(404, f"no hub service answers subject {subject!r} (hub services: {known})")
        return handler(params)
