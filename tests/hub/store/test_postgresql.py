"""The PostgreSQL backend: monthly partitions, the COPY bulk path and its fall-back, connection errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from gridhub.hub.model import Quality, Sample, Series
from gridhub.hub.store import Store, StoreError, open_store
from gridhub.hub.store.postgresql import PostgresStore, partition_name, postgres_url
from tests.conftest import free_port

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def series(store: Store, key: str = "a/x") -> str:
    store.put_series(Series(key=key, layer="grid", asset="a", name="x"))
    return key


def test_partitions_are_created_per_month_on_demand(pg_store: Store) -> None:
    assert isinstance(pg_store, PostgresStore)
    key = series(pg_store)
    before = set(pg_store.partitions())
    pg_store.write_samples([Sample(key, datetime(2031, m, 15, tzinfo=UTC), float(m)) for m in (1, 3)])
    # a batch spanning a few months gets each month of its span
    assert set(pg_store.partitions()) - before == {"samples_y2031m01", "samples_y2031m02", "samples_y2031m03"}
    pg_store.write_samples([Sample(key, datetime(2031, 3, 31, 23, 59, 59, tzinfo=UTC), 9.0)])  # existing month
    assert len(pg_store.partitions()) == len(before) + 3
    with pg_store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM samples_y2031m03")).scalar()
        assert rows == 2
        key_columns = conn.execute(
            sa.text(
                "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = 'samples_y2031m03'::regclass AND i.indisprimary"
            )
        ).scalar()
        assert key_columns == ["series_id", "ts"]


def test_far_apart_times_create_only_their_months(pg_store: Store) -> None:
    assert isinstance(pg_store, PostgresStore)
    key = series(pg_store)
    before = set(pg_store.partitions())
    far = [datetime(1990, 6, 1, tzinfo=UTC), datetime(2001, 3, 9, tzinfo=UTC), T0]
    pg_store.write_samples([Sample(key, ts, 1.0) for ts in far])
    assert set(pg_store.partitions()) - before <= {
        partition_name(1990, 6),
        partition_name(2001, 3),
        partition_name(2024, 1),
    }
    assert {partition_name(1990, 6), partition_name(2001, 3)} <= set(pg_store.partitions())
    assert pg_store.count_samples(key) == 3


def test_one_month_range_reads_one_partition(pg_store: Store) -> None:
    assert isinstance(pg_store, PostgresStore)
    key = series(pg_store)
    pg_store.write_samples([Sample(key, T0 + timedelta(days=d), 1.0) for d in range(0, 95, 5)])
    with pg_store.engine.connect() as conn:
        plan = "\n".join(
            conn.execute(
                sa.text(
                    "EXPLAIN SELECT ts, value FROM samples WHERE series_id = 1 "
                    "AND ts >= '2024-02-01T00:00:00Z' AND ts < '2024-03-01T00:00:00Z' ORDER BY ts"
                )
            ).scalars()
        )
    assert "samples_y2024m02" in plan
    assert "samples_y2024m01" not in plan and "samples_y2024m03" not in plan


def test_resent_batch_goes_through_staging_and_replaces(pg_store: Store) -> None:
    key = series(pg_store)
    first = [Sample(key, T0 + timedelta(minutes=i), float(i)) for i in range(1000)]
    pg_store.write_samples(first)
    again = [Sample(key, x.ts, x.value + 0.5 if x.value is not None else None, quality=Quality.CURATED) for x in first]
    pg_store.write_samples([*again, Sample(key, T0 - timedelta(minutes=1), -1.0)])
    assert pg_store.count_samples(key) == 1001
    readings = pg_store.read_range(key, T0, T0 + timedelta(minutes=2))
    assert [(r.value, r.quality) for r in readings] == [(0.5, Quality.CURATED), (1.5, Quality.CURATED)]
    # the staging table is emptied for the next batch on the same connection
    pg_store.write_samples(again[:10])
    assert pg_store.count_samples(key) == 1001


def test_unreachable_server_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        open_store(f"postgresql://postgres@127.0.0.1:{port}/hub")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@h:5433/hub", "postgresql+psycopg://u:pw@h:5433/hub"),
        ("postgres://u@h/hub", "postgresql+psycopg://u@h/hub"),
    ],
)
def test_postgres_url(url: str, expected: str) -> None:
    assert postgres_url(url) == expected


def test_postgres_url_needs_a_database() -> None:
    with pytest.raises(StoreError, match="the database name is missing"):
        postgres_url("postgresql://u@h:5432")


def test_compact_clusters_closed_months_once(pg_store: Store) -> None:
    assert isinstance(pg_store, PostgresStore)
    keys = [series(pg_store, f"s{i}/x") for i in range(3)]
    start = datetime(2032, 1, 31, 23, 0, tzinfo=UTC)  # time-major over two months
    pg_store.write_samples([Sample(k, start + timedelta(minutes=m), float(m)) for m in range(120) for k in keys])
    done = pg_store.compact(now=datetime(2032, 2, 10, tzinfo=UTC))
    assert "samples_y2032m01" in done and "samples_y2032m02" not in done  # February is still open
    assert "samples_y2032m01" not in pg_store.compact(now=datetime(2032, 2, 10, tzinfo=UTC))  # once
    with pg_store.engine.connect() as conn:
        order = conn.execute(sa.text("SELECT series_id FROM samples_y2032m01")).scalars().all()
    assert order == sorted(order)  # physically series-major now
    got = pg_store.read_range(keys[1], start, start + timedelta(hours=2))
    assert got.values() == [float(m) for m in range(120)]
