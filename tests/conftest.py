"""Shared test fixtures: free ports and real services that may be absent.

A test that needs a real service asks for the fixture; when the service is absent the test
is skipped with the reason, except when GRIDHUB_REQUIRE_SERVICES=1 (CI), when it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("GRIDHUB_REQUIRE_SERVICES") == "1"
REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def service_absent(reason: str) -> None:
    """Skip the calling test, or fail it when services are required."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service absent (GRIDHUB_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll condition until it is true; fail naming what was awaited when timeout runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def unused_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture
def mosquitto_binary() -> str:
    """Path of the mosquitto executable (for managed-mode tests)."""
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        service_absent("mosquitto binary not found on PATH (apt-get install mosquitto)")
    assert path is not None
    return path


@pytest.fixture
def external_mosquitto() -> tuple[str, int]:
    """Address of the running Mosquitto server on 127.0.0.1:1883 (external-mode tests)."""
    if not port_open("127.0.0.1", 1883):
        service_absent("no MQTT broker listening on 127.0.0.1:1883")
    return ("127.0.0.1", 1883)


@pytest.fixture
def reference_dir() -> Iterator[Path]:
    """The third-party sample files in ../shared/reference (read in place, never copied)."""
    if not REFERENCE_DIR.is_dir():
        service_absent(f"reference folder {REFERENCE_DIR} is absent")
    yield REFERENCE_DIR
