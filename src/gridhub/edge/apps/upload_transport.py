"""How the uploader hands a batch to the hub: HTTPS POST (default) or an MQTT bridge to a hub broker.

Both transports take the same batch (:func:`upload_body`) and give back the hub's answer, which is
sent only after the hub committed the batch: ``{"status": "success", "accepted": {IID: [IDs]},
"rejected": {IID: [{"ID", "error"}]}}``. :meth:`UploadTransport.post` turns it into the IDs the
uploader may mark uploaded. A failure that may pass raises :class:`TransportError` (the uploader
backs off and queries the same rows again), a batch the hub finds too large :class:`BatchTooLarge`.

The batch id is a digest of the rows' (table, ID, Timestamp): a retried batch has the same id, so
a late answer to an earlier attempt of the same rows is a valid answer to the retry (the hub's
ledger answers a re-sent row as accepted without storing it again).

**HTTP** (``transport = "http"``): ``POST <hub_url>/edge/v1/upload``, gzip, ``Authorization:
Bearer <site_token>`` and/or a client certificate (``tls_cert``/``tls_key``; ``tls_ca`` is the CA
the hub's server certificate is checked against, default the system's).

**MQTT** (``transport = "mqtt"``): the body, with the site token spliced in as ``"Token"`` and
gzipped when ``gzip`` is on, is published with QoS 1 to ``<topic_prefix>/<site>/batch``; the hub
answers on ``<topic_prefix>/<site>/ack/<batch>`` (QoS 1) after the commit, or with
``{"status": "error", "code": <HTTP-like code>, "message"}``. No answer within ``http_timeout``
(the hub is not subscribed, the broker dropped it...) is a TransportError: the same rows are sent
again later. See docs/upload.md.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import ssl
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gridhub.formats.lvcap import TableResult

if TYPE_CHECKING:
    from gridhub.edge.apps.uploader import UploaderSettings

__all__ = [
    "UPLOAD_PATH",
    "Acknowledgement",
    "BatchTooLarge",
    "HttpTransport",
    "MqttTransport",
    "TransportError",
    "UploadTransport",
    "batch_id",
    "open_transport",
    "upload_body",
]

log = logging.getLogger(__name__)

UPLOAD_PATH = "/edge/v1/upload"
QOS = 1


class TransportError(Exception):
    """The batch did not reach the hub or its answer did not come back; the message says why."""


class BatchTooLarge(Exception):
    """The hub refused the batch as too large (HTTP 413 or an error ack with code 413)."""


@dataclass(frozen=True)
class Acknowledgement:
    """The IDs per table the hub acknowledged (accepted or rejected), and how many it rejected."""

    rows: dict[str, list[int]]
    rejected: int


_ROW = b'{"ID":%d,"Timestamp":%d,"SubTopic":%s,"Data":%s}'


def upload_body(batch: str, results: list[TableResult]) -> bytes:
    """Return the POST /upload body: the rows per table, each stored Data spliced in byte for byte."""
    tables = []
    topics: dict[str, bytes] = {}  # each sub-topic's JSON string, encoded once (a batch has few of them)
    for result in results:
        if not result.rows:
            continue
        rows = []
        for row in result.rows:
            topic = topics.get(row.sub_topic)
            if topic is None:
                topic = topics[row.sub_topic] = json.dumps(row.sub_topic).encode()
            rows.append(_ROW % (row.id, row.timestamp, topic, row.data_raw))
        tables.append(b'{"TableName":%s,"TableRows":[%s]}' % (json.dumps(result.table_name).encode(), b",".join(rows)))
    return b'{"Batch":%s,"Tables":[%s]}' % (json.dumps(batch).encode(), b",".join(tables))


def batch_id(results: list[TableResult]) -> str:
    """Return the batch id of these rows: the same rows always get the same id."""
    digest = hashlib.sha256()
    for result in results:
        for row in result.rows:
            digest.update(b"%s\0%d\0%d\n" % (result.table_name.encode(), row.id, row.timestamp))
    return digest.hexdigest()[:32]


def acknowledged(results: list[TableResult], answer: Mapping[str, Any]) -> Acknowledgement:
    """Return the rows of this batch that a hub answer acknowledges (TransportError when it is unreadable)."""
    sent = {r.table_name: {row.id for row in r.rows} for r in results if r.rows}
    try:
        accepted = answer.get("accepted", {})
        rejected = answer.get("rejected", {})
        rows: dict[str, list[int]] = {}
        for table, ids in sent.items():
            got = {i for i in accepted.get(table, []) if isinstance(i, int)}
            for item in rejected.get(table, []):
                if isinstance(item, Mapping) and isinstance(item.get("ID"), int):
                    got.add(item["ID"])
            mine = sorted(i for i in ids if i in got)
            if mine:
                rows[table] = mine
        refused = sum(len(v) for v in rejected.values()) if isinstance(rejected, Mapping) else 0
    except (ValueError, AttributeError, TypeError) as exc:
        raise TransportError(f"the hub's answer is unreadable: {exc}") from None
    return Acknowledgement(rows, refused)


def client_ssl_context(settings: UploaderSettings) -> ssl.SSLContext:
    """Return a TLS 1.2+ client context: the hub's (or broker's) CA, and the site's certificate if any."""
    context = ssl.create_default_context(cafile=settings.tls_ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return context


class UploadTransport(ABC):
    """One way to the hub; ``post`` a batch, get back the rows the hub committed."""

    def __init__(self, settings: UploaderSettings) -> None:
        self.settings = settings

    def post(self, results: list[TableResult]) -> tuple[str, Acknowledgement]:
        """Send the rows as one batch and return its id and what the hub acknowledged (after its commit)."""
        batch = batch_id(results)
        answer = self.send(batch, upload_body(batch, results))
        return batch, acknowledged(results, answer)

    @abstractmethod
    def send(self, batch: str, body: bytes) -> Mapping[str, Any]:
        """Deliver one upload body and return the hub's success answer (TransportError, BatchTooLarge)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class HttpTransport(UploadTransport):
    """POST to the hub's upload face over HTTP(S), with a Bearer token and/or a client certificate."""

    def __init__(self, settings: UploaderSettings) -> None:
        super().__init__(settings)
        verify: ssl.SSLContext | bool = True  # httpx's default: the certifi CA bundle
        if settings.hub_url.startswith("https://") and (settings.tls_ca or settings.tls_cert):
            verify = client_ssl_context(settings)
        self.http = httpx.Client(verify=verify)

    def send(self, batch: str, body: bytes) -> Mapping[str, Any]:
        """POST the body and return the 200 answer."""
        settings = self.settings
        headers = {"Content-Type": "application/json"}
        if settings.site_token:
            headers["Authorization"] = f"Bearer {settings.site_token}"
        if settings.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self.http.post(settings.upload_url, content=body, headers=headers, timeout=settings.http_timeout)
        except httpx.HTTPError as exc:
            raise TransportError(f"hub {settings.hub_url} unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code == 413:
            raise BatchTooLarge(_reason(response))
        if response.status_code in (401, 403):
            what = "site_token" if not settings.tls_cert else "site_token / tls_cert"
            raise TransportError(
                f"hub refused the site's credentials (HTTP {response.status_code}: {_reason(response)}): check {what}"
            )
        if response.status_code != 200:
            raise TransportError(f"hub answered HTTP {response.status_code}: {_reason(response)}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise TransportError(f"hub answered 200 with an unreadable body: {exc}") from None
        if not isinstance(answer, Mapping):
            raise TransportError("hub answered 200 with a body that is not a JSON object")
        return answer

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()


class MqttTransport(UploadTransport):
    """Publish batches to the hub's broker and wait for the hub's ack on the batch's ack topic."""

    def __init__(self, settings: UploaderSettings, client_id: str) -> None:
        super().__init__(settings)
        url = urlsplit(settings.mqtt_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        base = f"{settings.topic_prefix}/{settings.site}"
        self.batch_topic = f"{base}/batch"
        self.ack_filter = f"{base}/ack/+"
        self._ack_prefix = f"{base}/ack/"
        self._lock = threading.Lock()
        self._answers: dict[str, threading.Event] = {}
        self._payloads: dict[str, bytes] = {}
        self._subscribed = threading.Event()
        self._started = False
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{client_id}-{uuid.uuid4().hex[:8]}", clean_session=True
        )
        if settings.mqtt_username:
            self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password or None)
        if url.scheme == "mqtts":
            self.client.tls_set_context(client_ssl_context(settings))
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(settings.retry_max)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- paho callbacks (network thread)
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        client.subscribe(self.ack_filter, qos=QOS)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._subscribed.clear()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if reasons and not reasons[0].is_failure:
            self._subscribed.set()
        else:
            log.warning("broker %s:%d refused the subscription to %s", self.host, self.port, self.ack_filter)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        batch = message.topic[len(self._ack_prefix) :] if message.topic.startswith(self._ack_prefix) else ""
        with self._lock:
            waiting = self._answers.get(batch)
            if waiting is not None and batch not in self._payloads:
                self._payloads[batch] = bytes(message.payload)
                waiting.set()

    # -- the transport
    def _connect(self) -> None:
        if not self._started:
            try:
                self.client.connect(self.host, self.port, keepalive=30)
            except (OSError, ssl.SSLError) as exc:
                raise TransportError(f"broker {self.settings.mqtt_url} unreachable: {exc}") from None
            self.client.loop_start()  # paho reconnects by itself from now on
            self._started = True
        if not self._subscribed.wait(self.settings.http_timeout):
            raise TransportError(f"broker {self.settings.mqtt_url}: not connected and subscribed to the acks")

    def send(self, batch: str, body: bytes) -> Mapping[str, Any]:
        """Publish the body and return the hub's success ack."""
        settings = self.settings
        self._connect()
        if settings.site_token:
            body = b'{"Token":%s,%s' % (json.dumps(settings.site_token).encode(), body[1:])
        if settings.gzip:
            body = gzip.compress(body, compresslevel=1)
        arrived = threading.Event()
        with self._lock:
            self._answers[batch] = arrived
            self._payloads.pop(batch, None)
        try:
            info = self.client.publish(self.batch_topic, body, qos=QOS)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise TransportError(f"broker {settings.mqtt_url}: publish failed ({paho.error_string(info.rc)})")
            if not arrived.wait(settings.http_timeout):
                raise TransportError(
                    f"no ack from the hub on {self._ack_prefix}{batch} within {settings.http_timeout:g} s "
                    f"(is the hub subscribed to {settings.mqtt_url}?)"
                )
        finally:
            with self._lock:
                self._answers.pop(batch, None)
                payload = self._payloads.pop(batch, b"")
        return _read_ack(payload, batch)

    def close(self) -> None:
        """Disconnect from the broker."""
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False


def _read_ack(payload: bytes, batch: str) -> Mapping[str, Any]:
    try:
        answer = json.loads(payload)
    except ValueError:
        raise TransportError(f"ack of batch {batch} is not JSON") from None
    if not isinstance(answer, Mapping):
        raise TransportError(f"ack of batch {batch} is not a JSON object")
    if answer.get("status") == "success":
        return answer
    code = answer.get("code")
    message = str(answer.get("message", ""))[:300]
    if code == 413:
        raise BatchTooLarge(message)
    if code in (401, 403):
        raise TransportError(f"hub refused the site's credentials ({code}: {message}): check site and site_token")
    raise TransportError(f"hub refused batch {batch} ({code}): {message}")


def open_transport(settings: UploaderSettings, client_id: str) -> UploadTransport:
    """Return the transport the settings name."""
    if settings.transport == "mqtt":
        return MqttTransport(settings, client_id)
    return HttpTransport(settings)


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return response.text[:200]
