"""The substation simulator under the replay harness: the real app module, no inputs.

The simulator is a sensor app: it needs no inputs, it publishes on its own (sped-up) clock.
``replay()`` with no inputs records everything the app publishes from its start until the
app has been quiet for 100 ms; a simulator running faster than real time is never quiet, so
the harness's ``timeout`` bounds the recording instead (it waits at most that long for the
quiet period before the first input and again after the last). How many ticks fit in the
window depends on the machine; which values they carry does not (simulated time, a seeded
model), so the assertions compare whole prefixes, never counts against the wall clock.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gridhub.edge.apps.simulator import PERIOD, TICK, SimulatorConfig, SubstationModel, SubstationSimulator
from gridhub.formats.lvcap import MetadataObject, ScalarObject
from gridhub.sdk.replay import AppIdentity, RecordedMessage, replay

IDENTITY = AppIdentity(vendor="gridhub", name="simulator", version="1.0.0", instance="01")
PREFIX = f"sensor/data/{IDENTITY.iid}/"
START = 1_705_276_800  # 2024-01-15T00:00:00Z, a Monday in winter
CONFIG: dict[str, Any] = {
    "start": "2024-01-15T00:00:00Z",
    "seed": 42,
    "clock_factor": 300,  # 5 simulated minutes per second: ~390 Scalars/s with one feeder
    "feeders": [{"share": 0.35, "neutral": True}],
}
WINDOW = 2.5
"""The harness's timeout: the longest wait for a quiet period (twice per replay, see above)."""
MIN_MINUTES = 2
"""Electrical (60 s) sets every recording must hold; at 300x the window holds ~20-25."""

# The documented tree (docs/simulator.md): <interval>/<asset>/<phase>/<parameter> below sensor/data/<IID>.
ELECTRICAL = r"current-(min|max|mean)|power-(factor|active|reactive)-mean|energy-(active|reactive)"
TREE = re.compile(
    rf"60/busbar/l[123]/voltage-(min|max|mean)"
    rf"|60/(transformer|feeder1)/l[123]/({ELECTRICAL})"
    rf"|60/feeder1/n/current-(min|max|mean)"
    rf"|10/ambient/temperature-(outdoor|indoor)"
    rf"|10/transformer/temperature-top-oil"
)


def run_replay() -> list[RecordedMessage]:
    return replay(SubstationSimulator, [], CONFIG, identity=IDENTITY, timeout=WINDOW)


def readings(records: Sequence[RecordedMessage]) -> list[tuple[str, dict[str, Any]]]:
    """The Scalar readings (not the metadata), as (sub-topic, payload), in the order published."""
    out = []
    for record in records:
        if not record.retain:
            assert record.payload is not None, record
            out.append((record.topic.removeprefix(PREFIX), record.payload))
    return out


def model_readings(count: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` readings of the pure model with the same configuration."""
    model = SubstationModel(SimulatorConfig.from_container_config(CONFIG))
    out: list[tuple[str, dict[str, Any]]] = []
    while len(out) < count:
        out += [(r.sub_topic, r.obj.to_json()) for r in model.step_tick()]
    return out[:count]


def test_a_fast_replay_records_scalars_on_the_documented_tree_with_retained_metadata_and_is_deterministic() -> None:
    # Two replays at once, each with its own embedded marketplace and app process.
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _: run_replay(), range(2))

    points = {p.sub_topic: p for p in SubstationModel(SimulatorConfig.from_container_config(CONFIG)).points}
    for records in (first, second):
        assert all(r.kind == "data" and r.qos == 1 and not r.denied for r in records), "only sensor data"
        assert all(r.after_input == 0 for r in records), "no inputs were fed"
        # Retained metadata first: one Data Series Metadata Object (9.4) per point, before any reading.
        meta = [r for r in records if r.retain]
        assert records[: len(meta)] == meta
        assert {r.topic for r in meta} == {f"{PREFIX}{sub}/meta" for sub in points}
        for record in meta:
            assert record.payload is not None
            sub = record.topic.removeprefix(PREFIX).removesuffix("/meta")
            assert MetadataObject.from_json(record.payload, where=record.topic) == points[sub].metadata()

        data = readings(records)
        minutes = [p for sub, p in data if sub == "60/busbar/l1/voltage-mean"]
        assert len(minutes) >= MIN_MINUTES, f"only {len(minutes)} simulated minutes in the window"
        # Every reading is a valid Scalar on the documented tree, and every point is published.
        for sub, payload in data:
            assert TREE.fullmatch(sub), sub
            scalar = ScalarObject.from_json(payload, where=sub)
            assert scalar.valid and isinstance(scalar.value, float)
        assert {sub for sub, _ in data} == set(points)
        # Simulated time, not the wall clock: 10 s readings every 10 s from the start, 60 s sets at
        # the end of each minute, each series strictly increasing.
        stamps: dict[str, list[int]] = {}
        for sub, payload in data:
            stamps.setdefault(sub, []).append(payload["Timestamp"])
        top_oil = stamps["10/transformer/temperature-top-oil"]
        assert top_oil == [START + TICK * n for n in range(1, len(top_oil) + 1)]
        assert stamps["60/busbar/l1/voltage-mean"] == [START + PERIOD * n for n in range(1, len(minutes) + 1)]
        assert all(b > a for series in stamps.values() for a, b in itertools.pairwise(series))

    # Deterministic for the seed: the same readings in the same order; only how many fitted in
    # the window differs. And they are exactly what the pure model gives for that configuration.
    a, b = readings(first), readings(second)
    shorter = min(len(a), len(b))
    assert a[:shorter] == b[:shorter]
    assert a == model_readings(len(a))
    assert [r.payload for r in first if r.retain] == [r.payload for r in second if r.retain]
