"""Identity and access of the hub: users, application credentials, tokens, sites, the access policy."""

from __future__ import annotations

from gridhub.hub.auth.policy import Access, Grant, PolicyError, Principal, Role
from gridhub.hub.auth.ratelimit import RateLimiter
from gridhub.hub.auth.service import (
    SYSTEM_LAYER,
    AuthenticationError,
    AuthService,
    IdentityError,
    Session,
    Site,
)

__all__ = [
    "SYSTEM_LAYER",
    "Access",
    "AuthService",
    "AuthenticationError",
    "Grant",
    "IdentityError",
    "PolicyError",
    "Principal",
    "RateLimiter",
    "Role",
    "Session",
    "Site",
]
