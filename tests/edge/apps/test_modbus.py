"""The Modbus sensor app against a real pymodbus server on 127.0.0.1, run by an EdgeRuntime."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridhub.edge.apps.modbus import ErrorLimiter, ModbusSettings, SerialLine, TcpLine
from gridhub.edge.config import load_config
from gridhub.edge.runtime import EdgeRuntime
from gridhub.sdk import ConfigurationError
from gridhub.sdk.mqtt import MarketplaceClient, Message
from tests.conftest import free_port, wait_for

IID = "gridhub_modbus_01"
UNIT = 1
SETPOINT_TOPIC = "algorithm/data/test_ctrl_01/hvac/setpoint"
RELAY_TOPIC = "algorithm/data/test_ctrl_01/hvac/relay"

MAP: list[dict[str, Any]] = [
    {"name": "temperature", "type": "holding", "address": 0, "datatype": "16int", "factor": 0.1, "units": "degC"},
    {"name": "power", "type": "holding", "address": 1, "datatype": "32float", "units": "W"},
    {"name": "mode", "type": "holding", "address": 3, "datatype": "16uint", "translation": [[1, 10], [2, 20]]},
    {"name": "flags/high", "type": "holding", "address": 4, "datatype": "bits", "shift": 8, "mask": 255},
    {"name": "energy", "type": "input", "address": 0, "datatype": "64int", "units": "J"},
    {"name": "running", "type": "coil", "address": 0, "datatype": "bits"},
    {
        "name": "setpoint", "type": "holding", "address": 10, "datatype": "16uint", "factor": 0.1,
        "min": 0, "max": 100, "writable": True,
    },
    {"name": "relay", "type": "coil", "address": 1, "datatype": "bits", "writable": True},
]  # fmt: skip


class PymodbusServer:
    """A pymodbus server (TCP or RTU framing over TCP) on its own event loop thread."""

    def __init__(self, port: int, framer: FramerType = FramerType.SOCKET) -> None:
        self.port = port
        self.framer = framer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ModbusTcpServer | None = None

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def start(self) -> None:
        async def serve() -> None:
            bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
            registers = [SimData(0, count=32, values=0, datatype=DataType.REGISTERS)]
            inputs = [SimData(0, count=4, values=[0xFFFF, 0xFEFF, 0xFFFF, 0xFFF9], datatype=DataType.REGISTERS)]
            device = SimDevice(UNIT, simdata=(bits, list(bits), registers, inputs))
            self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port), framer=self.framer)
            await self.server.serve_forever(background=True)
            await self.server.async_setValues(UNIT, 16, 0, [0xFF29, 0x4050, 0x0000, 2, 0x12AB])
            await self.server.async_setValues(UNIT, 5, 0, [True])

        self._call(serve())

    def stop(self) -> None:
        assert self.server is not None
        self._call(self.server.shutdown())  # type: ignore[no-untyped-call]

    def get(self, function_code: int, address: int, count: int = 1) -> list[Any]:
        assert self.server is not None
        return list(self._call(self.server.async_getValues(UNIT, function_code, address, count)))

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Observer:
    """Everything published under the app's sensor topics and its error reports."""

    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def since(self, mark: int, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            found = [m for m in self.messages[mark:] if m.topic == topic]
        return [json.loads(m.payload) for m in found if m.payload]

    def mark(self) -> int:
        with self.lock:
            return len(self.messages)


def toml_value(value: Any) -> str:
    """Write a value as TOML (inline tables and arrays) for [app.config]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@dataclass
class Rig:
    runtime: EdgeRuntime
    tcp: PymodbusServer
    rtu: PymodbusServer
    observer: Observer
    client: MarketplaceClient

    def scalars(self, mark: int, sub_topic: str) -> list[dict[str, Any]]:
        return self.observer.since(mark, f"sensor/data/{IID}/{sub_topic}")

    def errors(self, mark: int) -> list[dict[str, Any]]:
        return self.observer.since(mark, f"storage/data/error/{IID}")

    def retained(self, sub_topic: str) -> dict[str, Any]:
        """Return what a newly subscribing app gets on a topic: the retained message (9.4)."""
        late = Observer()
        client = MarketplaceClient("modbus-test-late", self.runtime.core_address("gridhub-manager"))
        client.start()
        try:
            client.subscribe(f"sensor/data/{IID}/{sub_topic}", 1, late.on_message)
            wait_for(lambda: late.mark() > 0, f"the retained message on {sub_topic}")
        finally:
            client.stop()
        message = late.messages[0]
        assert message.retain
        return dict(json.loads(message.payload))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("modbus")
    tcp = PymodbusServer(free_port())
    rtu = PymodbusServer(free_port(), FramerType.RTU)
    tcp.start()
    rtu.start()
    config = {
        "period": 0.2,
        "timeout": 0.5,
        "retryMax": 0.4,
        "failedAfter": 3,
        "errorInterval": 3600,
        "modbusMaps": {"HVAC": MAP},
        "modbusSlaves": [
            {
                "name": "hvac",
                "ip": "127.0.0.1",
                "port": tcp.port,
                "slaveId": UNIT,
                "map": "HVAC",
                "inputs": {"setpoint": SETPOINT_TOPIC, "relay": RELAY_TOPIC},
            },
            {
                # Modbus RTU framing through pyserial's socket:// port (no serial hardware needed).
                "name": "meter",
                "serialPort": f"socket://127.0.0.1:{rtu.port}",
                "baudRate": 9600,
                "slaveId": UNIT,
                "map": [{"name": "power", "type": "holding", "address": 1, "datatype": "32float", "units": "W"}],
            },
        ],
    }
    text = (
        f'version = 1\ndata_dir = "edge"\n[marketplace]\nmode = "embedded"\nport = {free_port()}\n'
        "[manager]\nstatus_interval = 0.5\nshutdown_grace = 5\nrestart_backoff = 0.2\n"
        f'[[app]]\nvendor = "gridhub"\nname = "modbus"\nversion = "1.0.0"\ninstance = "01"\n'
        f"command = {json.dumps([sys.executable, '-m', 'gridhub.edge.apps.modbus'])}\n[app.config]\n"
        + "".join(f"{key} = {toml_value(value)}\n" for key, value in config.items())
    )
    (tmp / "edge.toml").write_text(text)
    runtime = EdgeRuntime(load_config(tmp / "edge.toml"))
    runtime.start()
    observer = Observer()
    client = MarketplaceClient("modbus-test-observer", runtime.core_address("gridhub-manager"))
    try:
        client.start()
        client.subscribe(f"sensor/data/{IID}/#", 1, observer.on_message)
        client.subscribe(f"storage/data/error/{IID}", 1, observer.on_message)
        yield Rig(runtime, tcp, rtu, observer, client)
    finally:
        client.stop()
        runtime.stop()
        tcp.close()
        rtu.close()


def test_registers_are_published_as_scalars_with_retained_metadata(rig: Rig) -> None:
    mark = rig.observer.mark()
    wait_for(lambda: len(rig.scalars(mark, "hvac/temperature")) >= 2, "temperature readings")
    wait_for(lambda: len(rig.scalars(mark, "meter/power")) >= 1, "a reading over Modbus RTU")
    latest = {
        name: rig.scalars(mark, f"hvac/{name}")[-1]
        for name in ("temperature", "power", "mode", "flags/high", "energy", "running", "setpoint", "relay")
    }
    assert {name: (s["Value"], s["Valid"]) for name, s in latest.items()} == {
        "temperature": (-21.5, True),
        "power": (3.25, True),
        "mode": (20, True),
        "flags/high": (0x12, True),
        "energy": (-(2**40) - 7, True),
        "running": (True, True),
        "setpoint": (0, True),
        "relay": (False, True),
    }
    assert rig.scalars(mark, "meter/power")[-1]["Value"] == 3.25
    stamps = [s["Timestamp"] for s in rig.scalars(mark, "hvac/temperature")]
    assert all(abs(t - time.time()) < 60 for t in stamps)
    assert rig.retained("hvac/temperature/meta") == {"Name": "temperature", "Units": "degC"}
    assert rig.retained("meter/power/meta")["Units"] == "W"


def test_an_unreachable_device_reads_invalid_with_time_moving_on_and_recovers(rig: Rig) -> None:
    wait_for(lambda: bool(rig.scalars(0, "hvac/power")), "first readings")
    rig.tcp.stop()
    mark = rig.observer.mark()
    try:
        wait_for(lambda: len(rig.scalars(mark, "hvac/power")) >= 8, "readings while the device is down")
        readings = rig.scalars(mark, "hvac/power")
        invalid = [s for s in readings if not s["Valid"]]
        assert len(invalid) >= 6  # data keeps flowing at the poll interval (4.8)...
        assert invalid[-1]["Timestamp"] >= invalid[0]["Timestamp"] and invalid[-1]["Timestamp"] > 0
        # ... and the RTU device on its own line is unaffected.
        assert rig.scalars(mark, "meter/power")[-1]["Valid"] is True
        # One report for the outage, not one per poll: a NETWORK error, then the move to "failed".
        errors = rig.errors(mark)
        assert 1 <= len(errors) <= 2
        assert errors[0]["Errno"] == 12 and "127.0.0.1" in errors[0]["Message"]
    finally:
        rig.tcp.start()
    mark = rig.observer.mark()
    wait_for(lambda: any(s["Valid"] for s in rig.scalars(mark, "hvac/power")), "valid readings after the restart")
    wait_for(lambda: rig.scalars(mark, "hvac/temperature")[-1:][0]["Valid"] is True, "temperature valid again")
    assert rig.scalars(mark, "hvac/temperature")[-1]["Value"] == -21.5


def scalar(value: Any, valid: bool = True) -> dict[str, Any]:
    return {"Timestamp": int(time.time()), "Value": value, "Valid": valid}


def test_a_scalar_on_an_input_topic_writes_the_holding_register_and_coil(rig: Rig) -> None:
    wait_for(lambda: bool(rig.scalars(0, "hvac/setpoint")), "first readings")
    rig.client.publish(SETPOINT_TOPIC, scalar(21.5), qos=1, wait=True)
    wait_for(lambda: rig.tcp.get(3, 10) == [215], "the setpoint register to be written")
    rig.client.publish(RELAY_TOPIC, scalar(True), qos=1, wait=True)
    wait_for(lambda: rig.tcp.get(1, 1) == [True], "the relay coil to be written")
    mark = rig.observer.mark()
    wait_for(lambda: any(s["Value"] == 21.5 for s in rig.scalars(mark, "hvac/setpoint")), "the setpoint read back")
    # An invalid Scalar is not written (its Value must not be used, 4.8).
    rig.client.publish(SETPOINT_TOPIC, scalar(50.0, valid=False), qos=1, wait=True)
    # Out of the configured range: refused with a report, register unchanged.
    mark = rig.observer.mark()
    rig.client.publish(SETPOINT_TOPIC, scalar(150), qos=1, wait=True)
    wait_for(lambda: bool(rig.errors(mark)), "the refusal")
    error = rig.errors(mark)[0]
    assert error["Errno"] == 11
    assert "setpoint" in error["Message"] and "outside the expected range [0, 100]" in error["Message"]
    assert rig.tcp.get(3, 10) == [215]


# -- configuration (no I/O) --------------------------------------------------------------------


def config(**device: Any) -> dict[str, Any]:
    base = {
        "name": "d",
        "ip": "127.0.0.1",
        "map": [{"name": "x", "type": "holding", "address": 0, "datatype": "16int"}],
    }
    return {"modbusSlaves": [{**base, **device}]}


def test_the_configuration_reads_tcp_and_serial_devices_with_defaults() -> None:
    settings = ModbusSettings.from_config(
        {
            "period": 5,
            "modbusMaps": {"M": [{"name": "x", "type": "input", "address": 3, "datatype": "32float"}]},
            "modbusSlaves": [
                {"name": "a", "ip": "10.0.0.5", "map": "M", "wordOrder": "little"},
                {
                    "name": "b",
                    "serialPort": "/dev/ttyUSB0",
                    "baudRate": 19200,
                    "parity": "E",
                    "slaveId": 7,
                    "map": "M",
                    "period": 1,
                },
            ],
        },
        IID,
    )
    a, b = settings.devices
    assert a.line == TcpLine("10.0.0.5", 502) and a.slave_id == 1 and a.period == 5.0
    assert a.points[0].word_order == "little"
    assert b.line == SerialLine("/dev/ttyUSB0", 19200, 8, "E", 1) and b.slave_id == 7 and b.period == 1.0


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"modbusSlaves": []}, r"ContainerConfig modbusSlaves: required"),
        ({**config(), "mqtt": {}}, r"ContainerConfig mqtt: an X-FLEX setting this LV-CAP app does not use"),
        (config(ip=5), r"modbusSlaves\[0\] \(d\) ip: expected a string, got 5"),
        (config(serialPort="/dev/x"), r"give either ip \(Modbus TCP\) or serialPort"),
        ({"modbusSlaves": [{"name": "d", "serialPort": "/dev/x", "map": []}]}, r"\(d\) baudRate: required"),
        (config(map="NOPE"), r"modbusSlaves\[0\] \(d\) map: 'NOPE' is not in modbusMaps \(none defined\)"),
        (config(slaveId=300), r"\(d\) slaveId: expected a value from 0 to 247, got 300"),
        (config(name="a b"), r"modbusSlaves\[0\] \(a b\) name 'a b': .*spaces are not permitted.*<device> level"),
        (
            config(map=[{"name": "x", "type": "holding", "address": 0, "datatype": "16unit"}]),
            r"modbusSlaves\[0\] \(d\)\.map\[0\] \(x\)\.datatype: expected one of",
        ),
        (
            config(
                map=[{"name": "m", "type": "holding", "address": 0, "datatype": "16int", "translation": [[1, "COLD"]]}]
            ),
            r"point 'm': its value is text, and a Scalar's Value is a Boolean, Integer or Floating Point",
        ),
        (config(inputs={"x": "algorithm/data/a_b_01/x"}), r"\(d\) inputs\.x: the point is not writable"),
        (config(inputs={"y": "algorithm/data/a_b_01/x"}), r"\(d\) inputs\.y: no point of that name in the map"),
        (config(period=0), r"\(d\) period: expected a value from 0\.1 to inf, got 0"),
    ],
)
def test_bad_configurations_are_refused_naming_the_key(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ModbusSettings.from_config(cfg, IID)


def test_the_error_limiter_lets_one_report_through_per_interval_and_counts_the_rest() -> None:
    limiter = ErrorLimiter(60.0)
    assert limiter.admit(("d", "link"), 0.0) == 0
    assert limiter.admit(("d", "link"), 1.0) is None
    assert limiter.admit(("d", "link"), 2.0) is None
    assert limiter.admit(("other",), 2.0) == 0
    assert limiter.admit(("d", "link"), 61.0) == 2
