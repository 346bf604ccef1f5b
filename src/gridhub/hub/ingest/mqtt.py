"""The MQTT upload bridge: sites publish upload batches to a hub broker instead of POSTing them.

When ``mqtt.url`` is set, the hub subscribes with QoS 1 to
``$share/<mqtt.group>/<mqtt.topic_prefix>/+/batch``: a shared subscription, so several hub replicas
are competing consumers and each batch is handled by one of them. A batch published by a site to
``<prefix>/<site>/batch`` is the HTTP upload body (gzip allowed, recognised by its magic bytes)
with the site's token spliced in as ``"Token"``::

    {"Token": "<site token>", "Batch": "<id>", "Tables": [{"TableName": ..., "TableRows": [...]}]}

The token must belong to the site named in the topic (a site cannot upload as another site, even
where the broker's ACLs would let it publish there). The batch goes through the same
:class:`~gridhub.hub.faces.edge.ingest.EdgeIngest` as the HTTP face, and only after the commit
the hub publishes the same answer JSON to ``<prefix>/<site>/ack/<Batch>`` (QoS 1). A refused batch
gets ``{"status": "error", "code": <the HTTP face's code>, "message": ...}`` there: 401 bad token,
400 malformed (nothing stored), 413 too large, 503 store unavailable. A payload whose ``Batch`` cannot
be read cannot be answered: it is logged and dropped (the edge retries after its ack timeout).

Exactly once does not depend on the broker: the broker may drop a batch (no hub subscribed) or
deliver it twice (QoS 1); the edge marks rows uploaded only on an ack and re-sends otherwise, and
the ledger of EdgeIngest answers re-sent rows without storing them again.

paho-mqtt runs its network loop in its own thread and reconnects by itself (back-off 1-30 s); the
batches are ingested one at a time on a worker thread so a slow commit never stalls the keep-alive.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import uuid
import zlib
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.hub.faces.edge.ingest import BatchError, EdgeIngest, parse_batch
from gridhub.hub.settings import HubSettings

__all__ = ["GZIP_MAGIC", "MqttUploadBridge", "UploadRefused"]

log = logging.getLogger(__name__)

QOS = 1
GZIP_MAGIC = b"\x1f\x8b"
_BAD_LEVEL = ("+", "#", "/", "\0")


class SiteIdentity(Protocol):
    """What the bridge needs of an authenticated site."""

    @property
    def name(self) -> str: ...


class SiteTokens(Protocol):
    """What the bridge needs of the AuthService."""

    def verify_site_token(self, token: str) -> SiteIdentity | None: ...


class UploadRefused(Exception):
    """A batch is refused; ``code`` is the HTTP face's status code for the same refusal."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class MqttUploadBridge:
    """Subscribe to upload batches on the hub broker, ingest them, and ack each after its commit."""

    def __init__(self, settings: HubSettings, auth: SiteTokens, ingest: EdgeIngest) -> None:
        self.settings = settings
        self.auth = auth
        self.ingest = ingest
        self.prefix = settings.mqtt_topic_prefix
        self.subscription = f"$share/{settings.mqtt_group}/{self.prefix}/+/batch"
        url = urlsplit(settings.mqtt_url)
        if url.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"mqtt.url: expected mqtt:// or mqtts://, got {settings.mqtt_url!r}")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.connected = threading.Event()
        """Set while connected and subscribed."""
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"gridhub-hub-{uuid.uuid4().hex[:12]}", clean_session=True
        )
        if settings.mqtt_username:
            self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password or None)
        if url.scheme == "mqtts":
            context = ssl.create_default_context(cafile=settings.mqtt_ca or None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.mqtt_cert:
                context.load_cert_chain(settings.mqtt_cert, settings.mqtt_key or None)
            self.client.tls_set_context(context)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- life cycle
    def start(self) -> None:
        """Connect (in the background: a broker that is down is retried) and start the worker."""
        self._worker = threading.Thread(target=self._work, name="mqtt-upload-ingest", daemon=True)
        self._worker.start()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        log.info("MQTT upload bridge: connecting to %s, subscribing to %s", self.settings.mqtt_url, self.subscription)

    def stop(self) -> None:
        """Disconnect and let the worker finish the batch it is on."""
        self.client.disconnect()
        self.client.loop_stop()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=30)
        self.connected.clear()

    # -- paho callbacks (network thread)
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT upload bridge: broker %s refused the connection: %s", self.settings.mqtt_url, reason)
            return
        client.subscribe(self.subscription, qos=QOS)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if reasons and not reasons[0].is_failure:
            log.info("MQTT upload bridge: subscribed to %s on %s", self.subscription, self.settings.mqtt_url)
            self.connected.set()
        else:
            log.error("MQTT upload bridge: broker refused the subscription to %s: %s", self.subscription, reasons)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected.is_set():
            log.warning("MQTT upload bridge: disconnected from %s (%s); reconnecting", self.settings.mqtt_url, reason)
        self.connected.clear()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload)))

    # -- the batches (worker thread)
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, payload = item
            try:
                answer = self.handle(topic, payload)
            except Exception:  # never let one batch stop the bridge
                log.exception("MQTT upload bridge: batch on %s could not be handled", topic)
                continue
            if answer is not None:
                ack_topic, body = answer
                self.client.publish(ack_topic, json.dumps(body, separators=(",", ":")), qos=QOS)

    def handle(self, topic: str, payload: bytes) -> tuple[str, dict[str, Any]] | None:
        """Ingest one batch message; return (ack topic, ack body), or None when it cannot be answered."""
        site = self._site_of(topic)
        if site is None:
            log.warning("MQTT upload bridge: ignoring a message on unexpected topic %r", topic)
            return None
        try:
            body = self._decode(payload)
        except UploadRefused as exc:
            log.warning("MQTT upload bridge: site %s: unanswerable batch dropped: %s", site, exc)
            return None
        batch = body.get("Batch")
        if not isinstance(batch, str) or not batch or len(batch) > 200 or any(c in batch for c in _BAD_LEVEL):
            log.warning("MQTT upload bridge: site %s: batch without a usable Batch id dropped (cannot ack)", site)
            return None
        ack_topic = f"{self.prefix}/{site}/ack/{batch}"
        try:
            result = self._ingest(site, body)
        except UploadRefused as exc:
            log.warning("MQTT upload bridge: site %s batch %s refused (%d): %s", site, batch, exc.code, exc)
            return ack_topic, {"status": "error", "code": exc.code, "message": str(exc)}
        return ack_topic, result

    def _site_of(self, topic: str) -> str | None:
        head = f"{self.prefix}/"
        if not topic.startswith(head) or not topic.endswith("/batch"):
            return None
        site = topic[len(head) : -len("/batch")]
        return site if site and "/" not in site else None

    def _decode(self, payload: bytes) -> dict[str, Any]:
        limit = self.settings.upload_max_bytes
        if len(payload) > limit:
            raise UploadRefused(413, f"batch of {len(payload)} bytes exceeds the limit of {limit} bytes")
        if payload.startswith(GZIP_MAGIC):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                text = inflater.decompress(payload, limit + 1)
            except zlib.error as exc:
                raise UploadRefused(400, f"payload: gzip magic bytes but not valid gzip ({exc})") from None
            if len(text) > limit or inflater.unconsumed_tail:
                raise UploadRefused(413, f"decompressed batch exceeds the limit of {limit} bytes")
            if not inflater.eof:
                raise UploadRefused(400, "payload: gzip stream is truncated")
            payload = text
        try:
            body = json.loads(payload)
        except UnicodeDecodeError:
            raise UploadRefused(400, "payload: not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:
            raise UploadRefused(400, f"payload: not valid JSON ({exc})"[:300]) from None
        if not isinstance(body, Mapping):
            raise UploadRefused(400, f"payload: expected a JSON object, got {type(body).__name__}")
        return dict(body)

    def _ingest(self, site_name: str, body: dict[str, Any]) -> dict[str, Any]:
        token = body.pop("Token", None)
        if not isinstance(token, str) or not token.strip():
            raise UploadRefused(401, "Token: required, the site's upload token (from `gridhub hub site add`)")
        try:
            site = self.auth.verify_site_token(token.strip())
        except Exception as exc:  # the identities live in the store too
            log.exception("MQTT upload bridge: site token could not be checked")
            raise UploadRefused(503, f"the hub store is unavailable ({type(exc).__name__}); retry later") from exc
        if site is None:
            raise UploadRefused(401, "Token: not a valid site token")
        if site.name != site_name:
            raise UploadRefused(
                401, f"Token: belongs to site {site.name!r}, not to {site_name!r} named in the topic; nothing stored"
            )
        try:
            batch = parse_batch(body)
        except BatchError as exc:
            raise UploadRefused(400, str(exc)) from None
        try:
            result = self.ingest.ingest(site.name, self.settings.upload_layer, batch)
        except Exception as exc:
            log.exception("MQTT upload bridge: site %s batch %r could not be stored", site.name, batch.batch)
            raise UploadRefused(503, f"the hub store is unavailable ({type(exc).__name__}); retry later") from exc
        return result.to_json()
