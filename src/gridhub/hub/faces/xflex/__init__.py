"""The X-FLEX REST API face (/api/v2): X-FLEX D6.3 section 3.3.1 and its Annex 1 OpenAPI.

``build_router(ctx)`` returns every route; create_app mounts it at /api/v2 and installs the
error envelope (:func:`.errors.install_error_handlers`). Fixed-prefix routes are included
before the generic /:layer/:col ones so that /config, /range, /near, /bulk, /resources,
/notify and /gateway are never read as layer names.
"""

from __future__ import annotations

from fastapi import APIRouter

from gridhub.hub.deps import FaceContext
from gridhub.hub.faces.xflex import collections, config, general, notify, resources
from gridhub.hub.faces.xflex.errors import PREFIX, install_error_handlers
from gridhub.hub.faces.xflex.gateway import build_gateway_router
from gridhub.hub.faces.xflex.openapi import finish_openapi

__all__ = ["PREFIX", "build_router", "finish_openapi", "install_error_handlers"]


def build_router(ctx: FaceContext) -> APIRouter:
    """Return the X-FLEX API router (mount it at /api/v2)."""
    router = APIRouter()
    router.include_router(general.router)
    router.include_router(config.router)
    router.include_router(resources.router)
    router.include_router(notify.router)
    router.include_router(build_gateway_router(ctx))
    router.include_router(collections.router)
    return router
