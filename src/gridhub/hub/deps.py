"""Typed dependencies shared by every face: the context, the authenticated caller, the rate limit.

A face router is built with ``build_router(ctx: FaceContext)``; routes take what they need as
annotated parameters (``ctx: Context``, ``principal: CurrentPrincipal``) and ask
:mod:`gridhub.hub.auth.policy` whether the caller may do what it asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, APIKeyQuery

from gridhub.hub.auth import AuthenticationError, AuthService, Principal, RateLimiter
from gridhub.hub.bus import LiveBus
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import Store

__all__ = [
    "Context",
    "CurrentPrincipal",
    "FaceContext",
    "RateLimited",
    "Unauthenticated",
    "authenticate_request",
    "current_principal",
    "get_context",
]

logger = logging.getLogger(__name__)


@dataclass
class FaceContext:
    """What every face is built with: the settings, the store, the identity service and the live bus."""

    settings: HubSettings
    store: Store
    auth: AuthService
    bus: LiveBus = field(default_factory=LiveBus)  # create_app starts it; writers publish changes on it
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_limit, self.settings.rate_window)


class Unauthenticated(Exception):
    """No valid credentials (HTTP 401); the message says what is missing or wrong."""


class RateLimited(Exception):
    """The credential made too many requests (HTTP 429); retry_after is in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def get_context(request: Request) -> FaceContext:
    """Return the hub's FaceContext (set by create_app)."""
    ctx: FaceContext = request.app.state.ctx
    return ctx


Context = Annotated[FaceContext, Depends(get_context)]

# X-FLEX 3.3.1.3 and the annex's securitySchemes (userId / authToken), plus the query form.
user_id_header = APIKeyHeader(name="X-User-ID", scheme_name="userId", auto_error=False, description="User ID or App ID")
auth_token_header = APIKeyHeader(
    name="X-Auth-Token", scheme_name="authToken", auto_error=False, description="Authentication token or Key ID"
)
app_id_query = APIKeyQuery(name="appId", scheme_name="appId", auto_error=False, description="App ID (or user ID)")
key_id_query = APIKeyQuery(
    name="keyId", scheme_name="keyId", auto_error=False, description="Key ID (or authentication token)"
)


def authenticate_request(ctx: FaceContext, principal_id: str | None, secret: str | None) -> Principal:
    """Authenticate a credential pair and spend one request of its rate limit."""
    try:
        principal = ctx.auth.authenticate(principal_id, secret)
    except AuthenticationError as exc:
        if principal_id:  # slow down guessing against one identity
            wait = ctx.limiter.hit(f"fail:{principal_id}")
            if wait is not None:
                raise RateLimited(
                    f"too many failed attempts for {principal_id!r}; retry in {wait:.0f} s", wait
                ) from None
        raise Unauthenticated(str(exc)) from None
    wait = ctx.limiter.hit(f"{principal.kind}:{principal.id}")
    if wait is not None:
        raise RateLimited(
            f"rate limit of {ctx.settings.rate_limit} requests per {ctx.settings.rate_window:g} s exceeded for "
            f"{principal.kind} {principal.name!r}; retry in {wait:.1f} s",
            wait,
        )
    return principal


def current_principal(
    ctx: Context,
    user_id: Annotated[str | None, Security(user_id_header)] = None,
    auth_token: Annotated[str | None, Security(auth_token_header)] = None,
    app_id: Annotated[str | None, Security(app_id_query)] = None,
    key_id: Annotated[str | None, Security(key_id_query)] = None,
) -> Principal:
    """Return the caller named by X-User-ID/X-Auth-Token headers or appId/keyId query parameters."""
    if user_id or auth_token:
        return authenticate_request(ctx, user_id, auth_token)
    return authenticate_request(ctx, app_id, key_id)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
