"""The thermal rating app: IEC 60076-7 model, ratings, validity, and a live run on the edge runtime."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.edge.apps.thermal import (
    Insulation,
    Output,
    ThermalParameters,
    ThermalRating,
    ThermalSettings,
    ThermalState,
    advance,
    ageing_rate,
    continuous_load_factor,
    load_loss_of_life,
    permissible_load_factors,
    save_loss_of_life,
    steady_state,
    step,
)
from gridhub.edge.config import load_config
from gridhub.edge.manager import app_data_dir, read_status
from gridhub.edge.runtime import EdgeRuntime
from gridhub.sdk import ConfigurationError, ScalarObject, SeriesObject
from tests.conftest import free_port, wait_for

T0 = 1_700_000_000
ONAN = ThermalParameters()


def scalars(outputs: Iterable[Output]) -> dict[str, ScalarObject]:
    return {o.sub_topic: o.obj for o in outputs if isinstance(o.obj, ScalarObject)}


def series(outputs: Iterable[Output]) -> dict[str, SeriesObject]:
    return {o.sub_topic: o.obj for o in outputs if isinstance(o.obj, SeriesObject)}


# -- the model against hand-derived solutions -----------------------------------------------------


def test_top_oil_step_response_matches_the_closed_form_exponential() -> None:
    """Load step K 0 -> 1 at constant ambient: Δθo(t) = Δθor·((1+K²R)/(1+R))^x·(1 - exp(-t/(k11·τo))).

    The closed form starts from oil at ambient: a transformer energised cold at full load.
    """
    ambient, k = 20.0, 1.0
    state = ThermalState(ambient, 0.0, 0.0)
    dt = 2.0
    for n in range(1, 6 * 3600 // int(dt) + 1):
        state = step(ONAN, state, k, ambient, dt)
        t = n * dt
        if n % 900 == 0:  # every half hour
            expected = 60.0 * ((1 + k * k * 6.5) / (1 + 6.5)) ** 0.8 * (1 - math.exp(-t / (1.0 * 180 * 60)))
            assert state.top_oil - ambient == pytest.approx(expected, abs=0.02), t
    # After 6 h (2 oil time constants) the rise is 1 - e^-2 of the rated 60 K.
    assert state.top_oil - ambient == pytest.approx(60.0 * (1 - math.exp(-2)), abs=0.02)


def test_two_term_hot_spot_response_matches_the_closed_form_with_its_overshoot() -> None:
    """Δθh(t) = k21·Δθhr·(1 - exp(-t/(k22·τw))) - (k21 - 1)·Δθhr·(1 - exp(-t/(τo/k22)))."""
    params = replace(ONAN, k21=1.3)  # k21 > 1 brings in the slow negative term (IEC ONAF/ONAN large units)
    ambient = 10.0
    state = steady_state(params, 0.0, ambient)
    dt, gradient = 1.0, 23.0
    rises = []
    for n in range(1, 4 * 3600 + 1):
        state = step(params, state, 1.0, ambient, dt)
        t = n * dt
        expected = 1.3 * gradient * (1 - math.exp(-t / (2.0 * 240))) - 0.3 * gradient * (
            1 - math.exp(-t / (10800 / 2.0))
        )
        if n % 60 == 0:
            assert state.rise_1 - state.rise_2 == pytest.approx(expected, abs=0.03), t
            assert state.hot_spot == pytest.approx(state.top_oil + expected, abs=0.03)
        rises.append(state.rise_1 - state.rise_2)
    # The hot-spot gradient overshoots its final 23 K and then settles back towards it.
    assert max(rises) > 25.0 > gradient + 0.5 > rises[-1] > gradient


def test_a_long_gap_is_integrated_in_stable_substeps() -> None:
    """One call over 2 h equals many one-minute steps, even though 2 h ≫ the winding time constant."""
    start = steady_state(ONAN, 0.5, 20.0)
    by_advance = advance(ONAN, start, 1.2, 20.0, 7200.0, max_step=60.0)
    state = start
    for _ in range(120):
        state = step(ONAN, state, 1.2, 20.0, 60.0)
    assert by_advance.hot_spot == pytest.approx(state.hot_spot, abs=1e-9)
    assert by_advance.loss_of_life == pytest.approx(state.loss_of_life, abs=1e-12)


def test_ageing_rate_doubles_every_six_kelvin_above_98() -> None:
    assert ageing_rate(98.0) == pytest.approx(1.0)
    assert ageing_rate(104.0) == pytest.approx(2.0)
    assert ageing_rate(92.0) == pytest.approx(0.5)
    assert ageing_rate(110.0, Insulation.UPGRADED) == pytest.approx(1.0)
    assert ageing_rate(110.0, Insulation.UPGRADED) < ageing_rate(110.0)  # upgraded paper ages slower


def test_a_day_at_the_continuous_rating_costs_a_day_of_life() -> None:
    k = continuous_load_factor(ONAN, 20.0, 98.0, 1.5)
    state = advance(ONAN, steady_state(ONAN, k, 20.0), k, 20.0, 86400.0)
    assert state.hot_spot == pytest.approx(98.0, abs=1e-6)
    assert state.loss_of_life == pytest.approx(24.0, rel=1e-6)


@pytest.mark.parametrize(("ambient", "limit"), [(20.0, 98.0), (30.0, 110.0), (-5.0, 120.0), (15.0, 98.0)])
def test_the_continuous_rating_settles_the_hot_spot_at_the_limit(ambient: float, limit: float) -> None:
    k = continuous_load_factor(ONAN, ambient, limit, 5.0)
    assert steady_state(ONAN, k, ambient).hot_spot == pytest.approx(limit, abs=1e-6)
    if (ambient, limit) == (15.0, 98.0):
        assert k == pytest.approx(1.0)  # 15 + 60 + 23 = 98: rated load exactly


def test_the_continuous_rating_is_capped_and_zero_when_too_hot_unloaded() -> None:
    assert continuous_load_factor(ONAN, -40.0, 140.0, 1.5) == 1.5  # would be more than 1.5
    # Unloaded the top oil still rises 60·(1/7.5)^0.8 ≈ 12 K (no-load losses): 50 + 12 > 60.
    assert continuous_load_factor(ONAN, 50.0, 60.0, 1.5) == 0.0


def test_the_forecast_load_is_the_most_the_model_can_carry_for_each_horizon() -> None:
    """Carrying period j's value keeps θh ≤ limit to the end of period j; 2 % more breaks it."""
    state = steady_state(ONAN, 0.6, 20.0)
    horizons = [1800.0 * j for j in range(1, 9)]
    values = permissible_load_factors(ONAN, state, 20.0, 98.0, horizons, 3.0)
    assert values == sorted(values, reverse=True)  # further ahead, less
    assert values[0] > values[-1] > continuous_load_factor(ONAN, 20.0, 98.0, 3.0)
    for horizon, k in zip(horizons, values, strict=True):
        for factor, within in ((1.0, True), (1.02, False)):
            s, peak = state, state.hot_spot
            for _ in range(int(horizon // 10)):
                s = step(ONAN, s, k * factor, 20.0, 10.0)
                peak = max(peak, s.hot_spot)
            assert (peak <= 98.0 + 0.05) is within, (horizon, factor, peak)


# -- configuration ------------------------------------------------------------------------------


def test_defaults_are_the_onan_distribution_transformer() -> None:
    settings = ThermalSettings.from_config({})
    p = settings.params
    assert (p.top_oil_rise, p.hot_spot_gradient, p.oil_exponent, p.winding_exponent, p.loss_ratio) == (
        60.0,
        23.0,
        0.8,
        1.6,
        6.5,
    )
    assert (p.k11, p.k21, p.k22, p.oil_time_constant, p.winding_time_constant) == (1.0, 1.0, 2.0, 10800.0, 240.0)
    assert settings.rated_current == pytest.approx(500e3 / (math.sqrt(3) * 400))
    assert settings.input_topics[0] == "sensor/data/gridhub_simulator_01/60/transformer/l1/current-mean"


def test_rating_in_amps_or_volt_amperes_and_the_gradient_from_h_and_gr() -> None:
    assert ThermalSettings.from_config({"rated_current": 1000}).rated_current == 1000.0
    by_va = ThermalSettings.from_config({"rated_power": 315e3, "rated_voltage": 433})
    assert by_va.rated_current == pytest.approx(315e3 / (math.sqrt(3) * 433))
    assert ThermalSettings.from_config({"winding_gradient": 20, "hot_spot_factor": 1.2}).params.hot_spot_gradient == 24


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"top_oil_rize": 60}, "unknown key(s) top_oil_rize"),
        ({"phases": "median"}, "phases: expected one of 'max', 'mean'"),
        ({"rated_current": 700, "rated_power": 5e5}, "not both"),
        ({"loss_ratio": "6.5"}, "loss_ratio: expected a number"),
        ({"max_step": 300}, "max_step: 300 s is more than half"),
        ({"current_topics": ["sensor/data/x/+/current"]}, "current_topics"),
        ({"transformer": "T 1"}, "transformer"),
        ({"k22": 10}, "must be faster than the oil term"),
    ],
)
def test_a_bad_container_config_is_refused_saying_which_key(config: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ThermalSettings.from_config(config)
    assert words in str(info.value)


# -- the engine: message time, validity, measured top oil ---------------------------------------

SETTINGS = ThermalSettings.from_config(
    {
        "current_topics": ["c/l1", "c/l2", "c/l3"],
        "ambient_topic": "a/out",
        "top_oil_topic": "t/oil",
        "rated_current": 700,
    }
)


def feed(
    engine: ThermalRating,
    t: int,
    currents: Iterable[float] | None = (350.0, 420.0, 385.0),
    ambient: float | None = 20.0,
    top_oil: float | None = None,
    valid: bool = True,
) -> list[Output]:
    outputs: list[Output] = []
    if ambient is not None:
        outputs += engine.on_input("a/out", ScalarObject(t, ambient, valid))
    if top_oil is not None:
        outputs += engine.on_input("t/oil", ScalarObject(t, top_oil, True))
    for phase, current in zip(("c/l1", "c/l2", "c/l3"), currents or (), strict=False):
        outputs += engine.on_input(phase, ScalarObject(t, current, valid))
    return outputs


def test_outputs_are_published_once_every_interval_stamped_with_input_time() -> None:
    engine = ThermalRating(SETTINGS)
    published: list[Output] = []
    for k in range(0, 1800, 10):  # 30 minutes: ambient every 10 s, currents every 60 s
        published += feed(engine, T0 + k, currents=(350.0, 420.0, 385.0) if k % 60 == 0 else None)
    stamps = sorted({o.obj.timestamp for o in published})
    assert stamps == [T0 + 60 * n for n in range(30)]
    first = scalars(o for o in published if o.obj.timestamp == T0)
    assert set(first) == {
        f"T1/{p}"
        for p in (
            "temperature/hot-spot",
            "temperature/top-oil",
            "ageing/rate",
            "ageing/loss-of-life",
            "load/factor",
            "rating/continuous",
            "rating/continuous-load-factor",
        )
    }
    assert all(o.obj.valid and o.obj.to_store for o in published)
    assert first["T1/load/factor"].value == pytest.approx(420 / 700, rel=1e-4)  # the most loaded phase
    # Constant inputs from a steady start: the temperatures stay put while life is used up.
    last = scalars(o for o in published if o.obj.timestamp == T0 + 1740)
    assert last["T1/temperature/hot-spot"].value == pytest.approx(first["T1/temperature/hot-spot"].value)
    rate = float(first["T1/ageing/rate"].value)
    assert last["T1/ageing/loss-of-life"].value == pytest.approx(rate * 1740 / 3600, rel=1e-3)


def test_the_mean_over_phases_can_be_chosen() -> None:
    engine = ThermalRating(replace(SETTINGS, phases=ThermalSettings.from_config({"phases": "mean"}).phases))
    out = scalars(feed(engine, T0))
    assert out["T1/load/factor"].value == pytest.approx((350 + 420 + 385) / 3 / 700, rel=1e-4)


def test_the_capacity_forecast_is_a_figure_12_series() -> None:
    engine = ThermalRating(SETTINGS)
    out = series(feed(engine, T0))
    capacity = out["T1/forecast/4h/capacity"]
    assert capacity.start_point == capacity.timestamp == T0
    assert capacity.interval == 1800.0 and len(capacity.value) == 8
    assert capacity.confidence is not None and len(capacity.confidence) == 8
    assert all(0.0 < c <= 1.0 for c in capacity.confidence)
    assert capacity.confidence[0] >= capacity.confidence[-1]  # less sure further ahead
    assert capacity.valid and capacity.to_store
    values = [float(v) for v in capacity.value]
    rating = float(scalars(feed(engine, T0 + 60))["T1/rating/continuous"].value)
    assert values == sorted(values, reverse=True) and values[-1] > rating
    headroom = out["T1/forecast/4h/headroom"]
    assert [float(v) for v in headroom.value] == pytest.approx([v - 420.0 for v in values], abs=0.01)
    assert SeriesObject.from_json(capacity.to_json()) == capacity  # a valid Series Object (9.2)


def test_stale_currents_still_publish_but_invalid_with_the_latest_input_timestamp() -> None:
    engine = ThermalRating(SETTINGS)
    feed(engine, T0)
    published: list[Output] = []
    for k in range(10, 600, 10):  # the current sensor has gone quiet; the ambient keeps coming
        published += feed(engine, T0 + k, currents=None)
    by_time: dict[int, bool] = {}
    for o in published:
        by_time.setdefault(o.obj.timestamp, o.obj.valid)
        assert o.obj.valid is by_time[o.obj.timestamp]
    # Due every 60 s; valid while the last current is within 3 intervals (180 s), then not.
    assert sorted(by_time) == [T0 + 60 * n for n in range(1, 10)]
    assert [by_time[T0 + 60 * n] for n in range(1, 10)] == [True] * 3 + [False] * 6
    invalid = series(o for o in published if o.obj.timestamp == T0 + 540)["T1/forecast/4h/capacity"]
    assert invalid.confidence == [0.0] * 8


@pytest.mark.parametrize(
    "bad",
    [
        {"currents": (350.0, -5.0, 385.0)},
        {"ambient": 75.0},
        {"ambient": -45.0},
        {"valid": False},
    ],
)
def test_implausible_or_invalid_inputs_give_invalid_outputs(bad: dict[str, Any]) -> None:
    engine = ThermalRating(SETTINGS)
    assert all(o.obj.valid for o in feed(engine, T0))
    outputs = feed(engine, T0 + 60, **bad)
    assert len(outputs) == 9 and not any(o.obj.valid for o in outputs)
    assert {o.obj.timestamp for o in outputs} == {T0 + 60}
    # The model carries on with the last good load and ambient; good inputs make it valid again.
    assert all(o.obj.valid for o in feed(engine, T0 + 120))


def test_nothing_valid_is_published_before_the_inputs_are_complete() -> None:
    engine = ThermalRating(SETTINGS)
    assert feed(engine, T0, currents=(300.0,)) == []  # two phases still missing: nothing due yet
    outputs = feed(engine, T0 + 10, currents=None)  # time moves on: the due instant is published, invalid
    assert len(outputs) == 9 and {o.obj.timestamp for o in outputs} == {T0}
    assert not any(o.obj.valid for o in outputs)


def test_measured_top_oil_replaces_the_modelled_top_oil_state() -> None:
    engine = ThermalRating(SETTINGS)
    modelled = scalars(feed(engine, T0))
    measured = scalars(feed(engine, T0 + 60, top_oil=75.0))
    gradient = float(modelled["T1/temperature/hot-spot"].value) - float(modelled["T1/temperature/top-oil"].value)
    assert measured["T1/temperature/top-oil"].value == 75.0
    assert measured["T1/temperature/hot-spot"].value == pytest.approx(75.0 + gradient, abs=0.01)
    # Without further measurements the model carries on from the measured state, cooling to its own value.
    later = scalars(feed(engine, T0 + 120))
    assert 75.0 > float(later["T1/temperature/top-oil"].value) > float(modelled["T1/temperature/top-oil"].value)


def test_a_replay_gives_the_same_outputs_and_silence_gives_invalid_ones() -> None:
    def run() -> list[dict[str, Any]]:
        engine = ThermalRating(SETTINGS)
        out: list[Output] = []
        for n in range(20):
            out += feed(engine, T0 + 60 * n, currents=(300.0 + 20 * n, 320.0, 310.0), ambient=15.0 + n / 4)
        out += engine.silent_outputs()
        return [{"topic": o.sub_topic, **o.obj.to_json()} for o in out]

    first, second = run(), run()
    assert first == second
    silent = first[-9:]
    assert {m["Timestamp"] for m in silent} == {T0 + 60 * 19} and not any(m["Valid"] for m in silent)


def test_metadata_names_units_for_every_output() -> None:
    meta = dict(ThermalRating(SETTINGS).metadata())
    assert meta["T1/temperature/hot-spot"].units == "°C"
    assert meta["T1/forecast/4h/capacity"].units == "A"
    assert meta["T1/ageing/loss-of-life"].units == "h"
    assert len(meta) == 9


def test_loss_of_life_survives_a_restart_and_a_bad_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "thermal-state.json"
    assert load_loss_of_life(path, "T1") is None
    save_loss_of_life(path, "T1", 12.5, T0)
    save_loss_of_life(path, "T2", 3.0, T0)
    assert load_loss_of_life(path, "T1") == 12.5 and load_loss_of_life(path, "T2") == 3.0
    engine = ThermalRating(SETTINGS, loss_of_life=12.5)
    assert scalars(feed(engine, T0))["T1/ageing/loss-of-life"].value == 12.5
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_loss_of_life(path, "T1")


# -- live: the app on the edge runtime ------------------------------------------------------------

SENSOR = "sensor/data/test_sensor_01"


def app_state(data_dir: Path, iid: str) -> str:
    try:
        return str(read_status(data_dir)["apps"][iid]["state"])
    except (FileNotFoundError, KeyError, ValueError):
        return ""


def stored_rows(database: Path, iid: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            rows = conn.execute(f'SELECT SubTopic, Data FROM "{iid}" ORDER BY ID').fetchall()
    except sqlite3.OperationalError:
        return []
    return [(sub, json.loads(data)) for sub, data in rows]


def test_live_on_the_edge_runtime_outputs_arrive_and_are_stored(tmp_path: Path) -> None:
    config = {
        "current_topics": [f"{SENSOR}/60/transformer/l{n}/current-mean" for n in (1, 2, 3)],
        "ambient_topic": f"{SENSOR}/10/ambient/temperature-outdoor",
        "top_oil_topic": f"{SENSOR}/10/transformer/temperature-top-oil",
        "transformer": "Tx1",
        "rated_current": 700,
    }
    toml_config = "".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items())
    (tmp_path / "edge.toml").write_text(
        'version = 1\ndata_dir = "edge"\n'
        f'[marketplace]\nmode = "embedded"\nport = {free_port()}\n'
        "[manager]\nstatus_interval = 0.5\nshutdown_grace = 2\n"
        '[[app]]\nvendor = "test"\nname = "sensor"\nversion = "1"\ninstance = "01"\nattached = true\npassword = "pw"\n'
        '[[app]]\nvendor = "gridhub"\nname = "thermal"\nversion = "1.0.0"\ninstance = "01"\n'
        f"command = {json.dumps([sys.executable, '-m', 'gridhub.edge.apps.thermal'])}\n"
        f"[app.config]\n{toml_config}"
    )
    runtime = EdgeRuntime(load_config(tmp_path / "edge.toml"))
    received: list[tuple[str, dict[str, Any], bool]] = []
    lock = threading.Lock()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with lock:
            received.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def topics() -> set[str]:
        with lock:
            return {topic for topic, _, _ in received}

    subscribed = threading.Event()

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe("algorithm/data/gridhub_thermal_01/#", qos=1)

    def on_subscribe(client: paho.Client, userdata: object, mid: int, codes: object, props: object) -> None:
        subscribed.set()

    runtime.start()
    sensor = paho.Client(CallbackAPIVersion.VERSION2, client_id="test_sensor_1")
    sensor.username_pw_set("test_sensor_1", "pw")
    sensor.on_message, sensor.on_connect, sensor.on_subscribe = on_message, on_connect, on_subscribe
    try:
        data_dir = runtime.config.data_dir
        wait_for(lambda: app_state(data_dir, "gridhub_thermal_01") == "running", "the thermal app to run")
        assert runtime.marketplace is not None
        sensor.connect("127.0.0.1", runtime.config.marketplace.port)
        sensor.loop_start()
        assert subscribed.wait(10), "the sensor could not subscribe to the app's outputs"
        out = "algorithm/data/gridhub_thermal_01/Tx1"
        n = 0
        deadline = time.monotonic() + 30
        while f"{out}/forecast/4h/headroom" not in topics() or n < 4:
            assert time.monotonic() < deadline, "no outputs from the thermal app"
            t = T0 + 60 * n
            for path, value in (
                ("10/ambient/temperature-outdoor", 18.0),
                ("10/transformer/temperature-top-oil", 52.0),
                ("60/transformer/l1/current-mean", 410.0),
                ("60/transformer/l2/current-mean", 380.0),
                ("60/transformer/l3/current-mean", 395.0),
            ):
                sensor.publish(f"{SENSOR}/{path}", json.dumps({"Timestamp": t, "Value": value, "Valid": True}), qos=1)
            n += 1
            time.sleep(0.2)
        # A new subscription gets the metadata the app published at start-up: it is retained (8.3.2).
        sensor.subscribe(f"{out}/+/+/meta", qos=1)

        def retained_meta() -> dict[str, dict[str, Any]]:
            with lock:
                return {t: p for t, p, retained in received if retained and t.endswith("/meta")}

        wait_for(lambda: f"{out}/temperature/hot-spot/meta" in retained_meta(), "retained metadata")
        assert retained_meta()[f"{out}/temperature/hot-spot/meta"]["Units"] == "°C"
        with lock:
            messages = list(received)
        hot_spots = [p for t, p, _ in messages if t == f"{out}/temperature/hot-spot"]
        assert hot_spots and all(p["Valid"] and p["ToStore"] for p in hot_spots)
        assert {p["Timestamp"] for p in hot_spots} <= {T0 + 60 * k for k in range(n)}  # message time, not wall time
        top_oil = [p for t, p, _ in messages if t == f"{out}/temperature/top-oil"]
        assert top_oil[-1]["Value"] == 52.0  # the measured top oil
        forecast = [p for t, p, _ in messages if t == f"{out}/forecast/4h/capacity"][-1]
        assert len(forecast["Value"]) == 8 and forecast["Interval"] == 1800.0
        database = runtime.config.storage.database

        def stored_subtopics() -> set[str]:
            return {sub for sub, _ in stored_rows(database, "gridhub_thermal_01")}

        wait_for(
            lambda: {"Tx1/temperature/hot-spot", "Tx1/forecast/4h/capacity"} <= stored_subtopics(),
            "the outputs in the storage database",
        )
        stored = dict(stored_rows(database, "gridhub_thermal_01"))
        assert stored["Tx1/forecast/4h/capacity"]["StartPoint"] == stored["Tx1/forecast/4h/capacity"]["Timestamp"]
    finally:
        sensor.loop_stop()
        sensor.disconnect()
        runtime.stop()
    assert app_state(runtime.config.data_dir, "gridhub_thermal_01") == "stopped"
    saved = json.loads((app_data_dir(runtime.config.data_dir, "gridhub_thermal_01") / "thermal-state.json").read_text())
    assert saved["LossOfLife"]["Tx1"] > 0  # kept for the next start (4.7)
