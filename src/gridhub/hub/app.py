"""The hub's ASGI application: the store, the identity service and every face, in one FastAPI app.

``create_app(settings)`` opens the store (migrating it), makes sure the identities layer
exists, mounts the X-FLEX API at /api/v2, the edge upload face at /edge/v1, the live updates
WebSocket at /live/v1 (fed by the hub bus, :mod:`gridhub.hub.bus`, which the lifespan starts and
stops) and the status page at / (gridhub.hub.web), and serves the OpenAPI document at /openapi.json (Swagger UI at /docs
and at the API root /api/v2, as X-FLEX serves it at the REST server's root). The store is
closed when the application shuts down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from gridhub.hub.auth import AuthService
from gridhub.hub.bus import LiveBus
from gridhub.hub.deps import FaceContext
from gridhub.hub.faces import edge, live, xflex
from gridhub.hub.faces.edge.ingest import EdgeIngest
from gridhub.hub.faces.edge.router import OPENAPI_SECURITY_SCHEMES as EDGE_SECURITY_SCHEMES
from gridhub.hub.ingest.mqtt import MqttUploadBridge
from gridhub.hub.model import utc_now
from gridhub.hub.settings import HubSettings
from gridhub.hub.store import open_store
from gridhub.hub.store.maintenance import Compactor, RetentionRunner
from gridhub.hub.web import install as install_web

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "The gridhub data hub. /api/v2 is the X-FLEX Platform REST API (D6.3 section 3.3.1, Annex 1): "
    "authenticate with the X-User-ID and X-Auth-Token headers (from /login, or an application's appId "
    "and keyId), or with the appId and keyId query parameters. Errors answer {status: 'error', message}. "
    "/edge/v1 is the substations' upload face; ws://.../live/v1 pushes collection changes and new samples "
    "(docs/live.md)."
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
        bus = LiveBus(
            nats_url=settings.nats_url,
            domain=settings.nats_domain,
            queue_size=settings.live_queue_size,
            timeout=settings.nats_timeout,
        )
        ctx = FaceContext(settings=settings, store=store, auth=auth, bus=bus)
        uploads = EdgeIngest(store, bus)  # one per process: the HTTP face and the MQTT bridge share its per-site locks
        bridge = MqttUploadBridge(settings, auth, uploads) if settings.mqtt_url else None
    except BaseException:
        store.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("hub serving %s over store %s", settings.url, store.url)
        await bus.start()
        if bridge is not None:
            bridge.start()
        compactor = Compactor(store, settings.compact_interval)  # Store.compact() in the background
        app.state.compactor = compactor
        compactor.start()
        retention = RetentionRunner(store, settings.retention_interval)  # layers' sample retention
        app.state.retention = retention
        retention.start()
        try:
            yield
        finally:
            retention.stop()
            compactor.stop()
            if bridge is not None:
                bridge.stop()
            await bus.stop()
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
    app.include_router(live.build_router(ctx))  # the WebSocket at /live/v1
    install_web(app, ctx, clock=clock)  # the status page at /, login, logout, /static

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """Return the OpenAPI document: FastAPI's, with X-FLEX security and errors as they really are."""
        if app.openapi_schema is None:
            document = generate_openapi()  # FastAPI caches it in app.openapi_schema; finish it in place
            schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes.update(EDGE_SECURITY_SCHEMES)
            xflex.finish_openapi(document)
        return app.openapi_schema or generate_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(xflex.PREFIX, include_in_schema=False)
    def api_root() -> HTMLResponse:
        """Serve the API's Swagger UI at its root URL."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="gridhub X-FLEX API")

    return app
