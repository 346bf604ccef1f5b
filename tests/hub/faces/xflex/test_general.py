"""/health, /login, token renewal, /logout, /me and the two credential forms of X-FLEX 3.3.1.3."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from gridhub.hub.app import create_app
from gridhub.hub.auth import Role
from gridhub.hub.settings import HubSettings
from tests.hub.auth.conftest import Clock
from tests.hub.faces.xflex.conftest import API, Hub


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_health_answers_any_method_without_credentials(hub: Hub, method: str) -> None:
    response = hub.client.request(method, f"{API}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": "v2.0"}


def test_login_returns_user_id_and_token_usable_as_headers(hub: Hub) -> None:
    hub.auth.add_user("alice", "alice-password", Role.OPERATOR, email="alice@example.org")
    response = hub.client.post(f"{API}/login", json={"user": "alice@example.org", "password": "alice-password"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert set(body["data"]) == {"authToken", "userId", "tokenExpires"}
    headers = {"X-User-ID": body["data"]["userId"], "X-Auth-Token": body["data"]["authToken"]}
    me = hub.client.get(f"{API}/me", headers=headers).json()["data"]
    assert (me["username"], me["role"], me["type"]) == ("alice", "operator", "user")


def test_credentials_work_as_query_parameters_too(hub: Hub) -> None:
    params = hub.app("dashboard", Role.CONSUMER, ("grid/substations:read",))
    response = hub.client.get(f"{API}/grid/substations", params=params)
    assert response.status_code == 200 and response.json() == {"status": "success", "data": []}
    as_headers = {"X-User-ID": params["appId"], "X-Auth-Token": params["keyId"]}  # the annex: "User ID or App ID"
    assert hub.client.get(f"{API}/grid/substations", headers=as_headers).status_code == 200
    user = hub.admin
    query = {"appId": user["X-User-ID"], "keyId": user["X-Auth-Token"]}
    assert hub.client.get(f"{API}/grid/substations", params=query).status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "credentials required"),
        ({"X-User-ID": "nobody", "X-Auth-Token": "nothing"}, "wrong credentials"),
        ({"X-User-ID": "nobody"}, "credentials required"),
    ],
)
def test_missing_or_wrong_credentials_answer_401(hub: Hub, headers: dict[str, str], message: str) -> None:
    response = hub.client.get(f"{API}/grid/substations", headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == "error" and message in response.json()["message"]


def test_wrong_password_answers_401_in_the_envelope(hub: Hub) -> None:
    response = hub.client.post(f"{API}/login", json={"user": "root", "password": "not-the-password"})
    assert response.status_code == 401
    assert response.json() == {"status": "error", "message": "wrong user or password"}
    response = hub.client.post(f"{API}/login", json={"user": "root"})
    assert response.status_code == 400 and "password" in response.json()["message"]


def test_token_expires_and_renewal_extends_the_session(hub: Hub) -> None:
    ttl = hub.settings.token_ttl
    headers = hub.user("alice", Role.OPERATOR)
    hub.clock.advance(seconds=ttl - 60)
    renewed = hub.client.post(f"{API}/login/renew", headers=headers)
    assert renewed.status_code == 200, renewed.text
    data = renewed.json()["data"]
    assert data["userId"] == headers["X-User-ID"] and data["authToken"] != headers["X-Auth-Token"]
    new_headers = {"X-User-ID": data["userId"], "X-Auth-Token": data["authToken"]}
    assert hub.client.get(f"{API}/me", headers=headers).status_code == 401  # the old token was replaced
    hub.clock.advance(seconds=120)  # past the first token's expiry, within the renewed one
    assert hub.client.get(f"{API}/me", headers=new_headers).status_code == 200
    hub.clock.advance(seconds=ttl)
    expired = hub.client.get(f"{API}/me", headers=new_headers)
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    assert hub.client.post(f"{API}/login/renew", headers=new_headers).status_code == 401


def test_applications_need_no_renewal(hub: Hub) -> None:
    params = hub.app("dashboard")
    response = hub.client.post(f"{API}/login/renew", params=params)
    assert response.status_code == 400 and "do not expire" in response.json()["message"]


def test_logout_ends_the_session(hub: Hub) -> None:
    headers = hub.user("alice", Role.CONSUMER)
    response = hub.client.post(f"{API}/logout", headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "success"
    assert hub.client.get(f"{API}/me", headers=headers).status_code == 401


def test_rate_limit_per_credential_answers_429(hub_settings: HubSettings, clock: Clock) -> None:
    settings = dataclasses.replace(hub_settings, rate_limit=3, rate_window=3600.0)
    with TestClient(create_app(settings, clock=clock)) as client:
        hub = Hub(client, settings, clock)
        one, other = hub.app("one", Role.OPERATOR), hub.app("other", Role.OPERATOR)
        codes = [client.get(f"{API}/me", params=one).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = client.get(f"{API}/me", params=one)
        assert limited.json()["status"] == "error" and "rate limit" in limited.json()["message"]
        assert int(limited.headers["Retry-After"]) >= 1
        assert client.get(f"{API}/me", params=other).status_code == 200  # another credential is unaffected


def test_repeated_wrong_logins_are_slowed_down(hub_settings: HubSettings, clock: Clock) -> None:
    settings = dataclasses.replace(hub_settings, rate_limit=2, rate_window=3600.0)
    with TestClient(create_app(settings, clock=clock)) as client:
        codes = [client.post(f"{API}/login", json={"user": "x", "password": "wrong-one"}).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
