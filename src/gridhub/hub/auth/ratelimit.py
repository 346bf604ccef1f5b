"""Rate limiting per credential: a token bucket for each caller, kept in this process.

Each key (a credential, or a login name for login attempts) may spend ``limit`` requests at once
and regains them evenly over ``window`` seconds. Several hub replicas each count on their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

_MAX_KEYS = 100_000


class RateLimiter:
    """Token buckets keyed by credential."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"rate limit: expected limit >= 1 and window > 0, got {limit} per {window} s")
        self.limit = limit
        self.window = window
        self._rate = limit / window
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Spend one request of key; return None when allowed, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.limit), now))
            tokens = min(float(self.limit), tokens + (now - stamp) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self._rate
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > _MAX_KEYS:
                self._forget_full(now)
            return None

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no state worth keeping)."""
        full = [k for k, (t, s) in self._buckets.items() if t + (now - s) * self._rate >= self.limit]
        for key in full:
            del self._buckets[key]
