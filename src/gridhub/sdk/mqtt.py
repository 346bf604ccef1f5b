"""The one MQTT client every gridhub component uses to talk to the Data Marketplace.

A thin layer over paho-mqtt 2.x (callback API version 2) that adds what LV-CAP services need:

- a bounded inbox and ONE dispatcher thread per client, so handlers run in arrival order and a
  slow handler never makes memory grow: a QoS 0 message that arrives to a full inbox is dropped
  and counted (the API itself says QoS 0 is "at most once"), while QoS 1/2 messages make the
  network thread wait instead (backpressure to the broker, nothing lost);
- optional manual acknowledgement: with ``manual_ack=True`` a QoS 1/2 message is acknowledged to
  the broker only after its handler has returned; with ``defer_ack=True`` only when the consumer
  calls ``message.ack()``, so the Data Storage Application can commit many messages in one
  transaction and acknowledge each only after that commit (``ack_many`` acknowledges a whole
  batch in one write to the socket);
- ``subscribe`` waits for the SUBACK and raises when the broker refuses the subscription
  (the marketplace's ACLs), and subscriptions are renewed after a reconnect;
- ``abort`` drops the connection without DISCONNECT so the broker publishes the will
  (section 8.1.3 Last Will and Testament), for tests and crash simulation.

paho-mqtt is used rather than an asyncio client because the runtime's services are threaded and
paho is the reference Python client the limits in ../shared/reference/limits.md were measured with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

DEFAULT_INBOX_SIZE = 10_000
_DISPATCH_BATCH = 256  # messages the dispatcher takes from the inbox at once (the bound is inbox_size + this)
_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type 4, remaining length 2, packet identifier
_PUBACK_TYPE = 0x40
_READ_CHUNK = 65536  # bytes the network thread asks the socket for at once
_MAX_ROUTES = 10_000  # topics whose handler lists are remembered (cleared whole when full)
KEEPALIVE_SECONDS = 30


class MarketplaceError(RuntimeError):
    """The broker refused a connection or subscription, or did not answer in time."""


@dataclass(frozen=True)
class TlsSettings:
    """TLS files for a marketplace connection (8.1: TLS 1.2+, X.509 client certificate)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class BrokerAddress:
    """Where and as whom to connect to the Data Marketplace."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrokerAddress:
        """Read the LVCAP_* variables the Container Manager gives every app it spawns."""
        env = os.environ if env is None else env
        tls = None
        if env.get("LVCAP_CA_FILE"):
            tls = TlsSettings(
                ca_file=Path(env["LVCAP_CA_FILE"]),
                cert_file=Path(env["LVCAP_CERT_FILE"]) if env.get("LVCAP_CERT_FILE") else None,
                key_file=Path(env["LVCAP_KEY_FILE"]) if env.get("LVCAP_KEY_FILE") else None,
            )
        port_text = env.get("LVCAP_BROKER_PORT", "8883" if tls else "1883")
        try:
            port = int(port_text)
        except ValueError:
            raise MarketplaceError(f"LVCAP_BROKER_PORT: expected a port number, got {port_text!r}") from None
        return cls(
            host=env.get("LVCAP_BROKER_HOST", "127.0.0.1"),
            port=port,
            username=env.get("LVCAP_USERNAME") or env.get("LVCAP_APID") or None,
            password=env.get("LVCAP_PASSWORD") or None,
            tls=tls,
        )


def _no_ack() -> None:
    return None


class _BufferedClient(paho.Client):
    """paho's Client, reading the socket in large chunks rather than a few bytes at a time.

    paho 2.x reads every packet with three ``recv`` calls (type byte, length byte, body) and
    takes one packet per ``select``: four system calls per incoming message, which made up about
    half of the network thread's time in the storage's ingest profile. Here ``_sock_recv`` serves
    those small reads from a buffer filled by one ``recv`` of up to 64 KiB, and ``loop_read``
    goes on handling packets while the buffer holds bytes, since ``select`` cannot see them.
    paho itself still parses and handles every packet; the buffer is dropped on reconnect.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rbuf = b""
        self._rpos = 0
        super().__init__(*args, **kwargs)

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(_READ_CHUNK)  # raises BlockingIOError when nothing is there
            pos = 0
            if len(buf) <= bufsize:  # all of it wanted, or b"" (connection closed)
                self._rbuf, self._rpos = b"", 0
                return buf
        chunk = buf[pos : pos + bufsize]
        pos += len(chunk)
        if pos >= len(buf):
            self._rbuf, self._rpos = b"", 0
        else:
            self._rbuf, self._rpos = buf, pos
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._rpos < len(self._rbuf) and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # bytes of the previous connection
        return super().reconnect()


class _Ack:
    """The ``ack`` of a QoS 1/2 message of a ``defer_ack`` client: acknowledges it once.

    A slotted object rather than a closure with an Event: one is made per message on the
    network thread, and ``MarketplaceClient.ack_many`` recognises it to batch the PUBACKs.
    """

    __slots__ = ("_client", "_once", "mid", "qos")

    def __init__(self, client: paho.Client, mid: int, qos: int) -> None:
        self._client = client
        self.mid = mid
        self.qos = qos
        self._once = [True]  # list.pop() is atomic: exactly one caller wins

    def claim(self) -> bool:
        """Mark the message acknowledged; True for the one caller who must send the ack."""
        try:
            self._once.pop()
        except IndexError:
            return False
        return True

    def __call__(self) -> None:
        if self.claim():
            self._client.ack(self.mid, self.qos)


@dataclass(frozen=True, slots=True)
class Message:
    """One message received from the marketplace.

    With a client made with ``defer_ack=True``, ``ack()`` acknowledges a QoS 1/2 message to
    the broker; the consumer calls it once the message is safe (e.g. committed). Otherwise
    ``ack()`` does nothing: the client acknowledges by itself.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    ack: Callable[[], None] = field(default=_no_ack, compare=False, repr=False)


@dataclass(frozen=True)
class Will:
    """The Last Will and Testament the broker publishes if the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class ClientStats:
    """Counters of one client: what arrived, what handlers saw, what was dropped."""

    received: int
    handled: int
    dropped: int
    handler_errors: int
    queue_depth: int


Handler = Callable[[Message], None]


@dataclass
class _Subscription:
    qos: int
    handler: Handler
    inline: bool


_Item = tuple[Message, list[Handler], int] | None  # None: the dispatcher's stop sentinel


class MarketplaceClient:
    """A connection to the Data Marketplace with a bounded inbox and one dispatcher thread."""

    def __init__(
        self,
        client_id: str,
        address: BrokerAddress,
        *,
        will: Will | None = None,
        inbox_size: int = DEFAULT_INBOX_SIZE,
        clean_session: bool = True,
        manual_ack: bool = False,
        defer_ack: bool = False,
    ) -> None:
        self.client_id = client_id
        self.address = address
        manual_ack = manual_ack or defer_ack
        self._manual_ack = manual_ack
        self._defer_ack = defer_ack
        self._client = _BufferedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            manual_ack=manual_ack,
        )
        if address.username is not None:
            self._client.username_pw_set(address.username, address.password)
        if address.tls is not None:
            self._client.tls_set_context(_tls_context(address.tls))
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        # The inbox: a deque under one lock, with two conditions (as queue.Queue), but the
        # dispatcher takes up to _DISPATCH_BATCH messages per wake-up and each side is notified
        # only when the other one waits.
        self._inbox: deque[_Item] = deque()
        self._inbox_size = max(1, inbox_size)
        self._inbox_lock = threading.Lock()
        self._not_empty = threading.Condition(self._inbox_lock)
        self._not_full = threading.Condition(self._inbox_lock)
        self._dispatcher_waiting = False
        self._producers_waiting = 0
        self._after_batch: Callable[[], None] | None = None
        self._subscriptions: dict[str, _Subscription] = {}
        self._routes: dict[str, tuple[list[Handler], list[Handler]]] = {}
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._connect_error: str | None = None
        self._suback: dict[int, tuple[threading.Event, list[ReasonCode]]] = {}
        self._received = 0
        self._handled = 0
        self._dropped = 0
        self._handler_errors = 0
        self._last_drop_log = 0.0
        self._dispatcher: threading.Thread | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect and wait for the broker's CONNACK."""
        if self._started:
            return
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"mqtt-dispatch-{self.client_id}", daemon=True)
        self._dispatcher.start()
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=KEEPALIVE_SECONDS)
        except (OSError, ssl.SSLError) as exc:
            self._stop_dispatcher()
            raise MarketplaceError(
                f"cannot reach the marketplace at {self.address.host}:{self.address.port}: {exc}"
            ) from exc
        self._client.loop_start()
        self._started = True
        if not self._connack.wait(timeout):
            self.stop()
            raise MarketplaceError(f"no CONNACK from {self.address.host}:{self.address.port} within {timeout:g} s")
        if self._connect_error is not None:
            error = self._connect_error
            self.stop()
            raise MarketplaceError(
                f"marketplace at {self.address.host}:{self.address.port} refused {self.client_id!r}: {error}"
            )
        with self._lock:
            declared = [(topic, sub.qos) for topic, sub in self._subscriptions.items()]
        for topic_filter, qos in declared:
            self._check_suback(topic_filter, self._subscribe_and_wait(topic_filter, qos, timeout))

    def stop(self) -> None:
        """Disconnect cleanly (the broker does not publish the will) and stop the threads."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
        self._stop_dispatcher()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the will."""
        if self._started:
            sock = self._client.socket()
            # Stop paho from reconnecting or sending DISCONNECT, then cut the socket.
            self._client._thread_terminate = True
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._client.loop_stop()
            self._started = False
        self._stop_dispatcher()

    @property
    def connected(self) -> bool:
        """Tell whether the client currently holds a connection."""
        return bool(self._client.is_connected())

    @property
    def stats(self) -> ClientStats:
        """Counters since start."""
        return ClientStats(
            received=self._received,
            handled=self._handled,
            dropped=self._dropped,
            handler_errors=self._handler_errors,
            queue_depth=len(self._inbox),
        )

    def set_after_batch(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` on the dispatcher thread after each run of queued messages.

        The dispatcher takes the messages waiting in the inbox together (up to a few hundred)
        and runs their handlers one by one, in arrival order; then it calls ``callback``, so a
        consumer can hand the work its handlers gathered to another thread in one piece. It is
        called before the dispatcher waits for more messages, so nothing stays gathered while
        the inbox is empty.
        """
        self._after_batch = callback

    def ack_many(self, acks: Iterable[Callable[[], None]]) -> None:
        """Call ``message.ack`` for many messages, writing their QoS 1 PUBACKs in one packet.

        Acknowledging one by one queues a packet and wakes the network thread for each message;
        here the PUBACKs of this client's QoS 1 messages are joined into one write. Each message is
        still acknowledged at most once, and any other ``ack`` is simply called.
        """
        mids: list[int] = []
        for ack in acks:
            if isinstance(ack, _Ack) and ack.qos == 1 and ack._client is self._client:
                if ack.claim():
                    mids.append(ack.mid)
            else:
                ack()
        if not mids:
            return
        queue_packet = getattr(self._client, "_packet_queue", None)
        if queue_packet is not None:
            packet = b"".join([_PUBACK.pack(_PUBACK_TYPE, 2, mid) for mid in mids])
            try:
                queue_packet(_PUBACK_TYPE, packet, 0, 0)
                return
            except TypeError:  # a paho whose internals differ: acknowledge one by one
                pass
        for mid in mids:
            self._client.ack(mid, 1)

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        qos: int,
        handler: Handler,
        timeout: float = 10.0,
        *,
        inline: bool = False,
    ) -> None:
        """Subscribe and wait for the SUBACK; raise MarketplaceError when refused.

        Called before ``start()``, it only declares the subscription: its handler is in place
        before the first message of a persistent session is redelivered, and ``start()`` sends
        it and checks the SUBACK.
        ``inline=True`` runs the handler on the network thread instead of the dispatcher: only
        for quick, non-blocking handlers (e.g. routing a response to a thread that waits for
        it while the dispatcher is busy in another handler).
        """
        with self._lock:
            self._subscriptions[topic_filter] = _Subscription(qos, handler, inline)
            self._routes.clear()
        if not self._started:
            return
        self._check_suback(topic_filter, self._subscribe_and_wait(topic_filter, qos, timeout))

    def _check_suback(self, topic_filter: str, codes: list[ReasonCode]) -> None:
        if any(code.is_failure for code in codes):
            with self._lock:
                self._subscriptions.pop(topic_filter, None)
                self._routes.clear()
            raise MarketplaceError(f"marketplace refused subscription of {self.client_id!r} to {topic_filter!r}")

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving a topic filter."""
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
            self._routes.clear()
        self._client.unsubscribe(topic_filter)

    def _subscribe_and_wait(self, topic_filter: str, qos: int, timeout: float) -> list[ReasonCode]:
        event = threading.Event()
        codes: list[ReasonCode] = []
        with self._lock:
            result, mid = self._client.subscribe(topic_filter, qos)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise MarketplaceError(f"cannot subscribe to {topic_filter!r}: {paho.error_string(result)}")
            self._suback[mid] = (event, codes)
        if not event.wait(timeout):
            with self._lock:
                self._suback.pop(mid, None)
            raise MarketplaceError(f"no SUBACK for {topic_filter!r} within {timeout:g} s")
        return codes

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | Mapping[str, Any],
        qos: int = 1,
        retain: bool = False,
        wait: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Publish bytes, or a mapping as compact JSON (4.3); wait=True blocks until acknowledged."""
        body = payload if isinstance(payload, bytes | bytearray) else _compact_json(payload)
        info = self._client.publish(topic, bytes(body), qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MarketplaceError(f"cannot publish on {topic!r}: {paho.error_string(info.rc)}")
        if wait:
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                raise MarketplaceError(f"publish on {topic!r} not delivered: {exc}") from exc
            if not info.is_published():
                raise MarketplaceError(f"publish on {topic!r} not acknowledged within {timeout:g} s")

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
            # A refused client must not keep retrying with the same credentials.
            client.disconnect()
            self._connack.set()
            return
        self._connect_error = None
        # Nagle's algorithm holds a small publish until the previous one is acknowledged by
        # TCP (tens of ms of delayed ACK); LV-CAP messages are small and latency matters.
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = not self._connack.is_set()
        self._connack.set()
        if not first:
            log.info("%s reconnected to the marketplace", self.client_id)
            with self._lock:
                renew = [(topic, sub.qos) for topic, sub in self._subscriptions.items()]
            for topic, qos in renew:
                client.subscribe(topic, qos)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure and self._started:
            log.warning("%s lost the marketplace connection (%s); reconnecting", self.client_id, reason_code)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: object,
    ) -> None:
        with self._lock:
            waiter = self._suback.pop(mid, None)
        if waiter is not None:
            event, codes = waiter
            codes.extend(reason_codes)
            event.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self._received += 1
        qos = msg.qos
        topic = msg.topic
        ack = _Ack(client, msg.mid, qos) if self._defer_ack and qos > 0 else _no_ack
        message = Message(topic, bytes(msg.payload), qos, bool(msg.retain), ack)
        inline, queued = self._route(topic)
        for handler in inline:
            self._call(handler, message)
        if not queued:
            if self._manual_ack and qos > 0:
                client.ack(msg.mid, qos)
            return
        item: _Item = (message, queued, msg.mid)
        with self._inbox_lock:
            inbox = self._inbox
            if len(inbox) >= self._inbox_size:
                if qos == 0:
                    self._drop()
                    return
                # Backpressure: QoS 1/2 wait for room rather than being lost.
                self._producers_waiting += 1
                try:
                    while len(inbox) >= self._inbox_size:
                        self._not_full.wait()
                finally:
                    self._producers_waiting -= 1
            inbox.append(item)
            if self._dispatcher_waiting:
                self._not_empty.notify()

    def _drop(self) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            log.warning("%s inbox full: dropping QoS 0 messages (%d dropped so far)", self.client_id, self._dropped)

    def _route(self, topic: str) -> tuple[list[Handler], list[Handler]]:
        # Matching every filter on every message cost ~10% of the storage's CPU (paho builds a
        # matcher per call): remember the handlers per topic until the subscriptions change.
        routes = self._routes.get(topic)  # the dict is only cleared or filled: a lookup needs no lock
        if routes is not None:
            return routes
        with self._lock:
            routes = self._routes.get(topic)
            if routes is None:
                inline: list[Handler] = []
                queued: list[Handler] = []
                for topic_filter, sub in self._subscriptions.items():
                    if paho.topic_matches_sub(topic_filter, topic):
                        (inline if sub.inline else queued).append(sub.handler)
                if len(self._routes) >= _MAX_ROUTES:
                    self._routes.clear()
                routes = self._routes[topic] = (inline, queued)
        return routes

    # -- dispatcher thread -----------------------------------------------------------------

    def _take(self) -> list[_Item]:
        """Wait for messages; take up to _DISPATCH_BATCH of them from the inbox."""
        with self._inbox_lock:
            inbox = self._inbox
            if not inbox:
                self._dispatcher_waiting = True
                try:
                    while not inbox:
                        self._not_empty.wait()
                finally:
                    self._dispatcher_waiting = False
            if len(inbox) <= _DISPATCH_BATCH:
                items = list(inbox)
                inbox.clear()
            else:
                popleft = inbox.popleft
                items = [popleft() for _ in range(_DISPATCH_BATCH)]
            if self._producers_waiting:
                self._not_full.notify_all()
        return items

    def _dispatch(self) -> None:
        ack_after_handler = self._manual_ack and not self._defer_ack
        while True:
            for item in self._take():
                if item is None:  # stop sentinel
                    self._batch_done()
                    return
                message, handlers, mid = item
                for handler in handlers:
                    self._call(handler, message)
                if ack_after_handler and message.qos > 0:
                    self._client.ack(mid, message.qos)
            self._batch_done()

    def _batch_done(self) -> None:
        callback = self._after_batch
        if callback is None:
            return
        try:
            callback()
        except Exception:
            self._handler_errors += 1
            log.exception("%s: after-batch callback failed", self.client_id)

    def _call(self, handler: Handler, message: Message) -> None:
        try:
            handler(message)
        except Exception:
            self._handler_errors += 1
            log.exception("%s: handler for %s failed", self.client_id, message.topic)
        finally:
            self._handled += 1

    def _stop_dispatcher(self) -> None:
        thread = self._dispatcher
        if thread is None:
            return
        self._dispatcher = None
        with self._inbox_lock:
            # The sentinel goes in whatever the inbox holds (one past its bound), after the
            # messages already queued: the dispatcher handles those, then stops.
            self._inbox.append(None)
            self._not_empty.notify()
        if thread is not threading.current_thread():
            thread.join(timeout=10)


def _compact_json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return context
