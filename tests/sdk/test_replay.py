"""The replay harness and recorder: inputs in order, outputs recorded reproducibly, CSV and JSONL files."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridhub.cli import app as cli
from gridhub.edge.marketplace import Marketplace, MarketplaceSettings, MarketplaceUser
from gridhub.sdk.mqtt import MarketplaceClient
from gridhub.sdk.replay import (
    AppIdentity,
    InputMessage,
    ReplayError,
    read_csv_inputs,
    read_inputs,
    read_jsonl_inputs,
    replay,
    resolve_target,
)
from tests.conftest import free_port
from tests.sdk.test_check import GOOD_APP

# An SDK app: doubles each Scalar it receives, keeping the input's Timestamp and Valid (4.5, 4.8).
SDK_APP = textwrap.dedent(
    """
    from typing import Any
    from gridhub.sdk import App, ConfigurationError, ScalarObject

    class Doubler(App):
        role = "algorithm"

        def configure(self, config: dict[str, Any]) -> None:
            if not isinstance(config.get("input"), str):
                raise ConfigurationError("input: expected a topic name")
            self.source = config["input"]

        def start(self) -> None:
            self.subscribe(self.source, self.on_reading)

        def on_reading(self, topic: str, reading: Any) -> None:
            if isinstance(reading, ScalarObject):
                self.publish_scalar("double", reading.value * 2, timestamp=reading.timestamp, valid=reading.valid)
            else:
                self.publish_object("echo", reading)

    if __name__ == "__main__":
        Doubler.main()
    """
)
TOPIC = "sensor/data/acme_meter_01/load"
IDENTITY = AppIdentity(vendor="acme", name="doubler", version="1.0.0")


def scalar(timestamp: int, value: float, valid: bool = True) -> dict[str, object]:
    return {"topic": TOPIC, "payload": {"Timestamp": timestamp, "Value": value, "Valid": valid}}


@pytest.fixture
def sdk_app(tmp_path: Path) -> list[str]:
    script = tmp_path / "doubler.py"
    script.write_text(SDK_APP, encoding="utf-8")
    return [sys.executable, str(script)]


def test_outputs_follow_inputs_in_order_and_replays_are_identical(sdk_app: list[str]) -> None:
    inputs = [scalar(1_700_000_000 + 10 * i, i + 0.5, valid=i != 3) for i in range(25)]
    first = replay(sdk_app, inputs, {"input": TOPIC}, identity=IDENTITY)
    doubled = [r for r in first if r.topic == "algorithm/data/acme_doubler_01/double"]
    assert [r.payload for r in doubled] == [
        {"Timestamp": 1_700_000_000 + 10 * i, "Value": 2 * i + 1.0, "Valid": i != 3} for i in range(25)
    ]
    assert [r.after_input for r in doubled] == list(range(1, 26))
    assert [r.seq for r in first] == list(range(1, len(first) + 1))
    second = replay(sdk_app, inputs, {"input": TOPIC}, identity=IDENTITY)
    assert [r.to_json() for r in second] == [r.to_json() for r in first]


def test_status_and_error_reports_are_recorded_with_the_outputs(sdk_app: list[str]) -> None:
    inputs = [scalar(100, 1.0), {"topic": TOPIC, "payload_raw": "{not json"}, scalar(101, 2.0)]
    records = replay(sdk_app, inputs, {"input": TOPIC}, identity=IDENTITY)
    assert [(r.kind, r.after_input) for r in records] == [("data", 1), ("error", 2), ("data", 3)]
    assert records[1].topic == "storage/data/error/acme_doubler_01"
    assert records[1].payload is not None and records[1].payload["Errno"] == 1  # ERRNO_JSON_INVALID


def test_a_refused_configuration_is_a_clear_error(sdk_app: list[str]) -> None:
    with pytest.raises(ReplayError, match=r"refused its configuration.*input: expected a topic name"):
        replay(sdk_app, [scalar(1, 1.0)], {"wrong": 1}, identity=IDENTITY)


def test_an_app_in_another_language_style_is_replayed(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(GOOD_APP, encoding="utf-8")
    records = replay([sys.executable, str(script)], [scalar(7, 4.0), scalar(8, 5.0)], {"input": TOPIC, "scale": 3},
                     identity=IDENTITY)  # fmt: skip
    assert [(r.topic, r.payload) for r in records] == [
        ("algorithm/data/acme_doubler_01/scaled", {"Timestamp": 7, "Value": 12.0, "Valid": True}),
        ("algorithm/data/acme_doubler_01/scaled", {"Timestamp": 8, "Value": 15.0, "Valid": True}),
    ]


def test_cli_replays_a_csv_with_a_column_map_into_a_jsonl_file(tmp_path: Path, sdk_app: list[str]) -> None:
    csv_file = tmp_path / "load.csv"
    csv_file.write_text("timestamp,load,spare\n1700000000,10.5,x\n2023-11-14T22:13:30Z,11,y\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ContainerName": "acme_doubler_01", "ContainerConfig": {"input": TOPIC}}))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli,
        ["app", "replay", "--input", str(csv_file), "--map", f"load={TOPIC}", "--config", str(config),
         "--output", str(out), "--vendor", "acme", "--name", "doubler", "--", *sdk_app],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [
        {"seq": 1, "topic": "algorithm/data/acme_doubler_01/double",
         "payload": {"Timestamp": 1700000000, "Value": 21.0, "Valid": True}, "qos": 1, "retain": False,
         "after_input": 1},
        {"seq": 2, "topic": "algorithm/data/acme_doubler_01/double",
         "payload": {"Timestamp": 1700000010, "Value": 22, "Valid": True}, "qos": 1, "retain": False,
         "after_input": 2},
    ]  # fmt: skip
    assert "2 inputs fed, 2 messages recorded" in result.output


def test_cli_reports_a_bad_input_file_with_its_line(tmp_path: Path, sdk_app: list[str]) -> None:
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps(scalar(1, 1.0)) + "\n" + '{"topic": "a b", "payload": {}}\n')
    result = CliRunner().invoke(cli, ["app", "replay", "--input", str(bad), "--", *sdk_app])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output and "spaces are not permitted" in result.output


def test_jsonl_inputs_keep_payload_bytes_compact_and_raw_payloads_verbatim() -> None:
    text = '# comment\n{"topic":"a/b","payload":{"Value": 1, "Valid": true}}\n\n{"topic":"a/c","payload_raw":"x y"}\n'
    assert read_jsonl_inputs(text, "f") == [
        InputMessage("a/b", b'{"Value":1,"Valid":true}'),
        InputMessage("a/c", b"x y"),
    ]
    with pytest.raises(ReplayError, match="f:1: expected a 'payload' object"):
        read_jsonl_inputs('{"topic":"a/b"}', "f")


def test_csv_rows_become_scalars_and_bad_cells_are_named() -> None:
    text = "time,a,b\n100,1.5,true\n101,,2\n"
    messages = read_csv_inputs(text, "in.csv", {"b": "x/b", "a": "x/a"})
    assert [(m.topic, json.loads(m.payload)) for m in messages] == [
        ("x/b", {"Timestamp": 100, "Value": True, "Valid": True}),
        ("x/a", {"Timestamp": 100, "Value": 1.5, "Valid": True}),
        ("x/b", {"Timestamp": 101, "Value": 2, "Valid": True}),
    ]
    with pytest.raises(ReplayError, match=re.escape("in.csv:3 a: expected a number or true/false, got 'hot'")):
        read_csv_inputs("time,a\n1,2\n2,hot\n", "in.csv", {"a": "x/a"})
    with pytest.raises(ReplayError, match="needs --map"):
        read_csv_inputs(text, "in.csv", {})
    with pytest.raises(ReplayError, match="not in the header: c"):
        read_csv_inputs(text, "in.csv", {"c": "x/c"})


def test_read_inputs_refuses_a_map_for_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("")
    with pytest.raises(ReplayError, match="CSV inputs only"):
        read_inputs(path, {"a": "x/a"})


def test_app_targets_are_recognised_or_refused_clearly(tmp_path: Path) -> None:
    target = resolve_target("gridhub.edge.apps.demo_sensor:DemoSensor")
    assert target.argv[0] == sys.executable and "DemoSensor" in target.argv[-1]
    with pytest.raises(ReplayError, match="cannot find the app's entry point"):
        resolve_target(tmp_path)
    with pytest.raises(ReplayError, match="not an executable"):
        resolve_target([str(tmp_path / "missing")])


def test_record_captures_filtered_topics_as_replayable_jsonl(tmp_path: Path) -> None:
    port = free_port()
    user = MarketplaceUser.core_service("gridhub-manager")
    marketplace = Marketplace(MarketplaceSettings(mode="embedded", port=port), tmp_path / "mp", [user])
    marketplace.start()
    out = tmp_path / "rec.jsonl"
    results: list[object] = []
    publisher = MarketplaceClient("publisher", marketplace.address_for(user))
    try:
        publisher.start()
        runner = threading.Thread(
            target=lambda: results.append(CliRunner().invoke(cli, [
                "app", "record", "--broker", f"127.0.0.1:{port}", "--username", user.username, "--password",
                user.password, "--filter", "sensor/data/+/a", "--count", "3", "--duration", "20", "--output", str(out),
            ])),
        )  # fmt: skip
        runner.start()
        number = 0
        while runner.is_alive():
            number += 1
            publisher.publish("sensor/data/x_y_01/b", {"Value": -number}, qos=1)
            publisher.publish("sensor/data/x_y_01/a", {"Value": number}, qos=1, wait=True)
            runner.join(0.05)
    finally:
        publisher.stop()
        marketplace.stop()
    result = results[0]
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    recorded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in recorded] == [1, 2, 3]
    assert {r["topic"] for r in recorded} == {"sensor/data/x_y_01/a"}
    values = [r["payload"]["Value"] for r in recorded]
    assert values == sorted(values) and all(v > 0 for v in values)
    # The recording is itself a replay input file.
    assert [m.topic for m in read_inputs(out)] == ["sensor/data/x_y_01/a"] * 3


def test_record_refuses_a_bad_broker_address(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["app", "record", "--broker", "host:port", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output


def test_inputs_on_topics_the_app_never_subscribed_to_are_named_in_a_warning(sdk_app: list[str]) -> None:
    other, typo = "sensor/data/acme_meter_02/load", "sensor/data/acme_meter_01/laod"
    inputs = [scalar(1, 1.0), {**scalar(2, 2.0), "topic": other}, {**scalar(3, 3.0), "topic": typo},
              {**scalar(4, 4.0), "topic": other}]  # fmt: skip
    warnings: list[str] = []
    records = replay(sdk_app, inputs, {"input": TOPIC}, identity=IDENTITY, warn=warnings.append)
    assert [r.after_input for r in records] == [1]  # only the subscribed topic reached the app
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning.startswith("acme_doubler_01: 3 inputs went to topics no subscription of the app matched")
    assert f"{other} (2), {typo} (1)" in warning
    assert f"Its subscriptions: status/request, config/response/acme_doubler_01, command/acme_doubler_01, {TOPIC}" in (
        warning
    )
    assert TOPIC + " (" not in warning


def test_a_replay_whose_inputs_all_reach_the_app_warns_nothing(sdk_app: list[str]) -> None:
    warnings: list[str] = []
    replay(sdk_app, [scalar(1, 1.0), scalar(2, 2.0)], {"input": "sensor/data/+/load"}, identity=IDENTITY,
           warn=warnings.append)  # fmt: skip
    assert warnings == []


def test_cli_warns_on_stderr_about_inputs_nobody_subscribed_to(tmp_path: Path, sdk_app: list[str]) -> None:
    inputs = tmp_path / "in.jsonl"
    stray = "sensor/data/acme_meter_09/load"
    inputs.write_text("\n".join(json.dumps(m) for m in (scalar(1, 1.0), {**scalar(2, 2.0), "topic": stray})) + "\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"input": TOPIC}))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli,
        ["app", "replay", "--input", str(inputs), "--config", str(config), "--output", str(out),
         "--vendor", "acme", "--name", "doubler", "--", *sdk_app],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: acme_doubler_01: 1 input went to topics no subscription of the app matched" in result.stderr
    assert f"{stray} (1)" in result.stderr
    assert "2 inputs fed, 1 messages recorded" in result.stderr
    assert "warning" not in result.stdout
    assert len(out.read_text().splitlines()) == 1
