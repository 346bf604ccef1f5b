"""Client messages of the live protocol: what is accepted, and what each refusal says."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gridhub.hub.faces.live.protocol import (
    MAX_MESSAGE_CHARS,
    MAX_SERIES_PER_SUBSCRIPTION,
    CollectionRequest,
    ProtocolError,
    SeriesRequest,
    parse_message,
    read_auth,
    read_subscribe,
)


def test_collection_and_series_requests_are_read() -> None:
    assert read_subscribe({"action": "subscribe", "id": 7, "layer": "grid", "collection": "subs"}) == (
        CollectionRequest(7, "grid", "subs", None)
    )
    request = read_subscribe(
        {"action": "subscribe", "id": "s", "series": ["a/b/c", "grid/subs/*"], "layer": "grid", "collection": "subs"}
    )
    assert isinstance(request, SeriesRequest)
    assert (request.keys, request.prefixes, request.layer, request.collection) == (
        frozenset({"a/b/c"}),
        ("grid/subs/",),
        "grid",
        "subs",
    )
    assert read_auth({"action": "auth", "appId": "app", "keyId": "key"}) == ("app", "key")


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"action": "subscribe", "layer": "grid", "collection": "subs"}, "id: expected"),
        ({"action": "subscribe", "id": True, "layer": "grid", "collection": "subs"}, "id: expected"),
        ({"action": "subscribe", "id": "s", "layer": "grid"}, "collection: expected"),
        ({"action": "subscribe", "id": "s", "layer": "grid", "collection": "c", "where": 1}, "unknown member(s) where"),
        ({"action": "subscribe", "id": "s", "layer": "grid", "collection": "c", "selector": [1]}, "selector: expected"),
        ({"action": "subscribe", "id": "s", "series": []}, "non-empty list"),
        ({"action": "subscribe", "id": "s", "series": ["a*b"]}, "only a trailing *"),
        ({"action": "subscribe", "id": "s", "series": ["grid/*"]}, "layer: required with a series prefix"),
        ({"action": "subscribe", "id": "s", "series": ["k"], "collection": "c"}, "layer: required with collection"),
        ({"action": "subscribe", "id": "s", "series": ["k"], "selector": {}}, "selector: applies to collection"),
        (
            {"action": "subscribe", "id": "s", "series": ["k"] * (MAX_SERIES_PER_SUBSCRIPTION + 1)},
            f"at most {MAX_SERIES_PER_SUBSCRIPTION}",
        ),
    ],
)
def test_malformed_subscribe_messages_say_what_is_wrong(message: dict[str, Any], words: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(words)) as info:
        read_subscribe(message)
    assert info.value.code == 400


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"action": "publish"}', "action: expected one of auth, subscribe, unsubscribe, ping"),
        (json.dumps({"action": "ping", "pad": "x" * MAX_MESSAGE_CHARS}), "exceeds the limit"),
    ],
)
def test_messages_must_be_json_objects_with_a_known_action(text: str, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_message(text)


def test_an_auth_message_without_both_parts_is_refused_401() -> None:
    with pytest.raises(ProtocolError, match="userId and authToken") as info:
        read_auth({"action": "auth", "userId": "u"})
    assert info.value.code == 401
