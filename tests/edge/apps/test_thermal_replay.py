"""The thermal rating app under the replay harness: a recorded day's inputs in, its outputs checked.

The app runs as the Container Manager would run it (``python -m``-style, its own process, an
embedded marketplace with its ACL account) and is fed a JSONL recording written here: per-phase
currents, outdoor ambient and measured top oil every 10 minutes over 8 simulated hours, with a
step in load after 3 hours and one reading that is not Valid. Section 4.5: an app that uses its
inputs' timestamps gives the same outputs for the same inputs, so a second replay must give the
same recording.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gridhub.edge.apps.thermal import Output, ThermalRating, ThermalRatingApp, ThermalSettings
from gridhub.formats.lvcap import ScalarObject
from gridhub.sdk.replay import AppIdentity, RecordedMessage, read_inputs, replay, write_jsonl

IDENTITY = AppIdentity(vendor="gridhub", name="thermal", version="1.0.0", instance="01")
PREFIX = f"algorithm/data/{IDENTITY.iid}/T1/"
METER = "sensor/data/test_meter_01"
CURRENTS = [f"{METER}/60/transformer/l{phase}/current-mean" for phase in (1, 2, 3)]
AMBIENT = f"{METER}/10/ambient/temperature-outdoor"
TOP_OIL = f"{METER}/10/transformer/temperature-top-oil"
CONFIG: dict[str, Any] = {
    "current_topics": CURRENTS,
    "ambient_topic": AMBIENT,
    "top_oil_topic": TOP_OIL,
    "interval": 600,  # one output set per 10 minutes of message time, as the inputs come
}
T0 = 1_717_200_000  # 2024-06-01T00:00:00Z
STEP = 600
STEPS = 48  # 8 hours
LOAD_STEP = 18  # the load steps up after 3 hours
INVALID = 40  # at this step phase l2 reports Valid false
RATED = 500e3 / (math.sqrt(3) * 400.0)  # 721.7 A, the default 500 kVA 11 kV/400 V transformer
SCALARS = (
    "temperature/hot-spot", "temperature/top-oil", "ageing/rate", "ageing/loss-of-life", "load/factor",
    "rating/continuous", "rating/continuous-load-factor",
)  # fmt: skip
SERIES = ("forecast/4h/capacity", "forecast/4h/headroom")


def load_factor(n: int) -> float:
    return 0.55 if n < LOAD_STEP else 1.0


def measured_top_oil(n: int, ambient: float) -> float:
    """A plausible top-oil sensor: first order (τo = 180 min) towards the IEC ultimate rise (R 6.5, x 0.8)."""

    def ultimate(k: float) -> float:
        return ambient + float(((1 + 6.5 * k * k) / 7.5) ** 0.8) * 60.0

    before = ultimate(load_factor(0))
    if n < LOAD_STEP:
        return round(before, 2)
    elapsed = (n - LOAD_STEP) * STEP
    after = ultimate(load_factor(LOAD_STEP))
    return round(after + (before - after) * math.exp(-elapsed / (180 * 60)), 2)


def write_inputs(path: Path) -> Path:
    """Write the recording: ambient, top oil, then the three phases, at each 10-minute instant."""
    lines = []
    ambient = 18.0
    for n in range(STEPS):
        t = T0 + n * STEP
        current = load_factor(n) * RATED
        lines.append({"topic": AMBIENT, "payload": {"Timestamp": t, "Value": ambient, "Valid": True}})
        lines.append(
            {"topic": TOP_OIL, "payload": {"Timestamp": t, "Value": measured_top_oil(n, ambient), "Valid": True}}
        )
        for phase, (topic, share) in enumerate(zip(CURRENTS, (1.0, 0.94, 0.9), strict=True)):
            valid = not (n == INVALID and phase == 1)
            payload = {"Timestamp": t, "Value": round(current * share, 1), "Valid": valid}
            lines.append({"topic": topic, "payload": payload})
    header = "# 8 h of a 500 kVA transformer, load step at 03:00\n"
    path.write_text(header + "".join(json.dumps(line) + "\n" for line in lines))
    return path


def by_time(records: Sequence[RecordedMessage]) -> dict[int, dict[str, dict[str, Any]]]:
    """Data outputs (not metadata) grouped by Timestamp, then by sub-topic below the transformer."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record.retain:
            continue
        assert record.payload is not None and record.topic.startswith(PREFIX), record
        out.setdefault(record.payload["Timestamp"], {})[record.topic.removeprefix(PREFIX)] = record.payload
    return out


def engine_outputs(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """What the pure model (ThermalRating) gives for the same inputs, without any MQTT."""
    engine = ThermalRating(ThermalSettings.from_config(CONFIG))
    outputs: list[Output] = []
    for message in read_inputs(path):
        outputs += engine.on_input(message.topic, ScalarObject.from_json(json.loads(message.payload)))
    return [(f"algorithm/data/{IDENTITY.iid}/{o.sub_topic}", o.obj.to_json()) for o in outputs]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RecordedMessage], list[RecordedMessage]]:
    path = write_inputs(tmp_path_factory.mktemp("thermal") / "inputs.jsonl")
    first = replay(ThermalRatingApp, path, CONFIG, identity=IDENTITY)
    second = replay(ThermalRatingApp, path, CONFIG, identity=IDENTITY)
    return path, first, second


def test_every_instant_gives_the_full_output_set_on_the_right_topics_in_time_order(
    recordings: tuple[Path, list[RecordedMessage], list[RecordedMessage]],
) -> None:
    _, records, _ = recordings
    assert all(r.kind == "data" and r.qos == 1 and not r.denied for r in records), "no errors, no other topics"
    meta = [r for r in records if r.retain]
    assert records[: len(meta)] == meta, "metadata is published at start, before any input"
    assert {r.topic for r in meta} == {f"{PREFIX}{sub}/meta" for sub in SCALARS + SERIES}
    outputs = by_time(records)
    assert sorted(outputs) == [T0 + n * STEP for n in range(STEPS)]
    for stamp, subs in outputs.items():
        assert set(subs) == set(SCALARS + SERIES), stamp
        assert all(p["ToStore"] is True for p in subs.values())
    # Each output set follows the input that completed it (the third phase), one set per instant.
    data = [r for r in records if not r.retain]
    assert [r.after_input for r in data] == [5 * (n + 1) for n in range(STEPS) for _ in SCALARS + SERIES]
    for sub in SCALARS + SERIES:
        stamps = [r.payload["Timestamp"] for r in data if r.payload and r.topic == PREFIX + sub]
        assert stamps == sorted(set(stamps)), f"{sub}: timestamps not strictly increasing"
    capacity = outputs[T0][SERIES[0]]
    assert capacity["StartPoint"] == T0 and capacity["Interval"] == 1800 and len(capacity["Value"]) == 8


def test_outputs_are_valid_except_where_an_input_was_not_and_follow_the_load_step(
    recordings: tuple[Path, list[RecordedMessage], list[RecordedMessage]],
) -> None:
    _, records, _ = recordings
    outputs = by_time(records)
    invalid = T0 + INVALID * STEP
    for stamp, subs in outputs.items():
        assert {p["Valid"] for p in subs.values()} == {stamp != invalid}, stamp

    def value(n: int, sub: str) -> float:
        return float(outputs[T0 + n * STEP][sub]["Value"])

    assert value(0, "load/factor") == pytest.approx(0.55, abs=1e-3)  # the most loaded phase, l1
    assert value(LOAD_STEP, "load/factor") == pytest.approx(1.0, abs=1e-3)
    # The measured top oil replaces the modelled one at each instant.
    for n in (0, LOAD_STEP, STEPS - 1):
        assert value(n, "temperature/top-oil") == measured_top_oil(n, 18.0)
    # Before the step, steady: the hot spot stays put. The model integrates from one input time to
    # the next with the load held, so the step shows from the next instant: at once by the winding
    # gradient (it follows the load within minutes), then further as the top oil warms over hours.
    before = value(LOAD_STEP - 1, "temperature/hot-spot")
    assert value(1, "temperature/hot-spot") == pytest.approx(before, abs=0.05)
    assert value(LOAD_STEP, "temperature/hot-spot") == pytest.approx(before, abs=0.05)
    just_after = value(LOAD_STEP + 1, "temperature/hot-spot")
    assert just_after > before + 5
    assert value(STEPS - 1, "temperature/hot-spot") > value(LOAD_STEP + 2, "temperature/hot-spot") > just_after
    assert value(STEPS - 1, "ageing/rate") > value(LOAD_STEP - 1, "ageing/rate")
    life = [value(n, "ageing/loss-of-life") for n in range(STEPS)]
    assert life == sorted(life) and life[-1] > life[0]
    # More load, less headroom in the 4-hour forecast.
    headroom = outputs[T0 + (LOAD_STEP - 1) * STEP][SERIES[1]]["Value"][0]
    assert outputs[T0 + (STEPS - 1) * STEP][SERIES[1]]["Value"][0] < headroom


def test_the_replay_is_reproducible_and_gives_what_the_model_gives(
    recordings: tuple[Path, list[RecordedMessage], list[RecordedMessage]],
) -> None:
    path, first, second = recordings
    files = []
    for records in (first, second):
        out = io.StringIO()
        write_jsonl(records, out)
        files.append(out.getvalue())
    assert files[0] == files[1], "the same inputs must give the same output file (4.5)"
    # The app on the marketplace publishes exactly what its pure model computes from those inputs.
    assert [(r.topic, r.payload) for r in first if not r.retain] == engine_outputs(path)
