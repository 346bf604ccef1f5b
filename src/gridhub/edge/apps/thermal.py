"""Transformer thermal rating app (algorithm role): hot spot, ageing and capacity from load.

The model is the difference-equation solution of IEC 60076-7 (loading guide for mineral-oil
immersed power transformers, clause 8.2.3 of the 2005 edition): the top-oil temperature rise
follows the load with the oil time constant, and the hot spot sits above the top oil by two
first-order terms, a fast one that follows the winding time constant and a slower, negative one
that models the oil's delayed circulation (k21, k22). With K the load factor (current over rated
current), θa the ambient, Dt the time step::

    DΔθo  = Dt / (k11·τo)        · [((1 + K²R) / (1 + R))^x · Δθor - (θo - θa)]
    DΔθh1 = Dt / (k22·τw)        · [k21 · Δθhr · K^y - Δθh1]
    DΔθh2 = Dt / ((1/k22) · τo)  · [(k21 - 1) · Δθhr · K^y - Δθh2]
    θh    = θo + Δθh1 - Δθh2

The relative ageing rate is V = 2^((θh - 98)/6) for non-thermally-upgraded paper, or
V = exp(15000/(110 + 273) - 15000/(θh + 273)) for thermally upgraded paper, and the loss of
life is the sum of V·Dt (hours). Where a valid, fresh top-oil measurement arrives it replaces
the modelled top-oil state θo at that instant; the hot-spot rise terms carry on unchanged, so
the hot spot becomes "measured top oil + modelled gradient", as IEC 60076-7 recommends when
top oil is measured.

Time is message time (Annex 4, 4.5): the model advances from one input timestamp to the next,
holding the last valid load and ambient in between, so replaying a recording gives the same
outputs. Outputs are due every ``interval`` seconds of message time; each set is published
once all current phases have reported for that instant, or as soon as time moves on past it.
When inputs are stale or implausible the outputs are still published, with Valid false and
the latest input timestamp (4.8).

Outputs, on ``algorithm/data/<IID>/<transformer>/...`` (Scalar Objects unless noted, ToStore
true, retained Data Series Metadata on each ``.../meta``):

    temperature/hot-spot             °C    winding hot-spot temperature θh
    temperature/top-oil              °C    top-oil temperature θo (measured or modelled)
    ageing/rate                      1     relative ageing rate V
    ageing/loss-of-life              h     cumulative loss of life
    load/factor                      1     load factor K
    rating/continuous                A     current at which θh would settle at the limit
    rating/continuous-load-factor    1     the same as a load factor
    forecast/4h/capacity             A     Series: maximum permissible load per half hour
    forecast/4h/headroom             A     Series: capacity minus the present load

See docs/thermal.md for the configuration and the forecast's definition.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from gridhub.edge.settings import ConfigError, get_int, get_number, get_str, get_str_list, reject_unknown
from gridhub.formats.lvcap import LvcapError, validate_topic
from gridhub.sdk import (
    App,
    BrokerAddress,
    ConfigurationError,
    Errno,
    Input,
    MetadataObject,
    ScalarObject,
    SeriesObject,
)

log = logging.getLogger(__name__)

SIMULATOR = "sensor/data/gridhub_simulator_01"
DEFAULT_CURRENT_TOPICS = [f"{SIMULATOR}/60/transformer/l{phase}/current-mean" for phase in (1, 2, 3)]
DEFAULT_AMBIENT_TOPIC = f"{SIMULATOR}/10/ambient/temperature-outdoor"
DEFAULT_TOP_OIL_TOPIC = f"{SIMULATOR}/10/transformer/temperature-top-oil"

AMBIENT_RANGE = (-40.0, 60.0)  # °C: outside this an ambient reading is implausible
TOP_OIL_RANGE = (-40.0, 150.0)  # °C: a top-oil reading outside this is not used
STATE_FILE = "thermal-state.json"
_HOUR = 3600.0
_BISECTION_STEPS = 32


class Insulation(StrEnum):
    """Winding paper, which sets the ageing-rate formula."""

    NON_UPGRADED = "non-upgraded"  # Kraft paper: V doubles every 6 K above 98 °C
    UPGRADED = "upgraded"  # thermally upgraded paper, Arrhenius form referred to 110 °C


class PhaseCombination(StrEnum):
    """How the per-phase currents make one load factor."""

    MAX = "max"  # the most loaded phase (conservative: the hot spot is in that phase's winding)
    MEAN = "mean"


# -- the thermal model (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class ThermalParameters:
    """Thermal characteristics of one transformer (IEC 60076-7 symbols; temperatures in K, times in s).

    Defaults: a small 11 kV/400 V ONAN distribution transformer (IEC 60076-7 ONAN values).
    """

    top_oil_rise: float = 60.0  # Δθor: top-oil rise over ambient at rated load, K
    hot_spot_gradient: float = 23.0  # Δθhr = H·gr: hot-spot to top-oil gradient at rated current, K
    oil_exponent: float = 0.8  # x
    winding_exponent: float = 1.6  # y
    loss_ratio: float = 6.5  # R: load losses at rated current over no-load losses
    k11: float = 1.0
    k21: float = 1.0
    k22: float = 2.0
    oil_time_constant: float = 180 * 60.0  # τo, s
    winding_time_constant: float = 4 * 60.0  # τw, s

    def ultimate_top_oil_rise(self, load_factor: float) -> float:
        """Return the steady-state top-oil rise over ambient at load factor K, in K."""
        k2r = load_factor * load_factor * self.loss_ratio
        return self.top_oil_rise * float(((1.0 + k2r) / (1.0 + self.loss_ratio)) ** self.oil_exponent)

    def ultimate_hot_spot_rises(self, load_factor: float) -> tuple[float, float]:
        """Return the steady-state values of the two hot-spot rise terms (Δθh1, Δθh2) at load K."""
        gradient = self.hot_spot_gradient * load_factor**self.winding_exponent
        return self.k21 * gradient, (self.k21 - 1.0) * gradient

    @property
    def time_constants(self) -> tuple[float, float, float]:
        """Return the time constants of θo, Δθh1 and Δθh2 in seconds: k11·τo, k22·τw, τo/k22."""
        return (
            self.k11 * self.oil_time_constant,
            self.k22 * self.winding_time_constant,
            self.oil_time_constant / self.k22,
        )


@dataclass(frozen=True)
class ThermalState:
    """The model's state: top-oil temperature, the two hot-spot rise terms and the loss of life."""

    top_oil: float  # θo, °C
    rise_1: float  # Δθh1, K
    rise_2: float  # Δθh2, K
    loss_of_life: float = 0.0  # h

    @property
    def hot_spot(self) -> float:
        """Return the hot-spot temperature θh = θo + Δθh1 - Δθh2 in °C."""
        return self.top_oil + self.rise_1 - self.rise_2


def ageing_rate(hot_spot: float, insulation: Insulation = Insulation.NON_UPGRADED) -> float:
    """Return the relative ageing rate V at a hot-spot temperature (1 at 98 °C, or 110 °C upgraded)."""
    if insulation is Insulation.UPGRADED:
        return math.exp(15000.0 / (110.0 + 273.0) - 15000.0 / (hot_spot + 273.0))
    return float(2.0 ** ((hot_spot - 98.0) / 6.0))


def steady_state(
    params: ThermalParameters, load_factor: float, ambient: float, loss_of_life: float = 0.0
) -> ThermalState:
    """Return the state the model settles at under a constant load factor and ambient."""
    rise_1, rise_2 = params.ultimate_hot_spot_rises(load_factor)
    return ThermalState(ambient + params.ultimate_top_oil_rise(load_factor), rise_1, rise_2, loss_of_life)


def step(
    params: ThermalParameters,
    state: ThermalState,
    load_factor: float,
    ambient: float,
    dt: float,
    insulation: Insulation = Insulation.NON_UPGRADED,
) -> ThermalState:
    """Advance the difference equations by one time step of ``dt`` seconds.

    The loss of life grows by V(θh)·Dt with θh at the end of the step, as the standard sums it.
    """
    tau_oil, tau_1, tau_2 = params.time_constants
    target_1, target_2 = params.ultimate_hot_spot_rises(load_factor)
    top_oil = state.top_oil + dt / tau_oil * (params.ultimate_top_oil_rise(load_factor) - (state.top_oil - ambient))
    rise_1 = state.rise_1 + dt / tau_1 * (target_1 - state.rise_1)
    rise_2 = state.rise_2 + dt / tau_2 * (target_2 - state.rise_2)
    hot_spot = top_oil + rise_1 - rise_2
    loss = state.loss_of_life + ageing_rate(hot_spot, insulation) * dt / _HOUR
    return ThermalState(top_oil, rise_1, rise_2, loss)


def advance(
    params: ThermalParameters,
    state: ThermalState,
    load_factor: float,
    ambient: float,
    duration: float,
    *,
    max_step: float = 60.0,
    insulation: Insulation = Insulation.NON_UPGRADED,
) -> ThermalState:
    """Advance the model over ``duration`` seconds in equal steps of at most ``max_step``.

    IEC 60076-7 asks for a step no longer than half the smallest time constant for the
    difference equations to be stable; a long gap between inputs is therefore subdivided.
    """
    if duration <= 0:
        return state
    steps = max(1, math.ceil(duration / max_step))
    dt = duration / steps
    for _ in range(steps):
        state = step(params, state, load_factor, ambient, dt, insulation)
    return state


def hot_spot_after(
    params: ThermalParameters, state: ThermalState, load_factor: float, ambient: float, t: float
) -> float:
    """Return θh after ``t`` seconds at constant load and ambient (exact solution of the model's ODEs)."""
    tau_oil, tau_1, tau_2 = params.time_constants
    target_1, target_2 = params.ultimate_hot_spot_rises(load_factor)
    oil_target = ambient + params.ultimate_top_oil_rise(load_factor)
    top_oil = oil_target + (state.top_oil - oil_target) * math.exp(-t / tau_oil)
    rise_1 = target_1 + (state.rise_1 - target_1) * math.exp(-t / tau_1)
    rise_2 = target_2 + (state.rise_2 - target_2) * math.exp(-t / tau_2)
    return top_oil + rise_1 - rise_2


def continuous_load_factor(params: ThermalParameters, ambient: float, limit: float, max_load_factor: float) -> float:
    """Return the load factor at which the hot spot settles at ``limit`` (0..max_load_factor).

    At steady state θh = θa + Δθor·((1 + K²R)/(1 + R))^x + Δθhr·K^y, which rises with K, so
    bisection finds it; 0 when even no load exceeds the limit.
    """

    def settled(k: float) -> float:
        rise_1, rise_2 = params.ultimate_hot_spot_rises(k)
        return ambient + params.ultimate_top_oil_rise(k) + rise_1 - rise_2

    return _largest(lambda k: settled(k) <= limit, max_load_factor)


def permissible_load_factors(
    params: ThermalParameters,
    state: ThermalState,
    ambient: float,
    limit: float,
    horizons: Sequence[float],
    max_load_factor: float,
    *,
    ambient_rise_rate: float = 0.0,
    grid: float = 60.0,
) -> list[float]:
    """Return, for each horizon (s), the largest constant load factor keeping θh ≤ limit until then.

    The hot spot is checked every ``grid`` seconds (and at each horizon) on the exact solution
    of the model's differential equations for a constant load K, with the ambient rising at
    ``ambient_rise_rate`` K/s from its present value (0: persistence). At an instant t::

        θh(t, K) = a(t)·((1 + K²R)/(1 + R))^x + b(t)·K^y + c(t)

    with a = Δθor·(1 - e1), b = Δθhr·(1 - k21·e2 + (k21 - 1)·e3), e1..e3 the decays
    exp(-t/τ) of the three terms, and c(t) the part that does not depend on K (the present
    state decaying, the ambient). a, b ≥ 0, so θh rises with K and each instant has one
    largest permissible K (bisection); a horizon's answer is the smallest over the instants up
    to it. 0 when even no load keeps the hot spot within the limit.
    """
    tau_oil, tau_1, tau_2 = params.time_constants
    end = max(horizons, default=0.0)
    times = sorted({*(grid * i for i in range(1, math.floor(end / grid) + 1)), *horizons})
    ratio = 1.0 + params.loss_ratio
    x, y = params.oil_exponent, params.winding_exponent
    per_instant: list[float] = []
    for t in times:
        e1, e2, e3 = math.exp(-t / tau_oil), math.exp(-t / tau_1), math.exp(-t / tau_2)
        alpha = params.top_oil_rise * (1.0 - e1)
        beta = params.hot_spot_gradient * (1.0 - params.k21 * e2 + (params.k21 - 1.0) * e3)
        # The oil's response to a ramp r·t of the ambient is r·(t - τ·(1 - e1)).
        ramp = ambient_rise_rate * (t - tau_oil * (1.0 - e1))
        gamma = ambient * (1.0 - e1) + ramp + state.top_oil * e1 + state.rise_1 * e2 - state.rise_2 * e3
        room = limit - gamma

        def holds(k: float, alpha: float = alpha, beta: float = beta, room: float = room) -> bool:
            return bool(alpha * ((1.0 + k * k * params.loss_ratio) / ratio) ** x + beta * k**y <= room)

        per_instant.append(_largest(holds, max_load_factor))
    answers = []
    for horizon in horizons:
        within = [k for t, k in zip(times, per_instant, strict=True) if t <= horizon]
        answers.append(min(within, default=max_load_factor))
    return answers


def _largest(holds: Callable[[float], bool], upper: float) -> float:
    """Return the largest x in [0, upper] with holds(x), for a predicate true below some threshold."""
    if holds(upper):
        return upper
    if not holds(0.0):
        return 0.0
    low, high = 0.0, upper
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if holds(middle):
            low = middle
        else:
            high = middle
    return low


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThermalSettings:
    """The app's ContainerConfig, checked (see docs/thermal.md for every key)."""

    transformer: str = "T1"
    current_topics: tuple[str, ...] = tuple(DEFAULT_CURRENT_TOPICS)
    ambient_topic: str = DEFAULT_AMBIENT_TOPIC
    top_oil_topic: str = DEFAULT_TOP_OIL_TOPIC  # "" = no top-oil measurement
    rated_current: float = 500e3 / (math.sqrt(3) * 400.0)  # A per phase
    phases: PhaseCombination = PhaseCombination.MAX
    params: ThermalParameters = field(default_factory=ThermalParameters)
    insulation: Insulation = Insulation.NON_UPGRADED
    hot_spot_limit: float = 98.0
    max_load_factor: float = 1.5
    interval: float = 60.0
    stale_intervals: int = 3
    ambient_fallback: float | None = None
    ambient_drift: float = 1.0  # K/h: how far the ambient may wander from persistence
    forecast_interval: float = 1800.0
    forecast_steps: int = 8
    max_step: float = 60.0
    initial_loss_of_life: float = 0.0

    KEYS = (
        "transformer",
        "current_topics",
        "ambient_topic",
        "top_oil_topic",
        "rated_power",
        "rated_voltage",
        "rated_current",
        "phases",
        "top_oil_rise",
        "hot_spot_gradient",
        "winding_gradient",
        "hot_spot_factor",
        "oil_exponent",
        "winding_exponent",
        "loss_ratio",
        "k11",
        "k21",
        "k22",
        "oil_time_constant_min",
        "winding_time_constant_min",
        "insulation",
        "hot_spot_limit",
        "max_load_factor",
        "interval",
        "stale_intervals",
        "ambient_fallback",
        "ambient_drift",
        "forecast_interval",
        "forecast_steps",
        "max_step",
        "initial_loss_of_life",
    )

    @property
    def stale_after(self) -> float:
        """Return the age in seconds after which an input is stale."""
        return self.stale_intervals * self.interval

    @property
    def input_topics(self) -> tuple[str, ...]:
        """Return every topic the app subscribes to."""
        extra = (self.ambient_topic, self.top_oil_topic) if self.top_oil_topic else (self.ambient_topic,)
        return tuple(dict.fromkeys((*self.current_topics, *extra)))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ThermalSettings:
        """Check a ContainerConfig and return the settings; ConfigurationError says which key is wrong."""
        try:
            return cls._read(config, "ContainerConfig")
        except ConfigError as exc:
            raise ConfigurationError(str(exc)) from exc

    @classmethod
    def _read(cls, data: Mapping[str, Any], where: str) -> ThermalSettings:
        reject_unknown(data, cls.KEYS, where)
        transformer = get_str(data, "transformer", "T1", where)
        try:
            validate_topic(f"algorithm/data/x/{transformer}", f"{where} transformer")
        except LvcapError as exc:
            raise ConfigError(f"{exc} (it becomes a topic level, so use letters, digits, - and _)") from None
        current_topics = get_str_list(data, "current_topics", DEFAULT_CURRENT_TOPICS, where)
        if not current_topics:
            raise ConfigError(f"{where} current_topics: give at least one per-phase current topic")
        ambient_topic = get_str(data, "ambient_topic", DEFAULT_AMBIENT_TOPIC, where)
        top_oil_topic = get_str(data, "top_oil_topic", DEFAULT_TOP_OIL_TOPIC, where)
        for key, topic in [*(("current_topics", t) for t in current_topics), ("ambient_topic", ambient_topic)]:
            _check_input_topic(topic, f"{where} {key}")
        if top_oil_topic:
            _check_input_topic(top_oil_topic, f"{where} top_oil_topic")
        if "rated_current" in data:
            if "rated_power" in data:
                raise ConfigError(f"{where}: give rated_current or rated_power (with rated_voltage), not both")
            rated_current = get_number(data, "rated_current", 0, where, minimum=1e-3)
        else:
            power = get_number(data, "rated_power", 500e3, where, minimum=1.0)
            voltage = get_number(data, "rated_voltage", 400.0, where, minimum=1.0)
            rated_current = power / (math.sqrt(3) * voltage)
        phases = _choice(data, "phases", PhaseCombination, PhaseCombination.MAX, where)
        insulation = _choice(data, "insulation", Insulation, Insulation.NON_UPGRADED, where)
        if "winding_gradient" in data:
            if "hot_spot_gradient" in data:
                raise ConfigError(
                    f"{where}: give hot_spot_gradient (Δθhr) or winding_gradient with hot_spot_factor"
                    " (Δθhr = H·gr), not both"
                )
            gradient = get_number(data, "hot_spot_factor", 1.2, where, minimum=0.5, maximum=3.0) * get_number(
                data, "winding_gradient", 0, where, minimum=0.0, maximum=200.0
            )
        else:
            get_number(data, "hot_spot_factor", 1.2, where, minimum=0.5, maximum=3.0)  # checked, informative only
            gradient = get_number(data, "hot_spot_gradient", 23.0, where, minimum=0.0, maximum=200.0)
        params = ThermalParameters(
            top_oil_rise=get_number(data, "top_oil_rise", 60.0, where, minimum=1.0, maximum=200.0),
            hot_spot_gradient=gradient,
            oil_exponent=get_number(data, "oil_exponent", 0.8, where, minimum=0.1, maximum=3.0),
            winding_exponent=get_number(data, "winding_exponent", 1.6, where, minimum=0.1, maximum=5.0),
            loss_ratio=get_number(data, "loss_ratio", 6.5, where, minimum=0.0, maximum=100.0),
            k11=get_number(data, "k11", 1.0, where, minimum=0.1, maximum=10.0),
            k21=get_number(data, "k21", 1.0, where, minimum=1.0, maximum=10.0),
            k22=get_number(data, "k22", 2.0, where, minimum=0.1, maximum=10.0),
            oil_time_constant=60 * get_number(data, "oil_time_constant_min", 180.0, where, minimum=1.0, maximum=1e4),
            winding_time_constant=60
            * get_number(data, "winding_time_constant_min", 4.0, where, minimum=0.1, maximum=1e3),
        )
        _, tau_1, tau_2 = params.time_constants
        if tau_1 > tau_2:
            raise ConfigError(
                f"{where}: the winding term k22·τw ({tau_1 / 60:g} min) must be faster than the oil term"
                f" τo/k22 ({tau_2 / 60:g} min); check k22, oil_time_constant_min and winding_time_constant_min"
            )
        max_step = get_number(data, "max_step", 60.0, where, minimum=0.1, maximum=3600.0)
        shortest = min(params.time_constants)
        if max_step > shortest / 2:
            raise ConfigError(
                f"{where} max_step: {max_step:g} s is more than half the shortest time constant"
                f" ({shortest:g} s); the difference equations would be unstable"
            )
        fallback = data.get("ambient_fallback")
        if fallback is not None:
            low, high = AMBIENT_RANGE
            fallback = get_number(data, "ambient_fallback", 0, where, minimum=low, maximum=high)
        return cls(
            transformer=transformer,
            current_topics=tuple(current_topics),
            ambient_topic=ambient_topic,
            top_oil_topic=top_oil_topic,
            rated_current=rated_current,
            phases=phases,
            params=params,
            insulation=insulation,
            hot_spot_limit=get_number(data, "hot_spot_limit", 98.0, where, minimum=20.0, maximum=200.0),
            max_load_factor=get_number(data, "max_load_factor", 1.5, where, minimum=0.1, maximum=5.0),
            interval=get_number(data, "interval", 60.0, where, minimum=1.0, maximum=86400.0),
            stale_intervals=get_int(data, "stale_intervals", 3, where, minimum=1, maximum=1000),
            ambient_fallback=fallback,
            ambient_drift=get_number(data, "ambient_drift", 1.0, where, minimum=0.0, maximum=50.0),
            forecast_interval=get_number(data, "forecast_interval", 1800.0, where, minimum=60.0, maximum=86400.0),
            forecast_steps=get_int(data, "forecast_steps", 8, where, minimum=1, maximum=96),
            max_step=max_step,
            initial_loss_of_life=get_number(data, "initial_loss_of_life", 0.0, where, minimum=0.0),
        )


def _check_input_topic(topic: str, where: str) -> None:
    try:
        validate_topic(topic, where)
    except LvcapError as exc:
        raise ConfigError(str(exc)) from None


def _choice(data: Mapping[str, Any], key: str, kind: Any, default: Any, where: str) -> Any:
    text = get_str(data, key, str(default), where)
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(repr(str(member)) for member in kind)
        raise ConfigError(f"{where} {key}: expected one of {allowed}, got {text!r}") from None


# -- the rating engine: inputs in, outputs out (no I/O) -----------------------------------------


class Output(NamedTuple):
    """One object to publish on algorithm/data/<IID>/<sub_topic>."""

    sub_topic: str
    obj: ScalarObject | SeriesObject


@dataclass(frozen=True)
class OutputPoint:
    """Describe one output: its sub-topic under the transformer's name and its metadata (9.4)."""

    path: str
    name: str
    units: str
    sig_figs: int


OUTPUTS = (
    OutputPoint("temperature/hot-spot", "Winding hot-spot temperature", "°C", 4),
    OutputPoint("temperature/top-oil", "Top-oil temperature", "°C", 4),
    OutputPoint("ageing/rate", "Relative ageing rate", "1", 4),
    OutputPoint("ageing/loss-of-life", "Cumulative loss of life", "h", 6),
    OutputPoint("load/factor", "Load factor (current / rated current)", "1", 3),
    OutputPoint("rating/continuous", "Continuous rating at the present ambient", "A", 4),
    OutputPoint("rating/continuous-load-factor", "Continuous rating as a load factor", "1", 3),
    OutputPoint("forecast/4h/capacity", "Maximum permissible load per period, ambient persisting", "A", 4),
    OutputPoint("forecast/4h/headroom", "Permissible load minus the present load per period", "A", 4),
)


@dataclass
class _Reading:
    value: float
    timestamp: int
    usable: bool  # Valid and plausible


class InputError(ValueError):
    """An input message the app cannot use (not a Scalar Object)."""


class ThermalRating:
    """The rating algorithm for one transformer, driven by input messages' timestamps.

    ``on_input`` takes each reading and returns the outputs that became due; nothing here reads
    a clock or does I/O, so the same inputs always give the same outputs.
    """

    def __init__(self, settings: ThermalSettings, loss_of_life: float | None = None) -> None:
        self.settings = settings
        self.state: ThermalState | None = None
        self.readings: dict[str, _Reading] = {}
        self.last_timestamp: int | None = None  # latest input timestamp; the model is at this time
        self.next_due: int | None = None
        self.load_factor: float | None = None  # held: from the latest usable current of every phase
        self.ambient: float | None = None  # held: the latest usable ambient
        self.top_oil_measured = False
        self._loss_of_life = settings.initial_loss_of_life if loss_of_life is None else loss_of_life

    @property
    def loss_of_life(self) -> float:
        """Return the cumulative loss of life in hours."""
        return self.state.loss_of_life if self.state is not None else self._loss_of_life

    def on_input(self, topic: str, obj: Input) -> list[Output]:
        """Take one input message and return the outputs now due (often none)."""
        if not isinstance(obj, ScalarObject):
            raise InputError(f"{topic}: expected a Scalar Object (9.1), got {type(obj).__name__}")
        settings = self.settings
        timestamp = obj.timestamp
        outputs: list[Output] = []
        last = self.last_timestamp
        if last is not None and timestamp > last and self.next_due is not None and last >= self.next_due:
            # Time has moved on past a due instant whose inputs never completed: publish it now.
            outputs += self.outputs(last)
        if last is None or timestamp > last:
            self._advance_to(timestamp)
        if self.next_due is None:
            # Outputs are due from the first input on, valid or not (4.8).
            self.next_due = timestamp
        previous = self.readings.get(topic)
        if previous is None or timestamp >= previous.timestamp:
            value = obj.value
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
            usable = obj.valid and self._plausible(topic, number)
            if not usable:
                log.debug("%s: reading %r at %s is not valid or not plausible", topic, value, timestamp)
            self.readings[topic] = _Reading(number, timestamp, usable)
            self._hold_inputs()
            if (
                topic == settings.top_oil_topic
                and usable
                and self.state is not None
                and timestamp == self.last_timestamp
            ):
                # The measured top oil replaces the modelled top-oil state (see the module docstring).
                self.state = replace(self.state, top_oil=number)
                self.top_oil_measured = True
        if self.state is None:
            self._initialise()
        due = self.next_due
        if due is not None and self.last_timestamp is not None and self.last_timestamp >= due and self._complete():
            outputs += self.outputs(self.last_timestamp)
        return outputs

    def silent_outputs(self) -> list[Output]:
        """Return invalid outputs at the latest input timestamp, for when inputs stop arriving (4.8)."""
        if self.last_timestamp is None:
            return []
        return self.outputs(self.last_timestamp, force_invalid=True)

    def outputs(self, timestamp: int, *, force_invalid: bool = False) -> list[Output]:
        """Return the full output set for the model's present state, stamped ``timestamp``."""
        settings = self.settings
        params = settings.params
        self.next_due = timestamp + math.ceil(settings.interval)
        valid = not force_invalid and self._inputs_valid(timestamp)
        used = [r.timestamp for t, r in self.readings.items() if t in settings.input_topics]
        start = min(used) if used else timestamp
        steps = settings.forecast_steps
        state, load, ambient = self.state, self.load_factor, self.ambient
        if state is None or load is None or ambient is None:
            scalars: list[float] = [0.0] * 7
            capacity = headroom = confidence = [0.0] * steps
            valid = False
            scalars[3] = self.loss_of_life
        else:
            hot_spot = state.hot_spot
            rated = settings.rated_current
            k_cont = continuous_load_factor(params, ambient, settings.hot_spot_limit, settings.max_load_factor)
            capacity_k, confidence = self._forecast(state, ambient)
            capacity = [k * rated for k in capacity_k]
            headroom = [c - load * rated for c in capacity]
            scalars = [
                hot_spot,
                state.top_oil,
                ageing_rate(hot_spot, settings.insulation),
                state.loss_of_life,
                load,
                k_cont * rated,
                k_cont,
            ]
            if not valid:
                confidence = [0.0] * steps
        outputs = [
            Output(
                self._sub_topic(point),
                ScalarObject(
                    timestamp=timestamp, value=_significant(value, point.sig_figs + 2), valid=valid, to_store=True
                ),
            )
            for point, value in zip(OUTPUTS[:7], scalars, strict=True)
        ]
        for point, values in zip(OUTPUTS[7:], (capacity, headroom), strict=True):
            series = SeriesObject(
                timestamp=timestamp,
                start_point=timestamp,
                interval=settings.forecast_interval,
                value=[_significant(v, point.sig_figs + 2) for v in values],
                valid=valid,
                confidence=[round(c, 3) for c in confidence],
                timestamp_start=start,
                timestamp_end=timestamp,
                to_store=True,
            )
            outputs.append(Output(self._sub_topic(point), series))
        return outputs

    def metadata(self) -> list[tuple[str, MetadataObject]]:
        """Return the Data Series Metadata Object (9.4) of every output, by sub-topic."""
        return [
            (
                self._sub_topic(point),
                MetadataObject(name=point.name, units=point.units, display_units=point.units, sig_figs=point.sig_figs),
            )
            for point in OUTPUTS
        ]

    # -- internals -------------------------------------------------------------------------

    def _sub_topic(self, point: OutputPoint) -> str:
        return f"{self.settings.transformer}/{point.path}"

    def _plausible(self, topic: str, value: float) -> bool:
        settings = self.settings
        if not math.isfinite(value):
            return False
        if topic in settings.current_topics:
            return value >= 0.0
        if topic == settings.ambient_topic:
            return AMBIENT_RANGE[0] <= value <= AMBIENT_RANGE[1]
        if topic == settings.top_oil_topic:
            return TOP_OIL_RANGE[0] <= value <= TOP_OIL_RANGE[1]
        return False

    def _hold_inputs(self) -> None:
        settings = self.settings
        currents = [self.readings.get(topic) for topic in settings.current_topics]
        values = [r.value for r in currents if r is not None and r.usable]
        if len(values) == len(currents):
            combined = max(values) if settings.phases is PhaseCombination.MAX else sum(values) / len(values)
            self.load_factor = combined / settings.rated_current
        ambient = self.readings.get(settings.ambient_topic)
        if ambient is not None and ambient.usable:
            self.ambient = ambient.value
        elif self.ambient is None:
            self.ambient = settings.ambient_fallback

    def _fresh(self, topic: str, timestamp: int) -> bool:
        reading = self.readings.get(topic)
        return reading is not None and reading.usable and timestamp - reading.timestamp <= self.settings.stale_after

    def _inputs_valid(self, timestamp: int) -> bool:
        settings = self.settings
        if not all(self._fresh(topic, timestamp) for topic in settings.current_topics):
            return False
        return self._fresh(settings.ambient_topic, timestamp) or settings.ambient_fallback is not None

    def _complete(self) -> bool:
        """Tell whether every current phase has reported at the latest input timestamp."""
        last = self.last_timestamp
        return all(
            (reading := self.readings.get(topic)) is not None and reading.timestamp >= (last or 0)
            for topic in self.settings.current_topics
        )

    def _initialise(self) -> None:
        """Start the model in steady state at the first complete set of usable inputs."""
        if self.load_factor is None or self.ambient is None or self.last_timestamp is None:
            return
        settings = self.settings
        state = steady_state(settings.params, self.load_factor, self.ambient, self._loss_of_life)
        if settings.top_oil_topic and self._fresh(settings.top_oil_topic, self.last_timestamp):
            state = replace(state, top_oil=self.readings[settings.top_oil_topic].value)
            self.top_oil_measured = True
        self.state = state

    def _advance_to(self, timestamp: int) -> None:
        last = self.last_timestamp
        self.last_timestamp = timestamp
        if self.state is None or last is None or self.load_factor is None or self.ambient is None:
            return
        self.state = advance(
            self.settings.params,
            self.state,
            self.load_factor,
            self.ambient,
            float(timestamp - last),
            max_step=self.settings.max_step,
            insulation=self.settings.insulation,
        )

    def _forecast(self, state: ThermalState, ambient: float) -> tuple[list[float], list[float]]:
        """Return the permissible load factor per forecast period and the confidence in each.

        Period j's value is the largest constant load that, from now to the end of period j,
        keeps the hot spot at or below the limit with the ambient as it is now (persistence).
        Its confidence is the share of that load still permissible if the ambient instead rose
        steadily by ``ambient_drift`` K per hour from now: 1 when the answer is insensitive to
        the ambient, lower as the ambient matters more (further ahead, hotter transformer).
        """
        settings = self.settings
        horizons = [j * settings.forecast_interval for j in range(1, settings.forecast_steps + 1)]
        args = (settings.params, state, ambient, settings.hot_spot_limit, horizons, settings.max_load_factor)
        capacity = permissible_load_factors(*args)
        warmer = permissible_load_factors(*args, ambient_rise_rate=settings.ambient_drift / _HOUR)
        confidence = [1.0 if k <= 0 else max(0.0, min(1.0, w / k)) for k, w in zip(capacity, warmer, strict=True)]
        return capacity, confidence


def _significant(value: float, digits: int) -> float:
    """Round to ``digits`` significant figures (keeps payloads short; the model is not that exact)."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


# -- persisted loss of life (4.7) -----------------------------------------------------------


def load_loss_of_life(path: Path, transformer: str) -> float | None:
    """Return the loss of life saved for ``transformer`` in ``path``; None when there is none.

    Raises ValueError saying what is wrong when the file exists but cannot be used.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the saved loss of life: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); starting the loss of life from the configuration") from exc
    saved = data.get("LossOfLife") if isinstance(data, dict) else None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected an object with a LossOfLife object")
    value = saved.get(transformer)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{path}: LossOfLife.{transformer}: expected a non-negative number of hours, got {value!r}")
    return float(value)


def save_loss_of_life(path: Path, transformer: str, hours: float, timestamp: int) -> None:
    """Save the loss of life of ``transformer`` atomically (write a temporary file, then rename)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        saved = data["LossOfLife"] if isinstance(data, dict) and isinstance(data.get("LossOfLife"), dict) else {}
    except (OSError, ValueError):
        saved = {}
    saved[transformer] = hours
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"Timestamp": timestamp, "LossOfLife": saved}), encoding="utf-8")
    os.replace(temporary, path)


# -- the LV-CAP app ----------------------------------------------------------------------------


class ThermalRatingApp(App):
    """Run ThermalRating on the Data Marketplace: subscribe, publish outputs and metadata."""

    role = "algorithm"

    def __init__(
        self,
        iid: str | None = None,
        apid: str | None = None,
        *,
        broker: BrokerAddress | None = None,
        data_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(iid, apid, broker=broker, data_dir=data_dir, env=env)
        self.settings = ThermalSettings()
        self.engine = ThermalRating(self.settings)
        self._lock = threading.Lock()
        self._subscribed: tuple[str, ...] = ()
        self._last_input_at = 0.0  # monotonic: when the last input arrived
        self._last_silent_at = 0.0

    @property
    def state_file(self) -> Path:
        """Return the file keeping the loss of life across restarts, in the app's data directory."""
        return self.data_dir / STATE_FILE

    def configure(self, config: dict[str, Any]) -> None:
        """Check the ContainerConfig; on a change keep the loss of life and re-subscribe."""
        settings = ThermalSettings.from_config(config)
        with self._lock:
            previous = self.settings
            loss: float | None
            if self.running and previous.transformer == settings.transformer:
                loss = self.engine.loss_of_life
            else:
                loss = self._saved_loss_of_life(settings)
            self.settings = settings
            self.engine = ThermalRating(settings, loss)
        if self.running:
            self._resubscribe()
            if previous.transformer != settings.transformer:
                self._publish_metadata()

    def start(self) -> None:
        """Publish the metadata, subscribe to the inputs and watch for silence."""
        self._publish_metadata()
        self._resubscribe()
        self._last_input_at = time.monotonic()
        self.every(1.0, self._watch)

    def stop(self) -> None:
        """Save the loss of life."""
        with self._lock:
            self._save(self.engine.last_timestamp or 0)

    def _saved_loss_of_life(self, settings: ThermalSettings) -> float | None:
        try:
            return load_loss_of_life(self.state_file, settings.transformer)
        except ValueError as exc:
            self.report_error(Errno.FILE_DIRECTORY, str(exc))
            return None

    def _publish_metadata(self) -> None:
        for sub_topic, metadata in self.engine.metadata():
            self.publish_metadata(sub_topic, metadata)

    def _resubscribe(self) -> None:
        wanted = self.settings.input_topics
        for topic in self._subscribed:
            if topic not in wanted:
                self.unsubscribe(topic)
        for topic in wanted:
            if topic not in self._subscribed:
                self.subscribe(topic, self._on_input)
        self._subscribed = wanted

    def _on_input(self, topic: str, obj: Input) -> None:
        self._last_input_at = time.monotonic()
        with self._lock:
            try:
                outputs = self.engine.on_input(topic, obj)
            except InputError as exc:
                self.report_error(Errno.SENSOR, str(exc))
                return
            self._publish(outputs)

    def _watch(self) -> None:
        """Keep publishing (Valid false) when no input has arrived for the stale time (4.8)."""
        current = time.monotonic()
        window = self.settings.stale_after
        if current - self._last_input_at < window or current - self._last_silent_at < self.settings.interval:
            return
        with self._lock:
            outputs = self.engine.silent_outputs()
            if outputs:
                log.info("%s: no input for %.0f s; publishing invalid outputs", self.iid, current - self._last_input_at)
                self._last_silent_at = current
                self._publish(outputs)

    def _publish(self, outputs: Sequence[Output]) -> None:
        for sub_topic, obj in outputs:
            self.publish_object(sub_topic, obj)
        if outputs:
            self._save(outputs[0].obj.timestamp)

    def _save(self, timestamp: int) -> None:
        try:
            save_loss_of_life(self.state_file, self.settings.transformer, self.engine.loss_of_life, timestamp)
        except OSError as exc:
            log.warning("%s: cannot save the loss of life: %s", self.iid, exc)


if __name__ == "__main__":
    ThermalRatingApp.main()
