"""Configuration routes: /config/:layer/:item GET and PUT (X-FLEX 3.3.1.2.10-11).

``item`` names the layer itself (its ``_layers`` document: ``PUT /config/grid/grid`` creates or
replaces layer ``grid``, admins only), one of its collections (``{name, geo, metrics, ...}``; a
PUT adds or replaces it, for an admin or the layer's owner) or one of its series by key
(``grid/feeders/f1/voltage``: unit, phase, statistic, interval in seconds, source, attributes).
A collection's members beyond name/geo/metrics are kept in the layer's
``config.collectionConfig.<name>`` and served back merged.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path

from gridhub.hub.auth import Access
from gridhub.hub.auth.policy import (
    is_reserved_layer,
    require_access,
    require_configure_collection,
    require_put_layer,
    require_read_layer,
)
from gridhub.hub.deps import Context, CurrentPrincipal
from gridhub.hub.faces.xflex.collections import ROUTE_WORDS
from gridhub.hub.faces.xflex.errors import XflexError
from gridhub.hub.faces.xflex.schemas import ConfigOut, ErrorOut, MessageOut
from gridhub.hub.model import CollectionSpec, Layer, ModelError, Series
from gridhub.hub.store import NotFoundError

__all__ = ["COLLECTION_CONFIG", "collection_document", "router", "series_document"]

router = APIRouter(tags=["config"])

COLLECTION_CONFIG = "collectionConfig"
_SPEC_KEYS = ("name", "geo", "metrics")
_SERIES_KEYS = {
    "_id",
    "key",
    "layer",
    "asset",
    "name",
    "collection",
    "unit",
    "phase",
    "statistic",
    "interval",
    "source",
    "attributes",
}
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 429)}

LayerPath = Annotated[str, Path(description="Layer ID")]
ItemPath = Annotated[str, Path(description="The layer itself, a collection, or a series key")]


def collection_document(layer: Layer, name: str) -> dict[str, Any]:
    """Return a collection's full configuration: extra members merged with name/geo/metrics."""
    spec = layer.collection(name)
    assert spec is not None
    extra = layer.config.get(COLLECTION_CONFIG, {}).get(name, {})
    return {**extra, "geo": spec.geo, "metrics": list(spec.metrics), "name": spec.name}


def series_document(series: Series) -> dict[str, Any]:
    """Return a series' configuration as served."""
    return {
        "_id": series.key,
        "layer": series.layer,
        "collection": series.collection,
        "asset": series.asset,
        "name": series.name,
        "unit": series.unit,
        "phase": series.phase,
        "statistic": series.statistic.value,
        "interval": None if series.interval is None else series.interval.total_seconds(),
        "source": series.source,
        "attributes": dict(series.attributes),
    }


def _series(ctx: Context, layer: Layer, key: str) -> Series | None:
    try:
        series = ctx.store.get_series(key)
    except NotFoundError:
        return None
    return series if series.layer == layer.id else None


def _layer(ctx: Context, layer_id: str) -> Layer:
    if is_reserved_layer(layer_id):
        raise XflexError(404, f"layer {layer_id!r} does not exist")
    return ctx.store.get_layer(layer_id)


@router.get(
    "/config/{layer}/{item:path}",
    response_model=ConfigOut,
    responses=_ERRORS,
    operation_id="config_get",
    summary="Get a collection or serie configuration",
)
def get_config(layer: LayerPath, item: ItemPath, ctx: Context, principal: CurrentPrincipal) -> ConfigOut:
    """Return the configuration of the layer, one of its collections or one of its series."""
    try:
        found = _layer(ctx, layer)
    except NotFoundError:
        # PLF_008, as for collections: a caller who could not read this layer were it there gets 403,
        # whether or not it exists; only one who could is told it is missing.
        try:
            stand_in = Layer(id=layer, label=layer)
        except ModelError:  # not a valid layer name: no such layer can exist for anyone
            raise XflexError(404, f"layer {layer!r} does not exist") from None
        require_read_layer(principal, stand_in)
        raise
    if item == layer:
        require_read_layer(principal, found)
        return ConfigOut(data=found.to_document())
    if found.collection(item) is not None:
        require_access(principal, found, item, Access.READ)
        return ConfigOut(data=collection_document(found, item))
    series = _series(ctx, found, item)
    if series is None:
        require_read_layer(principal, found)  # the same 403 as for an existing item the caller may not read
        raise XflexError(404, f"{item!r} is neither a collection nor a series of layer {layer!r}")
    if series.collection:
        require_access(principal, found, series.collection, Access.READ)
    else:
        require_read_layer(principal, found)
    return ConfigOut(data=series_document(series))


@router.put(
    "/config/{layer}/{item:path}",
    response_model=MessageOut,
    responses=_ERRORS,
    operation_id="config_put",
    summary="Update a collection or serie configuration",
)
def put_config(
    layer: LayerPath,
    item: ItemPath,
    body: Annotated[dict[str, Any], Body(description="The layer document, collection or series configuration")],
    ctx: Context,
    principal: CurrentPrincipal,
) -> MessageOut:
    """Create or replace the layer (item = layer), a collection of it, or update one of its series."""
    if item == layer:
        return _put_layer(layer, body, ctx, principal)
    found = _layer(ctx, layer)
    require_configure_collection(principal, found)
    if "/" in item:
        return _put_series(found, item, body, ctx)
    return _put_collection(found, item, body, ctx)


def _put_layer(layer: str, body: dict[str, Any], ctx: Context, principal: CurrentPrincipal) -> MessageOut:
    require_put_layer(principal, layer)
    if layer in ROUTE_WORDS:
        raise XflexError(400, f"layer name {layer!r} is reserved for an API route; choose another")
    doc_id = body.get("_id", body.get("id", layer))
    if doc_id != layer:
        raise XflexError(400, f"_id {doc_id!r} of the layer document differs from the path's layer {layer!r}")
    try:
        new = Layer.from_document({**body, "_id": layer}, where=f"layer {layer!r}")
    except ModelError as exc:
        raise XflexError(400, str(exc)) from None
    created = ctx.store.put_layer(new)
    return MessageOut(message="Layer created" if created else "Layer replaced")


def _put_collection(layer: Layer, item: str, body: dict[str, Any], ctx: Context) -> MessageOut:
    if body.get("name", item) != item:
        raise XflexError(400, f"name {body.get('name')!r} of the configuration differs from the path's {item!r}")
    try:
        spec = CollectionSpec.from_document({**body, "name": item}, where=f"collection {item!r}")
    except ModelError as exc:
        raise XflexError(400, str(exc)) from None
    extra = {k: v for k, v in body.items() if k not in _SPEC_KEYS}
    collections = [c for c in layer.collections if c.name != item]
    existed = len(collections) != len(layer.collections)
    configs = {k: v for k, v in layer.config.get(COLLECTION_CONFIG, {}).items() if k != item}
    if extra:
        configs[item] = extra
    config = {k: v for k, v in layer.config.items() if k != COLLECTION_CONFIG}
    if configs:
        config[COLLECTION_CONFIG] = configs
    try:
        ctx.store.put_layer(replace(layer, collections=(*collections, spec), config=config))
    except ModelError as exc:
        raise XflexError(400, str(exc)) from None
    return MessageOut(message="Collection replaced" if existed else "Collection created")


def _put_series(layer: Layer, key: str, body: dict[str, Any], ctx: Context) -> MessageOut:
    unknown = sorted(set(body) - _SERIES_KEYS)
    if unknown:
        raise XflexError(
            400, f"series {key!r}: unknown member(s) {', '.join(unknown)} (known: {', '.join(sorted(_SERIES_KEYS))})"
        )
    current = _series(ctx, layer, key)
    values: dict[str, Any] = series_document(current) if current is not None else {"layer": layer.id}
    values.update(body)
    for name in ("_id", "key", "layer"):
        if name in body and body[name] != (key if name != "layer" else layer.id):
            raise XflexError(400, f"series {key!r}: {name} {body[name]!r} differs from the path")
    interval = values.get("interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0):
        raise XflexError(400, f"series {key!r}: interval: expected a positive number of seconds, got {interval!r}")
    attributes = values.get("attributes") or {}
    try:
        series = Series(
            key=key,
            layer=layer.id,
            asset=values.get("asset", ""),
            name=values.get("name", ""),
            unit=values.get("unit", ""),
            phase=values.get("phase", ""),
            statistic=values.get("statistic", "instant"),
            interval=None if interval is None else timedelta(seconds=interval),
            source=values.get("source", ""),
            collection=values.get("collection", ""),
            attributes=attributes,
        )
    except (ModelError, TypeError) as exc:
        raise XflexError(400, str(exc)) from None
    if series.collection and layer.collection(series.collection) is None:
        raise XflexError(400, f"series {key!r}: collection {series.collection!r} is not listed in layer {layer.id!r}")
    ctx.store.put_series(series)
    return MessageOut(message="Series replaced" if current is not None else "Series created")
