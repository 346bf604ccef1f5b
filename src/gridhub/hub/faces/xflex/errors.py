"""X-FLEX error envelope: every failure under /api/v2 answers ``{"status": "error", "message": ...}``.

The HTTP code says what kind of failure it is: 400 bad input (validation, selector, document),
401 missing/wrong/expired credentials, 403 refused by the policy, 404 unknown route, layer,
collection, document or file, 405 method not allowed, 413 too large, 429 rate limit, 501 not
implemented, 502/504 an upstream (SMTP, NATS) failed or timed out, 503 not configured or the
store is unavailable. Paths outside /api/v2 keep FastAPI's own error bodies except for the
hub-wide identity errors (401, 403, 429), which use the envelope everywhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from gridhub.hub.auth import PolicyError
from gridhub.hub.deps import RateLimited, Unauthenticated
from gridhub.hub.model import ModelError
from gridhub.hub.store import NotFoundError, SelectorError, StoreError

__all__ = ["PREFIX", "XflexError", "envelope", "install_error_handlers"]

logger = logging.getLogger(__name__)

PREFIX = "/api/v2"


class XflexError(Exception):
    """A request failed with an HTTP status and a message (and optionally a data member)."""

    def __init__(
        self, status: int, message: str, *, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data
        self.headers = dict(headers or {})


def envelope(status: int, message: str, *, data: Any = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Return the X-FLEX error response."""
    body: dict[str, Any] = {"status": "error", "message": message}
    if data is not None:
        body["data"] = data
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _ours(request: Request) -> bool:
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


_UNION_MEMBER = re.compile(r"^(dict|list)\[.*\]$")  # pydantic names each member of a union it tried


def _json_content_type(request: Request) -> bool:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media == "" or media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _validation_message(request: Request, exc: RequestValidationError) -> str:
    errors = exc.errors()
    body_errors = [e for e in errors if e.get("loc", ("",))[0] == "body"]
    if body_errors and not _json_content_type(request):
        sent = request.headers.get("content-type", "")
        return f"body: send Content-Type: application/json (got {sent!r})"
    parts = []
    union_failed = False
    for error in errors:
        loc_parts = tuple(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"body: not valid JSON ({reason} at character {loc_parts[-1] if loc_parts else '?'})")
            continue
        if loc_parts == ("body",) and error.get("type") == "missing":  # no body, or JSON null
            parts.append("body: required; send a JSON document with Content-Type: application/json")
            continue
        if len(loc_parts) == 2 and loc_parts[0] == "body" and _UNION_MEMBER.match(str(loc_parts[1])):
            if not union_failed:  # the body is neither an object nor an array: say so once
                union_failed = True
                parts.append("body: expected a JSON object or an array of objects")
            continue
        loc = ".".join(str(p) for p in loc_parts if p != "body" or len(loc_parts) == 1)
        parts.append(f"{loc or 'request'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Return every method some route serves at the request's path (Starlette names only its first match's).

    Each method is tried against the application's routes (``BaseRoute.matches``, on a fresh scope):
    included routers are matched as FastAPI itself matches them.
    """
    allowed = []
    for method in _METHODS:
        probe = {
            "type": "http",
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "method": method,
            "headers": [],
            "query_string": b"",
        }
        for route in request.app.router.routes:
            if isinstance(route, BaseRoute) and route.matches(probe)[0] == Match.FULL:
                allowed.append(method)
                break
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope handlers on the hub application."""

    async def on_xflex(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, XflexError)
        return envelope(exc.status, exc.message, data=exc.data, headers=exc.headers)

    async def on_unauthenticated(request: Request, exc: Exception) -> Response:
        return envelope(401, str(exc))

    async def on_rate_limited(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimited)
        return envelope(429, str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after)))})

    async def on_policy(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PolicyError)
        return envelope(exc.status, str(exc))

    def _scoped(status: int) -> Any:
        async def handler(request: Request, exc: Exception) -> Response:
            if _ours(request):
                return envelope(status, str(exc))
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handler

    async def on_store_down(request: Request, exc: Exception) -> Response:
        logger.error("store unavailable during %s %s: %s", request.method, request.url.path, exc)
        message = "the hub store is unavailable; try again later"
        return envelope(503, message) if _ours(request) else JSONResponse({"detail": message}, status_code=503)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not _ours(request):
            return await http_exception_handler(request, exc)
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}" + (
                f" (allowed: {allowed})" if allowed else ""
            )
            return envelope(405, message, headers={**(exc.headers or {}), "Allow": allowed})
        else:
            message = str(exc.detail)
        return envelope(exc.status_code, message, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not _ours(request):
            return await request_validation_exception_handler(request, exc)
        return envelope(400, _validation_message(request, exc))

    async def on_crash(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return envelope(500, f"internal error ({type(exc).__name__}); the hub log has the details")

    app.add_exception_handler(XflexError, on_xflex)
    app.add_exception_handler(Unauthenticated, on_unauthenticated)
    app.add_exception_handler(RateLimited, on_rate_limited)
    app.add_exception_handler(PolicyError, on_policy)
    app.add_exception_handler(NotFoundError, _scoped(404))
    app.add_exception_handler(SelectorError, _scoped(400))
    app.add_exception_handler(ModelError, _scoped(400))
    app.add_exception_handler(StoreError, _scoped(400))
    app.add_exception_handler(sqlalchemy.exc.OperationalError, on_store_down)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_crash)
