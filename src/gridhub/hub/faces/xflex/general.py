"""General routes: /health (any method), /login, token renewal, /logout and /me."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gridhub.hub.auth import AuthenticationError, IdentityError, Principal
from gridhub.hub.deps import Context, CurrentPrincipal, RateLimited, authenticate_request
from gridhub.hub.faces.xflex.errors import XflexError
from gridhub.hub.faces.xflex.schemas import ErrorOut, HealthOut, LoginData, LoginIn, LoginOut, MessageOut
from gridhub.hub.model import format_time

__all__ = ["API_VERSION", "router"]

API_VERSION = "v2.0"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

router = APIRouter(tags=["general"])
_UNAUTHORIZED: dict[int | str, dict[str, object]] = {401: {"model": ErrorOut, "description": "Unauthorized"}}


@router.get("/health", response_model=HealthOut, operation_id="health", summary="Service availability")
def health() -> HealthOut:
    """Answer that the service is up (any method)."""
    return HealthOut(data=API_VERSION)


router.add_api_route(
    "/health", health, methods=[m for m in ALL_METHODS if m != "GET"], response_model=HealthOut, include_in_schema=False
)


@router.post("/login", response_model=LoginOut, responses=_UNAUTHORIZED, operation_id="login", summary="Authentication")
def login(body: LoginIn, ctx: Context) -> LoginOut:
    """Log a user in with its ID, name or email and password; return userId and authToken."""
    wait = ctx.limiter.hit(f"login:{body.user}")
    if wait is not None:
        raise RateLimited(f"too many login attempts for {body.user!r}; retry in {wait:.0f} s", wait)
    try:
        session = ctx.auth.login(body.user, body.password)
    except AuthenticationError as exc:
        raise XflexError(401, str(exc)) from None
    return LoginOut(
        data=LoginData(authToken=session.token, userId=session.user_id, tokenExpires=format_time(session.expires))
    )


@router.post(
    "/login/renew",
    response_model=LoginOut,
    responses=_UNAUTHORIZED,
    operation_id="renewToken",
    summary="Renew the authentication token",
)
def renew(request: Request, ctx: Context) -> LoginOut:
    """Exchange a valid session token for a new one with a fresh expiry (the old one stops working)."""
    user_id, token = _credentials(request)
    authenticate_request(ctx, user_id, token)
    try:
        session = ctx.auth.renew(user_id or "", token or "")
    except AuthenticationError as exc:
        raise XflexError(401, str(exc)) from None
    except IdentityError as exc:
        raise XflexError(400, str(exc)) from None
    return LoginOut(
        data=LoginData(authToken=session.token, userId=session.user_id, tokenExpires=format_time(session.expires))
    )


@router.post("/logout", response_model=MessageOut, responses=_UNAUTHORIZED, operation_id="logout", summary="Log out")
def logout(request: Request, ctx: Context) -> MessageOut:
    """End the session: its token stops working."""
    user_id, token = _credentials(request)
    principal = authenticate_request(ctx, user_id, token)
    if principal.kind == "user":
        ctx.auth.logout(principal.id, token or "")
    return MessageOut(message="You've been logged out!")


@router.get("/me", responses=_UNAUTHORIZED, operation_id="me", summary="The logged user's ID and profile")
def me(principal: CurrentPrincipal) -> dict[str, object]:
    """Return who the credentials belong to, its role and grants."""
    return {"status": "success", "data": _profile(principal)}


def _profile(principal: Principal) -> dict[str, object]:
    return {
        "_id": principal.id,
        "username": principal.name,
        "type": principal.kind,
        "role": principal.role.value,
        "grants": [str(g) for g in principal.grants],
    }


def _credentials(request: Request) -> tuple[str | None, str | None]:
    headers, query = request.headers, request.query_params
    if headers.get("X-User-ID") or headers.get("X-Auth-Token"):
        return headers.get("X-User-ID"), headers.get("X-Auth-Token")
    return query.get("appId"), query.get("keyId")
