"""/gateway (X-FLEX 3.3.1.2.22): call a platform microservice by subject.

Without NATS the hub's own services (:mod:`.services`) answer in-process. With ``nats.url`` set
the call goes over NATS request/reply to ``<domain>.<subject>`` (section 3.1.1), so any service
on that NATS answers; the hub then also serves its own services on those subjects (queue group
``gridhub``, shared by hub replicas), keeping the connection up itself: when it closes, the hub
reconnects with back-off (1 s doubling to 30 s) and subscribes again; calls meanwhile answer 503.
Replies are JSON: ``{"status": "success", "data": ...}`` or ``{"status": "error", "code": 4xx/5xx,
"message": ...}``; a reply of another shape is passed on
as the data. The caller's right to call is checked first: ``metrics.*`` needs read access to the
named collection, any other subject an admin or operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
from fastapi import APIRouter, FastAPI
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from starlette.concurrency import run_in_threadpool

from gridhub.hub.auth import Access, Principal
from gridhub.hub.auth.policy import require_access, require_call_service
from gridhub.hub.deps import CurrentPrincipal, FaceContext
from gridhub.hub.faces.xflex.errors import XflexError
from gridhub.hub.faces.xflex.schemas import ErrorOut, GatewayIn, GatewayOut
from gridhub.hub.faces.xflex.services import HubServices, ServiceError, resolve_collection

__all__ = ["Gateway", "build_gateway_router"]

logger = logging.getLogger(__name__)

SUBJECT = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$")
QUEUE_GROUP = "gridhub"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 429, 502, 503, 504)
}


def _reply(data: Any = None, error: ServiceError | None = None) -> bytes:
    if error is not None:
        return json.dumps({"status": "error", "code": error.status, "message": error.message}).encode()
    return json.dumps({"status": "success", "data": data}).encode()


class Gateway:
    """Routes gateway calls to the hub's services, in-process or over NATS."""

    def __init__(self, ctx: FaceContext) -> None:
        self.ctx = ctx
        self.services = HubServices(ctx.store, ctx.settings)
        self.nats: NatsClient | None = None
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def domain(self) -> str:
        return self.ctx.settings.nats_domain

    async def start(self) -> None:
        """Start keeping a NATS connection (when configured) that serves the hub's services."""
        if self.ctx.settings.nats_url:
            self._task = asyncio.create_task(self._supervise(), name="gridhub-gateway-nats")

    async def _supervise(self) -> None:
        """Connect, serve, and reconnect with back-off (1 s doubling to 30 s) whenever the connection closes."""
        delay = 1.0
        while True:
            if await self._connect_once() is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            await self._closed.wait()
            self._closed.clear()
            self._connected.clear()
            self.nats = None
            logger.warning("NATS connection to %s closed; reconnecting", self.ctx.settings.nats_url)

    async def _connect_once(self) -> NatsClient | None:
        url = self.ctx.settings.nats_url

        async def on_closed() -> None:
            self._closed.set()

        async def on_error(exc: Exception) -> None:
            logger.debug("NATS %s: %s", url, exc)

        try:
            client = await nats.connect(
                servers=[url],
                name="gridhub-hub",
                connect_timeout=2,
                allow_reconnect=False,  # the supervisor reconnects, with back-off, and re-subscribes
                closed_cb=on_closed,
                error_cb=on_error,
            )
            for subject in self.services.handlers:
                await client.subscribe(f"{self.domain}.{subject}", queue=QUEUE_GROUP, cb=self._serve)
            await client.flush()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            logger.warning("NATS at %s is not reachable: %s (retrying)", url, exc)
            return None
        self.nats = client
        self._connected.set()
        logger.info("gateway connected to NATS at %s (domain %s)", url, self.domain)
        return client

    async def stop(self) -> None:
        """Stop reconnecting and close the NATS connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.nats is not None:
            try:
                await self.nats.drain()
            except (OSError, nats.errors.Error) as exc:
                logger.debug("closing NATS: %s", exc)
            self.nats = None
            self._connected.clear()

    async def _serve(self, msg: Msg) -> None:
        subject = msg.subject.removeprefix(f"{self.domain}.")
        try:
            params = json.loads(msg.data or b"{}")
            if not isinstance(params, dict):
                raise ServiceError(400, f"params: expected a JSON object, got {params!r}")
            data = await run_in_threadpool(self.services.call, subject, params)
            reply = _reply(data)
        except ValueError as exc:
            reply = _reply(error=ServiceError(400, f"params: not valid JSON ({exc})"))
        except ServiceError as exc:
            reply = _reply(error=exc)
        except Exception as exc:
            logger.exception("service %s failed", subject)
            reply = _reply(error=ServiceError(500, f"service {subject} failed ({type(exc).__name__})"))
        if msg.reply:
            await msg.respond(reply)

    def authorise(self, principal: Principal, subject: str, params: Mapping[str, Any]) -> None:
        """Raise PolicyError (or XflexError) unless principal may make this call."""
        if subject.split(".")[0] == "metrics":
            try:
                layer, collection = resolve_collection(self.ctx.store, params.get("layer"), params.get("collection"))
            except ServiceError as exc:
                raise XflexError(exc.status, exc.message) from None
            require_access(principal, layer, collection, Access.READ)
        else:
            require_call_service(principal, subject)

    async def call(self, principal: Principal, body: GatewayIn) -> Any:
        """Forward one call; return the service's data (None for publish)."""
        if not SUBJECT.match(body.subject):
            raise XflexError(
                400,
                f"subject {body.subject!r}: expected <service>.<action>[.<details>] without the "
                "domain (letters, digits, _ or -; no wildcards)",
            )
        await run_in_threadpool(self.authorise, principal, body.subject, body.params)
        if not self.ctx.settings.nats_url:
            try:
                data = await run_in_threadpool(self.services.call, body.subject, body.params)
            except ServiceError as exc:
                raise XflexError(exc.status, exc.message) from None
            return None if body.method == "publish" else data
        return await self._over_nats(body)

    async def _over_nats(self, body: GatewayIn) -> Any:
        if not self._connected.is_set():  # just started, or reconnecting: give it a moment
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._connected.wait(), min(self.ctx.settings.nats_timeout, 5.0))
        client = self.nats
        if client is None or not client.is_connected:
            raise XflexError(503, f"NATS at {self.ctx.settings.nats_url} is not reachable; try again later")
        subject = f"{self.domain}.{body.subject}"
        payload = json.dumps(body.params).encode()
        if body.method == "publish":
            await client.publish(subject, payload)
            await client.flush()
            return None
        try:
            msg = await client.request(subject, payload, timeout=self.ctx.settings.nats_timeout)
        except nats.errors.NoRespondersError:
            raise XflexError(502, f"no service answers {subject!r} on NATS") from None
        except nats.errors.TimeoutError:
            raise XflexError(504, f"no answer on {subject!r} within {self.ctx.settings.nats_timeout:g} s") from None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            return msg.data.decode("utf-8", "replace")
        if isinstance(reply, dict) and reply.get("status") == "error":
            code = reply.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else 502
            raise XflexError(status, str(reply.get("message", f"service {body.subject} failed")))
        if isinstance(reply, dict) and reply.get("status") == "success":
            return reply.get("data")
        return reply


def build_gateway_router(ctx: FaceContext) -> APIRouter:
    """Return the /gateway router, whose lifespan connects and closes NATS."""
    gateway = Gateway(ctx)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    router = APIRouter(tags=["utils"], lifespan=lifespan)

    @router.post(
        "/gateway",
        response_model=GatewayOut,
        responses=_ERRORS,
        operation_id="gateway",
        summary="Access platform microservices (NATS)",
    )
    async def call_gateway(body: GatewayIn, principal: CurrentPrincipal) -> GatewayOut:
        """Forward {subject, method, params} to the service answering the subject."""
        return GatewayOut(data=await gateway.call(principal, body))

    return router
