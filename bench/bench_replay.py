"""Replay throughput: input messages/s fed through an app by ``gridhub.sdk.replay``, vs raw paho QoS 1.

Measured, for two apps each run as its own process on the harness's embedded marketplace
(``HarnessMarketplace``: amqtt in a thread of this process, with the marketplace's ACL plugins
and the harness's recording hook):

- ``echo``: the smallest SDK app (``EchoApp`` below): one Scalar out per Scalar in;
- ``thermal``: the built-in thermal rating app (``ThermalRatingApp``), fed per-phase currents,
  ambient and top oil every 10 simulated minutes (5 inputs per instant; 9 outputs per instant).

For each run a fresh harness starts the app and configures it (not timed); then, timed,
``run_replay`` feeds N inputs, each published at QoS 1 and followed by the status/request marker
the harness waits for (docs/devkit.md, flow control). The same call with no inputs, on the same
harness just before, is the fixed cost (settling, one marker, the final 100 ms quiet period) and
is subtracted: rate = N / (t(N inputs) - t(no inputs)).

References, on a HarnessMarketplace of their own, same run, round-robin with the replays:

- ``raw``: a paho publisher -> paho subscriber at QoS 1 (processes of ``bench.common``), the
  publisher streaming with 20 in flight (limits.md section 2: amqtt ~3,000 msg/s QoS 1);
- ``lockstep``: one paho publisher and one paho subscriber in this process, each message sent
  only once the previous one has arrived: one broker round trip per message, the shape of the
  replay's own flow control (which needs two per input: the input and the marker's answer).

No target is set by the issue: the benchmark reports the figures and ratios, and exits 0.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Credentials, Options, Summary, console, free_port, header, progress, raw_paho_qos1
from gridhub.edge import marketplace as mp
from gridhub.edge.apps.thermal import ThermalRatingApp
from gridhub.sdk import App, ConfigurationError, Input, ScalarObject
from gridhub.sdk.replay import (
    AppIdentity,
    BrokerLog,
    Harness,
    HarnessMarketplace,
    InputMessage,
    resolve_target,
    run_replay,
)

ECHO_INPUT = "sensor/data/bench_meter_01/60/transformer/l1/current-mean"
SOURCE = "sensor/data/bench_meter_01"
CURRENTS = [f"{SOURCE}/60/transformer/l{phase}/current-mean" for phase in (1, 2, 3)]
AMBIENT = f"{SOURCE}/10/ambient/temperature-outdoor"
TOP_OIL = f"{SOURCE}/10/transformer/temperature-top-oil"
THERMAL_CONFIG: dict[str, Any] = {
    "current_topics": CURRENTS,
    "ambient_topic": AMBIENT,
    "top_oil_topic": TOP_OIL,
    "interval": 600,
}
T0 = 1_717_200_000
RAW_TOPIC = "algorithm/data/bench_publisher_01/busbar/l1/voltage-mean"
RAW_TIMEOUT = 10.0


class EchoApp(App):
    """The smallest useful SDK app: republish every Scalar of ``input`` on algorithm/data/<IID>/echo."""

    role = "algorithm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input = ECHO_INPUT

    def configure(self, config: dict[str, Any]) -> None:
        """Read ``input``, the topic to echo."""
        topic = config.get("input", ECHO_INPUT)
        if not isinstance(topic, str):
            raise ConfigurationError(f"input: expected a topic, got {topic!r}")
        self.input = topic

    def start(self) -> None:
        """Subscribe to the input."""
        self.subscribe(self.input, self.on_input)

    def on_input(self, topic: str, obj: Input) -> None:
        """Publish the Scalar's value with its own timestamp and Valid flag (4.5, 4.8)."""
        if isinstance(obj, ScalarObject):
            self.publish_scalar("echo", obj.value, timestamp=obj.timestamp, valid=obj.valid)


def echo_inputs(count: int) -> list[InputMessage]:
    return [
        InputMessage.from_json({"topic": ECHO_INPUT, "payload": {"Timestamp": T0 + 60 * i, "Value": 400.0 + i % 50,
                                                                  "Valid": True}}, "echo")
        for i in range(count)
    ]  # fmt: skip


def thermal_inputs(count: int) -> list[InputMessage]:
    """Ambient, top oil and three phase currents every 10 minutes; the load follows a daily wave."""
    messages = []
    for n in range(math.ceil(count / 5)):
        t = T0 + 600 * n
        load = 500.0 + 200.0 * math.sin(2 * math.pi * n / 144)
        values = [(AMBIENT, 15.0), (TOP_OIL, round(45.0 + 15.0 * math.sin(2 * math.pi * (n - 12) / 144), 2))]
        values += [(topic, round(load * share, 1)) for topic, share in zip(CURRENTS, (1.0, 0.95, 0.9), strict=True)]
        for topic, value in values:
            messages.append(
                InputMessage.from_json(
                    {"topic": topic, "payload": {"Timestamp": t, "Value": value, "Valid": True}}, "t"
                )
            )
    return messages[:count]


APPS: dict[str, tuple[type[App], dict[str, Any], Callable[[int], list[InputMessage]]]] = {
    "echo": (EchoApp, {"input": ECHO_INPUT}, echo_inputs),
    "thermal": (ThermalRatingApp, THERMAL_CONFIG, thermal_inputs),
}


def replay_once(name: str, count: int) -> tuple[float, float, int]:
    """One replay of ``count`` inputs through a fresh app; return (net s, fixed-cost s, outputs recorded)."""
    app, config, make_inputs = APPS[name]
    inputs = make_inputs(count)
    identity = AppIdentity(vendor="bench", name=name, version="1.0.0")
    with Harness(resolve_target(app), identity, config) as harness:
        harness.launch()
        harness.wait_configured()
        started = time.perf_counter()
        run_replay(harness, [])
        fixed = time.perf_counter() - started
        started = time.perf_counter()
        records = run_replay(harness, inputs)
        elapsed = time.perf_counter() - started
        harness.shutdown(5.0)
    outputs = sum(1 for r in records if r.kind == "data" and not r.retain)
    return elapsed - fixed, fixed, outputs


@contextmanager
def reference_marketplace() -> Iterator[tuple[int, Credentials, Credentials]]:
    """A HarnessMarketplace (the replay's broker, its plugins and recording hook) with two app accounts."""
    publisher = mp.MarketplaceUser("bench_publisher_1.0.0", "bench-publisher-pw", iid="bench_publisher_01")
    subscriber = mp.MarketplaceUser("bench_subscriber_1.0.0", "bench-subscriber-pw", iid="bench_subscriber_01")
    users = {u.username: u for u in (publisher, subscriber)}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-replay-") as tmp:
        marketplace = HarnessMarketplace(port, Path(tmp), users.values(), BrokerLog(users))
        marketplace.start()
        try:
            yield (
                port,
                Credentials(publisher.username, publisher.password),
                Credentials(subscriber.username, subscriber.password),
            )
        finally:
            marketplace.stop()


def _paho(client_id: str, creds: Credentials, port: int) -> paho.Client:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.username_pw_set(creds.username, creds.password)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, r, p: connected.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not connected.wait(15):
        raise RuntimeError(f"{client_id}: no CONNACK from 127.0.0.1:{port}")
    return client


def lockstep(port: int, pub: Credentials, sub: Credentials, count: int) -> float:
    """Send ``count`` QoS 1 messages, each once the previous one reached the subscriber; return msg/s."""
    arrived = threading.Event()
    subscribed = threading.Event()
    receiver = _paho(f"bench-lockstep-sub-{time.monotonic_ns()}", sub, port)
    sender = _paho(f"bench-lockstep-pub-{time.monotonic_ns()}", pub, port)
    try:
        receiver.on_message = lambda c, u, m: arrived.set()
        receiver.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        receiver.subscribe(RAW_TOPIC, 1)
        if not subscribed.wait(15):
            raise RuntimeError("lockstep: no SUBACK")
        payload = b'{"Timestamp":1717200000,"Value":400.0,"Valid":true}'
        started = time.perf_counter()
        for i in range(count):
            arrived.clear()
            sender.publish(RAW_TOPIC, payload, qos=1)
            if not arrived.wait(RAW_TIMEOUT):
                raise RuntimeError(f"lockstep: message {i + 1} of {count} did not arrive within {RAW_TIMEOUT:g} s")
        return count / (time.perf_counter() - started)
    finally:
        for client in (sender, receiver):
            client.disconnect()
            client.loop_stop()


def run(options: Options) -> int:
    """Measure replay throughput for each app and the raw references, round-robin."""
    runs = options.runs or (1 if options.quick else 3)
    count = 200 if options.quick else 1_000
    raw_count = 1_200 if options.quick else 6_000
    lock_count = 300 if options.quick else 1_500
    header(
        "bench_replay",
        f"replay(): {count:,} inputs through the echo and thermal apps vs raw paho QoS 1 through the same "
        f"embedded marketplace ({raw_count:,} streamed, {lock_count:,} lockstep); {runs} runs per case, round-robin.",
    )
    rates: dict[str, list[float]] = {"echo": [], "thermal": [], "raw": [], "lockstep": []}
    fixed: list[float] = []
    outputs: dict[str, int] = {}
    lost = 0
    with reference_marketplace() as (port, pub, sub), progress() as bar:
        task = bar.add_task("echo, thermal, raw, lockstep", total=4 * runs)
        for _ in range(runs):
            for name in APPS:
                net, overhead, produced = replay_once(name, count)
                rates[name].append(count / net)
                fixed.append(overhead)
                outputs[name] = produced
                bar.advance(task)
            rate, received = raw_paho_qos1(port, RAW_TOPIC, raw_count, pub, sub, RAW_TIMEOUT)
            rates["raw"].append(rate)
            lost += raw_count - received
            bar.advance(task)
            rates["lockstep"].append(lockstep(port, pub, sub, lock_count))
            bar.advance(task)
    summary = {name: Summary(tuple(values)) for name, values in rates.items()}
    raw, step = summary["raw"].median, summary["lockstep"].median
    loss = f"; [red]{lost:,} of {raw_count * runs:,} messages lost[/]" if lost else ""
    console.print(f"  replay fixed cost (settle + marker + final quiet): {Summary(tuple(fixed)).fmt(3, 's')}")
    for name in APPS:
        s = summary[name]
        console.print(
            f"  replay {name:<8}: {s.fmt(0, 'inputs/s')}; {outputs[name]:,} outputs per run; "
            f"{s.median / raw:.3f}x raw, {s.median / step:.2f}x lockstep"
        )
    console.print(f"  raw paho QoS 1 pub -> sub, streamed  : {summary['raw'].fmt(0, 'msg/s')}{loss}")
    console.print(f"  raw paho QoS 1 pub -> sub, lockstep  : {summary['lockstep'].fmt(0, 'msg/s')}")
    return 0


if __name__ == "__main__":
    import sys

    from bench.__main__ import main

    sys.exit(main(["replay", *sys.argv[1:]]))
