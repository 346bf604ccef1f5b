"""Masking credentials in logged URLs: the filter on records shaped as uvicorn writes them."""

from __future__ import annotations

import io
import logging
import logging.config

from gridhub.hub.redact import SecretQueryFilter, mask_secrets, uvicorn_log_config


def test_mask_secrets_masks_only_credential_values() -> None:
    assert mask_secrets("/api/v2/x?fs=fs&appId=7dec&keyId=0Q6t") == "/api/v2/x?fs=fs&appId=7dec&keyId=***"
    assert mask_secrets("/live/v1?token=a;password=b#frag") == "/live/v1?token=***;password=***#frag"
    assert mask_secrets("authToken=abc&ACCESS_TOKEN=def") == "authToken=***&ACCESS_TOKEN=***"
    assert mask_secrets("/x?mykeyId=1&keyIdx=2&tokens=3") == "/x?mykeyId=1&keyIdx=2&tokens=3"  # other names
    assert mask_secrets("/x?keyId=&fs=fs") == "/x?keyId=***&fs=fs"


def test_uvicorn_records_are_masked_through_its_own_formatters() -> None:
    config = uvicorn_log_config()
    stream = io.StringIO()
    for handler in config["handlers"].values():
        handler["class"] = "logging.StreamHandler"
        handler["stream"] = stream
    logging.config.dictConfig(config)
    try:
        access = logging.getLogger("uvicorn.access")
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/api/v2/me?appId=a&keyId=k1", "1.1", 200)
        logging.getLogger("uvicorn.error").info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:6", "/live/v1?appId=a&keyId=k2"
        )
        logging.getLogger("uvicorn.error").warning("plain message with token=k3 inline")
    finally:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
    logged = stream.getvalue()
    assert '"GET /api/v2/me?appId=a&keyId=*** HTTP/1.1" 200' in logged
    assert '"WebSocket /live/v1?appId=a&keyId=***" [accepted]' in logged and "token=*** inline" in logged
    assert not {"k1", "k2", "k3"} & set(logged.replace("=", " ").split())


def test_the_filter_keeps_every_record() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%(url)s", None, None)
    record.args = {"url": "/a?password=p"}
    assert SecretQueryFilter().filter(record) is True and record.getMessage() == "/a?password=***"
