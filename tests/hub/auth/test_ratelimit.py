"""Per-credential token buckets (driven by a hand-moved clock, no waiting)."""

from __future__ import annotations

import pytest

from gridhub.hub.auth import RateLimiter


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limit_is_per_key_and_refills_over_the_window() -> None:
    ticks = Ticks()
    limiter = RateLimiter(3, 60.0, clock=ticks)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    wait = limiter.hit("a")
    assert wait is not None and wait == pytest.approx(20.0)
    assert limiter.hit("b") is None  # another credential is not affected
    ticks.now = 20.0
    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None
    ticks.now = 1000.0
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]  # never more than the limit at once
    assert limiter.hit("a") is not None


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        RateLimiter(0, 60)
    with pytest.raises(ValueError, match="window > 0"):
        RateLimiter(10, 0)
