"""Sparklines: time along x, the value range filling the height."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gridhub.hub.web.sparkline import sparkline

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _coords(points: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in points.split())]


def test_points_are_scaled_into_the_box_with_time_along_x() -> None:
    line = sparkline([(T0, 10.0), (T0 + timedelta(minutes=10), 30.0), (T0 + timedelta(minutes=40), 20.0)], 100, 20)
    assert line is not None
    assert (line.low, line.high, line.first, line.last) == (10.0, 30.0, T0, T0 + timedelta(minutes=40))
    assert _coords(line.points) == [(2.0, 18.0), (26.0, 2.0), (98.0, 10.0)]  # a 2-unit margin; high is at the top


def test_flat_single_empty_and_non_finite_series() -> None:
    flat = sparkline([(T0, 5.0), (T0 + timedelta(hours=1), 5.0)], 100, 20)
    assert flat is not None and [y for _, y in _coords(flat.points)] == [10.0, 10.0]
    single = sparkline([(T0, 1.0)], 100, 20)
    assert single is not None and _coords(single.points) == [(50.0, 10.0)]
    assert sparkline([]) is None
    assert sparkline([(T0, float("nan"))]) is None
    skipped = sparkline([(T0, 1.0), (T0 + timedelta(minutes=1), float("inf")), (T0 + timedelta(minutes=2), 3.0)])
    assert skipped is not None and len(skipped.points.split()) == 2
