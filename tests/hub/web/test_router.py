"""The status page through HTTP: login, session cookie, what each user sees, escaping, logout, CSRF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridhub.hub.app import create_app
from gridhub.hub.auth import AuthService, Role
from gridhub.hub.settings import HubSettings
from gridhub.hub.web import COOKIE

SIMULATOR = "gridhub_simulator_01"
THERMAL = "gridhub_thermal_01"
T0 = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
PASSWORD = "admin-password-1"


@dataclass
class Hub:
    client: TestClient

    @property
    def auth(self) -> AuthService:
        service: AuthService = self.client.app.state.ctx.auth  # type: ignore[attr-defined]
        return service

    def upload(self, site: str, minutes: int = 30) -> None:
        """Register site (if new) and upload `minutes` minutes of readings as its uploader would."""
        token = self.auth.issue_site_token(site)
        rows: dict[str, list[dict[str, Any]]] = {SIMULATOR: [], THERMAL: []}
        row_id = 0
        for minute in range(1, minutes + 1):
            stamp = T0 + 60 * minute
            points = {
                (SIMULATOR, "/60/busbar/l1/voltage-mean"): 240.5,
                (SIMULATOR, "/60/busbar/l2/voltage-mean"): 241.0,
                (SIMULATOR, "/60/busbar/l3/voltage-mean"): 239.0,
                (SIMULATOR, "/60/transformer/l1/power-active-mean"): 40_000.0 + 100 * minute,
                (SIMULATOR, "/60/transformer/l2/power-active-mean"): 41_000.0,
                (SIMULATOR, "/60/transformer/l3/power-active-mean"): 42_000.0,
                (SIMULATOR, "/60/transformer/l1/current-mean"): 180.0,
                (THERMAL, "/T1/temperature/hot-spot"): 60.0 + minute / 10,
                (THERMAL, "/T1/temperature/top-oil"): 45.25,
            }
            for (table, topic), value in points.items():
                row_id += 1
                last_hot_spot = minute == minutes and topic.endswith("hot-spot")  # sent Valid=false
                data = {"Timestamp": stamp, "Value": value, "Valid": not last_hot_spot}
                rows[table].append({"ID": row_id, "Timestamp": stamp, "SubTopic": topic, "Data": data})
        body = {"Batch": "b1", "Tables": [{"TableName": t, "TableRows": r} for t, r in rows.items()]}
        response = self.client.post("/edge/v1/upload", json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text

    def login(self, user: str, password: str) -> None:
        response = self.client.post("/login", data={"user": user, "password": password}, follow_redirects=False)
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    settings = HubSettings(
        data_dir=tmp_path,
        store_url=f"sqlite:///{tmp_path / 'hub.sqlite'}",
        password_time_cost=1,
        password_memory_kib=8192,
    )
    with TestClient(create_app(settings)) as client:
        running = Hub(client)
        running.auth.add_user("admin", PASSWORD, Role.ADMIN)
        yield running


def test_page_requires_a_login(hub: Hub) -> None:
    response = hub.client.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert hub.client.get("/status.json").status_code == 401
    assert hub.client.get("/status/sites").status_code == 401
    form = hub.client.get("/login")
    assert form.status_code == 200 and 'action="/login"' in form.text and 'type="password"' in form.text
    # A forged cookie is no session.
    hub.client.cookies.set(COOKIE, "someone.not-a-token")
    assert hub.client.get("/", follow_redirects=False).status_code == 303


def test_wrong_password_is_refused_without_a_cookie(hub: Hub) -> None:
    response = hub.client.post("/login", data={"user": "admin", "password": "wrong-password"}, follow_redirects=False)
    assert response.status_code == 401
    assert "wrong user or password" in response.text
    assert COOKIE not in response.cookies
    assert hub.client.get("/status.json").status_code == 401


def test_login_cookie_and_page_after_an_upload(hub: Hub) -> None:
    hub.upload("substation-07")
    response = hub.client.post("/login", data={"user": "admin", "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=86400" in cookie and "Path=/" in cookie and "Secure" not in cookie  # plain http here

    page = hub.client.get("/")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert "substation-07" in text and "admin (admin)" in text
    assert "Log out" in text and 'src="/static/status.js"' in text
    assert "270 / 270 / 0 / 0" in text  # rows received / stored / rejected / duplicates
    assert "240.5 V / 241 V / 239 V" in text
    assert "(total 126 kW)" in text  # 43,000 + 41,000 + 42,000 W at the last minute
    assert "45.25 °C / 63 °C (invalid)" in text  # the last hot spot was sent Valid=false: kept, flagged
    assert text.count("<polyline") == 2  # transformer power and hot-spot charts

    data = hub.client.get("/status.json").json()
    assert data["user"]["name"] == "admin"
    (site,) = data["sites"]
    assert site["name"] == "substation-07" and site["layer"] == "edge"
    assert site["upload"]["stored"] == 270 and site["upload"]["last_upload"] is not None
    assert site["series"] == 9
    voltages = site["latest"][0]
    assert voltages["label"].startswith("busbar voltage")
    assert [v["value"] for v in voltages["values"]] == [240.5, 241.0, 239.0]
    assert voltages["values"][0]["unit"] == "V"
    assert voltages["values"][0]["series"] == f"substation-07/{SIMULATOR}/60/busbar/l1/voltage-mean"
    power = site["charts"][0]
    assert power["label"] == "transformer active power" and power["unit"] == "W"
    assert len(power["points"]) == 3  # 30 minutes in 15-minute buckets: 0-15, 15-30, 30
    fragment = hub.client.get("/status/sites")
    assert fragment.status_code == 200 and "substation-07" in fragment.text and "<html" not in fragment.text
    # The script and style the page names are served.
    assert "fetch(" in hub.client.get("/static/status.js").text
    assert hub.client.get("/static/gridhub.css").status_code == 200


def test_names_are_escaped(hub: Hub) -> None:
    name = '<img src=x onerror=alert(1)>&"x'
    hub.upload(name, minutes=2)
    hub.login("admin", PASSWORD)
    text = hub.client.get("/").text
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&#34;x" in text  # the name, shown as text
    assert "onerror=alert(1)" in text  # as text, inside escaped markup
    assert not re.search(r"<img\b", text)


def test_registered_sites_without_upload_are_shown_to_admins(hub: Hub) -> None:
    hub.auth.issue_site_token("substation-new")
    hub.login("admin", PASSWORD)
    data = hub.client.get("/status.json").json()
    assert [s["name"] for s in data["sites"]] == ["substation-new"]
    assert "Registered, no upload yet." in hub.client.get("/").text


def test_a_user_without_grants_sees_nothing_of_the_layer(hub: Hub) -> None:
    hub.upload("substation-secret", minutes=2)
    hub.auth.issue_site_token("substation-pending")
    hub.auth.add_user("carol", "carol-password", Role.CONSUMER)
    hub.auth.add_user("dave", "dave-password", Role.CONSUMER, grants=["edge/substations:read"])
    hub.auth.add_user("erin", "erin-password", Role.CONSUMER, grants=["grid/*:read"])

    for user in ("carol", "erin"):
        hub.client.cookies.clear()
        hub.login(user, f"{user}-password")
        assert hub.client.get("/status.json").json()["sites"] == []
        page = hub.client.get("/").text
        assert "substation-secret" not in page and "substation-pending" not in page and "240" not in page
        assert "No substation data you may read" in page

    hub.client.cookies.clear()
    hub.login("dave", "dave-password")
    data = hub.client.get("/status.json").json()
    assert [s["name"] for s in data["sites"]] == ["substation-secret"]  # not the registered-only one


def test_logout_ends_the_session(hub: Hub) -> None:
    hub.login("admin", PASSWORD)
    cookie = hub.client.cookies[COOKIE]
    response = hub.client.post("/logout", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert f'{COOKIE}=""' in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    assert hub.client.get("/", follow_redirects=False).status_code == 303
    # The token itself stopped working: replaying the old cookie, or using it on the API, fails.
    hub.client.cookies.set(COOKIE, cookie)
    assert hub.client.get("/status.json").status_code == 401
    user_id, _, token = cookie.partition(".")
    assert hub.client.get("/api/v2/me", headers={"X-User-ID": user_id, "X-Auth-Token": token}).status_code == 401


def test_cross_site_posts_are_refused(hub: Hub) -> None:
    evil = {"Origin": "https://evil.example"}
    response = hub.client.post("/login", data={"user": "admin", "password": PASSWORD}, headers=evil)
    assert response.status_code == 403 and COOKIE not in response.cookies
    response = hub.client.post(
        "/login", data={"user": "admin", "password": PASSWORD}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    # The same form from the hub's own origin is fine.
    same = {"Origin": "http://testserver"}
    response = hub.client.post(
        "/login", data={"user": "admin", "password": PASSWORD}, headers=same, follow_redirects=False
    )
    assert response.status_code == 303
    assert hub.client.post("/logout", headers=evil, follow_redirects=False).status_code == 403
    assert hub.client.get("/status.json").status_code == 200  # still logged in


def test_session_from_the_api_login_works_and_the_login_form_redirects(hub: Hub) -> None:
    hub.login("admin", PASSWORD)
    response = hub.client.get("/login", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert hub.client.get("/status", follow_redirects=False).status_code == 200
