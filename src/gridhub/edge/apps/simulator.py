"""Substation simulator: a Sensor Application publishing the OpenLV measurement points (Annex 3).

Every 60 s of simulated time it publishes, as Scalar Objects (9.1) in SI base units (4.5), the
LV busbar phase-neutral RMS voltages (min, max, mean), and for the transformer secondary and
each monitored outgoing feeder the per-phase RMS current (min, max, mean), power factor,
active and reactive power with direction (signed means) and the active and reactive energy of
the 60 s period (optionally the feeder neutral current); every 10 s the outdoor and indoor
ambient and transformer top-oil temperatures, plus optional thermocouple and analogue channels.
Each point's Data Series Metadata Object (9.4) is published once, retained, on ``<topic>/meta``.
Topic names follow 4.4: ``sensor/data/<IID>/<time>/<asset>/<phase>/<parameter>``, e.g.
``sensor/data/gridhub_simulator_01/60/busbar/l1/voltage-mean`` (docs/simulator.md has the tree).

The physics, per simulated minute:

- Demand follows the real Mousehole load shape by month, weekday/weekend and half hour
  (``load_shapes``), a day-to-day AR(1) wander and per-phase AR(1) noise sized from the
  1-minute data; each circuit (monitored feeders and the unmonitored remainder) has its own
  phase imbalance and power factor. The transformer's P and Q per phase are the sums over the
  circuits, so the monitored feeders plus the remainder add up to the transformer exactly.
- The busbar voltage is the no-load voltage less the drop across the transformer's impedance:
  V = E - (R·P + X·Q)/V per phase, solved exactly; reverse flow from PV raises it.
- I = S/V with S = √(P² + Q²), PF = P/S (so its sign shows the direction of active power),
  energy = mean power * 60 s.
- Top oil follows the IEC 60076-7 difference equation from the load factor and the ambient
  (indoor when the substation is indoor); the indoor air warms with the transformer losses.

Use ``SubstationModel`` alone (no MQTT) to generate data fast; ``SubstationSimulator`` is the
LV-CAP app, run by the Container Manager as ``python -m gridhub.edge.apps.simulator``.
"""

from __future__ import annotations

import cmath
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from gridhub.edge.apps import load_shapes
from gridhub.formats.lvcap import LvcapError, MetadataObject, ScalarObject, topic_matches, validate_topic_filter
from gridhub.sdk import App, ConfigurationError, now

log = logging.getLogger(__name__)

PERIOD = 60
"""Seconds per electrical measurement period (Annex 3, section 1)."""
TICK = 10
"""Seconds between temperature readings (Annex 3, section 2)."""
PHASES = ("l1", "l2", "l3")
MAX_FEEDERS = 5
MAX_THERMOCOUPLES = 5
MAX_ANALOGUE = 8
FAULT_KINDS = ("disconnected", "stuck", "spike", "clock-jump")
DAY = 86_400
HALF_HOUR = 1_800
MAX_CATCH_UP_TICKS = 360
"""Most simulated ticks (one hour) published per timer call when the app falls behind its clock."""


# -- measurement points (declarative: one row per point, rendered generically) -------------


@dataclass(frozen=True)
class Point:
    """One published data series: its sub-topic below sensor/data/<IID> and its metadata (9.4)."""

    sub_topic: str
    name: str
    units: str
    display_units: str
    sig_figs: int

    def metadata(self) -> MetadataObject:
        """Return the Data Series Metadata Object for this point."""
        return MetadataObject(
            name=self.name, units=self.units, display_units=self.display_units, sig_figs=self.sig_figs
        )


@dataclass(frozen=True)
class Quantity:
    """A kind of per-phase reading: parameter name, description, units and significant figures."""

    parameter: str
    description: str
    units: str
    display_units: str
    sig_figs: int


VOLTAGE = (
    Quantity("voltage-min", "RMS voltage phase-neutral, minimum over 60 s", "V", "V", 4),
    Quantity("voltage-max", "RMS voltage phase-neutral, maximum over 60 s", "V", "V", 4),
    Quantity("voltage-mean", "RMS voltage phase-neutral, mean over 60 s", "V", "V", 4),
)
CURRENT = (
    Quantity("current-min", "RMS current, minimum over 60 s", "A", "A", 4),
    Quantity("current-max", "RMS current, maximum over 60 s", "A", "A", 4),
    Quantity("current-mean", "RMS current, mean over 60 s", "A", "A", 4),
)
POWER = (
    Quantity("power-factor-mean", "power factor P/S, mean over 60 s (negative: reverse flow)", "1", "", 3),
    Quantity("power-active-mean", "active power, mean over 60 s (positive: to the LV network)", "W", "kW", 4),
    Quantity("power-reactive-mean", "reactive power, mean over 60 s (positive: lagging)", "var", "kvar", 4),
    Quantity("energy-active", "active energy in the 60 s period (W·s)", "J", "kWh", 4),
    Quantity("energy-reactive", "reactive energy in the 60 s period", "var·s", "kvarh", 4),
)


def _celsius(sub_topic: str, name: str) -> Point:
    return Point(sub_topic, name, "°C", "°C", 3)


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeederConfig:
    """One monitored outgoing feeder: its share of the substation load and neutral monitoring."""

    share: float
    neutral: bool = False


@dataclass(frozen=True)
class ThermocoupleConfig:
    """An extra thermocouple: indoor ambient + offset + rise * K², first-order lag."""

    offset: float = 0.0
    rise: float = 10.0
    time_constant: float = 1800.0


@dataclass(frozen=True)
class AnalogueConfig:
    """An extra analogue input: a daily wave between low and high in the given units."""

    low: float = 0.0
    high: float = 10.0
    units: str = "V"
    period: float = float(DAY)


@dataclass(frozen=True)
class TopOilParameters:
    """IEC 60076-7 top-oil parameters; defaults for an ONAN distribution transformer."""

    time_constant: float = 180 * 60.0  # τo, seconds
    rise: float = 60.0  # Δθor, K at rated load
    r: float = 6.5  # ratio of load losses at rated current to no-load losses
    x: float = 0.8  # oil exponent
    k11: float = 1.0  # thermal model constant (distribution transformer, ONAN)


@dataclass(frozen=True)
class Fault:
    """A configured fault on the points matching ``points`` from ``start`` until ``end`` (UTC seconds)."""

    kind: str
    points: str
    start: int
    end: int
    factor: float = 2.0  # spike: value multiplier
    offset: int = 3600  # clock-jump: seconds added to the timestamps

    def active(self, sub_topic: str, timestamp: int) -> bool:
        """Tell whether the fault applies to a reading of this point at this (true) time."""
        return self.start <= timestamp < self.end and topic_matches(self.points, sub_topic)


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulator's ContainerConfig, checked (see docs/simulator.md for every key)."""

    seed: int = 1
    start: int = 1_704_067_200  # 2024-01-01T00:00:00Z
    clock_factor: float = 1.0
    rated_power: float = 500_000.0  # VA
    rated_voltage: float = 400.0  # V, LV line-line
    primary_voltage: float = 11_000.0  # V, HV line-line (metadata only)
    impedance: float = 0.0475  # per unit
    x_over_r: float = 3.0
    no_load_voltage: float = 250.0  # V phase-neutral at the busbar with no load
    peak_load: float = 0.7  # apparent power at the load shape's peak, per unit of rating
    power_factor: float = 0.95
    imbalance: float = 0.1
    noise: float = 1.0
    pv_capacity: float = 0.0  # W peak of PV spread over the circuits
    indoor: bool = True
    indoor_rise: float = 8.0  # K of indoor air above outdoor at rated losses
    top_oil: TopOilParameters = field(default_factory=TopOilParameters)
    feeders: tuple[FeederConfig, ...] = (FeederConfig(share=0.35, neutral=True),)
    thermocouples: tuple[ThermocoupleConfig, ...] = ()
    analogue: tuple[AnalogueConfig, ...] = ()
    faults: tuple[Fault, ...] = ()

    KEYS = (
        "seed", "start", "clock_factor", "rated_power", "rated_voltage", "primary_voltage", "impedance",
        "x_over_r", "no_load_voltage", "peak_load", "power_factor", "imbalance", "noise", "pv_capacity",
        "indoor", "indoor_rise", "top_oil", "feeders", "thermocouples", "analogue", "faults",
    )  # fmt: skip

    @property
    def rated_current(self) -> float:
        """Return the rated secondary current per phase in amperes."""
        return self.rated_power / (math.sqrt(3) * self.rated_voltage)

    @classmethod
    def from_container_config(cls, config: Mapping[str, Any], *, now_utc: int | None = None) -> SimulatorConfig:
        """Check a ContainerConfig; raise ConfigurationError naming the key that is wrong."""
        where = "ContainerConfig"
        _reject_unknown(config, cls.KEYS, where)
        default = cls()
        seed = config.get("seed", default.seed)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"{where}.seed: expected an integer, got {seed!r}")
        if "start" in config:
            start = _time(config["start"], f"{where}.start")
        else:
            start = (now() if now_utc is None else now_utc) // PERIOD * PERIOD
        feeders = tuple(
            _feeder(item, f"{where}.feeders[{i}]")
            for i, item in enumerate(_list(config, "feeders", [{"share": 0.35, "neutral": True}], where))
        )
        if not 1 <= len(feeders) <= MAX_FEEDERS:
            raise ConfigurationError(f"{where}.feeders: expected 1 to {MAX_FEEDERS} feeders, got {len(feeders)}")
        total = sum(f.share for f in feeders)
        if total > 1.0 + 1e-9:
            raise ConfigurationError(f"{where}.feeders: the shares add up to {total:g}, more than 1")
        if len(feeders) == MAX_FEEDERS and abs(total - 1.0) > 1e-9:
            # Annex 3, 3.1: five feeders only with a calculated total, i.e. when all are monitored.
            raise ConfigurationError(
                f"{where}.feeders: with {MAX_FEEDERS} feeders every feeder is monitored, so the shares must "
                f"add up to 1 (got {total:g})"
            )
        thermocouples = tuple(
            _thermocouple(item, f"{where}.thermocouples[{i}]")
            for i, item in enumerate(_list(config, "thermocouples", [], where))
        )
        if len(thermocouples) > MAX_THERMOCOUPLES:
            raise ConfigurationError(f"{where}.thermocouples: at most {MAX_THERMOCOUPLES}, got {len(thermocouples)}")
        analogue = tuple(
            _analogue(item, f"{where}.analogue[{i}]") for i, item in enumerate(_list(config, "analogue", [], where))
        )
        if len(analogue) > MAX_ANALOGUE:
            raise ConfigurationError(f"{where}.analogue: at most {MAX_ANALOGUE} channels, got {len(analogue)}")
        faults = tuple(
            _fault(item, f"{where}.faults[{i}]") for i, item in enumerate(_list(config, "faults", [], where))
        )
        indoor = config.get("indoor", default.indoor)
        if not isinstance(indoor, bool):
            raise ConfigurationError(f"{where}.indoor: expected true or false, got {indoor!r}")
        top_oil = config.get("top_oil", {})
        if not isinstance(top_oil, Mapping):
            raise ConfigurationError(f"{where}.top_oil: expected a table, got {top_oil!r}")
        oil_where = f"{where}.top_oil"
        _reject_unknown(top_oil, ("time_constant", "rise", "r", "x", "k11"), oil_where)
        oil = TopOilParameters()
        oil = TopOilParameters(
            time_constant=_num(top_oil, "time_constant", oil.time_constant, oil_where, low=60.0),
            rise=_num(top_oil, "rise", oil.rise, oil_where, low=1.0, high=150.0),
            r=_num(top_oil, "r", oil.r, oil_where, low=0.1, high=100.0),
            x=_num(top_oil, "x", oil.x, oil_where, low=0.1, high=3.0),
            k11=_num(top_oil, "k11", oil.k11, oil_where, low=0.1, high=10.0),
        )
        return cls(
            seed=seed,
            start=start,
            clock_factor=_num(config, "clock_factor", default.clock_factor, where, low=1e-3, high=1e6),
            rated_power=_num(config, "rated_power", default.rated_power, where, low=1e3, high=1e8),
            rated_voltage=_num(config, "rated_voltage", default.rated_voltage, where, low=100.0, high=1000.0),
            primary_voltage=_num(config, "primary_voltage", default.primary_voltage, where, low=1e3, high=1e5),
            impedance=_num(config, "impedance", default.impedance, where, low=0.005, high=0.2),
            x_over_r=_num(config, "x_over_r", default.x_over_r, where, low=0.1, high=50.0),
            no_load_voltage=_num(config, "no_load_voltage", default.no_load_voltage, where, low=50.0, high=600.0),
            peak_load=_num(config, "peak_load", default.peak_load, where, low=0.0, high=2.0),
            power_factor=_num(config, "power_factor", default.power_factor, where, low=0.5, high=1.0),
            imbalance=_num(config, "imbalance", default.imbalance, where, low=0.0, high=0.5),
            noise=_num(config, "noise", default.noise, where, low=0.0, high=10.0),
            pv_capacity=_num(config, "pv_capacity", default.pv_capacity, where, low=0.0, high=1e8),
            indoor=indoor,
            indoor_rise=_num(config, "indoor_rise", default.indoor_rise, where, low=0.0, high=50.0),
            top_oil=oil,
            feeders=feeders,
            thermocouples=thermocouples,
            analogue=analogue,
            faults=faults,
        )


def _reject_unknown(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _num(
    data: Mapping[str, Any],
    key: str,
    default: float,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{where}.{key}: expected a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigurationError(f"{where}.{key}: expected a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _list(data: Mapping[str, Any], key: str, default: list[Any], where: str) -> list[Mapping[str, Any]]:
    value = data.get(key, default)
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise ConfigurationError(f"{where}.{key}: expected a list of tables, got {value!r}")
    return value


def _time(value: object, where: str) -> int:
    """Read a UTC time: an ISO 8601 string ("2024-01-15T00:00:00Z") or a UNIX timestamp."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{where}: expected an ISO 8601 UTC time such as '2024-01-15T00:00:00Z', got {value!r}"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigurationError(
            f"{where}: expected an ISO 8601 UTC time such as '2024-01-15T00:00:00Z', got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _feeder(item: Mapping[str, Any], where: str) -> FeederConfig:
    _reject_unknown(item, ("share", "neutral"), where)
    if "share" not in item:
        raise ConfigurationError(f"{where}.share: required (the feeder's fraction of the substation load)")
    neutral = item.get("neutral", False)
    if not isinstance(neutral, bool):
        raise ConfigurationError(f"{where}.neutral: expected true or false, got {neutral!r}")
    return FeederConfig(share=_num(item, "share", 0.0, where, low=0.01, high=1.0), neutral=neutral)


def _thermocouple(item: Mapping[str, Any], where: str) -> ThermocoupleConfig:
    _reject_unknown(item, ("offset", "rise", "time_constant"), where)
    d = ThermocoupleConfig()
    return ThermocoupleConfig(
        offset=_num(item, "offset", d.offset, where, low=-50.0, high=100.0),
        rise=_num(item, "rise", d.rise, where, low=0.0, high=150.0),
        time_constant=_num(item, "time_constant", d.time_constant, where, low=10.0, high=1e6),
    )


def _analogue(item: Mapping[str, Any], where: str) -> AnalogueConfig:
    _reject_unknown(item, ("low", "high", "units", "period"), where)
    d = AnalogueConfig()
    low = _num(item, "low", d.low, where)
    high = _num(item, "high", d.high, where)
    if not high > low:
        raise ConfigurationError(f"{where}: high ({high:g}) must be greater than low ({low:g})")
    units = item.get("units", d.units)
    if not isinstance(units, str):
        raise ConfigurationError(f"{where}.units: expected a string, got {units!r}")
    return AnalogueConfig(low=low, high=high, units=units, period=_num(item, "period", d.period, where, low=60.0))


def _fault(item: Mapping[str, Any], where: str) -> Fault:
    _reject_unknown(item, ("kind", "points", "from", "to", "factor", "offset"), where)
    kind = item.get("kind")
    if kind not in FAULT_KINDS:
        raise ConfigurationError(f"{where}.kind: expected one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    points = item.get("points", "#")
    try:
        validate_topic_filter(points, where=f"{where}.points")
    except LvcapError as exc:
        raise ConfigurationError(str(exc)) from None
    for key in ("from", "to"):
        if key not in item:
            raise ConfigurationError(f"{where}.{key}: required (ISO 8601 UTC time of simulated time)")
    start = _time(item["from"], f"{where}.from")
    end = _time(item["to"], f"{where}.to")
    if end <= start:
        raise ConfigurationError(f"{where}: 'to' must be later than 'from'")
    offset = item.get("offset", 3600)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ConfigurationError(f"{where}.offset: expected a whole number of seconds, got {offset!r}")
    return Fault(
        kind=str(kind), points=str(points), start=start, end=end,
        factor=_num(item, "factor", 2.0, where, low=-1e3, high=1e3), offset=offset,
    )  # fmt: skip


# -- physics -------------------------------------------------------------------------------


def top_oil_step(top_oil: float, ambient: float, load_factor: float, dt: float, params: TopOilParameters) -> float:
    """Advance the top-oil temperature by dt seconds: IEC 60076-7 difference equation (Annex C).

    Dθo = Dt / (k11·τo) · [((1 + K²R) / (1 + R))^x · Δθor - (θo - θa)]
    """
    ultimate = float(((1 + load_factor**2 * params.r) / (1 + params.r)) ** params.x) * params.rise
    return top_oil + dt / (params.k11 * params.time_constant) * (ultimate - (top_oil - ambient))


def top_oil_steady(ambient: float, load_factor: float, params: TopOilParameters) -> float:
    """Return the ultimate top-oil temperature for a constant load factor and ambient."""
    return ambient + float(((1 + load_factor**2 * params.r) / (1 + params.r)) ** params.x) * params.rise


def busbar_voltage(no_load: float, p: float, q: float, r: float, x: float) -> float:
    """Solve V = E - (R·P + X·Q)/V for the phase voltage V (the larger, physical root)."""
    drop = r * p + x * q
    return (no_load + math.sqrt(max(no_load * no_load - 4 * drop, 0.0))) / 2


def _load_shape(timestamp: float) -> float:
    """Relative load at a UTC time, linear between the half-hour cells of LOAD_SHAPE."""
    cell = math.floor(timestamp / HALF_HOUR) * HALF_HOUR
    frac = (timestamp - cell) / HALF_HOUR
    return _shape_cell(cell) * (1 - frac) + _shape_cell(cell + HALF_HOUR) * frac


def _shape_cell(timestamp: float) -> float:
    when = datetime.fromtimestamp(timestamp, UTC)
    day_type = 1 if when.weekday() >= 5 else 0
    return load_shapes.LOAD_SHAPE[when.month - 1][day_type][when.hour * 2 + when.minute // 30]


def _hourly(table: Sequence[Sequence[float]], timestamp: float) -> float:
    """Interpolate a [month][hour] table linearly between hours."""
    hour = math.floor(timestamp / 3600) * 3600
    frac = (timestamp - hour) / 3600
    a = datetime.fromtimestamp(hour, UTC)
    b = datetime.fromtimestamp(hour + 3600, UTC)
    return table[a.month - 1][a.hour] * (1 - frac) + table[b.month - 1][b.hour] * frac


def _quantile_sample(rng: random.Random, quantiles: Sequence[float], values: Sequence[float]) -> float:
    """Draw from the distribution given by its quantiles (inverse CDF, linear between them)."""
    u = rng.random()
    for i in range(1, len(quantiles)):
        if u <= quantiles[i]:
            span = quantiles[i] - quantiles[i - 1]
            return values[i - 1] + (values[i] - values[i - 1]) * (u - quantiles[i - 1]) / span
    return values[-1]


class _AR1:
    """A stationary AR(1) process: x <- phi * x + sqrt(1 - phi²) * sigma * e, e standard normal."""

    def __init__(self, rng: random.Random, phi: float, sigma: float = 1.0) -> None:
        self.rng = rng
        self.phi = phi
        self.sigma = sigma
        self.value = rng.gauss(0.0, sigma)

    def step(self) -> float:
        self.value = self.phi * self.value + math.sqrt(1 - self.phi**2) * self.sigma * self.rng.gauss(0.0, 1.0)
        return self.value


class _DailyWander:
    """A per-day AR(1) value, interpolated over the day so it has no steps at midnight."""

    def __init__(self, rng: random.Random, phi: float, start: int) -> None:
        self.rng = rng
        self.phi = phi
        self.day = start // DAY
        self.today = rng.gauss(0.0, 1.0)
        self.tomorrow = self._next(self.today)

    def _next(self, value: float) -> float:
        return self.phi * value + math.sqrt(1 - self.phi**2) * self.rng.gauss(0.0, 1.0)

    def at(self, timestamp: float) -> float:
        """Return the standardised wander (unit variance) at a time not earlier than the last one."""
        day = int(timestamp // DAY)
        while self.day < day:
            self.day += 1
            self.today, self.tomorrow = self.tomorrow, self._next(self.tomorrow)
        frac = (timestamp - day * DAY) / DAY
        return self.today * (1 - frac) + self.tomorrow * frac


@dataclass
class _Circuit:
    """One LV circuit: a monitored feeder, or the unmonitored remainder of the load."""

    name: str | None  # "feeder1".. or None for the remainder
    share: float
    neutral: bool
    imbalance: tuple[float, float, float]
    tan_phi: float
    noise: list[_AR1]


@dataclass
class _PhaseFlow:
    p: float = 0.0
    q: float = 0.0
    current: float = 0.0
    current_min: float = 0.0
    current_max: float = 0.0


class Reading(NamedTuple):
    """One reading to publish: sub-topic below sensor/data/<IID>, timestamp, value and Valid flag."""

    sub_topic: str
    timestamp: int
    value: float
    valid: bool = True

    @property
    def obj(self) -> ScalarObject:
        """Return the reading as the Scalar Object (9.1) to publish."""
        return ScalarObject(timestamp=self.timestamp, value=self.value, valid=self.valid)


class SubstationModel:
    """The pure substation model: call ``step_tick()`` or ``step_minute()`` for the next readings.

    No MQTT and no wall clock: timestamps are simulated time from ``config.start``, and the
    same configuration (seed included) always gives the same readings.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.time = config.start
        """Simulated UTC time of the end of the last step (seconds)."""
        rng = random.Random(config.seed)
        self._rng = rng
        base = config.rated_voltage**2 / config.rated_power  # ohms (per phase, star equivalent)
        resistance_pu = config.impedance / math.sqrt(1 + config.x_over_r**2)
        self.resistance = resistance_pu * base
        self.reactance = resistance_pu * config.x_over_r * base
        shares = [(f"feeder{i}", f.share, f.neutral) for i, f in enumerate(config.feeders, start=1)]
        remainder = 1.0 - sum(f.share for f in config.feeders)
        circuits: list[tuple[str | None, float, bool]] = list(shares)
        if remainder > 1e-9:
            circuits.append((None, remainder, False))
        self.circuits = [self._circuit(name, share, neutral) for name, share, neutral in circuits]
        self._phase_offset = [rng.gauss(0.0, 0.003) for _ in PHASES]
        self._hv = _AR1(rng, phi=0.98, sigma=0.008)
        self._cloud = _AR1(rng, phi=0.97, sigma=0.3)
        self._load_day = _DailyWander(rng, load_shapes.LOAD_DAY_PHI, config.start)
        self._weather_day = _DailyWander(rng, load_shapes.AMBIENT_DAY_PHI, config.start)
        self._analogue_noise = [_AR1(rng, phi=0.9, sigma=0.005) for _ in config.analogue]
        self._minute_start = config.start
        self._minute: dict[str, float] = {}
        self._load_factor = 0.0
        self._top_oil = math.nan
        self._indoor = math.nan
        self._thermocouples = [math.nan for _ in config.thermocouples]
        self._last: dict[str, float] = {}
        self._stuck: dict[tuple[int, str], float] = {}
        self.points = self._points()

    def _circuit(self, name: str | None, share: float, neutral: bool) -> _Circuit:
        rng = self._rng
        raw = [max(0.2, 1 + rng.gauss(0.0, self.config.imbalance)) for _ in PHASES]
        mean = sum(raw) / 3
        pf = min(0.999, max(0.5, self.config.power_factor + rng.gauss(0.0, 0.015)))
        return _Circuit(
            name=name,
            share=share,
            neutral=neutral,
            imbalance=(raw[0] / mean, raw[1] / mean, raw[2] / mean),
            tan_phi=math.tan(math.acos(pf)),
            noise=[_AR1(rng, phi=0.9) for _ in PHASES],
        )

    # -- the published points ---------------------------------------------------------------

    def _points(self) -> list[Point]:
        c = self.config
        rating = f"{c.rated_power / 1000:g} kVA {c.primary_voltage:g}/{c.rated_voltage:g} V"
        points: list[Point] = []
        for phase in PHASES:
            for q in VOLTAGE:
                points.append(
                    Point(f"{PERIOD}/busbar/{phase}/{q.parameter}", f"LV busbar {phase.upper()} {q.description}",
                          q.units, q.display_units, q.sig_figs)
                )  # fmt: skip
        assets = [("transformer", f"Transformer secondary ({rating})")]
        assets += [(f"feeder{i}", f"Outgoing feeder {i}") for i in range(1, len(c.feeders) + 1)]
        for asset, label in assets:
            for phase in PHASES:
                for q in CURRENT + POWER:
                    points.append(
                        Point(f"{PERIOD}/{asset}/{phase}/{q.parameter}", f"{label} {phase.upper()} {q.description}",
                              q.units, q.display_units, q.sig_figs)
                    )  # fmt: skip
        for i, feeder in enumerate(c.feeders, start=1):
            if feeder.neutral:
                for q in CURRENT:
                    points.append(
                        Point(f"{PERIOD}/feeder{i}/n/{q.parameter}", f"Outgoing feeder {i} neutral {q.description}",
                              q.units, q.display_units, q.sig_figs)
                    )  # fmt: skip
        points.append(_celsius(f"{TICK}/ambient/temperature-outdoor", "Outdoor ambient air temperature"))
        if c.indoor:
            points.append(_celsius(f"{TICK}/ambient/temperature-indoor", "Indoor ambient air temperature"))
        points.append(
            _celsius(f"{TICK}/transformer/temperature-top-oil", f"Transformer top-oil temperature ({rating})")
        )
        for i in range(1, len(c.thermocouples) + 1):
            points.append(_celsius(f"{TICK}/thermocouple{i}/temperature", f"Additional thermocouple {i}"))
        for i, channel in enumerate(c.analogue, start=1):
            points.append(
                Point(f"{TICK}/analogue{i}/value", f"Additional analogue input {i}", channel.units, channel.units, 4)
            )
        return points

    # -- stepping ---------------------------------------------------------------------------

    def step_minute(self) -> list[Reading]:
        """Advance 60 s; return the six temperature sets and the 60 s electrical set, in time order."""
        readings: list[Reading] = []
        for _ in range(PERIOD // TICK):
            readings.extend(self.step_tick())
        return readings

    def step_tick(self) -> list[Reading]:
        """Advance 10 s; return the temperature readings and, at a period's end, the electrical ones."""
        t = self.time
        if (t - self.config.start) % PERIOD == 0:
            self._minute_start = t
            self._minute = self._electrical_minute(t)
        end = t + TICK
        self.time = end
        values = self._thermal_tick(end)
        if end - self._minute_start == PERIOD:
            values.update(self._minute)
        return [self._reading(sub, value, end) for sub, value in values.items()]

    def _reading(self, sub_topic: str, value: float, timestamp: int) -> Reading:
        """Make the reading, applying the configured faults (4.8: timestamps keep advancing)."""
        if not self.config.faults:
            return Reading(sub_topic, timestamp, value)
        valid = True
        stamp = timestamp
        stuck = False
        for index, fault in enumerate(self.config.faults):
            if not fault.active(sub_topic, timestamp):
                continue
            if fault.kind == "disconnected":
                # The value does not matter when Valid is false (4.8); the timestamp does.
                valid = False
                value = 0.0
            elif fault.kind == "stuck":
                stuck = True
                value = self._stuck.setdefault((index, sub_topic), self._last.get(sub_topic, value))
            elif fault.kind == "spike":
                value = value * fault.factor
            elif fault.kind == "clock-jump":
                stamp = timestamp + fault.offset
        if valid and not stuck:
            self._last[sub_topic] = value
        return Reading(sub_topic, stamp, value, valid)

    # -- electrical -------------------------------------------------------------------------

    def _electrical_minute(self, start: int) -> dict[str, float]:
        c = self.config
        rng = self._rng
        middle = start + PERIOD / 2
        half_hour = int((middle % DAY) // HALF_HOUR)
        wander = 1 + load_shapes.LOAD_DAY_SIGMA * self._load_day.at(middle)
        demand = c.peak_load * c.rated_power * c.power_factor * _load_shape(middle) * max(0.2, wander)  # W
        irradiance = _hourly(load_shapes.IRRADIANCE, middle)
        cloud = min(1.3, max(0.1, 1 + self._cloud.step()))
        pv = c.pv_capacity * irradiance / 1000 * cloud  # W for the whole substation
        minute_sigma = load_shapes.MINUTE_SIGMA[half_hour] * c.noise

        flows: list[list[_PhaseFlow]] = []
        for circuit in self.circuits:
            # Independent noise of n loads grows as √n, so a smaller circuit (and one phase of it)
            # is relatively noisier than the whole Mousehole feeder the sigma was measured on.
            sigma = min(0.5, minute_sigma * math.sqrt(3 / circuit.share))
            phases = []
            for p in range(3):
                load = demand * circuit.share / 3 * circuit.imbalance[p] * (1 + sigma * circuit.noise[p].step())
                load = max(0.0, load)
                flow = _PhaseFlow(p=load - pv * circuit.share / 3, q=load * circuit.tan_phi)
                # One largest upward and one largest downward 1-minute excursion per half hour
                # on average (the data's max/min), a small ripple in the other minutes.
                up = abs(rng.gauss(0.0, sigma / 2))
                down = abs(rng.gauss(0.0, sigma / 2))
                scale = math.sqrt(3 / circuit.share) / 3
                if rng.random() < PERIOD / HALF_HOUR:
                    up = _quantile_sample(rng, load_shapes.SPIKE_QUANTILES, load_shapes.SPIKE_UP) * scale
                if rng.random() < PERIOD / HALF_HOUR:
                    down = _quantile_sample(rng, load_shapes.SPIKE_QUANTILES, load_shapes.SPIKE_DOWN) * scale
                flow.current_max = min(up, 2.0)  # relative, turned into amperes below
                flow.current_min = min(down, 1.0)
                phases.append(flow)
            flows.append(phases)

        values: dict[str, float] = {}
        hv = 1 + self._hv.step()
        currents: list[float] = []
        for p, phase in enumerate(PHASES):
            total_p = sum(f[p].p for f in flows)
            total_q = sum(f[p].q for f in flows)
            no_load = c.no_load_voltage * hv * (1 + self._phase_offset[p])
            voltage = busbar_voltage(no_load, total_p, total_q, self.resistance, self.reactance)
            rise_sq = fall_sq = 0.0
            for f in flows:
                flow = f[p]
                flow.current = math.hypot(flow.p, flow.q) / voltage
                up, down = flow.current_max, flow.current_min
                flow.current_max = flow.current * (1 + up)
                flow.current_min = flow.current * (1 - down)
                # Excursions of different circuits are independent: they add in quadrature.
                rise_sq += (flow.current_max - flow.current) ** 2
                fall_sq += (flow.current - flow.current_min) ** 2
            current = math.hypot(total_p, total_q) / voltage
            tx = _PhaseFlow(total_p, total_q, current, max(0.0, current - math.sqrt(fall_sq)),
                            current + math.sqrt(rise_sq))  # fmt: skip
            currents.append(current)
            # The voltage is lowest when the current is highest, and the other way round.
            scale_max = tx.current_max / current if current > 0 else 1.0
            scale_min = tx.current_min / current if current > 0 else 1.0
            v_a = busbar_voltage(no_load, total_p * scale_max, total_q * scale_max, self.resistance, self.reactance)
            v_b = busbar_voltage(no_load, total_p * scale_min, total_q * scale_min, self.resistance, self.reactance)
            values[f"{PERIOD}/busbar/{phase}/voltage-min"] = round(min(v_a, v_b, voltage), 2)
            values[f"{PERIOD}/busbar/{phase}/voltage-max"] = round(max(v_a, v_b, voltage), 2)
            values[f"{PERIOD}/busbar/{phase}/voltage-mean"] = round(voltage, 2)
            _flow_values(values, f"{PERIOD}/transformer/{phase}", tx, voltage)
            for circuit, f in zip(self.circuits, flows, strict=True):
                if circuit.name is not None:
                    _flow_values(values, f"{PERIOD}/{circuit.name}/{phase}", f[p], voltage)
        for circuit, f in zip(self.circuits, flows, strict=True):
            if circuit.name is not None and circuit.neutral:
                _neutral_values(values, f"{PERIOD}/{circuit.name}/n", f)
        self._load_factor = sum(currents) / 3 / c.rated_current
        return values

    # -- thermal ----------------------------------------------------------------------------

    def _thermal_tick(self, timestamp: int) -> dict[str, float]:
        c = self.config
        month = datetime.fromtimestamp(timestamp, UTC).month - 1
        outdoor = _hourly(load_shapes.AMBIENT, timestamp)
        outdoor += load_shapes.AMBIENT_DAY_SIGMA[month] * self._weather_day.at(timestamp)
        k = self._load_factor
        loss_ratio = (1 + k * k * c.top_oil.r) / (1 + c.top_oil.r)  # losses relative to rated-load losses
        indoor_target = outdoor + c.indoor_rise * loss_ratio
        if math.isnan(self._indoor):
            # Start in the steady state for the first minute's load: no start-up transient.
            self._indoor = indoor_target
        else:
            self._indoor += TICK / 3600 * (indoor_target - self._indoor)  # room time constant 1 h
        ambient = self._indoor if c.indoor else outdoor
        if math.isnan(self._top_oil):
            self._top_oil = top_oil_steady(ambient, k, c.top_oil)
        else:
            self._top_oil = top_oil_step(self._top_oil, ambient, k, TICK, c.top_oil)
        values = {f"{TICK}/ambient/temperature-outdoor": round(outdoor, 2)}
        if c.indoor:
            values[f"{TICK}/ambient/temperature-indoor"] = round(self._indoor, 2)
        values[f"{TICK}/transformer/temperature-top-oil"] = round(self._top_oil, 2)
        for i, tc in enumerate(c.thermocouples):
            target = self._indoor + tc.offset + tc.rise * k * k
            previous = self._thermocouples[i]
            self._thermocouples[i] = (
                target if math.isnan(previous) else previous + TICK / tc.time_constant * (target - previous)
            )
            values[f"{TICK}/thermocouple{i + 1}/temperature"] = round(self._thermocouples[i], 2)
        for i, (channel, noise) in enumerate(zip(c.analogue, self._analogue_noise, strict=True)):
            wave = 0.5 + 0.5 * math.sin(2 * math.pi * timestamp / channel.period) + noise.step()
            value = channel.low + (channel.high - channel.low) * min(1.0, max(0.0, wave))
            values[f"{TICK}/analogue{i + 1}/value"] = round(value, 4)
        return values


def _flow_values(values: dict[str, float], prefix: str, flow: _PhaseFlow, voltage: float) -> None:
    """Fill in current, power factor, powers and energies of one phase of one circuit."""
    p = round(flow.p, 1)
    q = round(flow.q, 1)
    current = round(flow.current, 2)
    apparent = math.hypot(flow.p, flow.q)
    values[f"{prefix}/current-min"] = round(max(0.0, flow.current_min), 2)
    values[f"{prefix}/current-max"] = round(flow.current_max, 2)
    values[f"{prefix}/current-mean"] = current
    values[f"{prefix}/power-factor-mean"] = round(flow.p / apparent, 4) if apparent > 0 else 1.0
    values[f"{prefix}/power-active-mean"] = p
    values[f"{prefix}/power-reactive-mean"] = q
    values[f"{prefix}/energy-active"] = round(p * PERIOD, 1)
    values[f"{prefix}/energy-reactive"] = round(q * PERIOD, 1)


def _neutral_values(values: dict[str, float], prefix: str, flows: Sequence[_PhaseFlow]) -> None:
    """Neutral current = |phasor sum| of the phase currents, 120° apart, each lagging by its angle."""
    total = 0j
    spread_up = spread_down = 0.0
    for p, flow in enumerate(flows):
        angle = -2 * math.pi * p / 3 - math.atan2(flow.q, flow.p)
        total += cmath.rect(flow.current, angle)
        spread_up += (flow.current_max - flow.current) ** 2
        spread_down += (flow.current - flow.current_min) ** 2
    mean = abs(total)
    values[f"{prefix}/current-min"] = round(max(0.0, mean - math.sqrt(spread_down)), 2)
    values[f"{prefix}/current-max"] = round(mean + math.sqrt(spread_up), 2)
    values[f"{prefix}/current-mean"] = round(mean, 2)


# -- the LV-CAP app ------------------------------------------------------------------------


class SubstationSimulator(App):
    """The Sensor Application: run a SubstationModel against a (sped-up) clock and publish it."""

    role = "sensor"

    def __init__(self, *args: Any, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.settings: SimulatorConfig | None = None
        self.model: SubstationModel | None = None
        self._published_meta: set[str] = set()
        self._epoch = 0.0
        self._timer_started = False

    def configure(self, config: dict[str, Any]) -> None:
        """Check the ContainerConfig; a new one restarts the simulation from its ``start``."""
        settings = SimulatorConfig.from_container_config(config)
        self.settings = settings
        if self.running:
            self._begin()

    def start(self) -> None:
        """Publish the metadata and start the simulated clock."""
        self._begin()

    def _begin(self) -> None:
        settings = self.settings
        assert settings is not None, "configure() runs before start()"
        self.model = SubstationModel(settings)
        self._epoch = self.clock()
        self.publish_all_metadata()
        if not self._timer_started:
            self._timer_started = True
            self.every(self._interval(), self.tick)
        log.info(
            "%s simulating from %s at %g times real time", self.iid,
            datetime.fromtimestamp(settings.start, UTC).isoformat(), settings.clock_factor,
        )  # fmt: skip

    def _interval(self) -> float:
        assert self.settings is not None
        # One timer call per simulated tick, but no faster than 20 calls a second: at high
        # clock factors each call catches up with several ticks.
        return max(TICK / self.settings.clock_factor, 0.05)

    def publish_all_metadata(self) -> None:
        """Publish every point's metadata, retained; clear the metadata of points no longer published."""
        assert self.model is not None
        current = {point.sub_topic for point in self.model.points}
        for sub_topic in sorted(self._published_meta - current):
            # An empty retained message removes the retained metadata of a dropped point.
            self.client.publish(self.data_topic(f"{sub_topic}/meta"), b"", qos=1, retain=True)
        for point in self.model.points:
            self.publish_metadata(point.sub_topic, point.metadata())
        self._published_meta = current

    def tick(self) -> None:
        """Publish every tick due by the simulated clock (start + elapsed * clock factor)."""
        model = self.model
        if model is None or self.settings is None:
            return
        due = self.settings.start + (self.clock() - self._epoch) * self.settings.clock_factor
        for _ in range(MAX_CATCH_UP_TICKS):
            if model.time + TICK > due:
                break
            for reading in model.step_tick():
                self.publish_object(reading.sub_topic, reading.obj)


if __name__ == "__main__":
    SubstationSimulator.main()
