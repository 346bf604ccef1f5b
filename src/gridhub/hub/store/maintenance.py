"""Background store maintenance on timers: compaction and retention.

- :class:`Compactor` runs ``Store.compact()`` every ``maintenance.compact_interval`` seconds. On
  PostgreSQL it CLUSTERs each finished monthly samples partition once (see
  :meth:`gridhub.hub.store.postgresql.PostgresStore.compact`); on SQLite it does nothing.
- :class:`RetentionRunner` runs ``Store.apply_retention()`` every ``maintenance.retention_interval``
  seconds: the samples of each layer with ``config.retention_days`` older than that are deleted
  (the edge upload dedupe ledger is samples of the layer too, so its marks age out with them).

The hub runs each in a daemon thread so the API is never blocked, one run at a time, and logs
what it did. An interval of 0 turns a timer off.
"""

from __future__ import annotations

import abc
import logging
import threading
from typing import Generic, TypeVar

from gridhub.hub.store import Store

__all__ = ["Compactor", "RetentionRunner"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Timer(abc.ABC, Generic[T]):
    """Run one maintenance task every ``interval`` seconds in a background thread (0: never)."""

    what = "maintenance"
    setting = "interval"
    run_at_start = False

    def __init__(self, store: Store, interval: float) -> None:
        if interval < 0:
            raise ValueError(f"{self.setting}: expected 0 (off) or a positive number of seconds, got {interval}")
        self.store = store
        self.interval = interval
        self.runs = 0
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def _run(self) -> T:
        """Do the task once."""

    @abc.abstractmethod
    def _report(self, result: T) -> None:
        """Log what a run did."""

    def start(self) -> None:
        """Start the timer thread (nothing when the interval is 0)."""
        if self.interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"store-{self.what}", daemon=True)
        self._thread.start()
        log.info("store %s every %g s", self.what, self.interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the timer; a run in progress finishes first (waited for up to ``timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def run_once(self) -> T | None:
        """Run the task now; return what it did, or None when a run was already in progress or failed."""
        if not self._busy.acquire(blocking=False):
            log.info("store %s still running; this run is skipped", self.what)
            return None
        try:
            result = self._run()
        except Exception:
            log.exception("store %s failed; it is tried again in %g s", self.what, self.interval)
            return None
        finally:
            self._busy.release()
        self.runs += 1
        self._report(result)
        return result

    def _loop(self) -> None:
        if self.run_at_start:
            self.run_once()
        while not self._stop.wait(self.interval):
            self.run_once()


class Compactor(_Timer[list[str]]):
    """Run ``store.compact()`` every ``interval`` seconds in a background thread; the first run is one interval away."""

    what = "compaction"
    setting = "compact interval"

    def _run(self) -> list[str]:
        return self.store.compact()

    def _report(self, result: list[str]) -> None:
        if result:
            log.info("store compaction: clustered %d partition(s): %s", len(result), ", ".join(result))
        else:
            log.info("store compaction: nothing to do")


class RetentionRunner(_Timer[dict[str, int]]):
    """Run ``store.apply_retention()`` at start-up and then every ``interval`` seconds in a background thread.

    A run returns the samples deleted per layer that has a retention (layers without one keep
    everything and are not listed).
    """

    what = "retention"
    setting = "maintenance.retention_interval"
    run_at_start = True

    def _run(self) -> dict[str, int]:
        return self.store.apply_retention()

    def _report(self, result: dict[str, int]) -> None:
        deleted = sum(result.values())
        if deleted:
            per_layer = ", ".join(f"{layer} {count}" for layer, count in sorted(result.items()) if count)
            log.info("store retention: deleted %d sample(s) older than their layer's retention: %s", deleted, per_layer)
        else:
            log.info("store retention: nothing older than a layer's retention (%d layer(s) with one)", len(result))
