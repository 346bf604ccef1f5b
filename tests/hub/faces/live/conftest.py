"""Live face fixtures: the real hub application (create_app) served by uvicorn on a free 127.0.0.1 port.

Clients are real: the ``websockets`` package for /live/v1 and httpx for the REST writes. Each
test drives one asyncio scenario (``asyncio.run``); waits are bounded by RECV_TIMEOUT, which is
a failure bound, never a speed assertion.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from gridhub.hub.app import create_app
from gridhub.hub.auth import AuthService, Role
from gridhub.hub.bus import LiveBus
from gridhub.hub.faces.live.protocol import MAX_FRAME_BYTES
from gridhub.hub.settings import HubSettings
from tests.conftest import free_port, wait_for

API = "/api/v2"
LIVE = "/live/v1"
RECV_TIMEOUT = 20.0
"""Longest wait for one expected message (a failure bound on a loaded machine, not a speed target)."""

GRID_LAYER: dict[str, Any] = {
    "_id": "grid",
    "label": "Distribution grid",
    "description": "LV network assets",
    "owner": "dno",
    "collections": [{"name": "substations", "geo": True}, {"name": "generators"}, {"name": "readings"}],
}


def live_settings(data_dir: Path, **overrides: Any) -> HubSettings:
    """Settings of a test hub over a SQLite file in data_dir (cheap password hashing)."""
    cheap = {"password_time_cost": 1, "password_memory_kib": 8192}
    return HubSettings(data_dir=data_dir, **{**cheap, **overrides})


@dataclass
class LiveHub:
    """A running hub (uvicorn in a thread) and ways to make callers for it."""

    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    port: int
    admin: dict[str, str] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> AuthService:
        service: AuthService = self.app.state.ctx.auth
        return service

    @property
    def bus(self) -> LiveBus:
        bus: LiveBus = self.app.state.ctx.bus
        return bus

    def ws_url(self, **query: str) -> str:
        return f"ws://127.0.0.1:{self.port}{LIVE}" + (f"?{urlencode(query)}" if query else "")

    def rest(self) -> httpx.AsyncClient:
        """An httpx client for the REST API (use it with ``async with``)."""
        return httpx.AsyncClient(base_url=f"{self.http_url}{API}", timeout=RECV_TIMEOUT)

    def login(self, user: str, password: str) -> dict[str, str]:
        response = httpx.post(f"{self.http_url}{API}/login", json={"user": user, "password": password}, timeout=30)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        return {"X-User-ID": data["userId"], "X-Auth-Token": data["authToken"]}

    def user(self, name: str, role: Role | str, grants: tuple[str, ...] = ()) -> dict[str, str]:
        """Add a user and return its logged-in X-User-ID / X-Auth-Token headers."""
        self.auth.add_user(name, f"{name}-password", role, grants=grants)
        return self.login(name, f"{name}-password")

    def application(self, name: str, role: Role | str = Role.CONSUMER, grants: tuple[str, ...] = ()) -> dict[str, str]:
        """Register an application and return its appId/keyId."""
        app_id, key_id = self.auth.add_app(name, role, grants=grants)
        return {"appId": app_id, "keyId": key_id}

    def put_layer(self, document: dict[str, Any]) -> None:
        layer = document["_id"]
        response = httpx.put(
            f"{self.http_url}{API}/config/{layer}/{layer}", json=document, headers=self.admin, timeout=30
        )
        assert response.status_code == 200, response.text


@contextmanager
def run_hub(settings: HubSettings) -> Iterator[LiveHub]:
    """Serve create_app(settings) with uvicorn on a free port, with an admin and the 'grid' layer."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws_max_size=MAX_FRAME_BYTES
    )  # as `gridhub hub run` serves it
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"live-hub-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "the hub to start")
        assert server.started, "the hub did not start (see the log above)"
        hub = LiveHub(app, server, thread, port)
        if not hub.auth.has_users():
            hub.auth.add_user("root", "root-password", Role.ADMIN)
            hub.admin = hub.login("root", "root-password")
            hub.put_layer(GRID_LAYER)
        else:
            hub.admin = hub.login("root", "root-password")
        yield hub
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def live_hub(tmp_path: Path) -> Iterator[LiveHub]:
    """A hub over a fresh SQLite store, with an admin logged in and the 'grid' layer."""
    with run_hub(live_settings(tmp_path / "hub")) as hub:
        yield hub


class LiveClient:
    """One /live/v1 connection, read one JSON message at a time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Return the next message (fail when none comes within timeout)."""
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(text)
        return message

    async def subscribe(self, sub_id: str, **request: Any) -> None:
        """Subscribe and check the server's ok."""
        await self.send({"action": "subscribe", "id": sub_id, **request})
        reply = await self.recv()
        assert reply == {"type": "ok", "action": "subscribe", "id": sub_id}, reply

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a message and return the server's reply (the next message)."""
        await self.send(message)
        return await self.recv()

    async def pong(self) -> None:
        """Ping and expect the pong as the very next message (nothing else was waiting)."""
        reply = await self.request({"action": "ping"})
        assert reply == {"type": "pong"}, f"expected nothing before the pong, got {reply}"


async def open_client(
    hub: LiveHub, headers: dict[str, str] | None = None, query: dict[str, str] | None = None, **options: Any
) -> tuple[LiveClient, dict[str, Any]]:
    """Connect (credentials in headers or query) and return the client and its 'connected' message."""
    ws = await connect(hub.ws_url(**(query or {})), additional_headers=headers, open_timeout=RECV_TIMEOUT, **options)
    client = LiveClient(ws)
    hello = await client.recv()
    assert hello["type"] == "connected", hello
    return client, hello
