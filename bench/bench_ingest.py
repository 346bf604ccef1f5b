"""QoS 1 Scalar ingest into edge storage, against raw paho publisher -> subscriber through the same broker.

Target (the issue): messages/s from a publishing app into the storage database (published on
``algorithm/data/<IID>/...`` with ToStore true, counted when committed) is at least 0.8x the raw
paho QoS 1 publisher -> subscriber rate through the same broker, measured in the same run.

Method (limits.md section 1): one paho publisher process sends N messages as fast as it can at
QoS 1 (paho queues, 20 in flight); rate = N / (moment the N-th message is committed - publisher
start), both on CLOCK_MONOTONIC. The raw reference is the same publisher with one paho subscriber
process instead of storage: rate = N / (subscriber's last receive - publisher start). Raw and
ingest runs alternate round-robin on one broker, each ingest run into a fresh database.

Two marketplaces: managed Mosquitto and the embedded amqtt broker, both started the way the
runtime starts them (gridhub.edge.marketplace) when that module is importable, else a plain
mosquitto / amqtt process on a free port (said so in the output).
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    ClientProcess,
    Credentials,
    Options,
    Summary,
    Verdict,
    console,
    header,
    mosquitto_binary,
    plain_amqtt,
    plain_mosquitto,
    progress,
    raw_paho_qos1,
)

IID = "bench_publisher_01"
SUB_IID = "bench_subscriber_01"
TOPIC = f"algorithm/data/{IID}/busbar/L1/voltage/mean"
TARGET_RATIO = 0.8
MESSAGES = {"managed": 20_000, "embedded": 6_000}  # ~2 s of raw traffic each (limits.md: 12,000 / 3,000 msg/s)
RUN_TIMEOUT = 18.0  # an ingest run that has not committed N by then is scored on what it committed
RAW_TIMEOUT = 10.0  # a raw subscriber still missing messages by then reports them lost
CALIBRATION = 1_000  # messages of the first, uncounted ingest run, which sizes the counted ones
CALIBRATION_TIMEOUT = 10.0
INGEST_SECONDS = 6.0  # counted ingest runs carry about this many seconds of traffic


@dataclass
class Rig:
    """A marketplace under test and how the benchmark's clients and storage connect to it."""

    label: str
    port: int
    publisher: Credentials
    subscriber: Credentials
    start_storage: Callable[[Path, str], Callable[[], None]]  # (database path, client id) -> stop function


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        console.print(f"[yellow]{name} not importable ({exc})")
        return None


# -- storage -----------------------------------------------------------------------------------


def _storage_starter(storage_mod: Any, address: Any) -> Callable[[Path, str], Callable[[], None]]:
    """Return a function that starts gridhub's StorageService on a fresh database and returns its stop.

    Each run gets its own client id: the service keeps a persistent session, and a session left
    with unacknowledged messages by an earlier run must not feed the next one.
    """

    def start(database: Path, client_id: str) -> Callable[[], None]:
        settings = storage_mod.StorageSettings.from_mapping(
            {"database": str(database), "max_length": 15000}, where="[storage]", base_dir=database.parent
        )
        db = storage_mod.StorageDB.from_settings(settings)
        service = storage_mod.StorageService(settings, db, storage_mod.storage_client(address, client_id))
        service.start()

        def stop() -> None:
            service.stop()
            db.close()
            _clear_session(address, client_id)

        return stop

    return start


def _ingest_once(rig: Rig, count: int, workdir: Path, run: str, timeout: float = RUN_TIMEOUT) -> tuple[float, int]:
    """One ingest run into a fresh database; return (msg/s, messages committed).

    Rate = N / (the moment the N-th message is committed - publisher start). A run that has not
    committed N within ``timeout`` is scored on what it committed by then. The committed rows are
    counted by a separate watcher process, so this process (broker when embedded, storage) does
    nothing but the work under test.
    """
    database = workdir / f"ingest-{run}.sqlite"
    stop_storage = rig.start_storage(database, f"gridhub-storage-bench-{run}")
    publisher = ClientProcess("publish", rig.port, TOPIC, count, rig.publisher, timeout)
    watcher = ClientProcess(
        "watch", 0, "", count, Credentials(), timeout, ["--database", str(database), "--table", IID]
    )
    try:
        watcher.ready()
        publisher.ready()
        publisher.go()
        start = publisher.started()
        result = watcher.result()
        n = int(result["committed"])
        if n >= count:
            return count / (result["done"] - start), n
        console.print(f"[red]{run}: only {n:,} of {count:,} committed within {timeout:g} s")
        return n / timeout, n
    finally:
        publisher.close()
        watcher.close()
        stop_storage()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{database}{suffix}").unlink()


def _clear_session(address: Any, client_id: str) -> None:
    """Connect once with clean_session so the broker drops the run's persistent session.

    Otherwise a session left behind by a run that timed out would keep collecting every later
    message on algorithm/data/# for nobody, and slow the broker in the runs that follow.
    """
    from gridhub.sdk.mqtt import MarketplaceClient

    client = MarketplaceClient(client_id, address, clean_session=True)
    try:
        client.start(timeout=10)
    finally:
        client.stop()


# -- marketplaces ------------------------------------------------------------------------------


@contextlib.contextmanager
def _rig(mode: str, workdir: Path) -> Iterator[Rig]:
    storage_mod = _try_import("gridhub.edge.storage")
    if storage_mod is None:
        raise RuntimeError("gridhub.edge.storage is not importable yet: nothing to measure")
    from gridhub.sdk.mqtt import BrokerAddress

    market_mod = _try_import("gridhub.edge.marketplace")
    if market_mod is not None:
        with _marketplace_rig(market_mod, storage_mod, mode, workdir) as rig:
            yield rig
        return
    plain = plain_mosquitto if mode == "managed" else plain_amqtt
    with plain() as port:
        anonymous = Credentials()
        yield Rig(
            f"plain {'mosquitto' if mode == 'managed' else 'amqtt'} (marketplace module absent)",
            port,
            anonymous,
            anonymous,
            _storage_starter(storage_mod, BrokerAddress(port=port)),
        )


@contextlib.contextmanager
def _marketplace_rig(market_mod: Any, storage_mod: Any, mode: str, workdir: Path) -> Iterator[Rig]:
    """The runtime's own Marketplace (managed mosquitto or embedded amqtt) with its users and ACLs."""
    from bench.common import free_port

    port = free_port()
    data = {"mode": mode, "host": "127.0.0.1", "port": port}
    if mode == "managed":
        data["mosquitto"] = str(mosquitto_binary())
    settings = market_mod.MarketplaceSettings.from_mapping(data, where="[marketplace]", base_dir=workdir)
    publisher = market_mod.MarketplaceUser("bench_publisher_1.0.0", "bench-publisher-pw", iid=IID)
    subscriber = market_mod.MarketplaceUser("bench_subscriber_1.0.0", "bench-subscriber-pw", iid=SUB_IID)
    storage_user = market_mod.MarketplaceUser.core_service(market_mod.STORAGE_USER)
    marketplace = market_mod.Marketplace(settings, workdir / "marketplace", [publisher, subscriber, storage_user])
    marketplace.start()
    try:
        label = (
            "managed mosquitto (gridhub Marketplace)" if mode == "managed" else "embedded amqtt (gridhub Marketplace)"
        )
        yield Rig(
            label,
            port,
            Credentials(publisher.username, publisher.password),
            Credentials(subscriber.username, subscriber.password),
            _storage_starter(storage_mod, marketplace.address_for(market_mod.STORAGE_USER)),
        )
    finally:
        marketplace.stop()


# -- the benchmark -----------------------------------------------------------------------------


def run(options: Options) -> int:
    """Measure raw and ingest rates for each marketplace mode; check ingest >= 0.8x raw."""
    runs = options.runs or (1 if options.quick else 3)
    modes = [options.mode] if options.mode else ["managed", "embedded"]
    if "managed" in modes and mosquitto_binary() is None:
        console.print("[red]mosquitto binary not found: managed mode skipped")
        modes.remove("managed")
    header(
        "bench_ingest",
        f"QoS 1 Scalars {TOPIC} (ToStore true) -> storage, committed; vs raw paho pub -> paho sub, "
        f"same broker; {runs} runs per case, round-robin.",
    )
    verdict = Verdict("bench_ingest")
    for mode in modes:
        count = MESSAGES[mode] // (5 if options.quick else 1)
        raw: list[float] = []
        ingest: list[float] = []
        complete = True
        raw_lost = 0
        with tempfile.TemporaryDirectory(prefix="gridhub-bench-ingest-") as tmp, _rig(mode, Path(tmp)) as rig:
            work = Path(tmp)
            console.print(f"[bold]{mode}[/]: {rig.label} on 127.0.0.1:{rig.port}")
            # Size the ingest runs so that each carries ~INGEST_SECONDS of traffic and completes.
            estimate, calibrated = _ingest_once(rig, CALIBRATION, work, f"{mode}-calibration", CALIBRATION_TIMEOUT)
            ingest_count = max(CALIBRATION, min(count, int(estimate * INGEST_SECONDS)))
            ingest_timeout = RUN_TIMEOUT if calibrated >= CALIBRATION else CALIBRATION_TIMEOUT
            console.print(
                f"  calibration ({CALIBRATION:,} messages): {estimate:,.0f} msg/s -> {ingest_count:,} messages per "
                f"ingest run, {count:,} per raw run"
            )
            with progress() as bar:
                task = bar.add_task(f"{mode}: raw + ingest runs", total=2 * runs)
                for i in range(runs):
                    rate, received = raw_paho_qos1(rig.port, TOPIC, count, rig.publisher, rig.subscriber, RAW_TIMEOUT)
                    raw.append(rate)
                    raw_lost += count - received
                    bar.advance(task)
                    rate, committed = _ingest_once(rig, ingest_count, work, f"{mode}-{i}", ingest_timeout)
                    ingest.append(rate)
                    complete = complete and committed >= ingest_count
                    bar.advance(task)
        r, g = Summary(tuple(raw)), Summary(tuple(ingest))
        ratios = Summary(tuple(a / b for a, b in zip(ingest, raw, strict=True)))
        lost = f"; [red]{raw_lost:,} of {count * runs:,} messages lost[/]" if raw_lost else ""
        console.print(f"  raw paho QoS 1 pub -> sub : {r.fmt(0, 'msg/s')}{lost}")
        console.print(f"  ingest into storage       : {g.fmt(0, 'msg/s')}")
        console.print(f"  ratio ingest / raw        : {ratios.fmt(2)}  (median of ingest / median of raw "
                      f"{g.median / r.median:.2f})")  # fmt: skip
        verdict.check(
            f"{mode}: ingest >= {TARGET_RATIO}x raw",
            complete and g.median >= TARGET_RATIO * r.median,
            f"{g.median:,.0f} vs {r.median:,.0f} msg/s = {g.median / r.median:.2f}x"
            + ("" if complete else " (incomplete)"),
        )
    return verdict.show()


if __name__ == "__main__":
    import sys

    from bench.__main__ import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
