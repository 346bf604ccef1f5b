"""The SQLite backend: its file, its physical layout and concurrent writers."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gridhub.hub.model import Sample, Series
from gridhub.hub.store import Store, StoreError, open_store

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_plain_path_creates_the_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "var" / "hub" / "hub.sqlite"
    with open_store(str(path)) as store:
        assert store.backend == "sqlite"
    assert path.is_file()
    with open_store(f"sqlite:///{path}") as store:
        assert store.list_layers() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "needs a file"),
        ("sqlite:///:memory:", "needs a file"),
        ("sqlite+aiosqlite:///x.db", "only the built-in sqlite3 driver"),
    ],
)
def test_bad_sqlite_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_samples_are_a_without_rowid_table_keyed_by_series_and_time(sqlite_store: Store, tmp_path: Path) -> None:
    sqlite_store.put_series(Series(key="a/x", layer="grid", asset="a", name="x"))
    sqlite_store.write_samples([Sample("a/x", T0 + timedelta(microseconds=1), 1.0)])
    con = sqlite3.connect(tmp_path / "hub.sqlite")
    try:
        ddl = con.execute("SELECT sql FROM sqlite_master WHERE name = 'samples'").fetchone()[0]
        assert "WITHOUT ROWID" in ddl and "PRIMARY KEY (series_id, ts)" in ddl
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # time is stored as integer microseconds since the epoch
        assert con.execute("SELECT ts, typeof(ts) FROM samples").fetchone() == (1704067200000001, "integer")
        plan = " ".join(str(r) for r in con.execute("EXPLAIN QUERY PLAN SELECT * FROM samples WHERE series_id = 1"))
        assert "USING PRIMARY KEY" in plan
    finally:
        con.close()


def test_two_processes_worth_of_writers_do_not_lock_each_other_out(tmp_path: Path) -> None:
    path = str(tmp_path / "hub.sqlite")
    stores = [open_store(path), open_store(path)]
    errors: list[BaseException] = []
    try:
        for i, store in enumerate(stores):
            store.put_series(Series(key=f"s{i}/x", layer="grid", asset=f"s{i}", name="x"))

        def write(i: int) -> None:
            try:
                for batch in range(20):
                    start = T0 + timedelta(hours=batch)
                    stores[i].write_samples([Sample(f"s{i}/x", start + timedelta(minutes=m), 1.0) for m in range(60)])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert stores[0].count_samples() == 2 * 20 * 60
    finally:
        for store in stores:
            store.close()


def test_compact_has_nothing_to_do(sqlite_store: Store) -> None:
    assert sqlite_store.compact() == []
