"""The hub's ASGI application: the store, the identity service and every face, in one FastAPI app.

``create_app(settings)`` opens the store (migrating it), makes sure the identities layer
exists, mounts the X-FLEX API at /api/v2, the edge upload face at /edge/v1 and the status page
at / (gridhub.hub.web), and serves the OpenAPI document at /openapi.json (Swagger UI at /docs
and at the API root /api/v2, as X-FLEX serves it at the REST server's root). The store is
closed when the application shuts down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from gridhub.hub.auth import AuthService
from gridhub.hub.deps import FaceContext
from gridhub.hub.faces import edge, xflex
from gridhub.hub.faces.edge.ingest import EdgeIngest
from gridhub.hub.ingest.mqtt import MqttUploadBridge
from gridhub.hub.model import utc_now
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import open_store
from gridhub.hub.store.maintenance import Compactor
from gridhub.hub.web import install as install_web

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "The gridhub data hub. /api/v2 is the X-FLEX Platform REST API (D6.3 section 3.3.1, Annex 1): "
    "authenticate with the X-User-ID and X-Auth-Token headers (from /login, or an application's appId "
    "and keyId), or with the appId and keyId query parameters. Errors answer {status: 'error', message}. "
    "/edge/v1 is the substations' upload face."
)


def create_app(settings: HubSettings, *, clock: Callable[[], datetime] = utc_now) -> FastAPI:
    """Build the hub application over the store the settings name."""
    store = open_store(settings.store)
    try:
        auth = AuthService(
            store,
            token_ttl=settings.token_ttl,
            clock=clock,
            password_time_cost=settings.password_time_cost,
            password_memory_kib=settings.password_memory_kib,
        )
        ctx = FaceContext(settings=settings, store=store, auth=auth)
        uploads = EdgeIngest(store)  # one per process: the HTTP face and the MQTT bridge share its per-site locks
        bridge = MqttUploadBridge(settings, auth, uploads) if settings.mqtt_url else None
    except BaseException:
        store.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("hub serving %s over store %s", settings.url, store.url)
        if bridge is not None:
            bridge.start()
        compactor = Compactor(store, settings.compact_interval)  # Store.compact() in the background
        app.state.compactor = compactor
        compactor.start()
        try:
            yield
        finally:
            compactor.stop()
            if bridge is not None:
                bridge.stop()
            store.close()

    app = FastAPI(
        title="gridhub hub API",
        description=DESCRIPTION,
        version=xflex.general.API_VERSION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.mqtt_bridge = bridge
    xflex.install_error_handlers(app)
    app.include_router(xflex.build_router(ctx), prefix=xflex.PREFIX)
    app.include_router(edge.build_router(ctx, uploads), prefix="/edge/v1")
    install_web(app, ctx, clock=clock)  # the status page at /, login, logout, /static

    @app.get(xflex.PREFIX, include_in_schema=False)
    def api_root() -> HTMLResponse:
        """Serve the API's Swagger UI at its root URL."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="gridhub X-FLEX API")

    return app
