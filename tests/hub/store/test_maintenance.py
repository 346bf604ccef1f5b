"""Background compaction and retention (gridhub.hub.store.maintenance), their wiring into the hub's lifespan, CLI."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gridhub.hub.app import create_app
from gridhub.hub.cli import hub as hub_cli
from gridhub.hub.faces.edge.ingest import ledger_key
from gridhub.hub.model import Layer, Sample, Series
from gridhub.hub.settings import HubConfigError, HubSettings
from gridhub.hub.store import Store, open_store
from gridhub.hub.store.maintenance import Compactor, RetentionRunner
from tests.conftest import wait_for
from tests.hub.auth.conftest import Clock, clock, hub_pg_database, store_url  # noqa: F401 - fixtures
from tests.hub.faces.xflex.conftest import make_settings, start_hub


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


# -- retention -------------------------------------------------------------------------------------

DAY = timedelta(days=1)


def _layers_with_old_and_new_samples(store: Store, now: datetime) -> tuple[str, str]:
    """A 'grid' layer keeping samples 30 days and a 'lab' layer keeping them for ever; 10 daily samples each."""
    store.put_layer(Layer.from_document({**_LAYER, "_id": "grid", "config": {"retention_days": 30}}))
    store.put_layer(Layer.from_document({**_LAYER, "_id": "lab"}))
    trimmed, kept = "grid/f1/voltage", "lab/rig/temperature"
    for key, layer in ((trimmed, "grid"), (kept, "lab")):
        store.put_series(Series(key=key, layer=layer, asset=key.split("/")[1], name=key.rsplit("/", 1)[1]))
        store.write_samples([Sample(key, now - (25 + i) * DAY, float(i)) for i in range(10)])  # 25-34 days old
    return trimmed, kept


_LAYER = {"label": "x", "description": "", "collections": []}


def test_retention_runner_deletes_what_is_older_than_the_layer_keeps(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    trimmed, kept = _layers_with_old_and_new_samples(store, now)
    runner = RetentionRunner(store, 3600)
    with caplog.at_level(logging.INFO, logger="gridhub.hub.store.maintenance"):
        assert runner.run_once() == {"grid": 5}  # 30-34 days old; 'lab' has no retention
        assert runner.run_once() == {"grid": 0}
    assert runner.runs == 2
    remaining = store.read_range(trimmed, now - 100 * DAY, now)
    assert len(remaining) == 5 and min(remaining.timestamps()) > now - 30 * DAY
    assert store.count_samples(kept) == 10
    assert "store retention: deleted 5 sample(s) older than their layer's retention: grid 5" in caplog.messages
    assert "store retention: nothing older than a layer's retention (1 layer(s) with one)" in caplog.messages


def test_retention_interval_setting() -> None:
    assert HubSettings().retention_interval == 3600.0
    with pytest.raises(HubConfigError, match=r"maintenance\.retention_interval"):
        HubSettings(retention_interval=-1).validate()
    with pytest.raises(ValueError, match=r"maintenance\.retention_interval"):
        RetentionRunner(None, -1)  # type: ignore[arg-type]
    loaded = HubSettings.from_mapping({"maintenance": {"retention_interval": 0}}, where="test")
    assert loaded["retention_interval"] == 0


def test_a_running_hub_ages_out_uploaded_samples_and_their_dedupe_ledger(
    store_url: str,  # noqa: F811
    tmp_path: Path,
    clock: Clock,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(store_url, tmp_path / "hub", retention_interval=0.1)
    now = int(datetime.now(UTC).timestamp())
    old, recent = now - 40 * 86400, now - 86400  # the edge layer keeps 30 days
    rows = [
        {
            "ID": i,
            "Timestamp": ts,
            "SubTopic": "/60/busbar/l1/voltage-mean",
            "Data": {"Timestamp": ts, "Value": 230.0 + i, "Valid": True},
        }
        for i, ts in ((1, old), (2, old + 60), (3, recent), (4, recent + 60))
    ]
    with caplog.at_level(logging.INFO, logger="gridhub.hub.store.maintenance"), start_hub(settings, clock) as hub:
        hub.put_layer(
            {"_id": "edge", **_LAYER, "collections": [{"name": "substations"}], "config": {"retention_days": 30}}
        )
        token = hub.auth.issue_site_token("site-a")
        body = {"Batch": "b1", "Tables": [{"TableName": "gridhub_simulator_01", "TableRows": rows}]}
        response = hub.client.post("/edge/v1/upload", json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == {"gridhub_simulator_01": [1, 2, 3, 4]}, response.text
        store = hub.client.app.state.ctx.store  # type: ignore[attr-defined]
        ledger = ledger_key("site-a", "gridhub_simulator_01")
        data = [s.key for s in store.list_series(layer="edge") if s.key != ledger]
        assert data, "the upload created no data series"

        def times(key: str) -> list[datetime]:
            return store.read_range(key, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC)).timestamps()

        wait_for(lambda: len(times(ledger)) == 2, "the hub's retention to delete the old ledger marks")
        wait_for(lambda: all(len(times(key)) == 2 for key in data), "the hub's retention to delete the old samples")
        cutoff = datetime.fromtimestamp(now - 31 * 86400, UTC)
        assert all(t > cutoff for key in [ledger, *data] for t in times(key))  # the recent rows stay
        retention = hub.client.app.state.retention  # type: ignore[attr-defined]
    assert retention._thread is None  # stopped with the application
    assert any(m.startswith("store retention: deleted ") and "edge " in m for m in caplog.messages)


def test_retention_run_command_prints_what_it_deleted(store_url: str, tmp_path: Path) -> None:  # noqa: F811
    now = datetime.now(UTC)
    with open_store(store_url) as store:
        trimmed, kept = _layers_with_old_and_new_samples(store, now)
    config = tmp_path / "hub.toml"
    config.write_text(f'version = 1\nstore = "{store_url}"\n', encoding="utf-8")
    result = CliRunner().invoke(hub_cli, ["retention", "run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "layer grid: deleted 5 sample(s) older than 30 day(s)" in result.output
    assert "layer lab: no retention (samples are kept for ever)" in result.output
    assert "retention: deleted 5 sample(s) in all" in result.output
    with open_store(store_url) as store:
        assert store.count_samples(trimmed) == 5 and store.count_samples(kept) == 10
