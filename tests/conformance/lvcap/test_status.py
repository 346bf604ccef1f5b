"""Status polling and the manager's restart/stop policy (Annex 4 sections 5.2, 8.1.3, 8.2.2 Tables 6-7).

Each test starts a runtime of its own, because the rule under test changes an app's life.
Where a rule must not be confused with the missed-poll rule, the status interval is long enough
that no poll can be judged during the test, so whatever happens is caused by the message under test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conformance.lvcap.conftest import (
    MODE_PARAMS,
    STATUS_INITIAL,
    STATUS_MSG_OK,
    AppSpec,
    LvcapClient,
    Runtime,
    pid_alive,
    wait_until,
)

LONG = {"status_interval": 60.0}

StartRuntime = Callable[..., Runtime]


@pytest.fixture(params=MODE_PARAMS)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def configured(runtime: Runtime, name: str, auto_status: int | None = STATUS_MSG_OK) -> LvcapClient:
    """Play an attached app through the start-up procedure of 5.2 (connect, subscribe, request)."""
    app = runtime.client(name)
    app.subscribe_table2()
    app.auto_status = auto_status
    since = app.mark()
    app.publish(f"config/request/{app.iid}", {"Timestamp": int(time.time())}, qos=1)
    app.wait_for(f"config/response/{app.iid}", since=since, what="(configuration)")
    return app


def starts(runtime: Runtime, name: str) -> list[dict[str, Any]]:
    return [e for e in runtime.app(name).events() if e["event"] == "start"]


def test_status_request_periodic_qos0_with_timestamp_and_ok_keeps_app_running(
    fresh_runtime: StartRuntime, mode: str
) -> None:
    """8.2.2 Table 6: status/request is sent periodically at QoS 0 with a Timestamp (Int64), not
    retained; an app answering STATUS_MSG_OK (1) every time keeps running and is never told to stop."""
    runtime = fresh_runtime(mode, [AppSpec("ok")], manager={"status_interval": 0.3})
    app = configured(runtime, "ok")
    since = app.mark()
    wait_until(lambda: len(app.received("status/request", since)) >= 5, 10, "five status requests", runtime)
    polls = app.received("status/request")
    assert len(polls) >= 5
    for poll in polls:
        assert poll.qos == 0, f"status/request must be QoS 0 (Table 6), got {poll.qos}"
        assert not poll.retain, "status/request must not be retained (8.2.2)"
        body = poll.json()
        assert isinstance(body, dict) and isinstance(body.get("Timestamp"), int), f"no Int64 Timestamp: {body}"
        assert not isinstance(body["Timestamp"], bool)
    row = runtime.app_status("ok")
    assert row["state"] == "running", row
    assert row["restarts"] == 0 and row["consecutive_failures"] == 0, row
    assert app.received(f"command/{app.iid}") == [], "a healthy app was told to shut down"


def test_status_initial_makes_manager_resend_configuration(fresh_runtime: StartRuntime, mode: str) -> None:
    """5.2 step 7 and Table 7: STATUS_INITIAL (5) makes the Container Manager re-send the configuration,
    and is not a failure."""
    runtime = fresh_runtime(mode, [AppSpec("init", config={"k": "v"})], manager=LONG)
    app = configured(runtime, "init", auto_status=None)
    for _ in range(2):
        since = app.mark()
        app.status(STATUS_INITIAL)
        msg = app.wait_for(f"config/response/{app.iid}", since=since, what="after STATUS_INITIAL")
        assert msg.qos == 1 and not msg.retain
        assert msg.json()["Configuration"] == {"ContainerName": app.iid, "ContainerConfig": {"k": "v"}}
    row = runtime.app_status("init")
    assert row["consecutive_failures"] == 0 and row["restarts"] == 0, row


def test_silent_app_restarted_after_three_missed_polls_stopped_after_five(
    fresh_runtime: StartRuntime, mode: str
) -> None:
    """8.2.2: "After three successive failed status requests the Application will be restarted ... a
    total of 5 consecutive requests, it will be permanently shut down, and this error logged in the
    database."

    An attached app cannot be restarted by the runtime: it is told command/<IID> {"Command": 1} (the
    runtime's documented way to restart an attached app, section 6) and is expected back with a new
    configuration request. After the fifth consecutive failure it is stopped for good (told to shut down
    again), shown as failed-permanently in status.json and `gridhub edge status`, and the error is stored.
    """
    runtime = fresh_runtime(mode, [AppSpec("mute")], manager={"status_interval": 0.4})
    app = configured(runtime, "mute")
    # Answer until one poll has certainly been answered, then fall silent.
    answered = app.wait_for("status/request", since=app.mark(), what="(a poll to answer)")
    silent_from = app.mark()
    app.auto_status = None
    assert answered
    command = app.wait_for(f"command/{app.iid}", since=silent_from, timeout=10, what="(restart after 3 missed polls)")
    index = app.messages.index(command)
    missed = [m for m in app.messages[silent_from:index] if m.topic == "status/request"]
    assert 3 <= len(missed) <= 4, f"restarted after {len(missed)} unanswered polls, expected 3 (8.2.2)"
    assert command.qos == 1 and not command.retain
    assert command.json()["Command"] == 1
    runtime.wait_app("mute", lambda r: r["restarts"] >= 1, 5, "restart counted in status.json")
    # The app "restarts": it asks for its configuration again and stays silent.
    since = app.mark()
    app.publish(f"config/request/{app.iid}", {}, qos=1)
    app.wait_for(f"config/response/{app.iid}", since=since, what="(configuration after restart)")
    row = runtime.wait_app("mute", lambda r: r["state"] == "failed-permanently", 10, "permanent stop after 5 failures")
    assert row["consecutive_failures"] >= 5, row
    app.wait_for(f"command/{app.iid}", since=since, what="(shut down for good)")
    error = runtime.wait_error(lambda e: app.iid in str(e), 10, f"about {app.iid} being stopped")
    assert error
    result = runtime.cli("edge", "status", "--config", str(runtime.config_path))
    assert result.returncode == 0, result.stderr
    line = next((ln for ln in result.stdout.splitlines() if app.iid in ln), "")
    assert "failed-permanently" in line, f"`gridhub edge status` does not show it:\n{result.stdout}"
    as_json = runtime.cli("edge", "status", "--config", str(runtime.config_path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert "failed-permanently" in as_json.stdout and app.iid in as_json.stdout, as_json.stdout
    # Stopped for good: no further restart requests arrive.
    later = app.mark()
    time.sleep(1.2)
    assert runtime.app_status("mute")["state"] == "failed-permanently"
    assert len(app.received(f"command/{app.iid}", later)) <= 1


@pytest.mark.parametrize("behaviour,code", [("fail_once", 2), ("err_once", 3)])
def test_status_fail_or_err_with_message_restarts_and_stores_message(
    fresh_runtime: StartRuntime, mode: str, behaviour: str, code: int
) -> None:
    """Table 7: STATUS_MSG_FAIL (2) / STATUS_MSG_ERR (3): "The Container Manager will restart the
    container. If the key "Message" is present ... it will be stored in the Data Storage Application
    as an error message." A spawned app: its process is stopped and a new one started."""
    runtime = fresh_runtime(mode, [AppSpec("flaky", script=behaviour)], manager=LONG)
    app = runtime.app("flaky")
    wait_until(lambda: len(starts(runtime, "flaky")) >= 2, 12, "a new process after the failure", runtime)
    first, second = starts(runtime, "flaky")[:2]
    assert first["pid"] != second["pid"]
    sent = [e for e in app.events() if e["event"] == "status-sent" and e["pid"] == first["pid"]]
    assert sent and sent[0]["status"] == code
    runtime.wait_error(lambda e: app.message in str(e), 10, f"with the Message {app.message!r}")
    row = runtime.wait_app("flaky", lambda r: r["state"] == "running", 10, "running again")
    assert row["restarts"] >= 1, row


def test_status_shut_dwn_stops_app_and_it_is_not_restarted(fresh_runtime: StartRuntime, mode: str) -> None:
    """Table 7 and section 6: STATUS_SHUT_DWN (4): the app is stopped and "will not be restarted unless
    the Container Manager configuration is altered or the Container Manager is re-started"."""
    runtime = fresh_runtime(
        mode, [AppSpec("quitter", script="shut_self")], manager={"status_interval": 0.3, "restart_backoff": 0.1}
    )
    app = runtime.app("quitter")
    row = runtime.wait_app("quitter", lambda r: r["state"] == "shut-down", 10, "stopped after STATUS_SHUT_DWN")
    assert row["pid"] is None, row
    # Several poll intervals and back-off periods later it is still stopped and was never started again.
    time.sleep(1.5)
    assert len(starts(runtime, "quitter")) == 1, app.events()
    assert runtime.app_status("quitter")["state"] == "shut-down"
    pid = starts(runtime, "quitter")[0]["pid"]
    wait_until(lambda: not pid_alive(pid), 10, f"process {pid} ended", runtime)


def test_status_restart_restarts_app_at_once(fresh_runtime: StartRuntime, mode: str) -> None:
    """Table 7 and section 6: STATUS_RESTART (6): "The Container Manager will then shut down the
    Application and start it back up again immediately" - a new process of a spawned app starts."""
    runtime = fresh_runtime(mode, [AppSpec("phoenix", script="restart_once")], manager=LONG)
    wait_until(lambda: len(starts(runtime, "phoenix")) >= 2, 12, "a new process after STATUS_RESTART", runtime)
    first, second = starts(runtime, "phoenix")[:2]
    assert first["pid"] != second["pid"]
    wait_until(lambda: not pid_alive(first["pid"]), 10, "the first process ended", runtime)
    row = runtime.wait_app("phoenix", lambda r: r["state"] == "running", 10, "running again")
    assert row["state"] == "running"


def test_lwt_failed_status_counts_as_failure(fresh_runtime: StartRuntime, mode: str) -> None:
    """8.1.3: apps set a will {"Status": 2} on status/response/<IID>; when the connection drops the broker
    publishes it and the manager treats the app as failed (Table 7: restart). With a 60 s status interval
    no missed poll can explain the restart.

    Spawned app: the process that lost its connection (still alive) is replaced by a new one.
    Attached app: it is counted as failed (restart requested, status row shows status 2)."""
    runtime = fresh_runtime(mode, [AppSpec("dropper", script="drop_once"), AppSpec("willing")], manager=LONG)
    attached = runtime.client("willing", connect=False, will={"Status": 2})
    attached.connect()
    attached.subscribe_table2()
    since = attached.mark()
    attached.publish(f"config/request/{attached.iid}", {}, qos=1)
    attached.wait_for(f"config/response/{attached.iid}", since=since)
    attached.status(STATUS_MSG_OK)
    runtime.wait_app("willing", lambda r: r["state"] == "running", 10, "running")
    attached.abort()
    row = runtime.wait_app("willing", lambda r: r["restarts"] >= 1, 10, "counted as failed after its will")
    assert row["last_status"] == 2, row
    wait_until(lambda: len(starts(runtime, "dropper")) >= 2, 12, "a new process after the will", runtime)
    first = starts(runtime, "dropper")[0]
    assert any(e["event"] == "dropping-socket" for e in runtime.app("dropper").events())
    wait_until(lambda: not pid_alive(first["pid"]), 10, "the disconnected process ended", runtime)
