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
from collections.abc import Mapping
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"body: not valid JSON ({reason} at character {error.get('loc', ('', '?'))[-1]})")
            continue
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body" or len(error.get("loc", ())) == 1)
        parts.append(f"{loc or 'request'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


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
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}" + (
                f" (allowed: {allowed})" if allowed else ""
            )
        else:
            message = str(exc.detail)
        return envelope(exc.status_code, message, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not _ours(request):
            return await request_validation_exception_handler(request, exc)
        return envelope(400, _validation_message(exc))

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
