"""The base class for LV-CAP apps: subclass `App`, fill in a few hooks, call `MyApp.main()`.

`App.run()` does what every LV-CAP Application must do (Annex 4, sections 5.2, 5.3, 6 and 8.2):
connect to the Data Marketplace with client id = username = APID and a Last Will on
status/response/<IID> saying STATUS_MSG_FAIL (8.1.3); subscribe to status/request,
config/response/<IID> and command/<IID>; request the configuration; hand the ContainerConfig to
``configure()``; answer status requests; obey the shut-down command and SIGTERM. The app only
writes what is its own: how to read its configuration and what to do with its data.

Example: an algorithm app that converts a temperature from a sensor into an alarm flag::

    from typing import Any

    from gridhub.sdk import App, ConfigurationError, ScalarObject

    class OverTemperature(App):
        role = "algorithm"

        def configure(self, config: dict[str, Any]) -> None:
            try:
                self.source = str(config["input"])
                self.limit = float(config["limit"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"ContainerConfig: need input and limit ({exc})") from exc

        def start(self) -> None:
            self.subscribe(self.source, self.on_reading)

        def on_reading(self, topic: str, reading: object) -> None:
            if not isinstance(reading, ScalarObject):
                return
            alarm = reading.valid and float(reading.value) > self.limit
            # Use the input's timestamp (4.5) and pass its validity on (4.8).
            self.publish_scalar("alarm", alarm, timestamp=reading.timestamp,
                                valid=reading.valid, to_store=True, priority=1)

    if __name__ == "__main__":
        OverTemperature.main()

Threads: ``configure``, ``start``, ``stop`` and ``every`` callbacks run on the thread that
called ``run()``; input handlers and ``health()`` run on the MQTT client's dispatcher thread,
one message at a time in arrival order.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Literal, NoReturn, TypeAlias

from gridhub.formats.lvcap import (
    QOS_ALGORITHM,
    QOS_COMMAND,
    QOS_CONFIG,
    QOS_ERROR,
    QOS_NEWDATA,
    QOS_SENSOR,
    QOS_STATUS_REQUEST,
    QOS_STATUS_RESPONSE,
    QOS_STORAGE_DATA,
    QOS_STORAGE_REQUEST,
    QOS_STORAGE_RESPONSE,
    QOS_UPLOADED,
    AppConfiguration,
    AppId,
    CommandCode,
    CommandMessage,
    ConfigRequest,
    ConfigResponse,
    CoordinateObject,
    Errno,
    ErrorReport,
    LvcapError,
    MetadataObject,
    QueryResponse,
    ScalarObject,
    SeriesObject,
    StatusCode,
    StatusResponse,
    StorageQuery,
    UploadedNotice,
    algorithm_data_topic,
    command_topic,
    config_request_topic,
    config_response_topic,
    decode_json_object,
    encode_json,
    is_legacy_guid,
    newdata_request_topic,
    newdata_response_topic,
    parse_standard_object,
    sensor_data_topic,
    status_request_topic,
    status_response_topic,
    storage_data_topic,
    storage_error_topic,
    storage_request_topic,
    storage_response_topic,
    uploaded_topic,
    validate_iid,
    validate_topic_filter,
)
from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient, MarketplaceError, Message, Will

log = logging.getLogger(__name__)

Role: TypeAlias = Literal["sensor", "algorithm"]
StandardObject: TypeAlias = ScalarObject | SeriesObject | CoordinateObject
Input: TypeAlias = ScalarObject | SeriesObject | CoordinateObject | MetadataObject | dict[str, Any]
InputHandler: TypeAlias = Callable[[str, Input], None]

DEFAULT_QUERY_TIMEOUT = 30.0
"""Seconds to wait for the Data Storage Application (8.5: "an exceptional time-out")."""

_STANDARD_KEYS = frozenset({"Value", "Coordinates", "StartPoint", "Interval"})
_NOTHING = object()


class ConfigurationError(ValueError):
    """The ContainerConfig cannot be used; the message says which key is wrong and why."""


def now() -> int:
    """Return the current LV-CAP timestamp: whole seconds since 1970-01-01 UTC (4.5)."""
    return int(time.time())


@dataclass
class _Timer:
    interval: float
    callback: Callable[[], None]
    due: float


class _Exchange:
    """One request/response API of the Data Storage Application (8.5, 8.6); not re-entrant."""

    def __init__(self, request_topic: str, request_qos: int, response_topic: str, response_qos: int) -> None:
        self.request_topic = request_topic
        self.request_qos = request_qos
        self.response_topic = response_topic
        self.response_qos = response_qos
        self.lock = threading.Lock()
        self.subscribed = False
        self.waiting = False
        self.answers: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def on_response(self, message: Message) -> None:
        # Runs on the network thread, so a query made from an input handler still gets its answer.
        if self.waiting:
            self.answers.put(message.payload)
        else:
            log.warning("%s: answer arrived with no request waiting; ignored", message.topic)

    def drain(self) -> None:
        while True:
            try:
                self.answers.get_nowait()
            except queue.Empty:
                return


class App:
    """An LV-CAP Application: subclass it and override the hooks you need.

    Identity comes from the arguments or, when they are omitted, from the environment the
    Container Manager sets (LVCAP_IID, LVCAP_APID, LVCAP_BROKER_*, LVCAP_DATA_DIR...).
    """

    role: ClassVar[Role] = "sensor"
    """Default role for the publish helpers: outputs go to sensor/data/<IID> or algorithm/data/<IID>."""

    connect_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        iid: str | None = None,
        apid: str | None = None,
        *,
        broker: BrokerAddress | None = None,
        data_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.iid: str = _resolve_iid(iid, env)
        self.apid: str = _resolve_apid(apid, env)
        # Table 4: the client id is the APID; a further instance of the same app gets its own
        # from the manager (LVCAP_CLIENT_ID), since MQTT allows one connection per client id.
        self.client_id: str = env.get("LVCAP_CLIENT_ID") or self.apid
        address = broker if broker is not None else BrokerAddress.from_env(env)
        if address.username is None:
            # Table 4: the username is the Application ID.
            address = dataclasses.replace(address, username=self.apid)
        self.broker: BrokerAddress = address
        data_text = str(data_dir) if data_dir is not None else env.get("LVCAP_DATA_DIR", "")
        self._data_dir = Path(data_text) if data_text else Path.cwd() / "lvcap-data" / self.iid
        self._status = StatusCode.INITIAL
        self._started = False
        self._stopping = False
        self._config: dict[str, Any] | None = None
        self._refused: object = _NOTHING
        self._client: MarketplaceClient | None = None
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._inputs: dict[str, tuple[int, Callable[[Message], None]]] = {}
        self._timers: list[_Timer] = []
        self._storage = _Exchange(
            storage_request_topic(self.iid),
            QOS_STORAGE_REQUEST,
            storage_response_topic(self.iid),
            QOS_STORAGE_RESPONSE,
        )
        self._newdata = _Exchange(
            newdata_request_topic(self.iid), QOS_NEWDATA, newdata_response_topic(self.iid), QOS_NEWDATA
        )

    # -- hooks -----------------------------------------------------------------------------

    def configure(self, config: dict[str, Any]) -> None:
        """Check and apply the ContainerConfig; raise ConfigurationError if it is unusable.

        Called once before ``start()`` and again whenever the Container Manager pushes a new
        configuration. Check everything before changing any state: after a ConfigurationError
        the app keeps its previous configuration.
        """

    def start(self) -> None:
        """Begin normal operation (subscribe to inputs, start timers); return promptly."""

    def stop(self) -> None:
        """Finish work before shutting down or restarting (save state, flush output)."""

    def health(self) -> tuple[StatusCode, str | None]:
        """Report the running app's status for status/request (MSG_OK, or MSG_FAIL and why)."""
        return StatusCode.MSG_OK, None

    # -- running ---------------------------------------------------------------------------

    @classmethod
    def main(cls) -> NoReturn:
        """Run the app from the LVCAP_* environment and exit: 0 after a clean stop, 1 on failure."""
        level = os.environ.get("LVCAP_LOG_LEVEL", "INFO").upper()
        if not isinstance(logging.getLevelName(level), int):
            level = "INFO"
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            app = cls()
        except ValueError as exc:
            log.error("%s cannot start: %s", cls.__name__, exc)
            sys.exit(1)
        try:
            app.run()
        except MarketplaceError as exc:
            log.error("%s: %s", app.iid, exc)
            sys.exit(1)
        except Exception:
            log.exception("%s failed", app.iid)
            sys.exit(1)
        sys.exit(0)

    def run(self) -> StatusCode:
        """Start up as section 5.2 says, run until shut down, and return the final status.

        Returns STATUS_SHUT_DWN after a shutdown command, SIGTERM/SIGINT or request_shutdown(),
        STATUS_RESTART after request_restart(). Raises MarketplaceError when the marketplace
        cannot be reached or refuses the app, and re-raises an exception from ``start()`` after
        reporting STATUS_MSG_FAIL.
        """
        if self._client is not None:
            raise RuntimeError(f"{self.iid}: run() is already running")
        will = StatusResponse(status=int(StatusCode.MSG_FAIL), message=f"{self.iid} disconnected unexpectedly")
        client = MarketplaceClient(
            self.client_id,
            self.broker,
            will=Will(status_response_topic(self.iid), encode_json(will.to_json()), qos=QOS_STATUS_RESPONSE),
        )
        self._client = client
        self._status = StatusCode.INITIAL
        self._started = False
        self._stopping = False
        self._config = None
        self._refused = _NOTHING
        restore_signals = self._install_signal_handlers()
        try:
            client.start(timeout=self.connect_timeout)
            log.info("%s connected to the marketplace at %s:%s", self.iid, self.broker.host, self.broker.port)
            client.subscribe(status_request_topic(), QOS_STATUS_REQUEST, self._on_status_request)
            client.subscribe(config_response_topic(self.iid), QOS_CONFIG, self._on_config)
            client.subscribe(command_topic(self.iid), QOS_COMMAND, self._on_command)
            for topic_filter, (qos, deliver) in list(self._inputs.items()):
                client.subscribe(topic_filter, qos, deliver)
            request = ConfigRequest(timestamp=now())
            client.publish(config_request_topic(self.iid), request.to_json(), qos=QOS_CONFIG)
            log.info("%s requested its configuration", self.iid)
            return self._loop()
        finally:
            restore_signals()
            client.stop()
            self._client = None

    def request_shutdown(self, message: str | None = None) -> None:
        """Ask run() to stop the app for good (section 6): stop(), then STATUS_SHUT_DWN."""
        self._events.put(("finish", (StatusCode.SHUT_DWN, message)))

    def request_restart(self, message: str | None = None) -> None:
        """Ask run() to stop the app and have the Container Manager start it again (STATUS_RESTART)."""
        self._events.put(("finish", (StatusCode.RESTART, message)))

    def every(self, interval: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` every ``interval`` seconds on the run() thread, first one interval from now.

        Intervals start when this is called (8.3.1: from when the configuration arrived, not
        aligned to the clock face). An exception is logged and reported as ERRNO_APPLICATION.
        """
        if not interval > 0:
            raise ValueError(f"every(): interval must be a positive number of seconds, got {interval!r}")
        self._timers.append(_Timer(float(interval), callback, time.monotonic() + interval))

    @property
    def status(self) -> StatusCode:
        """The app's own status: INITIAL until configured, MSG_OK while running, then SHUT_DWN/RESTART."""
        return self._status

    @property
    def running(self) -> bool:
        """Tell whether the app is configured and operating (start() done, no shutdown begun)."""
        return self._started and not self._stopping

    @property
    def client(self) -> MarketplaceClient:
        """The marketplace connection of the current run() (for what the helpers do not cover)."""
        client = self._client
        if client is None:
            raise RuntimeError(f"{self.iid} is not connected: call run() first")
        return client

    @property
    def data_dir(self) -> Path:
        """The app's private persistent folder (4.7), from LVCAP_DATA_DIR; created on first use."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    # -- publishing ------------------------------------------------------------------------

    def publish_scalar(
        self,
        sub_topic: str,
        value: bool | int | float,
        *,
        timestamp: int | None = None,
        valid: bool = True,
        to_store: bool | None = None,
        priority: int | None = None,
        role: Role | None = None,
    ) -> ScalarObject:
        """Publish a Scalar Object (9.1) on sensor/data/<IID>/<sub_topic> or algorithm/data/...

        Pass the timestamp of the input the value was computed from (4.5); it defaults to now.
        """
        obj = ScalarObject(
            timestamp=now() if timestamp is None else timestamp,
            value=value,
            valid=valid,
            to_store=to_store,
            priority=priority,
        )
        self.publish_object(sub_topic, obj, role=role)
        return obj

    def publish_series(
        self,
        sub_topic: str,
        values: Sequence[Any],
        *,
        start_point: int | float,
        interval: float,
        timestamp: int | None = None,
        valid: bool = True,
        confidence: Sequence[Any] | None = None,
        timestamp_start: int | None = None,
        timestamp_end: int | None = None,
        to_store: bool | None = None,
        priority: int | None = None,
        role: Role | None = None,
    ) -> SeriesObject:
        """Publish a Series Object (9.2): values from start_point every interval."""
        obj = SeriesObject(
            timestamp=now() if timestamp is None else timestamp,
            start_point=start_point,
            interval=interval,
            value=list(values),
            valid=valid,
            confidence=None if confidence is None else list(confidence),
            timestamp_start=timestamp_start,
            timestamp_end=timestamp_end,
            to_store=to_store,
            priority=priority,
        )
        self.publish_object(sub_topic, obj, role=role)
        return obj

    def publish_coordinates(
        self,
        sub_topic: str,
        coordinates: Sequence[int | float],
        *,
        timestamp: int | None = None,
        system: str | None = None,
        valid: bool = True,
        to_store: bool | None = None,
        priority: int | None = None,
        role: Role | None = None,
    ) -> CoordinateObject:
        """Publish a Co-ordinate Object (9.3), e.g. a WGS84 position or a P/Q vector."""
        obj = CoordinateObject(
            timestamp=now() if timestamp is None else timestamp,
            coordinates=list(coordinates),
            valid=valid,
            system=system,
            to_store=to_store,
            priority=priority,
        )
        self.publish_object(sub_topic, obj, role=role)
        return obj

    def publish_object(
        self, sub_topic: str, obj: StandardObject | Mapping[str, Any], *, role: Role | None = None
    ) -> None:
        """Publish a standard object or any JSON object (8.4) on this app's data topic, QoS 1."""
        role = self.role if role is None else role
        topic = self.data_topic(sub_topic, role=role)
        payload = obj.to_json() if isinstance(obj, ScalarObject | SeriesObject | CoordinateObject) else obj
        qos = QOS_SENSOR if role == "sensor" else QOS_ALGORITHM
        self.client.publish(topic, encode_json(payload), qos=qos, retain=False)

    def publish_metadata(self, sub_topic: str, metadata: MetadataObject, *, role: Role | None = None) -> None:
        """Publish a Data Series Metadata Object (9.4) on <data topic>/meta, retained."""
        meta_sub = f"{sub_topic}/meta" if sub_topic else "meta"
        topic = self.data_topic(meta_sub, role=role)
        qos = QOS_SENSOR if (self.role if role is None else role) == "sensor" else QOS_ALGORITHM
        self.client.publish(topic, encode_json(metadata.to_json()), qos=qos, retain=True)

    def data_topic(self, sub_topic: str = "", *, role: Role | None = None) -> str:
        """Return sensor/data/<IID>/<sub_topic> or algorithm/data/<IID>/<sub_topic> (validated)."""
        role = self.role if role is None else role
        if role == "sensor":
            return sensor_data_topic(self.iid, sub_topic)
        if role == "algorithm":
            return algorithm_data_topic(self.iid, sub_topic)
        raise ValueError(f"role: expected 'sensor' or 'algorithm', got {role!r}")

    def store(self, sub_topic: str, payload: StandardObject | Mapping[str, Any]) -> None:
        """Store a JSON object in this app's table of the Data Storage Application (8.6), QoS 2."""
        topic = storage_data_topic(self.iid, sub_topic)
        body = payload.to_json() if isinstance(payload, ScalarObject | SeriesObject | CoordinateObject) else payload
        self.client.publish(topic, encode_json(body), qos=QOS_STORAGE_DATA, retain=False)

    def report_error(self, errno: Errno | int, message: str | None = None) -> None:
        """Log an error to the Data Storage Application on storage/data/error/<IID> (8.2.4)."""
        log.warning("%s reports error %s: %s", self.iid, _errno_name(errno), message)
        report = ErrorReport(errno=int(errno), message=message, timestamp=now())
        self.client.publish(storage_error_topic(self.iid), encode_json(report.to_json()), qos=QOS_ERROR)

    # -- inputs ----------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: InputHandler, *, qos: int = 1, raw: bool = False) -> None:
        """Call ``handler(topic, obj)`` for each message on ``topic_filter``.

        ``obj`` is a ScalarObject, SeriesObject or CoordinateObject when the payload is one, a
        MetadataObject on a .../meta topic, otherwise the JSON object as a dict (always the dict
        with ``raw=True``). Invalid JSON is reported as ERRNO_JSON_INVALID and a malformed
        standard object as ERRNO_SENSOR (8.2.4); the handler is not called for either. An
        exception in the handler is reported as ERRNO_MQTT_CALLBACK.
        """
        validate_topic_filter(topic_filter)

        def deliver(message: Message) -> None:
            self._deliver(handler, message, raw)

        self._inputs[topic_filter] = (qos, deliver)
        if self._client is not None:
            try:
                self._client.subscribe(topic_filter, qos, deliver)
            except MarketplaceError as exc:
                del self._inputs[topic_filter]
                self.report_error(Errno.MQTT_SUBSCRIPTION, str(exc))
                raise

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving an input topic filter."""
        if self._inputs.pop(topic_filter, None) is not None and self._client is not None:
            self._client.unsubscribe(topic_filter)

    def _deliver(self, handler: InputHandler, message: Message, raw: bool) -> None:
        try:
            data = decode_json_object(message.payload, where=message.topic)
        except LvcapError as exc:
            self.report_error(Errno.JSON_INVALID, str(exc))
            return
        obj: Input = data
        if not raw:
            try:
                obj = _parse_input(message.topic, data)
            except LvcapError as exc:
                self.report_error(Errno.SENSOR, str(exc))
                return
        try:
            handler(message.topic, obj)
        except Exception as exc:
            log.exception("%s: input handler for %s failed", self.iid, message.topic)
            self.report_error(Errno.MQTT_CALLBACK, f"handler for {message.topic} failed: {type(exc).__name__}: {exc}")

    # -- Data Storage and Data Upload APIs -------------------------------------------------

    def query_storage(self, query: StorageQuery | None = None, timeout: float = DEFAULT_QUERY_TIMEOUT) -> QueryResponse:
        """Ask the Data Storage Application for stored records (8.6) and wait for the answer.

        Subscribes to storage/response/<IID> before publishing on storage/request/<IID>. One
        query at a time (the API is not re-entrant): concurrent callers wait their turn.
        Raises TimeoutError when no answer arrives in ``timeout`` seconds, LvcapError when the
        answer is not a valid response object. Responses carry no request id: an answer that comes
        after its query timed out is dropped if it arrives before the next query is sent.
        """
        return self._query(self._storage, query, timeout)

    def query_newdata(self, query: StorageQuery | None = None, timeout: float = DEFAULT_QUERY_TIMEOUT) -> QueryResponse:
        """Ask for records waiting for upload by this app (8.5, storage/request/newdata/<IID>)."""
        return self._query(self._newdata, query, timeout)

    def mark_uploaded(self, uploaded: Mapping[str, Iterable[int]] | UploadedNotice, *, timeout: float = 10.0) -> None:
        """Tell the Data Storage Application which records were uploaded ({IID: [ID, ...]})."""
        if isinstance(uploaded, UploadedNotice):
            notice = uploaded
        else:
            notice = UploadedNotice(
                new_data=[(iid, [int(i) for i in ids]) for iid, ids in uploaded.items()], timestamp=now()
            )
        self.client.publish(
            uploaded_topic(self.iid), encode_json(notice.to_json()), qos=QOS_UPLOADED, wait=True, timeout=timeout
        )

    def _query(self, exchange: _Exchange, query: StorageQuery | None, timeout: float) -> QueryResponse:
        client = self.client
        if query is None:
            query = StorageQuery()
        if query.timestamp is None:
            query = dataclasses.replace(query, timestamp=now())
        deadline = time.monotonic() + timeout
        with exchange.lock:
            if not exchange.subscribed:
                client.subscribe(exchange.response_topic, exchange.response_qos, exchange.on_response, inline=True)
                exchange.subscribed = True
            exchange.drain()
            exchange.waiting = True
            try:
                client.publish(
                    exchange.request_topic,
                    encode_json(query.to_json()),
                    qos=exchange.request_qos,
                    wait=True,
                    timeout=timeout,
                )
                try:
                    payload = exchange.answers.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(
                        f"{self.iid}: no answer on {exchange.response_topic} within {timeout:g} s"
                    ) from None
            finally:
                exchange.waiting = False
        data = decode_json_object(payload, where=exchange.response_topic)
        return QueryResponse.from_json(data, where=exchange.response_topic)

    # -- Container Manager protocol --------------------------------------------------------

    def _on_status_request(self, message: Message) -> None:
        # The request carries nothing we need (Timestamp and Signature are optional), so even an
        # unreadable one is answered: the Container Manager only wants to know we are alive.
        if self._stopping:
            return
        status, text = self._current_status()
        self._publish_status(status, text)

    def _on_config(self, message: Message) -> None:
        self._events.put(("config", message))

    def _on_command(self, message: Message) -> None:
        self._events.put(("command", message))

    def _current_status(self) -> tuple[StatusCode | int, str | None]:
        if self._status != StatusCode.MSG_OK:
            return self._status, None
        try:
            return self.health()
        except Exception as exc:
            log.exception("%s: health() failed", self.iid)
            return StatusCode.MSG_FAIL, f"health() failed: {type(exc).__name__}: {exc}"

    def _publish_status(self, status: StatusCode | int, message: str | None = None, *, wait: bool = False) -> None:
        response = StatusResponse(status=int(status), message=message, timestamp=now())
        self.client.publish(
            status_response_topic(self.iid),
            encode_json(response.to_json()),
            qos=QOS_STATUS_RESPONSE,
            retain=False,
            wait=wait,
        )

    def _loop(self) -> StatusCode:
        while True:
            try:
                kind, arg = self._events.get(timeout=self._until_next_timer())
            except queue.Empty:
                self._run_due_timers()
                continue
            if kind == "config":
                self._apply_configuration(arg)
            elif kind == "command":
                final = self._handle_command(arg)
                if final is not None:
                    return self._finish(final, None)
            elif kind == "finish":
                status, text = arg
                return self._finish(status, text)
            self._run_due_timers()

    def _apply_configuration(self, message: Message) -> None:
        where = message.topic
        try:
            data = decode_json_object(message.payload, where=where)
        except LvcapError as exc:
            self._configuration_failed(message.payload, Errno.JSON_INVALID, str(exc))
            return
        key = data.get("Configuration")
        try:
            response = ConfigResponse.from_json(data, where=where)
            app_config = AppConfiguration.from_json(response.configuration, where=f"{where}: Configuration")
        except (LvcapError, TypeError) as exc:  # TypeError: never let a malformed message end run()
            text = str(exc)
            if isinstance(data.get("Message"), str):
                # 5.2 step 4: the Container Manager explains why it has no configuration.
                text = f"{text} (Container Manager: {data['Message']})"
            self._configuration_failed(key, Errno.CONFIGURATION, text)
            return
        if app_config.container_name != self.iid:
            self._configuration_failed(
                key,
                Errno.CONFIGURATION,
                f"{where}: Configuration.ContainerName: expected {self.iid!r}, got {app_config.container_name!r}",
            )
            return
        config = dict(app_config.container_config)
        if self._config is not None and config == self._config:
            # QoS 1 may deliver the same configuration twice (8.2.1): confirm, do not re-apply.
            log.debug("%s: same configuration delivered again", self.iid)
            self._publish_status(*self._current_status())
            return
        try:
            self.configure(copy.deepcopy(config))
        except ConfigurationError as exc:
            self._configuration_failed(key, Errno.CONFIGURATION, str(exc))
            return
        except Exception as exc:
            log.exception("%s: configure() failed", self.iid)
            self._configuration_failed(key, Errno.CONFIGURATION, f"configure() failed: {type(exc).__name__}: {exc}")
            return
        self._config = config
        self._refused = _NOTHING
        if self._started:
            log.info("%s reconfigured", self.iid)
            self._publish_status(*self._current_status())
            return
        log.info("%s configured; starting", self.iid)
        self._status = StatusCode.MSG_OK
        self._publish_status(StatusCode.MSG_OK)
        self._started = True
        try:
            self.start()
        except Exception as exc:
            text = f"start() failed: {type(exc).__name__}: {exc}"
            self._status = StatusCode.MSG_FAIL
            self.report_error(Errno.APPLICATION, text)
            self._publish_status(StatusCode.MSG_FAIL, text, wait=True)
            self._stopping = True
            raise

    def _configuration_failed(self, key: object, errno: Errno, text: str) -> None:
        if key == self._refused:
            # The Container Manager resends the configuration on every STATUS_INITIAL: answering
            # the same refusal again would loop. Polls still get STATUS_INITIAL.
            log.debug("%s: the refused configuration arrived again: %s", self.iid, text)
            return
        self._refused = key
        self.report_error(errno, text)
        if self._started:
            # A pushed reconfiguration was refused: keep running on the last good one.
            log.warning("%s keeps its previous configuration", self.iid)
            return
        # 5.2 step 7: STATUS_INITIAL makes the Container Manager send the configuration again.
        self._status = StatusCode.INITIAL
        self._publish_status(StatusCode.INITIAL, text)

    def _handle_command(self, message: Message) -> StatusCode | None:
        try:
            data = decode_json_object(message.payload, where=message.topic)
        except LvcapError as exc:
            self.report_error(Errno.JSON_INVALID, str(exc))
            return None
        try:
            command = CommandMessage.from_json(data, where=message.topic)
        except (LvcapError, TypeError) as exc:  # TypeError: never let a malformed message end run()
            self.report_error(Errno.MQTT_CALLBACK, f"{exc}; command ignored")
            return None
        if command.command == CommandCode.SHUT_DOWN:
            log.info("%s: shutdown command received", self.iid)
            return StatusCode.SHUT_DWN
        # 8.2.3: more commands may be added; an app must check the value and ignore what it does not know.
        self.report_error(
            Errno.MQTT_CALLBACK,
            f"{message.topic}: Command {command.command} is not known (1 = shut down); ignored",
        )
        return None

    def _finish(self, status: StatusCode, text: str | None) -> StatusCode:
        """Stop the app as section 6 says: stop(), drop subscriptions, report, disconnect."""
        self._stopping = True
        if self._started:
            try:
                self.stop()
            except Exception as exc:
                log.exception("%s: stop() failed", self.iid)
                self.report_error(Errno.APPLICATION, f"stop() failed: {type(exc).__name__}: {exc}")
        client = self.client
        topics = [status_request_topic(), config_response_topic(self.iid), command_topic(self.iid), *self._inputs]
        topics += [ex.response_topic for ex in (self._storage, self._newdata) if ex.subscribed]
        for topic in topics:
            client.unsubscribe(topic)
        self._storage.subscribed = self._newdata.subscribed = False
        self._timers.clear()
        self._status = status
        try:
            # Wait for the PUBACK so the status is out before the clean DISCONNECT.
            self._publish_status(status, text, wait=client.connected)
        except MarketplaceError as exc:
            log.warning("%s: could not confirm %s to the Container Manager: %s", self.iid, status.name, exc)
        log.info("%s stopped (%s)", self.iid, status.name)
        return status

    def _until_next_timer(self) -> float:
        if not self._timers or not self.running:
            return 1.0
        return max(0.0, min(1.0, min(t.due for t in self._timers) - time.monotonic()))

    def _run_due_timers(self) -> None:
        if not self.running:
            return
        current = time.monotonic()
        for timer in list(self._timers):
            if timer.due > current:
                continue
            # Keep the cadence but never queue a burst of catch-up calls after a long pause.
            timer.due = max(timer.due + timer.interval, current)
            try:
                timer.callback()
            except Exception as exc:
                log.exception("%s: periodic callback failed", self.iid)
                self.report_error(Errno.APPLICATION, f"periodic callback failed: {type(exc).__name__}: {exc}")

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # SimpleQueue.put is safe in a signal handler. A second signal gets the previous
            # handler (by default: die at once), in case stop() hangs.
            self._events.put(("finish", (StatusCode.SHUT_DWN, None)))
            restore()

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        for sig in previous:
            signal.signal(sig, on_signal)
        return restore


def _parse_input(topic: str, data: dict[str, Any]) -> Input:
    if topic == "meta" or topic.endswith("/meta"):
        return MetadataObject.from_json(data, where=topic)
    if _STANDARD_KEYS.intersection(data):
        return parse_standard_object(data, where=topic)
    return data


def _errno_name(errno: Errno | int) -> str:
    try:
        return f"ERRNO_{Errno(errno).name}"
    except ValueError:
        return str(int(errno))


def _resolve_iid(iid: str | None, env: Mapping[str, str]) -> str:
    if iid is None:
        iid = env.get("LVCAP_IID") or _joined(env, "LVCAP_VENDOR", "LVCAP_NAME", "LVCAP_INSTANCE")
    if not iid:
        raise ValueError("no Instance ID: pass iid= to App() or set LVCAP_IID (the Container Manager does)")
    return validate_iid(iid)


def _resolve_apid(apid: str | None, env: Mapping[str, str]) -> str:
    if apid is None:
        apid = env.get("LVCAP_APID") or _joined(env, "LVCAP_VENDOR", "LVCAP_NAME", "LVCAP_VERSION")
    if not apid:
        raise ValueError("no Application ID: pass apid= to App() or set LVCAP_APID (the Container Manager does)")
    if is_legacy_guid(apid):
        # 4.2.1: a legacy app's GUID is both its APID and its IID.
        return apid
    return AppId.parse(apid).apid


def _joined(env: Mapping[str, str], *names: str) -> str:
    parts = [env.get(name, "") for name in names]
    return "_".join(parts) if all(parts) else ""
