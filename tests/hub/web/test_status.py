"""The status page's data: sites a principal may read, key values by sub-topic pattern, formatting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gridhub.hub.auth import AuthService, Principal, Role
from gridhub.hub.auth.policy import Grant
from gridhub.hub.faces.edge.ingest import EdgeIngest, parse_batch
from gridhub.hub.store import Store, open_store
from gridhub.hub.web.status import collect_status, format_age, format_value

T0 = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}") as opened:
        yield opened


def _upload(store: Store, site: str, rows: list[tuple[str, str, float]], layer: str = "edge") -> None:
    tables: dict[str, list[dict[str, object]]] = {}
    for i, (table, topic, value) in enumerate(rows):
        data = {"Timestamp": T0 + 60 * i, "Value": value, "Valid": True}
        tables.setdefault(table, []).append({"ID": i + 1, "Timestamp": T0 + 60 * i, "SubTopic": topic, "Data": data})
    body = {"Tables": [{"TableName": t, "TableRows": r} for t, r in tables.items()]}
    EdgeIngest(store).ingest(site, layer, parse_batch(body))


def test_key_values_are_found_by_sub_topic_whatever_the_instance(store: Store) -> None:
    _upload(
        store,
        "s1",
        [
            ("acme_sensor_07", "/60/busbar/l2/voltage-mean", 231.0),
            ("acme_thermal_02", "/TX-9/temperature/hot-spot", 71.5),
            ("acme_sensor_07", "/60/busbar/l1/voltage-mean", 230.0),
            ("acme_sensor_07", "/60/busbar/l1/voltage-mean", 232.0),
        ],
    )
    auth = AuthService(store, password_time_cost=1, password_memory_kib=8192)
    admin = Principal("a", "admin", "user", Role.ADMIN)
    (site,) = collect_status(store, auth, admin, upload_layer="edge")
    assert site.series == 3 and site.stored == 4
    rows = {row.label: row for row in site.points}
    assert rows["busbar voltage L1 / L2 / L3"].text == "232 V / 231 V / -"
    assert rows["top oil / hot spot (thermal model)"].text == "- / 71.5 °C"
    assert rows["transformer active power L1 / L2 / L3"].total is None  # no phase present: no total
    assert site.newest == datetime.fromtimestamp(T0 + 180, UTC)


def test_sites_follow_the_read_policy_per_layer(store: Store) -> None:
    _upload(store, "north", [("a_b_01", "/60/busbar/l1/voltage-mean", 230.0)], layer="edge")
    _upload(store, "south", [("a_b_01", "/60/busbar/l1/voltage-mean", 240.0)], layer="dno2")
    auth = AuthService(store, password_time_cost=1, password_memory_kib=8192)
    auth.issue_site_token("registered")

    def names(principal: Principal) -> list[str]:
        return [s.name for s in collect_status(store, auth, principal, upload_layer="edge")]

    assert names(Principal("o", "op", "user", Role.OPERATOR)) == ["south", "north", "registered"]
    granted = Principal("c", "c", "user", Role.CONSUMER, (Grant.parse("dno2/substations:read"),))
    assert names(granted) == ["south"]
    other = Principal("c", "c", "user", Role.CONSUMER, (Grant.parse("dno2/feeders:read"),))
    assert names(other) == []
    owner = Principal("w", "w", "app", Role.OWNER)
    assert names(owner) == []


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (230.04, "V", "230 V"),
        (126_000.0, "W", "126 kW"),
        (-2_500_000.0, "J", "-2.5 MJ"),
        (0.4361, "1", "0.4361"),
        (999.0, "A", "999 A"),
        (None, "V", "-"),
        (21.456, "°C", "21.46 °C"),
    ],
)
def test_values_are_formatted_with_units(value: float | None, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_ages() -> None:
    assert format_age(5.2) == "5 s"
    assert format_age(timedelta(minutes=10).total_seconds()) == "10 min"
    assert format_age(timedelta(hours=5).total_seconds()) == "5 h"
    assert format_age(timedelta(days=3).total_seconds()) == "3 d"
    assert format_age(-1) == "in the future"
