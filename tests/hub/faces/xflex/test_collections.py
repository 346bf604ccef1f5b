"""Documents of /:layer/:col and /:layer/:col/:id, fields, bulk, range and near, on both backends."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gridhub.hub.auth import SYSTEM_LAYER, Role
from gridhub.hub.settings import HubSettings
from tests.hub.auth.conftest import Clock
from tests.hub.faces.xflex.conftest import API, Hub, start_hub

SUBS = f"{API}/grid/substations"
GENERATORS = [
    {"_id": "TSO", "substation": "CR_I8", "kind": "wind", "capacity": 30, "active": True},
    {"_id": "G2", "substation": "CR_I8", "kind": "solar", "capacity": 5, "active": False},
    {"_id": "G3", "substation": "CR_J1", "kind": "solar", "capacity": "12"},
]


def insert(hub: Hub, url: str, body: Any) -> dict[str, Any]:
    response = hub.client.post(url, json=body, headers=hub.admin)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def ids(response: Any) -> list[str]:
    return [doc["_id"] for doc in response.json()["data"]]


def test_insert_one_then_get_it(hub: Hub) -> None:
    body = insert(hub, SUBS, {"_id": "S1", "name": "Bristol"})
    assert body == {
        "status": "success",
        "message": "Item(s) inserted",
        "data": {"ok": 1, "insertedIds": ["S1"], "err": 0, "errorIds": [], "errors": []},
    }
    doc = hub.client.get(f"{SUBS}/S1", headers=hub.admin).json()
    assert doc["status"] == "success"
    assert doc["data"]["_id"] == "S1" and doc["data"]["name"] == "Bristol" and doc["data"]["_expired"] is False
    assert doc["data"]["_updated"].endswith("Z")


def test_insert_many_reports_each_refusal(hub: Hub) -> None:
    insert(hub, SUBS, {"_id": "S1"})
    body = insert(hub, SUBS, [{"_id": "S2"}, {"_id": "S1"}, {"name": "no id"}, {"_id": "S4", "_updated": "soon"}])
    data = body["data"]
    assert body["status"] == "success"
    assert data["ok"] == 2 and data["insertedIds"][0] == "S2" and len(data["insertedIds"]) == 2
    assert data["err"] == 2 and data["errorIds"] == ["S1", "S4"]
    assert "already exists" in data["errors"][0]["message"]
    assert len(hub.client.get(SUBS, headers=hub.admin).json()["data"]) == 3


def test_insert_where_everything_fails_is_a_400_with_the_report(hub: Hub) -> None:
    insert(hub, SUBS, {"_id": "S1"})
    response = hub.client.post(SUBS, json={"_id": "S1"}, headers=hub.admin)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error" and "already exists" in body["message"]
    assert body["data"]["err"] == 1 and body["data"]["errorIds"] == ["S1"]
    not_a_document = hub.client.post(SUBS, json=[1, 2], headers=hub.admin)
    assert not_a_document.status_code == 400 and not_a_document.json()["status"] == "error"


def test_query_string_selects_like_the_x_flex_server(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    insert(hub, url, GENERATORS)
    get = hub.client.get
    assert ids(get(url, headers=hub.admin)) == ["G2", "G3", "TSO"]
    assert ids(get(url, params={"kind": "solar"}, headers=hub.admin)) == ["G2", "G3"]
    assert ids(get(url, params={"capacity": "12"}, headers=hub.admin)) == ["G3"]  # the string "12"...
    assert ids(get(url, params={"capacity": "30"}, headers=hub.admin)) == ["TSO"]  # ...and the number 30
    assert ids(get(url, params={"active": "true"}, headers=hub.admin)) == ["TSO"]
    assert ids(get(url, params={"capacity[$gte]": "5"}, headers=hub.admin)) == ["G2", "TSO"]
    assert ids(get(url, params=[("_id", "G2"), ("_id", "G3")], headers=hub.admin)) == ["G2", "G3"]
    assert ids(get(url, params={"active[$exists]": "false"}, headers=hub.admin)) == ["G3"]
    assert ids(get(url, params={"kind[$ne]": "solar"}, headers=hub.admin)) == ["TSO"]
    selector = json.dumps({"$or": [{"kind": "wind"}, {"capacity": {"$lt": 10}}]})
    assert ids(get(url, params={"selector": selector}, headers=hub.admin)) == ["G2", "TSO"]
    assert ids(get(url, params={"sort": "-capacity", "kind[$in]": "wind"}, headers=hub.admin)) == ["TSO"]
    assert ids(get(url, params={"sort": "_id", "limit": 1, "skip": 1}, headers=hub.admin)) == ["G3"]


def test_bad_selectors_are_400_with_the_reason(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    bad = hub.client.get(url, params={"selector": "{not json"}, headers=hub.admin)
    assert bad.status_code == 400 and "selector" in bad.json()["message"]
    bad = hub.client.get(url, params={"kind[$regex]": "s.*"}, headers=hub.admin)
    assert bad.status_code == 400 and "$regex" in bad.json()["message"]
    bad = hub.client.get(url, params={"selector": json.dumps({"$where": "1"})}, headers=hub.admin)
    assert bad.status_code == 400 and "$where" in bad.json()["message"]


def test_query_limit_refuses_unbounded_answers(hub_settings: HubSettings, clock: Clock) -> None:
    with start_hub(dataclasses.replace(hub_settings, query_limit=2), clock) as hub:
        url = f"{API}/grid/generators"
        insert(hub, url, GENERATORS)
        too_many = hub.client.get(url, headers=hub.admin)
        assert too_many.status_code == 400 and "limit and skip" in too_many.json()["message"]
        assert ids(hub.client.get(url, params={"limit": 2}, headers=hub.admin)) == ["G2", "G3"]
        over = hub.client.get(url, params={"limit": 3}, headers=hub.admin)
        assert over.status_code == 400 and "at most 2" in over.json()["message"]


def test_patch_many_reports_updated_and_missing(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    insert(hub, url, GENERATORS)
    response = hub.client.patch(
        url, json=[{"_id": "G2", "capacity": 6}, {"_id": "nope", "x": 1}, {"capacity": 1}], headers=hub.admin
    )
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Item(s) updated"
    data = body["data"]
    assert (data["ok"], data["updatedIds"], data["err"], data["errorIds"]) == (1, ["G2"], 2, ["nope"])
    assert hub.client.get(f"{url}/G2", headers=hub.admin).json()["data"]["capacity"] == 6
    single = hub.client.patch(url, json={"_id": "nope", "x": 1}, headers=hub.admin)
    assert single.status_code == 404 and single.json()["status"] == "error"


def test_patch_one_merges_and_null_removes(hub: Hub) -> None:
    insert(hub, SUBS, {"_id": "S1", "name": "Bristol", "meta": {"a": 1, "b": 2}})
    response = hub.client.patch(f"{SUBS}/S1", json={"meta": {"b": None, "c": 3}, "name": None}, headers=hub.admin)
    assert response.json() == {"status": "success", "message": "Item updated"}
    doc = hub.client.get(f"{SUBS}/S1", headers=hub.admin).json()["data"]
    assert doc["meta"] == {"a": 1, "c": 3} and "name" not in doc
    moved = hub.client.patch(f"{SUBS}/S1", json={"_id": "S2"}, headers=hub.admin)
    assert moved.status_code == 400 and "_id cannot be changed" in moved.json()["message"]
    missing = hub.client.patch(f"{SUBS}/nope", json={"a": 1}, headers=hub.admin)
    assert missing.status_code == 404


def test_delete_one_and_delete_matching(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    insert(hub, url, GENERATORS)
    assert hub.client.delete(f"{url}/G3", headers=hub.admin).json() == {"status": "success", "message": "Item deleted"}
    assert hub.client.delete(f"{url}/G3", headers=hub.admin).status_code == 404
    response = hub.client.delete(url, params={"kind": "solar"}, headers=hub.admin)
    assert response.json() == {
        "status": "success",
        "message": "Item(s) deleted",
        "data": {"ok": 1, "deletedIds": ["G2"], "err": 0, "errorIds": []},
    }
    everything = hub.client.delete(url, headers=hub.admin).json()["data"]
    assert everything["deletedIds"] == ["TSO"]
    assert hub.client.get(url, headers=hub.admin).json()["data"] == []


def test_field_routes_return_id_and_the_field(hub: Hub) -> None:
    insert(hub, SUBS, [{"_id": "S1", "site": {"name": "Bristol", "code": 7}}, {"_id": "S2"}])
    all_docs = hub.client.get(f"{SUBS}/field/site.name", headers=hub.admin).json()["data"]
    assert all_docs == [{"_id": "S1", "site": {"name": "Bristol"}}, {"_id": "S2"}]
    one = hub.client.get(f"{SUBS}/S1/field/site", headers=hub.admin).json()["data"]
    assert one == {"_id": "S1", "site": {"name": "Bristol", "code": 7}}


def test_bulk_inserts_new_updates_existing_and_init_empties_first(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    insert(hub, url, GENERATORS[:2])
    body = {"data": [{"_id": "TSO", "capacity": 31}, {"_id": "G9", "kind": "hydro"}, {"_id": "G9"}]}
    response = hub.client.post(f"{API}/bulk/grid/generators", json=body, headers=hub.admin)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["ok"], data["insertedIds"], data["updatedIds"], data["err"]) == (2, ["G9"], ["TSO"], 1)
    assert hub.client.get(f"{url}/TSO", headers=hub.admin).json()["data"]["capacity"] == 31
    fresh = hub.client.post(
        f"{API}/bulk/grid/generators", json={"data": [{"_id": "N1"}], "init": True}, headers=hub.admin
    )
    assert fresh.json()["data"]["insertedIds"] == ["N1"]
    assert ids(hub.client.get(url, headers=hub.admin)) == ["N1"]


def test_range_selects_on_a_date_field(hub: Hub) -> None:
    url = f"{API}/grid/readings"
    insert(
        hub,
        url,
        [
            {"_id": "r1", "timestamp": "2024-01-01T00:00:00Z"},
            {"_id": "r2", "timestamp": "2024-01-01T01:00:00+01:00"},  # the same instant as r1, another zone
            {"_id": "r3", "timestamp": "2024-01-02T00:00:00Z", "measured": "2024-01-01T12:00:00Z"},
            {"_id": "r4", "timestamp": 1704153600000},  # epoch ms: 2024-01-02T00:00Z
        ],
    )
    response = hub.client.get(
        f"{API}/range/grid/readings",
        params={"from": "2024-01-01T00:00:00Z", "to": "2024-01-01T23:00:00Z"},
        headers=hub.admin,
    )
    assert response.status_code == 200 and sorted(ids(response)) == ["r1", "r2"]
    later = hub.client.get(
        f"{API}/range/grid/readings",
        params={"from": "2024-01-01T23:00:00Z", "to": "2024-01-03T00:00:00Z"},
        headers=hub.admin,
    )
    assert sorted(ids(later)) == ["r3", "r4"]
    by_field = hub.client.get(
        f"{API}/range/grid/readings",
        headers=hub.admin,
        params={"from": "2024-01-01T06:00:00Z", "to": "2024-01-01T18:00:00Z", "field": "measured"},
    )
    assert ids(by_field) == ["r3"]
    missing = hub.client.get(f"{API}/range/grid/readings", params={"from": "2024-01-01T00:00:00Z"}, headers=hub.admin)
    assert missing.status_code == 400 and "to" in missing.json()["message"]
    bad = hub.client.get(f"{API}/range/grid/readings", params={"from": "yesterday", "to": "now"}, headers=hub.admin)
    assert bad.status_code == 400 and "from" in bad.json()["message"]


def test_near_finds_geometries_within_metres_nearest_first(hub: Hub) -> None:
    insert(
        hub,
        SUBS,
        [
            {"_id": "here", "geometry": {"type": "Point", "coordinates": [-0.4082334, 39.4629887]}},
            {"_id": "400m", "geometry": {"type": "Point", "coordinates": [-0.4082334, 39.4665887]}},
            {"_id": "far", "geometry": {"type": "Point", "coordinates": [2.17, 41.38]}},
            {"_id": "no-geometry"},
        ],
    )
    near = f"{API}/near/grid/substations"
    point = {"lat": 39.4629887, "lon": -0.4082334}
    assert ids(hub.client.get(near, params={**point, "distance": 100}, headers=hub.admin)) == ["here"]
    assert ids(hub.client.get(near, params={**point, "distance": 1000}, headers=hub.admin)) == ["here", "400m"]
    bad = hub.client.get(near, params={**point, "distance": -1}, headers=hub.admin)
    assert bad.status_code == 400 and "distance" in bad.json()["message"]


def test_measurements_update_state_and_history(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    insert(
        hub,
        url,
        {
            "_id": "TSO",
            "measurements": {
                "activePower": {"value": 3660.1, "quality": 1, "timestamp": "2021-07-28T07:48:17.103+02:00"}
            },
        },
    )
    hub.client.patch(
        f"{url}/TSO",
        json={
            "measurements": {
                "activePower": {"value": 3700.0, "quality": 1, "timestamp": "2021-07-28T07:49:17.103+02:00"}
            }
        },
        headers=hub.admin,
    )
    doc = hub.client.get(f"{url}/TSO", headers=hub.admin).json()["data"]
    assert doc["measurements"]["activePower"]["value"] == 3700.0
    store = hub.client.app.state.ctx.store  # type: ignore[attr-defined]
    assert store.count_samples("grid/generators/TSO/activePower") == 2


def test_unknown_layer_unlisted_collection_and_reserved_layer_are_404(hub: Hub) -> None:
    for url, message in [
        (f"{API}/nope/things", "layer 'nope' does not exist"),
        (f"{API}/grid/things", "collection 'things' is not listed in layer 'grid'"),
        (f"{API}/_system/users", "layer '_system' does not exist"),
        (f"{API}/_system/users/x", "layer '_system' does not exist"),
        (f"{API}/{SYSTEM_LAYER}/users", f"layer '{SYSTEM_LAYER}' does not exist"),
        (f"{API}/{SYSTEM_LAYER}/tokens/x", f"layer '{SYSTEM_LAYER}' does not exist"),
    ]:
        response = hub.client.get(url, headers=hub.admin)
        assert response.status_code == 404, url
        assert response.json() == {"status": "error", "message": message}
    missing = hub.client.get(f"{SUBS}/nope", headers=hub.admin)
    assert missing.status_code == 404 and "'nope' does not exist" in missing.json()["message"]


def test_each_credential_sees_only_its_data(hub: Hub) -> None:
    hub.put_layer(
        {"_id": "ami", "label": "AMI", "description": "", "owner": "retailer", "collections": [{"name": "meters"}]}
    )
    insert(hub, f"{API}/ami/meters", {"_id": "M1"})
    insert(hub, SUBS, {"_id": "S1"})
    dno = hub.user("dno", Role.OWNER)  # owns 'grid'
    reader = hub.user("reader", Role.CONSUMER, ("grid/substations:read",))
    app = hub.app("meter-app", Role.CONSUMER, ("ami/*:read",))
    assert hub.client.get(SUBS, headers=dno).status_code == 200
    assert hub.client.post(SUBS, json={"_id": "S2"}, headers=dno).status_code == 200
    refused = hub.client.get(f"{API}/ami/meters", headers=dno)
    assert refused.status_code == 403 and refused.json() == {
        "status": "error",
        "message": "user 'dno' may not read ami/meters",
    }
    assert ids(hub.client.get(SUBS, headers=reader)) == ["S1", "S2"]
    assert hub.client.get(f"{API}/ami/meters", headers=reader).status_code == 403
    assert hub.client.get(f"{API}/grid/generators", headers=reader).status_code == 403
    assert hub.client.post(SUBS, json={"_id": "S3"}, headers=reader).status_code == 403
    assert hub.client.delete(f"{SUBS}/S1", headers=reader).status_code == 403
    assert ids(hub.client.get(f"{API}/ami/meters", params=app)) == ["M1"]
    assert hub.client.get(SUBS, params=app).status_code == 403
    assert (
        hub.client.get(
            f"{API}/range/ami/meters", params={**app, "from": "2024-01-01T00:00:00Z", "to": "2024-01-02T00:00:00Z"}
        ).status_code
        == 200
    )


def test_insert_many_refuses_only_the_items_that_are_not_documents(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    body = insert(hub, url, [{"_id": "PV1"}, {"_id": "TSO"}, {"name": "noid"}, 5])
    data = body["data"]
    assert body["status"] == "success" and data["ok"] == 3 and data["insertedIds"][:2] == ["PV1", "TSO"]
    assert data["err"] == 1 and data["errorIds"] == []  # 3.3.1.2.4: only an erring document's _id is listed
    assert data["errors"] == [
        {"index": 3, "_id": None, "message": "documents[3]: expected a JSON object, got a number"}
    ]
    stored = hub.client.get(url, headers=hub.admin).json()["data"]
    assert sorted(d.get("name", d["_id"]) for d in stored) == ["PV1", "TSO", "noid"]
    none = hub.client.post(url, json=["x", None], headers=hub.admin)
    assert none.status_code == 400 and none.json()["data"]["err"] == 2
    assert "documents[0]: expected a JSON object, got a string" in none.json()["message"]


def test_patch_many_refuses_only_the_items_that_are_not_documents(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    insert(hub, url, GENERATORS)
    response = hub.client.patch(
        url, json=[{"_id": "G2", "active": True}, [1], {"_id": "G3", "x": 1}], headers=hub.admin
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["ok"] == 2 and data["updatedIds"] == ["G2", "G3"] and data["err"] == 1 and data["errorIds"] == []
    assert data["errors"][0]["index"] == 1 and "expected a JSON object, got an array" in data["errors"][0]["message"]
    assert hub.client.get(f"{url}/G2", headers=hub.admin).json()["data"]["active"] is True


def test_near_on_a_collection_that_is_not_geo_is_400(hub: Hub) -> None:
    point = {"lat": 51.45, "lon": -2.58, "distance": 100}
    response = hub.client.get(f"{API}/near/grid/generators", params=point, headers=hub.admin)
    assert response.status_code == 400
    assert response.json()["message"].startswith("collection generators of layer grid is not geo")
    assert hub.client.get(f"{API}/near/grid/substations", params=point, headers=hub.admin).status_code == 200


def test_callers_without_a_grant_cannot_tell_what_exists(hub: Hub) -> None:
    hub.put_layer(
        {"_id": "lay2", "label": "Layer 2", "description": "second layer", "collections": [{"name": "listed"}]}
    )
    stranger = hub.user("stranger", Role.CONSUMER, ("grid/substations:read",))
    answers = {
        name: hub.client.get(f"{API}/{name}", headers=stranger)
        for name in ("lay2/listed", "lay2/x", "nolayer/x", "grid/generators", "grid/x")
    }
    for name, response in answers.items():
        assert response.status_code == 403, (name, response.text)
        assert response.json()["message"] == f"user 'stranger' may not read {name}"
    queries = {
        "range": {"from": "2024-01-01T00:00:00Z", "to": "2024-01-02T00:00:00Z"},
        "near": {"lat": 0, "lon": 0, "distance": 1},
    }
    for url in (f"{API}/range/lay2/x", f"{API}/near/nolayer/x", f"{API}/lay2/x/D1", f"{API}/nolayer/x/field/a"):
        query = queries.get(url.split("/")[3], {})
        assert hub.client.get(url, params=query, headers=stranger).status_code == 403, url
    reader = hub.user("reader2", Role.CONSUMER, ("lay2/*:read",))  # may read every collection of lay2
    missing = hub.client.get(f"{API}/lay2/x", headers=reader)
    assert missing.status_code == 404 and missing.json()["message"] == "collection 'x' is not listed in layer 'lay2'"
    assert hub.client.get(f"{API}/nolayer/x", headers=hub.admin).status_code == 404
    writer = hub.user("owner2", Role.OWNER)
    assert hub.client.post(f"{API}/lay2/x", json={"_id": "D1"}, headers=writer).status_code == 403


def test_sort_across_types_pages_the_same_on_both_backends(hub: Hub) -> None:
    url = f"{API}/grid/readings"
    docs = [
        {"_id": "F1", "n": 1},
        {"_id": "F2", "n": "1"},
        {"_id": "F3", "n": 2.5},
        {"_id": "F4"},
        {"_id": "F5", "n": True},
    ]
    insert(hub, url, docs)
    pages = [
        ids(hub.client.get(url, params={"sort": "-n", "limit": 2, "skip": s}, headers=hub.admin)) for s in (0, 2, 4)
    ]
    # MongoDB's type order, reversed: booleans, strings, numbers, then missing.
    assert pages == [["F5", "F2"], ["F3", "F1"], ["F4"]]
    assert ids(hub.client.get(url, params={"sort": "n"}, headers=hub.admin)) == ["F4", "F1", "F3", "F2", "F5"]


def test_field_names_with_dots_or_dollars_are_refused_naming_the_path(hub: Hub) -> None:
    url = f"{API}/grid/readings"
    body = insert(hub, url, [{"_id": "R1", "site": {"zone": "north"}}, {"_id": "R2", "site": {"zone.name": "x"}}])
    assert body["data"]["insertedIds"] == ["R1"] and body["data"]["errorIds"] == ["R2"]
    message = body["data"]["errors"][0]["message"]
    assert message.startswith("documents[1]: field 'site.zone.name': a field name must not contain '.' or start")
    one = hub.client.post(url, json={"_id": "R3", "a.b": 1}, headers=hub.admin)
    assert one.status_code == 400 and "field 'a.b'" in one.json()["message"]
    patched = hub.client.patch(f"{url}/R1", json={"$set": {"x": 1}}, headers=hub.admin)
    assert patched.status_code == 400
    assert patched.json()["status"] == "error" and "field '$set'" in patched.json()["message"]
    many = hub.client.patch(url, json=[{"_id": "R1", "ok": 1}, {"_id": "R1", "rows": [{"$x": 1}]}], headers=hub.admin)
    assert many.status_code == 200
    assert many.json()["data"]["updatedIds"] == ["R1"] and many.json()["data"]["errorIds"] == ["R1"]
    assert "field 'rows[0].$x'" in many.json()["data"]["errors"][0]["message"]
    doc = hub.client.get(f"{url}/R1", headers=hub.admin).json()["data"]
    assert doc["site"] == {"zone": "north"} and doc["ok"] == 1 and "rows" not in doc and "x" not in doc
    assert ids(hub.client.get(url, headers=hub.admin)) == ["R1"]


def test_bulk_in_query_and_delete_handle_thousands_of_documents(hub: Hub) -> None:
    # An $in of 998 or more values, which bulk and delete build from the ids they touch, used to nest
    # SQLite's expression tree too deep: 503 "store unavailable" and nothing written.
    url = f"{API}/grid/generators"
    bulk = f"{API}/bulk/grid/generators"
    first = hub.client.post(
        bulk, json={"data": [{"_id": f"G{i:04d}", "capacity": i} for i in range(2500)]}, headers=hub.admin
    )
    assert first.status_code == 200, first.text
    assert first.json()["data"]["ok"] == 2500 and first.json()["data"]["err"] == 0
    again = [{"_id": f"G{i:04d}", "capacity": -i} for i in range(2400, 4900)]  # 100 stored, 2,400 new
    second = hub.client.post(bulk, json={"data": again}, headers=hub.admin).json()["data"]
    assert second["updatedIds"] == [f"G{i:04d}" for i in range(2400, 2500)]
    assert second["insertedIds"] == [f"G{i:04d}" for i in range(2500, 4900)]
    wanted = [f"G{i:04d}" for i in range(0, 5000, 2)]  # 2,450 stored and 50 never written
    selector = json.dumps({"_id": {"$in": wanted}})
    found = hub.client.get(url, params={"selector": selector}, headers=hub.admin)
    assert found.status_code == 200, found.text
    assert ids(found) == wanted[:2450]
    by_query_string = hub.client.get(url, params=[("_id[$in]", i) for i in wanted[:1200]], headers=hub.admin)
    assert ids(by_query_string) == wanted[:1200]
    negative = hub.client.delete(url, params={"capacity[$lt]": "0"}, headers=hub.admin)
    assert negative.status_code == 200, negative.text
    assert negative.json()["data"]["deletedIds"] == [f"G{i:04d}" for i in range(2400, 4900)]
    rest = hub.client.delete(url, headers=hub.admin).json()["data"]
    assert rest["ok"] == 2400 and rest["deletedIds"] == [f"G{i:04d}" for i in range(2400)]
    assert hub.client.get(url, headers=hub.admin).json()["data"] == []
