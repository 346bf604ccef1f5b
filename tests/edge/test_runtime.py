"""The edge runtime: users and passwords, start-up order, reload and orderly shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest

from gridhub.edge.config import load_config
from gridhub.edge.manager import app_data_dir, app_environment, read_status
from gridhub.edge.runtime import EdgeRuntime, marketplace_users, read_pid, reap_orphans
from gridhub.sdk.mqtt import BrokerAddress
from tests.conftest import free_port, wait_for

APP = textwrap.dedent(
    """
    import json, os, sys, time
    import paho.mqtt.client as mqtt
    iid = os.environ["LVCAP_IID"]
    out = open(os.path.join(os.environ["LVCAP_DATA_DIR"], "seen.jsonl"), "a")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=os.environ["LVCAP_CLIENT_ID"])
    c.username_pw_set(os.environ["LVCAP_USERNAME"], os.environ["LVCAP_PASSWORD"])
    c.will_set("status/response/" + iid, json.dumps({"Status": 2}), qos=1)
    def status(code):
        c.publish("status/response/" + iid, json.dumps({"Status": code, "Timestamp": int(time.time())}), qos=1)
    def on_connect(c, u, f, r, p):
        c.subscribe([("status/request", 0), ("config/response/" + iid, 1), ("command/" + iid, 1)])
    def on_subscribe(c, u, mid, codes, p):
        c.publish("config/request/" + iid, "{}", qos=1)
    def on_message(c, u, m):
        out.write(json.dumps({"topic": m.topic, "payload": json.loads(m.payload)}) + "\\n"); out.flush()
        if m.topic == "command/" + iid:
            status(4)
        else:
            status(1)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(os.environ["LVCAP_BROKER_HOST"], int(os.environ["LVCAP_BROKER_PORT"]))
    c.loop_forever()
    """
)


def write_config(tmp_path: Path, apps: dict[str, dict[str, int]], port: int) -> Path:
    script = tmp_path / "app.py"
    script.write_text(APP)
    parts = [
        'version = 1\ndata_dir = "edge"\n',
        f'[marketplace]\nmode = "embedded"\nport = {port}\n',
        "[manager]\nstatus_interval = 0.3\nshutdown_grace = 3\nrestart_backoff = 0.1\n",
    ]
    for name, config in apps.items():
        parts.append(
            f'[[app]]\nvendor = "test"\nname = "{name}"\nversion = "1"\ninstance = "01"\n'
            f"command = {json.dumps([sys.executable, str(script)])}\n"
            f"[app.config]\n" + "".join(f"{k} = {v}\n" for k, v in config.items())
        )
    path = tmp_path / "edge.toml"
    path.write_text("\n".join(parts))
    return path


def state(data_dir: Path, iid: str) -> str:
    try:
        return str(read_status(data_dir)["apps"][iid]["state"])
    except (FileNotFoundError, KeyError, ValueError):
        return ""


def seen(data_dir: Path, iid: str) -> list[dict[str, object]]:
    path = app_data_dir(data_dir, iid) / "seen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_marketplace_users_keep_passwords_and_configured_ones(tmp_path: Path) -> None:
    text = 'version = 1\n[[app]]\nvendor = "a"\nname = "b"\nversion = "1"\ninstance = "01"\n'
    text += 'attached = true\npassword = "pw"\n'
    text += '[[app]]\nvendor = "a"\nname = "c"\nversion = "1"\ninstance = "01"\ncommand = ["x"]\n'
    (tmp_path / "edge.toml").write_text(text)
    config = load_config(tmp_path / "edge.toml")
    passwords: dict[str, str] = {}
    users = {u.username: u for u in marketplace_users(config.apps, passwords)}
    assert users["gridhub-manager"].core and users["gridhub-storage"].core
    assert users["a_b_1"].password == "pw" and users["a_b_1"].iid == "a_b_01"
    generated = users["a_c_1"].password
    assert len(generated) >= 24 and users["gridhub-manager"].password != generated
    again = {u.username: u for u in marketplace_users(config.apps, passwords)}
    assert again["a_c_1"].password == generated  # a reload keeps this run's passwords


def test_marketplace_users_are_bound_to_the_client_ids_their_instances_get(tmp_path: Path) -> None:
    """Table 4: client id = APID; instances sharing an APID each get <APID>-<Instance> (LVCAP_CLIENT_ID)."""
    text = 'version = 1\n[[app]]\nvendor = "a"\nname = "b"\nversion = "1"\ninstance = "01"\ncommand = ["x"]\n'
    for instance in ("01", "02"):
        text += f'[[app]]\nvendor = "a"\nname = "m"\nversion = "1"\ninstance = "{instance}"\ncommand = ["x"]\n'
    (tmp_path / "edge.toml").write_text(text)
    config = load_config(tmp_path / "edge.toml")
    users = {u.username: u for u in marketplace_users(config.apps, {})}
    assert users["a_b_1"].client_ids == ("a_b_1",)
    given = [app_environment(entry, BrokerAddress(), tmp_path)["LVCAP_CLIENT_ID"] for entry in config.apps]
    assert given[0] == "a_b_1" and len(set(given)) == 3
    assert users["a_m_1"].client_ids == tuple(given[1:])
    assert users["gridhub-manager"].client_ids == ()  # core accounts: used by operator tools too


def test_runtime_starts_reloads_and_shuts_apps_down(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, {"one": {"level": 1}}, port)
    runtime = EdgeRuntime(load_config(path))
    data_dir = tmp_path / "edge"
    runtime.start()
    try:
        assert read_pid(data_dir) is not None
        wait_for(lambda: state(data_dir, "test_one_01") == "running", "app one running")
        # Reload: one's configuration changes (pushed), two is added.
        write_config(tmp_path, {"one": {"level": 2}, "two": {"level": 7}}, port)
        runtime.reload()
        wait_for(lambda: state(data_dir, "test_two_01") == "running", "app two running")

        def levels() -> list[object]:
            return [
                m["payload"]["Configuration"]["ContainerConfig"]["level"]  # type: ignore[index]
                for m in seen(data_dir, "test_one_01")
                if m["topic"] == "config/response/test_one_01"
            ]

        wait_for(lambda: levels()[-1:] == [2], "pushed configuration")
        # Reload: one is removed and stopped through the shutdown command.
        write_config(tmp_path, {"two": {"level": 7}}, port)
        runtime.reload()
        wait_for(lambda: "test_one_01" not in read_status(data_dir)["apps"], "one removed")
        commands = [m["payload"] for m in seen(data_dir, "test_one_01") if m["topic"] == "command/test_one_01"]
        assert commands and commands[0]["Command"] == 1  # type: ignore[index]
    finally:
        runtime.stop()
    assert state(data_dir, "test_two_01") == "stopped"
    assert any(m["topic"] == "command/test_two_01" for m in seen(data_dir, "test_two_01"))
    assert read_pid(data_dir) is None


def test_a_managed_marketplace_that_dies_is_restarted_and_apps_reconnect(tmp_path: Path, mosquitto_binary: str) -> None:
    """The marketplace is a core service (5.1.1): the runtime brings a dead Mosquitto back."""
    path = write_config(tmp_path, {"alpha": {"n": 1}}, free_port())
    managed = f'mode = "managed"\nmosquitto = "{mosquitto_binary}"'
    path.write_text(path.read_text().replace('mode = "embedded"', managed))
    runtime = EdgeRuntime(load_config(path))
    data_dir = runtime.config.data_dir
    iid = "test_alpha_01"
    runtime.start()
    try:
        wait_for(lambda: state(data_dir, iid) == "running", "the app to run")
        assert runtime.marketplace is not None
        old_pid = runtime.marketplace.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        wait_for(
            lambda: runtime.marketplace is not None and runtime.marketplace.failure is not None,
            "the runtime to notice the dead broker",
        )
        runtime.supervise_marketplace()
        assert runtime.marketplace.pid not in (None, old_pid)
        assert runtime.marketplace.failure is None
        restarted_at = time.time()
        wait_for(
            lambda: (
                read_status(data_dir)["apps"][iid]["last_status_time"] > restarted_at + 0.5
                and state(data_dir, iid) == "running"
            ),
            "the app to answer status polls through the new broker",
            timeout=15,
        )
    finally:
        runtime.stop()


def test_two_instances_of_one_app_run_side_by_side_with_their_own_configuration(tmp_path: Path) -> None:
    """4.2: multiple copies of the same app run at once with separate configuration settings."""
    path = write_config(tmp_path, {"multi": {"level": 1}}, free_port())
    second = path.read_text().split("[[app]]")[1].replace('instance = "01"', 'instance = "02"')
    path.write_text(path.read_text() + "[[app]]" + second.replace("level = 1", "level = 2"))
    runtime = EdgeRuntime(load_config(path))
    data_dir = runtime.config.data_dir
    runtime.start()
    try:
        for iid in ("test_multi_01", "test_multi_02"):
            wait_for(lambda iid=iid: state(data_dir, iid) == "running", f"{iid} running")  # type: ignore[misc]
        time.sleep(1.0)  # several polls: neither instance may knock the other off the broker
        status = read_status(data_dir)["apps"]
        assert status["test_multi_01"]["restarts"] == status["test_multi_02"]["restarts"] == 0
        for iid, level in (("test_multi_01", 1), ("test_multi_02", 2)):
            configs = [m["payload"] for m in seen(data_dir, iid) if m["topic"] == f"config/response/{iid}"]
            assert configs[-1]["Configuration"] == {  # type: ignore[index]
                "ContainerName": iid,
                "ContainerConfig": {"level": level},
            }
    finally:
        runtime.stop()


def test_a_runtime_killed_with_sigkill_leaves_nothing_that_blocks_the_next_start(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    """The next start stops the managed Mosquitto and apps an earlier, killed runtime left behind."""
    path = write_config(tmp_path, {"orphan": {"n": 1}}, free_port())
    managed = f'mode = "managed"\nmosquitto = "{mosquitto_binary}"'
    path.write_text(path.read_text().replace('mode = "embedded"', managed))
    data_dir = tmp_path / "edge"
    iid = "test_orphan_01"
    first = subprocess.Popen(
        [sys.executable, "-m", "gridhub.cli", "edge", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: state(data_dir, iid) == "running", "the app to run", timeout=15)
        old_app = int(read_status(data_dir)["apps"][iid]["pid"])
        conf = str((data_dir / "marketplace" / "mosquitto.conf").resolve())
        old_broker = [p.pid for p in psutil.process_iter(["cmdline"]) if conf in (p.info["cmdline"] or [])]
        assert len(old_broker) == 1
        first.kill()
        first.wait(10)
        assert psutil.pid_exists(old_app) and psutil.pid_exists(old_broker[0])  # orphans, as in the field

        runtime = EdgeRuntime(load_config(path))
        runtime.start()
        try:
            assert not psutil.pid_exists(old_app) and not psutil.pid_exists(old_broker[0])
            wait_for(
                lambda: state(data_dir, iid) == "running" and read_status(data_dir)["apps"][iid]["pid"] != old_app,
                "the new app instance to run",
            )
        finally:
            runtime.stop()
    finally:
        if first.poll() is None:
            first.kill()


def _count_rows(database: Path, iid: str) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=30.0)) as conn:
        try:
            return int(conn.execute(f'SELECT COUNT(*) FROM "{iid}"').fetchone()[0])
        except sqlite3.OperationalError:
            return 0


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [1, 2])
def test_messages_the_broker_acknowledged_survive_a_sigkill_of_the_runtime(
    tmp_path: Path, mosquitto_binary: str, qos: int
) -> None:
    """kill -9 of the runtime with a backlog queued at Mosquitto: after a restart every message is stored once.

    The storage is held back deterministically by an exclusive lock on its database, so at the
    kill nothing of the backlog has been committed: part of it is in flight to the killed
    storage (unacknowledged), the rest queued in Mosquitto. The next start stops the leftover
    Mosquitto with SIGTERM (it saves its persistence file), and the new one delivers the backlog
    to the storage's persistent session. At QoS 2 too: the storage takes QoS 2 topics at QoS 1, so
    its acknowledgement always follows the commit.
    """
    port = free_port()
    database = tmp_path / "storage.sqlite"
    apid, iid, password = "test_durable_1", "test_durable_01", "durable-pw"
    config = tmp_path / "edge.toml"
    config.write_text(
        'version = 1\ndata_dir = "edge"\n'
        f'[marketplace]\nmode = "managed"\nmosquitto = "{mosquitto_binary}"\nport = {port}\n'
        "[manager]\nstatus_interval = 5\n"
        f'[storage]\ndatabase = "{database}"\n'
        '[[app]]\nvendor = "test"\nname = "durable"\nversion = "1"\ninstance = "01"\n'
        f'attached = true\npassword = "{password}"\n'
    )
    command = [sys.executable, "-m", "gridhub.cli", "edge", "run", "--config", str(config)]
    total = 3000

    def publisher() -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=apid)
        client.username_pw_set(apid, password)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client

    def publish(client: mqtt.Client, first: int, count: int) -> None:
        infos = [client.publish(f"storage/data/{iid}/n", json.dumps({"N": first + n}), qos=qos) for n in range(count)]
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published()

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    second: subprocess.Popen[bytes] | None = None
    lock: sqlite3.Connection | None = None
    try:
        # status.json is written once the storage and the manager are up (storage subscribed).
        wait_for(lambda: (tmp_path / "edge" / "status.json").exists(), "the runtime to start", timeout=30)
        client = publisher()
        try:
            publish(client, 0, 1)  # the storage is up and subscribed once this row is there
            wait_for(lambda: _count_rows(database, iid) == 1, "the first row", timeout=30)
            lock = sqlite3.connect(database, timeout=30.0, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")  # the storage can commit nothing from now on
            publish(client, 1, total)  # every message acknowledged by the broker
        finally:
            client.disconnect()
            client.loop_stop()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        assert _count_rows(database, iid) == 1  # nothing of the backlog was committed before the kill

        second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: _count_rows(database, iid) >= 1 + total, "the backlog to be stored", timeout=60)
        # A last message, queued behind the backlog: once it is stored nothing else is on its way.
        client = publisher()
        try:
            publish(client, total + 1, 1)
        finally:
            client.disconnect()
            client.loop_stop()
        wait_for(lambda: _count_rows(database, iid) >= total + 2, "the last message", timeout=30)
        with contextlib.closing(sqlite3.connect(database)) as conn:
            numbers = [json.loads(row[0])["N"] for row in conn.execute(f'SELECT Data FROM "{iid}"')]
        assert sorted(numbers) == list(range(total + 2))  # each exactly once
    finally:
        if lock is not None:
            lock.close()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        reap_orphans(tmp_path / "edge")
