"""Sparklines: a series of (time, value) points as the ``points`` of an inline SVG polyline.

Pure: the status page draws each chart as ``<svg viewBox="0 0 W H"><polyline points="..."/></svg>``,
with time along x (gaps in time stay gaps in x) and the value range filling the height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["HEIGHT", "WIDTH", "Sparkline", "sparkline"]

WIDTH = 240
HEIGHT = 48
_PAD = 2.0


@dataclass(frozen=True)
class Sparkline:
    """A drawn chart: the polyline points, the value range and the time span it covers."""

    points: str
    low: float
    high: float
    first: datetime
    last: datetime
    width: int = WIDTH
    height: int = HEIGHT


def sparkline(values: Sequence[tuple[datetime, float]], width: int = WIDTH, height: int = HEIGHT) -> Sparkline | None:
    """Scale (time, value) points, oldest first, into a width x height box; None when there are none.

    Non-finite values are skipped. A flat series is drawn across the middle.
    """
    finite = [(ts, v) for ts, v in values if math.isfinite(v)]
    if not finite:
        return None
    first, last = finite[0][0], finite[-1][0]
    low = min(v for _, v in finite)
    high = max(v for _, v in finite)
    span = (last - first).total_seconds()
    inner_w, inner_h = width - 2 * _PAD, height - 2 * _PAD
    coords = []
    for ts, value in finite:
        x = _PAD + (inner_w * (ts - first).total_seconds() / span if span > 0 else inner_w / 2)
        y = _PAD + (inner_h * (high - value) / (high - low) if high > low else inner_h / 2)
        coords.append(f"{x:.1f},{y:.1f}")
    return Sparkline(" ".join(coords), low, high, first, last, width, height)
