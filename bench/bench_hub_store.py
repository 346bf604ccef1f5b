"""Hub store: bulk sample writes and one-series reads, each held against the raw driver in the same run.

Targets (issue 4, "Tests and benchmarks"):

(a) Readings/s written through ``Store.write_samples`` (10,000 samples per call, one transaction
    each): into PostgreSQL at least 0.5x a raw psycopg binary COPY of the same rows into a plain
    table with the same columns and primary key (one COPY + commit per 10,000 rows, limits.md 3a);
    into SQLite at least 0.5x a raw sqlite3 ``executemany`` of the same rows into the same schema
    (same file layout, same pragmas, one transaction per 10,000 rows). Rows are time-major (every
    series for one minute, then the next minute), the order live data arrives in; 1000 series;
    the store's input is ``Sample`` objects built before the clock starts, the reference's the
    equivalent tuples. Each run starts from an empty table; store and raw runs alternate.

(b) A store of at least 10 million samples (240 series x 30 days of 60-s data = 10,368,000,
    loaded time-major through the store): ``read_range`` of one series for the month (43,200
    rows) and ``aggregate`` of the same month by day (30 rows), each within 1.5x of the same SQL
    run through the raw driver (sqlite3; psycopg with a binary cursor), p50 under 30 ms. Each
    round takes 10 random series; the first round is not counted. PostgreSQL is measured after
    ``Store.compact()`` (the month is closed: its partition is CLUSTERed on (series_id, ts)); one
    round before compaction is printed for information.

``--quick`` uses 100,000 rows for (a) and 24 series (1,036,800 samples) for (b): numbers not
comparable. PostgreSQL is the server on 127.0.0.1:5432 (user postgres, trust), or the URL in
GRIDHUB_BENCH_POSTGRES; a database ``gridhub_bench_<pid>`` is created and dropped.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Options, Summary, Verdict, console, header, port_open, progress, ratio

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
BATCH = 10_000
INSERT_SERIES = 1000
INSERT_ROWS = {False: 1_000_000, True: 100_000}
BIG_SERIES = {False: 240, True: 24}
BIG_DAYS = 30
LOAD_BATCH = 100_000
INSERT_TARGET = 0.5
READ_TARGET = 1.5
P50_TARGET_MS = 30.0
PG_URL = os.environ.get("GRIDHUB_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _key(i: int) -> str:
    return f"substation-{i:04d}/transformer/L1/current/mean"


def _series(store: Any, count: int) -> dict[str, int]:
    """Create the benchmark's series; return key -> id."""
    from gridhub.hub.model import Series, Statistic

    return {
        _key(i): store.put_series(
            Series(
                key=_key(i),
                layer="bench",
                asset=f"substation-{i:04d}",
                name="current",
                unit="A",
                phase="L1",
                statistic=Statistic.MEAN,
                interval=MINUTE,
            )
        )
        for i in range(count)
    }


def _samples(series: int, first_minute: int, minutes: int) -> list[Any]:
    """Time-major samples: every series for one minute, then the next minute."""
    from gridhub.hub.model import Sample

    keys = [_key(i) for i in range(series)]
    out: list[Any] = []
    for m in range(first_minute, first_minute + minutes):
        ts = T0 + m * MINUTE
        value = 200.0 + (m % 1440) / 10
        out.extend(Sample(k, ts, value + i) for i, k in enumerate(keys))
    return out


# -- PostgreSQL server ----------------------------------------------------------------------------


@contextlib.contextmanager
def _pg_database() -> Iterator[str | None]:
    """Create a scratch database on the server; yield its store URL (None when there is no server)."""
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(PG_URL)
    if not port_open(url.host or "127.0.0.1", url.port or 5432):
        console.print(f"[yellow]no PostgreSQL server at {url.host}:{url.port}: the PostgreSQL cases are skipped")
        yield None
        return
    name = f"gridhub_bench_{os.getpid()}"
    admin = psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database,
        autocommit=True,
    )  # fmt: skip
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def _pg_connect(store_url: str) -> Any:
    """Connect with psycopg as the store does (same session settings)."""
    import psycopg
    import sqlalchemy as sa

    from gridhub.hub.store.postgresql import SESSION_OPTIONS

    url = sa.make_url(store_url)
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database,
        options=SESSION_OPTIONS,
    )  # fmt: skip


# -- (a) bulk writes --------------------------------------------------------------------------------


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert_pg(options: Options, verdict: Verdict, rows: int, samples: list[Any]) -> None:
    from gridhub.hub.store import open_store
    from gridhub.hub.store.postgresql import COPY_TYPES

    with _pg_database() as url:
        if url is None:
            verdict.check("PostgreSQL bulk write >= 0.5x raw COPY", False, "no PostgreSQL server")
            return
        store = open_store(url)
        raw = _pg_connect(url)
        try:
            ids = _series(store, INSERT_SERIES)
            tuples = [(ids[x.series], x.ts, x.value, None, 0, None, None) for x in samples]
            raw.execute(
                "CREATE TABLE raw_samples (series_id int4, ts timestamptz, value float8, data jsonb, quality int2, "
                "confidence float8, cost float8, PRIMARY KEY (series_id, ts))"
            )
            raw.commit()
            store.write_samples(samples[:1])  # the month's partition exists before the clock starts (as in production)
            runs = options.runs or 3
            results: dict[str, list[float]] = {"store": [], "raw": []}

            def reset() -> None:
                raw.execute("TRUNCATE samples, raw_samples")
                raw.commit()
                raw.autocommit = True
                raw.execute("CHECKPOINT")
                raw.autocommit = False

            def store_run() -> float:
                reset()
                start = time.perf_counter()
                for batch in _chunks(samples, BATCH):
                    store.write_samples(batch)
                rate = rows / (time.perf_counter() - start)
                assert store.count_samples() == rows, "the store did not keep every row"
                return rate

            def raw_run() -> float:
                reset()
                start = time.perf_counter()
                for batch in _chunks(tuples, BATCH):
                    with (
                        raw.cursor() as cur,
                        cur.copy(
                            "COPY raw_samples (series_id, ts, value, data, quality, confidence, cost) "
                            "FROM STDIN (FORMAT BINARY)"
                        ) as copy,
                    ):
                        copy.set_types(COPY_TYPES)
                        for row in batch:
                            copy.write_row(row)
                    raw.commit()
                return rows / (time.perf_counter() - start)

            with progress() as bar:
                task = bar.add_task("PostgreSQL writes", total=2 * runs)
                for _ in range(runs):
                    results["store"].append(store_run())
                    bar.advance(task)
                    results["raw"].append(raw_run())
                    bar.advance(task)
            # idempotent path, for information: the same batches again (every key exists)
            store_run()
            start = time.perf_counter()
            for batch in _chunks(samples, BATCH):
                store.write_samples(batch)
            assert store.count_samples() == rows, "a re-sent batch duplicated rows"
            resend = rows / (time.perf_counter() - start)
        finally:
            raw.close()
            store.close()
    _report_insert(verdict, "PostgreSQL", "store bulk path (COPY into the partitioned table)",
                   "raw psycopg binary COPY, plain table", results, rows)  # fmt: skip
    console.print(f"  re-sent batches (every key exists: staging + INSERT ... ON CONFLICT): {resend:,.0f} rows/s")


def _insert_sqlite(options: Options, verdict: Verdict, rows: int, samples: list[Any], tmp: Path) -> None:
    from gridhub.hub.store import open_store
    from gridhub.hub.store.sqlite import PRAGMAS

    runs = options.runs or 3
    results: dict[str, list[float]] = {"store": [], "raw": []}
    counter = iter(range(1_000_000))

    def fresh() -> tuple[Any, Path, dict[str, int]]:
        path = tmp / f"insert-{next(counter)}.sqlite"
        store = open_store(str(path))
        return store, path, _series(store, INSERT_SERIES)

    def cleanup(path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def store_run() -> float:
        store, path, _ = fresh()
        try:
            start = time.perf_counter()
            for batch in _chunks(samples, BATCH):
                store.write_samples(batch)
            rate = rows / (time.perf_counter() - start)
            assert store.count_samples() == rows
        finally:
            store.close()
            cleanup(path)
        return rate

    def raw_run() -> float:
        store, path, ids = fresh()
        store.close()
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        micro = timedelta(microseconds=1)
        # The same rows in the driver's fastest form: the four columns a plain sample fills (binding the
        # other three as None costs sqlite3 an adapter look-up each; the store does not bind them either).
        tuples = [(ids[x.series], (x.ts - epoch) // micro, x.value, 0) for x in samples]
        con = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in PRAGMAS:
                con.execute(pragma)
            start = time.perf_counter()
            for batch in _chunks(tuples, BATCH):
                con.execute("BEGIN IMMEDIATE")
                con.executemany("INSERT INTO samples (series_id, ts, value, quality) VALUES (?, ?, ?, ?)", batch)
                con.execute("COMMIT")
            rate = rows / (time.perf_counter() - start)
        finally:
            con.close()
            cleanup(path)
        return rate

    with progress() as bar:
        task = bar.add_task("SQLite writes", total=2 * runs)
        for _ in range(runs):
            results["store"].append(store_run())
            bar.advance(task)
            results["raw"].append(raw_run())
            bar.advance(task)
    _report_insert(verdict, "SQLite", "store bulk path (executemany, WITHOUT ROWID)",
                   "raw sqlite3 executemany, same schema and pragmas", results, rows)  # fmt: skip


def _report_insert(
    verdict: Verdict, backend: str, store_label: str, raw_label: str, results: dict[str, list[float]], rows: int
) -> None:
    store, raw = Summary(tuple(results["store"])), Summary(tuple(results["raw"]))
    r = ratio(store.median, raw.median)
    console.print(f"[bold]{backend}[/], {rows:,} time-major rows of {INSERT_SERIES} series, {BATCH:,} per transaction")
    console.print(f"  {store_label}: {store.fmt(0, 'rows/s')}")
    console.print(f"  {raw_label}: {raw.fmt(0, 'rows/s')}")
    console.print(f"  ratio {r:.2f}x (target >= {INSERT_TARGET}x)")
    verdict.check(
        f"{backend} bulk write >= {INSERT_TARGET}x raw",
        r >= INSERT_TARGET,
        f"{store.median:,.0f} vs {raw.median:,.0f} rows/s = {r:.2f}x",
    )


# -- (b) reads from a big store ---------------------------------------------------------------------


def _load(stores: list[Any], series: int) -> float:
    """Load BIG_DAYS of 60-s samples of every series, time-major, into every store; return seconds."""
    minutes = BIG_DAYS * 1440
    per_batch = max(1, LOAD_BATCH // series)
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"loading {series * minutes:,} samples", total=series * minutes)
        for first in range(0, minutes, per_batch):
            batch = _samples(series, first, min(per_batch, minutes - first))
            for store in stores:
                store.write_samples(batch)
            bar.advance(task, len(batch))
    return time.perf_counter() - started


def _time_ms(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def _read_cases(
    store: Any,
    ids: dict[str, int],
    raw_range: Callable[[int], list[Any]],
    raw_aggregate: Callable[[int], list[Any]],
    series: int,
    rounds: int,
) -> dict[str, list[float]]:
    start, end = T0, T0 + timedelta(days=BIG_DAYS)
    day = timedelta(days=1)
    cases: dict[str, list[float]] = {"store range": [], "raw range": [], "store aggregate": [], "raw aggregate": []}
    rng = random.Random(42)
    for round_no in range(rounds + 1):
        for i in rng.sample(range(series), min(10, series)):
            key = _key(i)
            sid = ids[key]
            calls: list[tuple[str, Callable[[], object]]] = [
                ("store range", lambda key=key: store.read_range(key, start, end)),  # type: ignore[misc]
                ("raw range", lambda sid=sid: raw_range(sid)),  # type: ignore[misc]
                ("store aggregate", lambda key=key: store.aggregate(key, start, end, day)),  # type: ignore[misc]
                ("raw aggregate", lambda sid=sid: raw_aggregate(sid)),  # type: ignore[misc]
            ]
            if round_no % 2:
                calls.reverse()
            for name, call in calls:
                ms, out = _time_ms(call)
                expected = BIG_DAYS * 1440 if "range" in name else BIG_DAYS
                assert len(out) == expected, f"{name} returned {len(out)} rows, expected {expected}"  # type: ignore[arg-type]
                if round_no:  # the first round warms caches and is not counted
                    cases[name].append(ms)
    return cases


def _report_reads(verdict: Verdict, backend: str, cases: dict[str, list[float]]) -> None:
    for what in ("range", "aggregate"):
        store = cases[f"store {what}"]
        raw = cases[f"raw {what}"]
        p50, raw_p50 = statistics.median(store), statistics.median(raw)
        r = ratio(p50, raw_p50)
        label = "one series, one month (43,200 rows)" if what == "range" else "daily aggregate of the month (30 rows)"
        console.print(
            f"  {label}: store p50 {p50:.1f} ms ({min(store):.1f}-{max(store):.1f}, n={len(store)}), "
            f"raw p50 {raw_p50:.1f} ms ({min(raw):.1f}-{max(raw):.1f}), ratio {r:.2f}x"
        )
        verdict.check(
            f"{backend} {what}: <= {READ_TARGET}x raw and p50 < {P50_TARGET_MS:.0f} ms",
            r <= READ_TARGET and p50 < P50_TARGET_MS,
            f"p50 {p50:.1f} ms vs raw {raw_p50:.1f} ms = {r:.2f}x",
        )


def _reads(options: Options, verdict: Verdict, tmp: Path) -> None:
    from gridhub.hub.store import open_store
    from gridhub.hub.store import postgresql as pg_module
    from gridhub.hub.store import sqlite as sqlite_module

    series = BIG_SERIES[options.quick]
    rounds = options.runs or 3
    total = series * BIG_DAYS * 1440
    start_us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    end_us = start_us + BIG_DAYS * 86_400_000_000
    with _pg_database() as pg_url:
        stores = [open_store(str(tmp / "big.sqlite"))]
        if pg_url is not None:
            stores.append(open_store(pg_url))
        try:
            ids = [_series(store, series) for store in stores]
            seconds = _load(stores, series)
            console.print(
                f"[bold]big store[/]: {total:,} samples ({series} series x {BIG_DAYS} days of 60-s data) loaded "
                f"time-major through write_samples into {len(stores)} store(s) in {seconds:.0f} s"
            )
            # SQLite
            sqlite_store = stores[0]
            size = sum(p.stat().st_size for p in tmp.glob("big.sqlite*")) / 1e6
            con = sqlite3.connect(tmp / "big.sqlite")
            for pragma in sqlite_module.PRAGMAS:  # the store's connection settings
                con.execute(pragma)
            try:
                agg_sql = (
                    "SELECT (ts - ?) / ? AS bucket, "
                    "count(value), min(value), max(value), avg(value), sum(value) FROM samples "
                    "WHERE series_id = ? AND ts >= ? AND ts < ? AND value IS NOT NULL AND (quality & 1) = 0 "
                    "GROUP BY bucket ORDER BY bucket"
                )
                step = 86_400_000_000

                def sqlite_range(sid: int) -> list[Any]:
                    return con.execute(sqlite_module.RANGE_SQL, (sid, start_us, end_us)).fetchall()

                def sqlite_aggregate(sid: int) -> list[Any]:
                    return con.execute(agg_sql, (0, step, sid, start_us, end_us)).fetchall()

                console.print(f"[bold]SQLite[/] ({size:,.0f} MB file)")
                _report_reads(
                    verdict, "SQLite", _read_cases(sqlite_store, ids[0], sqlite_range, sqlite_aggregate, series, rounds)
                )
            finally:
                con.close()
            if pg_url is None:
                verdict.check("PostgreSQL reads", False, "no PostgreSQL server")
                return
            pg_store = stores[1]
            raw = _pg_connect(pg_url)
            raw.autocommit = True
            try:
                agg_sql = (
                    "SELECT date_bin('1 day'::interval, ts, '1970-01-01T00:00:00Z'::timestamptz) AS bucket, "
                    "count(value), min(value), max(value), avg(value), sum(value) FROM samples "
                    "WHERE series_id = %s AND ts >= %s AND ts < %s AND value IS NOT NULL AND (quality & 1) = 0 "
                    "GROUP BY bucket ORDER BY bucket"
                )
                end = T0 + timedelta(days=BIG_DAYS)

                def pg_range(sid: int) -> list[Any]:
                    with raw.cursor(binary=True) as cur:
                        cur.execute(pg_module.RANGE_SQL.format(limit=""), (sid, T0, end))
                        times: list[Any] = cur.fetchone()[0]  # the same SQL: three arrays in one row
                        return times

                def pg_aggregate(sid: int) -> list[Any]:
                    with raw.cursor(binary=True) as cur:
                        cur.execute(agg_sql, (sid, T0, end))
                        rows: list[Any] = cur.fetchall()
                        return rows

                raw.execute("VACUUM ANALYZE samples")
                before = _read_cases(pg_store, ids[1], pg_range, pg_aggregate, series, 1)
                console.print(
                    "[bold]PostgreSQL[/], before compaction (time-major heap), for information: range p50 "
                    f"{statistics.median(before['store range']):.1f} ms (raw "
                    f"{statistics.median(before['raw range']):.1f}), aggregate p50 "
                    f"{statistics.median(before['store aggregate']):.1f} ms"
                )
                started = time.perf_counter()
                done = pg_store.compact()
                raw.execute("VACUUM ANALYZE samples")
                console.print(f"  Store.compact() clustered {', '.join(done)} in {time.perf_counter() - started:.0f} s")
                console.print("[bold]PostgreSQL[/], after compaction (partition clustered on (series_id, ts))")
                _report_reads(
                    verdict, "PostgreSQL", _read_cases(pg_store, ids[1], pg_range, pg_aggregate, series, rounds)
                )
            finally:
                raw.close()
        finally:
            for store in stores:
                store.close()


def run(options: Options) -> int:
    """Measure bulk writes and big-store reads on both backends against their raw drivers."""
    rows = INSERT_ROWS[options.quick]
    header(
        "bench_hub_store",
        "hub store: (a) bulk sample writes vs raw COPY / executemany; (b) one-month range read and daily "
        f"aggregate from a store of {BIG_SERIES[options.quick] * BIG_DAYS * 1440:,} samples vs the same SQL "
        "through the raw driver" + (" [--quick: numbers not comparable]" if options.quick else ""),
    )
    verdict = Verdict("bench_hub_store")
    samples = _samples(INSERT_SERIES, 0, rows // INSERT_SERIES)
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-hub-store-") as tmp:
        _insert_sqlite(options, verdict, rows, samples, Path(tmp))
        _insert_pg(options, verdict, rows, samples)
        del samples
        _reads(options, verdict, Path(tmp))
    return verdict.show()


if __name__ == "__main__":
    import sys

    sys.exit(run(Options(quick="--quick" in sys.argv)))
