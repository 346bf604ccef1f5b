"""gridhub app check: a conforming plain-paho app passes, a faulty one fails the right rules, SDK apps pass."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridhub.cli import app as cli
from gridhub.sdk.check import RULES, CheckOptions, check, expected_qos_retain, payload_problem
from gridhub.sdk.replay import AppIdentity, resolve_target

# A correct LV-CAP app in plain paho-mqtt (no gridhub SDK): what an app in any language does.
GOOD_APP = textwrap.dedent(
    """
    import json, os, time
    import paho.mqtt.client as mqtt

    iid, apid = os.environ["LVCAP_IID"], os.environ["LVCAP_APID"]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=apid)
    c.username_pw_set(os.environ["LVCAP_USERNAME"], os.environ["LVCAP_PASSWORD"])
    c.will_set("status/response/" + iid, json.dumps({"Status": 2, "Message": "lost"}), qos=1)
    state = {"config": None, "stopping": False, "final": None}

    def send(topic, body, qos=1):
        return c.publish(topic, json.dumps(body, separators=(",", ":")), qos=qos)

    def status(code, message=None):
        body = {"Status": code, "Timestamp": int(time.time())}
        if message:
            body["Message"] = message
        return send("status/response/" + iid, body)

    def on_connect(c, u, flags, reason, props):
        c.subscribe([("status/request", 0), ("config/response/" + iid, 1), ("command/" + iid, 1)])

    def on_subscribe(c, u, mid, codes, props):
        if state["config"] is None:
            send("config/request/" + iid, {"Timestamp": int(time.time())})

    def on_message(c, u, m):
        try:
            body = json.loads(m.payload)
        except ValueError:
            send("storage/data/error/" + iid, {"Errno": 1, "Message": "bad JSON on " + m.topic})
            return
        if m.topic == "status/request":
            if not state["stopping"]:
                status(1 if state["config"] else 5)
        elif m.topic == "config/response/" + iid:
            conf = body.get("Configuration")
            cc = conf.get("ContainerConfig") if isinstance(conf, dict) else None
            if not isinstance(cc, dict) or not isinstance(cc.get("scale"), (int, float)):
                send("storage/data/error/" + iid, {"Errno": 9, "Message": "need ContainerConfig.scale"})
                if state["config"] is None:
                    status(5, "waiting for a usable configuration")
                return
            first = state["config"] is None
            state["config"] = cc
            status(1)
            if first:
                c.subscribe(cc["input"], 1)
        elif m.topic == "command/" + iid:
            if body.get("Command") == 1:
                state["stopping"] = True
                c.unsubscribe(["status/request", "config/response/" + iid, "command/" + iid])
                state["final"] = status(4).mid
        elif state["config"] and m.topic == state["config"]["input"]:
            out = {"Timestamp": body["Timestamp"], "Value": body["Value"] * state["config"]["scale"],
                   "Valid": body["Valid"]}
            send("algorithm/data/" + iid + "/scaled", out)

    def on_publish(c, u, mid, reason, props):
        if mid == state["final"]:
            c.disconnect()

    c.on_connect, c.on_subscribe, c.on_message, c.on_publish = on_connect, on_subscribe, on_message, on_publish
    c.connect(os.environ["LVCAP_BROKER_HOST"], int(os.environ["LVCAP_BROKER_PORT"]))
    c.loop_forever()
    """
)

# An app that gets many things wrong: client id, order, QoS, no will, swallowed config errors,
# another app's topic, a bad topic name, a non-JSON payload, and it ignores the shut-down command.
BAD_APP = textwrap.dedent(
    """
    import json, os, time
    import paho.mqtt.client as mqtt

    iid = os.environ["LVCAP_IID"]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bad-client")
    c.username_pw_set(os.environ["LVCAP_USERNAME"], os.environ["LVCAP_PASSWORD"])

    def on_connect(c, u, flags, reason, props):
        c.publish("config/request/" + iid, "{}", qos=0)
        c.subscribe([("status/request", 0), ("config/response/" + iid, 1), ("command/" + iid, 1)])

    def on_message(c, u, m):
        if m.topic in ("status/request", "config/response/" + iid):
            c.publish("status/response/" + iid, json.dumps({"Status": 1}), qos=1)
        if m.topic == "config/response/" + iid:
            c.publish("sensor/data/other_app_01/stolen", json.dumps({"Timestamp": 1, "Value": 1, "Valid": True}))
            c.publish("sensor/data/" + iid + "/bad topic", json.dumps({"Timestamp": 1, "Value": 1, "Valid": True}))
            c.publish("sensor/data/" + iid + "/raw", "not json", qos=1)

    c.on_connect, c.on_message = on_connect, on_message
    c.connect(os.environ["LVCAP_BROKER_HOST"], int(os.environ["LVCAP_BROKER_PORT"]))
    c.loop_forever()
    """
)

# The status/request branch of GOOD_APP, and two ways plain-paho apps get it wrong in the field.
_ANSWER_POLL = """
    if m.topic == "status/request":
        if not state["stopping"]:
            status(1 if state["config"] else 5)
"""
# A watchdog that decides the manager is gone when polls pause for 2 s, and goes quiet for good.
_QUIET_AFTER_A_GAP = """
    if m.topic == "status/request":
        now = time.monotonic()
        if now - state.setdefault("last_poll", now) > 2.0:
            state["orphaned"] = True
        state["last_poll"] = now
        if not state["stopping"] and not state.get("orphaned"):
            status(1 if state["config"] else 5)
"""
# Coalesces polls: one answer 0.2 s after the first poll of a batch, however many came meanwhile.
_ONE_ANSWER_PER_BURST = """
    if m.topic == "status/request":
        if not state["stopping"] and not state.get("pending"):
            state["pending"] = True
            def answer():
                state["pending"] = False
                status(1 if state["config"] else 5)
            threading.Timer(0.2, answer).start()
"""
assert _ANSWER_POLL[1:] in GOOD_APP
QUIET_AFTER_A_GAP_APP = GOOD_APP.replace(_ANSWER_POLL[1:], _QUIET_AFTER_A_GAP[1:])
ONE_ANSWER_PER_BURST_APP = GOOD_APP.replace(_ANSWER_POLL[1:], _ONE_ANSWER_PER_BURST[1:]).replace(
    "import json, os, time", "import json, os, threading, time"
)

IDENTITY = AppIdentity(vendor="acme", name="scaler", version="1.0.0")
GOOD_CONFIG = {"input": "sensor/data/acme_meter_01/load", "scale": 2}


def write_app(tmp_path: Path, source: str, name: str) -> Path:
    script = tmp_path / name
    script.write_text(source, encoding="utf-8")
    return script


def outcomes(report: object) -> dict[str, str]:
    return {r.rule.id: r.outcome for r in report.results}  # type: ignore[attr-defined]


def test_a_correct_plain_paho_app_passes_every_rule(tmp_path: Path) -> None:
    script = write_app(tmp_path, GOOD_APP, "good_app.py")
    inputs_file = tmp_path / "in.jsonl"
    inputs_file.write_text(
        json.dumps({"topic": GOOD_CONFIG["input"], "payload": {"Timestamp": 5, "Value": 3, "Valid": True}}) + "\n"
    )
    from gridhub.sdk.replay import read_inputs

    report = check(
        resolve_target([sys.executable, str(script)]),
        IDENTITY,
        GOOD_CONFIG,
        CheckOptions(timeout=5.0, grace=5.0, inputs=read_inputs(inputs_file)),
    )
    results = outcomes(report)
    assert report.passed, report.to_json()
    assert results == {rule.id: "pass" for rule in RULES}
    assert "after SIGKILL the broker published" in report.result("lwt").detail
    assert "after a 3 s gap answered in" in report.result("missed-poll").detail
    assert "5 back-to-back polls all answered with 1" in report.result("missed-poll").detail


def test_a_faulty_app_fails_exactly_the_rules_it_breaks(tmp_path: Path) -> None:
    script = write_app(tmp_path, BAD_APP, "bad_app.py")
    report = check(resolve_target([sys.executable, str(script)]), IDENTITY, GOOD_CONFIG,
                   CheckOptions(timeout=3.0, grace=1.0))  # fmt: skip
    results = outcomes(report)
    assert not report.passed
    assert {rule for rule, outcome in results.items() if outcome == "fail"} == {
        "connect",
        "startup-order",
        "config-request",
        "config-error",
        "shutdown",
        "lwt",
        "topic-names",
        "payloads",
        "own-topics",
        "qos-retain",
    }
    assert results["config-ok"] == results["status-poll"] == results["config-twice"] == results["missed-poll"] == "pass"
    assert "'bad-client'" in report.result("connect").detail
    assert "QoS 0" in report.result("config-request").detail
    assert "no Last Will" in report.result("lwt").detail
    assert "publish sensor/data/other_app_01/stolen" in report.result("own-topics").detail
    assert "bad topic" in report.result("topic-names").detail
    assert "still running" in report.result("shutdown").detail


def test_an_sdk_app_passes_through_the_cli_with_a_rule_table(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"interval": 0.2}))
    result = CliRunner().invoke(
        cli,
        ["app", "check", "--config", str(config), "--vendor", "gridhub", "--name", "demo-sensor", "--timeout", "5",
         "gridhub.edge.apps.demo_sensor:DemoSensor"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "gridhub_demo-sensor_01" in result.output
    for rule in RULES:
        assert rule.id in result.output
    assert "result: PASS" in result.output


def test_cli_exits_non_zero_and_names_the_failed_rules(tmp_path: Path) -> None:
    script = write_app(tmp_path, BAD_APP, "bad_app.py")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(GOOD_CONFIG))
    result = CliRunner().invoke(
        cli,
        ["app", "check", "--json", "--config", str(config), "--vendor", "acme", "--name", "scaler", "--grace", "1",
         "--timeout", "3", "--", sys.executable, str(script)],
    )  # fmt: skip
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["passed"] is False
    failed = {r["rule"] for r in report["results"] if r["outcome"] == "fail"}
    assert {"connect", "lwt", "own-topics"} <= failed


def test_an_app_that_cannot_start_is_reported_not_crashed(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["app", "check", "--", str(tmp_path / "no-such-program")])
    assert result.exit_code == 2
    assert "not an executable" in result.output


def test_payload_rules_follow_the_api_objects() -> None:
    iid = "acme_scaler_01"
    assert payload_problem(f"sensor/data/{iid}/t", b'{"Timestamp":1,"Value":2.5,"Valid":true}') is None
    assert "Valid" in (payload_problem(f"sensor/data/{iid}/t", b'{"Timestamp":1,"Value":2.5}') or "")
    assert payload_problem(f"algorithm/data/{iid}/free", b'{"Anything":[1,2]}') is None  # 8.4: any JSON object
    assert payload_problem(f"status/response/{iid}", b'{"Message":"no status"}') is not None
    assert payload_problem(f"storage/data/error/{iid}", b'{"Errno":9,"Message":"x"}') is None
    assert payload_problem(f"sensor/data/{iid}/t", b"[1,2]") is not None
    assert expected_qos_retain(f"sensor/data/{iid}/t/meta") == (1, True)
    assert expected_qos_retain(f"storage/data/{iid}/t") == (2, False)
    assert expected_qos_retain(f"storage/request/newdata/{iid}") == (2, False)
    assert expected_qos_retain(f"status/response/{iid}") == (1, False)


def test_a_given_bad_config_drives_the_error_path(tmp_path: Path) -> None:
    script = write_app(tmp_path, GOOD_APP, "good_app.py")
    config, bad = tmp_path / "config.json", tmp_path / "bad.json"
    config.write_text(json.dumps(GOOD_CONFIG))
    bad.write_text(json.dumps({"input": GOOD_CONFIG["input"]}))  # no scale: the app must refuse it
    result = CliRunner().invoke(
        cli,
        ["app", "check", "--json", "--config", str(config), "--bad-config", str(bad), "--vendor", "acme",
         "--name", "scaler", "--", sys.executable, str(script)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    error_path = next(r for r in report["results"] if r["rule"] == "config-error")
    assert error_path["outcome"] == "pass"
    assert "status 5" in error_path["detail"] and "need ContainerConfig.scale" in error_path["detail"]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (QUIET_AFTER_A_GAP_APP, "no answer within 1 s to the poll after a 3 s gap"),
        (ONE_ANSWER_PER_BURST_APP, "5 back-to-back polls got 1 answers within 1 s"),
    ],
    ids=["quiet-after-a-gap", "one-answer-per-burst"],
)
def test_an_app_that_misses_polls_after_a_gap_or_in_a_burst_fails_missed_poll(
    tmp_path: Path, source: str, problem: str
) -> None:
    script = write_app(tmp_path, source, "app.py")
    report = check(resolve_target([sys.executable, str(script)]), IDENTITY, GOOD_CONFIG,
                   CheckOptions(timeout=5.0, grace=5.0, poll_gap=3.0))  # fmt: skip
    assert report.failed() == ["missed-poll"], report.to_json()
    detail = report.result("missed-poll").detail
    assert problem in detail and "restarts an app after three unanswered polls" in detail
