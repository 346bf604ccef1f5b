"""Every hub setting in one typed registry, read once from a TOML file (``gridhub hub run --config FILE``).

The file is optional: with none, the hub runs on a SQLite store under ``./var/hub`` and listens on
127.0.0.1:8080. Each setting lives at a dotted key of the file (``http.port`` is ``port`` in the
``[http]`` table); relative paths are read against the config file's folder. Unknown keys,
wrong types and placeholder secrets are refused with a message naming the key.

```toml
version = 1
data_dir = "var/hub"
store = ""                     # store URL; empty: sqlite:///<data_dir>/hub.sqlite
[http]
host = "127.0.0.1"
port = 8080
[api]
query_limit = 10000
[auth]
token_ttl = 86400.0
password_time_cost = 3
password_memory_kib = 65536
rate_limit = 600
rate_window = 60.0
[resources]
buckets = ["fs"]
max_mb = 100.0
[upload]
max_bytes = 67108864
layer = "edge"
[maintenance]
compact_interval = 86400.0     # seconds between Store.compact() runs; 0: never
retention_interval = 3600.0    # seconds between Store.apply_retention() runs (and one at start-up); 0: never
[smtp]
host = ""                      # empty: /notify/email answers 503
port = 25
security = "none"              # none | starttls | tls
username = ""
password = ""
sender = ""
timeout = 10.0
[nats]
url = ""                       # empty: the gateway calls hub services in-process; live updates stay in-process
domain = "gridhub"
timeout = 5.0
[live]
queue_size = 1000              # events one WebSocket client may have waiting; more: overflow, close 1013
auth_check_interval = 15.0     # seconds between re-checks of a live connection's credential
[tls]
cert = ""                      # with key: serve HTTPS
key = ""
client_ca = ""                 # request site client certificates signed by this CA
[mqtt]
url = ""                       # mqtt://host:1883 or mqtts://host:8883; empty: no MQTT upload bridge
username = ""
password = ""
ca = ""
cert = ""
key = ""
topic_prefix = "gridhub/upload"
group = "gridhub"
```
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_VERSION", "HubConfigError", "HubSettings", "describe_settings"]

CONFIG_VERSION = 1
PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "password", "secret", "xxx", "xxxxxxx", "todo", "admin"})
SMTP_SECURITY = ("none", "starttls", "tls")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


class HubConfigError(ValueError):
    """The hub configuration is invalid; the message names the file, the key and what was expected."""


_FILE_SETTINGS = ("tls_cert", "tls_key", "tls_client_ca", "mqtt_ca", "mqtt_cert", "mqtt_key")


def _meta(key: str, help: str) -> dict[str, str]:
    return {"key": key, "help": help}


@dataclass(frozen=True)
class HubSettings:
    """The hub's settings; build with :meth:`load` (file + overrides) or directly in tests."""

    version: int = field(default=CONFIG_VERSION, metadata=_meta("version", "Config format version (only 1 is known)."))
    data_dir: Path = field(
        default=Path("var/hub"), metadata=_meta("data_dir", "Folder of the SQLite store and the resource files.")
    )
    store_url: str = field(
        default="",
        metadata=_meta("store", "Store URL (sqlite:///PATH or postgresql://...); empty: SQLite in data_dir."),
    )
    host: str = field(default="127.0.0.1", metadata=_meta("http.host", "Address the HTTP server listens on."))
    port: int = field(default=8080, metadata=_meta("http.port", "TCP port the HTTP server listens on."))
    query_limit: int = field(
        default=10_000, metadata=_meta("api.query_limit", "Most documents one query returns (more: ask with limit).")
    )
    token_ttl: float = field(
        default=86_400.0, metadata=_meta("auth.token_ttl", "Seconds a login session token stays valid.")
    )
    password_time_cost: int = field(
        default=3, metadata=_meta("auth.password_time_cost", "Argon2id passes per password hash (RFC 9106: 1-3+).")
    )
    password_memory_kib: int = field(
        default=65_536, metadata=_meta("auth.password_memory_kib", "Argon2id memory per password hash, in KiB.")
    )
    rate_limit: int = field(
        default=600, metadata=_meta("auth.rate_limit", "Requests one credential may make per rate_window.")
    )
    rate_window: float = field(
        default=60.0, metadata=_meta("auth.rate_window", "Seconds over which rate_limit is counted.")
    )
    resource_buckets: tuple[str, ...] = field(
        default=("fs",), metadata=_meta("resources.buckets", "File store buckets (X-FLEX 'fs').")
    )
    resource_max_mb: float = field(
        default=100.0, metadata=_meta("resources.max_mb", "Largest file /resources accepts, in MB.")
    )
    upload_max_bytes: int = field(
        default=64 * 1024 * 1024, metadata=_meta("upload.max_bytes", "Largest edge upload body (also gunzipped).")
    )
    upload_layer: str = field(
        default="edge", metadata=_meta("upload.layer", "Layer holding the substations of uploading sites.")
    )
    compact_interval: float = field(
        default=86_400.0,
        metadata=_meta("maintenance.compact_interval", "Seconds between Store.compact() runs; 0: never."),
    )
    retention_interval: float = field(
        default=3600.0,
        metadata=_meta(
            "maintenance.retention_interval",
            "Seconds between runs deleting samples older than their layer's retention (one at start-up); 0: never.",
        ),
    )
    smtp_host: str = field(
        default="", metadata=_meta("smtp.host", "SMTP server for /notify/email; empty: email is off (503).")
    )
    smtp_port: int = field(default=25, metadata=_meta("smtp.port", "SMTP server port."))
    smtp_security: str = field(default="none", metadata=_meta("smtp.security", "none, starttls or tls (implicit TLS)."))
    smtp_username: str = field(default="", metadata=_meta("smtp.username", "SMTP login user; empty: no login."))
    smtp_password: str = field(default="", metadata=_meta("smtp.password", "SMTP login password."))
    smtp_sender: str = field(default="", metadata=_meta("smtp.sender", "From address used when a message names none."))
    smtp_timeout: float = field(default=10.0, metadata=_meta("smtp.timeout", "Seconds to wait for the SMTP server."))
    nats_url: str = field(
        default="",
        metadata=_meta(
            "nats.url", "NATS server for /gateway and live updates across replicas; empty: both stay in-process."
        ),
    )
    nats_domain: str = field(
        default="gridhub", metadata=_meta("nats.domain", "First subject token: <domain>.<service>.<action>.")
    )
    nats_timeout: float = field(
        default=5.0, metadata=_meta("nats.timeout", "Seconds the gateway waits for a NATS reply.")
    )
    live_queue_size: int = field(
        default=1000,
        metadata=_meta("live.queue_size", "Events one live client may have waiting; more: overflow and close 1013."),
    )
    live_auth_check_interval: float = field(
        default=15.0,
        metadata=_meta("live.auth_check_interval", "Seconds between re-checks of a live connection's credential."),
    )
    tls_cert: str = field(
        default="", metadata=_meta("tls.cert", "Server certificate (PEM); with tls.key the hub serves HTTPS.")
    )
    tls_key: str = field(default="", metadata=_meta("tls.key", "Private key (PEM) of tls.cert."))
    tls_client_ca: str = field(
        default="",
        metadata=_meta("tls.client_ca", "CA (PEM) whose site client certificates authenticate uploads (mutual TLS)."),
    )
    mqtt_url: str = field(
        default="",
        metadata=_meta("mqtt.url", "Broker of the MQTT upload bridge (mqtt:// or mqtts://); empty: no bridge."),
    )
    mqtt_username: str = field(default="", metadata=_meta("mqtt.username", "Broker login user; empty: none."))
    mqtt_password: str = field(default="", metadata=_meta("mqtt.password", "Broker login password."))
    mqtt_ca: str = field(default="", metadata=_meta("mqtt.ca", "CA (PEM) of an mqtts:// broker; empty: system CAs."))
    mqtt_cert: str = field(default="", metadata=_meta("mqtt.cert", "Client certificate (PEM) for the broker."))
    mqtt_key: str = field(default="", metadata=_meta("mqtt.key", "Private key (PEM) of mqtt.cert."))
    mqtt_topic_prefix: str = field(
        default="gridhub/upload",
        metadata=_meta("mqtt.topic_prefix", "Topics: <prefix>/<site>/batch and <prefix>/<site>/ack/<batch>."),
    )
    mqtt_group: str = field(
        default="gridhub", metadata=_meta("mqtt.group", "Shared-subscription group: hub replicas share the batches.")
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- derived values
    @property
    def store(self) -> str:
        """The store URL to open (SQLite in data_dir when none is set)."""
        return self.store_url or f"sqlite:///{self.data_dir / 'hub.sqlite'}"

    @property
    def resources_dir(self) -> Path:
        """Folder holding the bytes of stored files."""
        return self.data_dir / "resources"

    @property
    def url(self) -> str:
        """The base URL of the X-FLEX API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}/api/v2"

    # -- checks
    def validate(self) -> None:
        """Raise HubConfigError naming the first setting whose value is out of range."""
        if self.version != CONFIG_VERSION:
            raise HubConfigError(f"version: expected {CONFIG_VERSION}, got {self.version!r} (refused)")
        if not 0 <= self.port <= 65535:
            raise HubConfigError(f"http.port: expected 0-65535, got {self.port}")
        if not 1 <= self.smtp_port <= 65535:
            raise HubConfigError(f"smtp.port: expected 1-65535, got {self.smtp_port}")
        for key, value in (
            ("auth.token_ttl", self.token_ttl),
            ("auth.rate_window", self.rate_window),
            ("smtp.timeout", self.smtp_timeout),
            ("nats.timeout", self.nats_timeout),
            ("live.auth_check_interval", self.live_auth_check_interval),
            ("resources.max_mb", self.resource_max_mb),
        ):
            if not value > 0:
                raise HubConfigError(f"{key}: expected a positive number, got {value}")
        if not self.compact_interval >= 0:
            raise HubConfigError(
                f"maintenance.compact_interval: expected 0 (off) or a positive number, got {self.compact_interval}"
            )
        if not self.retention_interval >= 0:
            raise HubConfigError(
                f"maintenance.retention_interval: expected 0 (off) or a positive number, got {self.retention_interval}"
            )
        for key, count in (
            ("auth.rate_limit", self.rate_limit),
            ("api.query_limit", self.query_limit),
            ("upload.max_bytes", self.upload_max_bytes),
            ("live.queue_size", self.live_queue_size),
        ):
            if count < 1:
                raise HubConfigError(f"{key}: expected an integer >= 1, got {count}")
        if self.password_memory_kib < 8192:
            raise HubConfigError(
                f"auth.password_memory_kib: expected at least 8192 KiB, got {self.password_memory_kib}"
            )
        if self.smtp_security not in SMTP_SECURITY:
            raise HubConfigError(
                f"smtp.security: expected one of {', '.join(SMTP_SECURITY)}, got {self.smtp_security!r}"
            )
        if self.smtp_password.strip().lower() in PLACEHOLDER_SECRETS:
            raise HubConfigError("smtp.password: a placeholder password is refused; set the real one or leave it empty")
        if not _SUBJECT_TOKEN.match(self.nats_domain):
            raise HubConfigError(
                f"nats.domain: expected one subject token (letters, digits, _ or -), got {self.nats_domain!r}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise HubConfigError("tls.cert and tls.key: set both (HTTPS) or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise HubConfigError("tls.client_ca: client certificates need HTTPS; set tls.cert and tls.key too")
        if self.mqtt_url and not self.mqtt_url.startswith(("mqtt://", "mqtts://")):
            raise HubConfigError(f"mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], got {self.mqtt_url!r}")
        if bool(self.mqtt_cert) != bool(self.mqtt_key):
            raise HubConfigError("mqtt.cert and mqtt.key: set both or neither")
        if self.mqtt_password.strip().lower() in PLACEHOLDER_SECRETS:
            raise HubConfigError("mqtt.password: a placeholder password is refused; set the real one or leave it empty")
        prefix = self.mqtt_topic_prefix
        if not prefix or prefix.startswith(("/", "$")) or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
            raise HubConfigError(
                f"mqtt.topic_prefix: expected topic levels without wildcards, leading $ or outer '/', got {prefix!r}"
            )
        if not _SUBJECT_TOKEN.match(self.mqtt_group):
            raise HubConfigError(f"mqtt.group: expected letters, digits, _ or -, got {self.mqtt_group!r}")
        if not self.resource_buckets:
            raise HubConfigError("resources.buckets: expected at least one bucket name")
        for bucket in self.resource_buckets:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$", bucket):
                raise HubConfigError(f"resources.buckets: {bucket!r} is not a valid bucket name")

    # -- loading
    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> HubSettings:
        """Read settings from a TOML file (None: defaults), then apply the non-None overrides (field names)."""
        values: dict[str, Any] = {}
        base = Path.cwd()
        if path is not None:
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise HubConfigError(f"{path}: cannot read the hub config: {exc.strerror or exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise HubConfigError(f"{path}: not valid TOML: {exc}") from None
            values = cls.from_mapping(data, where=str(path))
            base = path.resolve().parent
        for name, value in overrides.items():
            if name not in {f.name for f in dataclasses.fields(cls)}:
                raise HubConfigError(f"unknown setting override {name!r}")
            if value is not None:
                values[name] = value
        data_dir = Path(values.get("data_dir", Path("var/hub")))
        values["data_dir"] = data_dir if data_dir.is_absolute() else (base / data_dir)
        for name in _FILE_SETTINGS:  # certificate and key files, read against the config file's folder
            if values.get(name) and not Path(values[name]).is_absolute():
                values[name] = str(base / values[name])
        try:
            return cls(**values)
        except HubConfigError as exc:
            raise HubConfigError(f"{path}: {exc}" if path else str(exc)) from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str) -> dict[str, Any]:
        """Return the field values a parsed TOML document sets, refusing unknown keys and wrong types."""
        by_key = {f.metadata["key"]: f for f in dataclasses.fields(cls)}
        tables = {key.split(".")[0] for key in by_key if "." in key}
        values: dict[str, Any] = {}

        def visit(mapping: Mapping[str, Any], prefix: str) -> None:
            for name, value in mapping.items():
                key = f"{prefix}{name}"
                if isinstance(value, Mapping) and not prefix and name in tables:
                    visit(value, f"{name}.")
                    continue
                spec = by_key.get(key)
                if spec is None:
                    known = sorted(k for k in by_key if k.startswith(prefix) and k.count(".") == prefix.count("."))
                    raise HubConfigError(f"{where}: unknown setting {key!r} (known here: {', '.join(known)})")
                values[spec.name] = _convert(value, spec, f"{where}: {key}")

        visit(data, "")
        return values


def _convert(value: Any, spec: dataclasses.Field[Any], where: str) -> Any:
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise HubConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise HubConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HubConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise HubConfigError(f"{where}: expected a non-empty path, got {value!r}")
        return Path(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HubConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise HubConfigError(f"{where}: expected a string, got {value!r}")
    return value


def describe_settings() -> list[tuple[str, Any, str]]:
    """Return (key, default, help) of every setting, in file order."""
    return [(f.metadata["key"], f.default, f.metadata["help"]) for f in dataclasses.fields(HubSettings)]
