"""The Data Marketplace: settings, ACL rules, mosquitto files, and real brokers with real clients."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.edge.marketplace import (
    AUTOSAVE_INTERVAL,
    Marketplace,
    MarketplacePaths,
    MarketplaceSettings,
    MarketplaceUser,
    acl_allows,
    render_mosquitto_acl,
    render_mosquitto_conf,
    render_mosquitto_dynsec,
    render_mosquitto_passwords,
    tls_client_context,
)
from gridhub.edge.settings import ConfigError
from gridhub.sdk.mqtt import BrokerAddress
from tests.conftest import free_port

WAIT = 10.0
THERMAL = MarketplaceUser("acme_thermal_1.0.0", "thermal-pw", iid="acme_thermal_01")
SENSOR = MarketplaceUser("eatl_modbus_2.1", "sensor-pw", iid="eatl_modbus_01")
MANAGER = MarketplaceUser("gridhub-manager", "manager-pw", core=True)
STORAGE = MarketplaceUser("gridhub-storage", "storage-pw", core=True)
USERS = [THERMAL, SENSOR, MANAGER, STORAGE]


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_relative_paths(tmp_path: Path) -> None:
    settings = MarketplaceSettings.from_mapping(
        {"mode": "embedded", "tls": True, "ca_file": "ca.crt", "cert_file": "/etc/s.crt", "key_file": "s.key"},
        where="[marketplace]",
        base_dir=tmp_path,
    )
    assert (settings.host, settings.port, settings.tls_port) == ("127.0.0.1", 1883, 8883)
    assert settings.ca_file == tmp_path / "ca.crt"
    assert settings.cert_file == Path("/etc/s.crt")


def test_settings_default_mode_follows_mosquitto_binary(tmp_path: Path) -> None:
    missing = MarketplaceSettings.from_mapping({"mosquitto": "no-such-mosquitto"}, where="[m]", base_dir=tmp_path)
    assert missing.mode == "embedded"


def test_settings_default_mode_is_managed_with_mosquitto(tmp_path: Path, mosquitto_binary: str) -> None:
    settings = MarketplaceSettings.from_mapping({"mosquitto": mosquitto_binary}, where="[m]", base_dir=tmp_path)
    assert settings.mode == "managed"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "cloud"}, "mode: expected one of managed, embedded, external, got 'cloud'"),
        ({"port": 0}, "port: expected a value from 1 to 65535"),
        ({"port": "1883"}, "port: expected an integer"),
        ({"tls": "yes"}, "tls: expected true or false"),
        ({"ca_file": "ca.crt"}, "cert_file, key_file: give ca_file, cert_file and key_file together"),
        ({"username": "runtime"}, "username/password: give both or neither"),
        ({"prot": 1}, "unknown key(s) prot"),
        ({"tls": True, "tls_port": 1883}, "tls_port: must differ from port"),
    ],
)
def test_settings_errors_say_where_and_what(tmp_path: Path, data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MarketplaceSettings.from_mapping(data, where="edge.toml [marketplace]", base_dir=tmp_path)
    assert str(info.value).startswith("edge.toml [marketplace]")
    assert message in str(info.value)


# --- ACL rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "sensor/data/acme_thermal_01",
        "sensor/data/acme_thermal_01/transformer/temperature",
        "algorithm/data/acme_thermal_01/Number1Tx/state/hst",
        "storage/data/acme_thermal_01/rating",
        "storage/data/error/acme_thermal_01",
        "status/response/acme_thermal_01",
        "config/request/acme_thermal_01",
        "storage/request/acme_thermal_01",
        "storage/request/newdata/acme_thermal_01",
        "storage/uploaded/acme_thermal_01",
    ],
)
def test_app_publishes_on_its_own_topics(topic: str) -> None:
    assert acl_allows(THERMAL, "publish", topic)


@pytest.mark.parametrize(
    "topic",
    [
        "sensor/data/eatl_modbus_01/busbar/L1",
        "sensor/data/acme_thermal_011",
        "status/response/eatl_modbus_01",
        "status/request",
        "config/response/acme_thermal_01",
        "command/acme_thermal_01",
        "storage/response/acme_thermal_01",
        "storage/data/error/eatl_modbus_01",
        "storage/request/acme_thermal_01/extra",
        "sensor/data/acme_thermal_01/#",
        "other/topic",
        "$SYS/broker/uptime",
    ],
)
def test_app_may_not_publish_elsewhere(topic: str) -> None:
    assert not acl_allows(THERMAL, "publish", topic)


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("status/request", True),
        ("config/response/acme_thermal_01", True),
        ("command/acme_thermal_01", True),
        ("sensor/data/eatl_modbus_01/#", True),
        ("#", True),
        ("storage/response/acme_thermal_01", True),
        ("config/response/eatl_modbus_01", False),
        ("command/eatl_modbus_01", False),
        ("config/response/+", False),
        ("command/#", False),
        ("config/response/eatl_modbus_01/x", False),
    ],
)
def test_app_subscriptions(topic: str, allowed: bool) -> None:
    assert acl_allows(THERMAL, "subscribe", topic) is allowed


def test_core_users_have_full_access_and_unknown_users_none() -> None:
    assert acl_allows(MANAGER, "publish", "config/response/acme_thermal_01")
    assert acl_allows(STORAGE, "subscribe", "#")
    assert not acl_allows(None, "subscribe", "status/request")


def test_one_account_with_two_instances_may_use_both_namespaces() -> None:
    twin = MarketplaceUser("acme_thermal_1.0.0", "pw", iids=("acme_thermal_01", "acme_thermal_02"))
    assert acl_allows(twin, "publish", "sensor/data/acme_thermal_02/x")
    assert acl_allows(twin, "subscribe", "config/response/acme_thermal_02")
    assert not acl_allows(twin, "subscribe", "config/response/acme_thermal_03")


def test_users_are_validated() -> None:
    with pytest.raises(ValueError, match="username must be"):
        MarketplaceUser("acme thermal", "pw")
    with pytest.raises(ValueError, match="password must be non-empty"):
        MarketplaceUser("acme_thermal_1", "")
    with pytest.raises(ValueError, match="IID 'a/b'"):
        MarketplaceUser("acme_thermal_1", "pw", iid="a/b")
    with pytest.raises(ValueError, match="appears twice"):
        render_mosquitto_acl([THERMAL, THERMAL])


def test_acl_file_names_other_apps_private_topics_explicitly() -> None:
    text = render_mosquitto_acl(USERS)
    thermal_block = text.split("user acme_thermal_1.0.0\n")[1].split("\n\n")[0].splitlines()
    assert "topic deny config/response/eatl_modbus_01/#" in thermal_block
    assert "topic deny command/eatl_modbus_01/#" in thermal_block
    assert "topic write status/response/acme_thermal_01" in thermal_block
    assert not any("acme_thermal_01" in line for line in thermal_block if line.startswith("topic deny"))
    assert "user gridhub-manager\ntopic readwrite #" in text


def test_password_file_uses_mosquitto_pbkdf2_sha512_format() -> None:
    lines = render_mosquitto_passwords([THERMAL, MANAGER]).splitlines()
    assert [line.split(":")[0] for line in lines] == ["acme_thermal_1.0.0", "gridhub-manager"]
    fields = lines[0].split(":", 1)[1].split("$")
    assert fields[:3] == ["", "7", "101"]


# --- real brokers ------------------------------------------------------------------------------


class Probe:
    """A paho-mqtt 3.1.1 client that records CONNACK, SUBACK codes and received messages."""

    def __init__(self, address: BrokerAddress, client_id: str, *, will: tuple[str, bytes] | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        if address.username is not None:
            self.client.username_pw_set(address.username, address.password)
        context = tls_client_context(address)
        if context is not None:
            self.client.tls_set_context(context)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.connack: queue.Queue[bool] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(not rc.is_failure)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connack.put(False)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put([code.value for code in codes])
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.address = address

    def connect(self) -> bool:
        """Connect and tell whether the broker accepted (False on refusal or a dropped TLS handshake)."""
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError:
            return False
        self.client.loop_start()
        try:
            return self.connack.get(timeout=WAIT)
        except queue.Empty:
            return False

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        self.client.subscribe(topic_filter, qos)
        return self.subacks.get(timeout=WAIT)[0]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(WAIT)

    def next_message(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=WAIT)

    def drop_connection(self) -> None:
        """Close the socket without DISCONNECT, as a crashed app would."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=["embedded", "managed"])
def marketplace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Marketplace]:
    """A running marketplace in each local mode, with two apps and the core users."""
    mode = request.param
    mosquitto = request.getfixturevalue("mosquitto_binary") if mode == "managed" else "mosquitto"
    settings = MarketplaceSettings(mode=mode, port=free_port(), mosquitto=mosquitto)
    market = Marketplace(settings, tmp_path, USERS)
    market.start()
    yield market
    market.stop()


@pytest.fixture
def probes(marketplace: Marketplace) -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def connected(market: Marketplace, user: MarketplaceUser, made: list[Probe], **kwargs: object) -> Probe:
    probe = Probe(market.address_for(user), user.username, **kwargs)  # type: ignore[arg-type]
    made.append(probe)
    assert probe.connect(), f"{user.username} could not connect"
    return probe


def test_anonymous_and_wrong_password_are_refused(marketplace: Marketplace, probes: list[Probe]) -> None:
    address = marketplace.address_for(THERMAL)
    anonymous = Probe(BrokerAddress(address.host, address.port), "anon")
    wrong = Probe(BrokerAddress(address.host, address.port, THERMAL.username, "guess"), "wrong")
    unknown = Probe(BrokerAddress(address.host, address.port, "nobody_x_1", "thermal-pw"), "unknown")
    probes.extend([anonymous, wrong, unknown])
    assert not anonymous.connect()
    assert not wrong.connect()
    assert not unknown.connect()


def test_own_topics_delivered_and_forged_publish_dropped(marketplace: Marketplace, probes: list[Probe]) -> None:
    manager = connected(marketplace, MANAGER, probes)
    assert manager.subscribe("sensor/data/#") == 1
    thermal = connected(marketplace, THERMAL, probes)
    thermal.publish("sensor/data/eatl_modbus_01/busbar/L1", b'{"forged":true}')
    thermal.publish("sensor/data/acme_thermal_01/top-oil", b'{"Value":61.5}')
    message = manager.next_message()
    # The forged message was sent first on the same connection: had it passed, it would arrive first.
    assert (message.topic, message.payload) == ("sensor/data/acme_thermal_01/top-oil", b'{"Value":61.5}')
    assert manager.messages.empty()


def test_subscriptions_to_other_apps_private_topics_refused(marketplace: Marketplace, probes: list[Probe]) -> None:
    thermal = connected(marketplace, THERMAL, probes)
    assert thermal.subscribe("config/response/eatl_modbus_01") == 0x80
    assert thermal.subscribe("command/eatl_modbus_01") == 0x80
    assert thermal.subscribe("sensor/data/eatl_modbus_01/#") == 1
    assert thermal.subscribe("config/response/acme_thermal_01") == 1
    assert thermal.subscribe("command/acme_thermal_01") == 1
    assert thermal.subscribe("status/request", qos=0) == 0


def test_wildcard_subscriber_never_receives_other_apps_configuration(
    marketplace: Marketplace, probes: list[Probe]
) -> None:
    thermal = connected(marketplace, THERMAL, probes)
    assert thermal.subscribe("#") == 1
    manager = connected(marketplace, MANAGER, probes)
    manager.publish("config/response/eatl_modbus_01", b'{"Configuration":{"secret":1}}')
    manager.publish("config/response/acme_thermal_01", b'{"Configuration":{"mine":1}}')
    message = thermal.next_message()
    assert message.topic == "config/response/acme_thermal_01"


def test_retained_metadata_reaches_late_subscriber(marketplace: Marketplace, probes: list[Probe]) -> None:
    sensor = connected(marketplace, SENSOR, probes)
    sensor.publish("sensor/data/eatl_modbus_01/busbar/L1/metadata", b'{"Name":"L1","Units":"V"}', retain=True)
    thermal = connected(marketplace, THERMAL, probes)
    assert thermal.subscribe("sensor/data/eatl_modbus_01/+/+/metadata") == 1
    message = thermal.next_message()
    assert message.retain
    assert message.payload == b'{"Name":"L1","Units":"V"}'


def test_retained_messages_go_only_to_their_subscribers_at_qos_1(marketplace: Marketplace, probes: list[Probe]) -> None:
    """8.3.2: metadata at QoS 1 with retain; a client gets retained messages only for what it subscribes."""
    sensor = connected(marketplace, SENSOR, probes)
    sensor.publish("sensor/data/eatl_modbus_01/busbar/L2/meta", b'{"Units":"V"}', retain=True)
    watcher = connected(marketplace, THERMAL, probes)
    assert watcher.subscribe("sensor/data/eatl_modbus_01/+/+/meta") == 1
    assert watcher.next_message().qos == 1
    bystander = connected(marketplace, STORAGE, probes)  # connects while a matching subscription exists
    assert bystander.subscribe("storage/data/+/#", qos=2) == 2
    thermal = connected(marketplace, THERMAL, probes)
    thermal.publish("storage/data/acme_thermal_01/marker", b"{}", qos=1)
    assert bystander.next_message().topic == "storage/data/acme_thermal_01/marker"  # nothing retained came first


def test_qos2_round_trip(marketplace: Marketplace, probes: list[Probe]) -> None:
    storage = connected(marketplace, STORAGE, probes)
    assert storage.subscribe("storage/data/+/#", qos=2) == 2
    thermal = connected(marketplace, THERMAL, probes)
    thermal.publish("storage/data/acme_thermal_01/rating", b'{"Value":1}', qos=2)
    message = storage.next_message()
    assert (message.topic, message.qos) == ("storage/data/acme_thermal_01/rating", 2)


def test_last_will_published_when_socket_closes(marketplace: Marketplace, probes: list[Probe]) -> None:
    manager = connected(marketplace, MANAGER, probes)
    assert manager.subscribe("status/response/+") == 1
    will = b'{"Status":2,"Message":"connection lost"}'
    thermal = connected(marketplace, THERMAL, probes, will=("status/response/acme_thermal_01", will))
    thermal.drop_connection()
    message = manager.next_message()
    assert (message.topic, message.payload) == ("status/response/acme_thermal_01", will)


def test_update_users_admits_new_app(marketplace: Marketplace, probes: list[Probe]) -> None:
    newcomer = MarketplaceUser("acme_forecast_0.1", "forecast-pw", iid="acme_forecast_01")
    marketplace.update_users([*USERS, newcomer])
    manager = connected(marketplace, MANAGER, probes)
    assert manager.subscribe("algorithm/data/#") == 1
    forecast = connected(marketplace, newcomer, probes)
    forecast.publish("algorithm/data/acme_forecast_01/load", b"{}")
    assert manager.next_message().topic == "algorithm/data/acme_forecast_01/load"


def test_embedded_refuses_will_on_foreign_topic(tmp_path: Path) -> None:
    settings = MarketplaceSettings(mode="embedded", port=free_port())
    with Marketplace(settings, tmp_path, USERS) as market:
        probe = Probe(market.address_for(THERMAL), "t", will=("status/response/eatl_modbus_01", b"{}"))
        assert not probe.connect()
        probe.close()


# --- managed mode specifics --------------------------------------------------------------------


def test_generated_files_accepted_by_real_mosquitto(tmp_path: Path, mosquitto_binary: str) -> None:
    settings = MarketplaceSettings(mode="managed", port=free_port(), mosquitto=mosquitto_binary)
    with Marketplace(settings, tmp_path, USERS) as market:
        port = market.settings.port
        result = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", THERMAL.username, "-P", THERMAL.password,
             "-t", "status/response/acme_thermal_01", "-m", '{"Status":1}', "-q", "1"],
            capture_output=True, text=True, timeout=WAIT, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        refused = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", THERMAL.username, "-P", "wrong",
             "-t", "status/response/acme_thermal_01", "-m", "{}"],
            capture_output=True, text=True, timeout=WAIT, check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "not authorised" in refused.stderr
    paths = MarketplacePaths.under(tmp_path)
    assert paths.password_file.stat().st_mode & 0o777 == 0o600
    conf = paths.conf_file.read_text()
    assert "allow_anonymous false" in conf
    assert "max_queued_messages 100000" in conf


def test_managed_reports_mosquitto_failure_with_log(tmp_path: Path, mosquitto_binary: str) -> None:
    settings = MarketplaceSettings(mode="managed", port=free_port(), mosquitto=mosquitto_binary)
    paths = MarketplacePaths(directory=tmp_path / "marketplace", dynsec_plugin=tmp_path / "missing-plugin.so")
    market = Marketplace(settings, tmp_path, USERS, paths=paths)
    with pytest.raises(Exception, match="mosquitto exited with code") as info:
        market.start()
    assert "missing-plugin.so" in str(info.value)


def test_managed_tls_client_certificate_cn_is_the_username(
    tmp_path: Path, mosquitto_binary: str, probes_tls: list[Probe]
) -> None:
    settings = MarketplaceSettings(
        mode="managed", port=free_port(), tls=True, tls_port=free_port(), mosquitto=mosquitto_binary
    )
    with Marketplace(settings, tmp_path, USERS) as market:
        address = market.address_for(THERMAL)
        assert address.tls is not None
        assert address.port == settings.tls_port
        manager = Probe(market.address_for(MANAGER), "gridhub-manager")
        probes_tls.append(manager)
        assert manager.connect()
        assert manager.subscribe("status/response/+") == 1

        with_cert = Probe(address, THERMAL.username)
        probes_tls.append(with_cert)
        assert with_cert.connect()
        with_cert.publish("status/response/eatl_modbus_01", b'{"Status":1}')  # not its topic: dropped
        with_cert.publish("status/response/acme_thermal_01", b'{"Status":1}')
        assert manager.next_message().topic == "status/response/acme_thermal_01"

        assert address.tls.ca_file is not None
        no_cert_address = BrokerAddress(
            address.host, address.port, THERMAL.username, THERMAL.password, type(address.tls)(address.tls.ca_file)
        )
        without_cert = Probe(no_cert_address, "no-cert")
        probes_tls.append(without_cert)
        assert not without_cert.connect()


@pytest.fixture
def probes_tls() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def test_external_mode_starts_nothing_and_renders_operator_files(tmp_path: Path) -> None:
    port = free_port()
    settings = MarketplaceSettings(mode="external", port=port, username="runtime", password="secret")
    with Marketplace(settings, tmp_path, USERS) as market:
        assert market.pid is None
        core = market.address_for(MANAGER)
        assert (core.port, core.username, core.password) == (port, "runtime", "secret")
        assert market.address_for(THERMAL).username == THERMAL.username
    conf = render_mosquitto_conf(settings, data_dir=tmp_path / "out")
    assert f"listener {port} 127.0.0.1" in conf
    assert "user " not in conf
    assert not (tmp_path / "marketplace").exists()


def test_embedded_stops_cleanly_and_restarts(tmp_path: Path) -> None:
    settings = MarketplaceSettings(mode="embedded", port=free_port())
    market = Marketplace(settings, tmp_path, USERS)
    market.start()
    market.stop()
    threads_before = {t.name for t in threading.enumerate()}
    assert "marketplace-amqtt" not in threads_before
    market.start()  # the same object can be started again on the same port
    market.stop()


PUBLISHER = """
import sys, paho.mqtt.client as mqtt
port, user, password, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
acked = []
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
c.username_pw_set(user, password)
c.on_publish = lambda *a: acked.append(1)
c.connect("127.0.0.1", port)
c.loop_start()
for i in range(count):
    c.publish("algorithm/data/acme_thermal_01/load", str(i), qos=1)
while len(acked) < count:
    pass
c.disconnect()
"""


def test_no_qos1_message_is_lost_under_a_burst(marketplace: Marketplace, probes: list[Probe], tmp_path: Path) -> None:
    """8.1.4 QoS 1: every message of a fast publisher in another process reaches the subscriber once."""
    count = 2000
    storage = connected(marketplace, STORAGE, probes)
    assert storage.subscribe("algorithm/data/#", qos=1) == 1
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    address = marketplace.address_for(THERMAL.username, THERMAL.password)
    subprocess.run(
        [sys.executable, str(script), str(address.port), THERMAL.username, THERMAL.password, str(count)],
        check=True,
        timeout=60,
    )
    payloads = [storage.next_message().payload for _ in range(count)]
    assert sorted(int(p) for p in payloads) == list(range(count))


# --- client ids (Table 4) and persistence -------------------------------------------------------


def test_dynsec_binds_each_single_instance_account_to_its_client_id() -> None:
    bound = MarketplaceUser("acme_up_1.0", "up-pw", iid="acme_up_01", client_ids=("acme_up_1.0",))
    shared = MarketplaceUser("acme_multi_1", "m-pw", iid="acme_multi_01", iids=("acme_multi_02",),
                             client_ids=("acme_multi_1-01", "acme_multi_1-02"))  # fmt: skip
    document = json.loads(render_mosquitto_dynsec([bound, shared, MANAGER, STORAGE]))
    clients = {client["username"]: client for client in document["clients"]}
    assert clients["acme_up_1.0"]["clientid"] == "acme_up_1.0"
    # The plugin binds one client id per username: an account shared by several instances stays unbound.
    assert "clientid" not in clients["acme_multi_1"]
    assert set(clients) == {"acme_up_1.0", "acme_multi_1"}  # core accounts: password file only


def test_account_allows_only_its_client_ids() -> None:
    bound = MarketplaceUser("acme_up_1.0", "up-pw", iid="acme_up_01", client_ids=("acme_up_1.0",))
    assert bound.allows_client_id("acme_up_1.0")
    assert not bound.allows_client_id("acme_plain_1.0") and not bound.allows_client_id(None)
    assert MANAGER.allows_client_id("any-tool")
    with pytest.raises(ValueError, match="client id"):
        MarketplaceUser("acme_up_1.0", "up-pw", iid="acme_up_01", client_ids=("bad id",))


def test_managed_conf_persists_the_broker_state_in_the_marketplace_directory(tmp_path: Path) -> None:
    paths = MarketplacePaths(directory=tmp_path / "marketplace", dynsec_plugin=Path("/usr/lib/dynsec.so"))
    conf = render_mosquitto_conf(MarketplaceSettings(mode="managed"), paths).splitlines()
    assert "persistence true" in conf
    assert f"persistence_location {paths.directory}/" in conf
    assert f"autosave_interval {AUTOSAVE_INTERVAL}" in conf
    assert "persistence false" not in conf


def test_external_conf_says_how_client_ids_are_bound(tmp_path: Path) -> None:
    with_plugin = MarketplacePaths(directory=tmp_path, dynsec_plugin=Path("/usr/lib/dynsec.so"))
    text = render_mosquitto_conf(MarketplaceSettings(mode="external"), with_plugin, managed=False)
    assert "plugin /usr/lib/dynsec.so" in text and "client id" in text
    without = MarketplacePaths(directory=tmp_path, dynsec_plugin=None)
    text = render_mosquitto_conf(MarketplaceSettings(mode="external"), without, managed=False)
    assert "cannot bind a username to a client id" in text
    assert "persistence true" in text  # as advice for the main configuration
    assert not any(line.startswith("persistence ") for line in text.splitlines())


@pytest.mark.parametrize("mode", ["embedded", pytest.param("managed", marks=pytest.mark.mosquitto)])
def test_connection_with_another_accounts_client_id_is_refused_and_the_owner_stays(
    tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    binary = request.getfixturevalue("mosquitto_binary") if mode == "managed" else "mosquitto"
    owner = MarketplaceUser("acme_plain_1.0", "plain-pw", iid="acme_plain_01", client_ids=("acme_plain_1.0",))
    other = MarketplaceUser("acme_up_1.0", "up-pw", iid="acme_up_01", client_ids=("acme_up_1.0",))
    settings = MarketplaceSettings(mode=mode, port=free_port(), mosquitto=binary)  # type: ignore[arg-type]
    with Marketplace(settings, tmp_path, [owner, other, MANAGER, STORAGE]) as market:
        address = market.address_for(owner)
        dropped = threading.Event()
        victim = paho.Client(CallbackAPIVersion.VERSION2, client_id="acme_plain_1.0")
        victim.username_pw_set(owner.username, owner.password)
        victim.on_disconnect = lambda *args: dropped.set()
        victim.connect(address.host, address.port)
        victim.loop_start()
        try:
            for username, password in ((other.username, other.password), (owner.username, "wrong")):
                codes: queue.Queue[object] = queue.Queue()
                thief = paho.Client(CallbackAPIVersion.VERSION2, client_id="acme_plain_1.0")
                thief.username_pw_set(username, password)
                thief.on_connect = lambda c, u, f, reason, p, codes=codes: codes.put(reason)
                thief.connect(address.host, address.port)
                thief.loop_start()
                try:
                    reason = codes.get(timeout=WAIT)
                    assert getattr(reason, "is_failure", False), f"{username} was accepted: {reason}"
                finally:
                    thief.disconnect()
                    thief.loop_stop()
            # A round trip after the refusals: the owner's connection was never dropped.
            assert victim.publish("sensor/data/acme_plain_01/x", b"{}", qos=1).wait_for_publish(WAIT) is None
            assert victim.is_connected() and not dropped.is_set()
        finally:
            victim.disconnect()
            victim.loop_stop()
