"""Background compaction (gridhub.hub.store.maintenance) and its wiring into the hub's lifespan."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gridhub.hub.app import create_app
from gridhub.hub.model import Layer, Sample, Series
from gridhub.hub.settings import HubConfigError, HubSettings
from gridhub.hub.store import Store
from gridhub.hub.store.maintenance import Compactor
from tests.conftest import wait_for


def _closed_month_samples(store: Store) -> None:
    store.put_layer(Layer(id="m", label="m"))
    keys = [f"c{i}/x" for i in range(3)]
    for key in keys:
        store.put_series(Series(key=key, layer="m", asset="a", name=key))
    start = datetime(2001, 3, 31, 23, 0, tzinfo=UTC)  # time-major over two months, both long closed
    store.write_samples([Sample(k, start + timedelta(minutes=m), float(m)) for m in range(120) for k in keys])


def test_compactor_clusters_closed_partitions_in_the_background(pg_store: Store) -> None:
    _closed_month_samples(pg_store)
    compactor = Compactor(pg_store, 0.05)
    compactor.start()
    try:
        wait_for(lambda: compactor.runs >= 2, "two compaction runs")
    finally:
        compactor.stop()
    with pg_store.engine.connect() as conn:  # type: ignore[attr-defined]
        clustered = dict(
            conn.execute(
                sa.text(
                    "SELECT c.relname, i.indisclustered FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid "
                    "JOIN pg_class p ON p.oid = h.inhparent JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
                    "WHERE p.relname = 'samples'"
                )
            ).all()
        )
        order = conn.execute(sa.text("SELECT series_id FROM samples_y2001m03")).scalars().all()
    assert clustered["samples_y2001m03"] and clustered["samples_y2001m04"]
    assert order == sorted(order)


def test_compactor_never_runs_twice_at_once(sqlite_store: Store) -> None:
    entered, release = threading.Event(), threading.Event()
    real = sqlite_store.compact

    def slow_compact(now: datetime | None = None, *, force: bool = False) -> list[str]:
        entered.set()
        release.wait(5)
        return real(now, force=force)

    sqlite_store.compact = slow_compact  # type: ignore[method-assign]
    compactor = Compactor(sqlite_store, 3600)
    first = threading.Thread(target=compactor.run_once)
    first.start()
    assert entered.wait(5)
    assert compactor.run_once() is None  # skipped: the first run is still going
    release.set()
    first.join(5)
    assert compactor.runs == 1
    assert compactor.run_once() == []  # SQLite keeps samples in key order: nothing to do
    assert compactor.runs == 2


def test_compactor_off_and_bad_interval(sqlite_store: Store) -> None:
    compactor = Compactor(sqlite_store, 0)
    compactor.start()
    assert compactor._thread is None
    compactor.stop()
    with pytest.raises(ValueError, match="compact interval"):
        Compactor(sqlite_store, -1)
    with pytest.raises(HubConfigError, match=r"maintenance\.compact_interval"):
        HubSettings(compact_interval=-5).validate()


def test_hub_runs_compaction_during_its_lifespan(tmp_path: Path) -> None:
    app = create_app(HubSettings(data_dir=tmp_path, compact_interval=0.05))
    with TestClient(app):
        compactor = app.state.compactor
        wait_for(lambda: compactor.runs >= 1, "the hub's first compaction run")
    assert compactor._thread is None  # stopped with the application
