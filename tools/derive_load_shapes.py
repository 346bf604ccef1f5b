"""Derive the substation simulator's load, spike and weather shapes from real data.

Run by hand from the repository root when the reference files change::

    .venv/bin/python tools/derive_load_shapes.py            # writes src/gridhub/edge/apps/load_shapes.py
    .venv/bin/python tools/derive_load_shapes.py --check    # exit 1 when the committed file differs

Inputs (read in place, never copied; see ../shared/reference/lvdata/SOURCES.md):

- WPD Data Challenge 1, Mousehole CB51: half-hourly mean real power (MW) and the largest and
  smallest 1-minute real power inside each half hour;
- NASA MERRA-2 hourly temperature (°C) and solar irradiance (W/m²) near the same site.

Method (all timestamps taken as UTC, as in the files; the label is the start of the period):

- LOAD_SHAPE[month][day type][half hour]: mean MW of every half hour with that calendar month,
  day type (0 = Monday-Friday, 1 = Saturday-Sunday) and half hour of the day, divided by the
  largest of these 1152 means, so the peak of the table is exactly 1.
- LOAD_DAY_SIGMA and LOAD_DAY_PHI: standard deviation, and lag-1 autocorrelation between
  consecutive days, of each whole day's mean load divided by the mean of its month/day-type
  row of LOAD_SHAPE (before normalising), minus 1: the day-to-day wander of demand.
- MINUTE_SIGMA[half hour]: median over the half hours with 1-minute data of
  (max - min) / (4.09 * mean). For 30 independent normal samples the expected range is 4.09
  standard deviations, so this is the relative standard deviation of the 1-minute load about its
  half-hour mean. Half hours whose max equals their min carry no 1-minute data and are skipped.
- SPIKE_UP / SPIKE_DOWN: the quantiles (SPIKE_QUANTILES) of max/mean - 1 and 1 - min/mean over
  the same half hours: the size of the largest upward and downward 1-minute excursion in a half
  hour, sampled by the simulator once per half hour on average.
- AMBIENT[month][hour]: mean MERRA-2 temperature by calendar month and hour of the day (°C).
- AMBIENT_DAY_SIGMA[month] and AMBIENT_DAY_PHI: standard deviation by month, and lag-1
  autocorrelation between consecutive days, of the daily mean of (temperature - AMBIENT): the
  weather's day-to-day wander about the climatology, modelled as an AR(1) process per day.
- IRRADIANCE[month][hour]: mean MERRA-2 solar irradiance by month and hour (W/m²), for PV.

Only the standard library is used (csv, statistics), so the numbers are reproducible anywhere.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import logging
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

log = logging.getLogger("derive_load_shapes")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference"
DEFAULT_OUTPUT = ROOT / "src" / "gridhub" / "edge" / "apps" / "load_shapes.py"

WPD = "lvdata/wpd-data-challenge-1"
OBSERVATION = f"{WPD}/MW_Mousehole_CB51_MW_observation_variable_half_hourly_real_power_MW.csv"
TARGET = f"{WPD}/MW_Mousehole_CB51_MW_target_variable_half_hourly_max_min_real_power_MW.csv"
WEATHER = f"{WPD}/df_mousehole_1_hourly.csv"

# sha256 of each input as recorded in lvdata/SOURCES.md: the derivation refuses other files.
SHA256 = {
    OBSERVATION: "50b132df8a268a79660a88a90189825eafdce3478d7e27ec12ad7511a09adaf7",
    TARGET: "7613a085caf341878dcc615d25b8f83817034fc970b7eb381e55e4639f45ff2c",
    WEATHER: "39c2a90a1c4ba6778bce0bd61ce3aadb0532c79bcb9333205673fbd230e0d1a6",
}

SPIKE_QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
RANGE_OF_30_NORMALS = 4.09  # expected range of 30 standard normal samples, in standard deviations
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PER_LINE = 12  # numbers per line of the generated module (ruff line length)


class DerivationError(ValueError):
    """An input file is missing, changed or malformed; the message says which and where."""


def _path(reference: Path, name: str) -> Path:
    path = reference / name
    if not path.is_file():
        raise DerivationError(f"{path}: input file not found (see lvdata/SOURCES.md)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[name]:
        raise DerivationError(f"{path}: sha256 {digest} differs from {SHA256[name]} recorded in SOURCES.md")
    return path


def _rows(path: Path, columns: Sequence[str]) -> list[tuple[datetime, list[float]]]:
    rows: list[tuple[datetime, list[float]]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        try:
            indexes = [header.index(c) for c in columns]
        except ValueError as exc:
            raise DerivationError(f"{path}: header {header} lacks a column of {list(columns)}") from exc
        for number, row in enumerate(reader, start=2):
            try:
                when = datetime.strptime(row[0], TIME_FORMAT)
                rows.append((when, [float(row[i]) for i in indexes]))
            except (ValueError, IndexError) as exc:
                raise DerivationError(f"{path} line {number}: {exc}") from exc
    return rows


def _half_hour(when: datetime) -> int:
    return when.hour * 2 + when.minute // 30


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (q from 0 to 1)."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def derive(reference: Path) -> tuple[dict[str, object], dict[str, int]]:
    """Compute every table from the reference folder (the parent of lvdata/), and the row counts."""
    observation = _rows(_path(reference, OBSERVATION), ["value"])
    target = _rows(_path(reference, TARGET), ["value_max", "value_min"])
    weather = _rows(_path(reference, WEATHER), ["temperature", "solar_irradiance"])

    sums: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    mean_at: dict[datetime, float] = {}
    for when, (mw,) in observation:
        sums[(when.month - 1, 1 if when.weekday() >= 5 else 0, _half_hour(when))].append(mw)
        mean_at[when] = mw
    means = {key: statistics.fmean(values) for key, values in sums.items()}
    if len(means) != 12 * 2 * 48:
        raise DerivationError(f"{OBSERVATION}: {len(means)} of 1152 month/day-type/half-hour cells have data")
    peak = max(means.values())
    shape = [[[round(means[(m, d, h)] / peak, 4) for h in range(48)] for d in range(2)] for m in range(12)]

    # Day-to-day wander of the load: daily mean over the mean of its month/day-type cells.
    day_loads: dict[datetime, list[float]] = defaultdict(list)
    for when, (mw,) in observation:
        day_loads[when.replace(hour=0, minute=0)].append(mw)
    cell_mean = {(m, d): statistics.fmean(means[(m, d, h)] for h in range(48)) for m in range(12) for d in range(2)}
    load_days = sorted(day for day, values in day_loads.items() if len(values) == 48)
    load_ratio = {
        day: statistics.fmean(day_loads[day]) / cell_mean[(day.month - 1, 1 if day.weekday() >= 5 else 0)] - 1.0
        for day in load_days
    }
    load_day_sigma = round(statistics.pstdev(load_ratio.values()), 4)
    load_pairs = [(load_ratio[a], load_ratio[b]) for a, b in itertools.pairwise(load_days) if (b - a).days == 1]
    load_day_phi = round(statistics.correlation([a for a, _ in load_pairs], [b for _, b in load_pairs]), 3)

    sigmas: dict[int, list[float]] = defaultdict(list)
    ups: list[float] = []
    downs: list[float] = []
    for when, (high, low) in target:
        mean = mean_at.get(when)
        if mean is None or mean <= 0 or high == low:
            continue  # no 1-minute data in this half hour
        sigmas[_half_hour(when)].append((high - low) / (RANGE_OF_30_NORMALS * mean))
        ups.append(max(0.0, high / mean - 1.0))
        downs.append(max(0.0, 1.0 - low / mean))
    minute_sigma = [round(statistics.median(sigmas[h]), 5) for h in range(48)]
    ups.sort()
    downs.sort()
    spike_up = [round(_quantile(ups, q), 4) for q in SPIKE_QUANTILES]
    spike_down = [round(_quantile(downs, q), 4) for q in SPIKE_QUANTILES]

    temps: dict[tuple[int, int], list[float]] = defaultdict(list)
    sun: dict[tuple[int, int], list[float]] = defaultdict(list)
    for when, (temperature, irradiance) in weather:
        temps[(when.month - 1, when.hour)].append(temperature)
        sun[(when.month - 1, when.hour)].append(irradiance)
    climate = {key: statistics.fmean(values) for key, values in temps.items()}
    ambient = [[round(climate[(m, h)], 2) for h in range(24)] for m in range(12)]
    sunshine = [[round(statistics.fmean(sun[(m, h)]), 1) for h in range(24)] for m in range(12)]

    day_anomaly: dict[datetime, list[float]] = defaultdict(list)
    for when, (temperature, _) in weather:
        day = when.replace(hour=0)
        day_anomaly[day].append(temperature - climate[(when.month - 1, when.hour)])
    days = sorted(d for d, values in day_anomaly.items() if len(values) == 24)
    anomaly = {d: statistics.fmean(day_anomaly[d]) for d in days}
    by_month: dict[int, list[float]] = defaultdict(list)
    for d in days:
        by_month[d.month - 1].append(anomaly[d])
    day_sigma = [round(statistics.pstdev(by_month[m]), 3) for m in range(12)]
    pairs = [(anomaly[a], anomaly[b]) for a, b in itertools.pairwise(days) if (b - a).days == 1]
    first = [a for a, _ in pairs]
    second = [b for _, b in pairs]
    day_phi = round(statistics.correlation(first, second), 3)

    return {
        "LOAD_SHAPE": shape,
        "LOAD_DAY_SIGMA": load_day_sigma,
        "LOAD_DAY_PHI": load_day_phi,
        "MINUTE_SIGMA": minute_sigma,
        "SPIKE_QUANTILES": list(SPIKE_QUANTILES),
        "SPIKE_UP": spike_up,
        "SPIKE_DOWN": spike_down,
        "AMBIENT": ambient,
        "AMBIENT_DAY_SIGMA": day_sigma,
        "AMBIENT_DAY_PHI": day_phi,
        "IRRADIANCE": sunshine,
    }, {
        "n_observation": len(observation),
        "n_minutes": len(ups),
        "n_weather": len(weather),
        "n_days": len(days),
    }


def _literal(value: object, indent: str = "") -> str:
    """Write a nested list as a tuple literal, one innermost row per line."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        inner = indent + "    "
        rows = "".join(f"{inner}{_literal(v, inner)},\n" for v in value)
        return f"(\n{rows}{indent})"
    if isinstance(value, list):
        if len(value) <= PER_LINE // 2:
            return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        inner = indent + "    "
        lines = [value[i : i + PER_LINE] for i in range(0, len(value), PER_LINE)]
        rows = "".join(f"{inner}{', '.join(repr(v) for v in line)},\n" for line in lines)
        return f"(\n{rows}{indent})"
    return repr(value)


HEADER = '''"""Load, spike and weather shapes for the substation simulator, derived from real data.

GENERATED by tools/derive_load_shapes.py from ../shared/reference/lvdata: do not edit by hand.
Re-run the tool instead (tests/tools/test_derive_load_shapes.py checks the two agree).

Sources (sha256 as recorded in lvdata/SOURCES.md):
- {observation}
  sha256 {sha_observation}
  half-hourly mean real power (MW), {n_observation} half hours.
- {target}
  sha256 {sha_target}
  largest and smallest 1-minute real power in each half hour (MW), {n_minutes} half hours with 1-minute data.
- {weather}
  sha256 {sha_weather}
  hourly MERRA-2 temperature (°C) and solar irradiance (W/m²), {n_weather} hours, {n_days} whole days.

Attribution and licence: "Western Power Distribution (now National Grid Electricity
Distribution), Data Challenge 1" (Mousehole CB51), WPD open data licence; "NASA MERRA-2",
NASA GES DISC data policy. Files from github.com/AyrtonB/WPD-Hackathon (data only).

Tables (UTC; indexes start at 0: month 0 = January, day type 0 = Monday-Friday, 1 = weekend):
- LOAD_SHAPE[month][day type][half hour]: mean load / peak of the table (peak = 1).
- LOAD_DAY_SIGMA, LOAD_DAY_PHI: day-to-day AR(1) wander of the daily mean load (relative).
- MINUTE_SIGMA[half hour]: relative standard deviation of 1-minute load about the half-hour mean.
- SPIKE_UP / SPIKE_DOWN: quantiles (at SPIKE_QUANTILES) of max/mean - 1 and 1 - min/mean per half hour.
- AMBIENT[month][hour]: mean outdoor temperature (°C).
- AMBIENT_DAY_SIGMA[month], AMBIENT_DAY_PHI: day-to-day AR(1) wander of the daily mean temperature.
- IRRADIANCE[month][hour]: mean global horizontal solar irradiance (W/m²).
See tools/derive_load_shapes.py for the method.
"""

from __future__ import annotations

# fmt: off
'''


def render(reference: Path) -> str:
    """Return the text of load_shapes.py derived from the reference folder."""
    tables, counts = derive(reference)
    text = HEADER.format(
        observation=OBSERVATION,
        target=TARGET,
        weather=WEATHER,
        sha_observation=SHA256[OBSERVATION],
        sha_target=SHA256[TARGET],
        sha_weather=SHA256[WEATHER],
        **counts,
    )
    types = {
        "LOAD_SHAPE": "tuple[tuple[tuple[float, ...], ...], ...]",
        "AMBIENT": "tuple[tuple[float, ...], ...]",
        "IRRADIANCE": "tuple[tuple[float, ...], ...]",
        "AMBIENT_DAY_PHI": "float",
        "LOAD_DAY_SIGMA": "float",
        "LOAD_DAY_PHI": "float",
    }
    for name, value in tables.items():
        kind = types.get(name, "tuple[float, ...]")
        text += f"{name}: {kind} = {_literal(value)}\n"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with --check, compare) load_shapes.py; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="folder holding lvdata/")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="module to write")
    parser.add_argument("--check", action="store_true", help="only compare with the existing module")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        text = render(args.reference)
    except DerivationError as exc:
        log.error("%s", exc)
        return 2
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            log.error("%s is out of date: run tools/derive_load_shapes.py", args.output)
            return 1
        log.info("%s is up to date", args.output)
        return 0
    args.output.write_text(text, encoding="utf-8")
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
