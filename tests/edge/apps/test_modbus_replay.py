"""The Modbus sensor app under the replay harness, against a pymodbus server on 127.0.0.1.

The app runs in its own process on the harness's embedded marketplace and polls a pymodbus
server started here (as in test_modbus.py); the recorded input is one Scalar on the topic bound
to the writable ``setpoint`` holding register. The app polls on the wall clock, so it is never
quiet for long: with ``quiet_ms`` longer than the poll period the harness keeps recording after
the input until its ``timeout`` (and again after the last input), which leaves a window of
several polls in which the written value is read back. Nothing here counts polls against time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridhub.edge.apps.modbus import ModbusSensor
from gridhub.formats.lvcap import MetadataObject, ScalarObject
from gridhub.sdk.replay import AppIdentity, RecordedMessage, replay
from tests.conftest import free_port
from tests.edge.apps.test_modbus import MAP, UNIT, PymodbusServer

IDENTITY = AppIdentity(vendor="gridhub", name="modbus", version="1.0.0", instance="01")
PREFIX = f"sensor/data/{IDENTITY.iid}/hvac/"
SETPOINT_TOPIC = "algorithm/data/test_ctrl_01/hvac/setpoint"
PERIOD = 0.25
WINDOW = 3.0
"""The harness's timeout, which here bounds the recording after the input and after the last one."""
QUIET_MS = 4 * PERIOD * 1000
"""Longer than the poll period, so the app is never quiet that long while it polls (see above)."""
# What the server holds (test_modbus.PymodbusServer.start), decoded with MAP.
INITIAL = {
    "temperature": -21.5,
    "power": 3.25,
    "mode": 20,
    "flags/high": 0x12,
    "energy": -(2**40) - 7,
    "running": True,
    "setpoint": 0,
    "relay": False,
}


@pytest.fixture
def server() -> Iterator[PymodbusServer]:
    modbus = PymodbusServer(free_port())
    modbus.start()
    try:
        yield modbus
    finally:
        modbus.close()


def readings(records: list[RecordedMessage], point: str) -> list[RecordedMessage]:
    return [r for r in records if r.topic == PREFIX + point]


def test_a_replayed_write_sets_the_register_and_the_recording_holds_the_registers(
    server: PymodbusServer, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.jsonl"
    write = {"Timestamp": 1_717_200_000, "Value": 21.5, "Valid": True}
    inputs.write_text(json.dumps({"topic": SETPOINT_TOPIC, "payload": write}) + "\n")
    config: dict[str, Any] = {
        "period": PERIOD,
        "timeout": 0.5,
        "modbusMaps": {"HVAC": MAP},
        "modbusSlaves": [
            {
                "name": "hvac",
                "ip": "127.0.0.1",
                "port": server.port,
                "slaveId": UNIT,
                "map": "HVAC",
                "inputs": {"setpoint": SETPOINT_TOPIC},
            }
        ],
    }

    records = replay(ModbusSensor, inputs, config, identity=IDENTITY, quiet_ms=QUIET_MS, timeout=WINDOW)

    # The input wrote the holding register: 21.5 with factor 0.1 is 215 at address 10.
    assert server.get(3, 10) == [215]
    # Only sensor data: no error reports, nothing refused by the ACL.
    assert all(r.kind == "data" and not r.denied for r in records), [r for r in records if r.kind != "data"]
    meta = [r for r in records if r.retain]
    assert {r.topic.removeprefix(PREFIX) for r in meta} == {f"{name}/meta" for name in INITIAL}
    temperature_meta = next(r for r in meta if r.topic == PREFIX + "temperature/meta")
    assert temperature_meta.payload is not None
    assert MetadataObject.from_json(temperature_meta.payload, where="meta").units == "degC"

    # Every point is published as a valid Scalar with the register's value, in time order.
    for name, value in INITIAL.items():
        scalars = [ScalarObject.from_json(r.payload or {}, where=r.topic) for r in readings(records, name)]
        assert scalars, f"no reading of {name}"
        assert all(s.valid for s in scalars), name
        stamps = [s.timestamp for s in scalars]
        assert stamps == sorted(stamps), name
        if name != "setpoint":
            assert {s.value for s in scalars} == {value}, name
    # The setpoint reads 0 until the write and 21.5 once the write has been done (a poll that
    # read the register just before the write may still arrive after the input: hence "last").
    setpoint = readings(records, "setpoint")
    assert all(r.payload and r.payload["Value"] == 0 for r in setpoint if r.after_input == 0)
    assert {r.payload["Value"] for r in setpoint if r.payload} <= {0, 21.5}
    assert setpoint[-1].after_input == 1 and setpoint[-1].payload is not None
    assert setpoint[-1].payload["Value"] == 21.5
