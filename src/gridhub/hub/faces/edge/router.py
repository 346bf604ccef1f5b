"""The edge upload face: substations POST their Data Upload API rows (mounted at /edge/v1).

- ``POST /upload`` with ``Authorization: Bearer <site token>`` (or a site client certificate over
  mutual TLS, :mod:`gridhub.hub.tls`) and a JSON body (``Content-Encoding:
  gzip`` allowed): ``{"Batch": "...", "Tables": [{"TableName": IID, "TableRows": [{ID, Timestamp,
  SubTopic, Data}]}]}``. Answers 200 ``{"status": "success", "accepted": {IID: [IDs]},
  "rejected": {IID: [{"ID", "error"}]}}`` only after the batch is committed; 401 bad token,
  400 malformed body (nothing stored), 413 too large, 503 store unavailable.
- ``GET /sites/{name}/stats`` (the site's own token, or an admin or operator credential):
  received, stored, rejected, duplicates and last_upload.

See :mod:`gridhub.hub.faces.edge.ingest` for the dedupe design and docs/upload.md for the protocol.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any, Protocol

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from gridhub.hub.auth import AuthenticationError, Principal, Role
from gridhub.hub.faces.edge.ingest import BatchError, EdgeIngest, UploadBatch, gc_paused, parse_batch
from gridhub.hub.store import Store
from gridhub.hub.tls import certificate_common_name, certificate_fingerprint, peer_certificate

__all__ = ["DEFAULT_LAYER", "DEFAULT_MAX_BYTES", "OPENAPI_SECURITY_SCHEMES", "build_router"]

log = logging.getLogger(__name__)

DEFAULT_LAYER = "edge"
"""Layer holding the substations of sites that name no layer of their own."""

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Largest request body, as sent and after gzip decoding (settings ``upload_max_bytes`` overrides)."""

# -- OpenAPI declarations (the upload route reads its body itself, so FastAPI cannot describe it) --

OPENAPI_SECURITY_SCHEMES: dict[str, Any] = {
    "siteToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The site's upload token (gridhub hub site add), or a site client certificate over mutual TLS",
    }
}
"""Security schemes of this face; create_app adds them to the OpenAPI document's components."""

_ERROR_BODY = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {"status": {"type": "string", "enum": ["error"]}, "message": {"type": "string"}},
}
_ROW = {
    "type": "object",
    "required": ["ID", "Timestamp", "Data"],
    "properties": {
        "ID": {"type": "integer", "format": "int32", "description": "Row ID in the edge Data Storage table"},
        "Timestamp": {"type": "integer", "format": "int64", "description": "When the row was stored (Unix seconds)"},
        "SubTopic": {"type": "string", "maxLength": 512, "default": "/", "description": "Sub-topic it came from"},
        "Data": {"description": "The stored LV-CAP JSON object (a bad Data rejects only its row)"},
    },
}
_BATCH = {
    "type": "object",
    "required": ["Tables"],
    "properties": {
        "Batch": {"type": "string", "maxLength": 200, "description": "The uploader's batch name"},
        "Tables": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["TableName", "TableRows"],
                "properties": {
                    "TableName": {"type": "string", "description": "Application Instance ID (IID) of the table"},
                    "TableRows": {"type": "array", "items": _ROW},
                },
            },
        },
    },
}


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_BODY}}}


_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An LV-CAP Data Upload API batch; send it with Content-Encoding: gzip to compress it",
        "content": {"application/json": {"schema": _BATCH}},
    },
    "parameters": [
        {
            "in": "header",
            "name": "Content-Encoding",
            "required": False,
            "schema": {"type": "string", "enum": ["gzip", "x-gzip", "identity"]},
        }
    ],
    "security": [{"siteToken": []}],
    "responses": {
        "200": {
            "description": "The batch is committed: accepted row IDs and rejected rows per table (IID)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "string", "enum": ["success"]},
                            "accepted": {
                                "type": "object",
                                "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                            },
                            "rejected": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {"ID": {"type": "integer"}, "error": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    }
                }
            },
        },
        "400": _error_doc("Malformed body (nothing stored); the message says what and where"),
        "401": _error_doc("No valid site token or client certificate"),
        "413": _error_doc("Body too large, as sent or after gzip decoding"),
        "503": _error_doc("The hub store is unavailable; retry later"),
    },
}
_STATS_OPENAPI: dict[str, Any] = {
    "security": [{"siteToken": []}, {"userId": [], "authToken": []}, {"appId": [], "keyId": []}],
    "responses": {
        "200": {
            "description": "The site's upload counters (rows)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "site": {"type": "string"},
                            "received": {"type": "integer"},
                            "stored": {"type": "integer"},
                            "rejected": {"type": "integer"},
                            "duplicates": {"type": "integer"},
                            "last_upload": {"type": "string", "nullable": True},
                        },
                    }
                }
            },
        },
        "401": _error_doc("No valid credentials"),
        "403": _error_doc("Another site's token, or a caller that is not an admin or operator"),
        "404": _error_doc("No such site"),
        "503": _error_doc("The hub store is unavailable; retry later"),
    },
}


class SiteIdentity(Protocol):
    """What the face needs of an authenticated site (``gridhub.hub.auth`` Site)."""

    @property
    def name(self) -> str: ...


class SiteTokens(Protocol):
    """What the face needs of the AuthService."""

    def verify_site_token(self, token: str) -> SiteIdentity | None: ...

    def verify_site_certificate(self, common_name: str | None, fingerprint: str) -> SiteIdentity: ...

    def get_site(self, name: str) -> SiteIdentity | None: ...

    def authenticate(self, principal_id: str | None, secret: str | None) -> Principal: ...


class EdgeFaceContext(Protocol):
    """What the face needs of ``gridhub.hub.deps.FaceContext``."""

    @property
    def settings(self) -> Any: ...

    @property
    def store(self) -> Store: ...

    @property
    def auth(self) -> SiteTokens: ...


class _TooLarge(Exception):
    pass


class _StoreDown(Exception):
    pass


class _Refused(Exception):
    """The site's client certificate (or its pairing with the token) is refused; the message says why."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status, headers=headers)


def _unauthorised(message: str) -> JSONResponse:
    return _error(401, message, {"WWW-Authenticate": 'Bearer realm="gridhub edge upload"'})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, encoding: str, limit: int) -> Any:
    """Return the JSON value of a body, gunzipping it first when asked (BatchError, _TooLarge)."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            text = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise BatchError(f"body: Content-Encoding gzip but the body is not valid gzip ({exc})") from None
        if len(text) > limit or inflater.unconsumed_tail:
            raise _TooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        if not inflater.eof:
            raise BatchError("body: gzip stream is truncated")
        raw = text
    elif encoding not in ("", "identity"):
        raise BatchError(f"Content-Encoding {encoding!r} is not supported (use gzip or none)")
    try:
        # orjson parses a 15,000-row body in about half the time; whatever it refuses (NaN, UTF-16,
        # lone surrogates, integers beyond 64 bits...) goes through json, which decides as before.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BatchError("body: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise BatchError(f"body: not valid JSON ({exc})"[:300]) from None


def _read_batch(raw: bytes, encoding: str, limit: int) -> UploadBatch:
    """Decode and check an upload body (BatchError, _TooLarge); run off the event loop, GC paused."""
    with gc_paused():
        return parse_batch(_decode(raw, encoding, limit))


def build_router(ctx: EdgeFaceContext, ingest: EdgeIngest | None = None) -> APIRouter:
    """Return the upload face's routes over the context's store and site tokens (and a shared EdgeIngest)."""
    ingest = ingest if ingest is not None else EdgeIngest(ctx.store)
    limit = int(getattr(ctx.settings, "upload_max_bytes", DEFAULT_MAX_BYTES))
    default_layer = str(getattr(ctx.settings, "upload_layer", DEFAULT_LAYER))
    router = APIRouter(tags=["edge upload"])

    def layer_of(site: SiteIdentity) -> str:
        layer = getattr(site, "layer", None)
        return layer if isinstance(layer, str) and layer else default_layer

    async def authenticate(request: Request) -> SiteIdentity | None:
        """Return the site of the request's token and/or client certificate (None: neither, or a bad token only)."""
        token = _bearer(request)
        der = peer_certificate(request.scope)  # only from the TLS connection, never from a header
        if token is None and der is None:
            return None
        try:
            by_cert = None
            if der is not None:
                name, fingerprint = certificate_common_name(der), certificate_fingerprint(der)
                by_cert = await run_in_threadpool(ctx.auth.verify_site_certificate, name, fingerprint)
            by_token = None if token is None else await run_in_threadpool(ctx.auth.verify_site_token, token)
        except AuthenticationError as exc:
            raise _Refused(str(exc)) from None
        except Exception as exc:  # the identities live in the store too
            log.exception("site token could not be checked")
            raise _StoreDown(type(exc).__name__) from exc
        if by_cert is None or token is None:
            return by_token if by_cert is None else by_cert
        if by_token is None:
            raise _Refused(f"the bearer token is not a valid site token (client certificate of site {by_cert.name!r})")
        if by_token.name != by_cert.name:
            raise _Refused(f"the client certificate is site {by_cert.name!r} but the token is site {by_token.name!r}")
        return by_cert

    def store_down(exc: _StoreDown) -> JSONResponse:
        return _error(503, f"the hub store is unavailable ({exc}); retry later")

    @router.post("/upload", summary="Upload a batch of LV-CAP Data Upload API rows", openapi_extra=_UPLOAD_OPENAPI)
    async def upload(request: Request) -> JSONResponse:
        try:
            site = await authenticate(request)
        except _StoreDown as exc:
            return store_down(exc)
        except _Refused as exc:
            return _unauthorised(str(exc))
        if site is None:
            return _unauthorised(
                "a valid site token (Authorization: Bearer <token>) or site client certificate is required"
            )
        try:
            raw = await _read_body(request, limit)
            # ~0.1 s of CPU for a 15,000-row batch: in a worker thread, so other requests are served meanwhile.
            batch = await run_in_threadpool(_read_batch, raw, request.headers.get("content-encoding", ""), limit)
        except _TooLarge as exc:
            return _error(413, f"{exc}; send fewer rows per batch")
        except BatchError as exc:
            log.warning("site %s: upload refused: %s", site.name, exc)
            return _error(400, str(exc))
        try:
            result = await run_in_threadpool(ingest.ingest, site.name, layer_of(site), batch)
        except Exception as exc:
            log.exception("site %s: batch %r could not be stored", site.name, batch.batch)
            return store_down(_StoreDown(type(exc).__name__))
        return JSONResponse(result.to_json())

    @router.get("/sites/{name}/stats", summary="Upload counters of one site", openapi_extra=_STATS_OPENAPI)
    async def stats(name: str, request: Request) -> JSONResponse:
        """Answer the site's own token, or an admin or operator (X-User-ID and X-Auth-Token, or appId/keyId)."""
        try:
            site = await authenticate(request)
            if site is None and _bearer(request) is None:
                user = request.headers.get("x-user-id") or request.query_params.get("appId")
                secret = request.headers.get("x-auth-token") or request.query_params.get("keyId")
                try:
                    principal = await run_in_threadpool(ctx.auth.authenticate, user, secret)
                except AuthenticationError as exc:
                    return _unauthorised(f"{exc} (or the site's own token: Authorization: Bearer <token>)")
                if principal.role not in (Role.ADMIN, Role.OPERATOR):
                    return _error(403, f"{principal.name} ({principal.role.value}) may not read site counters")
                site = await run_in_threadpool(ctx.auth.get_site, name)
                if site is None:
                    return _error(404, f"no site named {name!r}")
        except _StoreDown as exc:
            return store_down(exc)
        except _Refused as exc:
            return _unauthorised(str(exc))
        except Exception as exc:
            log.exception("site %s: the caller could not be checked", name)
            return store_down(_StoreDown(type(exc).__name__))
        if site is None:
            return _unauthorised("a valid site token is required: Authorization: Bearer <token>")
        if site.name != name:
            return _error(403, f"this token belongs to site {site.name!r}, not {name!r}")
        try:
            counters = await run_in_threadpool(ingest.counters, name, layer_of(site))
        except Exception as exc:
            log.exception("site %s: counters could not be read", name)
            return store_down(_StoreDown(type(exc).__name__))
        return JSONResponse(counters.to_json())

    return router
