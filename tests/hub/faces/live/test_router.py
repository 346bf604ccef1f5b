"""/live/v1 end to end: a real uvicorn hub, real WebSocket clients, writes through the REST and upload APIs."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gridhub.edge.apps.upload_transport import upload_body
from gridhub.formats.lvcap import TableResult, TableRow
from gridhub.hub.auth import SYSTEM_LAYER, Role
from gridhub.hub.faces.live.router import CLOSE_POLICY, CLOSE_TRY_AGAIN, PROTOCOL
from tests.conftest import port_open, service_absent, wait_for
from tests.hub.faces.live.conftest import (
    RECV_TIMEOUT,
    LiveClient,
    LiveHub,
    live_settings,
    open_client,
    run_hub,
)

SUBSTATIONS = {"layer": "grid", "collection": "substations"}
NATS_URL = "nats://127.0.0.1:4222"


async def closed_with(client: LiveClient) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """Read until the server closes the connection; return the messages, the close code and reason."""
    messages = []
    try:
        while True:
            messages.append(await client.recv())
    except ConnectionClosed:
        pass
    return messages, client.ws.close_code, client.ws.close_reason


async def events_until(client: LiveClient, wanted: int) -> list[dict[str, Any]]:
    """Return the next `wanted` messages, all of which must be events (they carry a subscription id)."""
    out = []
    for _ in range(wanted):
        message = await client.recv()
        assert "sub" in message, f"expected an event, got {message}"
        out.append(message)
    return out


# -- collections ------------------------------------------------------------------------------------


def test_collection_subscriber_receives_added_changed_removed_for_rest_writes(live_hub: LiveHub) -> None:
    async def scenario() -> None:
        client, hello = await open_client(live_hub, headers=live_hub.admin)
        assert hello["protocol"] == PROTOCOL and hello["principal"]["name"] == "root"
        await client.subscribe("subs", **SUBSTATIONS)
        async with live_hub.rest() as rest:
            h = live_hub.admin
            assert (await rest.post("/grid/readings", json={"_id": "r1"}, headers=h)).status_code == 200
            response = await rest.post(
                "/grid/substations", json=[{"_id": "s1", "voltage": 230}, {"_id": "s2", "voltage": 400}], headers=h
            )
            assert response.status_code == 200, response.text
            added = await events_until(client, 2)  # the readings insert came first and is not in this subscription
            assert [(e["sub"], e["type"], e["op"], e["id"]) for e in added] == [
                ("subs", "collection", "added", "s1"),
                ("subs", "collection", "added", "s2"),
            ]
            stored = (await rest.get("/grid/substations/s1", headers=h)).json()["data"]
            assert added[0]["doc"] == stored  # the document as the REST API serves it
            assert added[0]["layer"] == "grid" and added[0]["collection"] == "substations"

            assert (await rest.patch("/grid/substations/s1", json={"voltage": 240}, headers=h)).status_code == 200
            changed = await client.recv()
            assert (changed["op"], changed["id"], changed["doc"]["voltage"]) == ("changed", "s1", 240)
            response = await rest.patch("/grid/substations", json=[{"_id": "s2", "name": "north"}], headers=h)
            assert response.status_code == 200
            changed = await client.recv()
            assert (changed["op"], changed["id"], changed["doc"]["name"]) == ("changed", "s2", "north")

            assert (await rest.delete("/grid/substations/s1", headers=h)).status_code == 200
            assert await client.recv() == {
                "type": "collection",
                "layer": "grid",
                "collection": "substations",
                "op": "removed",
                "id": "s1",
                "sub": "subs",
            }
            assert (await rest.delete("/grid/substations?voltage=400", headers=h)).status_code == 200
            removed = await client.recv()
            assert (removed["op"], removed["id"]) == ("removed", "s2")
            assert "doc" not in removed
        await client.pong()
        await client.ws.close()

    asyncio.run(scenario())


def test_unsubscribe_stops_events_and_protocol_errors_are_answered(live_hub: LiveHub) -> None:
    async def scenario() -> None:
        client, _ = await open_client(live_hub, headers=live_hub.admin)
        await client.subscribe("a", **SUBSTATIONS)
        again = await client.request({"action": "subscribe", "id": "a", **SUBSTATIONS})
        assert again["type"] == "error" and again["code"] == 400 and again["id"] == "a" and "exists" in again["message"]
        wrong = await client.request({"action": "subscribe", "id": "b", "layer": "grid"})
        assert wrong["type"] == "error" and wrong["code"] == 400 and "collection" in wrong["message"]
        unknown = await client.request({"action": "dance"})
        assert unknown["type"] == "error" and unknown["code"] == 400 and "action" in unknown["message"]
        await client.ws.send("not json")
        garbage = await client.recv()
        assert garbage["type"] == "error" and garbage["code"] == 400 and "JSON" in garbage["message"]
        missing = await client.request({"action": "unsubscribe", "id": "nope"})
        assert missing["type"] == "error" and missing["code"] == 404
        assert await client.request({"action": "unsubscribe", "id": "a"}) == {
            "type": "ok",
            "action": "unsubscribe",
            "id": "a",
        }
        async with live_hub.rest() as rest:
            assert (await rest.post("/grid/substations", json={"_id": "x"}, headers=live_hub.admin)).is_success
        await client.pong()  # the insert after the unsubscribe brought nothing
        await client.ws.close()

    asyncio.run(scenario())


def test_selector_subscription_follows_documents_into_and_out_of_the_selection(live_hub: LiveHub) -> None:
    async def scenario() -> None:
        client, _ = await open_client(live_hub, headers=live_hub.admin)
        async with live_hub.rest() as rest:
            h = live_hub.admin
            assert (await rest.post("/grid/substations", json={"_id": "in", "kv": 11}, headers=h)).is_success
            await client.subscribe("hv", selector={"kv": {"$gte": 10}}, **SUBSTATIONS)
            assert (await rest.post("/grid/substations", json={"_id": "out", "kv": 0.4}, headers=h)).is_success
            assert (await rest.patch("/grid/substations/out", json={"kv": 33}, headers=h)).is_success
            entered = await client.recv()  # the insert of "out" did not match: the first event is its patch
            assert (entered["op"], entered["id"]) == ("added", "out")
            assert (await rest.patch("/grid/substations/in", json={"kv": 0.4}, headers=h)).is_success
            left = await client.recv()
            assert (left["op"], left["id"]) == ("removed", "in") and "doc" not in left
            assert (await rest.patch("/grid/substations/out", json={"kv": 66}, headers=h)).is_success
            changed = await client.recv()
            assert (changed["op"], changed["id"], changed["doc"]["kv"]) == ("changed", "out", 66)
            assert (await rest.delete("/grid/substations/in", headers=h)).is_success  # not selected: no event
        await client.pong()
        bad = await client.request(
            {"action": "subscribe", "id": "x", "selector": {"kv": {"$regex": "1"}}, **SUBSTATIONS}
        )
        assert bad["type"] == "error" and bad["code"] == 400 and "$regex" in bad["message"]
        await client.ws.close()

    asyncio.run(scenario())


# -- authentication and authorisation ---------------------------------------------------------------


def test_credentials_as_for_rest_headers_query_or_first_auth_message(live_hub: LiveHub) -> None:
    app = live_hub.application("meter-reader", Role.CONSUMER, grants=("grid/substations:read",))
    user = live_hub.user("alice", Role.CONSUMER, grants=("grid/substations:read",))

    async def scenario() -> None:
        by_query, hello = await open_client(live_hub, query=app)
        assert hello["principal"] == {"id": app["appId"], "name": "meter-reader", "kind": "app"}
        ws = await connect(live_hub.ws_url(), open_timeout=RECV_TIMEOUT)
        by_message = LiveClient(ws)
        await by_message.send({"action": "auth", "userId": user["X-User-ID"], "authToken": user["X-Auth-Token"]})
        hello = await by_message.recv()
        assert hello["type"] == "connected" and hello["principal"]["name"] == "alice"
        for client in (by_query, by_message):
            await client.subscribe("s", **SUBSTATIONS)
        async with live_hub.rest() as rest:
            assert (await rest.post("/grid/substations", json={"_id": "s9"}, headers=live_hub.admin)).is_success
        for client in (by_query, by_message):
            event = await client.recv()
            assert (event["op"], event["id"]) == ("added", "s9")
            await client.ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("headers", "query", "first"),
    [
        (None, None, {"action": "subscribe", "id": "s", **SUBSTATIONS}),
        (None, None, {"action": "auth", "userId": "someone", "authToken": "wrong"}),
        ({"X-User-ID": "someone", "X-Auth-Token": "wrong"}, None, None),
        (None, {"appId": "nobody", "keyId": "wrong"}, None),
    ],
    ids=["no-auth-message", "wrong-auth-message", "wrong-headers", "wrong-query"],
)
def test_unauthenticated_connections_are_closed_1008(
    live_hub: LiveHub, headers: dict[str, str] | None, query: dict[str, str] | None, first: dict[str, Any] | None
) -> None:
    async def scenario() -> None:
        ws = await connect(live_hub.ws_url(**(query or {})), additional_headers=headers, open_timeout=RECV_TIMEOUT)
        client = LiveClient(ws)
        if first is not None:
            await client.send(first)
        messages, code, reason = await closed_with(client)
        assert code == CLOSE_POLICY, (code, reason, messages)
        assert [m["type"] for m in messages] == ["error"] and messages[0]["code"] == 401, messages
        assert reason

    asyncio.run(scenario())


def test_without_read_access_subscribe_is_refused_403_and_no_event_arrives(live_hub: LiveHub) -> None:
    consumer = live_hub.user("bob", Role.CONSUMER, grants=("grid/generators:read",))

    async def scenario() -> None:
        watcher, _ = await open_client(live_hub, headers=live_hub.admin)
        await watcher.subscribe("all", **SUBSTATIONS)
        client, _ = await open_client(live_hub, headers=consumer)
        refused = await client.request({"action": "subscribe", "id": "s", **SUBSTATIONS})
        assert refused["type"] == "error" and refused["code"] == 403 and refused["id"] == "s", refused
        assert "may not read grid/substations" in refused["message"]
        missing = await client.request({"action": "subscribe", "id": "m", "layer": "grid", "collection": "nothing"})
        assert missing["type"] == "error" and missing["code"] == 404, missing
        no_layer = await client.request({"action": "subscribe", "id": "n", "layer": "nowhere", "collection": "x"})
        assert no_layer["type"] == "error" and no_layer["code"] == 404, no_layer
        reserved = await client.request(
            {"action": "subscribe", "id": "r", "layer": SYSTEM_LAYER, "collection": "users"}
        )
        assert reserved["type"] == "error" and reserved["code"] == 404, reserved
        await client.subscribe("g", layer="grid", collection="generators")  # what it may read works
        async with live_hub.rest() as rest:
            assert (await rest.post("/grid/substations", json={"_id": "hidden"}, headers=live_hub.admin)).is_success
        event = await watcher.recv()  # delivered to the admin...
        assert event["id"] == "hidden"
        await client.pong()  # ...and not to the consumer
        for each in (watcher, client):
            await each.ws.close()

    asyncio.run(scenario())


def test_logged_out_session_is_closed_1008_and_withdrawn_grant_ends_the_subscription(tmp_path: Path) -> None:
    settings = live_settings(tmp_path / "hub", live_auth_check_interval=0.2)
    with run_hub(settings) as hub:
        session = hub.user("carol", Role.CONSUMER, grants=("grid/substations:read",))
        dave = hub.user("dave", Role.CONSUMER, grants=("grid/substations:read", "grid/generators:read"))

        async def scenario() -> None:
            carol, _ = await open_client(hub, headers=session)
            await carol.subscribe("s", **SUBSTATIONS)
            client, _ = await open_client(hub, headers=dave)
            await client.subscribe("s", **SUBSTATIONS)
            await client.subscribe("g", layer="grid", collection="generators")
            async with hub.rest() as rest:
                assert (await rest.post("/logout", headers=session)).status_code == 200
            messages, code, reason = await closed_with(carol)
            assert code == CLOSE_POLICY and messages and messages[-1]["code"] == 401, (code, reason, messages)

            hub.app.state.ctx.store.patch_document(
                SYSTEM_LAYER, "users", dave["X-User-ID"], {"grants": ["grid/generators:read"]}
            )
            ended = await client.recv()
            assert ended["type"] == "error" and ended["id"] == "s" and ended["code"] == 403, ended
            async with hub.rest() as rest:
                assert (await rest.post("/grid/substations", json={"_id": "a"}, headers=hub.admin)).is_success
                assert (await rest.post("/grid/generators", json={"_id": "g"}, headers=hub.admin)).is_success
            event = await client.recv()  # the substation insert is no longer delivered; the generator one is
            assert (event["sub"], event["id"]) == ("g", "g"), event
            await client.ws.close()

        asyncio.run(scenario())


# -- series ----------------------------------------------------------------------------------------


def upload(hub: LiveHub, token: str, first: int, count: int) -> dict[str, Any]:
    rows = [
        TableRow(
            i,
            1_704_067_200 + 60 * i,
            "/60/busbar/l1/voltage-mean",
            b'{"Timestamp":%d,"Value":%d,"Valid":true}' % (1_704_067_200 + 60 * i, 200 + i),
        )
        for i in range(first, first + count)
    ]
    response = httpx.post(
        f"{hub.http_url}/edge/v1/upload",
        content=upload_body(f"b{first}", [TableResult("test_pub_01", rows)]),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=RECV_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_series_subscribers_receive_new_samples_of_edge_uploads(live_hub: LiveHub) -> None:
    token = live_hub.auth.issue_site_token("site-a")
    upload(live_hub, token, 1, 2)  # creates the site's layer, substation and series
    store = live_hub.app.state.ctx.store
    [key] = [s.key for s in store.list_series("edge", asset="site-a") if not s.key.endswith("#upload")]
    reader = live_hub.user("erin", Role.CONSUMER, grants=("edge/substations:read",))
    outsider = live_hub.user("frank", Role.CONSUMER, grants=("grid/substations:read",))

    async def scenario() -> None:
        by_key, _ = await open_client(live_hub, headers=reader)
        await by_key.subscribe("v", series=[key])
        by_prefix, _ = await open_client(live_hub, headers=live_hub.admin)
        await by_prefix.subscribe("site", series=["site-a/*"], layer="edge")
        refused, _ = await open_client(live_hub, headers=outsider)
        answer = await refused.request({"action": "subscribe", "id": "v", "series": [key]})
        assert answer["type"] == "error" and answer["code"] == 403, answer
        unknown = await refused.request({"action": "subscribe", "id": "u", "series": ["no/such/series"]})
        assert unknown["type"] == "error" and unknown["code"] == 404, unknown

        await asyncio.to_thread(upload, live_hub, token, 3, 3)
        await asyncio.to_thread(upload, live_hub, token, 3, 3)  # a retried batch stores nothing new
        await asyncio.to_thread(upload, live_hub, token, 6, 1)
        for client, sub in ((by_key, "v"), (by_prefix, "site")):
            first, second = await events_until(client, 2)  # the retry published nothing; no ledger series either
            assert first["type"] == "samples" and first["sub"] == sub and first["series"] == key
            assert (first["layer"], first["collection"], first["asset"]) == ("edge", "substations", "site-a")
            assert [s["v"] for s in first["samples"]] == [203.0, 204.0, 205.0]
            assert first["samples"][0]["t"] == "2024-01-01T00:03:00.000000Z" and first["samples"][0]["q"] == 0
            assert [s["v"] for s in second["samples"]] == [206.0]
            await client.pong()
        await refused.pong()
        for client in (by_key, by_prefix, refused):
            await client.ws.close()

    asyncio.run(scenario())


def test_document_measurements_publish_samples_of_their_series(live_hub: LiveHub) -> None:
    async def scenario() -> None:
        client, _ = await open_client(live_hub, headers=live_hub.admin)
        await client.subscribe("m", series=["grid/substations/*"], layer="grid")
        async with live_hub.rest() as rest:
            h = live_hub.admin
            doc = {"_id": "t1", "measurements": {"load": {"value": 0.5, "timestamp": "2025-03-01T10:00:00Z"}}}
            assert (await rest.post("/grid/substations", json=doc, headers=h)).is_success
            inserted = await client.recv()
            assert (inserted["series"], inserted["asset"]) == ("grid/substations/t1/load", "t1")
            assert inserted["samples"] == [{"t": "2025-03-01T10:00:00.000000Z", "v": 0.5, "q": 0}]
            assert (await rest.patch("/grid/substations/t1", json={"name": "T1"}, headers=h)).is_success
            patch = {"measurements": {"temp": {"value": 61, "quality": 0, "timestamp": "2025-03-01T10:05:00Z"}}}
            assert (await rest.patch("/grid/substations/t1", json=patch, headers=h)).is_success
            patched = await client.recv()  # the patch without measurements appended no sample
            assert patched["series"] == "grid/substations/t1/temp"
            assert patched["samples"] == [{"t": "2025-03-01T10:05:00.000000Z", "v": 61.0, "q": 1}]  # quality 0: INVALID
            # A late value, older than the document's: it goes to the history alone, and that is what is pushed.
            late = {"measurements": {"temp": {"value": 58, "timestamp": "2025-03-01T10:01:00Z"}}}
            assert (await rest.patch("/grid/substations/t1", json=late, headers=h)).is_success
            pushed = await client.recv()
            assert pushed["samples"] == [{"t": "2025-03-01T10:01:00.000000Z", "v": 58.0, "q": 0}]
            doc = (await rest.get("/grid/substations/t1", headers=h)).json()["data"]
            assert doc["measurements"]["temp"]["value"] == 61  # the real-time state kept the newer value
        await client.pong()
        await client.ws.close()

    asyncio.run(scenario())


# -- many subscribers, slow subscribers -----------------------------------------------------------------


def test_many_concurrent_subscribers_each_get_every_event_once(live_hub: LiveHub) -> None:
    clients_count, writes = 8, 12

    async def one_client() -> list[str]:
        client, _ = await open_client(live_hub, headers=live_hub.admin)
        await client.subscribe("a", **SUBSTATIONS)
        await client.subscribe("b", layer="grid", collection="generators")
        ready.release()
        seen = []
        while True:
            event = await client.recv()
            seen.append(f"{event['sub']}:{event['id']}")
            if event["id"] == "end":
                await client.ws.close()
                return seen

    async def writer() -> None:
        for _ in range(clients_count):
            await ready.acquire()
        async with live_hub.rest() as rest:

            async def write(i: int) -> None:
                collection = "substations" if i % 2 else "generators"
                response = await rest.post(f"/grid/{collection}", json={"_id": f"d{i}"}, headers=live_hub.admin)
                assert response.is_success, response.text

            await asyncio.gather(*(write(i) for i in range(writes)))  # concurrent writers too
            response = await rest.post("/grid/substations", json={"_id": "end"}, headers=live_hub.admin)
            assert response.is_success

    ready = asyncio.Semaphore(0)

    async def scenario() -> list[list[str]]:
        results = await asyncio.gather(*(one_client() for _ in range(clients_count)), writer())
        return [r for r in results if r is not None]

    expected = sorted([f"{'a' if i % 2 else 'b'}:d{i}" for i in range(writes)] + ["a:end"])
    seen = asyncio.run(scenario())
    assert len(seen) == clients_count
    for events in seen:
        assert events[-1] == "a:end"
        assert sorted(events) == expected  # every event, each exactly once


def test_slow_consumer_overflows_gets_told_and_is_closed_1013(tmp_path: Path) -> None:
    with run_hub(live_settings(tmp_path / "hub", live_queue_size=4)) as hub:
        big = "x" * 65_536

        async def scenario() -> None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads slowly
            sock.connect(("127.0.0.1", hub.port))
            ws = await connect(
                hub.ws_url(), sock=sock, additional_headers=hub.admin, max_queue=1, open_timeout=RECV_TIMEOUT
            )
            client = LiveClient(ws)
            assert (await client.recv())["type"] == "connected"
            await client.subscribe("s", **SUBSTATIONS)
            assert hub.bus.subscriber_count == 1
            async with hub.rest() as rest:
                for batch in range(100):  # stop writing once the server cut the subscriber off
                    docs = [{"_id": f"d{batch}-{i}", "blob": big} for i in range(8)]
                    assert (await rest.post("/grid/substations", json=docs, headers=hub.admin)).is_success
                    if hub.bus.subscriber_count == 0:
                        break
                written = 8 * (batch + 1)
            assert hub.bus.subscriber_count == 0, f"no overflow after {written} events of 64 KiB"
            messages, code, reason = await closed_with(client)
            assert code == CLOSE_TRY_AGAIN, (code, reason)
            events = [m for m in messages if m["type"] == "collection"]
            assert messages[-1]["type"] == "overflow" and messages[-1]["dropped"] > 0, messages[-1:]
            assert "Reconnect" in messages[-1]["message"]
            assert len(events) < written and len(events) + messages[-1]["dropped"] <= written

        asyncio.run(scenario())


# -- replicas over NATS --------------------------------------------------------------------------------


def test_two_hubs_sharing_nats_deliver_each_write_once_to_subscribers_of_both(tmp_path: Path) -> None:
    if not port_open("127.0.0.1", 4222):
        service_absent("no NATS server on 127.0.0.1:4222")
    settings = live_settings(tmp_path / "hub", nats_url=NATS_URL, nats_domain=f"t{uuid.uuid4().hex[:12]}")
    with run_hub(settings) as hub_a, run_hub(dataclasses.replace(settings)) as hub_b:
        for hub in (hub_a, hub_b):
            wait_for(lambda hub=hub: hub.bus.nats is not None and hub.bus.nats.is_connected, "the bus to reach NATS")

        async def scenario() -> None:
            client_a, _ = await open_client(hub_a, headers=hub_a.admin)
            client_b, _ = await open_client(hub_b, headers=hub_b.admin)
            for client in (client_a, client_b):
                await client.subscribe("s", **SUBSTATIONS)

            async def write(hub: LiveHub, doc_id: str) -> None:
                async with hub.rest() as rest:
                    assert (await rest.post("/grid/substations", json={"_id": doc_id}, headers=hub.admin)).is_success

            await write(hub_a, "n1")
            await write(hub_b, "n2")
            await write(hub_a, "n3")
            await write(hub_b, "z-b")  # markers: NATS keeps each publisher's order, so a duplicate
            await write(hub_a, "z-a")  # of n1..n3 would arrive before the marker of its replica
            for client in (client_a, client_b):
                ids: list[str] = []
                while not {"z-a", "z-b"} <= set(ids):
                    event = await client.recv()
                    assert event["op"] == "added", event
                    ids.append(event["id"])
                assert sorted(ids) == ["n1", "n2", "n3", "z-a", "z-b"], ids
                await client.pong()
                await client.ws.close()

        asyncio.run(scenario())
