"""X-FLEX API fixtures: a hub application over each backend, driven through httpx (TestClient).

``hub`` starts the real application (create_app) over an empty store, with an admin logged in
through /login, and helpers to add users and applications the way the CLI does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridhub.hub.app import create_app
from gridhub.hub.auth import AuthService, Role
from gridhub.hub.settings import HubSettings
from tests.hub.auth.conftest import Clock, clock, hub_pg_database, store_url  # noqa: F401 - fixtures

API = "/api/v2"
GRID_LAYER: dict[str, Any] = {
    "_id": "grid",
    "label": "Distribution grid",
    "description": "LV network assets",
    "owner": "dno",
    "collections": [
        {"name": "substations", "geo": True},
        {"name": "generators", "metrics": ["grid.generators"]},
        {"name": "readings"},
    ],
}


@dataclass
class Hub:
    """A running hub application and ways to make callers for it."""

    client: TestClient
    settings: HubSettings
    clock: Clock
    admin: dict[str, str] = field(default_factory=dict)

    @property
    def auth(self) -> AuthService:
        service: AuthService = self.client.app.state.ctx.auth  # type: ignore[attr-defined]
        return service

    def login(self, user: str, password: str) -> dict[str, str]:
        """Log in through /login and return the X-User-ID / X-Auth-Token headers."""
        response = self.client.post(f"{API}/login", json={"user": user, "password": password})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        return {"X-User-ID": data["userId"], "X-Auth-Token": data["authToken"]}

    def user(self, name: str, role: Role | str, grants: tuple[str, ...] = ()) -> dict[str, str]:
        """Add a user and return its logged-in headers."""
        self.auth.add_user(name, f"{name}-password", role, grants=grants)
        return self.login(name, f"{name}-password")

    def app(self, name: str, role: Role | str = Role.CONSUMER, grants: tuple[str, ...] = ()) -> dict[str, str]:
        """Register an application and return its appId/keyId query parameters."""
        app_id, key_id = self.auth.add_app(name, role, grants=grants)
        return {"appId": app_id, "keyId": key_id}

    def put_layer(self, document: dict[str, Any]) -> None:
        """Create a layer through PUT /config/:layer/:layer as the admin."""
        layer = document["_id"]
        response = self.client.put(f"{API}/config/{layer}/{layer}", json=document, headers=self.admin)
        assert response.status_code == 200, response.text


def make_settings(url: str, data_dir: Path, **overrides: Any) -> HubSettings:
    """Settings of a test hub."""
    cheap = {"password_time_cost": 1, "password_memory_kib": 8192}  # the minimum: tests hash many passwords
    return HubSettings(data_dir=data_dir, store_url=url, **{**cheap, **overrides})


@pytest.fixture
def hub_settings(store_url: str, tmp_path: Path) -> HubSettings:  # noqa: F811 - the imported fixture
    """Settings over the backend's store (tests may replace fields with dataclasses.replace)."""
    return make_settings(store_url, tmp_path / "hub")


@contextmanager
def start_hub(settings: HubSettings, clock: Clock) -> Iterator[Hub]:  # noqa: F811
    """Run a hub application with an admin logged in and the 'grid' layer."""
    with TestClient(create_app(settings, clock=clock)) as client:
        running = Hub(client, settings, clock)
        running.admin = running.user("root", Role.ADMIN)
        running.put_layer(GRID_LAYER)
        yield running


@pytest.fixture
def hub(hub_settings: HubSettings, clock: Clock) -> Iterator[Hub]:  # noqa: F811
    """The hub with an admin logged in and the 'grid' layer."""
    with start_hub(hub_settings, clock) as running:
        yield running
