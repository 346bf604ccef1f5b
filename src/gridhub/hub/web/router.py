"""The status page's routes: login, logout, the page, its refreshable fragment and its JSON.

- ``GET /`` (also ``/status``): the status page; without a valid session, a redirect to /login.
- ``GET /status/sites``: the page's site list alone (HTML), fetched by status.js to refresh it.
- ``GET /status.json``: the same data as JSON (401 without a session).
- ``GET /login``, ``POST /login`` (form ``user``, ``password``): log in through the hub's
  AuthService (the same users and rate limit as ``/api/v2/login``); the session token is kept
  in the ``gridhub_session`` cookie (HttpOnly, SameSite=Strict, Secure over HTTPS).
- ``POST /logout``: end the session (the token stops working) and clear the cookie.

CSRF: the cookie is SameSite=Strict, so a cross-site request carries no session; POSTs whose
``Origin`` (or, without one, ``Referer``) is another site, or whose ``Sec-Fetch-Site`` says
cross-site, are refused with 403 (which also stops login CSRF). Every page is sent with a
Content-Security-Policy allowing only the hub's own scripts and styles, and ``no-store``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from gridhub.hub.auth import AuthenticationError, Principal
from gridhub.hub.deps import FaceContext, Unauthenticated, authenticate_request
from gridhub.hub.model import utc_now
from gridhub.hub.web.status import SiteStatus, collect_status, format_age, format_value, status_json

__all__ = ["COOKIE", "REFRESH_SECONDS", "build_router", "install"]

log = logging.getLogger(__name__)

COOKIE = "gridhub_session"
"""The session cookie: ``<userId>.<authToken>`` of a /login session."""
REFRESH_SECONDS = 10
"""How often the page refreshes its site list."""

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + "/"


def _render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    now = values.pop("now", None) or utc_now()
    text = _templates.get_template(template).render(
        root=_root(request),
        now=now,
        refresh=REFRESH_SECONDS,
        age=lambda then: format_age((now - then).total_seconds()),
        value=format_value,
        **values,
    )
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _redirect(request: Request, page: str) -> RedirectResponse:
    return RedirectResponse(_root(request) + page, status_code=303, headers=SECURITY_HEADERS)


def _cross_site(request: Request) -> str | None:
    """Return why a state-changing request looks cross-site, or None when it is same-origin or not a browser's."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "Sec-Fetch-Site: cross-site"
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return None  # not sent by a browser form (curl, httpx): no ambient credentials to abuse
    parts = urlsplit(source)
    if source.strip().lower() == "null" or (parts.netloc or "").lower() != request.headers.get("host", "").lower():
        return f"origin {source!r} is not this hub"
    return None


def session_principal(ctx: FaceContext, request: Request) -> Principal | None:
    """Return the user of the request's session cookie, or None (no cookie, wrong or expired token).

    A session spends one request of the user's rate limit, as an API call does (RateLimited: 429).
    """
    raw = request.cookies.get(COOKIE, "")
    user_id, dot, token = raw.partition(".")
    if not dot or not user_id or not token:
        return None
    try:
        principal = authenticate_request(ctx, user_id, token)
    except Unauthenticated:
        return None
    return principal if principal.kind == "user" else None


def _set_session(request: Request, response: Response, user_id: str, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        f"{user_id}.{token}",
        max_age=max_age,
        path=_root(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=_root(request), httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def build_router(ctx: FaceContext, *, clock: Callable[[], datetime] = utc_now) -> APIRouter:
    """Return the status page's routes over the context's store and identities."""
    router = APIRouter(include_in_schema=False)

    def sites_for(principal: Principal) -> list[SiteStatus]:
        return collect_status(
            ctx.store,
            ctx.auth,
            principal,
            upload_layer=ctx.settings.upload_layer,
            limit=ctx.settings.query_limit,
        )

    def page(request: Request, fragment: bool) -> Response:
        principal = session_principal(ctx, request)
        if principal is None:
            if fragment:
                return Response("log in again", status_code=401, headers=SECURITY_HEADERS)
            return _redirect(request, "login")
        template = "sites.html" if fragment else "status.html"
        return _render(request, template, user=principal, sites=sites_for(principal), now=clock())

    @router.get("/")
    def status_page(request: Request) -> Response:
        """Serve the status page (or send the browser to the login form)."""
        return page(request, fragment=False)

    @router.get("/status")
    def status_alias(request: Request) -> Response:
        """Serve the status page at /status too."""
        return page(request, fragment=False)

    @router.get("/status/sites")
    def status_sites(request: Request) -> Response:
        """Serve the page's site list alone (refreshed by status.js)."""
        return page(request, fragment=True)

    @router.get("/status.json")
    def status_data(request: Request) -> Response:
        """Answer the status page's data as JSON."""
        principal = session_principal(ctx, request)
        if principal is None:
            return JSONResponse(
                {"status": "error", "message": "log in first (POST /login sets the session cookie)"},
                status_code=401,
                headers=SECURITY_HEADERS,
            )
        now = clock()
        user = {"id": principal.id, "name": principal.name, "role": principal.role.value}
        return JSONResponse(status_json(sites_for(principal), now, user), headers=SECURITY_HEADERS)

    @router.get("/login")
    def login_form(request: Request) -> Response:
        """Serve the login form (or the page, when the session is still valid)."""
        if session_principal(ctx, request) is not None:
            return _redirect(request, "")
        return _render(request, "login.html", user=None, message="", name="")

    @router.post("/login")
    def login(
        request: Request, user: Annotated[str, Form(max_length=256)], password: Annotated[str, Form(max_length=1024)]
    ) -> Response:
        """Check the user and password with the AuthService and start a session (cookie)."""
        refused = _cross_site(request)
        if refused is not None:
            log.warning("refused a cross-site login post: %s", refused)
            return _render(request, "login.html", 403, user=None, message=f"refused: {refused}", name="")
        wait = ctx.limiter.hit(f"login:{user}")
        if wait is not None:
            message = f"too many login attempts for this user; retry in {wait:.0f} s"
            response = _render(request, "login.html", 429, user=None, message=message, name=user)
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        try:
            session = ctx.auth.login(user, password)
        except AuthenticationError as exc:
            return _render(request, "login.html", 401, user=None, message=str(exc), name=user)
        redirect = _redirect(request, "")
        max_age = max(1, round((session.expires - clock()).total_seconds()))
        _set_session(request, redirect, session.user_id, session.token, max_age)
        return redirect

    @router.post("/logout")
    def logout(request: Request) -> Response:
        """End the session: its token stops working and the cookie is cleared."""
        refused = _cross_site(request)
        if refused is not None:
            return Response(f"refused: {refused}", status_code=403, headers=SECURITY_HEADERS)
        raw = request.cookies.get(COOKIE, "")
        user_id, dot, token = raw.partition(".")
        if dot and user_id and token:
            # Already ended or expired: clearing the cookie is all that is left.
            with contextlib.suppress(AuthenticationError):
                ctx.auth.logout(user_id, token)
        response = _redirect(request, "login")
        _clear_session(request, response)
        return response

    return router


def install(app: FastAPI, ctx: FaceContext, *, clock: Callable[[], datetime] = utc_now) -> None:
    """Mount the status page's routes at / and its script and style at /static."""
    app.include_router(build_router(ctx, clock=clock))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="web-static")
