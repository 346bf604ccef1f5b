"""Keep secrets out of the hub log: mask credential values in the request URLs that log lines carry.

uvicorn's access log writes each request's path with its query string
(``"GET /api/v2/x?appId=..&keyId=.. HTTP/1.1" 200``) and its error log the WebSocket path
(``"WebSocket /live/v1?keyId=.." [accepted]``); an application's keyId never expires. The
:class:`SecretQueryFilter` rewrites such records so the value of every query parameter named in
:data:`SECRET_PARAMS` reads ``***`` (``keyId=***``). ``gridhub hub run`` installs it on uvicorn's
handlers (:func:`uvicorn_log_config`) and on the root logger's handlers (:func:`install`).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

__all__ = ["MASK", "SECRET_PARAMS", "SecretQueryFilter", "install", "mask_secrets", "uvicorn_log_config"]

SECRET_PARAMS = ("keyId", "authToken", "token", "access_token", "password")
"""Query parameters whose values are credentials (names matched case-insensitively)."""
MASK = "***"

# The name must not continue another word (mykeyId=, x.token=); it may follow ?, &, ;, a space...
_SECRET = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_.\-])(?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r"))=(?P<value>[^&;#\s\"']*)",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """Return text with the value of every credential query parameter replaced by ***."""
    if "=" not in text:
        return text
    return _SECRET.sub(lambda m: f"{m['name']}={MASK}", text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, bytes):  # a raw path or query some servers log
        return mask_secrets(value.decode("latin-1")).encode("latin-1")
    return value


class SecretQueryFilter(logging.Filter):
    """Mask credential query values in a record's message and arguments (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; keep the arguments' shape (uvicorn's access formatter unpacks them)."""
        if isinstance(record.msg, str):
            record.msg = mask_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _masked(value) for key, value in record.args.items()}
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """Return uvicorn's default logging configuration with the filter on each of its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["gridhub_secrets"] = {"()": SecretQueryFilter}
    for handler in config.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "gridhub_secrets"]
    return config


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to a logger's handlers (the root logger's by default), once."""
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, SecretQueryFilter) for f in handler.filters):
            handler.addFilter(SecretQueryFilter())
