"""TLS and X.509 client certificates (Annex 4 section 8.1, Table 4): managed mode with tls = true."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.conformance.lvcap.conftest import (
    AppSpec,
    ConnectRefused,
    Runtime,
    RuntimePool,
    client_cert,
    make_pool,
    shared,
)

APPS = [AppSpec("secure", config={"k": 1}), AppSpec("other")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePool]:
    pool = make_pool(tmp_path_factory, "tls", APPS, manager={"status_interval": 60.0}, tls=True)
    yield pool
    pool.close()


@pytest.fixture(params=[pytest.param("managed", marks=pytest.mark.mosquitto)])
def runtime(request: pytest.FixtureRequest, pool: RuntimePool) -> Iterator[Runtime]:
    yield from shared(request, pool)


def test_client_certificate_with_apid_cn_connects(runtime: Runtime) -> None:
    """Table 4: TLS with an X.509 client certificate whose CN is the APID (8.1): the app connects and works."""
    app = runtime.client("secure", tls_cert=client_cert(runtime, runtime.app("secure").apid))
    app.subscribe_table2()
    since = app.mark()
    app.publish(f"config/request/{app.iid}", {}, qos=1)
    body = app.wait_for(f"config/response/{app.iid}", since=since).json()
    assert body["Configuration"] == {"ContainerName": app.iid, "ContainerConfig": {"k": 1}}


def test_connection_without_client_certificate_is_refused(runtime: Runtime) -> None:
    """Table 4 "Authentication: X509 client certificate": TLS without a client certificate is refused,
    even with the app's right password."""
    with pytest.raises(ConnectRefused):
        runtime.client("secure")


def test_certificate_of_another_app_cannot_act_as_this_app(runtime: Runtime) -> None:
    """8.1: the certificate identifies the app (CN = APID): with another app's certificate a client cannot
    subscribe to this app's configuration."""
    cert = client_cert(runtime, runtime.app("other").apid)
    try:
        impostor = runtime.client("secure", tls_cert=cert)
    except ConnectRefused:
        return  # refused outright: the CN does not match the client id / username
    assert impostor.subscribe(f"config/response/{runtime.iid('secure')}", 1) == 0x80


def test_a_certificate_cannot_take_over_another_apps_client_id(runtime: Runtime) -> None:
    """Table 4: one connection per client id, and the client id is the app's: a client holding another
    app's certificate that connects with this app's client id must not drop this app's connection."""
    secure = runtime.client("secure", tls_cert=client_cert(runtime, runtime.app("secure").apid))
    topic = f"sensor/data/{secure.iid}/alive"
    assert secure.subscribe(topic, 1) == 1
    with contextlib.suppress(ConnectRefused):
        runtime.client("secure", tls_cert=client_cert(runtime, runtime.app("other").apid))
    since = secure.mark()
    secure.publish(topic, {"Value": 1.0, "Valid": True, "Timestamp": int(time.time())}, qos=1)
    secure.wait_for(topic, since=since, what="(the app's own message, after the impostor's attempt)")
    assert secure.client.is_connected() and not secure._disconnected
