"""The X-FLEX error envelope and its HTTP codes, including routing, validation and store failures."""

from __future__ import annotations

import json
from pathlib import Path

from tests.hub.auth.conftest import Clock
from tests.hub.faces.xflex.conftest import API, Hub, make_settings, start_hub
from tests.hub.store.conftest import create_database, drop_database, pg_url


def test_unknown_route_is_404_in_the_envelope(hub: Hub) -> None:
    response = hub.client.get(f"{API}/a/b/c/d/e/f", headers=hub.admin)
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": f"no route GET {API}/a/b/c/d/e/f"}


def test_wrong_method_is_405_and_names_the_allowed_ones(hub: Hub) -> None:
    response = hub.client.put(f"{API}/grid/substations/S1", json={}, headers=hub.admin)
    assert response.status_code == 405
    body = response.json()
    assert body["status"] == "error" and "method PUT is not allowed" in body["message"]
    assert "GET" in response.headers["allow"]
    assert hub.client.get(f"{API}/gateway", headers=hub.admin).status_code == 405
    assert hub.client.get(f"{API}/notify/email", headers=hub.admin).status_code == 405


def test_validation_errors_are_400_and_say_where(hub: Hub) -> None:
    not_json = hub.client.post(
        f"{API}/grid/substations", content=b"{oops", headers={**hub.admin, "content-type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["status"] == "error"
    assert "JSON" in not_json.json()["message"]
    wrong_type = hub.client.get(
        f"{API}/near/grid/substations", params={"lat": "north", "lon": 0, "distance": 1}, headers=hub.admin
    )
    assert wrong_type.status_code == 400
    assert wrong_type.json()["message"].startswith("invalid request: query.lat:")
    extra = hub.client.post(f"{API}/login", json={"user": "root", "password": "x", "remember": True})
    assert extra.status_code == 400 and "remember" in extra.json()["message"]


def test_policy_refusal_is_403(hub: Hub) -> None:
    reader = hub.user("reader", "consumer")
    response = hub.client.post(f"{API}/grid/substations", json={"_id": "S1"}, headers=reader)
    assert response.status_code == 403
    assert response.json() == {"status": "error", "message": "user 'reader' may not write grid/substations"}


def test_other_faces_keep_their_own_error_bodies(hub: Hub) -> None:
    response = hub.client.get("/nowhere")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_store_outage_is_503(tmp_path: Path, clock: Clock) -> None:
    database = create_database("gridhub_outage")  # skips when PostgreSQL is absent
    try:
        settings = make_settings(pg_url(database), tmp_path / "hub")
        with start_hub(settings, clock) as hub:
            assert hub.client.get(f"{API}/grid/substations", headers=hub.admin).status_code == 200
            drop_database(database)  # the server goes away under the running hub
            response = hub.client.get(f"{API}/grid/substations", headers=hub.admin)
            assert response.status_code == 503
            assert response.json() == {"status": "error", "message": "the hub store is unavailable; try again later"}
    finally:
        drop_database(database)


def test_405_allow_names_every_method_of_the_matching_routes(hub: Hub) -> None:
    options = hub.client.options(f"{API}/grid/generators", headers=hub.admin)
    assert options.status_code == 405 and options.json()["status"] == "error"
    assert set(options.headers["allow"].split(", ")) == {"GET", "POST", "PATCH", "DELETE"}
    assert "(allowed: GET, POST, PATCH, DELETE)" in options.json()["message"]
    put = hub.client.put(f"{API}/grid/generators/CT1", json={}, headers=hub.admin)
    assert put.status_code == 405
    assert set(put.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    email = hub.client.get(f"{API}/notify/email", headers=hub.admin)
    assert email.status_code == 405 and email.headers["allow"] == "POST"
    for method in put.headers["allow"].split(", "):  # every advertised method is really routed there
        assert hub.client.request(method, f"{API}/grid/generators/CT1", headers=hub.admin).status_code != 405


def test_a_body_that_is_not_json_says_to_send_json(hub: Hub) -> None:
    url = f"{API}/grid/generators"
    form = hub.client.post(url, content=b'{"_id": "G1"}', headers={**hub.admin, "content-type": "text/plain"})
    assert form.status_code == 400
    assert "send Content-Type: application/json" in form.json()["message"]
    urlencoded = hub.client.post(url, data={"_id": "G1"}, headers=hub.admin)  # what curl -d sends
    assert urlencoded.status_code == 400 and "Content-Type: application/json" in urlencoded.json()["message"]
    patch = hub.client.patch(
        f"{url}/G1", content=b'{"a": 1}', headers={**hub.admin, "content-type": "application/x-www-form-urlencoded"}
    )
    assert patch.status_code == 400 and "Content-Type: application/json" in patch.json()["message"]
    empty = hub.client.post(url, content=b"", headers={**hub.admin, "content-type": "application/json"})
    assert empty.status_code == 400 and "body: required" in empty.json()["message"], empty.text
    for body in (5, "G1", True, None):
        scalar = hub.client.post(
            url, content=json.dumps(body), headers={**hub.admin, "content-type": "application/json"}
        )
        assert scalar.status_code == 400, body
        assert "body: expected a JSON object or an array of objects" in scalar.json()["message"], scalar.text
    assert hub.client.get(url, headers=hub.admin).json()["data"] == []  # nothing was written
