"""/config/:layer/:item: layers (_layers documents), collections and series, on both backends."""

from __future__ import annotations

from datetime import timedelta

from gridhub.hub.auth import Role
from gridhub.hub.model import Series
from tests.hub.faces.xflex.conftest import API, GRID_LAYER, Hub

CONFIG = f"{API}/config"
BARE = {"label": "x", "description": "", "collections": []}


def test_admin_creates_and_replaces_a_layer(hub: Hub) -> None:
    response = hub.client.get(f"{CONFIG}/grid/grid", headers=hub.admin)
    assert response.status_code == 200
    assert response.json()["data"] == {
        **GRID_LAYER,
        "collections": [
            {"name": "substations", "geo": True},
            {"name": "generators", "metrics": ["grid.generators"]},
            {"name": "readings"},
        ],
    }
    document = {
        "_id": "ami",
        "label": "AMI",
        "description": "Meters",
        "owner": "retailer",
        "category": "energy",
        "collections": [{"name": "meters", "geo": True}],
        "config": {"retention_days": 30},
    }
    created = hub.client.put(f"{CONFIG}/ami/ami", json=document, headers=hub.admin)
    assert created.json() == {"status": "success", "message": "Layer created"}
    assert hub.client.get(f"{CONFIG}/ami/ami", headers=hub.admin).json()["data"] == document
    replaced = hub.client.put(
        f"{CONFIG}/ami/ami", json={"label": "AMI v2", "description": "", "collections": []}, headers=hub.admin
    )
    assert replaced.json()["message"] == "Layer replaced"
    assert hub.client.get(f"{API}/ami/meters", headers=hub.admin).status_code == 404  # no longer listed


def test_only_admins_create_layers(hub: Hub) -> None:
    for role in (Role.OPERATOR, Role.OWNER, Role.CONSUMER):
        headers = hub.user(f"u-{role.value}", role)
        response = hub.client.put(f"{CONFIG}/ami/ami", json={"label": "AMI"}, headers=headers)
        assert response.status_code == 403 and "only an admin" in response.json()["message"]
    assert hub.client.get(f"{CONFIG}/ami/ami", headers=hub.admin).status_code == 404


def test_bad_layer_documents_are_400_and_change_nothing(hub: Hub) -> None:
    for body, message in [
        ({"_id": "other", "label": "x"}, "differs from the path"),
        ({**BARE, "collections": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
        ({**BARE, "collections": "meters"}, "collections"),
        ({**BARE, "config": {"retention_days": -1}}, "retention_days"),
    ]:
        response = hub.client.put(f"{CONFIG}/ami/ami", json=body, headers=hub.admin)
        assert response.status_code == 400, body
        assert response.json()["status"] == "error" and message in response.json()["message"]
    assert hub.client.get(f"{CONFIG}/ami/ami", headers=hub.admin).status_code == 404
    for name in ("range", "resources", "config"):
        reserved = hub.client.put(f"{CONFIG}/{name}/{name}", json={"label": "x"}, headers=hub.admin)
        assert reserved.status_code == 400 and "reserved" in reserved.json()["message"]


def test_collection_configuration_round_trips_with_extra_members(hub: Hub) -> None:
    dno = hub.user("dno", Role.OWNER)  # the owner of 'grid' configures its collections
    config = {
        "name": "measures",
        "geo": False,
        "publish": ["all", "custom"],
        "http": False,
        "track": {"schema": {"mRID": " ", "timestamp": " ", "measures": {}, "status": " "}, "activity": True},
    }
    created = hub.client.put(f"{CONFIG}/grid/measures", json=config, headers=dno)
    assert created.json() == {"status": "success", "message": "Collection created"}
    got = hub.client.get(f"{CONFIG}/grid/measures", headers=dno).json()["data"]
    assert got == {**config, "metrics": []}
    assert hub.client.post(f"{API}/grid/measures", json={"_id": "m1"}, headers=dno).status_code == 200
    updated = hub.client.put(f"{CONFIG}/grid/measures", json={"geo": True, "metrics": ["grid.measures"]}, headers=dno)
    assert updated.json()["message"] == "Collection replaced"
    assert hub.client.get(f"{CONFIG}/grid/measures", headers=dno).json()["data"] == {
        "name": "measures",
        "geo": True,
        "metrics": ["grid.measures"],
    }
    assert hub.client.get(f"{API}/grid/measures/m1", headers=dno).status_code == 200  # documents stay


def test_collection_configuration_needs_the_owner_or_an_admin(hub: Hub) -> None:
    other = hub.user("other", Role.OWNER)
    refused = hub.client.put(f"{CONFIG}/grid/measures", json={"geo": True}, headers=other)
    assert refused.status_code == 403
    reader = hub.user("reader", Role.CONSUMER, ("grid/substations:read",))
    assert hub.client.get(f"{CONFIG}/grid/substations", headers=reader).json()["data"]["geo"] is True
    assert hub.client.get(f"{CONFIG}/grid/generators", headers=reader).status_code == 403
    assert hub.client.get(f"{CONFIG}/grid/grid", headers=reader).status_code == 200
    bad = hub.client.put(f"{CONFIG}/grid/measures", json={"name": "other"}, headers=hub.admin)
    assert bad.status_code == 400 and "differs" in bad.json()["message"]


def test_series_configuration_by_key(hub: Hub) -> None:
    store = hub.client.app.state.ctx.store  # type: ignore[attr-defined]
    key = "grid/generators/TSO/activePower"
    store.put_series(
        Series(
            key=key,
            layer="grid",
            asset="TSO",
            name="activePower",
            collection="generators",
            unit="W",
            interval=timedelta(minutes=1),
        )
    )
    got = hub.client.get(f"{CONFIG}/grid/{key}", headers=hub.admin).json()["data"]
    assert (got["_id"], got["unit"], got["interval"], got["collection"]) == (key, "W", 60.0, "generators")
    changed = hub.client.put(
        f"{CONFIG}/grid/{key}", json={"unit": "kW", "phase": "L1", "statistic": "mean"}, headers=hub.admin
    )
    assert changed.json() == {"status": "success", "message": "Series replaced"}
    series = store.get_series(key)
    assert (series.unit, series.phase, series.statistic.value, series.interval) == (
        "kW",
        "L1",
        "mean",
        timedelta(minutes=1),
    )
    for body, message in [
        ({"statistic": "median"}, "statistic"),
        ({"colour": "red"}, "unknown member"),
        ({"interval": -5}, "interval"),
    ]:
        bad = hub.client.put(f"{CONFIG}/grid/{key}", json=body, headers=hub.admin)
        assert bad.status_code == 400 and message in bad.json()["message"], body
    assert store.get_series(key).unit == "kW"


def test_unknown_items_are_404(hub: Hub) -> None:
    assert hub.client.get(f"{CONFIG}/nope/nope", headers=hub.admin).status_code == 404
    missing = hub.client.get(f"{CONFIG}/grid/nothing", headers=hub.admin)
    assert missing.status_code == 404 and "neither a collection nor a series" in missing.json()["message"]
    assert hub.client.get(f"{CONFIG}/system/system", headers=hub.admin).status_code == 404


def test_a_layer_needs_label_description_and_collections(hub: Hub) -> None:
    full = {"label": "AMI", "description": "Smart meters", "collections": []}
    for missing in ("label", "description", "collections"):
        body = {k: v for k, v in full.items() if k != missing}
        response = hub.client.put(f"{CONFIG}/ami/ami", json=body, headers=hub.admin)
        assert response.status_code == 400, missing
        assert response.json() == {
            "status": "error",
            "message": f"layer 'ami': {missing} is missing (X-FLEX 3.1.2.1 Table 3: a layer has at least _id, "
            "label, description and collections, which may be an empty list)",
        }
    assert hub.client.get(f"{CONFIG}/ami/ami", headers=hub.admin).status_code == 404
    created = hub.client.put(f"{CONFIG}/ami/ami", json=full, headers=hub.admin)  # no collections yet is fine
    assert created.json() == {"status": "success", "message": "Layer created"}
    assert hub.client.get(f"{CONFIG}/ami/ami", headers=hub.admin).json()["data"] == {
        "_id": "ami",
        "owner": "",
        **full,
    }


def test_a_caller_who_may_not_read_a_layer_cannot_probe_what_exists(hub: Hub) -> None:
    """PLF_008: 403 whether or not the layer or item exists; 404 only for one who could read it."""
    stranger = hub.user("stranger", Role.CONSUMER)
    reader = hub.user("gridreader", Role.CONSUMER, ("grid/substations:read",))
    for path in ("nope/nope", "grid/grid", "grid/nothing", "grid/substations"):
        assert hub.client.get(f"{CONFIG}/{path}", headers=stranger).status_code == 403, path
    assert hub.client.get(f"{CONFIG}/grid/nothing", headers=reader).status_code == 404
    granted_elsewhere = hub.user("ami", Role.CONSUMER, ("ami/meters:read",))
    assert hub.client.get(f"{CONFIG}/ami/ami", headers=granted_elsewhere).status_code == 404  # no such layer yet
