"""Helpers shared by the SQL backends: distances, JSON merge patches, URL redaction."""

from __future__ import annotations

from typing import Any

import pytest

from gridhub.hub.store.sql import haversine, merge_patch, redact_url


def test_haversine_known_distances() -> None:
    assert haversine(51.4545, -2.5879, 51.4545, -2.5879) == 0
    # one degree of latitude on the mean sphere
    assert haversine(0, 0, 1, 0) == pytest.approx(111_195, abs=1)
    # London (51.5074, -0.1278) to Paris (48.8566, 2.3522): 343.5 km on the sphere
    assert haversine(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343_560, rel=1e-3)


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # the examples of RFC 7396 appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_redact_url_hides_the_password() -> None:
    assert redact_url("postgresql://hub:s3cret@db:5432/hub") == "postgresql://hub:***@db:5432/hub"
