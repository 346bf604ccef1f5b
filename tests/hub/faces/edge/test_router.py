"""The upload face over HTTP: auth, malformed bodies, gzip, size limit, idempotent retries, counters."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from gridhub.hub.auth import AuthService
from gridhub.hub.auth.policy import SYSTEM_LAYER
from gridhub.hub.faces.edge import build_router
from gridhub.hub.store import Store, open_store
from tests.conftest import free_port

SIM = "gridhub_simulator_01"
TOPIC = "/60/busbar/l1/voltage-mean"


@dataclass
class Context:
    settings: Any
    store: Store
    auth: AuthService


class Hub:
    """A real HTTP server (uvicorn on a free port, in a thread) serving the face over a store."""

    def __init__(self, store: Store, settings: dict[str, Any]) -> None:
        auth = AuthService(store)
        for name in ("site-a", "site-b"):
            if auth.get_site(name) is None:
                TOKENS[name] = auth.issue_site_token(name)
        app = FastAPI()
        app.include_router(build_router(Context(SimpleNamespace(**settings), store, auth)), prefix="/edge/v1")
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the test hub did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as opened:
        yield opened


@pytest.fixture
def hubs() -> Iterator[list[Hub]]:
    started: list[Hub] = []
    yield started
    for hub in started:
        hub.stop()


@pytest.fixture
def make_client(hubs: list[Hub]) -> Iterator[Callable[..., httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(store: Store, **settings: Any) -> httpx.Client:
        hub = Hub(store, settings)
        hubs.append(hub)
        clients.append(httpx.Client(base_url=f"http://127.0.0.1:{hub.port}", timeout=10))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(store: Store, make_client: Callable[..., httpx.Client]) -> httpx.Client:
    return make_client(store)


def rows(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "ID": i,
            "Timestamp": 1_700_000_000 + i,
            "SubTopic": TOPIC,
            "Data": {"Timestamp": 1_700_000_000 + 60 * i, "Value": 230.0 + i, "Valid": True},
        }
        for i in range(first, first + count)
    ]


def body(table_rows: list[dict[str, Any]], table: str = SIM) -> dict[str, Any]:
    return {"Batch": "b1", "Tables": [{"TableName": table, "TableRows": table_rows}]}


TOKENS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _tokens() -> Iterator[None]:
    yield
    TOKENS.clear()


def auth(site: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[site]}"}


def nothing_stored(store: Store) -> bool:
    return (
        store.count_samples() == 0
        and not store.list_series()
        and all(layer.id == SYSTEM_LAYER for layer in store.list_layers())
    )


def test_upload_needs_a_valid_site_token(client: httpx.Client, store: Store) -> None:
    token = TOKENS["site-a"]
    for headers in ({}, {"Authorization": "Bearer " + token[:-1]}, {"Authorization": f"Basic {token}"}):
        response = client.post("/edge/v1/upload", json=body(rows(1, 2)), headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["status"] == "error"
    assert nothing_stored(store)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (json.dumps({"Batch": "x"}).encode(), "Tables"),
        (json.dumps(body([{"Timestamp": 1, "SubTopic": "/", "Data": {}}])).encode(), "Tables[0].TableRows[0].ID"),
        (json.dumps(body([{"ID": "7", "Timestamp": 1, "Data": {}}])).encode(), "ID: expected an integer"),
        (json.dumps(body([{"ID": 1, "Timestamp": 1, "SubTopic": "/"}])).encode(), "Data: required"),
        (json.dumps(body(rows(1, 1), table="not an iid")).encode(), "TableName"),
    ],
)
def test_malformed_body_is_400_with_where_and_nothing_stored(
    client: httpx.Client, store: Store, content: bytes, complaint: str
) -> None:
    response = client.post("/edge/v1/upload", content=content, headers=auth("site-a"))
    assert response.status_code == 400
    assert complaint in response.json()["message"]
    assert nothing_stored(store)


def test_one_bad_row_in_a_later_table_stores_nothing_of_the_batch(client: httpx.Client, store: Store) -> None:
    payload = body(rows(1, 3))
    payload["Tables"].append({"TableName": "acme_thermal_01", "TableRows": [{"ID": 1, "Data": {}}]})
    response = client.post("/edge/v1/upload", json=payload, headers=auth("site-a"))
    assert response.status_code == 400 and "Tables[1].TableRows[0].Timestamp" in response.json()["message"]
    assert nothing_stored(store)


def test_gzip_body_is_stored_and_acknowledged_after_commit(client: httpx.Client, store: Store) -> None:
    raw = gzip.compress(json.dumps(body(rows(1, 5))).encode())
    response = client.post(
        "/edge/v1/upload",
        content=raw,
        headers={**auth("site-a"), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {"status": "success", "accepted": {SIM: [1, 2, 3, 4, 5]}, "rejected": {}}
    key = f"site-a/{SIM}/60/busbar/l1/voltage-mean"
    assert store.count_samples(key) == 5
    assert store.get_series(key).unit == "V"
    assert store.get_document("edge", "substations", "site-a").attributes["kind"] == "substation"


def test_broken_gzip_is_400(client: httpx.Client, store: Store) -> None:
    headers = {**auth("site-a"), "Content-Encoding": "gzip"}
    response = client.post("/edge/v1/upload", content=b"\x1f\x8bnot really", headers=headers)
    assert response.status_code == 400 and "gzip" in response.json()["message"]
    assert nothing_stored(store)


def test_too_large_body_is_413_also_after_decompression(store: Store, make_client: Callable[..., httpx.Client]) -> None:
    client = make_client(store, upload_max_bytes=2000)
    big = json.dumps(body(rows(1, 100))).encode()
    assert client.post("/edge/v1/upload", content=big, headers=auth("site-a")).status_code == 413
    bomb = gzip.compress(big)
    assert len(bomb) < 2000
    response = client.post("/edge/v1/upload", content=bomb, headers={**auth("site-a"), "Content-Encoding": "gzip"})
    assert response.status_code == 413 and "fewer rows" in response.json()["message"]
    assert nothing_stored(store)


def test_retried_batch_is_acknowledged_again_and_stored_once(client: httpx.Client, store: Store) -> None:
    payload = body(rows(1, 10))
    payload["Tables"][0]["TableRows"].append(
        {"ID": 11, "Timestamp": 1_700_000_011, "SubTopic": "/error", "Data": {"Errno": 11, "Message": "probe"}}
    )
    first = client.post("/edge/v1/upload", json=payload, headers=auth("site-a")).json()
    second = client.post("/edge/v1/upload", json=payload, headers=auth("site-a")).json()
    assert first == second == {"status": "success", "accepted": {SIM: list(range(1, 12))}, "rejected": {}}
    assert store.count_samples(f"site-a/{SIM}/60/busbar/l1/voltage-mean") == 10
    assert len(store.query_events("edge", asset="site-a", type="lvcap-error")) == 1
    stats = client.get("/edge/v1/sites/site-a/stats", headers=auth("site-a")).json()
    assert stats["received"] == 22 and stats["stored"] == 11 and stats["duplicates"] == 11
    assert stats["rejected"] == 0 and stats["last_upload"].endswith("Z")


def test_overlapping_retry_stores_only_the_new_rows(client: httpx.Client, store: Store) -> None:
    client.post("/edge/v1/upload", json=body(rows(1, 6)), headers=auth("site-a"))
    answer = client.post("/edge/v1/upload", json=body(rows(4, 6)), headers=auth("site-a")).json()
    assert answer["accepted"] == {SIM: [4, 5, 6, 7, 8, 9]}
    stats = client.get("/edge/v1/sites/site-a/stats", headers=auth("site-a")).json()
    assert (stats["stored"], stats["duplicates"]) == (9, 3)


def test_rejected_rows_are_acknowledged_stored_as_events_and_counted(client: httpx.Client, store: Store) -> None:
    table_rows = rows(1, 2)
    table_rows[1]["Data"]["Valid"] = "yes"
    answer = client.post("/edge/v1/upload", json=body(table_rows), headers=auth("site-a")).json()
    assert answer["accepted"] == {SIM: [1]}
    [rejected] = answer["rejected"][SIM]
    assert rejected["ID"] == 2 and "Valid" in rejected["error"]
    [event] = store.query_events("edge", asset="site-a", type="lvcap-rejected")
    assert event.payload["id"] == 2 and event.payload["data"]["Valid"] == "yes"
    again = client.post("/edge/v1/upload", json=body(table_rows), headers=auth("site-a")).json()
    assert again["rejected"][SIM][0]["ID"] == 2  # a retry is told the same, nothing is added
    assert len(store.query_events("edge", asset="site-a", type="lvcap-rejected")) == 1
    stats = client.get("/edge/v1/sites/site-a/stats", headers=auth("site-a")).json()
    assert (stats["stored"], stats["rejected"], stats["duplicates"]) == (1, 1, 2)


def test_a_row_whose_value_is_nan_is_rejected_and_does_not_wedge_the_site(client: httpx.Client, store: Store) -> None:
    table_rows = rows(1, 4)
    table_rows[1]["Data"]["Value"] = float("nan")  # what Python's json writes: NaN, Infinity, -Infinity
    series = {"Timestamp": 1_700_000_000, "StartPoint": 1_700_000_000, "Interval": 60, "Value": [1.0, float("-inf")]}
    table_rows[2]["Data"] = series
    content = json.dumps(body(table_rows)).encode()
    assert b"NaN" in content and b"-Infinity" in content
    answer = client.post("/edge/v1/upload", content=content, headers=auth("site-a"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == {SIM: [1, 4]}
    finite = "expected a finite number (JSON has no NaN or Infinity)"
    assert answer.json()["rejected"] == {
        SIM: [
            {"ID": 2, "error": f"{SIM} row 2: Data.Value: {finite}, got NaN"},
            {"ID": 3, "error": f"{SIM} row 3: Data.Value[1]: {finite}, got -Infinity"},
        ]
    }
    assert store.count_samples(f"site-a/{SIM}{TOPIC}") == 2
    events = store.query_events("edge", asset="site-a", type="lvcap-rejected")
    assert sorted((e.payload["id"], e.payload["data"]["Value"]) for e in events) == [
        (2, "NaN"),
        (3, [1.0, "-Infinity"]),
    ]
    again = client.post("/edge/v1/upload", content=content, headers=auth("site-a"))  # a retry: acknowledged again
    assert again.status_code == 200 and again.json()["accepted"] == {SIM: [1, 4]}
    assert [r["ID"] for r in again.json()["rejected"][SIM]] == [2, 3]
    assert len(store.query_events("edge", asset="site-a", type="lvcap-rejected")) == 2
    stats = client.get("/edge/v1/sites/site-a/stats", headers=auth("site-a")).json()
    assert (stats["stored"], stats["rejected"], stats["duplicates"]) == (2, 2, 4)


def test_a_body_the_fast_parser_refuses_is_still_read_as_json_reads_it(client: httpx.Client, store: Store) -> None:
    utf16 = json.dumps(body(rows(1, 2))).encode("utf-16")  # JSON in UTF-16: orjson refuses it, json reads it
    answer = client.post("/edge/v1/upload", content=utf16, headers=auth("site-a")).json()
    assert answer == {"status": "success", "accepted": {SIM: [1, 2]}, "rejected": {}}
    assert store.count_samples(f"site-a/{SIM}/60/busbar/l1/voltage-mean") == 2
    broken = client.post("/edge/v1/upload", content=b'{"Batch": "b", "Tables": [', headers=auth("site-a"))
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["message"]  # json's own message


def test_sites_are_kept_apart_and_stats_need_the_sites_own_token(
    client: httpx.Client, store: Store, make_client: Callable[..., httpx.Client]
) -> None:
    client.post("/edge/v1/upload", json=body(rows(1, 3)), headers=auth("site-a"))
    client.post("/edge/v1/upload", json=body(rows(1, 3)), headers=auth("site-b"))
    assert store.count_samples(f"site-a/{SIM}/60/busbar/l1/voltage-mean") == 3
    assert store.count_samples(f"site-b/{SIM}/60/busbar/l1/voltage-mean") == 3
    assert client.get("/edge/v1/sites/site-a/stats", headers=auth("site-b")).status_code == 403
    assert client.get("/edge/v1/sites/site-a/stats").status_code == 401
    fresh = make_client(store).get("/edge/v1/sites/site-b/stats", headers=auth("site-b")).json()
    assert fresh["stored"] == 3  # counters are persisted in the store, not in the process


def test_store_down_is_503_asking_to_retry(tmp_path: Path, make_client: Callable[..., httpx.Client]) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    client = make_client(store)
    store.close()
    (tmp_path / "hub.sqlite").unlink()
    (tmp_path / "hub.sqlite").mkdir()  # the database file is gone and cannot be re-created
    response = client.post("/edge/v1/upload", json=body(rows(1, 2)), headers=auth("site-a"))
    assert response.status_code == 503 and "retry" in response.json()["message"]


def test_admins_and_operators_read_any_sites_stats_others_may_not(client: httpx.Client, store: Store) -> None:
    client.post("/edge/v1/upload", json=body(rows(1, 4)), headers=auth("site-a"))
    identities = AuthService(store)
    sessions = {}
    for name, role in (("olga", "operator"), ("carl", "consumer")):
        identities.add_user(name, "correct horse battery staple", role)
        sessions[name] = identities.login(name, "correct horse battery staple")

    def as_user(name: str) -> dict[str, str]:
        return {"X-User-ID": sessions[name].user_id, "X-Auth-Token": sessions[name].token}

    stats = client.get("/edge/v1/sites/site-a/stats", headers=as_user("olga"))
    assert stats.status_code == 200 and stats.json()["stored"] == 4
    assert client.get("/edge/v1/sites/nowhere/stats", headers=as_user("olga")).status_code == 404
    assert client.get("/edge/v1/sites/site-a/stats", headers=as_user("carl")).status_code == 403
    wrong = {"X-User-ID": sessions["olga"].user_id, "X-Auth-Token": "not-the-token"}
    assert client.get("/edge/v1/sites/site-a/stats", headers=wrong).status_code == 401
