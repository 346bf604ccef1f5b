"""The hub bus: interest, bounded per-subscriber queues, publishing from writer threads, NATS subjects."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gridhub.hub.bus import LiveBus, LiveEvent, collection_subject, samples_subject, subject_token
from gridhub.hub.model import Asset, CollectionSpec, Layer, Sample, Series
from gridhub.hub.store import open_store


def event(collection: str, doc_id: str) -> LiveEvent:
    body = {"type": "collection", "layer": "grid", "collection": collection, "op": "removed", "id": doc_id}
    return LiveEvent("collection", "grid", collection, doc_id, body)


def test_subjects_keep_one_token_per_name() -> None:
    assert subject_token("site-a_1") == "site-a_1"
    assert subject_token("a.b c/é") == "a%2Eb%20c%2F%C3%A9"
    assert collection_subject("gh", "grid", "sub.stations") == "gh.live.grid.sub%2Estations"
    assert samples_subject("gh", "edge", "site a") == "gh.live.samples.edge.site%20a"
    assert LiveEvent.from_body(event("subs", "x").body) == event("subs", "x")
    with pytest.raises(ValueError, match="expected type collection"):
        LiveEvent.from_body({"type": "collection", "layer": "grid"})


def test_a_subscriber_gets_what_it_wants_in_order_from_writer_threads() -> None:
    async def scenario() -> list[str]:
        bus = LiveBus()
        await bus.start()
        sub = bus.subscribe()
        assert not bus.active or bus.subscriber_count == 1
        sub.want_collection("grid", "subs")
        assert bus.wants_collection("grid", "subs") and not bus.wants_collection("grid", "other")

        def writer() -> None:
            for i in range(50):
                bus.publish([event("other", f"o{i}"), event("subs", f"s{i}")])

        thread = threading.Thread(target=writer)
        thread.start()
        got = []
        while len(got) < 50:
            item = await asyncio.wait_for(sub.get(), 20)
            assert item is not None
            got.append(item.key)
        thread.join()
        sub.close()
        assert await sub.get() is None and bus.subscriber_count == 0 and not bus.active
        await bus.stop()
        return got

    assert asyncio.run(scenario()) == [f"s{i}" for i in range(50)]


def test_a_full_queue_overflows_drops_its_events_and_ends_the_subscription() -> None:
    async def scenario() -> None:
        bus = LiveBus(queue_size=3)
        await bus.start()
        slow, other = bus.subscribe(), bus.subscribe(queue_size=10)
        for sub in (slow, other):
            sub.want_collection("grid", "subs")
        bus.publish([event("subs", str(i)) for i in range(5)])
        assert slow.overflowed and slow.ended.is_set() and slow.pending() == 0  # memory released at once
        assert slow.dropped == 5 and await slow.get() is None  # every event it did not get is counted
        assert other.pending() == 5 and not other.overflowed  # the others are not affected
        assert bus.subscriber_count == 1
        await bus.stop()
        assert other.ended.is_set()

    asyncio.run(scenario())


def test_series_interest_by_key_and_prefix_and_samples_grouped_per_series() -> None:
    series = {
        key: Series(key=key, layer="edge", asset="site-a", name=key, collection="substations")
        for key in ("site-a/t/v", "site-a/t/i", "site-b/t/v")
    }
    t0 = datetime(2025, 1, 1, tzinfo=UTC)

    async def scenario() -> None:
        bus = LiveBus()
        await bus.start()
        sub = bus.subscribe()
        assert not bus.wants_series("site-a/t/v")
        sub.want_series(keys=["site-b/t/v"], prefixes=["site-a/t/v"])
        assert bus.wants_series("site-a/t/v") and not bus.wants_series("site-a/t/i")
        samples = [Sample(key, t0.replace(minute=m), float(m)) for m in (2, 1) for key in series]
        bus.publish_samples(samples, series)
        first, second = await sub.get(), await sub.get()
        assert first is not None and second is not None and sub.pending() == 0
        assert (first.key, [s["v"] for s in first.body["samples"]]) == ("site-a/t/v", [1.0, 2.0])
        assert second.key == "site-b/t/v" and second.body["asset"] == "site-a"
        sub.drop_series(keys=["site-b/t/v"], prefixes=["site-a/t/v"])
        assert not bus.wants_series("site-a/t/v")
        await bus.stop()

    asyncio.run(scenario())


def test_a_failure_to_publish_never_fails_the_committed_write(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    store.put_layer(Layer(id="grid", label="grid", collections=(CollectionSpec("subs"),)))

    async def scenario() -> None:
        bus = LiveBus()
        await bus.start()
        sub = bus.subscribe()
        sub.want_collection("grid", "subs")
        bus.publish_documents("grid", "subs", "changed", [Asset("x", {"a": 1})])
        changed = await sub.get()
        assert changed is not None and changed.body["doc"] == {"_id": "x", "_expired": False, "a": 1}
        sub.want_collection("gone", "subs")
        with caplog.at_level(logging.ERROR, logger="gridhub.hub.bus"):
            bus.publish_inserted(store, "gone", "subs", ["x"])  # the re-read fails: logged, not raised
        assert "could not publish added documents of gone/subs" in caplog.text
        store.close()
        await bus.stop()

    asyncio.run(scenario())
