"""Client messages of the live protocol: what is accepted, and what each refusal says."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gridhub.hub.faces.live.protocol import (
    MAX_MESSAGE_CHARS,
    MAX_SERIES_KEY_CHARS,
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
        ({"action": "subscribe", "layer": "grid", "collection": "subs"}, "id: missing (expected the subscription id"),
        ({"action": "subscribe", "id": True, "layer": "grid", "collection": "subs"}, "id: expected"),
        ({"action": "subscribe", "id": "s", "layer": "grid"}, "collection: missing (expected a collection name"),
        ({"action": "subscribe", "id": "s", "layer": "grid", "collection": 7}, "collection: expected a collection"),
        ({"action": "subscribe", "id": "s", "layer": "grid", "collection": "c", "where": 1}, "unknown member(s) where"),
        (
            {"action": "subscribe", "id": "s", "layer": "grid", "collection": "c", "selector": [1]},
            "selector: expected a JSON object (a MongoDB-style selector), got an array",
        ),
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


@pytest.mark.parametrize(
    ("message", "start", "end"),
    [
        ({"action": "subscribe", "id": None, "layer": "g", "collection": "c"}, "id: expected", "got null"),
        ({"action": "subscribe", "id": [1], "layer": "g", "collection": "c"}, "id: expected", "got an array"),
        ({"action": "subscribe", "id": 1.5, "layer": "g", "collection": "c"}, "id: expected", "got a number"),
        ({"action": "subscribe", "id": "", "layer": "g", "collection": "c"}, "id: expected", "got an empty string"),
        ({"action": "subscribe", "id": "s", "layer": {}, "collection": "c"}, "layer: expected", "got an object"),
        ({"action": "subscribe", "id": "s", "layer": "g", "collection": False}, "collection: expected", "a boolean"),
        ({"action": "subscribe", "id": "s", "layer": "g", "collection": "c", "selector": 3}, "selector:", "a number"),
        ({"action": "subscribe", "id": "s", "series": [None]}, "series[0]: expected a series key", "got null"),
        ({"action": "subscribe", "id": "s", "series": ["k", 2]}, "series[1]: expected a series key", "got a number"),
        ({"action": "subscribe", "id": "s", "series": {"k": 1}}, "series: expected a non-empty list", "an object"),
        ({"action": "subscribe", "id": "s", "series": []}, "series: expected a non-empty list", "an empty array"),
    ],
)
def test_refusals_name_json_types_as_the_rest_api_does(message: dict[str, Any], start: str, end: str) -> None:
    with pytest.raises(ProtocolError) as info:
        read_subscribe(message)
    text = str(info.value)
    assert text.startswith(start) and text.endswith(end), text
    assert info.value.code == 400


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"id": 1}', "action: missing (expected one of auth, subscribe, unsubscribe, ping)"),
        ('{"action": null}', "action: expected one of auth, subscribe, unsubscribe, ping, got null"),
        ('{"action": 3}', "action: expected one of auth, subscribe, unsubscribe, ping, got a number"),
        ("[1]", "message: expected a JSON object with an action, got an array"),
        ("null", "message: expected a JSON object with an action, got null"),
        ('"ping"', "message: expected a JSON object with an action, got a string"),
    ],
)
def test_a_missing_or_mistyped_action_is_named_so(text: str, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(text)
    assert str(info.value) == words


def test_a_series_given_as_a_string_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ProtocolError) as info:
        read_subscribe({"action": "subscribe", "id": "s", "series": "site-a/voltage"})
    assert str(info.value) == (
        "series: expected a non-empty list of series keys or key prefixes ending with *, "
        "got a string (put even one key in a list)"
    )


@pytest.mark.parametrize(
    ("message", "member"),
    [
        ({"action": "ping", "id": 1}, "ping: unknown member(s) id (known: action)"),
        (
            {"action": "unsubscribe", "id": "s", "layer": "g"},
            "unsubscribe: unknown member(s) layer (known: action, id)",
        ),
        ({"action": "auth", "userId": "u", "authToken": "t", "tenant": "x"}, "auth: unknown member(s) tenant"),
        ({"action": "subscribe", "id": "s", "series": ["k"], "from": 0}, "subscribe: unknown member(s) from"),
    ],
)
def test_unknown_members_are_refused_on_every_action(message: dict[str, Any], member: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(json.dumps(message))
    assert str(info.value).startswith(member), str(info.value)
    assert info.value.code == 400
    with pytest.raises(ProtocolError, match="auth: unknown member") as refused:  # read_auth alone refuses them too
        read_auth({"action": "auth", "userId": "u", "authToken": "t", "tenant": "x"})
    assert refused.value.code == 401


def test_an_over_long_series_key_is_refused_as_too_long() -> None:
    key = "k" * (MAX_SERIES_KEY_CHARS + 1)
    assert isinstance(read_subscribe({"action": "subscribe", "id": 1, "series": [key[:-1]]}), SeriesRequest)
    with pytest.raises(ProtocolError) as info:
        read_subscribe({"action": "subscribe", "id": 1, "series": ["ok", key]})
    assert str(info.value) == f"series[1]: too long: {len(key)} characters (a series key has at most 512)"


@pytest.mark.parametrize(
    "message",
    [
        {"action": "subscribe", "id": "x" * 5000, "layer": "g", "collection": "c"},
        {"action": "subscribe", "id": "s", "layer": "x" * 5000, "collection": "c"},
        {"action": "subscribe", "id": "s", "series": ["a*" + "x" * 500]},
        {"action": "subscribe", "id": "s", "series": ["k"], "x" * 5000: 1},
        {"action": "x" * 5000},
        {"action": "ping", **{f"{'x' * 200}{i}": i for i in range(50)}},
    ],
    ids=["id", "layer", "series", "member", "action", "many-members"],
)
def test_errors_never_echo_more_than_about_100_characters_of_input(message: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        read_subscribe(message) if message["action"] == "subscribe" else parse_message(json.dumps(message))
    assert "x" * 101 not in str(info.value), str(info.value)
    assert len(str(info.value)) < 400, str(info.value)
