"""Shutdown procedure (Annex 4 section 6 and 8.2.3, Tables 8-9): SIGTERM to `gridhub edge run`."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.conformance.lvcap.conftest import (
    COMMAND_SHUT_DOWN,
    MODE_PARAMS,
    STATUS_MSG_OK,
    STATUS_SHUT_DWN,
    AppSpec,
    Runtime,
    pid_alive,
    wait_until,
)

StartRuntime = Callable[..., Runtime]


@pytest.fixture(params=MODE_PARAMS)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def events(runtime: Runtime, name: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in runtime.app(name).events() if e["event"] == kind]


def running_pid(runtime: Runtime, name: str) -> int:
    wait_until(lambda: bool(events(runtime, name, "config")), 15, f"{name} configured", runtime)
    runtime.wait_app(name, lambda r: r["state"] == "running", 10, "running")
    return int(events(runtime, name, "start")[-1]["pid"])


def sigterm_and_wait(runtime: Runtime) -> int:
    runtime.proc.send_signal(signal.SIGTERM)
    try:
        return runtime.proc.wait(20)
    except Exception as exc:
        raise AssertionError(f"gridhub edge run did not exit after SIGTERM\n{runtime.log()}") from exc


def test_sigterm_sends_shutdown_command_waits_for_shut_dwn_then_terminates(
    fresh_runtime: StartRuntime, mode: str
) -> None:
    """Section 6: "Container Manager sends a shutdown command to the Application" - command/<IID>
    {"Command": 1} at QoS 1, not retained (8.2.3) - "the Application must respond ... with the
    STATUS_SHUT_DWN status. The Container Manager will then shut down the container"."""
    runtime = fresh_runtime(mode, [AppSpec("polite", script="ok"), AppSpec("player")], manager={"status_interval": 0.5})
    player = runtime.client("player")
    player.subscribe_table2()
    player.auto_status = STATUS_MSG_OK
    player.answer_command = STATUS_SHUT_DWN
    player.publish(f"config/request/{player.iid}", {}, qos=1)
    player.wait_for(f"config/response/{player.iid}")
    pid = running_pid(runtime, "polite")
    since = player.mark()
    code = sigterm_and_wait(runtime)
    command = player.wait_for(f"command/{player.iid}", since=since, timeout=1, what="(shutdown command)")
    assert command.qos == 1 and not command.retain, command
    assert command.json()["Command"] == COMMAND_SHUT_DOWN
    [received] = events(runtime, "polite", "command")
    assert received["qos"] == 1 and not received["retain"], received
    assert json.loads(received["payload"])["Command"] == COMMAND_SHUT_DOWN
    sent = [e for e in runtime.app("polite").events() if e["event"] == "status-sent" and e["status"] == STATUS_SHUT_DWN]
    assert sent, "the app answered STATUS_SHUT_DWN"
    # Terminated by the manager after its STATUS_SHUT_DWN (it would otherwise run for ever).
    wait_until(lambda: not pid_alive(pid), 10, f"app process {pid} terminated", runtime)
    terms = events(runtime, "polite", "sigterm")
    assert terms and terms[0]["time"] >= sent[0]["time"], "terminated only after STATUS_SHUT_DWN"
    assert code == 0, f"gridhub edge run exited with {code} after SIGTERM\n{runtime.log()}"


def test_app_ignoring_shutdown_is_killed_after_shutdown_grace(fresh_runtime: StartRuntime, mode: str) -> None:
    """Section 6: "If the Container Manager does not receive a status message ... which includes the
    STATUS_SHUT_DWN status ... the container will automatically be shut down" (after shutdown_grace):
    an app that ignores the command and SIGTERM is killed, and the runtime still exits."""
    runtime = fresh_runtime(mode, [AppSpec("stubborn", script="ignore")], manager={"status_interval": 0.5})
    pid = running_pid(runtime, "stubborn")
    sigterm_and_wait(runtime)
    assert events(runtime, "stubborn", "command"), "the app was sent the shutdown command first"
    wait_until(lambda: not pid_alive(pid), 10, f"app process {pid} killed", runtime)
    assert not events(runtime, "stubborn", "sigterm")  # it ignored SIGTERM: it was SIGKILLed
