"""The live protocol's client messages: read, check and explain what is wrong (see docs/live.md).

Client -> server, one JSON object per text frame:

- ``{"action": "auth", "userId": ..., "authToken": ...}`` (or ``appId``/``keyId``): the first
  message when the connection carried no credentials;
- ``{"action": "subscribe", "id": ID, "layer": L, "collection": C, "selector": {...}?}``;
- ``{"action": "subscribe", "id": ID, "series": [KEY or PREFIX*, ...], "layer": L?, "collection": C?}``;
- ``{"action": "unsubscribe", "id": ID}``; ``{"action": "ping"}``.

Refusals name JSON types as the REST API does ("got a number", "got null") and never echo more
than :data:`MAX_ECHO_CHARS` characters of what the client sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gridhub.hub.model import json_kind

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_SERIES_KEY_CHARS",
    "MAX_SERIES_PER_SUBSCRIPTION",
    "CollectionRequest",
    "MessageTooBig",
    "ProtocolError",
    "SeriesRequest",
    "SubscriptionId",
    "check_members",
    "got",
    "json_kind",
    "parse_message",
    "read_auth",
    "read_subscribe",
    "read_subscription_id",
    "shown",
]

MAX_MESSAGE_CHARS = 65_536
MAX_FRAME_BYTES = 4 * MAX_MESSAGE_CHARS + 1024
"""The largest WebSocket message the server reads (``ws_max_size``): a message of MAX_MESSAGE_CHARS
characters of up to 4 UTF-8 bytes each, and some room. A larger one is refused by the server itself
(close 1009) before any of it reaches the hub."""
MAX_SERIES_PER_SUBSCRIPTION = 1000
MAX_SERIES_KEY_CHARS = 512  # as the model's Series.key
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 128  # as the model's layer and collection names
MAX_ECHO_CHARS = 100
"""Most characters of client input an error message repeats."""
ACTIONS = ("auth", "subscribe", "unsubscribe", "ping")
MEMBERS: dict[str, frozenset[str]] = {
    "auth": frozenset({"action", "userId", "authToken", "appId", "keyId"}),
    "subscribe": frozenset({"action", "id", "layer", "collection", "selector", "series"}),
    "unsubscribe": frozenset({"action", "id"}),
    "ping": frozenset({"action"}),
}
"""The members each action accepts; any other is refused."""

SubscriptionId = str | int


class ProtocolError(ValueError):
    """A client message is malformed; the message says what and where. ``code`` follows HTTP (400, 403, 404)."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


class MessageTooBig(ProtocolError):
    """A message is longer than MAX_MESSAGE_CHARS: the connection is closed (1009, as for one over MAX_FRAME_BYTES)."""


@dataclass(frozen=True)
class CollectionRequest:
    """Subscribe to the changes of a collection (optionally only documents matching a selector)."""

    id: SubscriptionId
    layer: str
    collection: str
    selector: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SeriesRequest:
    """Subscribe to the new samples of series named by key or by key prefix (``prefix*``)."""

    id: SubscriptionId
    keys: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    layer: str | None = None
    collection: str | None = None
    entries: tuple[str, ...] = field(default=())


def shown(text: str) -> str:
    """Return text quoted for an error message, cut to MAX_ECHO_CHARS characters."""
    if len(text) <= MAX_ECHO_CHARS:
        return repr(text)
    return repr(text[:MAX_ECHO_CHARS]) + f"... ({len(text)} characters)"


def got(value: Any) -> str:
    """Describe what the client sent: a non-empty string quoted (cut to MAX_ECHO_CHARS), else its JSON type."""
    return shown(value) if isinstance(value, str) and value else json_kind(value)


def _expected(message: Mapping[str, Any], key: str, what: str) -> ProtocolError:
    """Return the error for a member that is missing or of the wrong kind."""
    if key not in message:
        return ProtocolError(f"{key}: missing (expected {what})")
    return ProtocolError(f"{key}: expected {what}, got {got(message[key])}")


def check_members(message: Mapping[str, Any], action: str) -> None:
    """Refuse the members an action does not know."""
    known = MEMBERS[action]
    unknown = sorted(str(k) for k in message if k not in known)
    if unknown:
        names = ", ".join(unknown)
        if len(names) > MAX_ECHO_CHARS:
            names = f"{names[:MAX_ECHO_CHARS]}... ({len(unknown)} in all)"
        raise ProtocolError(f"{action}: unknown member(s) {names} (known: {', '.join(sorted(known))})")


def parse_message(text: str, members: bool = True) -> dict[str, Any]:
    """Read one client message: a JSON object with a known ``action`` (and, with members, only what it accepts)."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise MessageTooBig(f"message of {len(text)} characters exceeds the limit of {MAX_MESSAGE_CHARS}")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"message is not valid JSON ({exc})"[:200]) from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message: expected a JSON object with an action, got {json_kind(message)}")
    action = message.get("action")
    if action not in ACTIONS:
        raise _expected(message, "action", f"one of {', '.join(ACTIONS)}")
    if members:
        check_members(message, action)
    return message


def read_subscription_id(message: Mapping[str, Any]) -> SubscriptionId:
    """Return the message's subscription id (a non-empty string of at most 128 characters, or an integer)."""
    value = message.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    what = f"the subscription id (a string of 1-{MAX_ID_CHARS} characters or an integer)"
    if isinstance(value, str) and value:
        raise ProtocolError(f"id: expected {what}, got a string of {len(value)} characters")
    raise _expected(message, "id", what)


def _name(message: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = message.get(key)
    if value is None and not required:
        return None
    what = f"a {key} name (a string of 1-{MAX_NAME_CHARS} characters)"
    if isinstance(value, str) and len(value) > MAX_NAME_CHARS:
        raise ProtocolError(f"{key}: expected {what}, got a string of {len(value)} characters")
    if not isinstance(value, str) or not value:
        raise _expected(message, key, what)
    return value


def read_subscribe(message: Mapping[str, Any]) -> CollectionRequest | SeriesRequest:
    """Read a subscribe message into the request it makes."""
    check_members(message, "subscribe")
    sub_id = read_subscription_id(message)
    if "series" in message:
        if "selector" in message:
            raise ProtocolError("selector: applies to collection subscriptions, not to series")
        return _read_series(message, sub_id)
    layer = _name(message, "layer", True)
    collection = _name(message, "collection", True)
    assert layer is not None and collection is not None
    selector = message.get("selector")
    if selector is not None and not isinstance(selector, dict):
        raise ProtocolError(f"selector: expected a JSON object (a MongoDB-style selector), got {json_kind(selector)}")
    return CollectionRequest(sub_id, layer, collection, selector or None)


def _read_series(message: Mapping[str, Any], sub_id: SubscriptionId) -> SeriesRequest:
    entries = message["series"]
    what = "a non-empty list of series keys or key prefixes ending with *"
    if isinstance(entries, str):
        raise ProtocolError(f"series: expected {what}, got a string (put even one key in a list)")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError(f"series: expected {what}, got {json_kind(entries)}")
    if len(entries) > MAX_SERIES_PER_SUBSCRIPTION:
        raise ProtocolError(
            f"series: at most {MAX_SERIES_PER_SUBSCRIPTION} entries per subscription, got {len(entries)}"
        )
    keys: set[str] = set()
    prefixes: set[str] = set()
    for i, entry in enumerate(entries):
        if isinstance(entry, str) and len(entry) > MAX_SERIES_KEY_CHARS:
            raise ProtocolError(
                f"series[{i}]: too long: {len(entry)} characters (a series key has at most {MAX_SERIES_KEY_CHARS})"
            )
        if not isinstance(entry, str) or not entry:
            raise ProtocolError(
                f"series[{i}]: expected a series key or a key prefix ending with *, got {json_kind(entry)}"
            )
        if "*" in entry[:-1]:
            raise ProtocolError(f"series[{i}]: only a trailing * is allowed, got {shown(entry)}")
        if entry.endswith("*"):
            prefixes.add(entry[:-1])
        else:
            keys.add(entry)
    layer = _name(message, "layer", False)
    collection = _name(message, "collection", False)
    if prefixes and layer is None:
        raise ProtocolError("layer: required with a series prefix (prefix subscriptions are per layer)")
    if collection is not None and layer is None:
        raise ProtocolError("layer: required with collection")
    return SeriesRequest(sub_id, frozenset(keys), tuple(sorted(prefixes)), layer, collection, tuple(entries))


def read_auth(message: Mapping[str, Any]) -> tuple[str, str]:
    """Return the (userId, authToken) or (appId, keyId) pair of an auth message; ProtocolError 401 otherwise."""
    try:
        check_members(message, "auth")
    except ProtocolError as exc:
        raise ProtocolError(str(exc), 401) from None
    user = message.get("userId", message.get("appId"))
    secret = message.get("authToken", message.get("keyId"))
    if not isinstance(user, str) or not user or not isinstance(secret, str) or not secret:
        raise ProtocolError("auth: expected userId and authToken (or appId and keyId) strings", 401)
    return user, secret
