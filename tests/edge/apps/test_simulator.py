"""The substation simulator: Annex 3 points, physical consistency, determinism, faults, live run."""

from __future__ import annotations

import json
import math
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.edge.apps import load_shapes
from gridhub.edge.apps.simulator import (
    PHASES,
    Reading,
    SimulatorConfig,
    SubstationModel,
    TopOilParameters,
    top_oil_step,
)
from gridhub.edge.config import load_config
from gridhub.edge.runtime import EdgeRuntime
from gridhub.formats.lvcap import MetadataObject, ScalarObject, decode_json_object, sensor_data_topic
from gridhub.sdk import ConfigurationError
from tests.conftest import free_port, wait_for

MONDAY = "2024-01-15T00:00:00Z"
WEEK_MINUTES = 7 * 24 * 60
ELECTRICAL = (
    "current-min", "current-max", "current-mean", "power-factor-mean", "power-active-mean",
    "power-reactive-mean", "energy-active", "energy-reactive",
)  # fmt: skip


@dataclass
class Run:
    """A simulated run: the model and, per 10 s tick, the readings by sub-topic."""

    model: SubstationModel
    ticks: list[dict[str, Reading]]

    def minutes(self) -> list[dict[str, float]]:
        """Values of the 60 s electrical set, one dict per minute."""
        return [
            {k: r.value for k, r in tick.items() if k.startswith("60/")}
            for tick in self.ticks
            if "60/busbar/l1/voltage-mean" in tick
        ]

    def series(self, sub_topic: str) -> list[float]:
        return [tick[sub_topic].value for tick in self.ticks if sub_topic in tick]


def simulate(config: dict[str, Any], minutes: int) -> Run:
    model = SubstationModel(SimulatorConfig.from_container_config(config))
    ticks = []
    for _ in range(minutes * 6):
        ticks.append({r.sub_topic: r for r in model.step_tick()})
    return Run(model, ticks)


BASE = {
    "start": MONDAY,
    "seed": 11,
    "feeders": [{"share": 0.4, "neutral": True}, {"share": 0.3}],
    "thermocouples": [{"rise": 15.0}],
    "analogue": [{"low": 4.0, "high": 20.0, "units": "A"}],
}


@pytest.fixture(scope="module")
def week() -> Run:
    """A winter week (Monday to Sunday) of a 500 kVA substation with two monitored feeders."""
    return simulate(BASE, WEEK_MINUTES)


# -- topics and metadata -------------------------------------------------------------------


def test_every_annex_3_point_is_published_on_a_valid_topic_with_metadata(week: Run) -> None:
    points = {p.sub_topic: p for p in week.model.points}
    for asset in ("transformer", "feeder1", "feeder2"):
        for phase in PHASES:
            for parameter in ELECTRICAL:
                assert f"60/{asset}/{phase}/{parameter}" in points
    for phase in PHASES:
        for parameter in ("voltage-min", "voltage-max", "voltage-mean"):
            assert f"60/busbar/{phase}/{parameter}" in points
    for parameter in ("current-min", "current-max", "current-mean"):
        assert f"60/feeder1/n/{parameter}" in points
        assert f"60/feeder2/n/{parameter}" not in points  # neutral monitoring only where configured
    for sub in (
        "10/ambient/temperature-outdoor", "10/ambient/temperature-indoor", "10/transformer/temperature-top-oil",
        "10/thermocouple1/temperature", "10/analogue1/value",
    ):  # fmt: skip
        assert sub in points
    units = {p.sub_topic.rsplit("/", 1)[-1]: p.units for p in points.values()}
    assert units["voltage-mean"] == "V" and units["current-max"] == "A" and units["power-active-mean"] == "W"
    assert units["power-reactive-mean"] == "var" and units["energy-active"] == "J"
    assert units["temperature-top-oil"] == "°C"
    for point in points.values():
        sensor_data_topic("gridhub_simulator_01", f"{point.sub_topic}/meta")  # raises if not a valid topic name
        meta = point.metadata()
        again = MetadataObject.from_json(json.loads(json.dumps(meta.to_json())), where=point.sub_topic)
        assert again == meta and meta.name and meta.units and meta.sig_figs
    # Exactly the declared points are published: 60 s ones once a minute, 10 s ones every tick.
    published = set().union(*week.ticks)
    assert published == set(points)
    stamps = defaultdict(list)
    for tick in week.ticks:
        for sub, reading in tick.items():
            stamps[sub].append(reading.timestamp)
    for tick in week.ticks[:360]:  # the first hour as Scalar Objects (9.1), round-tripped through JSON
        for sub, reading in tick.items():
            payload = json.dumps(reading.obj.to_json())
            assert ScalarObject.from_json(json.loads(payload), where=sub) == reading.obj and reading.obj.valid
    start = week.model.config.start
    for sub, times in stamps.items():
        step = 60 if sub.startswith("60/") else 10
        assert times == list(range(start + step, start + step * (len(times) + 1), step)), sub


# -- physical consistency ------------------------------------------------------------------


def test_power_factor_current_and_energy_agree_per_phase(week: Run) -> None:
    for minute in week.minutes():
        for phase in PHASES:
            v = minute[f"60/busbar/{phase}/voltage-mean"]
            assert minute[f"60/busbar/{phase}/voltage-min"] <= v <= minute[f"60/busbar/{phase}/voltage-max"]
            for asset in ("transformer", "feeder1", "feeder2"):
                k = f"60/{asset}/{phase}/"
                p, q, i = minute[k + "power-active-mean"], minute[k + "power-reactive-mean"], minute[k + "current-mean"]
                s = v * i
                assert s == pytest.approx(math.hypot(p, q), rel=2e-4, abs=3.0)  # S = V * I = sqrt(P² + Q²)
                assert minute[k + "power-factor-mean"] == pytest.approx(p / s, abs=2e-3)  # PF = P / S
                assert q > 0  # lagging load, no PV configured
                assert minute[k + "energy-active"] == pytest.approx(p * 60, abs=0.1)  # E = mean P * 60 s
                assert minute[k + "energy-reactive"] == pytest.approx(q * 60, abs=0.1)
                assert 0 <= minute[k + "current-min"] <= i <= minute[k + "current-max"]
    # Over the week, the energy is the integral of the power: sum of P * 60 s.
    total = sum(m["60/transformer/l1/energy-active"] for m in week.minutes())
    integral = sum(m["60/transformer/l1/power-active-mean"] * 60 for m in week.minutes())
    assert total == pytest.approx(integral, rel=1e-9)


def test_monitored_feeders_plus_the_remainder_make_the_transformer_total(week: Run) -> None:
    remainders = []
    for minute in week.minutes():
        for phase in PHASES:
            for quantity in ("power-active-mean", "power-reactive-mean"):
                tx = minute[f"60/transformer/{phase}/{quantity}"]
                feeders = minute[f"60/feeder1/{phase}/{quantity}"] + minute[f"60/feeder2/{phase}/{quantity}"]
                assert 0 < feeders < tx  # 30 % of the load is on unmonitored feeders
                remainders.append((tx - feeders) / tx)
            currents = minute[f"60/feeder1/{phase}/current-mean"] + minute[f"60/feeder2/{phase}/current-mean"]
            assert currents < minute[f"60/transformer/{phase}/current-mean"]
    assert statistics.fmean(remainders) == pytest.approx(0.3, abs=0.05)

    # With five feeders the total is calculated: the feeders add up to the transformer exactly.
    five = {"start": MONDAY, "feeders": [{"share": s} for s in (0.3, 0.25, 0.2, 0.15, 0.1)]}
    for minute in simulate(five, 240).minutes():
        for phase in PHASES:
            for quantity in ("power-active-mean", "power-reactive-mean", "energy-active", "energy-reactive"):
                parts = sum(minute[f"60/feeder{n}/{phase}/{quantity}"] for n in range(1, 6))
                assert parts == pytest.approx(minute[f"60/transformer/{phase}/{quantity}"], abs=0.3 * 60)
            per_phase = [minute[f"60/transformer/{p}/power-active-mean"] for p in PHASES]
            assert max(per_phase) / min(per_phase) < 2  # imbalanced, but every phase is loaded


def test_load_follows_the_derived_daily_and_weekly_shape(week: Run) -> None:
    minutes = week.minutes()
    start = week.model.config.start
    by_half_hour: dict[int, list[float]] = defaultdict(list)
    for n, minute in enumerate(minutes):
        p = sum(minute[f"60/transformer/{phase}/power-active-mean"] for phase in PHASES)
        by_half_hour[n // 30].append(p)
    simulated, shape = [], []
    for index, values in sorted(by_half_hour.items()):
        when = datetime.fromtimestamp(start + index * 1800, UTC)
        simulated.append(statistics.fmean(values))
        shape.append(
            load_shapes.LOAD_SHAPE[when.month - 1][1 if when.weekday() >= 5 else 0][when.hour * 2 + when.minute // 30]
        )
    assert statistics.correlation(simulated, shape) > 0.8


def test_voltage_drops_with_load_and_rises_with_reverse_flow() -> None:
    # The same seed draws the same random numbers, so only the load differs between the runs.
    light = simulate({"start": MONDAY, "peak_load": 0.3}, 24 * 60).minutes()
    heavy = simulate({"start": MONDAY, "peak_load": 0.9}, 24 * 60).minutes()
    for a, b in zip(light, heavy, strict=True):
        for phase in PHASES:
            assert b[f"60/transformer/{phase}/current-mean"] > a[f"60/transformer/{phase}/current-mean"]
            assert b[f"60/busbar/{phase}/voltage-mean"] < a[f"60/busbar/{phase}/voltage-mean"]
    midsummer = "2024-06-21T11:00:00Z"
    plain = simulate({"start": midsummer, "peak_load": 0.3}, 120).minutes()
    solar = simulate({"start": midsummer, "peak_load": 0.3, "pv_capacity": 600_000.0}, 120).minutes()
    for a, b in zip(plain, solar, strict=True):
        assert b["60/transformer/l1/power-active-mean"] < 0 < a["60/transformer/l1/power-active-mean"]
        assert b["60/transformer/l1/power-factor-mean"] < 0  # the sign of PF shows the direction
        assert b["60/busbar/l1/voltage-mean"] > a["60/busbar/l1/voltage-mean"]


def test_top_oil_step_response_matches_the_iec_difference_equation() -> None:
    params = TopOilParameters()  # ONAN: τo 180 min, Δθor 60 K, R 6.5, x 0.8, k11 1
    theta, ambient = 20.0, 20.0
    for _ in range(10800 // 10):  # one time constant at rated load (K = 1)
        theta = top_oil_step(theta, ambient, 1.0, 10.0, params)
    assert theta - ambient == pytest.approx(60 * (1 - math.exp(-1)), abs=0.05)
    for _ in range(4 * 10800 // 10):
        theta = top_oil_step(theta, ambient, 1.0, 10.0, params)
    assert theta - ambient == pytest.approx(60 * (1 - math.exp(-5)), abs=0.05)
    # Half load: ((1 + 0.25 R) / (1 + R))^x * 60 K, hand-computed: 0.35^0.8 * 60 = 25.906 K.
    theta = ambient
    for _ in range(20 * 10800 // 10):
        theta = top_oil_step(theta, ambient, 0.5, 10.0, params)
    assert theta - ambient == pytest.approx(25.906, abs=0.002)


def test_published_top_oil_follows_load_and_indoor_ambient_and_lags_the_load(week: Run) -> None:
    config = week.model.config
    rated = config.rated_current
    ticks = week.ticks
    # Re-run the IEC equation on the published values alone: indoor ambient every 10 s and the
    # transformer's mean currents of the minute each tick belongs to.
    theta = ticks[0]["10/transformer/temperature-top-oil"].value
    load_factor = 0.0
    worst = 0.0
    for n in range(1, len(ticks)):
        if n % 6 == 0 or n == 1:
            minute = ticks[min(len(ticks) - 1, (n // 6) * 6 + 5)]
            load_factor = sum(minute[f"60/transformer/{p}/current-mean"].value for p in PHASES) / 3 / rated
        ambient = ticks[n]["10/ambient/temperature-indoor"].value
        theta = top_oil_step(theta, ambient, load_factor, 10.0, config.top_oil)
        worst = max(worst, abs(theta - ticks[n]["10/transformer/temperature-top-oil"].value))
    assert worst < 0.1
    # The oil's 3 h time constant makes the top oil lag the load: best correlation 0.5-4 h later.
    load = [sum(m[f"60/transformer/{p}/current-mean"] for p in PHASES) for m in week.minutes()]
    oil = week.series("10/transformer/temperature-top-oil")[5::6]
    lags = range(0, 300, 10)
    best = max(lags, key=lambda lag: statistics.correlation(load[: len(load) - lag], oil[lag:]))
    assert 30 <= best <= 240
    assert all(-10 < t < 60 for t in week.series("10/ambient/temperature-outdoor"))


# -- determinism and faults ------------------------------------------------------------------


def test_the_same_seed_gives_the_same_readings_and_another_seed_others() -> None:
    config = dict(BASE)
    one = [r for tick in simulate(config, 300).ticks for r in tick.values()]
    two = [r for tick in simulate(config, 300).ticks for r in tick.values()]
    other = [r for tick in simulate({**config, "seed": 12}, 300).ticks for r in tick.values()]
    assert one == two
    assert [r.value for r in one] != [r.value for r in other]


def test_configured_faults_change_only_their_points_and_window() -> None:
    start = datetime.fromisoformat(MONDAY).timestamp()
    window = {"from": "2024-01-15T01:00:00Z", "to": "2024-01-15T02:00:00Z"}
    faults = [
        {"kind": "disconnected", "points": "60/feeder1/#", **window},
        {"kind": "stuck", "points": "10/transformer/temperature-top-oil", **window},
        {"kind": "spike", "points": "60/busbar/l2/voltage-mean", "factor": 1.5, **window},
        {"kind": "clock-jump", "points": "10/ambient/#", "offset": -7200, **window},
    ]
    clean = simulate(BASE, 180).ticks
    faulty = simulate({**BASE, "faults": faults}, 180).ticks
    low, high = start + 3600, start + 7200
    stuck_at = next(t["10/transformer/temperature-top-oil"].value for t in reversed(clean[:359]))
    for a, b in zip(clean, faulty, strict=True):
        for sub, good in a.items():
            bad = b[sub]
            t = good.timestamp
            if not low <= t < high:
                assert bad == good, sub
            elif sub.startswith("60/feeder1/"):
                assert not bad.valid and bad.timestamp == t  # timestamps still advance (4.8)
                assert not bad.obj.valid
            elif sub == "10/transformer/temperature-top-oil":
                assert bad.valid and bad.value == stuck_at and bad.timestamp == t
            elif sub == "60/busbar/l2/voltage-mean":
                assert bad.value == pytest.approx(good.value * 1.5) and bad.valid
            elif sub.startswith("10/ambient/"):
                assert bad.timestamp == t - 7200 and bad.value == good.value
            else:
                assert bad == good, sub
    assert len({t["10/transformer/temperature-top-oil"].value for t in clean[360:720]}) > 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"feeders": [{"share": 0.1}] * 6}, "feeders: expected 1 to 5"),
        ({"feeders": [{"share": 0.7}, {"share": 0.6}]}, "add up to 1.3"),
        ({"feeders": [{"share": 0.1}] * 5}, "shares must add up to 1"),
        ({"feeders": [{"neutral": True}]}, "feeders[0].share: required"),
        ({"thermocouples": [{}] * 6}, "thermocouples: at most 5"),
        ({"analogue": [{"low": 5, "high": 1}]}, "analogue[0]: high"),
        ({"faults": [{"kind": "melted", "from": MONDAY, "to": MONDAY}]}, "faults[0].kind"),
        ({"faults": [{"kind": "stuck", "from": MONDAY, "to": MONDAY}]}, "'to' must be later"),
        ({"faults": [{"kind": "spike", "points": "a b", "from": MONDAY, "to": "2024-01-16"}]}, "faults[0].points"),
        ({"start": "yesterday"}, "ContainerConfig.start"),
        ({"clock_factor": 0}, "ContainerConfig.clock_factor"),
        ({"peak_load": "high"}, "peak_load: expected a number"),
        ({"top_oil": {"tau": 5}}, "top_oil: unknown key(s) tau"),
        ({"colour": "red"}, "unknown key(s) colour"),
    ],
)
def test_a_bad_configuration_is_refused_saying_which_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SimulatorConfig.from_container_config({**BASE, **change})
    assert message in str(caught.value)


# -- live, through the edge runtime ------------------------------------------------------------


class Watcher:
    """A plain paho subscriber collecting everything below one topic filter."""

    def __init__(self, host: str, port: int, username: str, password: str, topic: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.monotonic_ns()}")
        self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def snapshot(self) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[EdgeRuntime]:
    command = json.dumps([sys.executable, "-m", "gridhub.edge.apps.simulator"])
    (tmp_path / "edge.toml").write_text(
        'version = 1\ndata_dir = "edge"\n'
        f'[marketplace]\nmode = "embedded"\nport = {free_port()}\n'
        "[manager]\nstatus_interval = 0.5\nshutdown_grace = 5\nrestart_backoff = 0.1\n"
        '[[app]]\nvendor = "gridhub"\nname = "simulator"\nversion = "1.0.0"\ninstance = "01"\n'
        f"command = {command}\n"
        '[app.config]\nstart = "2024-06-01T00:00:00Z"\nclock_factor = 600\nseed = 7\n'
        "[[app.config.feeders]]\nshare = 0.5\nneutral = true\n"
    )
    edge = EdgeRuntime(load_config(tmp_path / "edge.toml"))
    edge.start()
    try:
        yield edge
    finally:
        edge.stop()


def test_the_simulator_runs_in_the_edge_runtime_and_publishes_scalars_and_retained_metadata(
    runtime: EdgeRuntime,
) -> None:
    address = runtime.core_address("gridhub-manager")
    assert address.username is not None and address.password is not None
    prefix = "sensor/data/gridhub_simulator_01/"
    watch = Watcher(address.host, address.port, address.username, address.password, prefix + "#")
    try:
        examples = {
            "60/busbar/l1/voltage-mean", "60/transformer/l2/current-max", "60/feeder1/l3/power-active-mean",
            "60/feeder1/n/current-mean", "10/transformer/temperature-top-oil", "10/ambient/temperature-outdoor",
        }  # fmt: skip
        wait_for(lambda: {m.topic.removeprefix(prefix) for m in watch.snapshot()} >= examples, "the example readings")
        expected = {p.sub_topic for p in SubstationModel(SimulatorConfig.from_container_config(
            {"start": "2024-06-01T00:00:00Z", "feeders": [{"share": 0.5, "neutral": True}]})).points}  # fmt: skip
        # A subscriber arriving later gets every point's metadata, retained (8.3.2, 9.4).
        late = Watcher(address.host, address.port, address.username, address.password, prefix + "#")
        try:

            def metas() -> dict[str, mqtt.MQTTMessage]:
                return {m.topic: m for m in late.snapshot() if m.topic.endswith("/meta") and m.retain}

            wait_for(lambda: len(metas()) == len(expected), "retained metadata")
            assert set(metas()) == {f"{prefix}{sub}/meta" for sub in expected}
            for topic, message in metas().items():
                meta = MetadataObject.from_json(decode_json_object(message.payload, topic), where=topic)
                assert meta.name and meta.units
        finally:
            late.close()
        readings = [m for m in watch.snapshot() if not m.topic.endswith("/meta")]
        start = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp())
        for message in readings:
            assert message.qos == 1 and not message.retain
            sub = message.topic.removeprefix(prefix)
            assert sub in expected
            scalar = ScalarObject.from_json(decode_json_object(message.payload, message.topic), where=message.topic)
            assert scalar.valid and start < scalar.timestamp < start + 86_400  # simulated time, not now
    finally:
        watch.close()
