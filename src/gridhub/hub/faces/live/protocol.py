"""The live protocol's client messages: read, check and explain what is wrong (see docs/live.md).

Client -> server, one JSON object per text frame:

- ``{"action": "auth", "userId": ..., "authToken": ...}`` (or ``appId``/``keyId``): the first
  message when the connection carried no credentials;
- ``{"action": "subscribe", "id": ID, "layer": L, "collection": C, "selector": {...}?}``;
- ``{"action": "subscribe", "id": ID, "series": [KEY or PREFIX*, ...], "layer": L?, "collection": C?}``;
- ``{"action": "unsubscribe", "id": ID}``; ``{"action": "ping"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_SERIES_PER_SUBSCRIPTION",
    "CollectionRequest",
    "ProtocolError",
    "SeriesRequest",
    "SubscriptionId",
    "parse_message",
    "read_auth",
    "read_subscribe",
    "read_subscription_id",
]

MAX_MESSAGE_CHARS = 65_536
MAX_SERIES_PER_SUBSCRIPTION = 1000
ACTIONS = ("auth", "subscribe", "unsubscribe", "ping")

SubscriptionId = str | int


class ProtocolError(ValueError):
    """A client message is malformed; the message says what and where. ``code`` follows HTTP (400, 403, 404)."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


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


def parse_message(text: str) -> dict[str, Any]:
    """Read one client message: a JSON object with a known ``action``."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message of {len(text)} characters exceeds the limit of {MAX_MESSAGE_CHARS}")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"message is not valid JSON ({exc})"[:300]) from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message: expected a JSON object with an action, got {type(message).__name__}")
    action = message.get("action")
    if action not in ACTIONS:
        raise ProtocolError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}"[:300])
    return message


def read_subscription_id(message: Mapping[str, Any]) -> SubscriptionId:
    """Return the message's subscription id (a non-empty string of at most 128 characters, or an integer)."""
    value = message.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    raise ProtocolError(f"id: expected the subscription id (a string of 1-128 characters or an integer), got {value!r}")


def _name(message: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = message.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ProtocolError(f"{key}: expected a {key} name, got {value!r}"[:300])
    return value


def read_subscribe(message: Mapping[str, Any]) -> CollectionRequest | SeriesRequest:
    """Read a subscribe message into the request it makes."""
    sub_id = read_subscription_id(message)
    known = {"action", "id", "layer", "collection", "selector", "series"}
    unknown = sorted(str(k) for k in message if k not in known)
    if unknown:
        raise ProtocolError(f"subscribe: unknown member(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if "series" in message:
        if "selector" in message:
            raise ProtocolError("selector: applies to collection subscriptions, not to series")
        return _read_series(message, sub_id)
    layer = _name(message, "layer", True)
    collection = _name(message, "collection", True)
    assert layer is not None and collection is not None
    selector = message.get("selector")
    if selector is not None and not isinstance(selector, dict):
        raise ProtocolError(f"selector: expected a JSON object (MongoDB-style selector), got {selector!r}"[:300])
    return CollectionRequest(sub_id, layer, collection, selector or None)


def _read_series(message: Mapping[str, Any], sub_id: SubscriptionId) -> SeriesRequest:
    entries = message["series"]
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("series: expected a non-empty list of series keys or key prefixes ending with *")
    if len(entries) > MAX_SERIES_PER_SUBSCRIPTION:
        raise ProtocolError(f"series: at most {MAX_SERIES_PER_SUBSCRIPTION} entries per subscription")
    keys: set[str] = set()
    prefixes: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry or len(entry) > 512:
            raise ProtocolError(
                f"series[{i}]: expected a series key or a key prefix ending with *, got {entry!r}"[:300]
            )
        if entry.endswith("*"):
            if "*" in entry[:-1]:
                raise ProtocolError(f"series[{i}]: only a trailing * is allowed, got {entry!r}")
            prefixes.add(entry[:-1])
        elif "*" in entry:
            raise ProtocolError(f"series[{i}]: only a trailing * is allowed, got {entry!r}")
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
    """Return the (userId, authToken) or (appId, keyId) pair of an auth message."""
    user = message.get("userId", message.get("appId"))
    secret = message.get("authToken", message.get("keyId"))
    if not isinstance(user, str) or not user or not isinstance(secret, str) or not secret:
        raise ProtocolError("auth: expected userId and authToken (or appId and keyId) strings", 401)
    return user, secret
