"""The hub internal bus: change events of collections and series, in-process and (optionally) over NATS.

Writers (the X-FLEX collection routes, the edge upload ingest) call the ``publish_*`` methods
**after** their store commit, from any thread. Readers (the live WebSocket face) open a
:class:`BusSubscription`: a bounded per-subscriber queue fed on the event loop. Publishing never
waits for a reader: when a subscriber's queue is full, the subscriber is marked *overflowed*, its
queued events are dropped and it receives nothing more (the live face then tells its client and
closes the socket); memory per subscriber is bounded by ``queue_size`` events.

Events (the JSON the live face forwards, see docs/live.md):

- collection: ``{"type": "collection", "layer", "collection", "op": "added"|"changed"|"removed",
  "id", "doc"}`` (``doc`` only for added/changed, as the REST API serves it);
- samples: ``{"type": "samples", "series", "layer", "collection", "asset", "samples": [{"t", "v",
  "q"}]}`` (``"d"`` too for a structured value), one event per series per write.

Scale-out: with ``nats.url`` set, every event is also published to NATS, on
``<domain>.live.<layer>.<collection>`` (collection events) and ``<domain>.live.samples.<layer>.<asset>``
(sample events; subject tokens are percent-encoded outside ``[A-Za-z0-9_-]``), and each hub replica
listens on ``<domain>.live.>`` with ``no_echo`` so that its subscribers see the writes of every
replica exactly once. Without NATS the bus is in-process only, and a write costs nothing when no
subscriber wants it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from gridhub.hub.model import MEASUREMENTS, Asset, Sample, Series, format_time, measurement_series_key
from gridhub.hub.store import Store

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "BusSubscription",
    "LiveBus",
    "LiveEvent",
    "collection_subject",
    "samples_subject",
    "subject_token",
]

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1000
"""Events one subscriber may have waiting before it overflows."""

_NATS_OUTBOX = 10_000
MEASUREMENTS_TIME = "measurementsTimestamp"  # X-FLEX 3.1.2.2: the default time of the measurements
_REREAD_CHUNK = 500  # ids per $in query when reading inserted documents back (bounds one query's size)

Op = Literal["added", "changed", "removed"]


@dataclass(frozen=True)
class LiveEvent:
    """One change: ``kind`` collection or samples, where it happened, and the JSON body clients get."""

    kind: Literal["collection", "samples"]
    layer: str
    collection: str
    key: str
    """The document id (collection events) or the series key (samples events)."""
    body: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: object) -> LiveEvent:
        """Read an event from its JSON body (as published on NATS); ValueError when it is not one."""
        if not isinstance(body, dict):
            raise ValueError(f"expected a JSON object, got {type(body).__name__}")
        kind = body.get("type")
        layer, collection = body.get("layer"), body.get("collection")
        key = body.get("id") if kind == "collection" else body.get("series")
        if (
            (kind != "collection" and kind != "samples")
            or not isinstance(layer, str)
            or not isinstance(collection, str)
            or not isinstance(key, str)
        ):
            raise ValueError("expected type collection (layer, collection, id) or samples (layer, collection, series)")
        return cls(kind, layer, collection, key, body)


def subject_token(text: str) -> str:
    """Return text as one NATS subject token: characters outside [A-Za-z0-9_-] become %XX (UTF-8 bytes)."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in "_-"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out) or "%"


def collection_subject(domain: str, layer: str, collection: str) -> str:
    """Return the NATS subject of a collection's change events."""
    return f"{domain}.live.{subject_token(layer)}.{subject_token(collection)}"


def samples_subject(domain: str, layer: str, asset: str) -> str:
    """Return the NATS subject of the new samples of an asset's series."""
    return f"{domain}.live.samples.{subject_token(layer)}.{subject_token(asset)}"


def _sample_json(sample: Sample) -> dict[str, Any]:
    out: dict[str, Any] = {"t": format_time(sample.ts), "v": sample.value, "q": int(sample.quality)}
    if sample.data is not None:
        out["d"] = sample.data
    return out


class BusSubscription:
    """A bounded queue of the events one reader is interested in; fed on the bus's event loop.

    Interest is declared with :meth:`want_collection`, :meth:`want_series` and
    :meth:`want_series_prefix` (and withdrawn with the ``drop_*`` methods); the reader decides
    finer matters (selectors, authorisation) itself.
    """

    def __init__(self, bus: LiveBus, queue_size: int) -> None:
        self.bus = bus
        self.queue_size = queue_size
        self.overflowed = False
        self.dropped = 0
        self.closed = False
        self.ended = asyncio.Event()
        """Set once the subscription is closed or overflowed (a reader blocked elsewhere can wait for it)."""
        self._items: deque[LiveEvent] = deque()
        self._ready = asyncio.Event()
        self.collections: dict[tuple[str, str], int] = {}
        self.series: dict[str, int] = {}
        self.prefixes: dict[str, int] = {}

    # -- interest (call on the event loop)
    def want_collection(self, layer: str, collection: str) -> None:
        """Receive the change events of layer/collection."""
        self.collections[(layer, collection)] = self.collections.get((layer, collection), 0) + 1
        self.bus._reindex()

    def drop_collection(self, layer: str, collection: str) -> None:
        """Withdraw one want_collection."""
        _decrement(self.collections, (layer, collection))
        self.bus._reindex()

    def want_series(self, keys: Iterable[str] = (), prefixes: Iterable[str] = ()) -> None:
        """Receive the new samples of these series keys and of every series whose key starts with a prefix."""
        for key in keys:
            self.series[key] = self.series.get(key, 0) + 1
        for prefix in prefixes:
            self.prefixes[prefix] = self.prefixes.get(prefix, 0) + 1
        self.bus._reindex()

    def drop_series(self, keys: Iterable[str] = (), prefixes: Iterable[str] = ()) -> None:
        """Withdraw one want_series."""
        for key in keys:
            _decrement(self.series, key)
        for prefix in prefixes:
            _decrement(self.prefixes, prefix)
        self.bus._reindex()

    def wants(self, event: LiveEvent) -> bool:
        """Tell whether the event is of interest."""
        if event.kind == "collection":
            return (event.layer, event.collection) in self.collections
        return event.key in self.series or any(event.key.startswith(p) for p in self.prefixes)

    # -- the queue
    def offer(self, event: LiveEvent) -> None:
        """Queue an event without ever waiting; overflow when the queue is full (called on the loop)."""
        if self.closed or self.overflowed:
            self.dropped += self.overflowed
            return
        if len(self._items) >= self.queue_size:
            self.overflowed = True
            self.dropped += len(self._items) + 1
            self._items.clear()
            self.bus.close_subscription(self)
            self._ready.set()
            logger.warning("a live subscriber fell %s events behind and was cut off", self.queue_size)
            return
        self._items.append(event)
        self._ready.set()

    async def get(self) -> LiveEvent | None:
        """Return the next event; None once the subscription is closed or overflowed."""
        while not self._items:
            if self.closed or self.overflowed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def pending(self) -> int:
        """Return how many events wait in the queue."""
        return len(self._items)

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        self.bus.close_subscription(self)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


@dataclass
class _Index:
    """What some subscriber wants, read by writer threads without a lock (replaced whole, never mutated)."""

    collections: frozenset[tuple[str, str]] = frozenset()
    series: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    subscribers: tuple[BusSubscription, ...] = field(default_factory=tuple)


class LiveBus:
    """Publish change events to local subscribers and, when configured, to the other replicas over NATS."""

    def __init__(
        self, *, nats_url: str = "", domain: str = "gridhub", queue_size: int = DEFAULT_QUEUE_SIZE, timeout: float = 5.0
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size: expected an integer >= 1, got {queue_size}")
        self.nats_url = nats_url
        self.domain = domain
        self.queue_size = queue_size
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nats: NatsClient | None = None
        self._subscribers: list[BusSubscription] = []
        self._index = _Index()
        self._outbox: asyncio.Queue[LiveEvent] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()

    # -- life cycle
    async def start(self) -> None:
        """Bind the bus to the running event loop; with a NATS URL, keep a connection to NATS."""
        self.loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        if self.nats_url:
            self._outbox = asyncio.Queue(_NATS_OUTBOX)
            self._tasks = [
                asyncio.create_task(self._supervise(), name="gridhub-bus-nats"),
                asyncio.create_task(self._forward(), name="gridhub-bus-outbox"),
            ]

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the NATS connection is up (True at once without NATS); False on timeout."""
        if not self.nats_url:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    async def stop(self) -> None:
        """Close every subscription and the NATS connection."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.nats is not None:
            try:
                await self.nats.drain()
            except (OSError, nats.errors.Error) as exc:
                logger.debug("closing the bus's NATS connection: %s", exc)
            self.nats = None
        for subscriber in list(self._subscribers):
            subscriber.close()
        self.loop = None

    async def _supervise(self) -> None:
        """Connect to NATS, listen, and reconnect with back-off (1 s doubling to 30 s) when the connection closes."""
        delay = 1.0
        while True:
            closed = asyncio.Event()

            async def on_closed() -> None:
                closed.set()  # noqa: B023 - this attempt's event

            async def on_error(exc: Exception) -> None:
                logger.debug("bus NATS %s: %s", self.nats_url, exc)

            try:
                client = await nats.connect(
                    servers=[self.nats_url],
                    name="gridhub-hub-live",
                    connect_timeout=2,
                    allow_reconnect=False,
                    no_echo=True,  # this replica delivers its own events locally
                    closed_cb=on_closed,
                    error_cb=on_error,
                )
                await client.subscribe(f"{self.domain}.live.>", cb=self._receive)
                await client.flush()
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                logger.warning(
                    "live bus: NATS at %s is not reachable: %s (retrying in %g s)", self.nats_url, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            self.nats = client
            self._connected.set()
            logger.info("live bus connected to NATS at %s (subjects %s.live.>)", self.nats_url, self.domain)
            await closed.wait()
            self._connected.clear()
            self.nats = None
            logger.warning("live bus: NATS connection to %s closed; reconnecting", self.nats_url)

    async def _forward(self) -> None:
        """Publish queued events to NATS (events published while NATS is down are dropped, with a warning)."""
        assert self._outbox is not None
        lost = 0
        while True:
            event = await self._outbox.get()
            client = self.nats
            if client is None or not client.is_connected:
                lost += 1
                if lost == 1 or lost % 1000 == 0:
                    logger.warning("live bus: NATS is down; %s events not shared with other replicas", lost)
                continue
            lost = 0
            if event.kind == "collection":
                subject = collection_subject(self.domain, event.layer, event.collection)
            else:
                subject = samples_subject(self.domain, event.layer, str(event.body.get("asset", "")))
            try:
                await client.publish(subject, json.dumps(event.body, separators=(",", ":")).encode())
            except (OSError, nats.errors.Error) as exc:
                logger.warning("live bus: publishing to NATS failed: %s", exc)

    async def _receive(self, msg: Msg) -> None:
        try:
            event = LiveEvent.from_body(json.loads(msg.data))
        except ValueError as exc:
            logger.warning("live bus: ignoring a message on %s that is not a change event: %s", msg.subject, exc)
            return
        self._deliver([event])

    # -- subscribers (on the event loop)
    def subscribe(self, queue_size: int | None = None) -> BusSubscription:
        """Open a subscription with a bounded queue (default: the bus's queue_size)."""
        subscriber = BusSubscription(self, queue_size or self.queue_size)
        self._subscribers.append(subscriber)
        return subscriber

    def close_subscription(self, subscriber: BusSubscription) -> None:
        """Stop delivering to a subscription and wake its reader."""
        subscriber.closed = True
        subscriber._ready.set()
        subscriber.ended.set()
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._reindex()

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open on this replica."""
        return len(self._subscribers)

    def _reindex(self) -> None:
        live = [s for s in self._subscribers if not s.closed]
        self._index = _Index(
            collections=frozenset(k for s in live for k in s.collections),
            series=frozenset(k for s in live for k in s.series),
            prefixes=tuple(sorted({p for s in live for p in s.prefixes})),
            subscribers=tuple(live),
        )

    # -- interest (any thread)
    @property
    def active(self) -> bool:
        """Tell whether any event may be wanted (a local subscriber, or NATS to share with)."""
        return bool(self.nats_url) or bool(self._index.subscribers)

    def wants_collection(self, layer: str, collection: str) -> bool:
        """Tell whether a change of layer/collection may be wanted."""
        return bool(self.nats_url) or (layer, collection) in self._index.collections

    def wants_series(self, key: str) -> bool:
        """Tell whether new samples of a series may be wanted."""
        if self.nats_url:
            return True
        index = self._index
        return key in index.series or any(key.startswith(p) for p in index.prefixes)

    # -- publishing (any thread, after the store commit)
    def publish(self, events: Sequence[LiveEvent]) -> None:
        """Deliver events to local subscribers and to NATS; never waits, thread-safe."""
        loop = self.loop
        if not events or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._dispatch(events)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody listens any more
                loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: Sequence[LiveEvent]) -> None:
        self._deliver(events)
        if self._outbox is not None:
            for event in events:
                try:
                    self._outbox.put_nowait(event)
                except asyncio.QueueFull:
                    logger.warning("live bus: NATS outbox full; an event was not shared with other replicas")
                    break

    def _deliver(self, events: Iterable[LiveEvent]) -> None:
        subscribers = self._index.subscribers
        if not subscribers:
            return
        for event in events:
            for subscriber in subscribers:
                if subscriber.wants(event):
                    subscriber.offer(event)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Log and swallow a failure to publish: the write it reports has been committed and must still succeed."""
        try:
            yield
        except Exception:
            logger.exception("live bus: could not publish %s", what)

    def publish_documents(
        self,
        layer: str,
        collection: str,
        op: Literal["added", "changed"],
        assets: Iterable[Asset],
        measurements: Iterable[str] | None = None,
    ) -> None:
        """Publish added/changed documents, and the samples their measurements appended.

        ``measurements`` names the measurements the write carried (None: all of the document's,
        as an insert appends them all; a patch appends only those it names).
        """
        if not self.active:
            return
        with self._guard(f"{op} documents of {layer}/{collection}"):
            wanted = None if measurements is None else set(measurements)
            events: list[LiveEvent] = []
            want_docs = self.wants_collection(layer, collection)
            for asset in assets:
                if want_docs:
                    body = {"type": "collection", "layer": layer, "collection": collection, "op": op, "id": asset.id}
                    events.append(
                        LiveEvent("collection", layer, collection, asset.id, {**body, "doc": asset.to_document()})
                    )
                if MEASUREMENTS not in asset.attributes or wanted == set():
                    continue
                for m in asset.measurements(default_time=asset.updated):
                    if wanted is not None and m.name not in wanted:
                        continue
                    key = measurement_series_key(layer, collection, asset.id, m.name)
                    if self.wants_series(key):
                        events.append(self._samples_event(key, layer, collection, asset.id, [m.sample(key)]))
            self.publish(events)

    def publish_patched(self, layer: str, collection: str, asset: Asset, changes: Mapping[str, Any]) -> None:
        """Publish a document a patch changed, and the samples the patch appended to its series.

        The samples are the patch's own measurement items, not the document's: an item older than
        the document's goes to the history alone and leaves the real-time state as it was. Times
        resolve as the store resolves them: the item's timestamp, else the patch's
        measurementsTimestamp, else the write time (the asset's ``_updated``).
        """
        self.publish_documents(layer, collection, "changed", [asset], ())
        carried = changes.get(MEASUREMENTS)
        if not isinstance(carried, Mapping) or not self.active:
            return
        fallback = changes.get(MEASUREMENTS_TIME)
        items = {
            name: item if item.get("timestamp") is not None or fallback is None else {**item, "timestamp": fallback}
            for name, item in carried.items()
            if isinstance(item, Mapping)
        }
        with self._guard(f"patched measurements of {layer}/{collection}/{asset.id}"):
            appended = Asset(asset.id, {MEASUREMENTS: items}, updated=asset.updated)
            events = []
            for m in appended.measurements(default_time=asset.updated):
                key = measurement_series_key(layer, collection, asset.id, m.name)
                if self.wants_series(key):
                    events.append(self._samples_event(key, layer, collection, asset.id, [m.sample(key)]))
            self.publish(events)

    def publish_removed(self, layer: str, collection: str, ids: Iterable[str]) -> None:
        """Publish the removal of documents."""
        if not self.wants_collection(layer, collection):
            return
        with self._guard(f"removed documents of {layer}/{collection}"):
            body = {"type": "collection", "layer": layer, "collection": collection, "op": "removed"}
            self.publish([LiveEvent("collection", layer, collection, i, {**body, "id": i}) for i in ids])

    def publish_inserted(self, store: Store, layer: str, collection: str, ids: Sequence[str]) -> None:
        """Publish documents just inserted, read back as stored (only when someone may want them)."""
        if not ids or not self.active:
            return
        with self._guard(f"added documents of {layer}/{collection}"):
            assets: list[Asset] = []
            for start in range(0, len(ids), _REREAD_CHUNK):
                chunk = list(ids[start : start + _REREAD_CHUNK])
                assets += store.find_documents(layer, collection, {"_id": {"$in": chunk}})
            self.publish_documents(layer, collection, "added", assets)

    def publish_samples(self, samples: Iterable[Sample], series: Mapping[str, Series]) -> None:
        """Publish new samples: one event per series (samples of unknown series are skipped)."""
        if not self.active:
            return
        with self._guard("new samples"):
            grouped: dict[str, dict[datetime, Sample]] = {}
            for sample in samples:  # a repeated (series, time) keeps the last one, as the store does
                grouped.setdefault(sample.series, {})[sample.ts] = sample
            events = []
            for key, group in grouped.items():
                info = series.get(key)
                if info is None or not self.wants_series(key):
                    continue
                ordered = [group[ts] for ts in sorted(group)]
                events.append(self._samples_event(key, info.layer, info.collection, info.asset, ordered))
            self.publish(events)

    @staticmethod
    def _samples_event(key: str, layer: str, collection: str, asset: str, samples: Sequence[Sample]) -> LiveEvent:
        body = {
            "type": "samples",
            "series": key,
            "layer": layer,
            "collection": collection,
            "asset": asset,
            "samples": [_sample_json(s) for s in samples],
        }
        return LiveEvent("samples", layer, collection, key, body)
