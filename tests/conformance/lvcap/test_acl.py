"""Marketplace access control (Annex 4 sections 3, 4.4, 5.3 and 8.1, Table 4): embedded and managed modes.

The external mode has no ACLs of gridhub's making, so these rules are checked only where the
runtime runs the broker. One runtime per mode is shared by the module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conformance.lvcap.conftest import (
    ACL_MODE_PARAMS,
    AppSpec,
    ConnectRefused,
    Runtime,
    RuntimePool,
    check_topic,
    make_pool,
    shared,
    unique,
)

APPS = [AppSpec("alice"), AppSpec("bob", config={"secret": "for bob only"}), AppSpec("carol")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    pool = make_pool(tmp_path_factory, "acl", APPS, manager={"status_interval": 60.0}, upload={"carol": ["*"]})
    yield pool
    pool.close()


@pytest.fixture(params=ACL_MODE_PARAMS)
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


def test_wrong_password_is_refused(runtime: Runtime) -> None:
    """8.1: the marketplace authenticates apps (username = APID, Table 4): a wrong password, or an APID it
    does not know, is refused; the right password is accepted."""
    with pytest.raises(ConnectRefused):
        runtime.client("alice", password="not-" + runtime.app("alice").password)
    with pytest.raises(ConnectRefused):
        runtime.client("alice", password="")
    runtime.close_clients()
    app = runtime.client("alice")
    assert app.client.is_connected()


def test_app_cannot_publish_into_another_apps_subtree(runtime: Runtime) -> None:
    """Section 3 and 8.1: ACLs prevent apps "from publishing on ... topics they should not"; apps publish only
    in their own IID's namespace. Nothing alice publishes under bob's IID reaches bob or is acted upon."""
    bob = runtime.client("bob")
    bob_iid = runtime.iid("bob")
    alice_iid = runtime.iid("alice")
    for topic in (f"algorithm/data/{bob_iid}/#", f"sensor/data/{bob_iid}/#", f"config/response/{bob_iid}",
                  f"command/{bob_iid}", f"storage/response/{bob_iid}", f"algorithm/data/{alice_iid}/#"):  # fmt: skip
        bob.subscribe_ok(topic, 1)
    bob.publish(f"config/request/{bob_iid}", {}, qos=1)
    bob.wait_for(f"config/response/{bob_iid}")
    bob.status(1)
    runtime.wait_app("bob", lambda r: r["state"] == "running", 10, "bob running")
    since = bob.mark()
    alice = runtime.client("alice")
    sub = unique("forged")
    forged: dict[str, dict[str, Any]] = {
        f"algorithm/data/{bob_iid}/{sub}": {"Value": 1, "Valid": True, "Timestamp": 1, "ToStore": True},
        f"sensor/data/{bob_iid}/{sub}": {"Value": 1, "Valid": True, "Timestamp": 1},
        f"storage/data/{bob_iid}/{sub}": {"Value": 1},
        f"config/response/{bob_iid}": {"Configuration": {"ContainerName": bob_iid, "ContainerConfig": {}}},
        f"command/{bob_iid}": {"Command": 1},
        f"status/response/{bob_iid}": {"Status": 4},
        f"storage/request/{bob_iid}": {"InstanceID": bob_iid},
    }
    for topic, payload in forged.items():
        alice.publish(topic, payload, qos=1, require_ack=False)
    marker = f"algorithm/data/{alice_iid}/{sub}"
    alice.publish(marker, {"Value": 2, "Valid": True, "Timestamp": 2}, qos=1)
    bob.wait_for(marker, since=since, what="(alice's own data, published after the forgeries)")
    leaked = [m.topic for m in bob.messages[since:] if m.topic != marker]
    assert leaked == [], f"bob received what alice published in his namespace: {leaked}"
    time.sleep(0.5)  # let the manager and the storage act on anything that got through
    assert runtime.app_status("bob")["state"] == "running", "alice's forged STATUS_SHUT_DWN stopped bob"
    bob.subscribe_ok(f"storage/response/{bob_iid}", 1)
    answer = bob.query({"InstanceID": bob_iid, "SubTopic": sub}).json()
    assert answer["Status"] == 2, f"alice's forged data was stored in bob's table: {answer}"


def test_app_cannot_subscribe_to_other_apps_config_response_or_command(runtime: Runtime) -> None:
    """Section 3 ("preventing Applications from ... subscribing to topics they should not"): another app's
    config/response/<IID> and command/<IID> are refused with SUBACK 0x80; its own are granted, and a
    wildcard never delivers another app's configuration."""
    alice = runtime.client("alice")
    bob_iid = runtime.iid("bob")
    assert alice.subscribe(f"config/response/{bob_iid}", 1) == 0x80
    assert alice.subscribe(f"command/{bob_iid}", 1) == 0x80
    assert alice.subscribe(f"config/response/{alice.iid}", 1) == 1
    assert alice.subscribe(f"command/{alice.iid}", 1) == 1
    wildcard = alice.subscribe("config/response/+", 1)
    since = alice.mark()
    bob = runtime.client("bob")
    bob.subscribe_ok(f"config/response/{bob_iid}", 1)
    bob.publish(f"config/request/{bob_iid}", {}, qos=1)
    bob.wait_for(f"config/response/{bob_iid}")
    alice.publish(f"config/request/{alice.iid}", {}, qos=1)
    alice.wait_for(f"config/response/{alice.iid}", since=since)
    assert alice.received(f"config/response/{bob_iid}") == [], (
        f"alice received bob's configuration (wildcard SUBACK {wildcard:#x})"
    )


def test_app_can_subscribe_to_other_apps_sensor_data_and_status_request(runtime: Runtime) -> None:
    """8.1: "In general, subscriptions will not be restricted": another app's sensor and algorithm data and
    the shared status/request are granted, and the data arrives."""
    alice = runtime.client("alice")
    bob = runtime.client("bob")
    bob_iid = runtime.iid("bob")
    assert alice.subscribe("status/request", 0) == 0
    assert alice.subscribe(f"sensor/data/{bob_iid}/#", 1) == 1
    assert alice.subscribe(f"algorithm/data/{bob_iid}/#", 1) == 1
    sub = unique("temp")
    bob.publish(f"sensor/data/{bob_iid}/{sub}", {"Timestamp": 1, "Value": 21.5, "Valid": True}, qos=1)
    bob.publish(f"algorithm/data/{bob_iid}/{sub}", {"Timestamp": 1, "Value": 3, "Valid": True}, qos=1)
    assert alice.wait_for(f"sensor/data/{bob_iid}/{sub}").json()["Value"] == 21.5
    assert alice.wait_for(f"algorithm/data/{bob_iid}/{sub}").json()["Value"] == 3


def test_runtime_topic_names_are_valid(runtime: Runtime) -> None:
    """4.4: topic names are ASCII letters, digits, hyphens and underscores in '/' levels, at most 220
    characters - including every topic the runtime itself publishes to an app."""
    carol = runtime.client("carol")
    carol.subscribe_table2()
    carol.subscribe_ok(f"storage/response/{carol.iid}", 1)
    carol.subscribe_ok(f"storage/response/newdata/{carol.iid}", 2)
    since = carol.mark()
    carol.publish(f"config/request/{carol.iid}", {}, qos=1)
    carol.wait_for(f"config/response/{carol.iid}", since=since)
    carol.query({"MaxLength": 1})
    carol.newdata({"MaxLength": 1})
    carol.status(5)
    carol.wait_for(f"config/response/{carol.iid}", since=carol.mark() - 1)
    topics = {m.topic for m in carol.messages[since:]}
    assert {f"config/response/{carol.iid}", f"storage/response/{carol.iid}"} <= topics
    for topic in topics:
        check_topic(topic)


def test_app_cannot_connect_with_another_apps_client_id(runtime: Runtime) -> None:
    """Table 4: an app connects with username and client id = its APID. MQTT allows one connection per
    client id, so a connection with alice's credentials and bob's client id, or with bob's client id and a
    wrong password, is refused, and bob stays connected (no takeover, no will, no restart)."""
    bob = runtime.client("bob")
    topic = f"sensor/data/{bob.iid}/{unique('alive')}"
    bob.subscribe_ok(topic, 1)
    with pytest.raises(ConnectRefused):
        runtime.client("alice", client_id=runtime.app("bob").apid)
    with pytest.raises(ConnectRefused):
        runtime.client("bob", password="not-" + runtime.app("bob").password)
    # bob's connection is untouched: never dropped, and a round trip through the broker still works.
    since = bob.mark()
    bob.publish(topic, {"Value": 1.0, "Valid": True, "Timestamp": int(time.time())}, qos=1)
    bob.wait_for(topic, since=since, what="(bob's own message, after the refused connections)")
    assert bob.client.is_connected() and not bob._disconnected
    # alice still connects with her own client id.
    assert runtime.client("alice").client.is_connected()
