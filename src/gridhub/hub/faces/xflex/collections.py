"""Collection routes: documents of /:layer/:col (query, insert, update, delete), one document,
a field of them, bulk writes, and the range and near queries (X-FLEX 3.3.1.2.3-9, 12, 13, Annex 1).

A GET or DELETE on /:layer/:col selects documents with the query string, as an Express/qs server
reads it: ``?name=x`` is an equality (a value that reads as a number or boolean also matches that
number or boolean), ``?voltage[$gte]=230`` an operator (``$eq $ne $gt $gte $lt $lte $in $nin
$exists``), a repeated parameter any of its values; ``selector=<JSON>`` gives a whole MongoDB-style
selector. ``sort=field,-other``, ``limit`` and ``skip`` page the answer. ``appId``, ``keyId``,
``selector``, ``sort``, ``limit`` and ``skip`` are therefore not field names here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel
from starlette.convertors import StringConvertor, register_url_convertor

from gridhub.hub.auth import Access, Principal
from gridhub.hub.auth.policy import is_reserved_layer, require_access
from gridhub.hub.deps import Context, CurrentPrincipal, FaceContext
from gridhub.hub.faces.xflex.errors import XflexError
from gridhub.hub.faces.xflex.schemas import (
    BulkIn,
    BulkOut,
    BulkReport,
    DeletedOut,
    DeleteReport,
    DocumentError,
    DocumentOut,
    DocumentsOut,
    ErrorOut,
    InsertOut,
    InsertReport,
    MessageOut,
    UpdateOut,
    UpdateReport,
)
from gridhub.hub.model import Asset, Layer, ModelError, json_kind, parse_time
from gridhub.hub.store import NotFoundError, SelectorError, StoreError

__all__ = ["ROUTE_WORDS", "open_collection", "router", "selector_from_query"]

router = APIRouter(tags=["collections"])

ROUTE_WORDS = frozenset(
    {
        "health",
        "login",
        "logout",
        "me",
        "config",
        "range",
        "near",
        "bulk",
        "resources",
        "notify",
        "gateway",
        "docs",
        "openapi.json",
    }
)
"""First path segments of fixed routes: no layer may be named so."""


class LayerConvertor(StringConvertor):
    """A /:layer path segment of the generic routes: anything but a fixed route's first segment.

    So /notify/email, /gateway... never reach the collection routes, and a wrong method there is a
    plain 405 naming the fixed route's methods (Allow), not a collection lookup.
    """

    regex = "(?!(?:" + "|".join(re.escape(word) for word in sorted(ROUTE_WORDS)) + ")(?:/|$))[^/]+"


register_url_convertor("xflex_layer", LayerConvertor())

RESERVED_PARAMS = frozenset({"appId", "keyId", "selector", "sort", "limit", "skip"})
_OPERATOR_KEY = re.compile(r"^(?P<field>[^\[\]]+)\[(?P<op>\$[A-Za-z]+)\]$")
_LOOKUP_CHUNK = 1000  # ids per $in look-up: each query (and its answer) stays bounded, however many ids a write names
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 429)}

_DOCUMENTS_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}],
}
LayerPath = Annotated[str, Path(description="Layer ID")]
CollectionPath = Annotated[str, Path(description="Collection ID")]
IdPath = Annotated[str, Path(description="Document ID")]
FieldPath = Annotated[str, Path(description="Field to be returned")]
SortQuery = Annotated[str | None, Query(description="Fields to sort by, comma-separated; '-' first for descending")]
LimitQuery = Annotated[int | None, Query(ge=1, description="Most documents to return")]
SkipQuery = Annotated[int, Query(ge=0, description="Documents to skip")]
SelectorQuery = Annotated[str | None, Query(description="A MongoDB-style selector as JSON")]


# -- shared helpers -------------------------------------------------------------------------------


def open_collection(ctx: FaceContext, principal: Principal, layer: str, collection: str, access: Access) -> Layer:
    """Return the layer after checking the collection is listed in it and the caller may access it."""
    if layer in ROUTE_WORDS or is_reserved_layer(layer):  # no layer may be named so (/range/config/x)
        raise XflexError(404, f"layer {layer!r} does not exist")
    try:
        found: Layer | None = ctx.store.get_layer(layer)
    except NotFoundError:
        found = None
    if found is None or found.collection(collection) is None:
        # PLF_008: a caller who could not use the collection were it there learns nothing of what exists
        # (403 whether or not the layer or collection exists); only one who could is told it is missing.
        try:
            stand_in = found if found is not None else Layer(id=layer, label=layer)
        except ModelError:  # not a valid layer name: no such layer can exist for anyone
            raise XflexError(404, f"layer {layer!r} does not exist") from None
        require_access(principal, stand_in, collection, access)
        if found is None:
            raise XflexError(404, f"layer {layer!r} does not exist")
        raise XflexError(404, f"collection {collection!r} is not listed in layer {layer!r}")
    require_access(principal, found, collection, access)
    return found


def _typed(text: str) -> list[Any]:
    """Return the values a query-string value may stand for: the text, and a number or boolean it spells."""
    out: list[Any] = [text]
    if text in ("true", "false"):
        out.append(text == "true")
    else:
        try:
            number = json.loads(text)
        except ValueError:
            return out
        if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
            out.append(number)
    return out


def _scalar(text: str) -> Any:
    typed = _typed(text)
    return typed[-1] if len(typed) > 1 and not isinstance(typed[-1], bool) else text


def selector_from_query(request: Request) -> dict[str, Any] | None:
    """Build the selector the query string describes (see the module docstring); None selects everything."""
    params = request.query_params
    clauses: list[dict[str, Any]] = []
    if "selector" in params:
        try:
            selector = json.loads(params["selector"])
        except ValueError as exc:
            raise XflexError(400, f"query parameter selector: not valid JSON ({exc})") from None
        if not isinstance(selector, dict):
            raise XflexError(400, f"query parameter selector: expected a JSON object, got {selector!r}")
        clauses.append(selector)
    for key in dict.fromkeys(params.keys()):
        if key in RESERVED_PARAMS:
            continue
        values = params.getlist(key)
        match = _OPERATOR_KEY.match(key)
        if match is None:
            alternatives = [v for text in values for v in _typed(text)]
            clauses.append({key: {"$in": alternatives}})
            continue
        field, op = match["field"], match["op"]
        if op in ("$eq", "$in"):
            clauses.append({field: {"$in": [v for text in values for v in _typed(text)]}})
        elif op in ("$ne", "$nin"):
            clauses.append({field: {"$nin": [v for text in values for v in _typed(text)]}})
        elif op == "$exists":
            if values[-1] not in ("true", "false", "1", "0"):
                raise XflexError(400, f"query parameter {key}: expected true or false, got {values[-1]!r}")
            clauses.append({field: {"$exists": values[-1] in ("true", "1")}})
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            clauses.append({field: {op: _scalar(values[-1])}})
        else:
            raise XflexError(
                400,
                f"query parameter {key}: operator {op} is not supported "
                "($eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists)",
            )
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _sort(text: str | None) -> list[tuple[str, int]]:
    if not text:
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        if part:
            out.append((part[1:], -1) if part.startswith("-") else (part.lstrip("+"), 1))
    return out


def _find(
    ctx: FaceContext,
    layer: str,
    collection: str,
    selector: Mapping[str, Any] | None,
    sort: list[tuple[str, int]],
    limit: int | None,
    skip: int,
) -> list[Asset]:
    cap = ctx.settings.query_limit
    if limit is not None and limit > cap:
        raise XflexError(400, f"limit: at most {cap} documents per request (api.query_limit), got {limit}")
    found = ctx.store.find_documents(layer, collection, selector, sort=sort, limit=limit or cap + 1, skip=skip)
    if limit is None and len(found) > cap:
        raise XflexError(400, f"more than {cap} documents match; page through them with limit and skip")
    return found


def _stored_ids(ctx: FaceContext, layer: str, collection: str, ids: list[str]) -> set[str]:
    """Return which of ids are stored, asking in chunks of _LOOKUP_CHUNK."""
    found: set[str] = set()
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[start : start + _LOOKUP_CHUNK]
        found.update(a.id for a in ctx.store.find_documents(layer, collection, {"_id": {"$in": chunk}}))
    return found


def _documents(assets: list[Asset]) -> list[dict[str, Any]]:
    return [a.to_document() for a in assets]


def _error(index: int, doc_id: str | None, message: str) -> DocumentError:
    return DocumentError.model_validate({"index": index, "_id": doc_id, "message": message})


def _body_documents(body: Any) -> list[Any]:
    """Return the documents of an object-or-array body; each item is judged by the caller (per document)."""
    if isinstance(body, bytes | bytearray):  # FastAPI passes a body it did not read as JSON through as bytes
        raise XflexError(400, "body: send Content-Type: application/json with a JSON object or an array of objects")
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return body
    raise XflexError(400, f"body: expected a JSON object or an array of objects, got {json_kind(body)}")


def _not_a_document(index: int, item: Any) -> DocumentError:
    return _error(index, None, f"documents[{index}]: expected a JSON object, got {json_kind(item)}")


def _project(doc: dict[str, Any], field: str) -> dict[str, Any]:
    """Return _id and one (dotted) field of a document, nested as MongoDB projects it."""
    out: dict[str, Any] = {"_id": doc["_id"]}
    keys = field.split(".")
    value: Any = doc
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return out
        value = value[key]
    target = out
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value
    return out


def _time_param(value: str, name: str) -> Any:
    try:
        return parse_time(float(value) if re.fullmatch(r"-?\d+(\.\d+)?", value) else value, name)
    except ModelError as exc:
        raise XflexError(400, f"query parameter {exc}") from None


# -- fixed-prefix routes (before the generic /:layer/:col ones) -------------------------------------


@router.get(
    "/range/{layer}/{collection}",
    response_model=DocumentsOut,
    responses=_ERRORS,
    operation_id="range",
    summary="Query documents on a range of dates",
)
def range_documents(
    layer: LayerPath,
    collection: CollectionPath,
    ctx: Context,
    principal: CurrentPrincipal,
    from_: Annotated[
        str,
        Query(alias="from", description="Initial date (RFC 3339 or epoch ms)", examples=["2019-11-10T07:00:00.000Z"]),
    ],
    to: Annotated[str, Query(description="End date, excluded", examples=["2019-11-10T08:00:00.000Z"])],
    field: Annotated[str, Query(description="Name of the field on which to compare the dates")] = "timestamp",
    limit: LimitQuery = None,
) -> DocumentsOut:
    """Return the documents whose field lies in [from, to)."""
    open_collection(ctx, principal, layer, collection, Access.READ)
    start, end = _time_param(from_, "from"), _time_param(to, "to")
    if end < start:
        raise XflexError(400, f"query parameter to ({to}) is before from ({from_})")
    cap = ctx.settings.query_limit
    found = ctx.store.range_documents(layer, collection, start, end, field, limit=min(limit or cap + 1, cap + 1))
    if len(found) > cap:
        raise XflexError(400, f"more than {cap} documents match; narrow the range or pass limit")
    return DocumentsOut(data=_documents(found))


@router.get(
    "/near/{layer}/{collection}",
    response_model=DocumentsOut,
    responses=_ERRORS,
    operation_id="near",
    summary="Query documents near a geographic point",
)
def near_documents(
    layer: LayerPath,
    collection: CollectionPath,
    ctx: Context,
    principal: CurrentPrincipal,
    lat: Annotated[float, Query(ge=-90, le=90, description="Latitude", examples=[39.4629887])],
    lon: Annotated[float, Query(ge=-180, le=180, description="Longitude", examples=[-0.4082334])],
    distance: Annotated[float, Query(ge=0, le=2e7, description="Max. distance in meters", examples=[100])],
    limit: LimitQuery = None,
) -> DocumentsOut:
    """Return the documents whose geometry is within distance metres of (lat, lon), nearest first."""
    spec = open_collection(ctx, principal, layer, collection, Access.READ).collection(collection)
    if spec is None or not spec.geo:
        raise XflexError(
            400, f"collection {collection} of layer {layer} is not geo (its _layers entry has no geo: true)"
        )
    cap = ctx.settings.query_limit
    found = ctx.store.near_documents(layer, collection, lat, lon, distance, limit=min(limit or cap + 1, cap + 1))
    if len(found) > cap:
        raise XflexError(400, f"more than {cap} documents match; reduce the distance or pass limit")
    return DocumentsOut(data=[asset.to_document() for asset, _ in found])


@router.post(
    "/bulk/{layer}/{collection}",
    response_model=BulkOut,
    responses=_ERRORS,
    operation_id="bulk",
    summary="Insert or update multiple documents",
)
def bulk(
    layer: LayerPath, collection: CollectionPath, body: BulkIn, ctx: Context, principal: CurrentPrincipal
) -> BulkOut:
    """Insert the documents without an existing _id and merge the others; init empties the collection first."""
    open_collection(ctx, principal, layer, collection, Access.WRITE)
    if body.init:
        before = (
            [a.id for a in ctx.store.find_documents(layer, collection)]
            if ctx.bus.wants_collection(layer, collection)
            else []
        )
        ctx.store.delete_documents(layer, collection, None)
        ctx.bus.publish_removed(layer, collection, before)
    ids = [d["_id"] for d in body.data if isinstance(d.get("_id"), str)]
    existing = _stored_ids(ctx, layer, collection, ids)
    errors: list[DocumentError] = []
    updated: list[str] = []
    to_insert: list[tuple[int, dict[str, Any]]] = []
    for i, doc in enumerate(body.data):
        doc_id = doc.get("_id")
        if isinstance(doc_id, str) and doc_id in existing:
            try:
                changes = {k: v for k, v in doc.items() if k != "_id"}
                ctx.bus.publish_patched(
                    layer, collection, ctx.store.patch_document(layer, collection, doc_id, changes), changes
                )
                updated.append(doc_id)
            except (StoreError, ModelError) as exc:
                errors.append(_error(i, doc_id, f"data[{i}]: {exc}"))
        else:
            to_insert.append((i, doc))
    report = ctx.store.insert_documents(layer, collection, [doc for _, doc in to_insert])
    ctx.bus.publish_inserted(ctx.store, layer, collection, report.inserted_ids)
    for err in report.errors:
        errors.append(_error(to_insert[err.index][0], err.id, err.message))
    errors.sort(key=lambda e: e.index)
    data = BulkReport(
        ok=len(updated) + len(report.inserted_ids),
        insertedIds=report.inserted_ids,
        updatedIds=updated,
        err=len(errors),
        errorIds=_error_ids(errors),
        errors=errors,
    )
    _refuse_if_none_written(data, data.ok, errors, "written")
    return BulkOut(message="Item(s) inserted", data=data)


# -- fields ----------------------------------------------------------------------------------------


@router.get(
    "/{layer:xflex_layer}/{collection}/field/{field}",
    response_model=DocumentsOut,
    responses=_ERRORS,
    operation_id="layer_col_field",
    summary="Get a specific field of the documents",
)
def get_field(
    layer: LayerPath,
    collection: CollectionPath,
    field: FieldPath,
    request: Request,
    ctx: Context,
    principal: CurrentPrincipal,
    sort: SortQuery = None,
    limit: LimitQuery = None,
    skip: SkipQuery = 0,
    selector: SelectorQuery = None,
) -> DocumentsOut:
    """Return _id and one field of the matching documents."""
    open_collection(ctx, principal, layer, collection, Access.READ)
    found = _find(ctx, layer, collection, selector_from_query(request), _sort(sort), limit, skip)
    return DocumentsOut(data=[_project(a.to_document(), field) for a in found])


@router.get(
    "/{layer:xflex_layer}/{collection}/{id}/field/{field}",
    response_model=DocumentOut,
    responses=_ERRORS,
    operation_id="layer_col_id_field",
    summary="Get a specific field of a document",
)
def get_document_field(
    layer: LayerPath,
    collection: CollectionPath,
    id: IdPath,
    field: FieldPath,
    ctx: Context,
    principal: CurrentPrincipal,
) -> DocumentOut:
    """Return _id and one field of a document."""
    open_collection(ctx, principal, layer, collection, Access.READ)
    return DocumentOut(data=_project(ctx.store.get_document(layer, collection, id).to_document(), field))


# -- one document --------------------------------------------------------------------------------------


@router.get(
    "/{layer:xflex_layer}/{collection}/{id}",
    response_model=DocumentOut,
    responses=_ERRORS,
    operation_id="layer_col_id_get",
    summary="Get a document",
)
def get_document(
    layer: LayerPath, collection: CollectionPath, id: IdPath, ctx: Context, principal: CurrentPrincipal
) -> DocumentOut:
    """Return one document."""
    open_collection(ctx, principal, layer, collection, Access.READ)
    return DocumentOut(data=ctx.store.get_document(layer, collection, id).to_document())


@router.patch(
    "/{layer:xflex_layer}/{collection}/{id}",
    response_model=MessageOut,
    responses=_ERRORS,
    operation_id="layer_col_id_patch",
    summary="Update a document",
)
def patch_document(
    layer: LayerPath,
    collection: CollectionPath,
    id: IdPath,
    body: Annotated[dict[str, Any], Body(description="Fields of the document to be updated")],
    ctx: Context,
    principal: CurrentPrincipal,
) -> MessageOut:
    """Merge the fields into the document (null removes a field)."""
    open_collection(ctx, principal, layer, collection, Access.WRITE)
    if "_id" in body and body["_id"] != id:
        raise XflexError(400, f"_id cannot be changed (document {id!r}, body _id {body['_id']!r})")
    changes = {k: v for k, v in body.items() if k != "_id"}
    ctx.bus.publish_patched(layer, collection, ctx.store.patch_document(layer, collection, id, changes), changes)
    return MessageOut(message="Item updated")


@router.delete(
    "/{layer:xflex_layer}/{collection}/{id}",
    response_model=MessageOut,
    responses=_ERRORS,
    operation_id="layer_col_id_delete",
    summary="Delete a document",
)
def delete_document(
    layer: LayerPath, collection: CollectionPath, id: IdPath, ctx: Context, principal: CurrentPrincipal
) -> MessageOut:
    """Delete one document (its measurement history stays)."""
    open_collection(ctx, principal, layer, collection, Access.WRITE)
    if not ctx.store.delete_document(layer, collection, id):
        raise XflexError(404, f"document {id!r} does not exist in {layer}/{collection}")
    ctx.bus.publish_removed(layer, collection, [id])
    return MessageOut(message="Item deleted")


# -- many documents ----------------------------------------------------------------------------------


@router.get(
    "/{layer:xflex_layer}/{collection}",
    response_model=DocumentsOut,
    responses=_ERRORS,
    operation_id="layer_col_get",
    summary="Query documents from a collection",
)
def find_documents(
    layer: LayerPath,
    collection: CollectionPath,
    request: Request,
    ctx: Context,
    principal: CurrentPrincipal,
    sort: SortQuery = None,
    limit: LimitQuery = None,
    skip: SkipQuery = 0,
    selector: SelectorQuery = None,
) -> DocumentsOut:
    """Return the documents the query string selects."""
    open_collection(ctx, principal, layer, collection, Access.READ)
    return DocumentsOut(
        data=_documents(_find(ctx, layer, collection, selector_from_query(request), _sort(sort), limit, skip))
    )


@router.post(
    "/{layer:xflex_layer}/{collection}",
    response_model=InsertOut,
    responses=_ERRORS,
    operation_id="layer_col_post",
    summary="Insert documents",
)
def insert_documents(
    layer: LayerPath,
    collection: CollectionPath,
    body: Annotated[Any, Body(description="Document or array of documents", json_schema_extra=_DOCUMENTS_SCHEMA)],
    ctx: Context,
    principal: CurrentPrincipal,
) -> InsertOut:
    """Insert one or many documents; each is inserted or refused on its own (a non-object item too)."""
    open_collection(ctx, principal, layer, collection, Access.WRITE)
    items = _body_documents(body)
    errors = [_not_a_document(i, item) for i, item in enumerate(items) if not isinstance(item, dict)]
    positions = [i for i, item in enumerate(items) if isinstance(item, dict)]
    report = ctx.store.insert_documents(layer, collection, [items[i] for i in positions])
    ctx.bus.publish_inserted(ctx.store, layer, collection, report.inserted_ids)
    errors += [_error(positions[e.index], e.id, e.message) for e in report.errors]
    errors.sort(key=lambda e: e.index)
    data = InsertReport(
        ok=len(report.inserted_ids),
        insertedIds=report.inserted_ids,
        err=len(errors),
        errorIds=_error_ids(errors),
        errors=errors,
    )
    _refuse_if_none_written(data, data.ok, errors, "inserted")
    return InsertOut(message="Item(s) inserted", data=data)


@router.patch(
    "/{layer:xflex_layer}/{collection}",
    response_model=UpdateOut,
    responses=_ERRORS,
    operation_id="layer_col_patch",
    summary="Update documents",
)
def patch_documents(
    layer: LayerPath,
    collection: CollectionPath,
    body: Annotated[Any, Body(description="Document(s) with _id and the changes", json_schema_extra=_DOCUMENTS_SCHEMA)],
    ctx: Context,
    principal: CurrentPrincipal,
) -> UpdateOut:
    """Merge each object's fields into the document its _id names; each is updated or refused on its own."""
    open_collection(ctx, principal, layer, collection, Access.WRITE)
    updated: list[str] = []
    errors: list[DocumentError] = []
    for i, doc in enumerate(_body_documents(body)):
        if not isinstance(doc, dict):
            errors.append(_not_a_document(i, doc))
            continue
        doc_id = doc.get("_id")
        if not isinstance(doc_id, str) or not doc_id:
            errors.append(_error(i, None, f"documents[{i}]._id: expected the id of the document to update"))
            continue
        try:
            changes = {k: v for k, v in doc.items() if k != "_id"}
            ctx.bus.publish_patched(
                layer, collection, ctx.store.patch_document(layer, collection, doc_id, changes), changes
            )
            updated.append(doc_id)
        except (StoreError, ModelError) as exc:
            errors.append(_error(i, doc_id, f"documents[{i}]: {exc}"))
    data = UpdateReport(
        ok=len(updated), updatedIds=updated, err=len(errors), errorIds=_error_ids(errors), errors=errors
    )
    missing = all("does not exist" in e.message for e in errors)
    _refuse_if_none_written(data, data.ok, errors, "updated", status=404 if missing else 400)
    return UpdateOut(message="Item(s) updated", data=data)


@router.delete(
    "/{layer:xflex_layer}/{collection}",
    response_model=DeletedOut,
    responses=_ERRORS,
    operation_id="layer_col_delete",
    summary="Delete documents",
)
def delete_documents(
    layer: LayerPath,
    collection: CollectionPath,
    request: Request,
    ctx: Context,
    principal: CurrentPrincipal,
    selector: SelectorQuery = None,
) -> DeletedOut:
    """Delete the documents the query string selects (all of them when it selects nothing in particular)."""
    open_collection(ctx, principal, layer, collection, Access.WRITE)
    chosen = selector_from_query(request)
    try:
        ids = [a.id for a in ctx.store.find_documents(layer, collection, chosen)]
    except SelectorError as exc:
        raise XflexError(400, str(exc)) from None
    # One statement (the store binds the list as one parameter), so the delete stays all or nothing.
    deleted = ctx.store.delete_documents(layer, collection, {"_id": {"$in": ids}}) if ids else 0
    if deleted != len(ids):  # some vanished between the two steps: report what is gone now
        remaining = _stored_ids(ctx, layer, collection, ids)
        ids = [i for i in ids if i not in remaining]
    ctx.bus.publish_removed(layer, collection, ids)
    return DeletedOut(message="Item(s) deleted", data=DeleteReport(ok=len(ids), deletedIds=ids, err=0, errorIds=[]))


def _error_ids(errors: list[DocumentError]) -> list[str]:
    return [e.id for e in errors if e.id]


def _refuse_if_none_written(
    report: BaseModel, written: int, errors: list[DocumentError], verb: str, status: int = 400
) -> None:
    """Answer an error (with the report) when not one document of a write succeeded."""
    if written == 0 and errors:
        raise XflexError(status, f"no document {verb}: {errors[0].message}", data=report.model_dump(by_alias=True))
