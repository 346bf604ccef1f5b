"""/live/v1 end to end: a real uvicorn hub, real WebSocket clients, writes through the REST and upload APIs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gridhub.edge.apps.upload_transport import upload_body
from gridhub.formats.lvcap import TableResult, TableRow
from gridhub.hub.auth import SYSTEM_LAYER, Role
from gridhub.hub.faces.live.protocol import MAX_FRAME_BYTES, MAX_MESSAGE_CHARS
from gridhub.hub.faces.live.router import CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN, PROTOCOL
from tests.conftest import free_port, port_open, service_absent, wait_for
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
        assert missing["type"] == "error" and missing["code"] == 403, missing  # what it may not read: 403 (PLF_008)
        no_layer = await client.request({"action": "subscribe", "id": "n", "layer": "nowhere", "collection": "x"})
        assert no_layer["type"] == "error" and no_layer["code"] == 403, no_layer
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
        assert unknown["type"] == "error" and unknown["code"] == 403, unknown  # as for a series it may not read
        assert unknown["message"].replace("no/such/series", key) == answer["message"]

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


# -- no probing: read access is checked before existence, as over REST --------------------------------

COLLECTIONS = [
    ("grid", "feeders"),
    ("grid", "substations"),
    ("nolayer", "x"),
    (SYSTEM_LAYER, "users"),
    ("bad name", "x"),
]


def test_subscribe_refusals_tell_what_exists_only_to_who_may_read_it_as_rest_does(live_hub: LiveHub) -> None:
    callers = {
        "nobody": live_hub.user("nobody", Role.CONSUMER),
        "one": live_hub.user("one", Role.CONSUMER, grants=("grid/substations:read",)),
        "layer": live_hub.user("layer", Role.CONSUMER, grants=("grid/*:read",)),
        "admin": live_hub.admin,
    }

    async def codes(headers: dict[str, str]) -> tuple[list[int], list[int], list[str]]:
        client, _ = await open_client(live_hub, headers=headers)
        live, rest_codes, messages = [], [], []
        async with live_hub.rest() as rest:
            for i, (layer, collection) in enumerate(COLLECTIONS):
                reply = await client.request({"action": "subscribe", "id": i, "layer": layer, "collection": collection})
                live.append(200 if reply["type"] == "ok" else reply["code"])
                messages.append(reply.get("message", ""))
                response = await rest.get(f"/{layer}/{collection}", headers=headers)
                rest_codes.append(response.status_code)
        await client.ws.close()
        return live, rest_codes, messages

    async def scenario() -> dict[str, tuple[list[int], list[int], list[str]]]:
        return {name: await codes(headers) for name, headers in callers.items()}

    seen = asyncio.run(scenario())
    for name, (live, rest_codes, _) in seen.items():
        assert live == rest_codes, (name, live, rest_codes)
    # grid/feeders (not listed), grid/substations, a missing layer, the reserved layer, an impossible name:
    assert seen["nobody"][0] == [403, 403, 403, 404, 404]
    assert seen["one"][0] == [403, 200, 403, 404, 404]
    assert seen["layer"][0] == [404, 200, 403, 404, 404]
    assert seen["admin"][0] == [404, 200, 404, 404, 404]
    nobody = seen["nobody"][2]
    assert nobody[0] == "user 'nobody' may not read grid/feeders"  # the same words as for what exists:
    assert nobody[1] == "user 'nobody' may not read grid/substations"
    assert nobody[2] == "user 'nobody' may not read nolayer/x"
    assert "not listed" in seen["layer"][2][0] and "does not exist" in seen["admin"][2][2]


def test_series_refusals_tell_what_exists_only_to_who_may_read_its_layer(live_hub: LiveHub) -> None:
    key = "grid/substations/t1/load"
    doc = {"_id": "t1", "measurements": {"load": {"value": 0.5, "timestamp": "2025-03-01T10:00:00Z"}}}
    response = httpx.post(f"{live_hub.http_url}/api/v2/grid/substations", json=doc, headers=live_hub.admin)
    assert response.is_success, response.text
    nobody = live_hub.user("nobody", Role.CONSUMER)
    reader = live_hub.user("reader", Role.CONSUMER, grants=("grid/substations:read",))
    other = live_hub.user("other", Role.CONSUMER, grants=("grid/generators:read",))

    async def answers(headers: dict[str, str], requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        client, _ = await open_client(live_hub, headers=headers)
        replies = [await client.request({"action": "subscribe", "id": i, **r}) for i, r in enumerate(requests)]
        await client.ws.close()
        return replies

    async def scenario() -> None:
        existing, missing, in_grid = await answers(
            nobody, [{"series": [key]}, {"series": ["nosuch/x"]}, {"series": ["nosuch/x"], "layer": "grid"}]
        )
        assert existing["code"] == missing["code"] == in_grid["code"] == 403, (existing, missing, in_grid)
        assert missing["message"].replace("nosuch/x", key) == existing["message"]  # nothing tells them apart
        assert "may not read series 'nosuch/x'" in missing["message"]
        assert in_grid["message"] == "user 'nobody' may not read layer 'grid'"

        ok, missing, in_grid, elsewhere, wrong_layer = await answers(
            reader,
            [
                {"series": [key]},
                {"series": ["nosuch/x"]},
                {"series": ["nosuch/x"], "layer": "grid"},
                {"series": ["nosuch/x"], "layer": "nolayer"},
                {"series": [key], "layer": "edge"},
            ],
        )
        assert ok == {"type": "ok", "action": "subscribe", "id": 0}
        assert missing["code"] == 403, missing  # its layer is unknown: as for a series it may not read
        assert "name its layer" in missing["message"]
        assert in_grid["code"] == 404 and in_grid["message"] == "series 'nosuch/x' does not exist in layer 'grid'"
        assert elsewhere["code"] == 403 and elsewhere["message"] == "user 'reader' may not read layer 'nolayer'"
        assert wrong_layer["code"] == 403, wrong_layer  # 'edge' does not exist and it could not read it

        [forbidden] = await answers(other, [{"series": [key]}])  # may read some collection of grid, not this one
        assert forbidden["code"] == 403 and "may not read grid/substations" in forbidden["message"], forbidden

        missing, in_other = await answers(
            live_hub.admin, [{"series": ["nosuch/x"]}, {"series": [key], "layer": "nolayer"}]
        )
        assert (missing["code"], missing["message"]) == (404, "series 'nosuch/x' does not exist")
        assert (in_other["code"], in_other["message"]) == (404, "layer 'nolayer' does not exist")

    asyncio.run(scenario())


# -- message size ---------------------------------------------------------------------------------------


async def send_big(client: LiveClient, text: str) -> None:
    """Send one text frame; the server may close the connection before the client has written all of it."""
    with contextlib.suppress(ConnectionClosed):
        await client.ws.send(text)


def test_an_over_long_message_gets_error_400_and_close_1009_before_and_after_auth(live_hub: LiveHub) -> None:
    long = json.dumps({"action": "ping", "pad": "x" * MAX_MESSAGE_CHARS})

    async def scenario() -> None:
        ws = await connect(live_hub.ws_url(), open_timeout=RECV_TIMEOUT)  # no credentials: auth comes first
        anonymous = LiveClient(ws)
        await send_big(anonymous, long)
        messages, code, _ = await closed_with(anonymous)
        assert code == CLOSE_TOO_BIG, (code, messages)
        assert [(m["type"], m["code"]) for m in messages] == [("error", 400)], messages
        assert f"exceeds the limit of {MAX_MESSAGE_CHARS}" in messages[0]["message"]

        client, _ = await open_client(live_hub, headers=live_hub.admin)
        await client.subscribe("s", **SUBSTATIONS)
        await send_big(client, long)
        messages, code, _ = await closed_with(client)
        assert code == CLOSE_TOO_BIG and [(m["type"], m["code"]) for m in messages] == [("error", 400)], messages

    asyncio.run(scenario())


HUB_RUN = [sys.executable, "-m", "gridhub.hub.cli", "run"]


@pytest.fixture
def hub_command(tmp_path: Path) -> Iterator[int]:
    """A real `gridhub hub run` (a separate process) on a free port; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [*HUB_RUN, "--data-dir", str(tmp_path / "hub"), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: process.poll() is not None or port_open("127.0.0.1", port), "gridhub hub run to listen", 60)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_hub_run_refuses_frames_over_the_message_limit_before_reading_them(hub_command: int) -> None:
    url = f"ws://127.0.0.1:{hub_command}/live/v1"
    # The longest message allowed, in 4-byte UTF-8 characters: it reaches the hub, which answers it.
    widest = json.dumps({"action": "auth", "userId": "u", "authToken": "t", "pad": ""}, ensure_ascii=False)
    widest = widest.replace('"pad": ""', '"pad": "' + "\U0001f50c" * (MAX_MESSAGE_CHARS - len(widest)) + '"')
    assert len(widest) == MAX_MESSAGE_CHARS and len(widest.encode()) > 4 * (MAX_MESSAGE_CHARS - 100)

    async def scenario() -> None:
        client = LiveClient(await connect(url, open_timeout=RECV_TIMEOUT))
        await send_big(client, widest)
        messages, code, _ = await closed_with(client)
        assert code == CLOSE_POLICY and messages[0]["code"] == 401, (code, messages)
        assert "auth: unknown member(s) pad" in messages[0]["message"]

        # One byte over the frame limit: uvicorn refuses it (1009) without reading it; the hub says nothing.
        client = LiveClient(await connect(url, open_timeout=RECV_TIMEOUT))
        await send_big(client, "x" * (MAX_FRAME_BYTES + 1))
        messages, code, _ = await closed_with(client)
        assert (code, messages) == (CLOSE_TOO_BIG, [])

    asyncio.run(scenario())


# -- rate limit -----------------------------------------------------------------------------------------


def test_subscribe_and_unsubscribe_spend_the_credentials_rate_limit(tmp_path: Path) -> None:
    with run_hub(live_settings(tmp_path / "hub", rate_limit=4, rate_window=3600.0)) as hub:
        app = hub.application("counted", Role.CONSUMER, grants=("grid/*:read",))

        async def scenario() -> None:
            client, _ = await open_client(hub, query=app)  # 1: the connect
            await client.subscribe("a", **SUBSTATIONS)  # 2
            await client.subscribe("b", layer="grid", collection="generators")  # 3
            assert await client.request({"action": "unsubscribe", "id": "a"}) == {  # 4
                "type": "ok",
                "action": "unsubscribe",
                "id": "a",
            }
            over = await client.request({"action": "subscribe", "id": "c", **SUBSTATIONS})
            assert (over["type"], over["code"], over["id"]) == ("error", 429, "c"), over
            assert "rate limit of 4 requests per 3600 s exceeded for app 'counted'" in over["message"]
            over = await client.request({"action": "unsubscribe", "id": "b"})
            assert (over["type"], over["code"], over["id"]) == ("error", 429, "b"), over
            await client.pong()  # ping is free, and the connection stays open
            async with hub.rest() as rest:  # the same bucket as the REST API's
                assert (await rest.get("/grid/substations", params=app)).status_code == 429
                assert (await rest.post("/grid/generators", json={"_id": "g"}, headers=hub.admin)).is_success
            event = await client.recv()  # subscription b was kept
            assert (event["sub"], event["id"]) == ("b", "g"), event
            await client.ws.close()

        asyncio.run(scenario())
