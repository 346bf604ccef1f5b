"""Modbus sensor app: poll Modbus TCP and RTU devices and publish their registers as Scalars.

Each device (an X-FLEX ``modbusSlaves`` entry) is polled every ``period`` seconds with the
register map of the X-FLEX Modbus wrapper (``gridhub.formats.modbus_map``). Every point is
published as a Scalar Object (LV-CAP 9.1) on ``sensor/data/<IID>/<device>/<point>`` and its
Data Series Metadata (9.4: name, units) once, retained, on ``.../<point>/meta``. A point marked
``writable`` may be bound to an input topic: a Scalar received there is written to the device.

Data keeps flowing (4.8): when a device cannot be reached, or a read fails, every point of it is
still published at its interval with ``Valid`` false and the current timestamp. Each device is
a small state machine::

    connected --read fails--> retrying --N failed attempts--> failed
        ^                         |                              |
        +------- a read works ----+------------------------------+

While retrying, reconnection is attempted with exponential back-off (period, 2 x period, ...
up to ``retryMax``); a failed device keeps trying every ``retryMax`` seconds, so it comes back
by itself. Errors are reported on storage/data/error/<IID> (8.2.4): ERRNO_NETWORK when the TCP
connection fails, ERRNO_PORT when the serial port cannot be opened, ERRNO_NO_DEVICE when the
device does not answer, ERRNO_SENSOR when it answers with an exception or a value that cannot
be used; the same error of the same device is reported at most once per ``errorInterval``.

Polls run on the SDK's run() thread (``every``); writes run on the marketplace dispatcher thread.
Both use a device's connection under its lock, so a request never interleaves with another. A
serial line is one connection shared by all devices on it (RS-485 multi-drop).

ContainerConfig (keys as the X-FLEX wrapper's settings, 3.3.5.1, plus a few of gridhub's)::

    {"period": 10, "modbusMaps": {"METER": [{"name": "voltage", "type": "input", "address": 0,
                                             "datatype": "16uint", "factor": 0.1, "units": "V"}]},
     "modbusSlaves": [{"name": "meter1", "ip": "10.0.0.5", "port": 502, "slaveId": 1,
                       "map": "METER", "inputs": {}}]}

See docs/modbus.md for every key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from gridhub.edge.settings import ConfigError, get_int, get_number, get_str, get_table, reject_unknown
from gridhub.formats.lvcap import LvcapError, sensor_data_topic, validate_topic
from gridhub.formats.modbus_map import (
    ByteOrder,
    ModbusMapError,
    Point,
    PointValueError,
    ReadBlock,
    RegisterType,
    parse_register_map,
    plan_reads,
)
from gridhub.sdk import App, ConfigurationError, Errno, Input, MetadataObject, ScalarObject, StatusCode, now

log = logging.getLogger(__name__)

TICK = 0.1
"""Seconds between checks of which device is due; a poll may start this much late."""
DEFAULT_PERIOD = 10.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRY_MAX = 60.0
DEFAULT_FAILED_AFTER = 5
DEFAULT_ERROR_INTERVAL = 600.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
GATEWAY_EXCEPTIONS = frozenset({0x0A, 0x0B})
"""Modbus exception codes meaning "the device behind the gateway did not answer"."""

_TOP_KEYS = ("period", "timeout", "retryMax", "failedAfter", "errorInterval", "modbusMaps", "modbusSlaves")
_DEVICE_KEYS = (
    "name", "ip", "port", "serialPort", "baudRate", "byteSize", "parity", "stopBits", "slaveId", "map",
    "period", "timeout", "wordOrder", "byteOrder", "inputs",
)  # fmt: skip
_NOT_LVCAP = {
    "mqttMessages": "readings are Scalars on sensor/data/<IID>/<device>/<point>",
    "mqttPublications": "readings are Scalars on sensor/data/<IID>/<device>/<point>",
    "mqttSubscriptions": "bind writable points to topics with 'inputs'",
    "mqtt": "the marketplace connection comes from the Container Manager",
    "logLevel": "set LVCAP_LOG_LEVEL",
}


class LinkState(StrEnum):
    """Where a device's poller stands (STYLE rule 9: explicit failure states)."""

    CONNECTED = "connected"
    RETRYING = "retrying"
    FAILED = "failed"


# -- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpLine:
    """A Modbus TCP endpoint."""

    host: str
    port: int

    def describe(self) -> str:
        """Return host:port."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SerialLine:
    """A serial port running Modbus RTU (shared by every device on it)."""

    port: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: int

    def describe(self) -> str:
        """Return the port and its framing, e.g. /dev/ttyUSB0 9600 8N1."""
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True)
class DeviceSettings:
    """One Modbus device to poll (an X-FLEX ``modbusSlaves`` entry)."""

    name: str
    line: TcpLine | SerialLine
    slave_id: int
    period: float
    timeout: float
    points: tuple[Point, ...]
    inputs: Mapping[str, str] = field(default_factory=dict)  # point name -> input topic


@dataclass(frozen=True)
class ModbusSettings:
    """The whole ContainerConfig, checked."""

    devices: tuple[DeviceSettings, ...]
    retry_max: float = DEFAULT_RETRY_MAX
    failed_after: int = DEFAULT_FAILED_AFTER
    error_interval: float = DEFAULT_ERROR_INTERVAL

    @classmethod
    def from_config(cls, config: Mapping[str, Any], iid: str) -> ModbusSettings:
        """Check a ContainerConfig; raise ConfigurationError naming the key that is wrong."""
        try:
            return cls._read(config, iid)
        except (ConfigError, ModbusMapError, LvcapError) as exc:
            raise ConfigurationError(str(exc)) from None

    @classmethod
    def _read(cls, config: Mapping[str, Any], iid: str) -> ModbusSettings:
        where = "ContainerConfig"
        for key, hint in _NOT_LVCAP.items():
            if key in config:
                raise ConfigError(f"{where} {key}: an X-FLEX setting this LV-CAP app does not use ({hint})")
        reject_unknown(config, _TOP_KEYS, where)
        period = get_number(config, "period", DEFAULT_PERIOD, where, minimum=TICK)
        timeout = get_number(config, "timeout", DEFAULT_TIMEOUT, where, minimum=0.01, maximum=60)
        maps = get_table(config, "modbusMaps", where)
        slaves = config.get("modbusSlaves")
        if not isinstance(slaves, list) or not slaves:
            raise ConfigError(f"{where} modbusSlaves: required, a list of devices to poll; got {slaves!r}")
        devices: list[DeviceSettings] = []
        topics: dict[str, str] = {}
        for index, item in enumerate(slaves):
            device = _read_device(item, f"modbusSlaves[{index}]", maps, period, timeout, iid)
            if any(d.name == device.name for d in devices):
                raise ConfigError(f"modbusSlaves[{index}] name: {device.name!r} is used by another device")
            for point_name, topic in device.inputs.items():
                if topic in topics:
                    raise ConfigError(
                        f"modbusSlaves[{index}] ({device.name}) inputs.{point_name}: {topic!r} already writes"
                        f" {topics[topic]}"
                    )
                topics[topic] = f"{device.name}/{point_name}"
            devices.append(device)
        lines: dict[str, TcpLine | SerialLine] = {}
        for device in devices:
            if isinstance(device.line, SerialLine):
                other = lines.setdefault(device.line.port, device.line)
                if other != device.line:
                    raise ConfigError(
                        f"modbusSlaves ({device.name}): serial port {device.line.port} is set up as"
                        f" {other.describe()} by another device and {device.line.describe()} here"
                    )
        return cls(
            devices=tuple(devices),
            retry_max=get_number(config, "retryMax", DEFAULT_RETRY_MAX, where, minimum=TICK),
            failed_after=get_int(config, "failedAfter", DEFAULT_FAILED_AFTER, where, minimum=1),
            error_interval=get_number(config, "errorInterval", DEFAULT_ERROR_INTERVAL, where, minimum=0),
        )


def _read_device(
    data: object, where: str, maps: Mapping[str, Any], period: float, timeout: float, iid: str
) -> DeviceSettings:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a device object, got {data!r}")
    name = get_str(data, "name", None, where)
    where = f"{where} ({name})"
    try:
        validate_topic(name, f"{where} name")
    except LvcapError as exc:
        raise ConfigError(f"{exc} (it is the <device> level of the topics)") from None
    reject_unknown(data, _DEVICE_KEYS, where)
    line: TcpLine | SerialLine
    if ("ip" in data) == ("serialPort" in data):
        raise ConfigError(f"{where}: give either ip (Modbus TCP) or serialPort (Modbus RTU), not both or neither")
    if "ip" in data:
        for key in ("baudRate", "byteSize", "parity", "stopBits"):
            if key in data:
                raise ConfigError(f"{where} {key}: only for serial devices (serialPort)")
        line = TcpLine(get_str(data, "ip", None, where), get_int(data, "port", 502, where, minimum=1, maximum=65535))
    else:
        if "port" in data:
            raise ConfigError(f"{where} port: the TCP port is only for ip devices; a serial device has serialPort")
        parity = get_str(data, "parity", "N", where).upper()
        if parity not in ("N", "E", "O"):
            raise ConfigError(f"{where} parity: expected 'N', 'E' or 'O', got {data.get('parity')!r}")
        line = SerialLine(
            port=get_str(data, "serialPort", None, where),
            baudrate=get_int(data, "baudRate", 0, where, minimum=50) if "baudRate" in data else _required(where),
            bytesize=get_int(data, "byteSize", 8, where, minimum=5, maximum=8),
            parity=parity,
            stopbits=get_int(data, "stopBits", 1, where, minimum=1, maximum=2),
        )
    orders = {key: get_str(data, key, "big", where) for key in ("wordOrder", "byteOrder")}
    for key, value in orders.items():
        if value not in ("big", "little"):
            raise ConfigError(f"{where} {key}: expected 'big' or 'little', got {value!r}")
    word_order: ByteOrder = "little" if orders["wordOrder"] == "little" else "big"
    byte_order: ByteOrder = "little" if orders["byteOrder"] == "little" else "big"
    reference = data.get("map")
    if isinstance(reference, str):
        if reference not in maps:
            known = ", ".join(sorted(maps)) or "none defined"
            raise ConfigError(f"{where} map: {reference!r} is not in modbusMaps ({known})")
        points = parse_register_map(
            maps[reference], f"modbusMaps.{reference}", word_order=word_order, byte_order=byte_order
        )
    elif reference is None:
        raise ConfigError(f"{where} map: required, the name of a modbusMaps entry or a list of points")
    else:
        points = parse_register_map(reference, f"{where}.map", word_order=word_order, byte_order=byte_order)
    for point in points:
        _check_publishable(point, name, where, iid)
    inputs = _read_inputs(data.get("inputs", {}), points, where)
    return DeviceSettings(
        name=name,
        line=line,
        slave_id=get_int(data, "slaveId", 1, where, minimum=0, maximum=247),
        period=get_number(data, "period", period, where, minimum=TICK),
        timeout=get_number(data, "timeout", timeout, where, minimum=0.01, maximum=60),
        points=points,
        inputs=inputs,
    )


def _required(where: str) -> NoReturn:
    raise ConfigError(f"{where} baudRate: required for a serial device")


def _check_publishable(point: Point, device: str, where: str, iid: str) -> None:
    """Refuse points whose value a Scalar cannot carry, and topics LV-CAP does not allow."""
    if not point.published:
        return
    text = point.datatype.value == "string" or (
        point.translation is not None and any(isinstance(t, str) for _, t in point.translation)
    )
    if text:
        raise ConfigError(
            f"{where} point {point.name!r}: its value is text, and a Scalar's Value is a Boolean, Integer or"
            " Floating Point (LV-CAP 9.1); translate to numbers, or make it datatype 'ignore'"
        )
    sensor_data_topic(iid, f"{device}/{point.name}/meta")  # raises LvcapError when too long


def _read_inputs(data: object, points: Sequence[Point], where: str) -> dict[str, str]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} inputs: expected an object of point name -> topic, got {data!r}")
    by_name = {p.name: p for p in points}
    inputs: dict[str, str] = {}
    for name, topic in data.items():
        point = by_name.get(name)
        if point is None:
            raise ConfigError(f"{where} inputs.{name}: no point of that name in the map")
        if not point.writable:
            raise ConfigError(f'{where} inputs.{name}: the point is not writable (set "writable": true in the map)')
        if not isinstance(topic, str):
            raise ConfigError(f"{where} inputs.{name}: expected a topic string, got {topic!r}")
        inputs[name] = validate_topic(topic, f"{where} inputs.{name}")
    return inputs


# -- talking Modbus --------------------------------------------------------------------------------


class ReadFailure(Exception):
    """A Modbus request failed; ``errno`` says how (8.2.4) and ``link_down`` whether to reconnect."""

    def __init__(self, errno: Errno, message: str, *, link_down: bool) -> None:
        super().__init__(message)
        self.errno = errno
        self.link_down = link_down


class Link:
    """One Modbus connection (a TCP endpoint or a serial port) and the lock that serialises it."""

    def __init__(self, line: TcpLine | SerialLine, timeout: float) -> None:
        self.line = line
        self.lock = threading.Lock()
        # retries=0: the app's own state machine decides when to try again.
        self.client: ModbusTcpClient | ModbusSerialClient
        if isinstance(line, TcpLine):
            self.client = ModbusTcpClient(line.host, port=line.port, timeout=timeout, retries=0)
        else:
            self.client = ModbusSerialClient(
                line.port,
                baudrate=line.baudrate,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
                timeout=timeout,
                retries=0,
            )

    def open(self) -> None:
        """Connect (a no-op when connected); raise ReadFailure when that is impossible."""
        if self.client.connected:
            return
        if not self.client.connect():
            if isinstance(self.line, TcpLine):
                raise ReadFailure(Errno.NETWORK, f"cannot connect to {self.line.describe()}", link_down=True)
            raise ReadFailure(Errno.PORT, f"cannot open serial port {self.line.describe()}", link_down=True)

    def close(self) -> None:
        """Drop the connection (the next open() makes a new one)."""
        self.client.close()  # type: ignore[no-untyped-call]

    def request(self, what: str, call: Any, *args: Any, **kwargs: Any) -> ModbusPDU:
        """Run one client request; turn every kind of failure into a ReadFailure."""
        try:
            response: ModbusPDU = call(*args, **kwargs)
        except ConnectionException as exc:
            errno = Errno.NETWORK if isinstance(self.line, TcpLine) else Errno.PORT
            raise ReadFailure(errno, f"{what}: connection lost ({exc})", link_down=True) from None
        except ModbusIOException as exc:
            raise ReadFailure(Errno.NO_DEVICE, f"{what}: no answer ({exc})", link_down=True) from None
        except ModbusException as exc:
            raise ReadFailure(Errno.SENSOR, f"{what}: {exc}", link_down=False) from None
        except OSError as exc:
            raise ReadFailure(Errno.IO, f"{what}: {exc}", link_down=True) from None
        if response.isError():
            code = getattr(response, "exception_code", None)
            if code in GATEWAY_EXCEPTIONS:
                raise ReadFailure(
                    Errno.NO_DEVICE, f"{what}: gateway reports no answer (exception {code})", link_down=False
                )
            raise ReadFailure(
                Errno.SENSOR, f"{what}: the device answered with Modbus exception {code}", link_down=False
            )
        return response


@dataclass
class Reading:
    """One point's outcome of a poll."""

    point: Point
    value: bool | int | float
    valid: bool
    problem: str | None = None  # a point-level problem (the device answered), reported as ERRNO_SENSOR


class Device:
    """A device's poller: its settings, its link and its connected/retrying/failed state."""

    def __init__(self, settings: DeviceSettings, link: Link, app_settings: ModbusSettings) -> None:
        self.settings = settings
        self.link = link
        self.retry_max = app_settings.retry_max
        self.failed_after = app_settings.failed_after
        self.blocks: list[ReadBlock] = plan_reads(settings.points)
        self.state = LinkState.RETRYING  # nothing tried yet: the first poll connects
        self.failures = 0
        self.next_attempt = 0.0
        self.next_poll = time.monotonic() + settings.period
        self.last_problem: str | None = None
        self.last_values: dict[str, bool | int | float] = {}

    @property
    def name(self) -> str:
        """The device's name (its topic level)."""
        return self.settings.name

    def poll(self, at: float) -> tuple[list[Reading], ReadFailure | None, LinkState | None]:
        """Read every block; return the readings, a link failure if any, and the state left (None if same)."""
        before = self.state
        with self.link.lock:
            failure: ReadFailure | None = None
            results: dict[str, tuple[bool | int | float, bool, str | None]] = {}
            if self.state is not LinkState.CONNECTED and at < self.next_attempt:
                return self._all_invalid(), None, None
            try:
                self.link.open()
                for block in self.blocks:
                    try:
                        words = self._read(block)
                    except ReadFailure as exc:
                        if exc.link_down or exc.errno is Errno.NO_DEVICE:
                            raise
                        for point in block.points:
                            results[point.name] = (0, False, str(exc))
                        continue
                    for point, part in block.split(words):
                        if point.published:
                            results[point.name] = self._decode(point, part)
            except ReadFailure as exc:
                failure = exc
                if exc.link_down and isinstance(self.link.line, TcpLine):
                    self.link.close()  # a TCP stream out of step is useless; serial lines stay open
                self._failed(at, str(exc))
                return self._all_invalid(), failure, self._changed(before)
            self.state = LinkState.CONNECTED
            self.failures = 0
            self.last_problem = None
        readings = []
        for point in self.settings.points:
            if point.name not in results:
                continue
            value, valid, problem = results[point.name]
            if valid:
                self.last_values[point.name] = value
            else:
                value = self.last_values.get(point.name, False if point.is_boolean else 0)
            readings.append(Reading(point, value, valid, problem))
        return readings, None, self._changed(before)

    def write(self, point: Point, value: object) -> list[int] | list[bool]:
        """Encode and write one value; return what was written. Raises PointValueError or ReadFailure."""
        with self.link.lock:
            try:
                return self._write(point, value)
            except ReadFailure as exc:
                if exc.link_down and isinstance(self.link.line, TcpLine):
                    self.link.close()
                raise

    def _write(self, point: Point, value: object) -> list[int] | list[bool]:
        """Write under the link lock (held by the caller)."""
        current: Sequence[int] | Sequence[bool] | None = None
        if point.shift or point.mask is not None:
            # A bit field shares its register(s): read them so the other bits are kept.
            block = ReadBlock(point.type, point.address, point.count, (point,))
            self.link.open()
            current = self._read(block)
        words = point.encode(value, current)
        self.link.open()
        client, unit, what = self.link.client, self.settings.slave_id, f"{self.name}/{point.name}: write"
        if point.type is RegisterType.COIL:
            bits = [bool(w) for w in words]
            if len(bits) == 1:
                self.link.request(what, client.write_coil, point.address, bits[0], device_id=unit)
            else:
                self.link.request(what, client.write_coils, point.address, bits, device_id=unit)
        else:
            registers = [int(w) for w in words]
            if len(registers) == 1:
                self.link.request(what, client.write_register, point.address, registers[0], device_id=unit)
            else:
                self.link.request(what, client.write_registers, point.address, registers, device_id=unit)
        return words

    def _read(self, block: ReadBlock) -> Sequence[int] | Sequence[bool]:
        client, unit = self.link.client, self.settings.slave_id
        what = f"{self.name}: read {block.count} {block.type.value}(s) at {block.address}"
        if block.type is RegisterType.COIL:
            response = self.link.request(what, client.read_coils, block.address, count=block.count, device_id=unit)
            return response.bits[: block.count]  # coils come padded to whole bytes
        call = client.read_holding_registers if block.type is RegisterType.HOLDING else client.read_input_registers
        response = self.link.request(what, call, block.address, count=block.count, device_id=unit)
        if len(response.registers) != block.count:
            raise ReadFailure(Errno.SENSOR, f"{what}: got {len(response.registers)} register(s)", link_down=False)
        return response.registers

    def _decode(
        self, point: Point, words: Sequence[int] | Sequence[bool]
    ) -> tuple[bool | int | float, bool, str | None]:
        try:
            value = point.decode(words)
        except PointValueError as exc:
            return 0, False, f"{self.name}/{exc}"
        assert not isinstance(value, str)  # text points are refused by the configuration
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            value = float(value)  # a JSON Integer is an Int64 in LV-CAP; a bigger 64uint goes as a number
        if not point.in_range(value):
            return value, False, f"{self.name}/{point.name}: {value!r} is outside the expected range"
        return value, True, None

    def _failed(self, at: float, problem: str) -> None:
        self.failures += 1
        self.last_problem = problem
        self.state = LinkState.FAILED if self.failures >= self.failed_after else LinkState.RETRYING
        backoff = min(self.retry_max, self.settings.period * 2 ** (self.failures - 1))
        self.next_attempt = at + backoff

    def _changed(self, before: LinkState) -> LinkState | None:
        return self.state if self.state is not before else None

    def _all_invalid(self) -> list[Reading]:
        """Return every point Valid=false: the device is out of reach (reported once for the device)."""
        return [
            Reading(p, self.last_values.get(p.name, False if p.is_boolean else 0), False)
            for p in self.settings.points
            if p.published
        ]


class ErrorLimiter:
    """Let the same error through at most once per interval, counting what it holds back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[tuple[str, ...], float] = {}
        self._held: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def admit(self, key: tuple[str, ...], at: float) -> int | None:
        """Return how many were held back since the last one if this one may go out, else None."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and at - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = at
            return self._held.pop(key, 0)


# -- the app ---------------------------------------------------------------------------------------


class ModbusSensor(App):
    """Poll Modbus devices, publish their points as Scalars, write writable points from input topics."""

    role = "sensor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: ModbusSettings | None = None
        self.devices: dict[str, Device] = {}
        self._writes: dict[str, tuple[str, str]] = {}  # input topic -> (device, point)
        self._metadata: dict[str, MetadataObject] = {}  # meta topic sub-path -> what was published
        self._limiter = ErrorLimiter(DEFAULT_ERROR_INTERVAL)

    def configure(self, config: dict[str, Any]) -> None:
        """Check the ContainerConfig; when running, switch to the new devices at once."""
        settings = ModbusSettings.from_config(config, self.iid)
        self.settings = settings
        if self.running:
            self._apply(settings)

    def start(self) -> None:
        """Connect the devices, publish metadata, subscribe to the write topics and start polling."""
        assert self.settings is not None
        self._apply(self.settings)
        self.every(TICK, self.poll_due)

    def stop(self) -> None:
        """Close every Modbus connection."""
        for device in self.devices.values():
            device.link.close()

    def health(self) -> tuple[StatusCode, str | None]:
        """Stay MSG_OK while devices are down (a restart cannot bring a device back); say which are."""
        down = [
            f"{d.name} {d.state.value} ({d.last_problem})"
            for d in self.devices.values()
            if d.state is not LinkState.CONNECTED
        ]
        return StatusCode.MSG_OK, "; ".join(down) if down else None

    # -- polling ---------------------------------------------------------------------------

    def poll_due(self) -> None:
        """Poll every device whose period has come round."""
        current = time.monotonic()
        for device in list(self.devices.values()):
            if current >= device.next_poll:
                device.next_poll = max(device.next_poll + device.settings.period, current)
                self.poll(device)

    def poll(self, device: Device) -> None:
        """Poll one device now and publish each point, Valid or not (4.8)."""
        timestamp = now()
        readings, failure, state = device.poll(time.monotonic())
        if state is LinkState.CONNECTED:
            log.info("%s: device %s connected", self.iid, device.name)
        elif state is LinkState.FAILED and failure is not None:
            # Entering "failed" is always worth one report, whatever the rate limit says.
            self.report_error(
                failure.errno,
                f"{failure} ({device.failures} attempts failed; retrying every {device.retry_max:g} s)",
            )
        elif failure is not None:
            self._report(failure.errno, (device.name, "link", failure.errno.name), str(failure))
        for reading in readings:
            if reading.problem:
                self._report(Errno.SENSOR, (device.name, reading.point.name), reading.problem)
            self.publish_scalar(
                f"{device.name}/{reading.point.name}", reading.value, timestamp=timestamp, valid=reading.valid
            )

    # -- writing ---------------------------------------------------------------------------

    def on_write(self, topic: str, obj: Input) -> None:
        """Write a received Scalar's Value to the point bound to this topic."""
        target = self._writes.get(topic)
        device = self.devices.get(target[0]) if target else None
        if target is None or device is None:
            return  # a message for a binding the last reconfiguration removed
        point = next(p for p in device.settings.points if p.name == target[1])
        what = f"{topic} -> {device.name}/{point.name}"
        if not isinstance(obj, ScalarObject):
            self.report_error(Errno.SENSOR, f"{what}: expected a Scalar Object (9.1); nothing written")
            return
        if not obj.valid:
            log.info("%s: %s: Valid is false, so the value is not written (4.8)", self.iid, what)
            return
        try:
            words = device.write(point, obj.value)
        except PointValueError as exc:
            self.report_error(Errno.SENSOR, f"{what}: refused: {exc}")
            return
        except ReadFailure as exc:
            self._report(exc.errno, (device.name, point.name, "write"), f"{what}: not written: {exc}")
            return
        log.info("%s: wrote %r to %s (%s)", self.iid, obj.value, f"{device.name}/{point.name}", words)

    # -- configuration ---------------------------------------------------------------------

    def _apply(self, settings: ModbusSettings) -> None:
        """Replace the running devices, write bindings and metadata with those of ``settings``."""
        for device in self.devices.values():
            device.link.close()
        links: dict[str, Link] = {}
        devices: dict[str, Device] = {}
        for item in settings.devices:
            # One connection per serial port (the devices on it share the line); one TCP connection
            # per device, even to a shared gateway, so one device's outage does not stall another.
            link = links.get(item.line.port) if isinstance(item.line, SerialLine) else None
            if link is None:
                link = Link(item.line, item.timeout)
                if isinstance(item.line, SerialLine):
                    links[item.line.port] = link
            devices[item.name] = Device(item, link, settings)
        self._limiter = ErrorLimiter(settings.error_interval)
        writes = {
            topic: (item.name, point_name) for item in settings.devices for point_name, topic in item.inputs.items()
        }
        for topic in set(self._writes) - set(writes):
            self.unsubscribe(topic)
        self.devices = devices
        self._writes = writes
        for topic in writes:
            self.subscribe(topic, self.on_write)
        self._publish_metadata(settings)

    def _publish_metadata(self, settings: ModbusSettings) -> None:
        """Publish each point's metadata once (9.4, retained) and clear that of points now gone."""
        wanted: dict[str, MetadataObject] = {}
        for item in settings.devices:
            for point in item.points:
                if point.published:
                    wanted[f"{item.name}/{point.name}"] = MetadataObject(
                        name=point.name, units=point.units, display_units=point.display_units, sig_figs=point.sig_figs
                    )
        for sub_topic in set(self._metadata) - set(wanted):
            # An empty retained message removes the retained metadata (MQTT 3.3.1.3).
            self.client.publish(self.data_topic(f"{sub_topic}/meta"), b"", qos=1, retain=True)
        for sub_topic, metadata in wanted.items():
            if self._metadata.get(sub_topic) != metadata:
                self.publish_metadata(sub_topic, metadata)
        self._metadata = wanted

    def _report(self, errno: Errno, key: tuple[str, ...], message: str) -> None:
        held = self._limiter.admit((*key, errno.name), time.monotonic())
        if held is None:
            log.debug("%s: %s (not reported again yet)", self.iid, message)
            return
        suffix = f" ({held} more like it since the last report)" if held else ""
        self.report_error(errno, message + suffix)


if __name__ == "__main__":
    ModbusSensor.main()
