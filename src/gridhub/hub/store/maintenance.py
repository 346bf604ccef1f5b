"""Background store maintenance: ``Store.compact()`` on a timer (hub setting ``maintenance.compact_interval``).

On PostgreSQL ``compact`` CLUSTERs each finished monthly samples partition once (see
:meth:`gridhub.hub.store.postgresql.PostgresStore.compact`); on SQLite it does nothing. The hub
runs it in a daemon thread so the API is never blocked, one run at a time, and logs what it did.
"""

from __future__ import annotations

import logging
import threading

from gridhub.hub.store import Store

__all__ = ["Compactor"]

log = logging.getLogger(__name__)


class Compactor:
    """Run ``store.compact()`` every ``interval`` seconds in a background thread (0: never)."""

    def __init__(self, store: Store, interval: float) -> None:
        if interval < 0:
            raise ValueError(f"compact interval: expected 0 (off) or a positive number of seconds, got {interval}")
        self.store = store
        self.interval = interval
        self.runs = 0
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread (nothing when the interval is 0); the first run is one interval away."""
        if self.interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="store-compact", daemon=True)
        self._thread.start()
        log.info("store compaction every %g s", self.interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the timer; a run in progress finishes first (waited for up to ``timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def run_once(self) -> list[str] | None:
        """Compact now; return what was compacted, or None when a run was already in progress or failed."""
        if not self._busy.acquire(blocking=False):
            log.info("store compaction still running; this run is skipped")
            return None
        try:
            done = self.store.compact()
        except Exception:
            log.exception("store compaction failed; it is tried again in %g s", self.interval)
            return None
        finally:
            self._busy.release()
        self.runs += 1
        if done:
            log.info("store compaction: clustered %d partition(s): %s", len(done), ", ".join(done))
        else:
            log.info("store compaction: nothing to do")
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()
