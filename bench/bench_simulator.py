"""Simulated substation-days per second of the simulator's pure model, against serialising its output.

Measured: ``SubstationModel`` with the default configuration (one monitored feeder with its
neutral, indoor substation: 78 readings per simulated minute) stepped through a simulated week
(``step_minute`` x 10,080), no MQTT. Rate = 7 / elapsed (substation-days/s).

Reference, in the same run, round-robin with the model: the per-reading work the app does with
each of those readings before paho gets it, for the same number of readings: build the Scalar
Object, check its topic (``sensor_data_topic``) and encode the payload (``encode_json(obj.to_json())``),
i.e. ``SubstationSimulator.tick`` -> ``App.publish_object`` without the MQTT client. It answers
"is the physics the expensive part of publishing a simulated substation?". A second, lower
reference is the interpreter's floor for the same record count: one NamedTuple per record.
No target is set by the issue: the benchmark reports the figures and ratios, and exits 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from bench.common import Options, Summary, console, header, progress
from gridhub.edge.apps.simulator import SimulatorConfig, SubstationModel
from gridhub.formats.lvcap import ScalarObject, encode_json, sensor_data_topic

START = "2024-01-15T00:00:00Z"  # a winter Monday
IID = "gridhub_simulator_01"
SUB_TOPIC = "60/transformer/l1/current-mean"
MARKETPLACE_QOS1 = 3_000.0  # msg/s, amqtt QoS 1 pub -> sub (../shared/reference/limits.md, section 2)


class Record(NamedTuple):
    sub_topic: str
    timestamp: int
    value: float
    valid: bool


def model_run(days: int) -> tuple[float, int]:
    """Step a fresh default model through ``days`` simulated days; return (seconds, readings)."""
    model = SubstationModel(SimulatorConfig.from_container_config({"start": START}))
    readings = 0
    started = time.perf_counter()
    for _ in range(days * 1440):
        readings += len(model.step_minute())
    return time.perf_counter() - started, readings


def serialise_run(count: int) -> float:
    """Build, check and encode ``count`` Scalars as the SDK does before publishing; return seconds."""
    base = 1_705_276_800
    started = time.perf_counter()
    for i in range(count):
        obj = ScalarObject(timestamp=base + 10 * (i // 78), value=240.0 + (i % 997) * 0.01, valid=True)
        sensor_data_topic(IID, SUB_TOPIC)
        encode_json(obj.to_json())
    return time.perf_counter() - started


def floor_run(count: int) -> float:
    """One NamedTuple per record: what any pure-Python producer of ``count`` records pays at least."""
    base = 1_705_276_800
    started = time.perf_counter()
    for i in range(count):
        Record(SUB_TOPIC, base + 10 * (i // 78), 240.0 + (i % 997) * 0.01, True)
    return time.perf_counter() - started


def run(options: Options) -> int:
    """Time the model over a simulated week and the references for the same record count."""
    days = 1 if options.quick else 7
    runs = options.runs or (1 if options.quick else 3)
    header(
        "bench_simulator",
        f"SubstationModel, default config (1 feeder), {days} simulated day(s) per run, vs building + encoding "
        f"the same number of Scalars; {runs} runs per case, round-robin.",
    )
    model_times: list[float] = []
    serialise_times: list[float] = []
    floor_times: list[float] = []
    readings = 0
    with progress() as bar:
        task = bar.add_task("model, serialise, floor", total=3 * runs)
        for _ in range(runs):
            elapsed, readings = model_run(days)
            model_times.append(elapsed)
            bar.advance(task)
            cases: list[tuple[Callable[[int], float], list[float]]] = [
                (serialise_run, serialise_times),
                (floor_run, floor_times),
            ]
            for case, times in cases:
                times.append(case(readings))
                bar.advance(task)
    per_day = readings / days
    model = Summary(tuple(days / t for t in model_times))
    serialise = Summary(tuple(days / t for t in serialise_times))
    floor = Summary(tuple(days / t for t in floor_times))
    console.print(f"  readings per simulated day        : {per_day:,.0f} ({readings:,} per run)")
    console.print(f"  model (SubstationModel)           : {model.fmt(2, 'substation-days/s')}")
    per_second = Summary(tuple(readings / t for t in model_times))
    console.print(f"                                      {per_second.fmt(0, 'readings/s')}")
    console.print(f"  reference: build+check+encode     : {serialise.fmt(2, 'substation-days/s')}")
    console.print(
        f"                                      "
        f"{Summary(tuple(readings / t for t in serialise_times)).fmt(0, 'Scalars/s')}"
    )
    console.print(f"  floor: one NamedTuple per record  : {floor.fmt(2, 'substation-days/s')}")
    ratios = Summary(tuple(s / m for s, m in zip(serialise_times, model_times, strict=True)))
    console.print(f"  serialising / model time          : {ratios.fmt(2)} (x: the model is that many times faster)")
    console.print(
        f"  model + serialising               : {1 / (1 / model.median + 1 / serialise.median):.2f} substation-days/s "
        f"(medians), {86_400 / (1 / model.median + 1 / serialise.median):,.0f}x real time"
    )
    console.print(
        f"  marketplace (amqtt QoS 1, ~{MARKETPLACE_QOS1:,.0f} msg/s, limits.md) carries "
        f"{MARKETPLACE_QOS1 / per_day:.3f} substation-days/s = {MARKETPLACE_QOS1 / per_day * 86_400:,.0f}x real time"
    )
    return 0


if __name__ == "__main__":
    import sys

    from bench.__main__ import main

    sys.exit(main(["simulator", *sys.argv[1:]]))
