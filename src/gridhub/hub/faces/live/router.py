"""The live WebSocket endpoint (``/live/v1``): subscriptions to collections and series, pushed as they change.

One connection = one authenticated caller = one bounded bus queue. The flow:

1. Authentication as the REST API: ``X-User-ID``/``X-Auth-Token`` headers or ``appId``/``keyId``
   query parameters on the upgrade request, else a first ``auth`` message within
   :data:`AUTH_TIMEOUT` seconds (browsers cannot set headers on a WebSocket). The connect spends
   one request of the credential's rate limit. Failure: an ``error`` message (code 401, or 429
   when rate limited), then close 1008 (policy violation; 1013 "try again later" when rate limited).
2. ``{"type": "connected", ...}``; then subscribe/unsubscribe messages, each spending one request of
   the credential's rate limit as a REST request does, each answered ``ok`` or ``error`` (with
   ``code`` 400/403/404/429 and a message); events carry the subscription id as ``sub``. Read access
   is checked before existence, as by the REST API (PLF_008). A message over MAX_MESSAGE_CHARS gets
   an error (400) and close 1009; ``gridhub hub run`` has uvicorn refuse larger frames unread.
3. Every ``live.auth_check_interval`` seconds the credential is checked again: an expired or
   revoked session closes the socket with 1008 and the reason; a subscription whose read grant
   was withdrawn ends with an ``error`` message.
4. A client that does not read fast enough overflows its queue (``live.queue_size`` events): it
   gets an ``overflow`` message and the socket closes with 1013; it should reconnect, subscribe
   again and re-read what it needs over REST. Memory per connection is bounded by that queue and
   by the server's write buffer (a send waits while the client's TCP window is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gridhub.hub.auth import Access, AuthenticationError, PolicyError, Principal, Role
from gridhub.hub.auth.policy import can_access, is_reserved_layer, require_access, require_read_layer
from gridhub.hub.bus import BusSubscription, LiveEvent
from gridhub.hub.deps import FaceContext, RateLimited, Unauthenticated, authenticate_request
from gridhub.hub.faces.live.protocol import (
    CollectionRequest,
    MessageTooBig,
    ProtocolError,
    SeriesRequest,
    SubscriptionId,
    parse_message,
    read_auth,
    read_subscribe,
    read_subscription_id,
    shown,
)
from gridhub.hub.faces.live.selector import matches
from gridhub.hub.model import Layer, ModelError, Series
from gridhub.hub.store import NotFoundError, SelectorError, StoreError

__all__ = [
    "AUTH_TIMEOUT",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "PATH",
    "PROTOCOL",
    "LiveConnection",
    "build_router",
]

logger = logging.getLogger(__name__)

PATH = "/live/v1"
PROTOCOL = "gridhub-live/1"
AUTH_TIMEOUT = 10.0
"""Seconds a connection without credentials has to send its auth message."""
SEND_TIMEOUT = 10.0
"""Seconds the final overflow/close frames may take before the connection is dropped."""
MAX_SUBSCRIPTIONS = 100
"""Subscriptions one connection may hold."""
CLOSE_POLICY = 1008  # RFC 6455 7.4.1: policy violation
CLOSE_INTERNAL_ERROR = 1011  # RFC 6455 7.4.1: the server met an unexpected condition
CLOSE_TOO_BIG = 1009  # RFC 6455 7.4.1: a message too big to process
CLOSE_TRY_AGAIN = 1013  # IANA WebSocket close code registry: try again later


def _reason(text: str) -> str:
    """Return text cut to the 123 bytes a close frame's reason may hold."""
    data = text.encode("utf-8")
    return text if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "..."


@dataclass
class _CollectionSub:
    request: CollectionRequest
    matching: set[str] | None  # ids currently matching the selector (None: no selector)


@dataclass
class _SeriesSub:
    request: SeriesRequest
    layers: set[str] = field(default_factory=set)
    collections: set[tuple[str, str]] = field(default_factory=set)  # (layer, collection) of the named keys


class _Closed(Exception):
    """End the connection: an error message with ``status`` (HTTP-like), then a close frame with ``code``."""

    def __init__(self, code: int, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.status = status


class LiveConnection:
    """One WebSocket client: its credential, its subscriptions and its bus queue."""

    def __init__(self, ctx: FaceContext, websocket: WebSocket) -> None:
        self.ctx = ctx
        self.ws = websocket
        self.principal: Principal | None = None
        self.credential: tuple[str, str] = ("", "")
        self.subs: dict[SubscriptionId, _CollectionSub | _SeriesSub] = {}
        self.layers: dict[str, Layer] = {}
        self.allowed: dict[tuple[str, str], bool] = {}
        self.bus: BusSubscription | None = None
        self.send_lock = asyncio.Lock()

    # -- sending
    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message."""
        async with self.send_lock:
            await self.ws.send_json(message)

    async def close(self, closing: _Closed) -> None:
        """Tell the client why (an error message, when it has a status) and close the socket, within SEND_TIMEOUT."""
        if self.ws.client_state != WebSocketState.CONNECTED or self.ws.application_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_TIMEOUT):
                if closing.status is not None:
                    await self.ws.send_json({"type": "error", "code": closing.status, "message": closing.reason})
                await self.ws.close(closing.code, _reason(closing.reason))

    # -- the connection
    async def run(self) -> None:
        """Serve the connection until the client leaves or it must be closed."""
        await self.ws.accept()
        try:
            await self._authenticate()
        except _Closed as closed:
            await self.close(closed)
            return
        except WebSocketDisconnect:
            return
        assert self.principal is not None
        await self.send(
            {
                "type": "connected",
                "protocol": PROTOCOL,
                "principal": {"id": self.principal.id, "name": self.principal.name, "kind": self.principal.kind},
            }
        )
        self.bus = self.ctx.bus.subscribe()  # after the send: a client already gone leaves no subscription behind
        tasks = [
            asyncio.create_task(self._read(), name="live-read"),
            asyncio.create_task(self._pump(), name="live-pump"),
            asyncio.create_task(self._recheck(), name="live-auth"),
            asyncio.create_task(self.bus.ended.wait(), name="live-ended"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.bus.close()
        closing: _Closed | None = None
        for task in done:
            exc = task.exception() if not task.cancelled() else None
            if isinstance(exc, _Closed):
                closing = exc
            elif exc is not None and not isinstance(exc, WebSocketDisconnect):
                logger.error("live connection of %s failed: %r", self.principal.name, exc, exc_info=exc)
                closing = _Closed(CLOSE_INTERNAL_ERROR, f"internal error ({type(exc).__name__})", 500)
        if closing is None and self.bus.overflowed:
            message = (
                f"overflow: more than {self.bus.queue_size} events were waiting for this connection; "
                f"{self.bus.dropped} were dropped. Reconnect, subscribe again and re-read over REST."
            )
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.ws.send_json({"type": "overflow", "dropped": self.bus.dropped, "message": message})
            closing = _Closed(CLOSE_TRY_AGAIN, "overflow: events not read in time; reconnect and re-read")
        if closing is not None:
            await self.close(closing)

    async def _authenticate(self) -> None:
        headers, query = self.ws.headers, self.ws.query_params
        user, secret = headers.get("x-user-id"), headers.get("x-auth-token")
        if not (user or secret):
            user, secret = query.get("appId"), query.get("keyId")
        if not (user or secret):
            try:
                async with asyncio.timeout(AUTH_TIMEOUT):
                    text = await self.ws.receive_text()
            except TimeoutError:
                raise _Closed(
                    CLOSE_POLICY, f"authentication required: send an auth message within {AUTH_TIMEOUT:g} s", 401
                ) from None
            except (RuntimeError, KeyError):  # a binary frame
                raise _Closed(
                    CLOSE_POLICY, "authentication required: the first message must be a JSON auth message", 401
                ) from None
            try:
                message = parse_message(text, members=False)
                if message.get("action") != "auth":
                    raise ProtocolError("authentication required: the first message must be an auth message", 401)
                user, secret = read_auth(message)
            except MessageTooBig as exc:
                raise _Closed(CLOSE_TOO_BIG, str(exc), 400) from None
            except ProtocolError as exc:
                raise _Closed(CLOSE_POLICY, str(exc), 401) from None
        try:
            self.principal = await run_in_threadpool(authenticate_request, self.ctx, user, secret)
        except Unauthenticated as exc:
            raise _Closed(CLOSE_POLICY, str(exc), 401) from None
        except RateLimited as exc:
            raise _Closed(CLOSE_TRY_AGAIN, str(exc), 429) from None
        self.credential = (user or "", secret or "")

    async def _read(self) -> None:
        while True:
            received = await self.ws.receive()
            if received["type"] == "websocket.disconnect":
                return
            text = received.get("text")
            if text is None:
                await self.send({"type": "error", "code": 400, "message": "send JSON messages as text frames"})
                continue
            sub_id: SubscriptionId | None = None
            try:
                message = parse_message(text)
                action = message["action"]
                if action == "ping":
                    await self.send({"type": "pong"})
                elif action == "auth":
                    raise ProtocolError("already authenticated on this connection")
                elif action == "unsubscribe":
                    sub_id = read_subscription_id(message)
                    self._spend()
                    await self._unsubscribe(sub_id)
                else:
                    with contextlib.suppress(ProtocolError):
                        sub_id = read_subscription_id(message)  # a valid id is repeated in the answer
                    request = read_subscribe(message)
                    self._spend()
                    await self._subscribe(request)
            except MessageTooBig as exc:
                raise _Closed(CLOSE_TOO_BIG, str(exc), 400) from None
            except ProtocolError as exc:
                reply: dict[str, Any] = {"type": "error", "code": exc.code, "message": str(exc)}
                if sub_id is not None:
                    reply["id"] = sub_id
                await self.send(reply)

    # -- subscriptions
    async def _subscribe(self, request: CollectionRequest | SeriesRequest) -> None:
        assert self.bus is not None
        if request.id in self.subs:
            raise ProtocolError(f"id: subscription {request.id!r} already exists on this connection; unsubscribe first")
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise ProtocolError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        try:
            sub = await run_in_threadpool(self._authorise, request)
        except StoreError as exc:  # the store is unreachable: the client may retry
            logger.warning("live: could not check a subscription of %s: %s", self.principal, exc)
            raise ProtocolError(f"the hub could not check this subscription now ({exc}); try again", 503) from None
        async with self.send_lock:  # interest and "ok" together: no event of it goes out before the "ok"
            if request.id in self.subs:
                raise ProtocolError(f"id: subscription {request.id!r} already exists on this connection")
            self.subs[request.id] = sub
            if isinstance(request, CollectionRequest):
                self.bus.want_collection(request.layer, request.collection)
            else:
                self.bus.want_series(request.keys, request.prefixes)
            await self.ws.send_json({"type": "ok", "action": "subscribe", "id": request.id})

    def _spend(self) -> None:
        """Spend one request of the credential's rate limit, as a REST request does; ProtocolError 429 when over it."""
        assert self.principal is not None
        wait = self.ctx.limiter.hit(f"{self.principal.kind}:{self.principal.id}")
        if wait is not None:
            raise ProtocolError(
                f"rate limit of {self.ctx.settings.rate_limit} requests per {self.ctx.settings.rate_window:g} s "
                f"exceeded for {self.principal.kind} {self.principal.name!r}; retry in {wait:.1f} s",
                429,
            )

    async def _unsubscribe(self, sub_id: SubscriptionId) -> None:
        assert self.bus is not None
        async with self.send_lock:
            sub = self.subs.pop(sub_id, None)
            if sub is None:
                raise ProtocolError(f"id: no subscription {sub_id!r} on this connection", 404)
            self._drop_interest(sub)
            await self.ws.send_json({"type": "ok", "action": "unsubscribe", "id": sub_id})

    def _drop_interest(self, sub: _CollectionSub | _SeriesSub) -> None:
        assert self.bus is not None
        if isinstance(sub, _CollectionSub):
            self.bus.drop_collection(sub.request.layer, sub.request.collection)
        else:
            self.bus.drop_series(sub.request.keys, sub.request.prefixes)

    def _layer(self, layer_id: str, cache: dict[str, Layer] | None = None) -> Layer:
        """Read a layer into the cache (default: the connection's); ProtocolError 404 when it does not exist."""
        if is_reserved_layer(layer_id):
            raise ProtocolError(f"layer {layer_id!r} does not exist", 404)
        try:
            found = self.ctx.store.get_layer(layer_id)
        except NotFoundError:
            raise ProtocolError(f"layer {layer_id!r} does not exist", 404) from None
        (self.layers if cache is None else cache)[layer_id] = found
        return found

    def _find_layer(self, layer_id: str) -> Layer | None:
        """Return a layer (into the connection's cache), None when it does not exist; 404 for a reserved one."""
        if is_reserved_layer(layer_id):  # as the REST API: nobody may know more of these
            raise ProtocolError(f"layer {layer_id!r} does not exist", 404)
        try:
            return self._layer(layer_id)
        except ProtocolError:
            return None

    def _stand_in(self, layer_id: str) -> Layer:
        """Return a layer of that name without owner or collections, to ask the policy about one that does not exist."""
        try:
            return Layer(id=layer_id, label=layer_id)
        except ModelError:  # not a valid layer name: no such layer can exist for anyone
            raise ProtocolError(f"layer {shown(layer_id)} does not exist", 404) from None

    def _require(self, layer: Layer, collection: str, what: str = "") -> None:
        assert self.principal is not None
        try:
            require_access(self.principal, layer, collection, Access.READ)
        except PolicyError as exc:
            raise ProtocolError(f"{exc}{what}", exc.status) from None

    def _require_layer(self, layer: Layer) -> None:
        """Require read access to some collection of layer (as GET /config/L/L does)."""
        assert self.principal is not None
        try:
            require_read_layer(self.principal, layer)
        except PolicyError as exc:
            raise ProtocolError(str(exc), exc.status) from None

    def _open_collection(self, layer_id: str, collection: str) -> Layer:
        """Return the layer after checking the caller may read the collection, then that it exists.

        As the REST API's open_collection (PLF_008): a caller who could not read the collection were it
        there is refused 403 whether or not the layer or collection exists; only one who could learns
        that it is missing (404).
        """
        found = self._find_layer(layer_id)
        if found is None or found.collection(collection) is None:
            self._require(found or self._stand_in(layer_id), collection)
            if found is None:
                raise ProtocolError(f"layer {layer_id!r} does not exist", 404)
            raise ProtocolError(f"collection {collection!r} is not listed in layer {layer_id!r}", 404)
        self._require(found, collection)
        return found

    def _open_layer(self, layer_id: str) -> Layer:
        """Return the layer after checking the caller may read some collection of it, then that it exists."""
        found = self._find_layer(layer_id)
        self._require_layer(found or self._stand_in(layer_id))
        if found is None:
            raise ProtocolError(f"layer {layer_id!r} does not exist", 404)
        return found

    def _authorise(self, request: CollectionRequest | SeriesRequest) -> _CollectionSub | _SeriesSub:
        """Check a request against the policy and the store (in a worker thread); ProtocolError when refused.

        Read access is checked before existence, so that a refusal tells nothing of what exists.
        """
        assert self.principal is not None
        if isinstance(request, CollectionRequest):
            layer = self._open_collection(request.layer, request.collection)
            matching: set[str] | None = None
            if request.selector is not None:
                cap = self.ctx.settings.query_limit
                try:
                    found = self.ctx.store.find_documents(layer.id, request.collection, request.selector, limit=cap + 1)
                except SelectorError as exc:
                    text = str(exc)  # the store's message may quote the selector: at most ~100 characters of it
                    raise ProtocolError(text if len(text) <= 200 else f"{text[:200]}...") from None
                if len(found) > cap:
                    raise ProtocolError(f"selector matches more than {cap} documents (api.query_limit); narrow it")
                matching = {a.id for a in found}
            return _CollectionSub(request, matching)
        sub = _SeriesSub(request)
        if request.layer is not None:
            if request.collection is not None:
                layer = self._open_collection(request.layer, request.collection)
            else:
                layer = self._open_layer(request.layer)
            sub.layers.add(layer.id)
            if request.prefixes:
                for series in self.ctx.store.list_series(layer.id):
                    if any(series.key.startswith(p) for p in request.prefixes) and (
                        request.collection is None or series.collection == request.collection
                    ):
                        self._require(
                            layer,
                            series.collection,
                            f" (series {series.key!r} matches the prefix; name a collection or narrow the prefix)",
                        )
        for key in sorted(request.keys):
            layer, series = self._open_series(key, request.layer)
            sub.layers.add(layer.id)
            sub.collections.add((layer.id, series.collection))
        return sub

    def _open_series(self, key: str, layer_id: str | None) -> tuple[Layer, Series]:
        """Return series key and its layer after checking the caller may read it, then that it exists.

        The caller learns whether a series exists only when it may read some collection of its layer.
        Without ``layer`` in the request the layer of a missing series is unknown: only a caller who may
        read every layer (admin, operator) is told 404; any other gets the 403 it would get for a series
        of a layer it may not read.
        """
        assert self.principal is not None
        try:
            series: Series | None = self.ctx.store.get_series(key)
        except NotFoundError:
            series = None
        layer: Layer | None = None
        if series is not None and layer_id in (None, series.layer) and not is_reserved_layer(series.layer):
            layer = self._find_layer(series.layer)
        hidden = ProtocolError(
            f"{self.principal.kind} {self.principal.name!r} may not read series {shown(key)} "
            "(or it does not exist; name its layer to be told which)",
            403,
        )
        if series is None or layer is None:
            if layer_id is not None:  # opened already: the caller may read some collection of it
                raise ProtocolError(f"series {shown(key)} does not exist in layer {layer_id!r}", 404)
            if self.principal.role in (Role.ADMIN, Role.OPERATOR):
                raise ProtocolError(f"series {shown(key)} does not exist", 404)
            raise hidden
        try:
            self._require_layer(layer)
        except ProtocolError:
            raise hidden from None
        self._require(layer, series.collection, f" (series {shown(key)})")
        return layer, series

    def _may_read(self, layer_id: str, collection: str) -> bool:
        """Tell whether the caller may read layer/collection (from the connection's cache of layers)."""
        key = (layer_id, collection)
        if key not in self.allowed:
            layer = self.layers.get(layer_id)
            assert self.principal is not None
            self.allowed[key] = layer is not None and can_access(self.principal, layer, collection, Access.READ)
        return self.allowed[key]

    # -- events
    async def _pump(self) -> None:
        assert self.bus is not None
        while True:
            event = await self.bus.get()
            if event is None:
                return
            async with self.send_lock:
                for message in self._messages(event):
                    await self.ws.send_json(message)

    def _messages(self, event: LiveEvent) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for sub_id, sub in self.subs.items():
            if isinstance(sub, _CollectionSub):
                message = self._collection_message(sub, event)
            else:
                message = self._series_message(sub, event)
            if message is not None:
                message["sub"] = sub_id
                out.append(message)
        return out

    def _collection_message(self, sub: _CollectionSub, event: LiveEvent) -> dict[str, Any] | None:
        request = sub.request
        if event.kind != "collection" or event.layer != request.layer or event.collection != request.collection:
            return None
        body = dict(event.body)
        if sub.matching is None:
            return body
        doc_id = event.key
        was_in = doc_id in sub.matching
        if body.get("op") == "removed":
            if not was_in:
                return None
            sub.matching.discard(doc_id)
            return body
        doc = body.get("doc")
        try:
            now_in = isinstance(doc, dict) and matches(request.selector, doc)
        except (ValueError, TypeError):
            now_in = False
        if now_in:
            sub.matching.add(doc_id)
            body["op"] = "changed" if was_in else "added"
            return body
        if was_in:  # it left the selection: for this subscriber it is removed
            sub.matching.discard(doc_id)
            body.pop("doc", None)
            body["op"] = "removed"
            return body
        return None

    def _series_message(self, sub: _SeriesSub, event: LiveEvent) -> dict[str, Any] | None:
        request = sub.request
        if event.kind != "samples":
            return None
        if event.key not in request.keys and not any(event.key.startswith(p) for p in request.prefixes):
            return None
        if request.layer is not None and event.layer != request.layer:
            return None
        if request.collection is not None and event.collection != request.collection:
            return None
        if not self._may_read(event.layer, event.collection):
            return None
        return dict(event.body)

    # -- credential re-check
    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.settings.live_auth_check_interval)
            try:
                principal = await run_in_threadpool(self.ctx.auth.authenticate, *self.credential)
            except AuthenticationError as exc:
                raise _Closed(CLOSE_POLICY, str(exc), 401) from None
            except StoreError as exc:  # the store is down: keep serving, check again later
                logger.warning("live: could not re-check the credential of %s: %s", self.principal, exc)
                continue
            self.principal = principal
            revoked, layers = await run_in_threadpool(self._reauthorise)
            async with self.send_lock:
                self.layers.update(layers)
                self.allowed.clear()
                for sub_id, message in revoked:
                    sub = self.subs.pop(sub_id, None)
                    if sub is not None:
                        self._drop_interest(sub)
                        await self.ws.send_json(
                            {"type": "error", "id": sub_id, "code": 403, "message": f"subscription ended: {message}"}
                        )

    def _reauthorise(self) -> tuple[list[tuple[SubscriptionId, str]], dict[str, Layer]]:
        """Return the subscriptions the caller may no longer hold, with the reason, and the layers read (worker thread).

        The layers are read into a new cache, handed to the event loop afterwards, so that the events
        delivered meanwhile are still checked against the connection's cache.
        """
        assert self.principal is not None
        layers: dict[str, Layer] = {}
        revoked = []
        for sub_id, sub in list(self.subs.items()):
            try:
                if isinstance(sub, _CollectionSub):
                    layer = self._layer(sub.request.layer, layers)
                    self._require(layer, sub.request.collection)
                    continue
                for layer_id in sub.layers:
                    self._layer(layer_id, layers)
                request = sub.request
                if request.layer is not None and request.collection is None:
                    self._require_layer(layers[request.layer])
                elif request.layer is not None and request.collection is not None:
                    self._require(layers[request.layer], request.collection)
                for layer_id, collection in sorted(sub.collections):
                    self._require(layers[layer_id], collection)
            except ProtocolError as exc:
                revoked.append((sub_id, str(exc)))
        return revoked, layers


def build_router(ctx: FaceContext) -> APIRouter:
    """Return the live face's router: the WebSocket at /live/v1 (create_app starts and stops the hub bus)."""
    router = APIRouter(tags=["live"])

    @router.websocket(PATH)
    async def live(websocket: WebSocket) -> None:
        """Serve one live client (see docs/live.md)."""
        await LiveConnection(ctx, websocket).run()

    return router
