"""MarketplaceClient against a real broker (the Mosquitto on 127.0.0.1:1883).

Topics are unique per test (gridhub-test/<uuid>/...), so these tests may run alongside others.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from gridhub.sdk.mqtt import BrokerAddress, MarketplaceClient, MarketplaceError, Message, Will
from tests.conftest import free_port


def _wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def broker(external_mosquitto: tuple[str, int]) -> BrokerAddress:
    host, port = external_mosquitto
    return BrokerAddress(host=host, port=port)


@pytest.fixture
def prefix() -> str:
    return f"gridhub-test/{uuid.uuid4().hex}"


def _client(broker: BrokerAddress, **kwargs: object) -> MarketplaceClient:
    client = MarketplaceClient(f"t-{uuid.uuid4().hex[:12]}", broker, **kwargs)  # type: ignore[arg-type]
    client.start()
    return client


def test_round_trip_sends_mappings_as_compact_json(broker: BrokerAddress, prefix: str) -> None:
    got: list[Message] = []
    sub = _client(broker)
    pub = _client(broker)
    try:
        sub.subscribe(f"{prefix}/#", 1, got.append)
        pub.publish(f"{prefix}/a", {"Timestamp": 1504110640, "Value": 240.0, "Valid": True}, qos=1, wait=True)
        assert _wait_for(lambda: len(got) == 1)
        assert got[0].payload == b'{"Timestamp":1504110640,"Value":240.0,"Valid":true}'
        assert got[0].topic == f"{prefix}/a"
        assert got[0].qos == 1
    finally:
        sub.stop()
        pub.stop()


def test_unreachable_broker_is_a_clear_error() -> None:
    client = MarketplaceClient("nobody", BrokerAddress(port=free_port()))
    with pytest.raises(MarketplaceError, match="cannot reach the marketplace"):
        client.start(timeout=2)


def test_qos0_overflow_is_dropped_while_qos1_is_never_lost(broker: BrokerAddress, prefix: str) -> None:
    release = threading.Event()
    seen: list[bytes] = []

    def slow(message: Message) -> None:
        release.wait(5)
        seen.append(message.payload)

    sub = _client(broker, inbox_size=2)
    pub = _client(broker)
    try:
        sub.subscribe(f"{prefix}/q0", 0, slow)
        sub.subscribe(f"{prefix}/q1", 1, slow)
        for i in range(50):
            pub.publish(f"{prefix}/q0", str(i).encode(), qos=0)
        assert _wait_for(lambda: sub.stats.received == 50)
        assert sub.stats.dropped >= 45
        for i in range(20):
            pub.publish(f"{prefix}/q1", f"k{i}".encode(), qos=1)
        release.set()
        assert _wait_for(lambda: len([p for p in seen if p.startswith(b"k")]) == 20, timeout=10)
        assert [p for p in seen if p.startswith(b"k")] == [f"k{i}".encode() for i in range(20)]
        stats = sub.stats
        assert stats.received == stats.handled + stats.dropped
    finally:
        release.set()
        sub.stop()
        pub.stop()


def test_abort_makes_the_broker_publish_the_will(broker: BrokerAddress, prefix: str) -> None:
    got: list[Message] = []
    watcher = _client(broker)
    watcher.subscribe(f"{prefix}/status", 1, got.append)
    dying = _client(broker, will=Will(f"{prefix}/status", b'{"Status":2}', qos=1))
    try:
        dying.abort()
        assert _wait_for(lambda: len(got) == 1)
        assert got[0].payload == b'{"Status":2}'
    finally:
        watcher.stop()


def test_clean_stop_does_not_publish_the_will(broker: BrokerAddress, prefix: str) -> None:
    got: list[Message] = []
    watcher = _client(broker)
    watcher.subscribe(f"{prefix}/status", 1, got.append)
    leaving = _client(broker, will=Will(f"{prefix}/status", b'{"Status":2}', qos=1))
    leaving.stop()
    marker = _client(broker)
    marker.publish(f"{prefix}/status", b"marker", qos=1, wait=True)
    try:
        assert _wait_for(lambda: len(got) == 1)
        assert got[0].payload == b"marker"
    finally:
        watcher.stop()
        marker.stop()


def test_manual_ack_leaves_unhandled_messages_with_the_broker(broker: BrokerAddress, prefix: str) -> None:
    """A message whose handler never finished is redelivered to the same persistent session."""
    client_id = f"t-persist-{uuid.uuid4().hex[:10]}"
    entered = threading.Event()

    def stuck(message: Message) -> None:
        entered.set()
        time.sleep(1.0)

    first = MarketplaceClient(client_id, broker, clean_session=False, manual_ack=True)
    first.start()
    first.subscribe(f"{prefix}/data", 1, stuck)
    pub = _client(broker)
    pub.publish(f"{prefix}/data", b"precious", qos=1, wait=True)
    assert entered.wait(5)
    first.abort()  # gone before the handler returned: the message was never acknowledged

    got: list[Message] = []
    second = MarketplaceClient(client_id, broker, clean_session=False, manual_ack=True)
    second.subscribe(f"{prefix}/data", 1, got.append)  # declared before start: ready for the redelivery
    try:
        second.start()
        assert _wait_for(lambda: any(m.payload == b"precious" for m in got))
    finally:
        second.stop()
        pub.stop()
        cleanup = MarketplaceClient(client_id, broker, clean_session=True)
        cleanup.start()
        cleanup.stop()


def test_broker_address_from_env_reads_lvcap_variables(tmp_path: object) -> None:
    address = BrokerAddress.from_env(
        {
            "LVCAP_BROKER_HOST": "marketplace",
            "LVCAP_BROKER_PORT": "18883",
            "LVCAP_APID": "acme_app_1.0",
            "LVCAP_PASSWORD": "s3cret",
        }
    )
    assert (address.host, address.port, address.username, address.password) == (
        "marketplace",
        18883,
        "acme_app_1.0",
        "s3cret",
    )
    assert "s3cret" not in repr(address)
    with pytest.raises(MarketplaceError, match="LVCAP_BROKER_PORT"):
        BrokerAddress.from_env({"LVCAP_BROKER_PORT": "eighty"})


def test_deferred_ack_keeps_messages_until_the_consumer_acknowledges(broker: BrokerAddress, prefix: str) -> None:
    """With defer_ack only message.ack() releases a message; the others are redelivered."""
    client_id = f"t-defer-{uuid.uuid4().hex[:10]}"
    held: list[Message] = []
    first = MarketplaceClient(client_id, broker, clean_session=False, defer_ack=True)
    first.subscribe(f"{prefix}/data", 1, held.append)
    first.start()
    pub = _client(broker)
    for name in (b"acked", b"kept"):
        pub.publish(f"{prefix}/data", name, qos=1, wait=True)
    assert _wait_for(lambda: len(held) == 2)
    held[0].ack()
    held[0].ack()  # idempotent
    time.sleep(0.2)
    first.abort()

    again: list[Message] = []
    second = MarketplaceClient(client_id, broker, clean_session=False, defer_ack=True)
    second.subscribe(f"{prefix}/data", 1, again.append)
    try:
        second.start()
        assert _wait_for(lambda: any(m.payload == b"kept" for m in again))
        time.sleep(0.3)
        assert [m.payload for m in again] == [b"kept"]
    finally:
        for message in again:
            message.ack()
        second.stop()
        pub.stop()
        cleanup = MarketplaceClient(client_id, broker, clean_session=True)
        cleanup.start()
        cleanup.stop()


def test_a_burst_arrives_whole_in_order_and_ack_many_releases_it(broker: BrokerAddress, prefix: str) -> None:
    """A burst of QoS 1 messages (read from the socket in large chunks) arrives whole and in order, in
    dispatcher runs; ack_many after each run acknowledges them at most once each, so none comes back."""
    client_id = f"t-burst-{uuid.uuid4().hex[:10]}"
    count = 900  # under the test broker's max_queued_messages (1000): none may be dropped
    held: list[Message] = []
    runs: list[int] = []
    first = MarketplaceClient(client_id, broker, clean_session=False, defer_ack=True)

    def after_batch() -> None:
        done = runs[-1] if runs else 0
        if done == 0 and held:
            held[0].ack()  # acknowledged alone first: ack_many must not acknowledge it again
        first.ack_many([m.ack for m in held[done:]])
        first.ack_many([m.ack for m in held[done:]])  # idempotent
        runs.append(len(held))

    first.subscribe(f"{prefix}/burst", 1, held.append)
    first.set_after_batch(after_batch)
    first.start()
    pub = _client(broker)
    second: MarketplaceClient | None = None
    try:
        for n in range(count):
            pub.publish(f"{prefix}/burst", str(n).encode(), qos=1)
        assert _wait_for(lambda: len(held) == count, timeout=20)
        assert [int(m.payload) for m in held] == list(range(count))
        assert _wait_for(lambda: runs[-1] == count)  # called after each run, never in the middle of one
        assert runs == sorted(runs)
        time.sleep(0.3)
        first.abort()

        again: list[Message] = []
        second = MarketplaceClient(client_id, broker, clean_session=False, defer_ack=True)
        second.subscribe(f"{prefix}/burst", 1, again.append)
        second.start()
        pub.publish(f"{prefix}/burst", b"last", qos=1, wait=True)
        assert _wait_for(lambda: len(again) >= 1)
        time.sleep(0.3)
        assert [m.payload for m in again] == [b"last"]
        second.ack_many([m.ack for m in again])
    finally:
        first.stop()
        if second is not None:
            second.stop()
        pub.stop()
        cleanup = MarketplaceClient(client_id, broker, clean_session=True)
        cleanup.start()
        cleanup.stop()
